"""The load-time check that the NVIDIA driver supports the CUDA version the
GPU library was built with (its CUDA runtime is linked statically): the
decision as a pure function, and the version parsing."""

import pytest

from expectigrad_tf import _ops


@pytest.mark.parametrize("built,driver,ok", [
    ((13, 0), 13000, True),
    ((13, 0), 13020, True),
    ((12, 8), 12040, True),    # minor version compatibility within CUDA 12
    ((12, 4), 13000, True),    # a newer driver runs older CUDA
    ((13, 0), 12040, False),   # CUDA 13 needs driver >= 580
    ((12, 0), 11080, False),
    (None, 12040, True),       # unknown build version: only the driver's presence
])
def test_cuda_driver_reason_decision(built, driver, ok):
    reason = _ops.cuda_driver_reason(built, driver)
    assert (reason is None) == ok, reason


def test_cuda_driver_reason_says_what_to_do():
    reason = _ops.cuda_driver_reason((13, 0), 12040)
    assert "built with CUDA 13.0" in reason and ">= 580" in reason
    assert "driver supports CUDA 12.4" in reason
    assert "CUDA 12 nvcc" in reason and "EXPECTIGRAD_NVCC=" in reason


def test_no_driver_means_no_gpu():
    reason = _ops.cuda_driver_reason((13, 0), None)
    assert "no NVIDIA driver" in reason and "CPU kernels are used" in reason


@pytest.mark.parametrize("text,want", [
    ("13.0", (13, 0)),
    ("12.4", (12, 4)),
    ("Build cuda_13.0.r13.0/compiler.36424714_0", (13, 0)),
    ("Cuda compilation tools, release 12.6, V12.6.77", (12, 6)),
    (None, None),
    ("", None),
])
def test_parse_cuda_version(text, want):
    assert _ops._parse_cuda_version(text) == want


def test_built_cuda_version_from_build_info():
    assert _ops._built_cuda_version({"cuda_version": "13.0"}) == (13, 0)
    # Older build info: only the nvcc banner.
    assert _ops._built_cuda_version({"nvcc": "Build cuda_12.8.r12.8/compiler.1"}) == (12, 8)
    assert _ops._built_cuda_version({}) is None


def test_driver_version_probe_does_not_raise():
    v = _ops._driver_cuda_version()
    assert v is None or v >= 1000
