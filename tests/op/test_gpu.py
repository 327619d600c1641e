"""The fused op on a GPU: equal to the composite path and the NumPy reference,
placed on the GPU, and used by model.fit. Skipped unless TensorFlow sees a
GPU; run on a GPU machine with ``python -m pytest -m gpu tests/test_gpu.py``.
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from expectigrad_tf import Expectigrad, fused_status
from expectigrad_tf import _ops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if os.path.join(ROOT, "tests") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "tests"))

from expectigrad_tf.reference import ExpectigradNumpy, online_gradient  # noqa: E402

GPUS = tf.config.list_physical_devices("GPU")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not GPUS, reason="TensorFlow sees no GPU")]

VARIANTS = [(beta, sc) for beta in (0.0, 0.9) for sc in (True, False)]
LR = 2.0**-7  # exact in the float32 learning-rate variable
X0 = np.linspace(-1.5, 2.0, 4099)  # odd size, not a multiple of any vector width
# fused vs composite on the same device, per variable dtype.
TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=2e-5, atol=1e-6),
       "float16": dict(rtol=4e-3, atol=4e-3), "bfloat16": dict(rtol=3e-2, atol=3e-2)}


def _require_gpu_kernel():
    status = fused_status()
    assert status["available"], status["reason"]
    assert "GPU" in status["devices"], f"no GPU kernel: {status['gpu_reason']}"


def _trajectory(fused, dtype, beta, sparse, steps, device="/GPU:0"):
    with tf.device(device):
        var = tf.Variable(X0.astype(dtype) if dtype != "bfloat16"
                          else tf.cast(X0.astype("float32"), tf.bfloat16))
    opt = Expectigrad(learning_rate=LR, beta=beta, epsilon=1e-8, sparse_counter=sparse,
                      fused=fused)
    opt.build([var])

    @tf.function
    def step(g):
        opt.apply([g], [var])

    for t in range(1, steps + 1):
        g = online_gradient("intermittent", X0, t)  # independent of x: same for every run
        step(tf.cast(tf.constant(g), var.dtype))
    return var, opt


def test_gpu_kernel_is_built_and_loaded():
    _require_gpu_kernel()


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("beta,sparse", VARIANTS)
def test_fused_gpu_equals_composite_and_reference(dtype, beta, sparse):
    _require_gpu_kernel()
    steps = 50
    fused_var, fused_opt = _trajectory(None, dtype, beta, sparse, steps)
    comp_var, comp_opt = _trajectory(False, dtype, beta, sparse, steps)
    assert "GPU" in fused_var.device.upper() and "GPU" in comp_var.device.upper()
    state = fused_opt._state_for(fused_opt._trainable_variables[0])
    assert "GPU" in state.value.device.upper(), state.value.device
    assert {p for p, _ in fused_opt.dispatch_report().values()} == {"fused"}
    assert {p for p, _ in comp_opt.dispatch_report().values()} == {"composite"}
    as64 = lambda v: tf.cast(v, tf.float64).numpy()  # noqa: E731
    np.testing.assert_allclose(as64(fused_var), as64(comp_var), **TOL[dtype])
    for a, b in zip(fused_opt._slots_for(fused_opt._trainable_variables[0]),
                    comp_opt._slots_for(comp_opt._trainable_variables[0])):
        if a is not None:
            np.testing.assert_allclose(as64(a), as64(b), **TOL[dtype])
    if dtype in ("float64", "float32"):
        ref = ExpectigradNumpy(X0.astype(dtype), lr=LR, beta=beta, eps=1e-8,
                               sparse_counter=sparse)
        for t in range(1, steps + 1):
            ref.step(online_gradient("intermittent", X0, t).astype(dtype))
        tol = TOL[dtype] if dtype == "float64" else dict(rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(as64(fused_var), ref.x, **tol)
        s, n, _ = fused_opt._slots_for(fused_opt._trainable_variables[0])
        np.testing.assert_allclose(as64(s), ref.s, **tol)
        if sparse:
            np.testing.assert_array_equal(as64(n), ref.n)


def _op_devices(device):
    """Devices the ExpectigradApply node ran on, from the partition graphs of a
    TF1 session run (what the placer actually chose, not what was asked)."""
    mod = _ops.op_module()
    g = tf.Graph()
    with g.as_default():
        with tf.device(device):
            v = tf.Variable(np.ones(1025, np.float32))
            s = tf.Variable(np.zeros((3, 1025), np.float32))  # sum, count, momentum
        op = mod.expectigrad_apply(
            var=[v.handle], state=[s.handle], sparse_counter=True, momentum=True,
            grad=[tf.constant(np.full(1025, 0.5, np.float32))], lr=tf.constant(0.1),
            beta=tf.constant(0.9), epsilon=tf.constant(1e-8),
            step=tf.constant(1, tf.int64))
        init = tf.compat.v1.global_variables_initializer()
    config = tf.compat.v1.ConfigProto(allow_soft_placement=False)
    with tf.compat.v1.Session(graph=g, config=config) as sess:
        sess.run(init)
        meta = tf.compat.v1.RunMetadata()
        sess.run(op, options=tf.compat.v1.RunOptions(output_partition_graphs=True),
                 run_metadata=meta)
        x = sess.run(v.value())
    np.testing.assert_allclose(x, 1 - 0.1 * 0.5 / (1e-8 + 0.5), rtol=1e-6)
    return [node.device for pg in meta.partition_graphs for node in pg.node
            if node.op == "ExpectigradApply"]


def test_fused_op_is_placed_on_the_gpu():
    _require_gpu_kernel()
    devices = _op_devices("/GPU:0")
    assert devices and all("GPU" in d.upper() for d in devices), devices


def _model(seed):
    tf.keras.utils.set_random_seed(seed)
    import keras

    return keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(4)])


@pytest.mark.parametrize("beta,sparse", [(0.9, True), (0.0, False)])
def test_model_fit_uses_the_gpu_kernel(beta, sparse):
    """model.fit(jit_compile=False) on a GPU dispatches every variable to the
    fused op. The op takes the variables' resource handles, which live on the
    GPU, so the placer must run it there (it has no other choice: an op that
    consumes a GPU resource is colocated with it)."""
    _require_gpu_kernel()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 16)).astype("float32")
    y = rng.standard_normal((512, 4)).astype("float32")
    weights = {}
    for fused in (None, False):
        model = _model(1)
        opt = Expectigrad(learning_rate=1e-2, beta=beta, sparse_counter=sparse, fused=fused)
        model.compile(optimizer=opt, loss="mse", jit_compile=False)
        hist = model.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0)
        assert np.isfinite(hist.history["loss"]).all()
        for v in model.trainable_variables:
            assert "GPU" in v.value.device.upper(), v.value.device
        paths = {p for p, _ in opt.dispatch_report().values()}
        assert paths == ({"fused"} if fused is None else {"composite"}), opt.dispatch_report()
        assert len(opt.dispatch_report()) == len(model.trainable_variables)
        weights[fused] = [v.numpy() for v in model.trainable_variables]
    for a, b in zip(weights[None], weights[False]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _has_device_array_library():
    return any(importlib.util.find_spec(m) is not None for m in ("cupy", "torch"))


@pytest.mark.slow
def test_gpu_check_script_quick(tmp_path):
    """python -m tools.gpu_check --quick: the kernel against the reference
    without TensorFlow (needs nvcc and CuPy or PyTorch)."""
    if not _has_device_array_library():
        pytest.skip("tools.gpu_check needs CuPy or PyTorch")
    proc = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--quick", "-q", "--out",
                           str(tmp_path / "gpu_check.json")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
