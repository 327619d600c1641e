"""dispatch.choose_path, the one dispatch decision, as a pure function."""

import itertools

import pytest

from expectigrad_tf import dispatch
from expectigrad_tf.dispatch import COMPOSITE, COMPOSITE_XLA, FUSED, SPARSE, choose_path

OK = dict(backend="tensorflow", op_reason=None, dtype="float32", on_gpu=False,
          gpu_reason=None, strategy=None)


@pytest.mark.parametrize("in_xla", [False, True])
@pytest.mark.parametrize("fused", [None, True])
def test_dense_takes_the_fused_op_with_and_without_xla(in_xla, fused):
    path, reason = choose_path(sparse=False, in_xla=in_xla, fused=fused, **OK)
    assert path == FUSED
    assert ("XLA" in reason) == in_xla


@pytest.mark.parametrize("in_xla,fused", list(itertools.product([False, True], [None, True, False])))
def test_sparse_always_takes_the_sparse_path(in_xla, fused):
    assert choose_path(sparse=True, in_xla=in_xla, fused=fused, **OK)[0] == SPARSE


@pytest.mark.parametrize("in_xla,expected", [(False, COMPOSITE), (True, COMPOSITE_XLA)])
def test_fused_false_takes_the_composite_path(in_xla, expected):
    path, reason = choose_path(sparse=False, in_xla=in_xla, fused=False, **OK)
    assert (path, reason.split(" ")[0]) == (expected, "fused=False")


CANNOT = [
    (dict(backend="torch"), "backend is 'torch'"),
    (dict(backend="jax", op_reason="JAX library not built"), "JAX library not built"),
    (dict(backend="jax", dtype="bfloat16"), "dtype bfloat16 has no fused kernel on JAX"),
    (dict(backend="jax", on_gpu=True, gpu_reason="CPU handler only"), "no GPU kernel"),
    (dict(backend="jax", strategy="ModelParallel"), "keras.distribution (ModelParallel)"),
    (dict(op_reason="op library not built"), "op library not built"),
    (dict(dtype="int32"), "dtype int32 has no fused kernel"),
    (dict(on_gpu=True, gpu_reason="built without CUDA"), "no GPU kernel: built without CUDA"),
    (dict(strategy="TPUStrategy"), "strategy TPUStrategy"),
]


@pytest.mark.parametrize("facts,why", CANNOT)
@pytest.mark.parametrize("in_xla", [False, True])
def test_fallbacks_say_why(facts, why, in_xla):
    path, reason = choose_path(sparse=False, in_xla=in_xla, fused=None, **{**OK, **facts})
    assert path == (COMPOSITE_XLA if in_xla else COMPOSITE)
    assert why in reason


@pytest.mark.parametrize("facts,why", CANNOT)
def test_fused_true_is_strict_for_every_reason(facts, why):
    with pytest.raises(dispatch.FusedUnavailableError, match="layer/kernel") as err:
        choose_path(sparse=False, in_xla=False, fused=True, variable="layer/kernel",
                    **{**OK, **facts})
    assert why in str(err.value)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fused", [None, True])
def test_jax_dense_takes_the_fused_kernel(dtype, fused):
    path, reason = choose_path(sparse=False, in_xla=False, fused=fused,
                               **{**OK, "backend": "jax", "dtype": dtype})
    assert path == FUSED and "JAX" in reason and "expectigrad_apply" in reason


def test_gpu_variable_with_gpu_kernels_is_fused():
    assert choose_path(sparse=False, in_xla=True, fused=None,
                       **{**OK, "on_gpu": True})[0] == FUSED


def test_every_supported_strategy_is_fused():
    for name in dispatch.FUSED_STRATEGIES:
        assert choose_path(sparse=False, in_xla=False, fused=None,
                           **{**OK, "strategy": name})[0] == FUSED


@pytest.mark.parametrize("in_xla,fused", list(itertools.product([False, True], [None, True, False])))
def test_lazy_sparse_takes_the_lazy_path_for_sparse_gradients_only(in_xla, fused):
    assert choose_path(sparse=True, in_xla=in_xla, fused=fused, lazy_sparse=True,
                       **OK)[0] == dispatch.SPARSE_LAZY == "sparse-lazy"
    dense = choose_path(sparse=False, in_xla=in_xla, fused=fused, lazy_sparse=True, **OK)
    assert dense == choose_path(sparse=False, in_xla=in_xla, fused=fused, **OK)


def test_op_without_xla_lowering_is_fused_outside_xla_only():
    """A build against a TensorFlow without XLA FFI headers (2.16) has no
    lowering: fused outside XLA, composite inside, strict with fused=True."""
    why = "TensorFlow 2.16.2 ships no XLA FFI headers"
    facts = dict(OK, xla_reason=why)
    assert choose_path(sparse=False, in_xla=False, fused=None, **facts)[0] == FUSED
    path, reason = choose_path(sparse=False, in_xla=True, fused=None, **facts)
    assert path == COMPOSITE_XLA and why in reason
    with pytest.raises(dispatch.FusedUnavailableError, match="ships no XLA FFI headers"):
        choose_path(sparse=False, in_xla=True, fused=True, variable="v", **facts)
