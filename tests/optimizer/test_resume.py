"""Exact resume in a fresh process: .keras, tf.train.Checkpoint, and
BackupAndRestore after SIGKILL. Bit-for-bit with deterministic ops."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_resume_worker.py")


def _run(*args, expect_kill=False):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE] + sys.path), TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run([sys.executable, WORKER, *map(str, args)], env=env, capture_output=True,
                       text=True, timeout=300)
    if expect_kill:
        assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-2000:])
    else:
        assert p.returncode == 0, p.stderr[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "w.npy"
    _run("full", out)
    return np.load(out)


@pytest.mark.parametrize("how", ["keras_resume", "ckpt_resume"])
def test_save_restore_in_fresh_process_is_bit_exact(tmp_path, uninterrupted, how):
    _run("part", tmp_path)
    _run(how, tmp_path, tmp_path / "w.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), uninterrupted)


def test_backup_and_restore_after_sigkill_mid_epoch(tmp_path, uninterrupted):
    # 6 batches per epoch: batch 15 is in the middle of epoch 3.
    _run("bnr", tmp_path, tmp_path / "w.npy", 15, expect_kill=True)
    assert not (tmp_path / "w.npy").exists()
    _run("bnr", tmp_path, tmp_path / "w.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), uninterrupted)
