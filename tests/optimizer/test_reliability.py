"""Mixed precision, non-finite input, long runs in 16-bit, concurrency."""

import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from expectigrad_tf import Expectigrad
from expectigrad_tf.reference import ExpectigradNumpy

PATHS = pytest.mark.parametrize("fused", [None, False], ids=["fused", "composite"])


@PATHS
def test_loss_scale_optimizer_skips_non_finite_step_leaving_state_unchanged(fused):
    v = tf.Variable(np.linspace(-1, 1, 6).astype("float32"))
    opt = keras.optimizers.LossScaleOptimizer(Expectigrad(0.01, fused=fused))
    opt.apply([tf.ones(6) * opt.scale_loss(1.0)], [v])  # one good step builds state
    inner = opt.inner_optimizer
    before = [v.numpy().copy()] + [s.numpy().copy() for s in inner._slots_for(v)]
    bad = np.ones(6, np.float32)
    bad[2] = np.inf
    bad[4] = np.nan
    opt.apply([tf.constant(bad)], [v])
    after = [v.numpy()] + [s.numpy() for s in inner._slots_for(v)]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    opt.apply([tf.ones(6) * opt.scale_loss(1.0)], [v])  # and training goes on
    assert np.all(np.isfinite(v.numpy())) and not np.array_equal(v.numpy(), before[0])


def test_mixed_float16_model_trains_with_loss_scaling():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(1, dtype="float32")])
        opt = keras.optimizers.LossScaleOptimizer(Expectigrad(0.01))
        model.compile(optimizer=opt, loss="mse")
        x = np.random.randn(128, 8).astype("float32")
        y = x.sum(axis=1, keepdims=True)
        h = model.fit(x, y, epochs=4, verbose=0).history["loss"]
        assert h[-1] < h[0]
        assert {p for p, _ in opt.inner_optimizer.dispatch_report().values()} == {"fused"}
    finally:
        keras.mixed_precision.set_global_policy("float32")


@PATHS
def test_non_finite_gradient_without_loss_scaling_poisons_only_that_element(fused):
    """Documented behaviour (README, 'Non-finite gradients')."""
    v = tf.Variable(np.zeros(4, np.float32))
    opt = Expectigrad(0.01, fused=fused)
    opt.apply([tf.constant([1.0, np.nan, np.inf, 1.0])], [v])
    s, n, m = opt._slots_for(v)
    assert np.isnan(v.numpy()[1]) and np.isnan(s.numpy()[1]) and np.isnan(n.numpy()[1])
    assert np.isinf(s.numpy()[2]) and not np.isfinite(v.numpy()[2])
    assert np.all(np.isfinite(v.numpy()[[0, 3]])) and np.all(s.numpy()[[0, 3]] == 1.0)


@PATHS
def test_schedule_returning_nan_is_a_clear_error_at_the_first_step(fused):
    class NaNSchedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return tf.constant(np.nan, tf.float32)

    v = tf.Variable([1.0, 2.0])
    opt = Expectigrad(NaNSchedule(), fused=fused)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?i)lr|learning rate"):
        opt.apply([tf.constant([1.0, 1.0])], [v])
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16bit_count_exact_past_10000_steps_and_sum_does_not_overflow(dtype):
    v = keras.Variable(np.zeros(3), dtype=dtype)
    opt = Expectigrad(1e-4)
    opt.build([v])
    # 300 * 300 * 10001 = 9e8: far beyond float16's max (65504), fine in float32.
    g = tf.constant([300.0, 0.0, 1.0], dtype)

    @tf.function
    def run(n):
        for _ in tf.range(n):
            opt.apply([g], [v])

    run(tf.constant(10001))
    s, n, _ = opt._slots_for(v)
    np.testing.assert_array_equal(n.numpy(), [10001.0, 0.0, 10001.0])
    # float32 accumulation: spacing at 9e8 is 64, so ~1e-4 relative drift is expected.
    np.testing.assert_allclose(s.numpy(), [300.0**2 * 10001, 0.0, 10001.0], rtol=1e-3)
    assert np.all(np.isfinite(np.asarray(v.numpy(), np.float32)))


def test_two_threads_two_models_no_cross_talk():
    rng = np.random.default_rng(0)
    grads = [[rng.standard_normal(5) for _ in range(30)] for _ in range(2)]
    results, errors = [None, None], []

    def work(k):
        try:
            v = tf.Variable(np.zeros(5))
            opt = Expectigrad(2.0**-6)
            step = tf.function(lambda g: opt.apply([g], [v]))
            for g in grads[k]:
                step(tf.constant(g))
            results[k] = v.numpy()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for k in range(2):
        ref = ExpectigradNumpy(np.zeros(5), lr=2.0**-6)
        for g in grads[k]:
            ref.step(g)
        np.testing.assert_allclose(results[k], ref.x, rtol=1e-12)


