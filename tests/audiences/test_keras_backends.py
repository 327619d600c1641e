"""Keras 3 on JAX and PyTorch: the fused kernel on JAX (an XLA custom call)
and the composite path on both, exact against the NumPy reference in float32
(and bit-equal in float64 on JAX), agreeing with each other, compile/fit,
save/load_model, resume, and a bad learning rate changing nothing.

Each backend runs in its own process (KERAS_BACKEND is read once, at import).
A backend whose package is not installed here is skipped: CI installs JAX and
a CPU PyTorch in a separate environment *without TensorFlow*
(``.ci/extra_envs.sh``), where these tests also check that neither
``import expectigrad_tf`` nor training imports TensorFlow.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "_keras_backend_worker.py")
HAS_TF = importlib.util.find_spec("tensorflow") is not None


def _run_jax_script(script, tmp_path, **env_extra):
    """Runs `script` (python -c) on Keras's JAX backend; returns the JSON
    after its last "RESULT " line. Skips when jax is not installed here."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed in this environment")
    env = dict(os.environ, KERAS_BACKEND="jax", **env_extra)
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_trains_exactly(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed in this environment")
    env = dict(os.environ, KERAS_BACKEND=backend)
    proc = subprocess.run([sys.executable, WORKER], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert result["backend"] == backend
    assert result["resumed_equal"]
    if not HAS_TF:
        # No TensorFlow: never imported, and fused_status() says why.
        assert result["tensorflow_imported"] is False
        assert result["fused_available"] is False
        assert "TensorFlow is not installed" in result["fused_reason"]
        assert "python -m expectigrad_tf.build" in result["fused_reason"]


_SHARDING_SCRIPT = r"""
import json
import numpy as np, keras
from expectigrad_tf import Expectigrad
mesh = keras.distribution.DeviceMesh((2,), ["model"], keras.distribution.list_devices())
layouts = keras.distribution.LayoutMap(mesh)
layouts[".*d/kernel"] = (None, "model")
keras.distribution.set_distribution(
    keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name=None))
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d")])
opt = Expectigrad(1e-2)
model.compile(optimizer=opt, loss="mse")
model.fit(np.ones((8, 4)), np.ones((8, 8)), epochs=1, verbose=0)
kernel = model.layers[0].kernel
state = opt._state_for(kernel)
print("RESULT " + json.dumps({
    "paths": [list(v) for v in opt.dispatch_report().values()][:2],
    "kernel": [a for a in kernel.value.sharding.spec],
    "state": [a for a in state.value.sharding.spec],
    "shape": list(state.shape),
    "sum_nonzero": bool(np.any(opt.slot_values(kernel)["sum"] != 0)),
}))
"""


def test_jax_state_is_sharded_like_its_variable(tmp_path):
    """Under a Keras ModelParallel distribution the packed state is sharded
    as its variable is (the leading rows axis replicated), not replicated
    whole on every device."""
    result = _run_jax_script(_SHARDING_SCRIPT, tmp_path,
                             XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert result["kernel"] == [None, "model"]
    assert result["state"] == [None, None, "model"] and result["shape"] == [3, 4, 8]
    assert result["sum_nonzero"]
    # The custom call has no sharding rule: a keras.distribution takes the composite.
    assert result["paths"] == [["composite", "a keras.distribution (ModelParallel) is set: "
                                "the custom call has no sharding rule"]] * 2, result["paths"]


_FLOAT64_SCRIPT = r"""
import json
import numpy as np, keras
import expectigrad_tf
from expectigrad_tf.reference import ExpectigradNumpy
rng = np.random.default_rng(3)
out = {}
for beta in (0.0, 0.9):
    for sc in (True, False):
        x0 = rng.standard_normal(257)
        grads = [rng.standard_normal(257) * (rng.random(257) > 0.3) for _ in range(40)]
        ref = ExpectigradNumpy(x0, lr=2.0 ** -7, beta=beta, eps=1e-8, sparse_counter=sc,
                               dtype=np.float64)
        for g in grads:
            ref.step(g)
        for fused in (None, False):
            v = keras.Variable(x0, dtype="float64")
            opt = expectigrad_tf.Expectigrad(2.0 ** -7, beta=beta, sparse_counter=sc, fused=fused)
            for g in grads:
                opt.apply([keras.ops.convert_to_tensor(g)], [v])
            key = f"{beta} {sc} {fused}"
            got = np.asarray(v.value)
            out[key] = {"bit_equal": bool(np.array_equal(got, ref.x)),
                        "max_rel": float(np.max(np.abs(got - ref.x) / np.abs(ref.x))),
                        "paths": sorted({p for p, _ in opt.dispatch_report().values()})}
print("RESULT " + json.dumps(out))
"""


def test_jax_float64_is_bit_equal_to_the_reference_on_both_paths(tmp_path):
    """With x64 enabled, float64 variables take the fused kernel and give
    exactly the NumPy reference's values. The composite path, compiled by
    XLA, may round differently (XLA:CPU turns a division by a broadcast
    scalar into a multiplication by its reciprocal): close, not bit-equal."""
    result = _run_jax_script(_FLOAT64_SCRIPT, tmp_path, JAX_ENABLE_X64="1")
    assert len(result) == 8
    for key, r in result.items():
        if key.endswith("None"):
            assert r["bit_equal"], key
        assert r["max_rel"] < 1e-13, (key, r)
        assert r["paths"] == (["composite"] if key.endswith("False") else ["fused"]), (key, r)


def test_fused_true_is_strict_on_torch(tmp_path):
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed in this environment")
    script = ("import keras, expectigrad_tf\n"
              "v = keras.Variable([1.0, 2.0])\n"
              "try:\n"
              "    expectigrad_tf.Expectigrad(fused=True).build([v])\n"
              "except RuntimeError as e:\n"
              "    print('RAISED', e)\n")
    env = dict(os.environ, KERAS_BACKEND="torch")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RAISED Expectigrad(fused=True)" in proc.stdout and "'torch'" in proc.stdout


def test_jax_benchmark_runs(tmp_path):
    """The JAX step benchmark (python -m expectigrad_experiments.benchmark.keras_backend)
    measures the three methods on their own paths and prints ratios."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed in this environment")
    env = dict(os.environ, KERAS_BACKEND="jax")
    proc = subprocess.run([sys.executable, "-m", "expectigrad_experiments.benchmark.keras_backend",
                           "--quick"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    rows = [ln.split("|")[1:-1] for ln in proc.stdout.splitlines() if ln.startswith("| 8x1K")]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [
        ("expectigrad", "fused"), ("expectigrad_composite", "composite"), ("keras_adam", "-")]
    assert all(float(r[3]) > 0 for r in rows)
    ratios = [ln for ln in proc.stdout.splitlines() if ln.startswith("- 8x1K")]
    assert len(ratios) == 2 and all("x (paired p10-p90" in ln for ln in ratios)


_LOWERING_SCRIPT = r"""
import json
import jax, keras, numpy as np
import expectigrad_tf
v = keras.Variable(np.ones(5, np.float32))
opt = expectigrad_tf.Expectigrad(0.1)
opt.build([v])
def step(opt_values, var_values, grads):
    return opt.stateless_apply(opt_values, grads, var_values)
args = ([a.value for a in opt.variables], [v.value], [jax.numpy.ones(5)])
out = {}
for platforms in (("cpu",), ("cuda",), ("rocm",), ("cpu", "cuda")):
    text = jax.jit(step).trace(*args).lower(lowering_platforms=platforms).as_text()
    out[",".join(platforms)] = "expectigrad_apply" in text
print("RESULT " + json.dumps(out))
"""


def test_jax_custom_call_is_emitted_for_the_cpu_only(tmp_path):
    """The platform of a jitted step is fixed when XLA compiles it: the step
    lowered for a GPU has no custom call (no GPU handler is registered), so
    it compiles and runs the composite update there."""
    result = _run_jax_script(_LOWERING_SCRIPT, tmp_path)
    assert result == {
        "cpu": True, "cuda": False, "rocm": False, "cpu,cuda": True}


_HANDLER_SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from expectigrad_tf import _jax_ffi
assert _jax_ffi.status()["available"], _jax_ffi.status()
v = [jnp.arange(1.0, 5.0, dtype=jnp.float32)]
s = [jnp.zeros((3, 4), jnp.float32)]
g = [jnp.ones(4, jnp.float32)]
out = {}
def run(lr, step, beta=0.9, epsilon=1e-8):
    try:
        nv, ns = _jax_ffi.apply(v, s, g, jnp.float32(lr), jnp.int32(step), beta=beta,
                                epsilon=epsilon, sparse_counter=True)
        return ("ok", bool(np.array_equal(nv[0], v[0]) and np.array_equal(ns[0], s[0])))
    except Exception as e:
        return ("error", str(e))
out["good"] = run(0.1, 1)
for lr in ("nan", "inf", "-1"):
    out["lr " + lr] = run(float(lr), 1)
out["step 0"] = run(0.1, 0)
out["beta 1"] = run(0.1, 1, beta=1.0)
out["epsilon 0"] = run(0.1, 1, epsilon=0.0)
print("RESULT " + json.dumps(out))
"""


def test_jax_handler_skips_a_bad_learning_rate_and_refuses_the_rest(tmp_path):
    """The standalone handler's contract: a bad learning rate leaves every
    buffer unchanged without an error (JAX has donated them); a bad step,
    beta or epsilon (the optimizer checks them first) is an error naming the
    value."""
    result = _run_jax_script(_HANDLER_SCRIPT, tmp_path)
    r = result
    assert r["good"] == ["ok", False]  # a good step changes the buffers
    for lr in ("nan", "inf", "-1"):
        assert r["lr " + lr] == ["ok", True], r
    assert r["step 0"][0] == "error" and "step must be >= 1, got 0" in r["step 0"][1]
    assert r["beta 1"][0] == "error" and "beta" in r["beta 1"][1]
    assert r["epsilon 0"][0] == "error" and "epsilon" in r["epsilon 0"][1]


_RETRACE_SCRIPT = r"""
import functools, json
import jax, jax.numpy as jnp, keras, numpy as np
import expectigrad_tf
out = {}
for fused in (None, False):
    v = keras.Variable(np.ones(4, np.float32))
    opt = expectigrad_tf.Expectigrad(0.1, fused=fused)
    opt.build([v])
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(opt_values, var_values, grads):
        new_vars, new_opt = opt.stateless_apply(opt_values, grads, var_values)
        return new_opt, new_vars
    ov, tv = [a.value for a in opt.variables], [v.value]
    ov, tv = step(ov, tv, [jnp.ones(4, jnp.float32)])
    ov, tv = step(ov, tv, [jnp.ones(4, jnp.float64).astype(jnp.bfloat16)])  # retrace
    out[str(fused)] = [float(x) for x in np.asarray(tv[0])]
from expectigrad_tf.reference import ExpectigradNumpy
ref = ExpectigradNumpy(np.ones(4, np.float32), lr=0.1, beta=0.9, eps=1e-8, sparse_counter=True,
                       dtype=np.float32)
ref.step(np.ones(4, np.float32)); ref.step(np.ones(4, np.float32))
out["reference"] = [float(x) for x in ref.x]
print("RESULT " + json.dumps(out))
"""


def test_jax_custom_loop_retraces_after_donation(tmp_path):
    """A custom loop that donates Keras's arrays to a jitted step and makes it
    trace again (a new gradient dtype): the dispatch facts do not touch the
    donated arrays."""
    result = _run_jax_script(_RETRACE_SCRIPT, tmp_path)
    for path in ("None", "False"):  # two steps, as the NumPy reference takes them
        assert all(abs(a - b) < 1e-6 for a, b in zip(result[path], result["reference"])), result


_STALE_SCRIPT = r"""
import json, os, shutil, sys
import keras
from expectigrad_tf import _jax_ffi
copy = sys.argv[1]
for name in (_jax_ffi.LIB, _jax_ffi.BUILD_INFO):
    shutil.copy(os.path.join(_jax_ffi._HERE, name), copy)
info = json.load(open(os.path.join(copy, _jax_ffi.BUILD_INFO)))
info["jaxlib_version"] = "0.0.1"
json.dump(info, open(os.path.join(copy, _jax_ffi.BUILD_INFO), "w"))
_jax_ffi._HERE = copy
status = _jax_ffi.status()
import expectigrad_tf
v = keras.Variable([1.0, 2.0])
opt = expectigrad_tf.Expectigrad(0.1)
opt.apply([keras.ops.ones(2)], [v])
print("RESULT " + json.dumps({"status": status, "report": list(opt.dispatch_report().values())}))
"""


def test_jax_library_built_for_another_jaxlib_is_not_used(tmp_path):
    result = _run_jax_script(_STALE_SCRIPT.replace("sys.argv[1]", repr(str(tmp_path))),
                             tmp_path)
    assert not result["status"]["available"]
    assert "built for jaxlib 0.0.1" in result["status"]["reason"]
    assert "python -m expectigrad_tf.build" in result["status"]["reason"]
    assert result["report"][0][0] == "composite" and "0.0.1" in result["report"][0][1]
