"""tf.distribute.ParameterServerStrategy (issue 14 item 5): an in-process
cluster on 127.0.0.1 (2 workers, 2 parameter servers) trains a model with an
Embedding and Dense layers through a ClusterCoordinator, float64, with the
dense (fused op, and composite with fused=False) and sparse (exact and lazy)
paths; the result equals a single-process run, whose gradients are replayed
through the independent NumPy references.

Both runs are subprocesses with a timeout (an in-process gRPC cluster cannot
be shut down, and a hang must not block the test run). Tolerances: both runs
do the same float64 operations on the same inputs in the same order (each
step is joined before the next is scheduled), so they agree to rounding
(rtol 1e-12; bit-equal in practice); the reference replay accumulates
differently ordered float64 rounding over 12 steps (rtol 1e-10).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from expectigrad_tf import _ops
from expectigrad_tf.reference import ExpectigradNumpy, LazySparseExpectigradNumpy

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_parameter_server_worker.py")
sys.path.insert(0, HERE)
import _parameter_server_worker as W  # noqa: E402

HAS_OP = _ops.op_module() is not None
TIMEOUT = 600


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow",
               CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pss")
    procs = {}
    try:
        for mode in ("single", "pss"):
            procs[mode] = subprocess.Popen(
                [sys.executable, WORKER, mode, str(out / mode)], env=_env(), cwd=str(out),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        logs = {}
        for mode, p in procs.items():
            try:
                stdout, _ = p.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                stdout, _ = p.communicate()
                pytest.fail(f"{mode} run timed out after {TIMEOUT}s:\n"
                            f"{stdout.decode(errors='replace')[-3000:]}")
            logs[mode] = stdout.decode(errors="replace")[-3000:]
            assert p.returncode == 0, f"{mode} run failed:\n{logs[mode]}"
    finally:
        for p in procs.values():  # always clean up, even on failure
            if p.poll() is None:
                p.kill()
                p.wait()
    result = {}
    for mode in ("single", "pss"):
        with open(out / f"{mode}.json") as f:
            info = json.load(f)
        result[mode] = (dict(np.load(out / f"{mode}.npz")), info)
    return result


def _state_keys(arrays, case):
    return sorted(k for k in arrays if k.startswith(case + "/") and "/grad/" not in k)


@pytest.mark.parametrize("case", list(W.CASES))
def test_parameter_servers_equal_single_process(runs, case):
    single, _ = runs["single"]
    pss, info = runs["pss"]
    keys = _state_keys(single, case)
    assert len(keys) >= 5 + 5 and keys == _state_keys(pss, case)
    for k in keys:
        np.testing.assert_allclose(pss[k], single[k], rtol=1e-12, atol=1e-15, err_msg=k)
    assert info["strategy"] == "ParameterServerStrategyV2"
    assert info["cases"][case]["iterations"] == W.STEPS
    assert set(info["cases"][case]["dtypes"]) == {"float64"}
    # One packed state per variable: (sum, count?, momentum?) + its shape.
    kwargs = W.CASES[case]
    rows = 1 + int(kwargs.get("sparse_counter", True)) + int(kwargs["beta"] > 0)
    _, _, init = W.data(np)
    assert info["cases"][case]["state_shapes"] == [[rows, *np.shape(w)] for w in init]


@pytest.mark.parametrize("case", list(W.CASES))
def test_dispatch_under_parameter_servers(runs, case):
    _, info = runs["pss"]
    report = info["cases"][case]["dispatch"]
    kwargs = W.CASES[case]
    emb = [v for k, v in report.items() if "embedding" in k]
    dense = [v for k, v in report.items() if "embedding" not in k]
    assert len(emb) == 1 and len(dense) == 4
    assert emb[0][0] == ("sparse-lazy" if kwargs.get("lazy_sparse") else "sparse")
    if kwargs.get("fused") is False:
        want = "composite"
    else:
        want = "fused" if HAS_OP else "composite"
    assert {p for p, _ in dense} == {want}, report
    # The single-process run took the same paths.
    single = runs["single"][1]["cases"][case]["dispatch"]
    assert sorted(p for p, _ in single.values()) == sorted(p for p, _ in report.values())


def test_variables_and_slots_live_on_the_parameter_servers(runs):
    _, info = runs["pss"]
    for case, c in info["cases"].items():
        devices = c["variable_devices"]
        assert all("/job:ps/" in d for d in devices), devices
        assert {d.split("/task:")[1][0] for d in devices} == {"0", "1"}  # both ps used
        assert len(c["slot_devices"]) == len(devices)  # one state per variable
        for name, device in c["slot_devices"].items():
            k = int(name.split("/")[1])
            assert device == devices[k], (case, name, device, devices[k])


@pytest.mark.parametrize("case", list(W.CASES))
def test_single_process_run_equals_the_reference(runs, case):
    """The run both are compared with, replayed through the NumPy references
    from its recorded gradients: Algorithm 1 for the dense layers and the
    exact sparse path (densified gradient), the lazy reference for the
    embedding with lazy_sparse=True."""
    single, _ = runs["single"]
    kwargs = W.CASES[case]
    lr = kwargs["learning_rate"]  # floatx is float64: so is the optimizer's lr variable
    beta, sc = kwargs["beta"], kwargs.get("sparse_counter", True)
    _, _, init = W.data(np)
    refs = []
    for k, w0 in enumerate(init):
        cls = LazySparseExpectigradNumpy if (k == 0 and kwargs.get("lazy_sparse")) else ExpectigradNumpy
        refs.append(cls(w0, lr=lr, beta=beta, sparse_counter=sc))
    for i in range(W.STEPS):
        for k, ref in enumerate(refs):
            if k == 0:
                idx = single[f"{case}/grad/{i}/0/indices"]
                vals = single[f"{case}/grad/{i}/0/values"]
                assert idx.size == W.BATCH * W.SEQ  # one row per token: duplicates
                if isinstance(ref, LazySparseExpectigradNumpy):
                    ref.step(idx, vals)
                else:
                    g = np.zeros_like(ref.x)
                    np.add.at(g, idx, vals)
                    ref.step(g)
            else:
                ref.step(single[f"{case}/grad/{i}/{k}"])
    for k, ref in enumerate(refs):
        np.testing.assert_allclose(single[f"{case}/{k}"], ref.x, rtol=1e-10, atol=1e-13,
                                   err_msg=f"{case} weight {k}")
        # The state's rows: those the configuration keeps, and no others.
        kept = {"sum": ref.s}
        if sc:
            kept["count"] = ref.n
        if beta > 0:
            kept["momentum"] = ref.m
        assert sorted(n for n in ("sum", "count", "momentum")
                      if f"{case}/{n}/{k}" in single) == sorted(kept)
        for name, want in kept.items():
            np.testing.assert_allclose(single[f"{case}/{name}/{k}"], want, rtol=1e-10,
                                       atol=1e-13, err_msg=f"{case} {name} {k}")
    # Rows of the table no token uses never change (lazy or exact: their
    # momentum is 0).
    np.testing.assert_array_equal(single[f"{case}/0"][W.USED:], init[0][W.USED:])


def test_lazy_and_exact_runs_differ(runs):
    """The lazy case really skips rows: its table differs from the exact one
    on rows that were used and then skipped."""
    pss, _ = runs["pss"]
    diff = np.abs(pss["lazy/0"] - pss["exact/0"])[: W.USED]
    assert diff.max() > 1e-4
