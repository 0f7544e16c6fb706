"""``python -m torchmaml``: the command line, e.g. ``torchrun --nproc-per-node 2 -m torchmaml train ...``."""

import sys

from torchmaml.cli import main

sys.exit(main())
