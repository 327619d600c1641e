"""MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_distributed_worker.py")


def _free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE] + sys.path), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def test_multi_worker_mirrored_two_processes_equal_single_process(tmp_path):
    single = str(tmp_path / "single.npy")
    subprocess.run([sys.executable, WORKER, "single", single], env=_env(), check=True, timeout=300)
    ports = _free_ports(2)
    workers = [f"127.0.0.1:{p}" for p in ports]
    procs = []
    try:
        for i in range(2):
            cfg = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
            procs.append(subprocess.Popen(
                [sys.executable, WORKER, "mwms", str(tmp_path / f"w{i}.npy"), str(i)],
                env=_env(TF_CONFIG=json.dumps(cfg)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        outputs = []
        for p in procs:
            out, _ = p.communicate(timeout=300)
            outputs.append(out.decode(errors="replace")[-3000:])
        assert all(p.returncode == 0 for p in procs), outputs
    finally:
        for p in procs:  # always clean up, even on timeout or failure
            if p.poll() is None:
                p.kill()
                p.wait()
    w0, w1, ws = (np.load(tmp_path / "w0.npy"), np.load(tmp_path / "w1.npy"), np.load(single))
    np.testing.assert_array_equal(w0, w1)
    np.testing.assert_allclose(w0, ws, rtol=1e-5, atol=1e-6)
    info = json.load(open(tmp_path / "w0.npy.json"))
    assert info["paths"] == ["fused"], info
