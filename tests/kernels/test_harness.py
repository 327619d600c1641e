"""The pybind11 harnesses (no TensorFlow): the CPU host loop against the NumPy
reference, tools/build_harness.py, the CUDA module's argument checking and
its behaviour without a GPU, and tools/gpu_check without a GPU. The harnesses
are built once per session (conftest.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from kernel_helpers import ROOT, load_extension, run_tool

from expectigrad_tf import build_config
from expectigrad_tf.reference import ExpectigradNumpy

VARIANTS = [(beta, sc) for beta in (0.0, 0.9) for sc in (True, False)]
SIZES = [0, 1, 7, 4097]
LR, EPS = 0.05, 1e-8


def _gradient(rng, size, t):
    g = rng.standard_normal(size)
    if size:
        g[(np.arange(size) + t) % 3 == 0] = 0.0  # zero on some steps
        if size >= 7:
            g[0] = 0.0  # never non-zero: count 0, 0/0 := 0
    return g


def _slots(x0, dtype, beta, sparse):
    # sum, count and momentum in the state dtype: for float32/float64
    # variables, the variable's own.
    x = np.array(x0, dtype=dtype)
    s = np.zeros_like(x)
    n = np.zeros_like(x) if sparse else None
    m = np.zeros_like(x) if beta > 0 else None
    return x, s, n, m


def _tol(dtype):
    # float32 against a float32 reference: the same operations, rounded alike.
    return dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=1e-6, atol=1e-7)


def _assert_matches(slots, ref, dtype, beta, sparse):
    x, s, n, m = slots
    np.testing.assert_allclose(x, ref.x, **_tol(dtype))
    np.testing.assert_allclose(s, ref.s, **_tol(dtype))
    if sparse:
        np.testing.assert_array_equal(n, ref.n)
    if beta > 0:
        np.testing.assert_allclose(m, ref.m, **_tol(dtype))


# ------------------------------------------------------------ CPU apply_cpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("beta,sparse", VARIANTS)
@pytest.mark.parametrize("size", SIZES)
def test_apply_cpu_matches_reference(harness, dtype, beta, sparse, size):
    rng = np.random.default_rng(size * 10 + int(beta * 10) + sparse)
    x0 = rng.standard_normal(size).astype(dtype)
    ref = ExpectigradNumpy(x0, lr=LR, beta=beta, eps=EPS, sparse_counter=sparse, dtype=dtype)
    slots = _slots(x0, dtype, beta, sparse)
    x, s, n, m = slots
    for t in range(1, 8):
        g = _gradient(rng, size, t).astype(dtype)
        harness.apply_cpu([x], [s], None if n is None else [n], None if m is None else [m],
                           [g], LR, beta, EPS, t)
        ref.step(g)
    _assert_matches(slots, ref, dtype, beta, sparse)
    if size >= 7:
        # A component whose gradient was always zero: never counted, never moved.
        assert s[0] == 0 and x[0] == x0[0]
        if sparse:
            assert n[0] == 0
    if sparse and size >= 7:
        assert (n[1:] < 7).any(), "zero gradients must not be counted"


def test_apply_cpu_float64_matches_independent_reference_closely(harness):
    # float32 above is checked against a float32 reference; here float64 over
    # many steps against the float64 reference, as the paper's algorithm.
    rng = np.random.default_rng(7)
    x0 = rng.standard_normal(257)
    ref = ExpectigradNumpy(x0, lr=LR, beta=0.9, eps=EPS, sparse_counter=True)
    slots = _slots(x0, np.float64, 0.9, True)
    for t in range(1, 101):
        g = _gradient(rng, 257, t)
        harness.apply_cpu([slots[0]], [slots[1]], [slots[2]], [slots[3]], [g], LR, 0.9, EPS, t)
        ref.step(g)
    _assert_matches(slots, ref, np.float64, 0.9, True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("beta,sparse", VARIANTS)
def test_apply_cpu_multi_tensor_list(harness, dtype, beta, sparse):
    rng = np.random.default_rng(3)
    shapes = [(0,), (1,), (7,), (4097,), (3, 5), (64, 2), (0, 4), (2, 3, 4)] * 6  # 48 tensors
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = np.cumsum([0] + sizes)
    x0 = rng.standard_normal(offsets[-1]).astype(dtype)
    ref = ExpectigradNumpy(x0, lr=LR, beta=beta, eps=EPS, sparse_counter=sparse, dtype=dtype)
    tensors = [_slots(x0[offsets[i]:offsets[i + 1]].reshape(shapes[i]), dtype, beta, sparse)
               for i in range(len(shapes))]
    for t in range(1, 6):
        g = _gradient(rng, offsets[-1], t).astype(dtype)
        grads = [g[offsets[i]:offsets[i + 1]].reshape(shapes[i]).copy()
                 for i in range(len(shapes))]
        harness.apply_cpu([x for x, _, _, _ in tensors], [s for _, s, _, _ in tensors],
                           [n for _, _, n, _ in tensors] if sparse else None,
                           [m for _, _, _, m in tensors] if beta > 0 else None,
                           grads, LR, beta, EPS, t)
        ref.step(g)
    for name, got, want in (("x", 0, ref.x), ("s", 1, ref.s), ("n", 2, ref.n), ("m", 3, ref.m)):
        if (name == "n" and not sparse) or (name == "m" and beta == 0):
            continue
        flat = np.concatenate([tt[got].ravel() for tt in tensors])
        np.testing.assert_allclose(flat, want, **_tol(dtype), err_msg=name)


def test_apply_cpu_empty_list_is_a_no_op(harness):
    harness.apply_cpu([], [], None, None, [], LR, 0.9, EPS, 1)


def _ok_args(n=4, dtype=np.float32):
    a = lambda: np.zeros(n, dtype)  # noqa: E731
    return dict(var=[a()], sum=[a()], count=[a()], momentum=[a()], grad=[a()],
                lr=LR, beta=0.9, epsilon=EPS, step=1)


@pytest.mark.parametrize("change,error,match", [
    (dict(sum=[]), ValueError, "equal length"),
    (dict(grad=[np.zeros(4, np.float32)] * 2), ValueError, "equal length"),
    (dict(count=[]), ValueError, "count and momentum"),
    (dict(momentum=[np.zeros(4, np.float32)] * 3), ValueError, "count and momentum"),
    (dict(sum=[np.zeros(5, np.float32)]), ValueError, r"sum\[0\] has 5 elements"),
    (dict(grad=[np.zeros(3, np.float32)]), ValueError, r"grad\[0\] has 3 elements"),
    (dict(sum=[np.zeros(4, np.float64)]), ValueError, r"sum\[0\] is float64 but var\[0\] is float32"),
    (dict(momentum=[np.zeros(4, np.float16)]), ValueError,
     r"momentum\[0\] is float16 but var\[0\] is float32: expected float32 \(the state dtype"),
    # Momentum is state: float64 for float64 variables, never another dtype.
    (dict(var=[np.zeros(4)], sum=[np.zeros(4)], count=[np.zeros(4)], grad=[np.zeros(4)],
          momentum=[np.zeros(4, np.float32)]), ValueError,
     r"momentum\[0\] is float32 but var\[0\] is float64: expected float64"),
    (dict(var=[np.zeros(4, np.int32)]), TypeError, "float32 or float64"),
    (dict(var=[np.zeros(4, np.float16)]), TypeError, "float32 or float64"),
    (dict(grad=[np.zeros(8, np.float32)[::2]]), ValueError, r"grad\[0\].*contiguous"),
    (dict(lr=-1.0), ValueError, "lr >= 0"),
    (dict(beta=1.0), ValueError, "beta"),
    (dict(epsilon=0.0), ValueError, "epsilon"),
    (dict(step=0), ValueError, "step"),
    # Types are checked before anything is read from an object.
    (dict(var=["x"]), TypeError, r"var\[0\] must be a NumPy array, got str"),
    (dict(var=[[0.0] * 4]), TypeError, r"var\[0\] must be a NumPy array, got list"),
    (dict(sum=[[0.0] * 4]), TypeError, r"sum\[0\] must be a NumPy array, got list"),
    (dict(count=[None]), TypeError, r"count\[0\] must be a NumPy array, got NoneType"),
    (dict(momentum=[1.5]), TypeError, r"momentum\[0\] must be a NumPy array, got float"),
    (dict(grad=[object()]), TypeError, r"grad\[0\] must be a NumPy array, got object"),
    (dict(grad=np.zeros(4, np.float32)), TypeError, "grad must be a list of NumPy arrays, got ndarray"),
    (dict(var=7), TypeError, "var must be a list of NumPy arrays, got int"),
    (dict(count="abc"), TypeError, "count must be a list of NumPy arrays, got str"),
], ids=lambda v: str(v)[:40])
def test_apply_cpu_rejects_bad_input(harness, change, error, match):
    args = _ok_args()
    args.update(change)
    with pytest.raises(error, match=match):
        harness.apply_cpu(**args)


def test_apply_cpu_non_array_in_a_later_position(harness):
    """A non-array after valid arrays: TypeError naming it; nothing updated."""
    args = _ok_args()
    for k in ("var", "sum", "count", "momentum", "grad"):
        args[k] = args[k] + [np.zeros(4, np.float32)]
    args["grad"][0][:] = 1.0
    args["momentum"][1] = {"not": "an array"}
    with pytest.raises(TypeError, match=r"momentum\[1\] must be a NumPy array, got dict"):
        harness.apply_cpu(**args)
    assert (args["var"][0] == 0).all() and (args["sum"][0] == 0).all()


def test_apply_cpu_rejects_read_only_var(harness):
    args = _ok_args()
    args["var"][0].setflags(write=False)
    with pytest.raises(ValueError, match=r"var\[0\]"):
        harness.apply_cpu(**args)


def test_apply_cpu_bad_input_leaves_arrays_untouched(harness):
    args = _ok_args()
    args["var"][0][:] = 1.0
    args["grad"][0][:] = 1.0
    args["sum"] = [np.zeros(4, np.float32), np.zeros(4, np.float32)]
    with pytest.raises(ValueError):
        harness.apply_cpu(**args)
    assert (args["var"][0] == 1.0).all()


# ------------------------------------------------------ tools/build_harness
HAVE_NVCC = build_config.find_nvcc() is not None


@pytest.fixture(scope="module")
def built(harness_build):
    """(dir, info) of the session's harness build (conftest.py)."""
    return harness_build


