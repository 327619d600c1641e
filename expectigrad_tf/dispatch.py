"""Which implementation updates a variable: one pure function.

``choose_path`` takes plain facts (no TensorFlow objects), so the tests call it
directly for every combination. The optimizer gathers the facts for each
variable when a step is traced and records the answer in
``Expectigrad.dispatch_report()``.

Paths:

- ``fused``: the compiled ``ExpectigradApply`` op (one pass over memory for
  every tensor of a (dtype, device) group). Outside XLA it runs the op's TF
  kernel; inside XLA (``jit_compile=True``) its lowering emits a custom call
  into the same kernels. On Keras 3's JAX backend, the same XLA:CPU handler
  called with ``jax.ffi.ffi_call`` (no TensorFlow needed).
- ``composite``: the update written in ``keras.ops`` (any backend).
- ``composite-xla``: the same composite ops, compiled by XLA, when the fused op
  cannot be used inside XLA.
- ``sparse``: rows-only composite update for ``tf.IndexedSlices`` (exact
  Algorithm 1: ``sum``/``count`` change on the given rows, the momentum and the
  variable everywhere when ``beta > 0``).
- ``sparse-lazy``: ``lazy_sparse=True``: ``sum``, ``count``, momentum and
  variable change only on the given rows (as LazyAdam does for Adam).
"""

FUSED = "fused"
COMPOSITE = "composite"
COMPOSITE_XLA = "composite-xla"
SPARSE = "sparse"
SPARSE_LAZY = "sparse-lazy"

FUSED_DTYPES = ("float16", "bfloat16", "float32", "float64")
# The dtypes each Keras backend's fused kernel takes. JAX: the standalone
# handler, built without TensorFlow, so without Eigen's 16-bit types.
FUSED_BACKENDS = {"tensorflow": FUSED_DTYPES, "jax": ("float32", "float64")}

# Strategies whose variables the fused op can update replica by replica.
FUSED_STRATEGIES = (
    "_DefaultDistributionStrategy",
    "OneDeviceStrategy",
    "MirroredStrategy",
    "MultiWorkerMirroredStrategy",
    "CollectiveAllReduceStrategy",
    "_CollectiveAllReduceStrategyExperimental",
    # tf.distribute.ParameterServerStrategy: the variables live on the
    # parameter servers; one op call per (dtype, parameter server), colocated
    # with its variables (tests/optimizer/test_parameter_server.py).
    "ParameterServerStrategyV2",
)


def backend_reason(backend):
    """Why Keras backend ``backend`` has no fused kernel, or None."""
    if backend in FUSED_BACKENDS:
        return None
    return (f"Keras backend is {backend!r}: the fused kernel runs on "
            f"{' and '.join(repr(b) for b in FUSED_BACKENDS)}")


class FusedUnavailableError(RuntimeError):
    """``fused=True`` was asked for, but this variable cannot take the op."""


def choose_path(
    *,
    sparse,
    in_xla,
    fused,
    backend="tensorflow",
    op_reason=None,
    dtype="float32",
    on_gpu=False,
    gpu_reason=None,
    strategy=None,
    variable="variable",
    lazy_sparse=False,
    xla_reason=None,
):
    """Returns ``(path, reason)`` for one variable's update.

    Args:
        sparse: the gradient is a ``tf.IndexedSlices``.
        in_xla: the step is being traced inside an XLA compilation.
        fused: the optimizer's ``fused`` setting: None (use the op where
            possible), True (require it), False (never).
        backend: the Keras backend name.
        op_reason: why the backend's fused library (the TF op; on JAX, the
            JAX library) cannot be used, None when it is loaded.
        dtype: the variable's dtype, as a string.
        on_gpu: the variable lives on a GPU.
        gpu_reason: why there are no GPU kernels (nor a GPU XLA lowering),
            None when there are.
        strategy: the ``tf.distribute`` strategy's class name (on JAX, the
            ``keras.distribution``'s), or None.
        variable: the variable's name, for error messages.
        lazy_sparse: the optimizer's ``lazy_sparse`` setting (sparse
            gradients only).
        xla_reason: why the op has no XLA lowering (built against a
            TensorFlow without XLA's FFI headers), None when it has one.

    Raises:
        FusedUnavailableError: ``fused=True`` and a dense gradient cannot take
            the fused op (sparse gradients always take the sparse path).
    """
    if sparse and lazy_sparse:
        return SPARSE_LAZY, ("gradient is tf.IndexedSlices, lazy_sparse=True: rows-only "
                             "composite update of sum, count, momentum and variable")
    if sparse:
        return SPARSE, "gradient is tf.IndexedSlices: sparse composite path"
    composite = COMPOSITE_XLA if in_xla else COMPOSITE
    where = " (inside XLA: XLA fuses the composite ops)" if in_xla else ""
    if fused is False:
        return composite, "fused=False" + where
    reason = None
    if backend not in FUSED_BACKENDS:
        reason = backend_reason(backend)
    elif op_reason is not None:
        reason = op_reason
    elif dtype not in FUSED_BACKENDS[backend]:
        reason = f"dtype {dtype} has no fused kernel" + (
            " on JAX (float32 and float64 only)" if backend == "jax" else "")
    elif on_gpu and gpu_reason is not None:
        reason = f"no GPU kernel: {gpu_reason}"
    elif strategy is not None and backend == "jax":
        reason = f"a keras.distribution ({strategy}) is set: the custom call has no sharding rule"
    elif strategy is not None and strategy not in FUSED_STRATEGIES:
        reason = f"strategy {strategy} is not supported by the fused op"
    elif in_xla and xla_reason is not None:
        reason = xla_reason
    if reason is None:
        if backend == "jax":
            return FUSED, "dense gradient, fused kernel as an XLA custom call on JAX (expectigrad_apply)"
        if in_xla:
            return FUSED, "dense gradient, fused op inside XLA (custom call expectigrad_apply)"
        return FUSED, "dense gradient, fused op"
    if fused is True:
        raise FusedUnavailableError(
            f"Expectigrad(fused=True): {variable} cannot take the fused op: {reason}"
        )
    return composite, reason + where
