"""tf_keras (Keras 2, TF_USE_LEGACY_KERAS=1): expectigrad_tf.legacy.Expectigrad.

TF_USE_LEGACY_KERAS must be set before TensorFlow is imported, and tf_keras
registers itself with TensorFlow on import, so the optimizer runs in fresh
processes (``_tf_keras_worker.py``: one for every check, one that loads the
saved model without importing expectigrad_tf); this process compares what
they wrote with the NumPy reference. Skipped only when tf_keras is not
installed (pip install "tf-keras~=2.21.0", matching TensorFlow's minor).
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

if importlib.util.find_spec("tf_keras") is None:
    pytest.skip("tf_keras is not installed (pip install 'tf-keras~=2.21.0')",
                allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _tf_keras_worker as worker  # noqa: E402  (no TensorFlow at import)

from expectigrad_tf.reference import (  # noqa: E402
    ExpectigradNumpy, LazySparseExpectigradNumpy, online_gradient)


def _run(mode, out):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_BACKEND", None)
    p = subprocess.run([sys.executable, os.path.join(HERE, "_tf_keras_worker.py"), mode, str(out)],
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("tf_keras")
    _run("main", out)
    with open(out / "results.json") as f:
        facts = json.load(f)
    return out, facts, dict(np.load(out / "results.npz"))


def _reference(problem, beta, sparse_counter, steps=worker.STEPS):
    x0 = np.linspace(-1.5, 1.5, 12).reshape(3, 4)
    ref = ExpectigradNumpy(x0, lr=worker.LR, beta=beta, sparse_counter=sparse_counter)
    for t in range(1, steps + 1):
        ref.step(online_gradient(problem, ref.x, t))
    return ref.x


def test_expectigrad_resolves_to_the_tf_keras_class_with_legacy_keras(results):
    _, facts, _ = results
    assert facts["tf_keras_is_tf_keras"]  # tf.keras is tf_keras in the worker
    assert facts["resolves_to_legacy"]    # expectigrad_tf.Expectigrad follows it
    assert facts["subclass"]


def test_worker_import_keeps_the_environment():
    # TF_USE_LEGACY_KERAS set in this process would turn tf.keras and
    # expectigrad_tf.Expectigrad into tf_keras for the rest of the suite.
    import importlib

    before = dict(os.environ)
    importlib.reload(worker)
    assert dict(os.environ) == before


def test_resolution_rule_is_tensorflows(monkeypatch):
    import expectigrad_tf

    for value, legacy in (("1", True), ("true", True), ("True", True), ("0", False),
                          ("yes", False), ("TRUE", False), (None, False)):
        if value is None:
            monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
        else:
            monkeypatch.setenv("TF_USE_LEGACY_KERAS", value)
        assert expectigrad_tf._legacy_keras() is legacy, value


def test_legacy_keras_without_tf_keras_is_an_import_error(monkeypatch):
    # As tf.keras: with TF_USE_LEGACY_KERAS set, tf_keras or an ImportError.
    import expectigrad_tf

    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    monkeypatch.setitem(sys.modules, "tf_keras", None)  # not importable
    monkeypatch.delitem(sys.modules, "expectigrad_tf.legacy", raising=False)
    monkeypatch.delitem(expectigrad_tf.__dict__, "Expectigrad", raising=False)  # resolve again
    with pytest.raises(ImportError, match="pip install 'tf-keras~="):
        expectigrad_tf.Expectigrad
    assert "Expectigrad" not in expectigrad_tf.__dict__


def test_default_is_the_keras3_class():
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    code = ("import expectigrad_tf, keras; from expectigrad_tf.optimizer import Expectigrad as K3;"
            "assert expectigrad_tf.Expectigrad is K3;"
            "assert isinstance(expectigrad_tf.Expectigrad(), keras.optimizers.Optimizer)")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.parametrize("case", worker.DENSE_CASES, ids=lambda c: worker.case_key(*c))
def test_dense_trajectory_equals_reference_float64(results, case):
    _, facts, arrays = results
    problem, beta, sc, fused = case
    key = worker.case_key(*case)
    np.testing.assert_allclose(arrays["dense/" + key], _reference(problem, beta, sc), rtol=1e-10)
    assert facts["dense_paths"][key] == (["composite"] if fused is False else ["fused"])
    assert facts["iterations"][key] == worker.STEPS


def test_schedule_is_evaluated_at_the_step_before_the_update(results):
    _, facts, arrays = results
    assert facts["schedule_config"] == "PiecewiseConstantDecay"
    x0 = np.linspace(-1.5, 1.5, 12).reshape(3, 4)
    ref = ExpectigradNumpy(x0, lr=worker.LR)
    for t in range(1, worker.STEPS + 1):  # iterations = t - 1 <= 10: LR, then LR / 2
        ref.step(online_gradient("quadratic", ref.x, t), lr=worker.LR if t - 1 <= 10 else worker.LR / 2)
    np.testing.assert_allclose(arrays["schedule"], ref.x, rtol=1e-10)
    assert not np.allclose(arrays["schedule"], _reference("quadratic", 0.9, True), rtol=1e-6)


def test_xla_compiled_composite_equals_reference(results):
    _, facts, arrays = results
    assert facts["xla_paths"] == ["composite-xla"]
    np.testing.assert_allclose(arrays["xla"], _reference("quadratic", 0.9, True), rtol=1e-10)


@pytest.mark.parametrize("beta", [0.9, 0.0])
def test_sparse_gather_gradient_equals_reference(results, beta):
    _, facts, arrays = results
    assert facts["sparse_is_indexed_slices"]
    assert facts["sparse_paths"][str(beta)] == ["sparse"]
    table0 = np.arange(30, dtype=np.float64).reshape(10, 3) / 7.0 - 2.0
    ref = ExpectigradNumpy(table0, lr=worker.LR, beta=beta)
    touched = np.zeros(10, bool)
    for idx, vals in worker.sparse_steps():
        dense = np.zeros_like(table0)
        np.add.at(dense, idx, vals)  # duplicates summed
        touched[idx] = True
        ref.step(dense)
    np.testing.assert_allclose(arrays[f"sparse/{beta}"], ref.x, rtol=1e-10)
    np.testing.assert_allclose(arrays[f"sparse/{beta}/sum"], ref.s, rtol=1e-10)
    np.testing.assert_array_equal(arrays[f"sparse/{beta}/count"], ref.n)
    # The packed state: sum, count, then momentum (beta > 0 only).
    assert facts["sparse_slots"][str(beta)] == sorted(
        ["sum", "count"] + (["momentum"] if beta > 0 else []))
    if beta > 0:
        np.testing.assert_allclose(arrays[f"sparse/{beta}/momentum"], ref.m,
                                   rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(
        arrays[f"sparse/{beta}/state"],
        np.stack([ref.s, ref.n] + ([ref.m] if beta > 0 else [])), rtol=1e-10, atol=1e-15)
    assert not touched.all() and np.all(arrays[f"sparse/{beta}/sum"][~touched] == 0)
    # Rows never given keep their value (zero momentum); rows given earlier
    # but not at a step still move at that step when beta > 0 (exact
    # Algorithm 1, not lazy): the reference comparison above covers that.
    np.testing.assert_array_equal(arrays[f"sparse/{beta}"][~touched], table0[~touched])


def test_lazy_sparse_equals_the_lazy_reference(results):
    _, facts, arrays = results
    assert facts["sparse_paths"]["0.9-lazy"] == ["sparse-lazy"]
    table0 = np.arange(30, dtype=np.float64).reshape(10, 3) / 7.0 - 2.0
    ref = LazySparseExpectigradNumpy(table0, lr=worker.LR, beta=0.9)
    for idx, vals in worker.sparse_steps():
        ref.step(idx, vals)
    np.testing.assert_allclose(arrays["sparse/0.9-lazy"], ref.x, rtol=1e-10)
    np.testing.assert_allclose(arrays["sparse/0.9-lazy/sum"], ref.s, rtol=1e-10)
    np.testing.assert_array_equal(arrays["sparse/0.9-lazy/count"], ref.n)
    np.testing.assert_allclose(arrays["sparse/0.9-lazy/momentum"], ref.m, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(arrays["sparse/0.9-lazy/state"], np.stack([ref.s, ref.n, ref.m]),
                               rtol=1e-10, atol=1e-15)
    # and differs from the exact update (momentum of rows not given does not decay)
    assert not np.allclose(arrays["sparse/0.9-lazy"], arrays["sparse/0.9"], rtol=1e-6)


def test_float16_variable_has_float32_state(results):
    _, facts, arrays = results
    # One packed float32 state of shape (sum, count, momentum) + (2, 2): the
    # momentum too is float32, not the variable's float16.
    assert facts["float16_state"] == ["float32", [3, 2, 2]]
    assert facts["float16_slot_dtypes"] == {
        "sum": "float32", "count": "float32", "momentum": "float32"}
    assert facts["float16_paths"] == ["fused"]
    ref = ExpectigradNumpy(np.ones((2, 2)), lr=worker.LR)
    ref.step(np.full((2, 2), 0.5))
    np.testing.assert_array_equal(arrays["float16/sum"], np.full((2, 2), 0.25))
    np.testing.assert_array_equal(arrays["float16/count"], np.ones((2, 2)))
    np.testing.assert_allclose(arrays["float16/momentum"], ref.m, rtol=1e-6)
    np.testing.assert_allclose(arrays["float16/x"], ref.x, rtol=1e-3)
    assert np.all(arrays["float16/x"] < 1)


def test_arguments_config_and_errors(results):
    _, facts, _ = results
    assert facts["config"] == {"name": "Expectigrad", "clipnorm": 1.0, "learning_rate": 0.25,
                               "beta": 0.5, "epsilon": 1e-06, "sparse_counter": False,
                               "fused": False, "lazy_sparse": False}
    assert facts["from_config"] == ["Expectigrad", 0.5, False]
    errors = facts["errors"]
    assert all(errors.values()), errors
    for kw, message in errors.items():
        name = kw.split("'")[1]
        assert f"`{name}`" in message and f"{name}=" in message, (kw, message)
    assert "expected (2, 3)" in facts["shape_error"]


def test_fit_trains_with_fused_and_sparse_paths(results):
    _, facts, _ = results
    loss = facts["fit_loss"]
    assert loss[-1] < 0.5 * loss[0]
    paths = facts["fit_paths"]
    assert paths.pop("embedding/embeddings:0") == "sparse"
    assert set(paths.values()) == {"fused"}
    assert facts["fit_iterations"] == 5 * 4


def test_fit_with_jit_compile_runs_the_fused_op_inside_xla(results):
    _, facts, arrays = results
    fused, composite = facts["jit/None/paths"], facts["jit/False/paths"]
    for paths, dense in ((fused, "fused"), (composite, "composite-xla")):
        embeddings = [k for k in paths if "embeddings" in k]
        assert len(embeddings) == 1 and paths.pop(embeddings[0]) == "sparse"  # IndexedSlices
        assert set(paths.values()) == {dense}
    assert facts["jit/None/loss"][-1] < 0.7 * facts["jit/None/loss"][0]
    np.testing.assert_allclose(arrays["jit/None"], arrays["jit/False"], rtol=1e-5, atol=1e-6)


def test_saved_model_loads_without_custom_objects_and_resumes_exactly(results):
    out, facts, arrays = results
    _run("load", out)  # a fresh process that imports only TensorFlow (tf.keras)
    with open(out / "load.json") as f:
        loaded = json.load(f)
    assert loaded["class"] == "expectigrad_tf.legacy.Expectigrad"
    assert loaded["iterations"] == 4 * 4 and loaded["beta"] == 0.9
    np.testing.assert_allclose(loaded["learning_rate"], 0.02, rtol=1e-7)
    # One more epoch after loading == one more epoch without saving: the
    # optimizer state (sum, count, momentum, step) was restored.
    np.testing.assert_array_equal(np.load(out / "loaded_continued.npy"), arrays["fit/continued"])
    # The legacy HDF5 format too (in the worker, where expectigrad_tf is imported).
    assert facts["h5_optimizer"] == ["expectigrad_tf.legacy", 16]
    np.testing.assert_array_equal(arrays["fit/h5_continued"], arrays["fit/continued"])


def test_state_with_other_slots_is_refused(results):
    _, facts, _ = results
    assert "nothing was restored" in facts["mismatch_error"]
    # iterations and the packed state (sum, count, momentum), both still zero.
    assert facts["mismatch_shapes"] == [[], [3, 2, 3]]
    assert facts["mismatch_unchanged"] == [0.0, 0.0]
    # saved: beta=0, no momentum row; expected: with it
    assert "(2, 2, 3)" in facts["mismatch_error"] and "(3, 2, 3)" in facts["mismatch_error"]


def test_mirrored_strategy_two_replicas_equals_one_device(results):
    _, facts, arrays = results
    assert facts["replicas"] == 2
    assert set(facts["mirrored_paths"].values()) == {"fused"}
    np.testing.assert_allclose(arrays["mirrored"], arrays["single"], rtol=1e-5, atol=1e-6)
