"""The six installed console commands work from any directory."""

import os
import subprocess
import sys

import pytest

# command -> flags its --help must show
COMMANDS = {
    "expectigrad-demo": ("--epochs", "--lr"),
    "expectigrad-reddi": ("--quick", "--beta2", "--stoch-runs"),
    "expectigrad-train-image": ("--task", "--replot"),
    "expectigrad-momentum-study": ("--betas", "--variants"),
    "expectigrad-translate": ("--problem", "--optimizer"),
    "expectigrad-benchmark": ("--quick", "--from-json"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_console_script_help(command, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), command)
    assert os.path.exists(exe), f"{command} is not installed next to {sys.executable}"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)  # the install alone, not a source tree on the path
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"usage: {command} ")
    for flag in COMMANDS[command]:
        assert flag in out.stdout, (command, flag)
    assert os.listdir(tmp_path) == []  # --help writes nothing


def test_console_script_exit_status(tmp_path):
    """A command whose main() returns its results (a dict) still exits with
    status 0, and a bad argument gives argparse's 2."""
    pytest.importorskip("matplotlib")
    exe = os.path.join(os.path.dirname(sys.executable), "expectigrad-reddi")
    assert os.path.exists(exe), f"expectigrad-reddi is not installed next to {sys.executable}"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)
    bad = subprocess.run([exe, "--optimizers", "adamw"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "unknown optimizer" in bad.stderr
    ok = subprocess.run([exe, "--steps", "20", "--record-every", "10", "--stoch-runs", "1",
                         "--optimizers", "expectigrad,adam", "--no-jit", "--out-dir", "out"],
                        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "out")) == ["reddi.png", "summary.json", "trajectories.csv"]
