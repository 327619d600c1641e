"""The package as a user has it: installed from its wheel (tools/run.sh and
CI build the wheel and install it; ``.ci/extra_envs.sh`` installs from source
into a Python 3.12 environment with the oldest TensorFlow of the range).

* the installed distribution ships the op libraries, their build info and the
  C++/CUDA sources, and requires the TensorFlow minor version it was built for;
* after a (simulated) TensorFlow upgrade the optimizer warns once, naming
  ``python -m expectigrad_tf.build``, and that command restores the fused path
  from the installed files alone (a copy of the installed package, so the
  environment itself is not modified).

In a source checkout used in place (``pip install -e .``) there is no
installed copy to test, and these tests say so.
"""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

import expectigrad_tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG = os.path.dirname(os.path.abspath(expectigrad_tf.__file__))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")

pytestmark = pytest.mark.skipif(
    os.path.realpath(PKG) == os.path.realpath(os.path.join(ROOT, "expectigrad_tf")),
    reason="expectigrad_tf is imported from the source tree (editable install); "
           "tools/run.sh and CI install the wheel")


def _tf_version():
    import tensorflow as tf

    return tf.__version__


def test_distribution_ships_the_op_and_its_sources():
    dist = importlib.metadata.distribution("expectigrad-tf")
    files = {str(f) for f in dist.files}
    for name in ("expectigrad_tf/_expectigrad_ops.so", "expectigrad_tf/_build_info.json",
                 "expectigrad_tf/build.py", "expectigrad_tf/csrc/expectigrad_update.h",
                 "expectigrad_tf/csrc/tf/ops/expectigrad_ops.cc",
                 "expectigrad_tf/csrc/tf/kernels/expectigrad_op_cpu.cc",
                 "expectigrad_tf/csrc/cuda/expectigrad_kernel.cu"):
        assert name in files, f"{name} is not in the installed distribution"
    with open(os.path.join(PKG, "_build_info.json")) as f:
        info = json.load(f)
    assert info["tensorflow_version"] == _tf_version()
    # Requires-Dist: the TensorFlow minor version the op was built for.
    major, minor = (int(x) for x in _tf_version().split(".")[:2])
    reqs = [r for r in dist.requires or [] if re.match(r"tensorflow\b", r)]
    assert reqs, dist.requires
    spec = reqs[0].replace(" ", "")
    assert f">={major}.{minor}" in spec and f"<{major}.{minor + 1}" in spec, reqs
    assert expectigrad_tf.fused_status()["available"], expectigrad_tf.fused_status()


STEP = textwrap.dedent("""
    import json, warnings
    import numpy as np
    import tensorflow as tf
    import keras
    import expectigrad_tf
    from expectigrad_tf.reference import ExpectigradNumpy

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x0 = np.arange(6, dtype=np.float32) - 2.0
        var = keras.Variable(x0)
        opt = expectigrad_tf.Expectigrad(learning_rate=2.0 ** -7)
        ref = ExpectigradNumpy(x0, lr=2.0 ** -7, dtype=np.float32)
        for step in range(3):  # three steps, each traced anew
            g = np.sin(x0 * (step + 1)).astype(np.float32)
            tf.function(lambda grad: opt.apply([grad], [var]))(tf.constant(g))
            ref.step(g)
    np.testing.assert_allclose(var.numpy(), ref.x, rtol=1e-6)
    fallback = [str(w.message) for w in caught
                if "fused op is unavailable" in str(w.message)]
    print("RESULT " + json.dumps({
        "module": expectigrad_tf.__file__,
        "status": {k: v for k, v in expectigrad_tf.fused_status().items()
                   if k in ("available", "reason")},
        "paths": sorted({p for p, _ in opt.dispatch_report().values()}),
        "fallback_warnings": fallback,
    }))
""")


def _run(args, site, cwd):
    env = dict(ENV, PYTHONPATH=str(site))
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def _step(site, cwd):
    proc = _run([sys.executable, "-c", STEP], site, cwd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_stale_op_warns_once_and_rebuild_from_installed_files_restores_it(tmp_path):
    site = tmp_path / "site"
    copy = site / "expectigrad_tf"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    info_path = copy / "_build_info.json"
    info = json.loads(info_path.read_text())
    info["tensorflow_version"] = "2.0.0"  # as if TensorFlow had been upgraded since
    info_path.write_text(json.dumps(info))
    neutral = tmp_path / "elsewhere"
    neutral.mkdir()

    before = _step(site, neutral)
    assert before["module"].startswith(str(copy)), before["module"]
    assert not before["status"]["available"]
    assert "built for TensorFlow 2.0.0" in before["status"]["reason"]
    assert before["paths"] == ["composite"]
    assert len(before["fallback_warnings"]) == 1, before["fallback_warnings"]
    assert "python -m expectigrad_tf.build" in before["fallback_warnings"][0]

    check = _run([sys.executable, "-m", "expectigrad_tf.build", "--check"], site, neutral)
    assert check.returncode == 1 and "2.0.0" in check.stdout, check.stdout + check.stderr

    # The rebuild uses only the installed copy: its sources (expectigrad_tf/csrc),
    # its build description, the installed TensorFlow. CPU kernels only, for time.
    build = _run([sys.executable, "-m", "expectigrad_tf.build", "--cuda", "0", "-q"],
                 site, neutral)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-4000:]
    assert json.loads((copy / "_build_info.json").read_text())["tensorflow_version"] == \
        _tf_version()

    check = _run([sys.executable, "-m", "expectigrad_tf.build", "--check"], site, neutral)
    assert check.returncode == 0, check.stdout + check.stderr

    after = _step(site, neutral)
    assert after["status"]["available"], after["status"]
    assert after["paths"] == ["fused"]
    assert after["fallback_warnings"] == []