def test_build_harness_builds_modules_without_tensorflow(built, tmp_path):
    out, info = built
    assert os.path.dirname(info["cpu"]) == str(out) and os.path.exists(info["cpu"])
    if build_config.cuda_include_dir(build_config.find_nvcc()) is not None:
        assert info["emulated"] and os.path.exists(info["emulated"]), info
    code = (
        "import sys, numpy as np; sys.modules['tensorflow'] = None; "
        f"sys.path.insert(0, {str(out)!r}); import _harness; "
        "x = np.ones(3, np.float32); s = np.zeros(3, np.float32); "
        "_harness.apply_cpu([x], [s], None, None, [np.full(3, 2, np.float32)], 0.5, 0.0, 1e-8, 1); "
        "print(x.tolist())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    # g = 2, s = 4, n = 1: x = 1 - 0.5 * 2 / (1e-8 + 2) ~= 0.5
    np.testing.assert_allclose(json.loads(proc.stdout), [0.5] * 3, rtol=1e-6)


def test_build_harness_reuses_up_to_date_outputs(built):
    out, info = built
    before = {k: os.path.getmtime(info[k]) for k in ("cpu", "emulated", "cuda") if info[k]}
    proc = run_tool("tools.build_harness", "--out", out, "--cuda", "auto", "-q")
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert {k: os.path.getmtime(again[k]) for k in before} == before


def test_build_harness_help_without_tensorflow():
    proc = run_tool("tools.build_harness", "--help", timeout=120)
    assert proc.returncode == 0 and "--cuda" in proc.stdout, proc.stderr


def test_build_config_archs(monkeypatch):
    monkeypatch.setenv("EXPECTIGRAD_CUDA_ARCHS", "sm_90")
    with pytest.raises(build_config.BuildError, match="bad arch"):
        build_config.cuda_archs()
    monkeypatch.setenv("EXPECTIGRAD_CUDA_ARCHS", "80;90a")
    flags, archs = build_config.cuda_archs()
    assert archs == ["80", "90a"] and "arch=compute_90a,code=compute_90a" in flags
    monkeypatch.delenv("EXPECTIGRAD_CUDA_ARCHS")
    # One default for every build (TF op libraries and harnesses).
    assert build_config.cuda_archs()[1] == ["80", "90"]


def test_build_config_cuda_mode(monkeypatch):
    monkeypatch.delenv("EXPECTIGRAD_CUDA", raising=False)
    assert build_config.cuda_mode() == "auto"
    for raw, want in (("on", "1"), ("1", "1"), ("off", "0"), ("FALSE", "0"), ("auto", "auto")):
        assert build_config.cuda_mode(raw) == want
    monkeypatch.setenv("EXPECTIGRAD_CUDA", "maybe")
    with pytest.raises(build_config.BuildError, match="auto, 1 or 0"):
        build_config.cuda_mode()


def test_build_config_is_the_only_flag_source():
    """The floating-point flags are written once, in build_config, and every
    artefact's compile command carries them."""
    for flag in ("-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-O3"):
        assert flag in build_config.CXX_FLAGS
    assert "--fmad=false" in build_config.NVCC_FLAGS
    for path in ("expectigrad_tf/build.py", "tools/build_harness.py", "setup.py"):
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
        for flag in ("-ffp-contract", "--fmad", "-lcudart_static", "arch=compute_"):
            assert flag not in text, f"{path} repeats {flag}"
    for name, art in build_config.ARTEFACTS.items():
        for src in art["sources"]:
            cmd = build_config.object_command(
                name, src, "x.o", cxx="g++", nvcc="nvcc", archs=["90"],
                paths={"cuda_include": "/cuda/include", "tf_include": "/tf/include",
                       "tf_lib": "/tf/lib", "ffi_include": "/jaxlib/include"})
            assert os.path.exists(os.path.join(build_config.CSRC, src)), src
            if cmd[0] == "nvcc":
                assert "--fmad=false" in cmd and "arch=compute_90,code=sm_90" in cmd
            else:
                assert "-ffp-contract=off" in cmd, (name, src)


def test_build_harness_requires_nvcc_when_asked(monkeypatch, tmp_path, tools_pkg):
    monkeypatch.setenv("EXPECTIGRAD_NVCC", str(tmp_path / "no-such-nvcc"))
    with pytest.raises(build_config.BuildError, match="nvcc was not found"):
        tools_pkg.build_harness.build(str(tmp_path), cuda="1", verbose=False)


# ------------------------------------------------------------ _harness_cuda
@pytest.fixture(scope="module")
def hcuda(built):
    out, info = built
    if not HAVE_NVCC:
        pytest.skip("nvcc not found: the CUDA harness is not built")
    assert info["cuda"] and os.path.exists(info["cuda"]), info
    # cudart is linked statically: importing works without a GPU or driver.
    return load_extension(info["cuda"])


class FakeDeviceArray:
    """Only an interface: the harness validates it; nothing may dereference it."""

    def __init__(self, shape, typestr="<f4", ptr=0x10000, strides=None, readonly=False,
                 **extra):
        self.__cuda_array_interface__ = dict(shape=tuple(shape), typestr=typestr,
                                             data=(ptr, readonly), strides=strides,
                                             version=3, **extra)


def F(*shape, **kw):
    return FakeDeviceArray(shape, **kw)


def _cuda_args(**change):
    args = dict(var=[F(4), F(2, 3)], sum=[F(4), F(2, 3)], count=[F(4), F(2, 3)],
                momentum=[F(4), F(2, 3)], grad=[F(4), F(2, 3)],
                lr=LR, beta=0.9, epsilon=EPS, step=1)
    args.update(change)
    return args


def test_harness_cuda_module_loads_without_gpu(hcuda):
    assert hcuda.runtime_version() >= 11000
    assert hcuda.CUDA_RUNTIME_VERSION == hcuda.runtime_version()
    assert hcuda.device_count() >= 0
    for name in ("apply_cuda", "prepare_cuda", "copy", "synchronize", "device_info",
                 "set_max_blocks"):
        assert callable(getattr(hcuda, name))


@pytest.mark.parametrize("change,error,match", [
    (dict(sum=[F(4)]), ValueError, "equal length"),
    (dict(count=[F(4)]), ValueError, "count must be None or a list"),
    (dict(momentum=[F(4)] * 3), ValueError, "momentum must be None or a list"),
    (dict(var=F(4)), TypeError, "var must be a list"),
    (dict(grad=[F(4), np.zeros((2, 3), np.float32)]), ValueError,
     r"grad\[1\] must be a device array exposing __cuda_array_interface__"),
    (dict(sum=[F(4), F(3, 2)]), ValueError, r"sum\[1\] has shape \(3, 2\) but var\[1\] has shape \(2, 3\)"),
    (dict(grad=[F(5), F(2, 3)]), ValueError, r"grad\[0\] has shape \(5,\)"),
    (dict(momentum=[F(4), F(2, 3, typestr="<f2")]), ValueError,
     r"momentum\[1\] has typestr '<f2' but momentum must be float32 for float32 variables"),
    (dict(momentum=[F(4), F(2, 3, typestr="<f8")]), ValueError,
     r"momentum\[1\] has typestr '<f8' but momentum must be float32"),
    (dict(momentum=[F(4), F(3, 2)]), ValueError, r"momentum\[1\] has shape \(3, 2\) but var\[1\]"),
    (dict(var=[F(4), F(2, 3, typestr="<f8")]), ValueError, r"var\[1\] is float64 but var\[0\] is float32"),
    (dict(count=[F(4), F(2, 3, typestr="<f8")]), ValueError, r"count\[1\] has typestr '<f8' but count must be float32"),
    (dict(var=[F(4, typestr="<i4"), F(2, 3)]), ValueError, r"var\[0\] has typestr '<i4'"),
    (dict(var=[F(4, typestr=">f4"), F(2, 3)]), ValueError, r"var\[0\] has typestr '>f4'"),
    (dict(grad=[F(4), F(2, 3, strides=(4, 8))]), ValueError, r"grad\[1\] must be C-contiguous"),
    (dict(var=[F(4, readonly=True), F(2, 3)]), ValueError, r"var\[0\] is read-only"),
    (dict(sum=[F(4), F(2, 3, ptr=0)]), ValueError, r"sum\[1\] has a null data pointer"),
    (dict(momentum=[F(4), F(2, 3, mask=object())]), ValueError, r"momentum\[1\]: masked"),
    (dict(lr=float("inf")), ValueError, "lr >= 0"),
    (dict(lr=float("nan")), ValueError, "lr >= 0"),
    (dict(lr_dtype="float16"), ValueError, "lr_dtype must be"),
    (dict(lr=-1.0), ValueError, "lr >= 0"),
    (dict(beta=1.0), ValueError, "beta"),
    (dict(step=0), ValueError, "step"),
], ids=lambda v: str(v)[:40])
def test_apply_cuda_validates_before_touching_the_device(hcuda, change, error, match):
    with pytest.raises(error, match=match):
        hcuda.apply_cuda(**_cuda_args(**change))


def test_apply_cuda_dtype_rules(hcuda):
    p = hcuda.prepare_cuda  # validation only: prepare never launches
    # float16, and bfloat16 by typestr '<V2' (PyTorch, ml_dtypes); the state
    # (sum, count, momentum) float32.
    for ts, name in (("<f2", "float16"), ("<V2", "bfloat16"), ("<f4", "float32")):
        plan = p([F(4, typestr=ts)], [F(4)], None, [F(4)], [F(4, typestr=ts)])
        assert (plan.dtype, plan.num_tensors, plan.num_elements) == (name, 1, 4)
        assert not plan.has_count and plan.has_momentum
        if ts != "<f4":  # momentum in the variable's 16-bit dtype: rejected
            with pytest.raises(ValueError, match=rf"momentum\[0\] has typestr '{ts}' but "
                                                 rf"momentum must be float32 for {name} variables"):
                p([F(4, typestr=ts)], [F(4)], None, [F(4, typestr=ts)], [F(4, typestr=ts)])
    f8 = dict(typestr="<f8")
    plan = p([F(4, **f8)], [F(4, **f8)], [F(4, **f8)], [F(4, **f8)], [F(4, **f8)])
    assert plan.dtype == "float64" and plan.has_count and plan.has_momentum
    with pytest.raises(ValueError, match=r"momentum\[0\] has typestr '<f4' but momentum must "
                                         r"be float64 for float64 variables"):
        p([F(4, **f8)], [F(4, **f8)], None, [F(4)], [F(4, **f8)])
    # bfloat16 held in a 2-byte integer array (CuPy) with dtype= (which names
    # the var/grad dtype only: momentum stays float32) ...
    u2 = dict(typestr="<u2")
    assert p([F(4, **u2)], [F(4)], None, None, [F(4, **u2)], dtype="bfloat16").dtype == "bfloat16"
    assert p([F(4, **u2)], [F(4)], [F(4)], [F(4)], [F(4, **u2)],
             dtype="bfloat16").has_momentum
    with pytest.raises(ValueError, match=r"momentum\[0\] has typestr '<u2' but momentum must "
                                         r"be float32 for bfloat16 variables"):
        p([F(4, **u2)], [F(4)], None, [F(4, **u2)], [F(4, **u2)], dtype="bfloat16")
    # ... or an object whose dtype says bfloat16 (older PyTorch exports '<f2').
    old_torch = F(4, typestr="<f2")
    old_torch.dtype = "torch.bfloat16"
    assert p([old_torch], [F(4)], None, None, [old_torch]).dtype == "bfloat16"
    with pytest.raises(ValueError, match=r"var\[0\] has typestr '<f4' \(4-byte items\) but dtype=bfloat16"):
        p([F(4)], [F(4)], None, None, [F(4)], dtype="bfloat16")
    with pytest.raises(ValueError, match="dtype must be"):
        p([F(4)], [F(4)], None, None, [F(4)], dtype="int8")
    # Empty and zero-size tensors are fine; strides are irrelevant for size 0 or 1.
    assert p([], [], None, None, []).num_tensors == 0
    z = dict(ptr=0, strides=(12, 4))
    assert p([F(0, 3, **z)], [F(0, 3, **z)], None, None, [F(0, 3, **z)]).num_elements == 0
    one = dict(strides=(100,))
    assert p([F(1, **one)], [F(1, **one)], None, None, [F(1, **one)]).num_elements == 1
    # A read-only gradient is fine: only var/sum/count/momentum are written.
    assert p([F(4)], [F(4)], None, None, [F(4, readonly=True)]).num_elements == 4


def test_apply_cuda_many_tensors_validate(hcuda):
    shapes = [(i % 5, 3) for i in range(97)]
    arrs = lambda: [F(*s, ptr=0x10000 + 4096 * i) for i, s in enumerate(shapes)]  # noqa: E731
    plan = hcuda.prepare_cuda(arrs(), arrs(), arrs(), arrs(), arrs())
    assert plan.num_tensors == 97 and plan.num_elements == sum(a * b for a, b in shapes)


def test_apply_cuda_without_gpu_raises_runtime_error(hcuda):
    if hcuda.device_count() > 0:
        pytest.skip("a GPU is present: the fake pointers must not be launched on")
    with pytest.raises(RuntimeError, match="no usable CUDA device|no CUDA device"):
        hcuda.apply_cuda(**_cuda_args())
    plan = hcuda.prepare_cuda([F(4)], [F(4)], None, None, [F(4)])
    with pytest.raises(RuntimeError, match="CUDA"):
        plan.apply(LR, 0.0, EPS, 1)
    with pytest.raises(RuntimeError, match="CUDA"):
        hcuda.synchronize()
    with pytest.raises(RuntimeError, match="CUDA"):
        hcuda.copy(F(4), F(4))
    with pytest.raises(RuntimeError, match="CUDA"):
        hcuda.device_info()
    # Still usable afterwards (no crash, no sticky state): the same error again.
    with pytest.raises(RuntimeError):
        hcuda.apply_cuda(**_cuda_args())
    hcuda.apply_cuda([], [], None, None, [], LR, 0.9, EPS, 1)  # nothing to launch


def test_copy_validates(hcuda):
    with pytest.raises(ValueError, match="dst has 16 bytes, src has 20"):
        hcuda.copy(F(4), F(5))
    with pytest.raises(ValueError, match="dst is read-only"):
        hcuda.copy(F(4, readonly=True), F(4))
    with pytest.raises(ValueError, match="src must be C-contiguous"):
        hcuda.copy(F(4), F(2, 2, strides=(4, 8)))
    with pytest.raises(TypeError, match="stream must be"):
        hcuda.copy(F(4), F(4), stream="default")


# ------------------------------------------------------------- tools/gpu_check
def _looks_like_gpu_machine():
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def test_gpu_check_help_without_gpu_or_tensorflow():
    proc = run_tool("tools.gpu_check", "--help", timeout=120)
    assert proc.returncode == 0 and "--backend" in proc.stdout, proc.stderr


def test_gpu_check_without_gpu_exits_2():
    if _looks_like_gpu_machine():
        pytest.skip("this machine has a GPU: see tests/op/test_gpu.py")
    proc = run_tool("tools.gpu_check", "--quick", timeout=300)
    if proc.returncode == 0 and "Correctness: PASS" in proc.stdout:
        pytest.skip("a library here sees a GPU")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no GPU found" in proc.stderr


def test_gpu_check_logic_on_cpu_simulation(built, tmp_path):
    """The tool's checks and report, with the CPU harness standing in for the
    GPU (--backend cpu-sim): tests the tool, not the CUDA kernel."""
    out, _ = built
    report = tmp_path / "report.json"
    proc = run_tool("tools.gpu_check", "--backend", "cpu-sim", "--quick", "-q",
                    "--build-dir", str(out), "--out", str(report), timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "SIMULATED" in proc.stdout and "Correctness: PASS" in proc.stdout
    data = json.loads(report.read_text())
    assert data["passed"] and data["simulated"]
    checks = data["checks"]
    kinds = {(c["check"], c["dtype"]) for c in checks}
    for dtype in ("float32", "float64", "float16", "bfloat16"):
        assert ("single", dtype) in kinds and ("multi-tensor", dtype) in kinds
        assert ("lr-float32", dtype) in kinds
    assert {c["size"] for c in checks if c["check"] == "single"} >= {0, 1, 7, 4097}
    assert any(c.get("misaligned") for c in checks)
    assert all(c["tensors"] > 40 for c in checks if c["check"] == "multi-tensor")
    assert data["bench"]["copy"]["gbps"] > 0 and data["bench"]["multi_tensor"]["ratio"] > 0
    assert len(data["bench"]["update"]) >= 16


def test_gpu_check_detects_a_wrong_kernel(harness, tools_pkg):
    """The comparison is sharp enough: a kernel with lr off by 1 % fails."""
    from tools.gpu_check.backends import CpuSimBackend
    from tools.gpu_check.checks import Results, check_multi, check_single

    be = CpuSimBackend(harness)
    good, bad = Results(), Results()
    check_single(be, good, "float32", 0.9, True, 4097, 4, True, 1)
    check_multi(be, good, "float16", 0.9, False, 45, 3, 2)
    check_single(be, good, "float64", 0.9, True, 4097, 4, True, 1, lr_dtype="float32")
    right = be.apply
    be.apply = lambda v, s, n, m, g, lr, *rest, **kw: right(v, s, n, m, g, lr * 1.01, *rest, **kw)
    check_single(be, bad, "float32", 0.9, True, 4097, 4, True, 1)
    check_multi(be, bad, "float16", 0.9, False, 45, 3, 2)
    assert [c["passed"] for c in good.checks] == [True, True, True]
    assert not bad.checks[0]["passed"] and bad.checks[0]["max_err_over_tol"] > 10


def test_gpu_check_bfloat16_rounding_matches_ml_dtypes(tools_pkg):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from tools.gpu_check.backends import from_storage, to_storage

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10000),
                        np.array([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 65504.0, 3e38], np.float32)])
    ours = to_storage(x, "bfloat16")
    theirs = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(from_storage(ours, "bfloat16"),
                                  theirs.view(ml_dtypes.bfloat16).astype(np.float64))
