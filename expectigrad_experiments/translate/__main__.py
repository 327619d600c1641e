"""``python -m expectigrad_experiments.translate``: the translation trainer."""

import sys

from .trainer import main

if __name__ == "__main__":
    sys.exit(main())
