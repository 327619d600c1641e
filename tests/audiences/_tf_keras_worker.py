"""Worker for test_tf_keras.py, run in a fresh process with
TF_USE_LEGACY_KERAS=1 (which must be set before TensorFlow is imported, and
would change tf.keras for the rest of the test session).

    python _tf_keras_worker.py main OUT    # every check below, results in OUT
    python _tf_keras_worker.py load OUT    # loads OUT/model.keras, no expectigrad_tf import

Trajectories and states are written to OUT/results.npz and facts to
OUT/results.json; the test compares them with the NumPy reference.
"""

import json
import os
import sys

LR = 2.0 ** -7  # exactly representable in the float32 learning-rate variable
STEPS = 30
DENSE_CASES = [  # (problem, beta, sparse_counter, fused)
    ("quadratic", 0.9, True, None),
    ("quadratic", 0.9, True, False),
    ("intermittent", 0.9, True, None),
    ("intermittent", 0.9, True, False),
    ("quadratic", 0.0, False, None),
    ("intermittent", 0.0, True, False),
    ("quadratic", 0.5, False, False),
]


def case_key(problem, beta, sparse_counter, fused):
    return f"{problem}-{beta}-{sparse_counter}-{fused}"


def sparse_steps():
    """Per step: (indices with a duplicate, values), float64; one row of the
    10-row table is never touched."""
    import numpy as np

    rng = np.random.default_rng(7)
    steps = []
    for _ in range(12):
        idx = rng.choice(9, size=4, replace=False)
        idx = np.concatenate([idx, idx[:1]])
        vals = rng.standard_normal((5, 3))
        vals[0, 0] = 0.0
        steps.append((idx, vals))
    return steps


def fit_data():
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, size=(128, 3))
    x = rng.standard_normal((128, 4)).astype("float32")
    y = (x.sum(1, keepdims=True) + 0.1 * ids[:, :1]).astype("float32")
    return ids, x, y


def fit_model(tf):
    """An Embedding (sparse gradient) and Dense layers (fused op)."""
    tf.keras.utils.set_random_seed(0)
    ids = tf.keras.Input((3,), dtype="int32")
    x = tf.keras.Input((4,))
    e = tf.keras.layers.Flatten()(tf.keras.layers.Embedding(20, 2)(ids))
    h = tf.keras.layers.Dense(8, activation="tanh")(tf.keras.layers.Concatenate()([e, x]))
    return tf.keras.Model([ids, x], tf.keras.layers.Dense(1)(h))


