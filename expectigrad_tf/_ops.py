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
REBUILD_HINT = "rebuild with `python -m expectigrad_tf.build`"

_lock = threading.Lock()
_state = None  # dict once loaded (successfully or not)
_warned = False


def _load():
    status = {
        "available": False,
        "devices": [],
        "reason": None,
        "gpu_reason": None,
        "xla_reason": None,
        "library": os.path.join(_HERE, CPU_LIB),
        "build_info": None,
        "module": None,
    }
    if os.environ.get("EXPECTIGRAD_DISABLE_FUSED", "") not in ("", "0"):
        status["reason"] = "disabled by EXPECTIGRAD_DISABLE_FUSED"
        return status
    try:
        import tensorflow as tf  # deferred: the package imports without TensorFlow
    except ImportError as e:
        status["reason"] = (
            f"TensorFlow is not installed ({e}): the fused op is a TensorFlow op, so the "
            "optimizer runs its composite path (keras.ops), except on Keras 3's JAX "
            "backend, whose fused kernel is fused_status()['jax']; to add the TF op: pip "
            "install tensorflow && python -m expectigrad_tf.build")
        return status

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
    if info.get("xla") is False:
        status["xla_reason"] = info.get("xla_reason") or "op built without its XLA lowering"
    cuda_lib = os.path.join(_HERE, CUDA_LIB)
    if not info.get("cuda"):
        status["gpu_reason"] = "built without CUDA (nvcc was not found or EXPECTIGRAD_CUDA=0)"
    elif not os.path.exists(cuda_lib):
        status["gpu_reason"] = f"{cuda_lib} missing"
    else:
        # The library carries CUDA's runtime (static): the driver must support
        # the CUDA version it was built with, or every launch would fail.
        driver_reason = cuda_driver_reason(_built_cuda_version(info),
                                           _driver_cuda_version())
        if driver_reason is not None:
            status["gpu_reason"] = driver_reason
        else:
            try:
                tf.load_op_library(cuda_lib)
                status["devices"].append("GPU")
            except Exception as e:
                status["gpu_reason"] = f"failed to load {cuda_lib}: {e}"
    return status


# Oldest Linux driver of each CUDA major version (CUDA's minor version
# compatibility: a driver for X.y runs code built with any X.z).
MIN_DRIVER_FOR_CUDA = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
NO_DRIVER_REASON = ("no NVIDIA driver (libcuda.so.1 not found): no GPU here, so the GPU "
                    "kernels are not loaded; the CPU kernels are used")


def _parse_cuda_version(text):
    """(major, minor) from '13.0', 'release 13.0, V13.0.88' or
    'Build cuda_13.0.r13.0/compiler...'; None when there is none."""
    import re

    m = re.search(r"(?:cuda_|release |^)(\d+)\.(\d+)", str(text or ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _built_cuda_version(info):
    """The CUDA version the GPU library was built with, from the build info
    (``cuda_version``; older builds only recorded the nvcc banner)."""
    return _parse_cuda_version(info.get("cuda_version")) or _parse_cuda_version(
        info.get("nvcc"))


def _driver_cuda_version():
    """cuDriverGetVersion() (e.g. 12040 for CUDA 12.4), or None without a
    driver."""
    import ctypes

    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int(0)
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return version.value or None


def cuda_driver_reason(built_with, driver_version):
    """Why the GPU kernels cannot be used with this driver, or None.

    built_with: (major, minor) CUDA version the library was built with, or
    None when unknown (then only the driver's presence is checked);
    driver_version: cuDriverGetVersion's value (1000 * major + 10 * minor),
    or None when there is no driver. A pure function, for tests.
    """
    if driver_version is None:
        return NO_DRIVER_REASON
    supports = (driver_version // 1000, driver_version % 1000 // 10)
    if built_with is None or supports[0] >= built_with[0]:
        return None
    major, minor = built_with
    need = MIN_DRIVER_FOR_CUDA.get(major)
    need_text = f", which needs an NVIDIA driver >= {need}" if need else ""
    return (f"the GPU kernels were built with CUDA {major}.{minor}{need_text}; this "
            f"driver supports CUDA {supports[0]}.{supports[1]}: rebuild with a CUDA "
            f"{supports[0]} nvcc (EXPECTIGRAD_NVCC=/path/to/cuda-{supports[0]}/bin/nvcc "
            "python -m expectigrad_tf.build) or upgrade the driver")


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
    """Warns, once per process, that the composite path is used instead of
    the fused op, naming the reason and the rebuild command."""
    global _warned
    with _lock:
        if _warned:
            return
        _warned = True
    reason = unavailable_reason()
    hint = "" if "python -m expectigrad_tf.build" in str(reason) else f"; {REBUILD_HINT}"
    warnings.warn(
        "expectigrad_tf: the fused op is unavailable, using the composite "
        f"(Python ops) path instead: {reason}{hint}",
        RuntimeWarning,
        stacklevel=3,
    )


def fused_status():
    """Reports whether the fused op is loaded, for which devices, and why not.

    Returns a dict with keys ``available`` (bool), ``devices`` (list of
    ``"CPU"``/``"GPU"`` kernels registered), ``reason`` (why the op is
    unavailable, or None), ``gpu_reason`` (why there is no GPU kernel, or
    None), ``xla_reason`` (why the op has no XLA lowering, so that
    ``jit_compile`` steps use the composite path, or None), ``library`` (path) and ``build_info`` (what the library was built
    for: TensorFlow version, CUDA), and ``jax``: on Keras 3's JAX backend,
    the same facts about the JAX library (``available``, ``reason``,
    ``library``, ``build_info``), else None.
    """
    s = _get()
    out = {k: (list(v) if isinstance(v, list) else v)
           for k, v in s.items() if k != "module"}
    out["jax"] = _jax_status()
    return out


def _jax_status():
    """On Keras 3's JAX backend, the JAX library's status
    (``expectigrad_tf._jax_ffi.status()``), else None."""
    import keras

    if keras.backend.backend() != "jax":
        return None
    from expectigrad_tf import _jax_ffi

    return _jax_ffi.status()


def _reset_for_tests():
    global _state, _warned
    with _lock:
        _state = None
        _warned = False
