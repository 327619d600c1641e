"""Loading of the compiled ExpectigradApply op, and its status.

The op libraries are loaded lazily, once, on first use. Anything that goes
wrong (library missing, built for another TensorFlow version, failing to
load) is recorded as a reason rather than raised, so the optimizer can fall
back to its composite path and ``fused_status()`` can say why.
"""

import json
import os
import threading
import warnings

_HERE = os.path.dirname(os.path.abspath(__file__))
CPU_LIB = "_expectigrad_ops.so"
CUDA_LIB = "_expectigrad_ops_cuda.so"
BUILD_INFO = "_build_info.json"
REBUILD_HINT = "rebuild with `python -m expectigrad_tf._build`"

_lock = threading.Lock()
_state = None  # dict once loaded (successfully or not)
_warned = False


def _load():
    status = {
        "available": False,
        "devices": [],
        "reason": None,
        "gpu_reason": None,
        "library": os.path.join(_HERE, CPU_LIB),
        "build_info": None,
        "module": None,
    }
    if os.environ.get("EXPECTIGRAD_DISABLE_FUSED", "") not in ("", "0"):
        status["reason"] = "disabled by EXPECTIGRAD_DISABLE_FUSED"
        return status
    import tensorflow as tf  # deferred: the package imports without TensorFlow

    lib = status["library"]
    if not os.path.exists(lib):
        status["reason"] = f"op library not built ({lib} missing); {REBUILD_HINT}"
        return status
    try:
        with open(os.path.join(_HERE, BUILD_INFO)) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        status["reason"] = f"cannot read {BUILD_INFO} ({e}); {REBUILD_HINT}"
        return status
    status["build_info"] = info
    built_for = info.get("tensorflow_version")
    if built_for != tf.__version__:
        status["reason"] = (
            f"op library was built for TensorFlow {built_for}, but "
            f"TensorFlow {tf.__version__} is running; {REBUILD_HINT}"
        )
        return status
    try:
        status["module"] = tf.load_op_library(lib)
    except Exception as e:  # NotFoundError, OSError...
        status["reason"] = f"failed to load {lib}: {e}"
        return status
    status["available"] = True
    status["devices"].append("CPU")
    cuda_lib = os.path.join(_HERE, CUDA_LIB)
    if not info.get("cuda"):
        status["gpu_reason"] = "built without CUDA (nvcc was not found or EXPECTIGRAD_CUDA=0)"
    elif not os.path.exists(cuda_lib):
        status["gpu_reason"] = f"{cuda_lib} missing"
    else:
        try:
            tf.load_op_library(cuda_lib)
            status["devices"].append("GPU")
        except Exception as e:
            status["gpu_reason"] = f"failed to load {cuda_lib}: {e}"
    return status


def _get():
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return _state


def op_module():
    """The loaded op module, or None when the op is unavailable."""
    return _get()["module"]


def unavailable_reason():
    """Why the fused op cannot be used, or None when it can."""
    return _get()["reason"]


def warn_once_unavailable():
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "expectigrad_tf: the fused op is unavailable, using the composite "
            f"(Python ops) path instead: {unavailable_reason()}",
            RuntimeWarning,
            stacklevel=3,
        )


def fused_status():
    """Reports whether the fused op is loaded, for which devices, and why not.

    Returns a dict with keys ``available`` (bool), ``devices`` (list of
    ``"CPU"``/``"GPU"`` kernels registered), ``reason`` (why the op is
    unavailable, or None), ``gpu_reason`` (why there is no GPU kernel, or
    None), ``library`` (path) and ``build_info`` (what the library was built
    for: TensorFlow version, CUDA).
    """
    s = _get()
    return {k: (list(v) if isinstance(v, list) else v)
            for k, v in s.items() if k != "module"}


def _reset_for_tests():
    global _state, _warned
    with _lock:
        _state = None
        _warned = False
