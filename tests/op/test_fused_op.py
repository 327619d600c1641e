"""The raw ExpectigradApply op: fused == composite == NumPy reference, input
validation, fuzzing, 16-bit dtypes and MirroredStrategy."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from expectigrad_tf import Expectigrad, _ops
from expectigrad_tf.reference import ExpectigradNumpy

op = _ops.op_module()
pytestmark = pytest.mark.skipif(op is None, reason=f"fused op unavailable: {_ops.unavailable_reason()}")


def _call(vars_, states, grads, lr=0.01, beta=0.9, eps=1e-8, step=1, scalar=tf.float32,
          sparse_counter=True, momentum=True):
    return op.expectigrad_apply(
        var=[v.handle for v in vars_], state=[s.handle for s in states],
        grad=grads, lr=tf.constant(lr, scalar), beta=tf.constant(beta, scalar),
        epsilon=tf.constant(eps, scalar), step=tf.constant(step, tf.int64),
        sparse_counter=sparse_counter, momentum=momentum)


def _rows(sparse_counter, momentum):
    return 1 + int(sparse_counter) + int(momentum)


def _state(shapes, dtype, state_dtype, beta, sparse_counter, rng):
    """Variables and their packed states (sum, count?, momentum?)."""
    xs = [rng.standard_normal(s) for s in shapes]
    vars_ = [tf.Variable(x.astype(dtype)) for x in xs]
    rows = _rows(sparse_counter, beta > 0)
    states = [tf.Variable(np.zeros((rows,) + tuple(s), state_dtype)) for s in shapes]
    return xs, vars_, states


SIZES = [(0,), (1,), (7,), (4097,), (3, 5), (1 << 20) + 3]  # last crosses the shard threshold


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 1e-6)])
@pytest.mark.parametrize("beta,sparse_counter", [(0.0, True), (0.9, True), (0.0, False), (0.9, False)])
def test_multi_tensor_matches_reference(dtype, rtol, beta, sparse_counter):
    rng = np.random.default_rng(1)
    shapes = [s if isinstance(s, tuple) else (s,) for s in SIZES]
    xs, vars_, states = _state(shapes, dtype, dtype, beta, sparse_counter, rng)
    lr = 2.0**-7
    refs = [ExpectigradNumpy(x.astype(dtype).astype(np.float64), lr=lr, beta=beta,
                             sparse_counter=sparse_counter) for x in xs]
    scalar = tf.float64 if dtype == "float64" else tf.float32
    for t in range(1, 4):
        gs = []
        for s in shapes:
            g = rng.standard_normal(s)
            g[rng.random(s) < 0.3] = 0.0  # exact zeros: counter and 0/0 := 0
            gs.append(g.astype(dtype))
        _call(vars_, states, [tf.constant(g) for g in gs], lr=lr, beta=beta, step=t, scalar=scalar,
              sparse_counter=sparse_counter, momentum=beta > 0)
        for r, g in zip(refs, gs):
            r.step(g.astype(np.float64))
    for v, st, r in zip(vars_, states, refs):
        state = st.numpy()
        np.testing.assert_allclose(v.numpy(), r.x, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(state[0], r.s, rtol=rtol)
        if sparse_counter:
            np.testing.assert_array_equal(state[1], r.n)
        if beta > 0:
            np.testing.assert_allclose(state[-1], r.m, rtol=rtol * 10, atol=1e-7)


@pytest.mark.parametrize("fn", ["eager", "function"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_equals_composite(dtype, fn):
    rng = np.random.default_rng(2)
    shapes = [(0,), (1,), (7,), (4097,), (64, 33)]
    results = {}
    for fused in (None, False):
        vs = [tf.Variable(np.linspace(-1, 1, int(np.prod(s))).reshape(s).astype(dtype)) for s in shapes]
        opt = Expectigrad(2.0**-6, fused=fused)
        step = (lambda gs: opt.apply(gs, vs))
        if fn == "function":
            step = tf.function(step)
        r = np.random.default_rng(3)
        for _ in range(5):
            step([tf.constant(r.standard_normal(s).astype(dtype)) for s in shapes])
        results[fused] = [v.numpy() for v in vs]
        assert {p for p, _ in opt.dispatch_report().values()} == {"fused" if fused is None else "composite"}
    for a, b in zip(results[None], results[False]):
        np.testing.assert_allclose(a, b, rtol=1e-12 if dtype == "float64" else 1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_variables_keep_float32_state(dtype):
    import keras

    v = keras.Variable(np.linspace(-1, 1, 10), dtype=dtype)
    ref = ExpectigradNumpy(np.asarray(v.numpy(), np.float64), lr=2.0**-6)
    opt = Expectigrad(2.0**-6)
    for t in range(20):
        g = np.cos(np.arange(10) + t)
        g[0] = 0.0
        opt.apply([tf.constant(g, dtype=dtype)], [v])
        ref.step(np.asarray(tf.constant(g, dtype=dtype).numpy(), np.float64))
    s, n, m = opt._slots_for(v)
    # Sum, count and momentum: one packed float32 state (momentum too).
    state = opt._state_for(v)
    assert state.dtype == "float32" and tuple(state.shape) == (3, 10)
    assert s.dtype == "float32" and n.dtype == "float32" and m.dtype == "float32"
    np.testing.assert_array_equal(n.numpy(), ref.n)
    tol = 1e-2 if dtype == "float16" else 5e-2
    np.testing.assert_allclose(np.asarray(v.numpy(), np.float64), ref.x, rtol=tol, atol=tol)


def test_count_stays_exact_past_bfloat16_range():
    import keras

    v = keras.Variable(np.zeros(4), dtype="bfloat16")
    opt = Expectigrad(1e-4)
    step = tf.function(lambda: opt.apply([tf.ones(4, tf.bfloat16)], [v]))
    for _ in range(600):  # bfloat16 itself stops counting at 256
        step()
    np.testing.assert_array_equal(opt._slots_for(v)[1].numpy(), 600.0)


# ---------------------------------------------------------------- bad input
def _good(dtype="float32"):
    vs = [tf.Variable(np.ones(3, dtype))]
    return vs, [tf.Variable(np.zeros((3, 3), dtype))]


@pytest.mark.parametrize("case,match", [
    ("grad_shape", r"grad\[0\] has shape \[2\] but var\[0\] has shape \[3\]"),
    ("state_dtype", r"state\[0\] has dtype double, expected float"),
    ("state_shape", r"state\[0\] has shape \[4\]"),
    ("state_rows", r"state\[0\] has shape \[2,3\] but must be \[3,3\]"),
    ("lr_shape", r"lr must be a scalar"),
    ("lr_nan", r"lr must be finite"),
    ("beta_one", r"beta must be in \[0, 1\)"),
    ("eps_zero", r"epsilon must be finite and > 0"),
    ("step_zero", r"step must be >= 1"),
    ("alias", r"the same variable is passed more than once"),
    ("uninit", r"var\[0\] is not|not initialized|uninitialized"),
])
def test_op_rejects_bad_input_cleanly(case, match):
    vs, ss = _good()
    kw = dict(lr=tf.constant(0.1), beta=tf.constant(0.9), epsilon=tf.constant(1e-8),
              step=tf.constant(1, tf.int64), sparse_counter=True, momentum=True)
    grads = [tf.ones(3)]
    if case == "grad_shape":
        grads = [tf.ones(2)]
    elif case == "state_dtype":
        ss = [tf.Variable(np.zeros((3, 3), np.float64))]
    elif case == "state_shape":
        ss = [tf.Variable(np.zeros(4, np.float32))]
    elif case == "state_rows":  # rows for sparse_counter=False, but True is passed
        ss = [tf.Variable(np.zeros((2, 3), np.float32))]
    elif case == "lr_shape":
        kw["lr"] = tf.constant([0.1, 0.2])
    elif case == "lr_nan":
        kw["lr"] = tf.constant(np.nan, tf.float32)
    elif case == "beta_one":
        kw["beta"] = tf.constant(1.0)
    elif case == "eps_zero":
        kw["epsilon"] = tf.constant(0.0)
    elif case == "step_zero":
        kw["step"] = tf.constant(0, tf.int64)
    elif case == "alias":
        ss = [vs[0]]
    elif case == "uninit":
        from tensorflow.python.ops import resource_variable_ops
        h = resource_variable_ops.var_handle_op(dtype=tf.float32, shape=[3], shared_name="never_init_eg")
        with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError,
                            tf.errors.NotFoundError), match=match):
            op.expectigrad_apply(var=[h], state=[s.handle for s in ss], grad=grads, **kw)
        return
    before = vs[0].numpy().copy()
    state_before = ss[0].numpy().copy()
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=match):
        op.expectigrad_apply(var=[v.handle for v in vs], state=[s.handle for s in ss],
                             grad=grads, **kw)
    np.testing.assert_array_equal(vs[0].numpy(), before)
    np.testing.assert_array_equal(ss[0].numpy(), state_before)


def test_list_length_mismatch_is_rejected():
    vs, ss = _good()
    kw = dict(lr=tf.constant(0.1), beta=tf.constant(0.9), epsilon=tf.constant(1e-8),
              step=tf.constant(1, tf.int64), sparse_counter=True, momentum=True)
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        op.expectigrad_apply(var=[v.handle for v in vs], state=[s.handle for s in ss] * 2,
                             grad=[tf.ones(3)], **kw)
    # In a graph, the shape function names the state and the rows it needs.
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=r"state\[0\]"):
        tf.function(lambda: op.expectigrad_apply(
            var=[vs[0].handle], state=[ss[0].handle], grad=[tf.ones(3)],
            **{**kw, "sparse_counter": False}))()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 4),
    sizes=st.lists(st.integers(0, 50), min_size=4, max_size=4),
    grad_delta=st.lists(st.integers(-1, 1), min_size=4, max_size=4),
    dtype=st.sampled_from(["float32", "float64", "float16", "bfloat16"]),
    state_matches=st.booleans(),
    with_count=st.booleans(),
    with_mom=st.booleans(),
)
def test_fuzz_raw_op_clean_error_or_correct(n, sizes, grad_delta, dtype, state_matches, with_count, with_mom):
    state = "float64" if dtype == "float64" else "float32"
    if not state_matches:
        state = "float32" if state == "float64" else "float64"
    shapes = [(sizes[i],) for i in range(n)]
    gshapes = [(max(0, sizes[i] + grad_delta[i]),) for i in range(n)]
    xs = [np.linspace(-1, 1, s[0]) for s in shapes]
    vs = [tf.Variable(tf.constant(x, dtype)) for x in xs]
    rows = _rows(with_count, with_mom)
    ss = [tf.Variable(np.zeros((rows,) + s, state)) for s in shapes]
    gs = [tf.constant(np.full(s, 0.5), dtype) for s in gshapes]
    ok = state_matches and gshapes == shapes
    try:
        _call(vs, ss, gs, lr=0.1, beta=0.5, step=1, sparse_counter=with_count, momentum=with_mom)
    except tf.errors.InvalidArgumentError as e:
        assert not ok, f"valid input rejected: {e}"
        assert any(w in str(e) for w in ("grad[", "state[")), str(e)
        for v, x in zip(vs, xs):  # nothing was modified
            np.testing.assert_array_equal(np.asarray(v.numpy(), np.float64), np.asarray(tf.constant(x, dtype).numpy(), np.float64))
        return
    assert ok, "invalid input accepted"
    for v, x in zip(vs, xs):
        # First step: u = g / (eps + |g|) ~ 1 and m = (1-beta) u, x -= lr/(1-beta) m = lr
        expected = np.asarray(tf.constant(x, dtype).numpy(), np.float64) - 0.1
        tol = 1e-6 if dtype in ("float32", "float64") else 2e-2
        np.testing.assert_allclose(np.asarray(v.numpy(), np.float64), expected, rtol=tol, atol=tol)


def _mirrored_check():
    """Run by test_mirrored_subprocess.py in a process with two logical CPUs:
    fused and composite paths, with a schedule (a per-replica learning rate)."""
    import keras

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype("float32")
    y = rng.standard_normal((64, 1)).astype("float32")
    for fused, expected in ((None, "fused"), (False, "composite")):
        weights = {}
        for name, strategy in [("single", tf.distribute.get_strategy()),
                               ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
            with strategy.scope():
                keras.utils.set_random_seed(0)
                model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                                          keras.layers.Dense(1)])
                lr = keras.optimizers.schedules.ExponentialDecay(0.01, 4, 0.5)
                opt = Expectigrad(lr, fused=fused)
                model.compile(optimizer=opt, loss="mse")
            model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
            assert {p for p, _ in opt.dispatch_report().values()} == {expected}, opt.dispatch_report()
            weights[name] = model.get_weights()
        for a, b in zip(weights["single"], weights["mirrored"]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
