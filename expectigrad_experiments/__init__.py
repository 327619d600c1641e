"""The Expectigrad paper's experiments, the demo and the benchmarks.

Commands (installed with the package; each also runs as
``python -m expectigrad_experiments.<module>``):

* ``expectigrad-demo`` (``demo``): Expectigrad vs Adam on scikit-learn's digits;
* ``expectigrad-reddi`` (``reddi``): the Reddi problem, Figure 1;
* ``expectigrad-train-image`` (``train_image``): image classification, Figures 2-4;
* ``expectigrad-momentum-study`` (``momentum_study``): inner vs outer momentum,
  Figure 2 left;
* ``expectigrad-translate`` (``translate``): machine translation with BLEU;
* ``expectigrad-benchmark`` (``benchmark``): optimizer-step and model.fit timings.

Shared modules: ``optimizers`` (every optimizer the experiments compare, one
factory), ``data`` (offline datasets), ``report`` (CSV / JSON files and
matplotlib helpers). Install the experiments' dependencies with
``pip install --no-build-isolation ".[experiments]"``.

TensorFlow's log noise is quiet by default in every command (``quiet``:
``TF_CPP_MIN_LOG_LEVEL=2`` unless you set it; set it to 0 to see everything).
"""

from .quiet import quiet_tensorflow as _quiet_tensorflow

# Before any command module imports TensorFlow.
_quiet_tensorflow()
