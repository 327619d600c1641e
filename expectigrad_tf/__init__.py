"""Expectigrad for TensorFlow / Keras 3, with fused CPU and CUDA kernels.

    import expectigrad_tf
    model.compile(optimizer=expectigrad_tf.Expectigrad(), loss=...)

The TensorFlow-free parts (``expectigrad_tf.reference``, the NumPy reference
of Algorithm 1, and ``expectigrad_tf.build_config``, the one build
description) import without Keras, so the GPU tools in ``tools/`` can use them
on a machine that has no TensorFlow.
"""

__version__ = "0.1.0"

try:
    import keras as _keras  # noqa: F401
except ImportError as _e:  # no Keras: only the TF-free submodules are usable
    _KERAS_ERROR = _e
else:
    _KERAS_ERROR = None
    from expectigrad_tf._ops import fused_status  # noqa: E402
    from expectigrad_tf.optimizer import Expectigrad  # noqa: E402

    # String identifiers: keras.optimizers.get("expectigrad"),
    # model.compile(optimizer="expectigrad").
    _keras.saving.get_custom_objects().update(
        {"expectigrad": Expectigrad, "Expectigrad": Expectigrad})

__all__ = ["Expectigrad", "fused_status", "__version__"]


def __getattr__(name):
    if name in ("Expectigrad", "fused_status") and _KERAS_ERROR is not None:
        raise ImportError(
            f"expectigrad_tf.{name} needs Keras 3 (pip install tensorflow): {_KERAS_ERROR}"
        )
    raise AttributeError(f"module 'expectigrad_tf' has no attribute {name!r}")
