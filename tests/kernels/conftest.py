"""Fixtures of the kernel tests: the pybind11 harnesses, built once per
session with ``python -m tools.build_harness`` (as a subprocess with
TensorFlow and Keras made unimportable, so the build is checked to need
neither) into ``tests/.harness_build/`` (git-ignored). An up-to-date build
from an earlier run is reused; EXPECTIGRAD_HARNESS_DIR overrides the place.
"""

import json
import sys

import pytest
from kernel_helpers import BUILD_DIR, ROOT, load_extension, run_tool


@pytest.fixture(scope="session")
def harness_build():
    """(build dir, build info) of the harnesses (CUDA when nvcc is here)."""
    proc = run_tool("tools.build_harness", "--out", BUILD_DIR, "--cuda", "auto", "-q")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return BUILD_DIR, json.loads(proc.stdout)


@pytest.fixture(scope="session")
def harness(harness_build):
    """The CPU harness module (apply_cpu)."""
    return load_extension(harness_build[1]["cpu"])


@pytest.fixture(scope="session")
def emulated(harness_build):
    """The CUDA kernel's source compiled as C++ (csrc/cuda/emulation)."""
    info = harness_build[1]
    if info["emulated"] is None:
        pytest.skip(f"_harness_emulated not built: {info['emulated_reason']}")
    return load_extension(info["emulated"])


@pytest.fixture
def tools_pkg(monkeypatch):
    """The repository's tools/ package, importable in-process (it is run from
    the repository root and not installed)."""
    monkeypatch.syspath_prepend(ROOT)
    import tools.build_harness  # noqa: F401
    import tools.gpu_check.checks  # noqa: F401

    return sys.modules["tools"]
