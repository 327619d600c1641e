"""Runs in a subprocess with KERAS_BACKEND set (jax, torch): Expectigrad on a
Keras 3 backend other than TensorFlow, checked against the NumPy reference.
On JAX, both paths: the fused kernel (XLA custom call, the default) and the
composite (fused=False), and they must agree. Exits non-zero (an
AssertionError with a message) on any failure."""

import json
import os
import sys
import tempfile

import numpy as np

backend = os.environ["KERAS_BACKEND"]
import keras  # noqa: E402

import expectigrad_tf  # noqa: E402
from expectigrad_tf.reference import ExpectigradNumpy  # noqa: E402

assert keras.backend.backend() == backend, keras.backend.backend()
out = {"backend": backend, "tensorflow_imported": "tensorflow" in sys.modules}
status = expectigrad_tf.fused_status()
out["fused_available"] = status["available"]
out["fused_reason"] = status["reason"]
out["jax_status"] = status["jax"]
if backend == "jax":
    # CI installs jaxlib before the package, so the JAX library is built.
    assert status["jax"]["available"], status["jax"]
    PATHS = {None: "fused", False: "composite"}
else:
    assert status["jax"] is None, status["jax"]
    PATHS = {None: "composite"}

# 1. Trajectories: 4 variants x 2 shapes, 60 steps, gradients with exact
#    zeros (so the counter and 0/0 := 0 are exercised), float32.
rng = np.random.default_rng(0)
LR = 2.0 ** -7
worst = {}
finals = {}
for fused, want in PATHS.items():
    worst[want] = 0.0
    rng = np.random.default_rng(0)  # the same gradients on every path
    for beta in (0.0, 0.9):
        for sparse_counter in (True, False):
            shapes = [(5,), (3, 4), (0,)]
            x0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
            variables = [keras.Variable(x, dtype="float32") for x in x0]
            opt = expectigrad_tf.Expectigrad(learning_rate=LR, beta=beta, epsilon=1e-3,
                                             sparse_counter=sparse_counter, fused=fused)
            refs = [ExpectigradNumpy(x, lr=LR, beta=beta, eps=1e-3,
                                     sparse_counter=sparse_counter, dtype=np.float32)
                    for x in x0]
            for step in range(60):
                grads = []
                for s in shapes:
                    g = rng.standard_normal(s).astype(np.float32)
                    g[rng.random(s) < 0.3] = 0.0
                    if step < 5 and g.size:
                        g.reshape(-1)[0] = 0.0  # a component with no gradient yet
                    grads.append(g)
                opt.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
                for r, g in zip(refs, grads):
                    r.step(g)
            for i, (v, r) in enumerate(zip(variables, refs)):
                got = keras.ops.convert_to_numpy(v)
                np.testing.assert_allclose(got, r.x, rtol=2e-5, atol=1e-6,
                                           err_msg=f"{want} beta={beta} sc={sparse_counter}")
                worst[want] = max(worst[want], float(np.max(np.abs(got - r.x), initial=0.0)))
                finals[(want, beta, sparse_counter, i)] = (
                    got, {k: np.asarray(a) for k, a in opt.slot_values(v).items()})
            assert int(opt.iterations) == 60
            report = opt.dispatch_report()
            assert report and all(p == want for p, _ in report.values()), report
            assert all((backend in why) if want == "composite" and fused is None
                       else ("JAX" in why if want == "fused" else "fused=False" in why)
                       for _, why in report.values()), report
