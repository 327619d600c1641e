"""The fused op inside XLA (jit_compile=True): its lowering emits one custom
call `expectigrad_apply` into the same kernels, in place. Checked across
paths: the XLA lowering, the op outside XLA, the composite path under XLA and
the NumPy reference give the same answer (bit-equal where the arithmetic is
the same) and the same error, with the same state afterwards."""

import numpy as np
import pytest
import tensorflow as tf

from expectigrad_tf import Expectigrad, _ops
from expectigrad_tf.reference import ExpectigradNumpy

op = _ops.op_module()
# A build against TensorFlow 2.16 (no XLA FFI headers) has no lowering; there
# the optimizer's composite path runs inside XLA (test_xla_fallback.py).
NO_LOWERING = _ops.fused_status()["xla_reason"]
pytestmark = [
    pytest.mark.skipif(op is None, reason=f"fused op unavailable: {_ops.unavailable_reason()}"),
    pytest.mark.skipif(NO_LOWERING is not None, reason=str(NO_LOWERING)),
]

VARIANTS = [(0.0, True), (0.9, True), (0.0, False), (0.9, False)]
DTYPES = ["float32", "float64", "float16", "bfloat16"]
# Several tensors per call, an empty one, sizes that are not multiples of any
# vector width, one large enough to be split over the thread pool.
SHAPES = [(3, 5), (0,), (1,), (7,), (4097,), (200_003,)]


def _grads(rng, dtype, steps):
    out = []
    for _ in range(steps):
        gs = []
        for s in SHAPES:
            g = rng.standard_normal(s)
            g[rng.random(s) < 0.3] = 0.0  # exact zeros: counter and 0/0 := 0
            gs.append(tf.constant(g, dtype))
        out.append(gs)
    return out


def _run(jit, dtype, beta, sparse_counter, fused=None, steps=4, lr=0.01):
    rng = np.random.default_rng(7)
    variables = [tf.Variable(tf.constant(rng.standard_normal(s), dtype)) for s in SHAPES]
    opt = Expectigrad(learning_rate=lr, beta=beta, sparse_counter=sparse_counter, fused=fused)
    opt.build(variables)

    @tf.function(jit_compile=jit)
    def step(gs):
        opt.apply(gs, variables)

    for gs in _grads(rng, dtype, steps):
        step(gs)
    return [v.numpy() for v in variables] + [v.numpy() for v in opt.variables], opt


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta,sparse_counter", VARIANTS)
def test_xla_is_bit_equal_to_the_op_outside_xla(dtype, beta, sparse_counter):
    eager, _ = _run(False, dtype, beta, sparse_counter)
    xla, opt = _run(True, dtype, beta, sparse_counter)
    assert {p for p, _ in opt.dispatch_report().values()} == {"fused"}
    assert all("XLA" in reason for _, reason in opt.dispatch_report().values())
    assert len(eager) == len(xla)
    for a, b in zip(eager, xla):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("beta,sparse_counter", VARIANTS)