def main(out):
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import tf_keras

    import expectigrad_tf
    from expectigrad_tf.legacy import Expectigrad
    from expectigrad_tf.reference import online_gradient

    facts, arrays = {}, {}
    facts["resolves_to_legacy"] = expectigrad_tf.Expectigrad is Expectigrad
    facts["tf_keras_is_tf_keras"] = tf.keras.optimizers.Optimizer is tf_keras.optimizers.Optimizer
    facts["subclass"] = issubclass(Expectigrad, tf.keras.optimizers.Optimizer)

    # -- exactness, dense: float64 variables, gradients of the online problems
    x0 = np.linspace(-1.5, 1.5, 12).reshape(3, 4)
    facts["dense_paths"] = {}
    for problem, beta, sc, fused in DENSE_CASES:
        key = case_key(problem, beta, sc, fused)
        var = tf.Variable(x0.copy())
        opt = Expectigrad(learning_rate=LR, beta=beta, sparse_counter=sc, fused=fused)

        @tf.function
        def step(g, opt=opt, var=var):
            opt.apply_gradients([(g, var)])

        for t in range(1, STEPS + 1):
            step(tf.constant(online_gradient(problem, var.numpy(), t)))
        arrays["dense/" + key] = var.numpy()
        facts["dense_paths"][key] = sorted({p for p, _ in opt.dispatch_report().values()})
        facts.setdefault("iterations", {})[key] = int(opt.iterations.numpy())

    # -- a learning-rate schedule, evaluated at the step before the update
    var = tf.Variable(x0.copy())
    schedule = tf.keras.optimizers.schedules.PiecewiseConstantDecay([10], [LR, LR / 2])
    opt = Expectigrad(learning_rate=schedule)
    for t in range(1, STEPS + 1):
        opt.apply_gradients([(tf.constant(online_gradient("quadratic", var.numpy(), t)), var)])
    arrays["schedule"] = var.numpy()
    facts["schedule_config"] = opt.get_config()["learning_rate"]["class_name"]

    # -- XLA (tf_keras compiles per-variable updates with jit_compile, on a GPU)
    var = tf.Variable(x0.copy())
    opt = Expectigrad(learning_rate=LR, fused=False)
    opt.jit_compile = True  # tf_keras only turns it on with a GPU
    for t in range(1, STEPS + 1):
        opt.apply_gradients([(tf.constant(online_gradient("quadratic", var.numpy(), t)), var)])
    arrays["xla"] = var.numpy()
    facts["xla_paths"] = sorted({p for p, _ in opt.dispatch_report().values()})

    # -- exactness, sparse: IndexedSlices from tf.gather, duplicates summed
    table0 = np.arange(30, dtype=np.float64).reshape(10, 3) / 7.0 - 2.0
    for beta, lazy in ((0.9, False), (0.0, False), (0.9, True)):
        table = tf.Variable(table0.copy())
        opt = Expectigrad(learning_rate=LR, beta=beta, lazy_sparse=lazy)

        @tf.function
        def sstep(idx, vals, opt=opt, table=table):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.gather(table, idx) * vals)
            grad = tape.gradient(loss, table)
            opt.apply_gradients([(grad, table)])
            return isinstance(grad, tf.IndexedSlices)

        for idx, vals in sparse_steps():
            facts["sparse_is_indexed_slices"] = bool(sstep(tf.constant(idx), tf.constant(vals)))
        key = f"{beta}-lazy" if lazy else str(beta)
        arrays[f"sparse/{key}"] = table.numpy()
        slots = opt.slot_values(table)
        for name, value in slots.items():
            arrays[f"sparse/{key}/{name}"] = value
        arrays[f"sparse/{key}/state"] = opt._state_for(table).numpy()
        facts.setdefault("sparse_slots", {})[key] = sorted(slots)
        facts.setdefault("sparse_paths", {})[key] = sorted(
            {p for p, _ in opt.dispatch_report().values()})

    # -- slots of a float16 variable
    v16 = tf.Variable(np.ones((2, 2), np.float16))
    opt = Expectigrad(learning_rate=LR)
    opt.apply_gradients([(tf.constant(np.full((2, 2), 0.5, np.float16)), v16)])
    state = opt._state_for(v16)
    facts["float16_state"] = [state.dtype.name, list(state.shape)]
    facts["float16_slot_dtypes"] = {k: v.dtype.name for k, v in opt.slot_values(v16).items()}
    arrays.update({f"float16/{k}": v for k, v in opt.slot_values(v16).items()})
    arrays["float16/x"] = v16.numpy()
    facts["float16_paths"] = sorted({p for p, _ in opt.dispatch_report().values()})

    # -- arguments and config
    facts["config"] = {k: v for k, v in Expectigrad(
        learning_rate=0.25, beta=0.5, epsilon=1e-6, sparse_counter=False, fused=False,
        clipnorm=1.0).get_config().items() if k in (
            "learning_rate", "beta", "epsilon", "sparse_counter", "fused", "lazy_sparse",
            "clipnorm", "name")}
    restored = Expectigrad.from_config(Expectigrad(beta=0.5, fused=False).get_config())
    facts["from_config"] = [type(restored).__name__, restored.beta, restored.fused]
    errors = {}
    for kw in ({"beta": 1.0}, {"beta": -0.1}, {"epsilon": 0.0}, {"learning_rate": -1.0},
               {"learning_rate": float("nan")}, {"fused": "yes"}, {"sparse_counter": 1},
               {"lazy_sparse": "no"}):
        try:
            Expectigrad(**kw)
            errors[repr(kw)] = None
        except (ValueError, TypeError) as e:
            errors[repr(kw)] = f"{type(e).__name__}: {e}"
    facts["errors"] = errors
    try:
        Expectigrad(beta=0.9).apply_gradients([(tf.ones([3]), tf.Variable(tf.zeros([2, 3])))])
        facts["shape_error"] = None
    except ValueError as e:
        facts["shape_error"] = str(e)

    # -- compile/fit, save, resume
    ids, x, y = fit_data()
    model = fit_model(tf)
    opt = expectigrad_tf.Expectigrad(learning_rate=0.02)
    model.compile(optimizer=opt, loss="mse")
    hist = model.fit([ids, x], y, epochs=4, batch_size=32, shuffle=False, verbose=0)
    facts["fit_loss"] = hist.history["loss"]
    facts["fit_paths"] = {k: p for k, (p, _) in opt.dispatch_report().items()}
    model.save(os.path.join(out, "model.keras"))
    model.save(os.path.join(out, "model.h5"))
    model.fit([ids, x], y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    arrays["fit/continued"] = np.concatenate([w.ravel() for w in model.get_weights()])
    facts["fit_iterations"] = int(opt.iterations.numpy())
    h5 = tf.keras.models.load_model(os.path.join(out, "model.h5"))
    facts["h5_optimizer"] = [type(h5.optimizer).__module__, int(h5.optimizer.iterations.numpy())]
    h5.fit([ids, x], y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    arrays["fit/h5_continued"] = np.concatenate([w.ravel() for w in h5.get_weights()])

    # A state saved with other slots (beta=0: no momentum) is refused, not
    # silently dropped as tf_keras does, and nothing is restored.
    v = tf.Variable(np.ones((2, 3)))
    saved, target = Expectigrad(beta=0.0), Expectigrad(beta=0.9)
    saved.apply_gradients([(tf.ones((2, 3), tf.float64), v)])
    target.build([v])
    store = {}
    saved.save_own_variables(store)
    try:
        target.load_own_variables(store)
        facts["mismatch_error"] = None
    except ValueError as e:
        facts["mismatch_error"] = str(e)
    facts["mismatch_unchanged"] = [float(np.abs(w.numpy()).sum()) for w in target.variables()]
    facts["mismatch_shapes"] = [list(w.shape) for w in target.variables()]

    # -- model.compile(jit_compile=True): the whole step inside XLA
    for fused in (None, False):
        m = fit_model(tf)
        o = Expectigrad(learning_rate=0.02, fused=fused)
        m.compile(optimizer=o, loss="mse", jit_compile=True)
        loss = m.fit([ids, x], y, epochs=3, batch_size=32, shuffle=False, verbose=0)
        facts[f"jit/{fused}/loss"] = loss.history["loss"]
        facts[f"jit/{fused}/paths"] = {k: p for k, (p, _) in o.dispatch_report().items()}
        arrays[f"jit/{fused}"] = np.concatenate([w.ravel() for w in m.get_weights()])

    # -- MirroredStrategy over two logical CPUs vs one device, same data
    def train(strategy):
        with strategy.scope():
            m = fit_model(tf)
            o = Expectigrad(learning_rate=0.02)
            m.compile(optimizer=o, loss="mse")
        m.fit([ids, x], y, epochs=3, batch_size=32, shuffle=False, verbose=0)
        return np.concatenate([w.ravel() for w in m.get_weights()]), o

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    facts["replicas"] = mirrored.num_replicas_in_sync
    arrays["mirrored"], o = train(mirrored)
    facts["mirrored_paths"] = {k: p for k, (p, _) in o.dispatch_report().items()}
    arrays["single"], _ = train(tf.distribute.OneDeviceStrategy("/cpu:0"))

    np.savez(os.path.join(out, "results.npz"), **arrays)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(facts, f, default=lambda o: o.item() if hasattr(o, "item") else str(o))


def load(out):
    """A fresh process that loads the .keras file with tf.keras alone (no
    import of expectigrad_tf, no custom_objects) and trains one more epoch."""
    import numpy as np
    import tensorflow as tf

    model = tf.keras.models.load_model(os.path.join(out, "model.keras"))
    opt = model.optimizer
    facts = {"class": f"{type(opt).__module__}.{type(opt).__name__}",
             "iterations": int(opt.iterations.numpy()),
             "beta": opt.beta, "learning_rate": float(opt.learning_rate.numpy())}
    ids, x, y = fit_data()
    model.fit([ids, x], y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    np.save(os.path.join(out, "loaded_continued.npy"),
            np.concatenate([w.ravel() for w in model.get_weights()]))
    with open(os.path.join(out, "load.json"), "w") as f:
        json.dump(facts, f)


if __name__ == "__main__":
    # Here, not at import: test_tf_keras imports this module for its constants.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    {"main": main, "load": load}[sys.argv[1]](sys.argv[2])