def test_retracing_with_changing_variable_sets():
    a, b = tf.Variable(np.ones(3)), tf.Variable(np.ones(2))
    opt = Expectigrad(2.0**-6)
    opt.build([a, b])
    step = tf.function(lambda gs, vs: opt.apply(gs, vs))
    step([tf.ones(3)], [a])
    step([tf.ones(3), tf.ones(2)], [a, b])
    step([tf.ones(2)], [b])
    ra, rb = ExpectigradNumpy(np.ones(3), lr=2.0**-6), ExpectigradNumpy(np.ones(2), lr=2.0**-6)
    # The step counter is shared: a is updated at t=1,2 ; b at t=2,3.
    ra.step(np.ones(3)); ra.step(np.ones(3))
    rb.t = 1; rb.step(np.ones(2)); rb.step(np.ones(2))
    np.testing.assert_allclose(a.numpy(), ra.x, rtol=1e-12)
    np.testing.assert_allclose(b.numpy(), rb.x, rtol=1e-12)


def test_mismatched_saved_state_is_a_clear_error_and_restores_nothing():
    v = tf.Variable(np.ones((2, 3), np.float32))
    good = Expectigrad(0.1)
    good.apply([tf.ones((2, 3))], [v])
    store = {}
    good.save_own_variables(store)
    fresh = Expectigrad(0.1)
    fresh.build([v])
    (state_key,) = [k for k in store if np.shape(store[k]) == (3, 2, 3)]
    for bad_value, what in ((np.zeros((3, 3, 2), np.float32), "shape"),
                            (store[state_key].astype(np.float16), "dtype")):
        bad = dict(store)
        bad[state_key] = bad_value
        with pytest.raises(ValueError, match=r"does not match.*expected shape \(3, 2, 3\) dtype float32"):
            fresh.load_own_variables(bad)
    assert all(np.all(s.numpy() == 0) for s in fresh._slots_for(v))
    assert int(fresh.iterations.numpy()) == 0
    fresh.load_own_variables(store)  # the good state loads
    for a, b in zip(fresh._slots_for(v), good._slots_for(v)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _per_slot_store(opt, v):
    """``opt``'s state as expectigrad-tf 0.1 saved it: one array each for
    sum, count and momentum, layout codes 2, 3, 4."""
    from expectigrad_tf.optimizer import LAYOUT_KEY

    store = {}
    opt.save_own_variables(store)
    slots = opt.slot_values(v)
    old = {"0": store["0"], "1": store["1"]}
    codes = [0, 1]
    for code, name in ((2, "sum"), (3, "count"), (4, "momentum")):
        if name in slots:
            old[str(len(codes))] = slots[name]
            codes.append(code)
    old[LAYOUT_KEY] = np.asarray(codes, np.int32)
    return old


@pytest.mark.parametrize("beta,sparse_counter", [(0.9, True), (0.0, False), (0.9, False)])
def test_per_slot_layout_of_earlier_versions_is_converted_on_load(beta, sparse_counter):
    v = tf.Variable(np.linspace(-1, 1, 6).reshape(2, 3).astype(np.float32))
    good = Expectigrad(0.1, beta=beta, sparse_counter=sparse_counter)
    for t in range(3):
        good.apply([tf.constant(np.cos(np.arange(6.0) + t).reshape(2, 3), tf.float32)], [v])
    old = _per_slot_store(good, v)
    fresh = Expectigrad(0.1, beta=beta, sparse_counter=sparse_counter)
    fresh.build([v])
    fresh.load_own_variables(old)
    assert int(fresh.iterations.numpy()) == 3
    want, got = good.slot_values(v), fresh.slot_values(v)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_per_slot_layout_with_other_slots_is_refused():
    v = tf.Variable(np.ones((2, 3), np.float32))
    good = Expectigrad(0.1)  # sum, count, momentum
    good.apply([tf.ones((2, 3))], [v])
    fresh = Expectigrad(0.1, beta=0.0)  # sum, count only
    fresh.build([v])
    with pytest.raises(ValueError, match=r"does not match.*expected shape \(2, 2, 3\)"):
        fresh.load_own_variables(_per_slot_store(good, v))
    assert all(np.all(s == 0) for s in fresh.slot_values(v).values())


def test_stray_key_in_saved_state_is_refused():
    v = tf.Variable(np.ones((2, 3), np.float32))
    good = Expectigrad(0.1)
    good.apply([tf.ones((2, 3))], [v])
    store = {}
    good.save_own_variables(store)
    store["foo"] = np.zeros(3, np.float32)
    fresh = Expectigrad(0.1)
    fresh.build([v])
    with pytest.raises(ValueError, match=r"unexpected keys .*'foo'"):
        fresh.load_own_variables(store)
    assert int(fresh.iterations.numpy()) == 0
