"""Expectigrad for TensorFlow / Keras 3, with fused CPU and CUDA kernels.

    import expectigrad_tf
    model.compile(optimizer=expectigrad_tf.Expectigrad(), loss=...)
"""

__version__ = "0.1.0"

from expectigrad_tf._ops import fused_status  # noqa: E402
from expectigrad_tf.optimizer import Expectigrad  # noqa: E402

__all__ = ["Expectigrad", "fused_status", "__version__"]
