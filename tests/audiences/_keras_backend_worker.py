"""Runs in a subprocess with KERAS_BACKEND set (jax, torch): Expectigrad on a
Keras 3 backend other than TensorFlow, checked against the NumPy reference.
Exits non-zero (an AssertionError with a message) on any failure."""

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

# 1. Trajectories: 4 variants x 2 shapes, 60 steps, gradients with exact
#    zeros (so the counter and 0/0 := 0 are exercised), float32.
rng = np.random.default_rng(0)
LR = 2.0 ** -7
worst = 0.0
for beta in (0.0, 0.9):
    for sparse_counter in (True, False):
        shapes = [(5,), (3, 4)]
        x0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        variables = [keras.Variable(x, dtype="float32") for x in x0]
        opt = expectigrad_tf.Expectigrad(learning_rate=LR, beta=beta, epsilon=1e-3,
                                         sparse_counter=sparse_counter)
        refs = [ExpectigradNumpy(x, lr=LR, beta=beta, eps=1e-3,
                                 sparse_counter=sparse_counter, dtype=np.float32)
                for x in x0]
        for step in range(60):
            grads = []
            for s in shapes:
                g = rng.standard_normal(s).astype(np.float32)
                g[rng.random(s) < 0.3] = 0.0
                if step < 5:
                    g.reshape(-1)[0] = 0.0  # a component with no gradient yet
                grads.append(g)
            opt.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
            for r, g in zip(refs, grads):
                r.step(g)
        for v, r in zip(variables, refs):
            got = keras.ops.convert_to_numpy(v)
            np.testing.assert_allclose(got, r.x, rtol=2e-5, atol=1e-6,
                                       err_msg=f"beta={beta} sparse_counter={sparse_counter}")
            worst = max(worst, float(np.max(np.abs(got - r.x))))
        report = opt.dispatch_report()
        assert report and all(p == "composite" for p, _ in report.values()), report
        assert all(backend in why for _, why in report.values()), report
out["max_abs_diff_vs_reference"] = worst

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
