"""The installed console commands work (from any directory)."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("command,expect", [("expectigrad-translate", "--problem"),
                                            ("expectigrad-demo", "--epochs")])
def test_console_script_help(command, expect, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), command)
    assert os.path.exists(exe), f"{command} is not installed next to {sys.executable}"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expect in out.stdout
