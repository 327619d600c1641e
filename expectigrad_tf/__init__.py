"""Expectigrad for TensorFlow / Keras 3, with fused CPU and CUDA kernels.

    import expectigrad_tf
    model.compile(optimizer=expectigrad_tf.Expectigrad(), loss=...)

The TensorFlow-free parts (``expectigrad_tf.reference``, the NumPy reference
of Algorithm 1, and ``expectigrad_tf.build_config``, the one build
description) import without Keras, so the GPU tools in ``tools/`` can use them
on a machine that has no TensorFlow.
"""

__version__ = "0.2.0"

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


def _legacy_keras():
    """True when ``tf.keras`` is tf_keras, by TensorFlow's own rule
    (tensorflow/python/util/lazy_loader.py, KerasLazyLoader): the environment
    variable TF_USE_LEGACY_KERAS is "true", "True" or "1"."""
    import os

    return os.environ.get("TF_USE_LEGACY_KERAS", None) in ("true", "True", "1")


# `Expectigrad` is resolved on first access (below), as tf.keras is: the Keras 3
# class by default, expectigrad_tf.legacy.Expectigrad (tf_keras) when
# TF_USE_LEGACY_KERAS is set. The Keras 3 class stays expectigrad_tf.optimizer.Expectigrad.
globals().pop("Expectigrad", None)


def __getattr__(name):
    if name == "Expectigrad" and _legacy_keras():
        # Like tf.keras: with TF_USE_LEGACY_KERAS set, tf_keras or an ImportError.
        from expectigrad_tf.legacy import Expectigrad as cls

        globals()["Expectigrad"] = cls
        return cls
    if name == "Expectigrad" and _KERAS_ERROR is None:
        from expectigrad_tf.optimizer import Expectigrad as cls

        globals()["Expectigrad"] = cls
        return cls
    if name in ("Expectigrad", "fused_status") and _KERAS_ERROR is not None:
        raise ImportError(
            f"expectigrad_tf.{name} needs Keras 3 (pip install tensorflow): {_KERAS_ERROR}"
        )
    raise AttributeError(f"module 'expectigrad_tf' has no attribute {name!r}")
