"""Optimizer-step and model.fit benchmarks of Expectigrad (``expectigrad-benchmark``).

* ``backends``: how each optimizer / code path is set up and timed;
* ``workloads``: the shapes and models measured, and the measurement loops;
* ``report``: medians, ratios, targets, machine metadata, JSON / Markdown;
* ``cli``: the command line (``main``).

``python -m expectigrad_experiments.benchmark`` runs the command line.
"""
