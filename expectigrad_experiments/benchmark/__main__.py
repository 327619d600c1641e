"""``python -m expectigrad_experiments.benchmark``: the benchmark command line."""

from .cli import main

if __name__ == "__main__":
    main()
