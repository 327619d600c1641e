"""Optimizer-step and model.fit benchmarks of Expectigrad (``expectigrad-benchmark``).

* ``backends``: how each optimizer / code path is set up and timed;
* ``workloads``: the shapes and models measured, and the measurement loops;
* ``report``: medians, ratios, targets, machine metadata, JSON / Markdown;
* ``sparse``: the ``--sparse`` workload (lazy vs exact sparse step on a large
  embedding table) and its Markdown;
* ``cli``: the command line (``main``);
* ``keras_backend``: step timings on Keras 3's JAX backend, no TensorFlow
  (``KERAS_BACKEND=jax python -m expectigrad_experiments.benchmark.keras_backend``).

``python -m expectigrad_experiments.benchmark`` runs the command line.
"""
