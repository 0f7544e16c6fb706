"""``python -m torchmaml``: the command line, e.g. ``torchrun --nproc-per-node 2 -m torchmaml train ...``."""

import sys

from torchmaml.cli import main

if __name__ == "__main__":
    sys.exit(main())
