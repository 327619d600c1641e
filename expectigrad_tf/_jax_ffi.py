"""The fused kernel on Keras 3's JAX backend: the XLA:CPU handler of the
``expectigrad_apply`` custom call (csrc/tf/xla/expectigrad_ffi_cpu.cc, the same
source and host loop as TensorFlow's XLA:CPU lowering), built without
TensorFlow against jaxlib's FFI headers as ``_expectigrad_jax_ffi.so`` and
registered with ``jax.ffi.register_ffi_target``.

The call is emitted with ``jax.ffi.ffi_call``: operands var[n], state[n],
grad[n], lr, step; results var[n], state[n], aliased to their operands, so
that with Keras's donated training state the update is in place.

This standalone build never fails a step on a bad learning rate: it leaves
the buffers unchanged instead (JAX has donated them, so an error would lose
the training state). The optimizer gates the rest of the step the same way
(``_backend_generic``). Batched (``jax.vmap``) calls run one call per batch
element; the call has no derivative (``jax.grad`` through an optimizer step
needs ``fused=False``).

Loaded lazily, once; anything that goes wrong is a reason in ``status()``,
and the optimizer takes its composite path.
"""

import json
import os
import struct
import threading

_HERE = os.path.dirname(os.path.abspath(__file__))
LIB = "_expectigrad_jax_ffi.so"
BUILD_INFO = "_jax_build_info.json"
TARGET = "expectigrad_apply"
REBUILD_HINT = "rebuild with `python -m expectigrad_tf.build`"
# The standalone build has no 16-bit types (no Eigen without TensorFlow).
DTYPES = ("float32", "float64")

_lock = threading.Lock()
_state = None


def _load():
    status = {"available": False, "reason": None, "library": os.path.join(_HERE, LIB),
              "build_info": None}
    if os.environ.get("EXPECTIGRAD_DISABLE_FUSED", "") not in ("", "0"):
        status["reason"] = "disabled by EXPECTIGRAD_DISABLE_FUSED"
        return status
    lib = status["library"]
    if not os.path.exists(lib):
        status["reason"] = (f"JAX library not built ({lib} missing; it is built when jaxlib "
                            f"is installed); {REBUILD_HINT}")
        return status
    try:
        with open(os.path.join(_HERE, BUILD_INFO)) as f:
            status["build_info"] = json.load(f)
    except (OSError, ValueError) as e:
        status["reason"] = f"cannot read {BUILD_INFO} ({e}); {REBUILD_HINT}"
        return status
    try:
        import jaxlib

        installed = jaxlib.__version__
    except Exception as e:  # noqa: BLE001 - no usable jaxlib
        status["reason"] = f"jaxlib cannot be imported ({e})"
        return status
    built_for = status["build_info"].get("jaxlib_version")
    if built_for != installed:
        # XLA's FFI is versioned, but an incompatibility would only show
        # inside a jitted step, after JAX has taken the training state.
        status["reason"] = (f"JAX library was built for jaxlib {built_for}, but jaxlib "
                            f"{installed} is installed; {REBUILD_HINT}")
        return status
    try:
        import ctypes

        import jax

        handle = ctypes.CDLL(lib)
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handle.expectigrad_apply_host),
                                    platform="cpu")
    except Exception as e:  # OSError, AttributeError, XlaRuntimeError...
        status["reason"] = f"failed to load or register {lib}: {e}"
        return status
    status["available"] = True
    return status


def status():
    """{available, reason, library, build_info} of the JAX library."""
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return dict(_state)


def _bits(x):
    """A float64 as the int64 with the same bits (the call's attributes)."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def apply(variables, states, grads, lr, step, *, beta, epsilon, sparse_counter):
    """One ``expectigrad_apply`` custom call over same-dtype tensors (JAX
    arrays, traced or not). Returns (new variables, new states)."""
    import jax
    import numpy as np

    n = len(variables)
    call = jax.ffi.ffi_call(
        TARGET,
        [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in variables]
        + [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in states],
        input_output_aliases={i: i for i in range(2 * n)},
        vmap_method="sequential",
    )
    out = call(*variables, *states, *grads, lr, step,
               num_tensors=np.int64(n), sparse_counter=np.int64(bool(sparse_counter)),
               momentum=np.int64(beta > 0), beta_bits=np.int64(_bits(beta)),
               epsilon_bits=np.int64(_bits(epsilon)))
    return list(out[:n]), list(out[n:])


def _reset_for_tests():
    global _state
    with _lock:
        _state = None