def test_xla_float64_matches_the_reference(beta, sparse_counter):
    # lr exactly representable: Keras keeps the learning rate in float32.
    got, _ = _run(True, "float64", beta, sparse_counter, steps=5, lr=2.0**-7)
    rng = np.random.default_rng(7)
    x0 = [rng.standard_normal(s) for s in SHAPES]
    refs = [ExpectigradNumpy(x, lr=2.0**-7, beta=beta, sparse_counter=sparse_counter) for x in x0]
    for gs in _grads(rng, "float64", 5):
        for r, g in zip(refs, gs):
            r.step(g.numpy())
    for v, r in zip(got, refs):
        np.testing.assert_allclose(v, r.x, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("beta,sparse_counter", VARIANTS)
def test_xla_fused_agrees_with_xla_composite(beta, sparse_counter):
    fused, _ = _run(True, "float32", beta, sparse_counter)
    composite, opt = _run(True, "float32", beta, sparse_counter, fused=False)
    assert {p for p, _ in opt.dispatch_report().values()} == {"composite-xla"}
    for a, b in zip(fused, composite):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


def _raw_function(n=1000):
    var = tf.Variable(tf.range(n, dtype=tf.float32) / n)
    slots = [tf.Variable(tf.zeros([3, n]))]  # packed: sum, count, momentum
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function(jit_compile=True)
    def f(g, lr):
        op.expectigrad_apply(var=[var.handle], state=[slots[0].handle], grad=[g], lr=lr,
                             beta=tf.constant(0.9), epsilon=tf.constant(1e-8),
                             step=step + 1, sparse_counter=True, momentum=True)
        step.assign_add(1)

    return f, [var, step] + slots


def test_lowering_is_one_in_place_custom_call():
    f, _ = _raw_function(10_000)
    hlo = f.experimental_get_compiler_ir(tf.ones([10_000]), tf.constant(0.1))(stage="optimized_hlo")
    calls = [line for line in hlo.splitlines() if "custom-call(" in line]
    assert len(calls) == 1 and 'custom_call_target="expectigrad_apply"' in calls[0], calls
    assert "API_VERSION_TYPED_FFI" in calls[0]
    assert "output_to_operand_aliasing={{0}: (0, {}), {1}: (1, {})}" in calls[0]
    # In place: XLA adds no copy of a variable- or state-sized buffer around the call.
    assert not [line for line in hlo.splitlines()
                if " copy(" in line and ("f32[10000]" in line or "f32[3,10000]" in line)]


@pytest.mark.parametrize("lr,match", [(-0.1, "lr must be finite and >= 0"),
                                      (float("nan"), "lr must be finite and >= 0"),
                                      (float("inf"), "lr must be finite and >= 0")])
def test_bad_lr_inside_xla_fails_and_changes_nothing(lr, match):
    f, state = _raw_function()
    f(tf.ones([1000]), tf.constant(0.1))
    # The variable and its slots (not the step counter, a separate variable
    # of the same XLA computation: XLA may already have updated it in place).
    state = [state[0]] + state[2:]
    before = [v.numpy() for v in state]
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        f(tf.ones([1000]), tf.constant(lr))
    for a, b in zip(before, [v.numpy() for v in state]):
        np.testing.assert_array_equal(a, b)


def test_same_error_outside_xla():
    """The TF kernel rejects the same learning rate with the same message."""
    var, s = tf.Variable([1.0]), tf.Variable([[0.0]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="lr must be finite and >= 0"):
        op.expectigrad_apply(var=[var.handle], state=[s.handle], sparse_counter=False,
                             momentum=False,
                             grad=[tf.ones([1])], lr=tf.constant(-0.1), beta=tf.constant(0.9),
                             epsilon=tf.constant(1e-8), step=tf.constant(1, tf.int64))
    assert var.numpy()[0] == 1.0 and s.numpy()[0, 0] == 0.0


def test_shape_mismatch_is_rejected_at_compile_time():
    var, s = tf.Variable(tf.zeros([3])), tf.Variable(tf.zeros([1, 3]))

    @tf.function(jit_compile=True)
    def f():
        op.expectigrad_apply(var=[var.handle], state=[s.handle], sparse_counter=False,
                             momentum=False,
                             grad=[tf.ones([1])], lr=tf.constant(0.1), beta=tf.constant(0.9),
                             epsilon=tf.constant(1e-8), step=tf.constant(1, tf.int64))

    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=r"grad\[0\] has shape"):
        f()
    np.testing.assert_array_equal(var.numpy(), np.zeros(3))


def test_same_variable_twice_is_rejected_inside_xla():
    # y is state[0] and var[1]: every shape is consistent, only the aliasing is wrong.
    x, y, z = (tf.Variable(tf.zeros(s)) for s in ([3], [1, 3], [1, 1, 3]))

    @tf.function(jit_compile=True)
    def f():
        op.expectigrad_apply(var=[x.handle, y.handle], state=[y.handle, z.handle],
                             sparse_counter=False, momentum=False,
                             grad=[tf.ones([3]), tf.ones([1, 3])], lr=tf.constant(0.1),
                             beta=tf.constant(0.9), epsilon=tf.constant(1e-8),
                             step=tf.constant(1, tf.int64))

    with pytest.raises(tf.errors.InvalidArgumentError, match="more than once"):
        f()
    for v in (x, y, z):
        np.testing.assert_array_equal(v.numpy(), 0.0)


def test_gpu_library_with_its_xla_lowering_loads_without_a_gpu():
    """The CUDA library (GPU kernels, XLA:GPU lowering, CUDA custom-call
    handler) links and loads, so its registrations resolve, on a machine
    without a GPU (built whenever nvcc is found, as on CI)."""
    import os

    info = _ops.fused_status()["build_info"] or {}
    if not info.get("cuda"):
        pytest.skip("built without nvcc: no GPU library to load")
    lib = os.path.join(os.path.dirname(_ops.__file__), _ops.CUDA_LIB)
    assert tf.load_op_library(lib) is not None


def test_many_tensors_are_split_into_several_calls_and_stay_bit_equal():
    """More tensors than one custom call takes (40): several calls, same
    result as the op outside XLA."""
    rng = np.random.default_rng(3)
    shapes = [(int(rng.integers(1, 50)),) for _ in range(150)]
    grads = [tf.constant(rng.standard_normal(s), tf.float32) for s in shapes]
    results = []
    for jit in (False, True):
        variables = [tf.Variable(tf.ones(s)) for s in shapes]
        opt = Expectigrad(0.01)
        opt.build(variables)
        fn = tf.function(lambda gs: opt.apply(gs, variables), jit_compile=jit)
        for _ in range(2):
            fn(grads)
        results.append([v.numpy() for v in variables + list(opt.variables)])
        if jit:
            hlo = fn.experimental_get_compiler_ir(grads)(stage="hlo")
            assert hlo.count('custom_call_target="expectigrad_apply"') == 4
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("jit", [False, True])
def test_shape_mismatch_hidden_from_shape_inference_is_rejected(jit):
    """Variables of unknown static shape: graph construction cannot see the
    mismatch, so the kernel (outside XLA) and the lowering (inside) must."""
    var = tf.Variable(tf.zeros([3]), shape=tf.TensorShape(None))
    s = tf.Variable(tf.zeros([1, 2]), shape=tf.TensorShape(None))

    @tf.function(jit_compile=jit)
    def f():
        op.expectigrad_apply(var=[var.handle], state=[s.handle], sparse_counter=False,
                             momentum=False,
                             grad=[tf.ones([3])], lr=tf.constant(0.1), beta=tf.constant(0.9),
                             epsilon=tf.constant(1e-8), step=tf.constant(1, tf.int64))

    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"state\[0\] has shape \[1,2\] but must be \[1,3\]"):
        f()
    np.testing.assert_array_equal(var.numpy(), np.zeros(3))
    np.testing.assert_array_equal(s.numpy(), np.zeros((1, 2)))