if backend == "jax":
    # Fused and composite agree (XLA may round the composite differently:
    # a few float32 ulps), rows included.
    for key, (x, rows) in finals.items():
        if key[0] != "fused":
            continue
        x2, rows2 = finals[("composite",) + key[1:]]
        np.testing.assert_allclose(x, x2, rtol=1e-5, atol=1e-7, err_msg=str(key))
        assert rows.keys() == rows2.keys(), (rows.keys(), rows2.keys())
        for k in rows:
            np.testing.assert_allclose(rows[k], rows2[k], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{key} {k}")

# 1b. A bad learning rate changes nothing, on every path. Eagerly: ValueError
#     naming the value. Inside jit (the JAX fit below): the step is skipped.
for fused, want in PATHS.items():
    for bad in (float("nan"), -1.0, float("inf")):
        v = keras.Variable(np.ones(4, np.float32))
        opt = expectigrad_tf.Expectigrad(learning_rate=0.1, fused=fused)
        opt.apply([keras.ops.ones(4)], [v])
        tracked = [opt.iterations] + [st for st in opt._states if st is not None]
        before = ([keras.ops.convert_to_numpy(a).copy() for a in tracked],
                  keras.ops.convert_to_numpy(v).copy())
        opt.learning_rate = bad
        try:
            opt.apply([keras.ops.ones(4)], [v])
        except ValueError as e:
            assert "learning_rate" in str(e) and repr(bad) in str(e), str(e)
        else:
            raise AssertionError(f"{want}: learning_rate={bad} did not raise")
        after = ([keras.ops.convert_to_numpy(a) for a in tracked],
                 keras.ops.convert_to_numpy(v))
        for a, b in zip(before[0] + [before[1]], after[0] + [after[1]]):
            np.testing.assert_array_equal(a, b, err_msg=f"{want} lr={bad}: state changed")
out["max_abs_diff_vs_reference"] = worst

if backend == "jax":
    # 1c. Inside Keras's jitted fit, a schedule that turns bad at step 3: the
    #     later steps are skipped (nothing can raise inside jit), identically
    #     on both paths: iterations stop at 3, nothing becomes NaN.
    class TurnsBad(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return keras.ops.where(step >= 3, float("nan"), 0.01)

        def get_config(self):
            return {}

    xs = rng.standard_normal((160, 8)).astype(np.float32)
    ys = xs.sum(axis=1, keepdims=True)
    # Weight decay and the EMA update (not its periodic overwrite, which
    # Keras's JAX optimizer writes inline) are held back too.
    for kw in ({}, dict(weight_decay=0.05), dict(use_ema=True, ema_momentum=0.5)):
        weights = {}
        for fused, want in PATHS.items():
            keras.utils.set_random_seed(1)
            m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4),
                                  keras.layers.Dense(1)])
            opt = expectigrad_tf.Expectigrad(TurnsBad(), fused=fused, **kw)
            m.compile(optimizer=opt, loss="mse")
            m.fit(xs, ys, batch_size=32, epochs=1, verbose=0, shuffle=False)  # 5 steps
            assert int(opt.iterations) == 3, (kw, int(opt.iterations))
            assert all(np.isfinite(keras.ops.convert_to_numpy(a)).all()
                       for a in opt.variables + m.weights), kw
            assert {p for p, _ in opt.dispatch_report().values()} == {want}
            weights[want] = [keras.ops.convert_to_numpy(w) for w in m.weights + opt.variables
                             if "learning_rate" not in w.path]
            # The same 3 good steps without the bad ones: the same values.
            keras.utils.set_random_seed(1)
            m3 = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4),
                                   keras.layers.Dense(1)])
            opt3 = expectigrad_tf.Expectigrad(0.01, fused=fused, **kw)
            m3.compile(optimizer=opt3, loss="mse")
            m3.fit(xs[:96], ys[:96], batch_size=32, epochs=1, verbose=0, shuffle=False)
            good = [w for w in m3.weights + opt3.variables if "learning_rate" not in w.path]
            assert len(good) == len(weights[want]), kw
            for a, b in zip(weights[want], good):
                np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b), err_msg=str(kw))
        for a, b in zip(*weights.values()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=str(kw))
    out["skipped_steps_agree"] = True

    # 1d. Keras's features around the update (JAX's inline gradient
    #     accumulation and EMA, weight decay, clipping): both paths agree.
    for kw in (dict(gradient_accumulation_steps=2), dict(use_ema=True, ema_overwrite_frequency=3),
               dict(weight_decay=0.01), dict(clipnorm=0.5)):
        weights = {}
        for fused, want in PATHS.items():
            keras.utils.set_random_seed(1)
            m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
            opt = expectigrad_tf.Expectigrad(0.01, fused=fused, **kw)
            m.compile(optimizer=opt, loss="mse")
            m.fit(xs, ys, batch_size=16, epochs=2, verbose=0, shuffle=False)
            assert {p for p, _ in opt.dispatch_report().values()} == {want}, kw
            weights[want] = [keras.ops.convert_to_numpy(w) for w in m.weights]
        for a, b in zip(*weights.values()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(kw))


# 2. compile / fit, save and load_model without custom_objects, resume.
keras.utils.set_random_seed(0)
x = rng.standard_normal((256, 8)).astype(np.float32)
y = (x @ rng.standard_normal((8, 1)).astype(np.float32)).astype(np.float32)


def make():
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(1)])
    m.compile(optimizer=expectigrad_tf.Expectigrad(learning_rate=0.01), loss="mse")
    return m


model = make()
hist = model.fit(x, y, batch_size=32, epochs=5, verbose=0, shuffle=False)
losses = hist.history["loss"]
assert losses[-1] < 0.5 * losses[0], losses
out["fit_loss_first_last"] = [losses[0], losses[-1]]
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
assert type(loaded.optimizer).__name__ == "Expectigrad", type(loaded.optimizer)
assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations)
for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
loaded.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
for a, b in zip(model.weights, loaded.weights):
    np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
                               rtol=1e-6, atol=1e-7)
out["resumed_equal"] = True
print("RESULT " + json.dumps(out))
