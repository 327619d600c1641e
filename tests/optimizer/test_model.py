"""model.fit, XLA, graph inspection, serialization and save/load."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import expectigrad_tf
from expectigrad_tf import Expectigrad, _ops


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype("float32")
    y = (x @ rng.standard_normal((8, 1)) + 0.1 * np.sin(x[:, :1])).astype("float32")
    return x, y


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(1)])


@pytest.mark.parametrize("mode", ["graph", "eager", "xla"])
def test_fit_lowers_loss(mode):
    x, y = _data()
    model = _model()
    opt = Expectigrad(learning_rate=0.01)
    model.compile(optimizer=opt, loss="mse", run_eagerly=mode == "eager",
                  jit_compile=mode == "xla")
    hist = model.fit(x, y, epochs=5, batch_size=32, verbose=0).history["loss"]
    assert hist[-1] < 0.5 * hist[0]
    # Every mode takes the fused op; under XLA as a custom call (a build
    # against TensorFlow 2.16 has no XLA lowering: composite inside XLA).
    report = opt.dispatch_report().values()
    xla_reason = _ops.fused_status()["xla_reason"]
    if mode == "xla" and xla_reason is not None:
        assert {p for p, _ in report} == {"composite-xla"}
        assert all(xla_reason in reason for _, reason in report)
        return
    assert {p for p, _ in report} == {"fused"}
    assert all(("XLA" in reason) == (mode == "xla") for _, reason in report)


def _op_types(graph):
    types = {op.type for op in graph.get_operations()}
    for f in graph.as_graph_def().library.function:  # nested function bodies
        types |= {node.op for node in f.node_def}
    return types


def test_fit_runs_the_fused_op_in_the_traced_graph():
    x, y = _data(64)
    model = _model()
    opt = Expectigrad()
    model.compile(optimizer=opt, loss="mse", jit_compile=False)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert {p for p, _ in opt.dispatch_report().values()} == {"fused"}
    # The step fit() runs, traced as fit traces it: one fused op, no per-variable ops.
    graph = tf.function(model.train_step).get_concrete_function(
        (tf.constant(x), tf.constant(y))).graph
    types = _op_types(graph)
    assert "ExpectigradApply" in types
    n_fused = sum(op.type == "ExpectigradApply" for op in graph.get_operations())
    assert n_fused == 1  # all 4 float32 variables in one call
    assert not types & {"AssignSubVariableOp", "Sqrt"}  # no composite math left


def test_string_identifier_resolves_after_registration():
    opt = keras.optimizers.get({"class_name": "expectigrad_tf>Expectigrad", "config": {}})
    assert isinstance(opt, Expectigrad)


def test_fused_true_raises_clearly_when_op_missing(monkeypatch):
    from expectigrad_tf import _ops

    monkeypatch.setattr(_ops, "unavailable_reason", lambda: "library not built (test)")
    with pytest.raises(RuntimeError, match="library not built"):
        Expectigrad(fused=True).build([tf.Variable([1.0])])


def test_missing_op_falls_back_with_one_warning(monkeypatch):
    from expectigrad_tf import _ops

    monkeypatch.setattr(_ops, "unavailable_reason", lambda: "library not built (test)")
    monkeypatch.setattr(_ops, "_warned", False)
    v = tf.Variable([1.0, 2.0])
    opt = Expectigrad(0.1)
    with pytest.warns(RuntimeWarning, match="library not built") as caught:
        opt.apply([tf.constant([1.0, 1.0])], [v])
        opt.apply([tf.constant([1.0, 1.0])], [v])
    assert len([w for w in caught if "library not built" in str(w.message)]) == 1
    path, reason = list(opt.dispatch_report().values())[0]
    assert path == "composite" and "library not built" in reason


def test_fused_status_reports_cpu():
    st = expectigrad_tf.fused_status()
    assert st["available"] is True, st
    assert "CPU" in st["devices"]
    assert st["build_info"]["tensorflow_version"] == tf.__version__


def test_config_round_trip():
    sched = keras.optimizers.schedules.ExponentialDecay(0.01, 100, 0.5)
    opt = Expectigrad(learning_rate=sched, beta=0.5, epsilon=1e-6, sparse_counter=False,
                      fused=False, clipnorm=2.0, weight_decay=0.01, use_ema=True,
                      ema_momentum=0.9, ema_overwrite_frequency=3, loss_scale_factor=2.0,
                      gradient_accumulation_steps=2, name="eg")
    cfg = opt.get_config()
    again = Expectigrad.from_config(cfg)
    cfg2 = again.get_config()
    lr, lr2 = cfg.pop("learning_rate"), cfg2.pop("learning_rate")
    ser = lambda v: v if isinstance(v, dict) else keras.saving.serialize_keras_object(v)  # noqa: E731
    assert ser(lr2) == ser(lr) and isinstance(again._learning_rate, type(sched))
    assert cfg2 == cfg
    for key, val in dict(beta=0.5, epsilon=1e-6, sparse_counter=False, fused=False, clipnorm=2.0,
                         weight_decay=0.01, use_ema=True, ema_momentum=0.9,
                         ema_overwrite_frequency=3, loss_scale_factor=2.0,
                         gradient_accumulation_steps=2, name="eg").items():
        assert cfg2[key] == val, key
    # Also through Keras' generic (de)serialization.
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(restored, Expectigrad) and restored.beta == 0.5


def test_save_load_without_custom_objects_and_continue(tmp_path):
    x, y = _data(128)
    model = _model()
    model.compile(optimizer=Expectigrad(learning_rate=0.01, beta=0.8), loss="mse")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    path = str(tmp_path / "m.keras")
    model.save(path)
    # The uninterrupted continuation, in this process.
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
    expected = np.concatenate([w.ravel() for w in model.get_weights()])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    script = textwrap.dedent(f"""
        import os, numpy as np
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import keras, expectigrad_tf
        m = keras.models.load_model({path!r})   # no custom_objects
        opt = m.optimizer
        assert type(opt).__name__ == "Expectigrad", type(opt)
        assert opt.beta == 0.8 and int(opt.iterations.numpy()) == 8
        states = [v for v in opt.variables if v.path.endswith("_state")]
        assert states and all(np.any(v.numpy()[0] != 0) for v in states)  # row 0: sum
        x = np.load({str(tmp_path / "x.npy")!r}); y = np.load({str(tmp_path / "y.npy")!r})
        m.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
        np.save({str(tmp_path / "w.npy")!r}, np.concatenate([w.ravel() for w in m.get_weights()]))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300,
                   env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    got = np.load(tmp_path / "w.npy")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_slot_names_and_dtypes():
    v32 = tf.Variable(np.zeros((2, 3), np.float32), name="w32")
    v16 = keras.Variable(np.zeros((4,), np.float16), dtype="float16", name="w16")
    opt = Expectigrad()
    opt.build([v32, v16])
    names = [v.path for v in opt.variables]
    # One packed state per variable: sum, count, momentum (float32 for 16-bit).
    assert sum(n.endswith("_state") for n in names) == 2 and len(names) == 4
    assert (opt._state_for(v32).shape, opt._state_for(v32).dtype) == ((3, 2, 3), "float32")
    assert (opt._state_for(v16).shape, opt._state_for(v16).dtype) == ((3, 4), "float32")
    s, n, m = opt._slots_for(v16)
    assert (s.dtype, n.dtype, m.dtype) == ("float32", "float32", "float32")
    assert sorted(opt.slot_values(v16)) == ["count", "momentum", "sum"]
    opt2 = Expectigrad(beta=0.0, sparse_counter=False)
    opt2.build([v32])
    assert opt2._slots_for(v32)[1:] == (None, None)
    assert opt2._state_for(v32).shape == (1, 2, 3)
    assert sorted(opt2.slot_values(v32)) == ["sum"]
    assert len(opt2.variables) == 3  # iterations, learning_rate, state
    opt3 = Expectigrad(beta=0.5, sparse_counter=False)
    opt3.build([v32])
    assert opt3._state_rows() == (None, 1) and opt3._state_for(v32).shape == (2, 2, 3)
