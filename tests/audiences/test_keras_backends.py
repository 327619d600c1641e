"""Keras 3 on JAX and PyTorch: the optimizer's composite path, exact against
the NumPy reference in float32, compile/fit, save/load_model and resume.

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
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed in this environment")
    env = dict(os.environ, KERAS_BACKEND="jax",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, "-c", _SHARDING_SCRIPT], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert result["kernel"] == [None, "model"]
    assert result["state"] == [None, None, "model"] and result["shape"] == [3, 4, 8]
    assert result["sum_nonzero"]
