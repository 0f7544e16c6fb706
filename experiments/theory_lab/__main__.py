"""``python -m experiments.theory_lab <constants|bias|complexity|report> ...`` from the repository root."""

import sys

from experiments.theory_lab.commands import main

sys.exit(main())
