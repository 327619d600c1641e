"""tf.compat.v1: expectigrad_tf.compat.v1.ExpectigradOptimizer in graphs and
Sessions (minimize, Saver) and in TF2 eager mode (apply_gradients), exact
against the NumPy reference in float64."""

import numpy as np
import pytest
import tensorflow as tf

from expectigrad_tf import _ops
from expectigrad_tf.compat.v1 import ExpectigradOptimizer
from expectigrad_tf.reference import ExpectigradNumpy, LazySparseExpectigradNumpy

v1 = tf.compat.v1
LR = 0.01  # a Python float: float64 variables get it in float64
X0 = np.linspace(-1.0, 1.0, 12).reshape(6, 2)


def _grads(n=10, seed=0):
    rng = np.random.default_rng(seed)
    gs = [rng.standard_normal((6, 2)) for _ in range(n)]
    for g in gs[::3]:
        g[2] = 0.0  # exact zeros: the sparse counter skips them
    return gs


def _sparse_steps(n=10, seed=1):
    """(indices with a duplicate, values): rows 4 and 5 are never given."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        idx = rng.choice(4, size=2, replace=False)
        idx = np.concatenate([idx, idx[:1]])
        out.append((idx, rng.standard_normal((3, 2))))
    return out


def _densify(idx, vals, rows=6):
    dense = np.zeros((rows, vals.shape[1]))
    np.add.at(dense, idx, vals)
    return dense


CONFIGS = [(0.9, True), (0.9, False), (0.0, True), (0.5, False)]


def _packed(ref, beta, sparse_counter):
    """The packed state the reference's slots make: sum, then count (if
    sparse_counter), then momentum (if beta > 0)."""
    return np.stack([ref.s] + ([ref.n] if sparse_counter else [])
                    + ([ref.m] if beta > 0 else []))


@pytest.mark.parametrize("beta,sparse_counter", CONFIGS)
def test_session_minimize_dense_and_sparse_equal_reference(beta, sparse_counter):
    kw = dict(learning_rate=LR, beta=beta, sparse_counter=sparse_counter)
    with tf.Graph().as_default():
        w = v1.get_variable("w", initializer=X0, use_resource=True)
        g_in = v1.placeholder(tf.float64, [6, 2])
        dense_opt = ExpectigradOptimizer(**kw)
        train = dense_opt.minimize(tf.reduce_sum(w * g_in))  # gradient = g_in
        e = v1.get_variable("e", initializer=X0, use_resource=True)
        idx_in = v1.placeholder(tf.int32, [None])
        vals_in = v1.placeholder(tf.float64, [None, 2])
        sparse_opt = ExpectigradOptimizer(**kw)
        sparse_loss = tf.reduce_sum(tf.gather(e, idx_in) * vals_in)
        (grad, _), = sparse_opt.compute_gradients(sparse_loss, var_list=[e])
        assert isinstance(grad, tf.IndexedSlices)
        sparse_train = sparse_opt.minimize(sparse_loss, var_list=[e])
        rows = 1 + int(sparse_counter) + int(beta > 0)
        states = [opt.get_slot(v, "state") for opt, v in ((dense_opt, w), (sparse_opt, e))]
        for state in states:
            assert state.shape == (rows, 6, 2) and state.dtype.base_dtype == tf.float64
        # (sum, count, momentum) as graph tensors (reads of the state), by name.
        s_t, n_t, m_t = sparse_opt._slots_for(e)
        assert (n_t is None) == (not sparse_counter) and (m_t is None) == (beta == 0)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            ref = ExpectigradNumpy(X0, lr=LR, beta=beta, sparse_counter=sparse_counter)
            sref = ExpectigradNumpy(X0, lr=LR, beta=beta, sparse_counter=sparse_counter)
            for g, (idx, vals) in zip(_grads(), _sparse_steps()):
                sess.run(train, {g_in: g})
                ref.step(g)
                sess.run(sparse_train, {idx_in: idx, vals_in: vals})
                sref.step(_densify(idx, vals))
            np.testing.assert_allclose(sess.run(w), ref.x, rtol=1e-10)
            np.testing.assert_allclose(sess.run(e), sref.x, rtol=1e-10)
            dense_state, sparse_state = sess.run(states)
            np.testing.assert_allclose(dense_state, _packed(ref, beta, sparse_counter),
                                       rtol=1e-10, atol=1e-15)
            np.testing.assert_allclose(sparse_state, _packed(sref, beta, sparse_counter),
                                       rtol=1e-10, atol=1e-15)
            s = sess.run(s_t)
            np.testing.assert_allclose(s, sref.s, rtol=1e-10)
            assert np.all(s[4:] == 0)  # rows never given
            np.testing.assert_array_equal(sess.run(e)[4:], X0[4:])
            if sparse_counter:
                np.testing.assert_array_equal(sess.run(n_t), sref.n)
            if beta > 0:
                np.testing.assert_allclose(sess.run(m_t), sref.m, rtol=1e-10, atol=1e-15)
            assert sess.run(dense_opt.iterations) == len(_grads())
            assert sess.run(sparse_opt.iterations) == len(_sparse_steps())
    assert dense_opt.dispatch_report() == {"w:0": ("fused", "dense gradient, fused op")}
    assert [p for p, _ in sparse_opt.dispatch_report().values()] == ["sparse"]
    assert dense_opt.get_slot_names() == ["state"]


def test_session_dense_runs_the_fused_op():
    with tf.Graph().as_default() as graph:
        w = v1.get_variable("w", initializer=X0, use_resource=True)
        ExpectigradOptimizer().minimize(tf.reduce_sum(tf.square(w)))
        types = {op.type for op in graph.get_operations()}
    assert "ExpectigradApply" in types
    assert "Sqrt" not in types and "PartitionedCall" not in types  # no composite maths


def test_session_composite_fallback_without_the_op_equals_reference(monkeypatch):
    monkeypatch.setattr(_ops, "unavailable_reason", lambda: "op library not built (test)")
    monkeypatch.setattr(_ops, "_warned", True)
    with tf.Graph().as_default():
        w = v1.get_variable("w", initializer=X0, use_resource=True)
        g_in = v1.placeholder(tf.float64, [6, 2])
        opt = ExpectigradOptimizer(learning_rate=LR)
        train = opt.minimize(tf.reduce_sum(w * g_in))
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            ref = ExpectigradNumpy(X0, lr=LR)
            for g in _grads():
                sess.run(train, {g_in: g})
                ref.step(g)
            np.testing.assert_allclose(sess.run(w), ref.x, rtol=1e-10)
    assert opt.dispatch_report()["w:0"] == ("composite", "op library not built (test)")


def test_saver_restores_slots_and_step_in_a_new_graph(tmp_path):
    gs = _grads()
    path = str(tmp_path / "ckpt")

    def build():
        w = v1.get_variable("w", initializer=X0, use_resource=True)
        g_in = v1.placeholder(tf.float64, [6, 2])
        opt = ExpectigradOptimizer(learning_rate=LR)
        return w, g_in, opt, opt.minimize(tf.reduce_sum(w * g_in))

    with tf.Graph().as_default():
        w, g_in, opt, train = build()
        saver = v1.train.Saver()
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            for g in gs[:5]:
                sess.run(train, {g_in: g})
            saved_state = sess.run(opt.get_slot(w, "state"))
            saver.save(sess, path)
    names = dict(tf.train.list_variables(path))
    assert names["Expectigrad_step"] == []
    # One packed state slot (sum, count, momentum), not one per slot.
    assert names["w/Expectigrad"] == [3, 6, 2]
    assert sorted(n for n in names if n.startswith("w/")) == ["w/Expectigrad"]
    assert np.all(saved_state[0] > 0)  # the state saved is not the initial zeros
    with tf.Graph().as_default():
        w, g_in, opt, train = build()
        with v1.Session() as sess:
            v1.train.Saver().restore(sess, path)
            assert sess.run(opt.iterations) == 5
            np.testing.assert_array_equal(sess.run(opt.get_slot(w, "state")), saved_state)
            for g in gs[5:]:
                sess.run(train, {g_in: g})
            resumed = sess.run(w)
    ref = ExpectigradNumpy(X0, lr=LR)
    for g in gs:
        ref.step(g)
    np.testing.assert_allclose(resumed, ref.x, rtol=1e-10)


@pytest.mark.parametrize("beta", [0.9, 0.0])
def test_eager_apply_gradients_dense_and_sparse_equal_reference(beta):
    w, e = tf.Variable(X0), tf.Variable(X0)
    opt, sopt = ExpectigradOptimizer(LR, beta=beta), ExpectigradOptimizer(LR, beta=beta)
    ref = ExpectigradNumpy(X0, lr=LR, beta=beta)
    sref = ExpectigradNumpy(X0, lr=LR, beta=beta)
    for g, (idx, vals) in zip(_grads(), _sparse_steps()):
        opt.apply_gradients([(tf.constant(g), w)])
        ref.step(g)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(e, idx) * vals)
        grad = tape.gradient(loss, e)
        assert isinstance(grad, tf.IndexedSlices)
        sopt.apply_gradients([(grad, e)])
        sref.step(_densify(idx, vals))
    np.testing.assert_allclose(w.numpy(), ref.x, rtol=1e-10)
    np.testing.assert_allclose(e.numpy(), sref.x, rtol=1e-10)
    for o, v, r in ((opt, w, ref), (sopt, e, sref)):
        slots = o.slot_values(v)
        assert sorted(slots) == sorted(["sum", "count"] + (["momentum"] if beta > 0 else []))
        np.testing.assert_allclose(slots["sum"], r.s, rtol=1e-10)
        np.testing.assert_array_equal(slots["count"], r.n)
        if beta > 0:
            np.testing.assert_allclose(slots["momentum"], r.m, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(o.get_slot(v, "state").numpy(), _packed(r, beta, True),
                                   rtol=1e-10, atol=1e-15)
    assert int(opt.iterations.numpy()) == len(_grads())
    assert [p for p, _ in opt.dispatch_report().values()] == ["fused"]
    assert [p for p, _ in sopt.dispatch_report().values()] == ["sparse"]


def test_lazy_sparse_session_and_eager_equal_the_lazy_reference():
    ref = LazySparseExpectigradNumpy(X0, lr=LR, beta=0.9)
    for idx, vals in _sparse_steps():
        ref.step(idx, vals)
    with tf.Graph().as_default():
        e = v1.get_variable("e", initializer=X0, use_resource=True)
        idx_in = v1.placeholder(tf.int32, [None])
        vals_in = v1.placeholder(tf.float64, [None, 2])
        opt = ExpectigradOptimizer(LR, lazy_sparse=True)
        train = opt.minimize(tf.reduce_sum(tf.gather(e, idx_in) * vals_in))
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            for idx, vals in _sparse_steps():
                sess.run(train, {idx_in: idx, vals_in: vals})
            graph_x = sess.run(e)
    assert [p for p, _ in opt.dispatch_report().values()] == ["sparse-lazy"]
    e = tf.Variable(X0)
    eager = ExpectigradOptimizer(LR, lazy_sparse=True)
    for idx, vals in _sparse_steps():
        eager.apply_gradients([(tf.IndexedSlices(tf.constant(vals), tf.constant(idx)), e)])
    for x in (graph_x, e.numpy()):
        np.testing.assert_allclose(x, ref.x, rtol=1e-10)
    exact = ExpectigradNumpy(X0, lr=LR)
    for idx, vals in _sparse_steps():
        exact.step(_densify(idx, vals))
    assert not np.allclose(ref.x, exact.x, rtol=1e-6)  # the two semantics differ here


def test_tf_function_apply_gradients_equals_reference():
    w, e = tf.Variable(X0), tf.Variable(X0)
    opt = ExpectigradOptimizer(LR)
    ref = ExpectigradNumpy(np.concatenate([X0, X0]), lr=LR)

    @tf.function
    def step(g, idx, vals):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(w * g) + tf.reduce_sum(tf.gather(e, idx) * vals)
        opt.apply_gradients(zip(tape.gradient(loss, [w, e]), [w, e]))

    for g, (idx, vals) in zip(_grads(), _sparse_steps()):
        step(tf.constant(g), tf.constant(idx), tf.constant(vals))
        ref.step(np.concatenate([g, _densify(idx, vals)]))
    np.testing.assert_allclose(np.concatenate([w.numpy(), e.numpy()]), ref.x, rtol=1e-10)
    assert {p for p, _ in opt.dispatch_report().values()} == {"fused", "sparse"}


def test_checkpoint_saves_the_step_in_eager(tmp_path):
    w = tf.Variable(X0)
    opt = ExpectigradOptimizer(LR)
    for g in _grads()[:3]:
        opt.apply_gradients([(tf.constant(g), w)])
    path = tf.train.Checkpoint(w=w, opt=opt).save(str(tmp_path / "c"))
    w2 = tf.Variable(X0)
    opt2 = ExpectigradOptimizer(LR)
    tf.train.Checkpoint(w=w2, opt=opt2).restore(path)
    # Restored eagerly into a state slot of the packed shape and dtype (the
    # base class's restore would create it with the variable's shape).
    state2 = opt2.get_slot(w2, "state")
    assert state2.shape == (3, 6, 2) and state2.dtype == tf.float64
    np.testing.assert_array_equal(state2.numpy(), opt.get_slot(w, "state").numpy())
    assert np.all(state2.numpy()[0] > 0)
    for g in _grads()[3:]:
        opt.apply_gradients([(tf.constant(g), w)])
        opt2.apply_gradients([(tf.constant(g), w2)])
    np.testing.assert_array_equal(w2.numpy(), w.numpy())
    np.testing.assert_array_equal(opt2.get_slot(w2, "state").numpy(),
                                  opt.get_slot(w, "state").numpy())
    assert int(opt2.iterations.numpy()) == len(_grads())


def test_float16_variable_has_float32_state():
    v = tf.Variable(np.ones((2, 3), np.float16))
    opt = ExpectigradOptimizer(LR)
    opt.apply_gradients([(tf.constant(np.full((2, 3), 0.5, np.float16)), v)])
    state = opt.get_slot(v, "state")
    # One packed float32 state (sum, count, momentum): momentum too is float32.
    assert state.dtype == tf.float32 and state.shape == (3, 2, 3)
    assert opt.get_slot_names() == ["state"]
    slots = opt.slot_values(v)
    assert {k: a.dtype for k, a in slots.items()} == {
        "sum": np.float32, "count": np.float32, "momentum": np.float32}
    ref = ExpectigradNumpy(np.ones((2, 3)), lr=LR)
    ref.step(np.full((2, 3), 0.5))
    np.testing.assert_array_equal(slots["sum"], np.full((2, 3), 0.25))
    np.testing.assert_array_equal(slots["count"], np.ones((2, 3)))
    np.testing.assert_allclose(slots["momentum"], ref.m, rtol=1e-6)
    np.testing.assert_array_equal(state.numpy(), np.stack([slots["sum"], slots["count"],
                                                           slots["momentum"]]))
    assert np.all(v.numpy() < 1)


@pytest.mark.parametrize("kwargs,name", [
    ({"learning_rate": -0.1}, "learning_rate"),
    ({"learning_rate": float("inf")}, "learning_rate"),
    ({"learning_rate": "0.1"}, "learning_rate"),
    ({"beta": 1.0}, "beta"),
    ({"beta": -0.5}, "beta"),
    ({"epsilon": 0.0}, "epsilon"),
    ({"epsilon": 1e-60}, "epsilon"),
    ({"sparse_counter": 1}, "sparse_counter"),
    ({"lazy_sparse": "yes"}, "lazy_sparse"),
    ({"use_locking": "no"}, "use_locking"),
    ({"name": ""}, "name"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError) as info:
        ExpectigradOptimizer(**kwargs)
    message = str(info.value)
    assert f"`{name}`" in message and f"{name}={next(iter(kwargs.values()))!r}" in message


@pytest.mark.parametrize("sparse", [False, True])
def test_bad_learning_rate_tensor_fails_the_step_and_changes_nothing(sparse):
    with tf.Graph().as_default():
        w = v1.get_variable("w", initializer=X0, use_resource=True)
        lr = v1.placeholder(tf.float32, [])
        opt = ExpectigradOptimizer(learning_rate=lr)
        if sparse:
            loss = tf.reduce_sum(tf.gather(w, [0, 1, 1]))
        else:
            loss = tf.reduce_sum(tf.square(w))
        train = opt.minimize(loss)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            sess.run(train, {lr: 0.01})
            before = sess.run([w, opt.get_slot(w, "state"), opt.iterations])
            assert np.any(before[1][0] > 0)  # the first step wrote the state
            with pytest.raises(tf.errors.InvalidArgumentError, match="learning"):
                sess.run(train, {lr: -1.0})
            after = sess.run([w, opt.get_slot(w, "state"), opt.iterations])
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert after[2] == 1


def test_reference_variables_are_refused_clearly():
    with tf.Graph().as_default():
        w = v1.get_variable("w", initializer=X0, use_resource=False)
        with pytest.raises(NotImplementedError, match="use_resource=True"):
            ExpectigradOptimizer().minimize(tf.reduce_sum(tf.square(w)))


def test_gradient_of_another_shape_is_refused():
    with pytest.raises(ValueError, match=r"expected \(6, 2\)"):
        ExpectigradOptimizer().apply_gradients([(tf.ones([2], tf.float64), tf.Variable(X0))])
