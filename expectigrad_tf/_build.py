"""Old name of :mod:`expectigrad_tf.build` (``python -m expectigrad_tf._build``
keeps working); use ``python -m expectigrad_tf.build``."""

import sys

from expectigrad_tf.build import *  # noqa: F401,F403
from expectigrad_tf.build import BUILD_INFO, CPU_LIB, CUDA_LIB, build, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
