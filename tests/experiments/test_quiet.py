"""TensorFlow's log noise is quiet by default in the experiments' commands
(expectigrad_experiments.quiet, applied when the package is imported), and a
level the user set is left alone."""

import os
import re
import subprocess
import sys

from expectigrad_experiments import quiet

NOISE = re.compile(r"^[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+\s+\S+:\d+\] ", re.M)
BANNER = "All log messages before absl::InitializeLog() is called are written to STDERR"


def test_default_level_unless_the_user_set_one():
    env = {}
    assert quiet.quiet_tensorflow(env) is True
    assert env == {"TF_CPP_MIN_LOG_LEVEL": quiet.LOG_LEVEL_DEFAULT} == {"TF_CPP_MIN_LOG_LEVEL": "2"}
    for user in ("0", "1", "3", ""):
        env = {"TF_CPP_MIN_LOG_LEVEL": user}
        assert quiet.quiet_tensorflow(env) is False
        assert env == {"TF_CPP_MIN_LOG_LEVEL": user}


def test_filter_keeps_errors_and_drops_info_and_warnings():
    text = (
        f"WARNING: {BANNER}\n"
        "I0000 00:00:1795944132.909810   14162 cudart_stub.cc:31] Could not find cuda drivers "
        "on your machine, GPU will not be used.\n"
        "W1114 09:32:22.280168   13509 some_file.cc:448] a warning\n"
        "E0000 00:00:1795944281.248556   16212 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error\n"
        "E1114 09:32:22.280168   13509 kernel.cc:1] a real error\n"
        "Traceback (most recent call last):\n"
        "UserWarning: something Python said\n"
    )
    kept = quiet.filter_tensorflow_noise(text)
    assert kept == ("E1114 09:32:22.280168   13509 kernel.cc:1] a real error\n"
                    "Traceback (most recent call last):\n"
                    "UserWarning: something Python said\n")
    # Without the "no CUDA drivers" note, a cuInit failure is an error to show.
    alone = "E0000 00:00:1.5   1 cuda_platform.cc:52] failed call to cuInit: X\n"
    assert quiet.filter_tensorflow_noise(alone) == alone


def test_filtered_stderr_at_file_descriptor_level(capfd):
    with quiet._filtered_stderr():
        os.write(2, b"I0000 00:00:1.0   7 a.cc:1] info from C++\n")
        os.write(2, b"E0000 00:00:1.0   7 a.cc:2] error from C++\n")
        print("python stderr line", file=sys.stderr, flush=True)
    err = capfd.readouterr().err
    assert "info from C++" not in err
    assert "error from C++" in err and "python stderr line" in err


def _import_tensorflow(env):
    code = ("import os, expectigrad_experiments, tensorflow as tf; "
            "print(os.environ['TF_CPP_MIN_LOG_LEVEL']); print(float(tf.constant(1.0) + 1))")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)


def test_importing_the_package_quiets_tensorflow(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = _import_tensorflow(env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["2", "2.0"]
    assert BANNER not in proc.stderr, proc.stderr[-2000:]
    assert not NOISE.search(proc.stderr), proc.stderr[-2000:]


def test_a_level_the_user_set_is_respected():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="1")
    proc = _import_tensorflow(env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == "1"
