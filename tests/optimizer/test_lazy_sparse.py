"""Lazy sparse updates (``Expectigrad(lazy_sparse=True)``, issue 14 item 4):
an ``IndexedSlices`` gradient changes only its rows of sum, count, momentum
and the variable. Checked against ``LazySparseExpectigradNumpy`` (written
from the definition, no TF code), against the exact sparse path where the two
must agree (beta == 0) and must not (beta > 0, rows skipped), through the
validation layer, in eager mode, tf.function and XLA."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from expectigrad_tf import Expectigrad, _ops
from expectigrad_tf.reference import ExpectigradNumpy, LazySparseExpectigradNumpy

HAS_OP = _ops.op_module() is not None
ROWS, COLS = 12, 3
LR = 2.0**-4  # exact in float32: the reference uses the same value


def _random_slices(rng, dtype, max_rows=6):
    """1..max_rows row indices drawn with replacement (duplicates likely),
    plus an explicit duplicate of the first; a few exact zeros. The last two
    rows are never given."""
    k = int(rng.integers(1, max_rows + 1))
    idx = rng.integers(0, ROWS - 2, k)
    idx = np.concatenate([idx, idx[:1]])
    vals = rng.standard_normal((idx.size, COLS))
    vals[rng.random(vals.shape) < 0.15] = 0.0
    return idx.astype(np.int64), vals.astype(dtype)


def _stepper(opt, var, mode):
    def step(vals, idx, lr_scale=None):
        g = tf.IndexedSlices(vals, idx, tf.constant([ROWS, COLS], tf.int64))
        opt.apply([g], [var])

    if mode == "eager":
        return step
    sig = [tf.TensorSpec([None, COLS], var.dtype), tf.TensorSpec([None], tf.int64)]
    return tf.function(step, input_signature=sig, jit_compile=(mode == "xla"))


def _path(opt):
    return {p for p, _ in opt.dispatch_report().values()}


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("beta,sparse_counter", [(0.9, True), (0.9, False), (0.5, True), (0.0, True)])
def test_lazy_equals_reference_float64(mode, beta, sparse_counter):
    rng = np.random.default_rng(7)
    x0 = rng.standard_normal((ROWS, COLS))
    var = tf.Variable(x0)
    opt = Expectigrad(LR, beta=beta, sparse_counter=sparse_counter, lazy_sparse=True)
    opt.build([var])
    ref = LazySparseExpectigradNumpy(x0, lr=LR, beta=beta, sparse_counter=sparse_counter)
    step = _stepper(opt, var, mode)
    steps = 12 if mode == "xla" else 40  # XLA compiles once per number of indices
    ever = np.zeros(ROWS, bool)
    for _ in range(steps):
        idx, vals = _random_slices(rng, np.float64)
        ever[idx] = True
        step(tf.constant(vals), tf.constant(idx))
        ref.step(idx, vals)
    assert _path(opt) == {"sparse-lazy"}
    assert int(opt.iterations.numpy()) == steps
    np.testing.assert_allclose(var.numpy(), ref.x, rtol=1e-10, atol=1e-13)
    s, n, m = opt._slots_for(var)
    np.testing.assert_allclose(s.numpy(), ref.s, rtol=1e-10, atol=0)
    if sparse_counter:
        np.testing.assert_array_equal(n.numpy(), ref.n)
    if beta > 0:
        np.testing.assert_allclose(m.numpy(), ref.m, rtol=1e-10, atol=1e-13)
    # Rows never given are untouched.
    assert not ever.all()
    np.testing.assert_array_equal(var.numpy()[~ever], x0[~ever])


def test_lazy_float32_and_float16_close_to_reference():
    for dtype, rtol in (("float32", 2e-5), ("float16", 2e-2)):
        rng = np.random.default_rng(3)
        x0 = rng.standard_normal((ROWS, COLS)).astype(dtype)
        var = tf.Variable(x0)
        opt = Expectigrad(LR, beta=0.9, lazy_sparse=True)
        step = _stepper(opt, var, "function")
        ref = LazySparseExpectigradNumpy(x0.astype(np.float64), lr=LR, beta=0.9)
        for _ in range(20):
            idx, vals = _random_slices(rng, dtype)
            step(tf.constant(vals), tf.constant(idx))
            ref.step(idx, vals.astype(np.float64))
        np.testing.assert_allclose(var.numpy().astype(np.float64), ref.x, rtol=rtol, atol=rtol)


def test_reference_equals_algorithm_1_when_beta_is_zero():
    """The lazy reference itself: with beta == 0 it is Algorithm 1 on the
    densified gradient (ExpectigradNumpy), which is already row-only."""
    rng = np.random.default_rng(11)
    x0 = rng.standard_normal((ROWS, COLS))
    for sc in (True, False):
        lazy = LazySparseExpectigradNumpy(x0, lr=LR, beta=0.0, sparse_counter=sc)
        dense = ExpectigradNumpy(x0, lr=LR, beta=0.0, sparse_counter=sc)
        for _ in range(30):
            idx, vals = _random_slices(rng, np.float64)
            g = np.zeros((ROWS, COLS))
            np.add.at(g, idx, vals)
            lazy.step(idx, vals)
            dense.step(g)
        np.testing.assert_allclose(lazy.x, dense.x, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("sparse_counter", [True, False])
def test_lazy_equals_exact_when_beta_is_zero(sparse_counter):
    rng = np.random.default_rng(5)
    x0 = rng.standard_normal((ROWS, COLS))
    v_lazy, v_exact = tf.Variable(x0), tf.Variable(x0)
    o_lazy = Expectigrad(LR, beta=0.0, sparse_counter=sparse_counter, lazy_sparse=True)
    o_exact = Expectigrad(LR, beta=0.0, sparse_counter=sparse_counter)
    s_lazy, s_exact = _stepper(o_lazy, v_lazy, "function"), _stepper(o_exact, v_exact, "function")
    ref = ExpectigradNumpy(x0, lr=LR, beta=0.0, sparse_counter=sparse_counter)
    for _ in range(25):
        idx, vals = _random_slices(rng, np.float64)
        s_lazy(tf.constant(vals), tf.constant(idx))
        s_exact(tf.constant(vals), tf.constant(idx))
        g = np.zeros((ROWS, COLS))
        np.add.at(g, idx, vals)
        ref.step(g)
    assert _path(o_lazy) == {"sparse-lazy"} and _path(o_exact) == {"sparse"}
    np.testing.assert_array_equal(v_lazy.numpy(), v_exact.numpy())
    np.testing.assert_allclose(v_lazy.numpy(), ref.x, rtol=1e-10, atol=1e-13)


def test_lazy_differs_from_exact_when_rows_are_skipped():
    x0 = np.arange(ROWS * COLS, dtype=np.float64).reshape(ROWS, COLS) / 10
    v_lazy, v_exact = tf.Variable(x0), tf.Variable(x0)
    o_lazy = Expectigrad(LR, beta=0.9, lazy_sparse=True)
    o_exact = Expectigrad(LR, beta=0.9)
    ones = np.ones((1, COLS))
    for rows in ([0, 1], [0], [0]):  # row 1 given once, then skipped twice
        idx = tf.constant(rows, tf.int64)
        vals = tf.constant(np.repeat(ones, len(rows), 0))
        for o, v in ((o_lazy, v_lazy), (o_exact, v_exact)):
            o.apply([tf.IndexedSlices(vals, idx, tf.constant([ROWS, COLS], tf.int64))], [v])
    lazy, exact = v_lazy.numpy(), v_exact.numpy()
    # Row 0, given at every step: identical. Rows never given: unchanged in both.
    np.testing.assert_allclose(lazy[0], exact[0], rtol=1e-12)
    np.testing.assert_array_equal(lazy[2:], x0[2:])
    np.testing.assert_array_equal(exact[2:], x0[2:])
    # Row 1: exact keeps moving it with the decaying momentum, lazy does not.
    assert np.all(np.abs(lazy[1] - exact[1]) > 1e-3)
    m_lazy, m_exact = o_lazy._slots_for(v_lazy)[2].numpy(), o_exact._slots_for(v_exact)[2].numpy()
    np.testing.assert_allclose(m_exact[1], 0.9**2 * m_lazy[1], rtol=1e-12)
    # Lazy row 1 moved at step 1 only, by lr / (1 - beta) * m_1.
    np.testing.assert_allclose(lazy[1], x0[1] - LR / (1 - 0.9) * m_lazy[1], rtol=1e-12)


def test_dense_gradients_are_not_affected():
    rng = np.random.default_rng(2)
    x0 = rng.standard_normal((4, 5))
    var = tf.Variable(x0)
    opt = Expectigrad(LR, lazy_sparse=True)
    ref = ExpectigradNumpy(x0, lr=LR)
    for t in range(1, 6):
        g = rng.standard_normal((4, 5))
        opt.apply([tf.constant(g)], [var])
        ref.step(g)
    assert _path(opt) == {"fused" if HAS_OP else "composite"}
    np.testing.assert_allclose(var.numpy(), ref.x, rtol=1e-10)


def test_embedding_model_takes_lazy_sparse_and_fused_paths():
    model = keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(50, 8),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
    opt = Expectigrad(learning_rate=0.01, lazy_sparse=True)
    model.compile(optimizer=opt, loss="mse")
    emb0 = model.layers[0].get_weights()[0].copy()
    x = np.random.randint(0, 25, (64, 4))  # rows 25..49 never used
    y = np.random.randn(64, 1).astype("float32")
    model.fit(x, y, epochs=2, verbose=0, batch_size=16)
    report = opt.dispatch_report()
    assert {p for p, _ in report.values()} == {"sparse-lazy", "fused" if HAS_OP else "composite"}
    emb = model.layers[0].get_weights()[0]
    np.testing.assert_array_equal(emb[25:], emb0[25:])
    assert not np.allclose(emb[:25], emb0[:25])


# ------------------------------------------------------------ arguments
def test_config_round_trip_and_saving(tmp_path):
    assert Expectigrad().get_config()["lazy_sparse"] is False
    opt = Expectigrad(lazy_sparse=np.True_)
    config = opt.get_config()
    assert config["lazy_sparse"] is True
    assert Expectigrad.from_config(config).lazy_sparse is True
    model = keras.Sequential([keras.Input((2,), dtype="int32"), keras.layers.Embedding(10, 3),
                              keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile(optimizer=opt, loss="mse")
    model.fit(np.array([[1, 2], [3, 4]]), np.ones((2, 1)), verbose=0)
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    assert loaded.optimizer.lazy_sparse is True


@pytest.mark.parametrize("value", [0, 1, 0.0, "True", None, np.int64(1)])
def test_lazy_sparse_must_be_a_bool(value):
    with pytest.raises(TypeError, match=r"lazy_sparse.*True or False"):
        Expectigrad(lazy_sparse=value)


# ------------------------------------------------------- validation layer
class _Sched(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, var):
        self.var = var

    def __call__(self, step):
        return self.var.read_value()


def _snapshot(v, opt):
    return [v.numpy().copy()] + [np.asarray(x.numpy()).copy() for x in opt.variables]


def _assert_unchanged(before, after):
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("case", ["index", "negative-index", "nan-lr", "negative-lr"])
def test_bad_input_changes_nothing(mode, case):
    x0 = np.random.default_rng(0).standard_normal((ROWS, COLS))
    var = tf.Variable(x0)
    lr_var = tf.Variable(LR, dtype=tf.float32)
    opt = Expectigrad(_Sched(lr_var), beta=0.9, lazy_sparse=True)
    opt.build([var])
    step = _stepper(opt, var, mode)
    idx = np.array([1, 4], np.int64)
    vals = np.ones((2, COLS))
    if case == "index":
        idx = np.array([1, ROWS], np.int64)
    elif case == "negative-index":
        idx = np.array([-1, 2], np.int64)
    else:
        lr_var.assign(math.nan if case == "nan-lr" else -0.5)
    before = _snapshot(var, opt)
    if mode == "xla":
        # Assertions compile to no-ops inside XLA: the step is gated instead
        # (a bad lr or index writes every old value back), without an error.
        step(tf.constant(vals), tf.constant(idx))
    elif case.endswith("index"):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices .* must be in \[0, 12\)"):
            step(tf.constant(vals), tf.constant(idx))
    else:
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be finite and >= 0"):
            step(tf.constant(vals), tf.constant(idx))
    _assert_unchanged(before, _snapshot(var, opt))
    assert int(opt.iterations.numpy()) == 0
    # A good step now is the reference's first step.
    lr_var.assign(LR)
    good_idx, good_vals = np.array([3, 3, 7], np.int64), np.array([[1.0, 0.0, -2.0]] * 3)
    step(tf.constant(good_vals), tf.constant(good_idx))
    ref = LazySparseExpectigradNumpy(x0, lr=LR, beta=0.9)
    ref.step(good_idx, good_vals)
    np.testing.assert_allclose(var.numpy(), ref.x, rtol=1e-12, atol=1e-15)
    assert int(opt.iterations.numpy()) == 1


@pytest.mark.parametrize("lazy", [False, True], ids=["exact", "lazy"])
def test_bad_index_inside_xla_with_a_fused_variable_changes_nothing(lazy):
    """A step with a sparse and a dense gradient inside XLA: an index out of
    range gates the sparse writes and ``iterations``, and the fused op's custom
    call gets a NaN lr (the CPU handler raises on it, the CUDA handler skips):
    nothing changes either way."""
    emb = tf.Variable(np.random.default_rng(1).standard_normal((ROWS, COLS)))
    dense = tf.Variable(np.ones((2, 2)))
    opt = Expectigrad(LR, lazy_sparse=lazy)
    opt.build([emb, dense])

    @tf.function(jit_compile=True)
    def step(idx):
        g = tf.IndexedSlices(tf.ones([2, COLS], tf.float64), idx, tf.constant([ROWS, COLS], tf.int64))
        opt.apply([g, tf.ones([2, 2], tf.float64)], [emb, dense])

    step(tf.constant([0, 1], tf.int64))
    before = _snapshot(emb, opt) + [dense.numpy().copy()]
    try:
        step(tf.constant([0, ROWS + 5], tf.int64))
    except tf.errors.InvalidArgumentError:
        pass  # the fused op's CPU custom call
    _assert_unchanged(before, _snapshot(emb, opt) + [dense.numpy().copy()])
    assert int(opt.iterations.numpy()) == 1
    assert {p for p, _ in opt.dispatch_report().values()} == {
        "sparse-lazy" if lazy else "sparse", "fused" if HAS_OP else "composite-xla"}


@pytest.mark.parametrize("beta,sparse_counter", [(0.9, True), (0.0, False)])
def test_lazy_step_touches_the_state_and_table_by_rows_only(beta, sparse_counter):
    """O(rows given), checked on the traced step (not by timing): the packed
    state and the table are only read by row gathers and written by row
    scatters, never read whole (a ReadVariableOp, or tf.gather along axis 1,
    would cost O(table) per step)."""
    var = tf.Variable(np.zeros((ROWS, COLS), np.float32))
    opt = Expectigrad(LR, beta=beta, sparse_counter=sparse_counter, lazy_sparse=True)
    opt.build([var])
    state = opt._state_for(var)
    step = tf.function(lambda v, i: opt.apply(
        [tf.IndexedSlices(v, i, tf.constant([ROWS, COLS], tf.int64))], [var]))
    fn = step.get_concrete_function(tf.TensorSpec([None, COLS], tf.float32),
                                    tf.TensorSpec([None], tf.int64))
    captured = {id(ext): internal for ext, internal in fn.graph.captures}
    for what, v in (("state", state.value if isinstance(state, keras.Variable) else state),
                    ("table", var)):
        placeholder = captured[id(v.handle)]
        uses = {op.type for op in fn.graph.get_operations()
                if any(inp is placeholder for inp in op.inputs)}
        assert uses, f"the {what} is not used by the step"
        assert uses <= {"ResourceGather", "ResourceGatherNd", "ResourceScatterUpdate",
                        "ResourceScatterNdUpdate", "VarIsInitializedOp"}, (what, uses)
