#!/usr/bin/env python3
"""Checks the Expectigrad CUDA kernel against the NumPy reference, and
measures it, without TensorFlow.

    python scripts/gpu_check.py [--quick] [--out results.json]
                                [--build-dir DIR] [--backend auto|cupy|torch]

On a machine with an NVIDIA GPU, nvcc, pybind11, NumPy and CuPy or PyTorch
(used only to allocate device arrays and time with CUDA events), it:

1. builds the pybind11 harness with scripts/build_harness.py (into a
   temporary directory, or --build-dir, reused when up to date);
2. runs the kernel (``_harness_cuda.apply_cuda``) against tests/reference.py's
   ExpectigradNumpy in float64 for float32/float64/float16/bfloat16 variables,
   the four variants (beta 0/0.9 x sparse counter on/off), sizes 0, 1, 7,
   4097, 100003 and 1000003, aligned and misaligned (a view from element 1 of
   a buffer, guard elements checked untouched), several steps with zero
   gradient components (one never non-zero: 0/0 := 0); a multi-tensor call
   with 97 tensors (more than the kernel's 40 per launch, 1-D and 2-D, some
   empty, some misaligned); and one float32 tensor of 100,000,003 elements
   (checked chunk by chunk);
3. measures the update's effective bandwidth (bytes read + written per
   element, 36 B for float32 with both slots) against a device-to-device copy
   timed in the same run (target >= 80 % of copy), and one multi-tensor call
   over 1,000 tensors of 10K elements against one 10M tensor (target <= 1.5x).

References for 16-bit variables are computed in float64 with the variable
and momentum rounded to the storage dtype after each step (the kernel stores
them so), and compared within two units in the last place; float32 within
about 2e-6 relative, float64 within 1e-12.

Prints a Markdown report; ``--out`` writes JSON. ``--quick`` uses fewer
sizes, steps and iterations and a 16.7M-element "large" tensor (about a
minute with the build). ``--backend cpu-sim`` runs the same checks with the
CPU harness standing in for the GPU, to test this script without one: it
says nothing about the CUDA kernel.

Exit status: 0 every correctness check passed; 1 a correctness check failed;
2 no GPU found; 3 a GPU but neither CuPy nor PyTorch to drive it; 4 the
harness failed to build or import; 5 (only with --fail-on-perf) a
performance target was missed.
"""

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXIT_OK, EXIT_FAIL, EXIT_NO_GPU, EXIT_NO_LIBRARY, EXIT_BUILD, EXIT_PERF = 0, 1, 2, 3, 4, 5

DTYPES = ("float32", "float64", "float16", "bfloat16")
VARIANTS = [(beta, sparse) for beta in (0.0, 0.9) for sparse in (True, False)]
STORAGE = {"float32": np.float32, "float64": np.float64, "float16": np.float16,
           "bfloat16": np.uint16}  # bfloat16 is held as its bit pattern
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
# Relative tolerance per stored dtype: ~2 ulp for 16-bit, see the docstring.
RTOL = {"float64": 1e-12, "float32": 2e-6, "float16": 2 * 2.0**-10,
        "bfloat16": 2 * 2.0**-7}
LR, EPS = 0.05, 1e-8
BANDWIDTH_TARGET = 0.80   # update bandwidth / copy bandwidth
MULTI_TENSOR_TARGET = 1.5  # 1,000 x 10K time / one 10M time


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ExpectigradNumpy = _load("expectigrad_reference",
                         os.path.join(ROOT, "tests", "reference.py")).ExpectigradNumpy


def state_dtype(dtype):
    return "float64" if dtype == "float64" else "float32"


def variant_name(beta, sparse):
    return f"beta={beta:g},sparse_counter={'on' if sparse else 'off'}"


def bytes_per_element(dtype, beta, sparse):
    """Bytes read + written by one element of the update."""
    b, s = ITEMSIZE[dtype], ITEMSIZE[state_dtype(dtype)]
    reads = b + s + b + (s if sparse else 0) + (b if beta > 0 else 0)  # var sum grad cnt mom
    writes = b + s + (s if sparse else 0) + (b if beta > 0 else 0)
    return reads + writes


# ----------------------------------------------------------- host conversions
def _bf16_bits(x):
    """float array -> bfloat16 bit patterns (uint16), round to nearest even,
    as __float2bfloat16 does (via float32, as the kernel computes in float32)."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    u = x32.view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x32)
    if nan.any():
        bits[nan] = 0x7FC0
    return bits


def to_storage(x, dtype):
    """float values -> a NumPy array in the storage form of dtype."""
    if dtype == "bfloat16":
        return _bf16_bits(x)
    return np.asarray(x).astype(STORAGE[dtype])


def from_storage(a, dtype):
    """storage form -> float64 values."""
    a = np.asarray(a)
    if dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


def round_to(x, dtype):
    return from_storage(to_storage(x, dtype), dtype)


def compare(got, want, dtype):
    """(max error/tolerance, max abs error); a ratio <= 1 passes.

    Tolerance per element: rtol * |want| + rtol * max(1, max |want|)."""
    got = np.asarray(got, np.float64).ravel()
    want = np.asarray(want, np.float64).ravel()
    if got.shape != want.shape:
        return float("inf"), float("inf")
    if got.size == 0:
        return 0.0, 0.0
    rtol = RTOL[dtype]
    finite = want[np.isfinite(want)]
    # Absolute part: rtol times the magnitude of the values involved, at least
    # 1 (variables start ~N(0,1) and updates are ~lr): a result near zero
    # after cancellation (x - lr*m, beta*m + (1-beta)*u) carries the rounding
    # error of its O(1) operands, not of itself.
    scale = max(1.0, float(np.max(np.abs(finite))) if finite.size else 0.0)
    tol = rtol * np.abs(want) + rtol * scale
    err = np.abs(got - want)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(tol > 0, err / np.where(tol > 0, tol, 1), np.where(err == 0, 0.0, np.inf))
    both_nan = np.isnan(got) & np.isnan(want)
    ratio = np.where(both_nan, 0.0, ratio)
    ratio = np.where(np.isnan(got) != np.isnan(want), np.inf, ratio)
    err = np.where(both_nan, 0.0, err)
    return float(np.max(ratio)), float(np.nanmax(err)) if err.size else 0.0


# ------------------------------------------------------------------- backends
class DeviceArray:
    """A device buffer and the view of it handed to the kernel."""

    def __init__(self, buf, view, pad, dtype, guard_bits):
        self.buf, self.view, self.pad, self.dtype = buf, view, pad, dtype
        self.guard_bits = guard_bits  # storage values of the padding, or None


class Backend:
    """Device arrays and timing. Subclasses: CuPy, PyTorch, CPU simulation."""

    name = "?"
    simulated = False

    def __init__(self, harness_cuda=None):
        self.h = harness_cuda

    # storage-form NumPy array -> device buffer (1-D)
    def _to_device(self, host, dtype):
        raise NotImplementedError

    def _to_host(self, arr, dtype):  # -> storage-form NumPy array
        raise NotImplementedError

    def _full(self, n, dtype, value):
        return self._to_device(np.full(n, to_storage(np.float64(value), dtype)), dtype)

    def _slice(self, buf, start, stop, shape):
        return buf[start:stop].reshape(shape)

    def upload(self, values, dtype, shape=None, misaligned=False):
        """float64 values -> DeviceArray; misaligned: the view starts at
        element 1 of its buffer and one guard element follows it."""
        values = np.asarray(values, np.float64).ravel()
        n = values.size
        shape = (n,) if shape is None else tuple(shape)
        pad = 1 if misaligned else 0
        host = np.empty(n + 2 * pad, STORAGE[dtype])
        host[pad:pad + n] = to_storage(values, dtype)
        guard = None
        if pad:
            guard = to_storage(np.array([-7.25, 3.5]), dtype)
            host[0], host[-1] = guard[0], guard[1]
        buf = self._to_device(host, dtype)
        return DeviceArray(buf, self._slice(buf, pad, pad + n, shape), pad, dtype, guard)

    def download(self, a):
        """DeviceArray -> (float64 values of the view, guards intact?)."""
        host = self._to_host(a.buf, a.dtype)
        n = host.size - 2 * a.pad
        ok = True
        if a.pad:
            ok = bool(host[0] == a.guard_bits[0] and host[-1] == a.guard_bits[1])
        return from_storage(host[a.pad:a.pad + n], a.dtype), ok

    def write(self, a, start, values):
        """values (float64) -> elements [start, start + len) of a 1-D view."""
        raise NotImplementedError

    def read(self, a, start, stop):
        raise NotImplementedError

    def override(self, dtype):
        return None

    def stream(self):
        return 0

    def apply(self, var, sum_, cnt, mom, grad, lr, beta, eps, step, dtype):
        self.h.apply_cuda(var, sum_, cnt, mom, grad, lr, beta, eps, step,
                          stream=self.stream(), dtype=self.override(dtype))

    def prepare(self, var, sum_, cnt, mom, grad, dtype):
        plan = self.h.prepare_cuda(var, sum_, cnt, mom, grad, dtype=self.override(dtype))
        stream = self.stream()
        return lambda lr, beta, eps, step: plan.apply(lr, beta, eps, step, stream=stream)

    def copy(self, dst, src):
        self.h.copy(dst, src, stream=self.stream())

    def sync(self):
        self.h.synchronize()

    def time_ms(self, fn, iters):
        raise NotImplementedError

    def free_memory(self):
        return None

    def release(self):
        pass

    def device_info(self):
        return {}


class CupyBackend(Backend):
    name = "cupy"

    def __init__(self, harness_cuda=None):
        super().__init__(harness_cuda)
        import cupy

        self.cp = cupy

    @staticmethod
    def device_count():
        import cupy

        return cupy.cuda.runtime.getDeviceCount()

    def _to_device(self, host, dtype):
        return self.cp.asarray(host)

    def _to_host(self, arr, dtype):
        return self.cp.asnumpy(arr)

    def _full(self, n, dtype, value):
        return self.cp.full(n, to_storage(np.float64(value), dtype), dtype=STORAGE[dtype])

    def write(self, a, start, values):
        a.view[start:start + len(values)] = self.cp.asarray(to_storage(values, a.dtype))

    def read(self, a, start, stop):
        return from_storage(self.cp.asnumpy(a.view[start:stop]), a.dtype)

    def override(self, dtype):
        return "bfloat16" if dtype == "bfloat16" else None  # held as uint16

    def stream(self):
        return self.cp.cuda.get_current_stream().ptr

    def time_ms(self, fn, iters):
        start, end = self.cp.cuda.Event(), self.cp.cuda.Event()
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return self.cp.cuda.get_elapsed_time(start, end) / iters

    def free_memory(self):
        return self.cp.cuda.runtime.memGetInfo()[0]

    def release(self):
        self.cp.get_default_memory_pool().free_all_blocks()


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, harness_cuda=None):
        super().__init__(harness_cuda)
        import torch

        self.torch = torch
        self.tdtype = {"float32": torch.float32, "float64": torch.float64,
                       "float16": torch.float16, "bfloat16": torch.bfloat16}
        # Older PyTorch cannot export bfloat16 through __cuda_array_interface__:
        # hold bfloat16 as int16 there and name the dtype explicitly.
        try:
            torch.zeros(1, dtype=torch.bfloat16, device="cuda").__cuda_array_interface__
            self.bf16_native = True
        except Exception:
            self.bf16_native = False
            self.tdtype["bfloat16"] = torch.int16

    @staticmethod
    def device_count():
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def _to_device(self, host, dtype):
        if dtype == "bfloat16":
            return self.torch.from_numpy(host.view(np.int16)).to("cuda").view(
                self.tdtype["bfloat16"])
        return self.torch.from_numpy(host).to("cuda")

    def _to_host(self, arr, dtype):
        if dtype == "bfloat16":
            return arr.view(self.torch.int16).cpu().numpy().view(np.uint16)
        return arr.cpu().numpy()

    def _full(self, n, dtype, value):
        if dtype == "bfloat16":
            return super()._full(n, dtype, value)
        return self.torch.full((n,), float(value), dtype=self.tdtype[dtype], device="cuda")

    def write(self, a, start, values):
        src = self._to_device(to_storage(values, a.dtype), a.dtype)
        a.view[start:start + len(values)].copy_(src)

    def read(self, a, start, stop):
        return from_storage(self._to_host(a.view[start:stop], a.dtype), a.dtype)

    def override(self, dtype):
        # bfloat16 tensors are recognised by the harness (typestr "<V2" or
        # their torch dtype), which this exercises where PyTorch exports them.
        return "bfloat16" if dtype == "bfloat16" and not self.bf16_native else None

    def stream(self):
        return self.torch.cuda.current_stream().cuda_stream

    def time_ms(self, fn, iters):
        c = self.torch.cuda
        start, end = c.Event(enable_timing=True), c.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / iters

    def free_memory(self):
        return self.torch.cuda.mem_get_info()[0]

    def release(self):
        self.torch.cuda.empty_cache()


class CpuSimBackend(Backend):
    """NumPy arrays and the CPU harness in place of the GPU (script self-test).

    16-bit variables are widened to float32 around apply_cpu and rounded back
    to storage, as the CUDA kernel does per element."""

    name = "cpu-sim"
    simulated = True

    def __init__(self, harness_cpu):
        super().__init__(None)
        self.hc = harness_cpu

    def _to_device(self, host, dtype):
        return host.copy()

    def _to_host(self, arr, dtype):
        return np.array(arr)

    def write(self, a, start, values):
        a.view[start:start + len(values)] = to_storage(values, a.dtype)

    def read(self, a, start, stop):
        return from_storage(a.view[start:stop], a.dtype)

    def apply(self, var, sum_, cnt, mom, grad, lr, beta, eps, step, dtype):
        if dtype in ("float32", "float64"):
            self.hc.apply_cpu(var, sum_, cnt, mom, grad, lr, beta, eps, step)
            return
        wide = lambda xs: [from_storage(x, dtype).astype(np.float32) for x in xs]  # noqa: E731
        v32, g32 = wide(var), wide(grad)
        m32 = wide(mom) if mom is not None else None
        self.hc.apply_cpu(v32, sum_, cnt, m32, g32, lr, beta, eps, step)
        for dst, src in zip(var, v32):
            dst[...] = to_storage(src, dtype)
        for dst, src in zip(mom or [], m32 or []):
            dst[...] = to_storage(src, dtype)

    def prepare(self, var, sum_, cnt, mom, grad, dtype):
        return lambda lr, beta, eps, step: self.apply(var, sum_, cnt, mom, grad, lr, beta,
                                                      eps, step, dtype)

    def copy(self, dst, src):
        np.copyto(dst, src)

    def sync(self):
        pass

    def time_ms(self, fn, iters):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) * 1e3 / iters

    def device_info(self):
        return {"name": f"CPU simulation ({platform.processor() or platform.machine()})"}


# ---------------------------------------------------------- GPU detection/build
def _gpu_hint():
    """Whether this machine looks like it has an NVIDIA GPU (driver nodes)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def detect_backend(pref):
    """(backend class or None, exit code, message)."""
    names = {"cupy": CupyBackend, "torch": TorchBackend}
    order = ["cupy", "torch"] if pref == "auto" else [pref]
    notes, any_library = [], False
    for name in order:
        cls = names[name]
        try:
            count = cls.device_count()
            any_library = True
        except ImportError as e:
            notes.append(f"{name}: not installed ({e})")
            continue
        except Exception as e:  # CUDA runtime errors: no driver, no device
            any_library = True
            notes.append(f"{name}: {type(e).__name__}: {e}")
            continue
        if count > 0:
            return cls, EXIT_OK, f"{name}: {count} device(s)"
        notes.append(f"{name}: no CUDA device")
    if any_library or not _gpu_hint():
        return None, EXIT_NO_GPU, "no GPU found: " + "; ".join(notes)
    return None, EXIT_NO_LIBRARY, (
        "this machine has NVIDIA device nodes but neither CuPy nor PyTorch is "
        "installed to allocate device arrays (pip install cupy-cuda12x, or torch): "
        + "; ".join(notes))


def build_and_import(build_dir, need_cuda, quiet):
    bh = _load("expectigrad_build_harness", os.path.join(ROOT, "scripts", "build_harness.py"))
    t0 = time.perf_counter()
    info = bh.build(build_dir, cuda="1" if need_cuda else "0", verbose=not quiet)
    info["build_seconds"] = round(time.perf_counter() - t0, 1)
    mods = {"cpu": _load("_harness", info["cpu"])}
    if need_cuda:
        mods["cuda"] = _load("_harness_cuda", info["cuda"])
    return mods, info


# --------------------------------------------------------------------- checks
class Results:
    def __init__(self):
        self.checks = []

    def add(self, **rec):
        self.checks.append(rec)
        return rec

    @property
    def failures(self):
        return [c for c in self.checks if not c["passed"]]


def gradient(rng, size, t, sparse_zeros=True):
    g = rng.standard_normal(size)
    if size and sparse_zeros:
        g[(np.arange(size) + t) % 3 == 0] = 0.0  # zero on some steps
        if size >= 7:
            g[0] = 0.0  # never non-zero: count stays 0, 0/0 := 0
    return g


def _step_reference(ref, g, dtype):
    ref.step(g)
    if dtype in ("float16", "bfloat16"):
        # The kernel stores var/momentum in 16 bits and sum in float32.
        ref.x = round_to(ref.x, dtype)
        ref.m = round_to(ref.m, dtype)
        ref.s = round_to(ref.s, "float32")


def _slots(be, x0, dtype, beta, sparse, shape=None, misaligned=False):
    st = state_dtype(dtype)
    zeros = np.zeros(np.size(x0))
    var = be.upload(x0, dtype, shape, misaligned)
    s = be.upload(zeros, st, shape, misaligned)
    n = be.upload(zeros, st, shape, misaligned) if sparse else None
    m = be.upload(zeros, dtype, shape, misaligned) if beta > 0 else None
    return var, s, n, m


def _compare_slots(be, slots, ref, dtype, beta, sparse):
    """Worst (ratio, abs err) over var/sum/count/momentum; guards intact?"""
    var, s, n, m = slots
    pairs = [("var", var, ref.x, dtype), ("sum", s, ref.s, state_dtype(dtype))]
    if sparse:
        pairs.append(("count", n, ref.n, state_dtype(dtype)))
    if beta > 0:
        pairs.append(("momentum", m, ref.m, dtype))
    worst, worst_abs, guards, which = 0.0, 0.0, True, None
    for name, arr, want, dt in pairs:
        got, ok = be.download(arr)
        guards &= ok
        ratio, err = compare(got, want, dt)
        if ratio > worst:
            worst, which = ratio, name
        worst_abs = max(worst_abs, err)
    return worst, worst_abs, guards, which


def check_single(be, res, dtype, beta, sparse, size, steps, misaligned, seed):
    rng = np.random.default_rng(seed)
    x0 = round_to(rng.standard_normal(size), dtype)
    ref = ExpectigradNumpy(x0, lr=LR, beta=beta, eps=EPS, sparse_counter=sparse)
    slots = _slots(be, x0, dtype, beta, sparse, misaligned=misaligned)
    var, s, n, m = slots
    for t in range(1, steps + 1):
        g = round_to(gradient(rng, size, t), dtype)
        gd = be.upload(g, dtype, misaligned=misaligned)
        be.apply([var.view], [s.view], [n.view] if n else None, [m.view] if m else None,
                 [gd.view], LR, beta, EPS, t, dtype)
        _step_reference(ref, g, dtype)
    be.sync()
    ratio, err, guards, which = _compare_slots(be, slots, ref, dtype, beta, sparse)
    return res.add(check="single", dtype=dtype, variant=variant_name(beta, sparse), size=size,
                   misaligned=misaligned, steps=steps, max_err_over_tol=ratio,
                   max_abs_err=err, worst_slot=which, guards_intact=guards,
                   passed=bool(ratio <= 1.0 and guards))


def multi_sizes(count):
    cycle = [0, 1, 7, 4097, 33, 1000, 2, 513, 65537, 10007, 0, 4096]
    return [cycle[i % len(cycle)] for i in range(count)]


def check_multi(be, res, dtype, beta, sparse, num, steps, seed):
    rng = np.random.default_rng(seed)
    sizes = multi_sizes(num)
    shapes = [(64, s // 64) if s % 64 == 0 and s else (s,) for s in sizes]
    misaligned = [i % 5 == 3 for i in range(num)]
    total = sum(sizes)
    x0 = round_to(rng.standard_normal(total), dtype)
    offsets = np.cumsum([0] + sizes)
    ref = ExpectigradNumpy(x0, lr=LR, beta=beta, eps=EPS, sparse_counter=sparse)
    tensors = [_slots(be, x0[offsets[i]:offsets[i + 1]], dtype, beta, sparse, shapes[i],
                      misaligned[i]) for i in range(num)]
    for t in range(1, steps + 1):
        g = round_to(gradient(rng, total, t), dtype)
        grads = [be.upload(g[offsets[i]:offsets[i + 1]], dtype, shapes[i], misaligned[i])
                 for i in range(num)]
        be.apply([v.view for v, _, _, _ in tensors], [s.view for _, s, _, _ in tensors],
                 [n.view for _, _, n, _ in tensors] if sparse else None,
                 [m.view for _, _, _, m in tensors] if beta > 0 else None,
                 [gd.view for gd in grads], LR, beta, EPS, t, dtype)
        _step_reference(ref, g, dtype)
    be.sync()
    worst, worst_abs, guards, bad = 0.0, 0.0, True, []
    for i, slots in enumerate(tensors):
        sub = ExpectigradNumpy(np.zeros(0), sparse_counter=sparse)
        sl = slice(offsets[i], offsets[i + 1])
        sub.x, sub.s, sub.n, sub.m = ref.x[sl], ref.s[sl], ref.n[sl], ref.m[sl]
        ratio, err, ok, _ = _compare_slots(be, slots, sub, dtype, beta, sparse)
        worst, worst_abs, guards = max(worst, ratio), max(worst_abs, err), guards and ok
        if ratio > 1.0 or not ok:
            bad.append(i)
    return res.add(check="multi-tensor", dtype=dtype, variant=variant_name(beta, sparse),
                   size=total, tensors=num, steps=steps, max_err_over_tol=worst,
                   max_abs_err=worst_abs, bad_tensors=bad[:10], guards_intact=guards,
                   passed=bool(worst <= 1.0 and guards))


def check_large(be, res, size, chunk, seed):
    """One float32 tensor with both slots, two steps, checked chunk by chunk."""
    dtype, beta, sparse, steps = "float32", 0.9, True, 2
    need = size * 4 * 5 + (64 << 20)
    free = be.free_memory()
    if free is not None and free < need:
        return res.add(check="large", dtype=dtype, variant=variant_name(beta, sparse),
                       size=size, steps=steps, passed=True, skipped=True,
                       note=f"skipped: needs {need >> 20} MiB, {free >> 20} MiB free")
    chunks = [(a, min(a + chunk, size)) for a in range(0, size, chunk)]
    crng = lambda step, i: np.random.default_rng([seed, step, i])  # noqa: E731
    var = DeviceArray(None, be._full(size, dtype, 0.0), 0, dtype, None)
    s, n, m, g = (DeviceArray(None, be._full(size, "float32", 0.0), 0, "float32", None)
                  for _ in range(4))
    for i, (a, b) in enumerate(chunks):
        be.write(var, a, crng(0, i).standard_normal(b - a))
    t0 = time.perf_counter()
    for t in range(1, steps + 1):
        for i, (a, b) in enumerate(chunks):
            be.write(g, a, gradient(crng(t, i), b - a, t + a))
        be.apply([var.view], [s.view], [n.view], [m.view], [g.view], LR, beta, EPS, t, dtype)
    be.sync()
    worst, worst_abs = 0.0, 0.0
    for i, (a, b) in enumerate(chunks):
        ref = ExpectigradNumpy(crng(0, i).standard_normal(b - a).astype(np.float32),
                               lr=LR, beta=beta, eps=EPS, sparse_counter=sparse)
        for t in range(1, steps + 1):
            ref.step(gradient(crng(t, i), b - a, t + a).astype(np.float32))
        for arr, want in ((var, ref.x), (s, ref.s), (n, ref.n), (m, ref.m)):
            ratio, err = compare(be.read(arr, a, b), want, "float32")
            worst, worst_abs = max(worst, ratio), max(worst_abs, err)
    var = s = n = m = g = None  # free before release()
    be.release()
    return res.add(check="large", dtype=dtype, variant=variant_name(beta, sparse), size=size,
                   steps=steps, max_err_over_tol=worst, max_abs_err=worst_abs,
                   seconds=round(time.perf_counter() - t0, 1), passed=bool(worst <= 1.0))


def check_api(be, res):
    """The harness rejects bad arrays on a real device, and copy() copies."""
    h = be.h
    x = be.upload(np.arange(16.0), "float32")
    bad = []
    strided = be.upload(np.arange(32.0), "float32")
    cases = {
        "non-contiguous var": ([strided.buf[::2]], [x.view], None, None, [x.view]),
        "float64 sum for float32 var": ([x.view], [be.upload(np.zeros(16), "float64").view],
                                        None, None, [x.view]),
        "shape mismatch": ([x.view], [be.upload(np.zeros(15), "float32").view], None, None,
                           [x.view]),
    }
    for what, args in cases.items():
        try:
            h.apply_cuda(*args, 0.1, 0.0, 1e-8, 1)
            bad.append(f"{what}: accepted")
        except ValueError:
            pass
        except Exception as e:
            bad.append(f"{what}: {type(e).__name__}: {e}")
    dst = be.upload(np.zeros(16), "float32")
    h.copy(dst.view, x.view)
    h.synchronize()
    got, _ = be.download(dst)
    if not np.array_equal(got, np.arange(16.0)):
        bad.append("copy: wrong data")
    return res.add(check="api", dtype="float32", variant="-", size=16, problems=bad,
                   passed=not bad)


def run_checks(be, quick):
    res = Results()
    sizes = [0, 1, 7, 4097, 100003] + ([] if quick else [1000003])
    steps = 3 if quick else 5
    seed = 0
    for dtype in DTYPES:
        for beta, sparse in VARIANTS:
            for size in sizes:
                for misaligned in ((False,) if size == 0 else (False, True)):
                    seed += 1
                    check_single(be, res, dtype, beta, sparse, size, steps, misaligned, seed)
            seed += 1
            check_multi(be, res, dtype, beta, sparse, 97, steps, seed)
        be.release()
    if not be.simulated:
        check_api(be, res)
    large = (1 << 24) + 3 if quick else 100_000_003
    if be.simulated:
        large = 3_000_017
    check_large(be, res, large, 1 << 22, 12345)
    return res


# ----------------------------------------------------------------- benchmarks
def _iters_for(be, fn, budget_s, lo=3, hi=500):
    fn()
    be.sync()
    one = be.time_ms(fn, 1)
    return max(lo, min(hi, int(budget_s * 1e3 / max(one, 1e-3))))


def bench_copy(be, n_bytes, budget):
    src = be._full(n_bytes // 4, "float32", 1.0)
    dst = be._full(n_bytes // 4, "float32", 0.0)
    fn = lambda: be.copy(dst, src)  # noqa: E731
    ms = be.time_ms(fn, _iters_for(be, fn, budget))
    src = dst = fn = None  # free before release()
    be.release()
    return {"bytes": n_bytes, "ms": ms, "gbps": 2 * n_bytes / (ms * 1e-3) / 1e9}


def _bench_tensors(be, sizes, dtype, beta, sparse):
    st = state_dtype(dtype)
    ts = []
    for n in sizes:
        ts.append((be._full(n, dtype, 1.0), be._full(n, st, 0.0),
                   be._full(n, st, 0.0) if sparse else None,
                   be._full(n, dtype, 0.0) if beta > 0 else None, be._full(n, dtype, 0.5)))
    return ([t[0] for t in ts], [t[1] for t in ts],
            [t[2] for t in ts] if sparse else None, [t[3] for t in ts] if beta > 0 else None,
            [t[4] for t in ts])


def bench_update(be, n, dtype, beta, sparse, budget):
    arrays = _bench_tensors(be, [n], dtype, beta, sparse)
    plan = be.prepare(*arrays, dtype)
    step = [0]

    def fn():
        step[0] += 1
        plan(LR, beta, EPS, step[0])

    ms = be.time_ms(fn, _iters_for(be, fn, budget))
    arrays = plan = fn = None  # free before release()
    be.release()
    bpe = bytes_per_element(dtype, beta, sparse)
    return {"dtype": dtype, "variant": variant_name(beta, sparse), "elements": n,
            "bytes_per_element": bpe, "us": ms * 1e3, "gbps": bpe * n / (ms * 1e-3) / 1e9}


def bench_multi(be, count, each, budget):
    dtype, beta, sparse = "float32", 0.9, True
    out = {}
    for label, sizes in (("single", [count * each]), ("multi", [each] * count)):
        arrays = _bench_tensors(be, sizes, dtype, beta, sparse)
        plan = be.prepare(*arrays, dtype)
        step = [0]

        def fn():
            step[0] += 1
            plan(LR, beta, EPS, step[0])

        out[label + "_us"] = be.time_ms(fn, _iters_for(be, fn, budget)) * 1e3
        if label == "multi":
            # End to end, with the Python-side validation of 5,000 arrays.
            t0 = time.perf_counter()
            reps = 3
            for r in range(reps):
                be.apply(*arrays, LR, beta, EPS, 1000 + r, dtype)
            be.sync()
            out["multi_apply_call_us"] = (time.perf_counter() - t0) * 1e6 / reps
        arrays = plan = fn = None  # free before release()
        be.release()
    out.update(tensors=count, elements_each=each,
               ratio=out["multi_us"] / out["single_us"])
    return out


def run_benchmarks(be, quick):
    if be.simulated:
        big, sweep, multi, budget = 1 << 18, [1 << 14, 1 << 18], (100, 1000), 0.02
    elif quick:
        big, sweep, multi, budget = 1 << 24, [1 << 20, 1 << 24], (1000, 10_000), 0.1
    else:
        big, sweep, multi, budget = 1 << 26, [1 << 20, 1 << 24, 1 << 26, 1 << 27], \
            (1000, 10_000), 0.25
    copy = bench_copy(be, big * 16, budget)
    rows = []
    for n in sweep:
        if n != big:
            rows.append(bench_update(be, n, "float32", 0.9, True, budget))
    for dtype in DTYPES:
        for beta, sparse in VARIANTS:
            rows.append(bench_update(be, big, dtype, beta, sparse, budget))
    for r in rows:
        r["pct_of_copy"] = 100.0 * r["gbps"] / copy["gbps"]
        # The target applies to float32 on large tensors (>= 16M elements).
        r["target"] = (r["pct_of_copy"] >= 100 * BANDWIDTH_TARGET
                       if r["dtype"] == "float32" and r["elements"] >= (1 << 24) else None)
    mt = bench_multi(be, multi[0], multi[1], budget)
    mt["target"] = mt["ratio"] <= MULTI_TENSOR_TARGET
    return {"copy": copy, "update": rows, "multi_tensor": mt, "large_elements": big}


# --------------------------------------------------------------------- report
def markdown(report):
    out = []
    dev = report["device"]
    out.append(f"## Expectigrad CUDA kernel check: {dev.get('name', '?')}")
    out.append("")
    if report["simulated"]:
        out.append("**SIMULATED on the CPU harness (--backend cpu-sim): this does not test "
                   "the CUDA kernel.**")
        out.append("")
    out.append(f"backend {report['backend']}, CUDA runtime {report.get('cuda_runtime')}, "
               f"driver {report.get('cuda_driver')}, archs {report['build'].get('cuda_archs')}, "
               f"build {report['build'].get('build_seconds')} s, total "
               f"{report.get('elapsed_s')} s")
    out.append("")
    out.append("### Correctness (max error / tolerance; <= 1 passes)")
    out.append("")
    out.append("| check | dtype | variant | cases | sizes | worst err/tol | result |")
    out.append("|---|---|---|---|---|---|---|")
    groups = {}
    for c in report["checks"]:
        groups.setdefault((c["check"], c["dtype"], c["variant"]), []).append(c)
    for (check, dtype, variant), cs in groups.items():
        sizes = sorted({c["size"] for c in cs})
        worst = max((c.get("max_err_over_tol", 0.0) for c in cs), default=0.0)
        ok = sum(c["passed"] for c in cs)
        skipped = any(c.get("skipped") for c in cs)
        result = "skipped" if skipped else ("PASS" if ok == len(cs) else f"FAIL ({len(cs) - ok})")
        out.append(f"| {check} | {dtype} | {variant} | {len(cs)} | "
                   f"{', '.join(map(str, sizes))} | {worst:.3g} | {result} |")
    fails = [c for c in report["checks"] if not c["passed"]]
    if fails:
        out.append("")
        out.append("Failures:")
        for c in fails[:30]:
            out.append(f"- {json.dumps(c)}")
    bench = report.get("bench")
    if bench:
        cp = bench["copy"]
        out.append("")
        out.append(f"### Bandwidth (device-to-device copy: {cp['gbps']:.0f} GB/s over "
                   f"{cp['bytes'] >> 20} MiB; target >= {BANDWIDTH_TARGET:.0%} of copy for "
                   "float32 >= 16M elements)")
        out.append("")
        out.append("| dtype | variant | elements | B/elem | time (us) | GB/s | % of copy | target |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in bench["update"]:
            tgt = "-" if r["target"] is None else ("met" if r["target"] else "MISSED")
            out.append(f"| {r['dtype']} | {r['variant']} | {r['elements']} | "
                       f"{r['bytes_per_element']} | {r['us']:.1f} | {r['gbps']:.0f} | "
                       f"{r['pct_of_copy']:.0f} | {tgt} |")
        mt = bench["multi_tensor"]
        out.append("")
        out.append(f"### Multi-tensor ({mt['tensors']} x {mt['elements_each']} vs one "
                   f"{mt['tensors'] * mt['elements_each']}, float32, both slots; target <= "
                   f"{MULTI_TENSOR_TARGET}x)")
        out.append("")
        out.append("| one tensor (us) | many tensors (us) | ratio | target | apply_cuda call "
                   "incl. validation (us) |")
        out.append("|---|---|---|---|---|")
        out.append(f"| {mt['single_us']:.1f} | {mt['multi_us']:.1f} | {mt['ratio']:.2f} | "
                   f"{'met' if mt['target'] else 'MISSED'} | {mt['multi_apply_call_us']:.0f} |")
    out.append("")
    out.append(f"**Correctness: {'PASS' if report['passed'] else 'FAIL'}**; performance "
               f"targets: {report['perf_targets']}")
    return "\n".join(out)


def _jsonable(o):
    if isinstance(o, dict):
        return {k: _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if np.isfinite(f) else str(f)
    if isinstance(o, np.integer):
        return int(o)
    return o


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes/steps/iterations")
    ap.add_argument("--out", help="write the JSON report here")
    ap.add_argument("--build-dir", help="build/reuse the harness here (default: a temp dir)")
    ap.add_argument("--backend", choices=["auto", "cupy", "torch", "cpu-sim"], default="auto")
    ap.add_argument("--no-bench", action="store_true", help="correctness checks only")
    ap.add_argument("--fail-on-perf", action="store_true",
                    help=f"exit {EXIT_PERF} when a performance target is missed")
    ap.add_argument("-q", "--quiet", action="store_true", help="no build commands")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    simulated = args.backend == "cpu-sim"
    if not simulated:
        cls, code, msg = detect_backend(args.backend)
        if cls is None:
            print(f"gpu_check: {msg}", file=sys.stderr)
            print(f"gpu_check: nothing checked (exit {code}).", file=sys.stderr)
            return code
        print(f"gpu_check: {msg}", flush=True)

    tmp = None
    build_dir = args.build_dir
    if build_dir is None:
        tmp = tempfile.mkdtemp(prefix="expectigrad-gpu-check-")
        build_dir = tmp
    try:
        try:
            mods, build = build_and_import(build_dir, not simulated, args.quiet)
        except Exception as e:
            print(f"gpu_check: the harness failed to build or import: {e}", file=sys.stderr)
            return EXIT_BUILD
        if simulated:
            be = CpuSimBackend(mods["cpu"])
            runtime = driver = None
            device = be.device_info()
        else:
            h = mods["cuda"]
            be = cls(h)
            runtime, driver = h.runtime_version(), h.driver_version()
            if h.device_count() == 0:
                print(f"gpu_check: {be.name} sees a GPU but the harness's CUDA runtime "
                      f"{runtime} does not (driver {driver} too old?)", file=sys.stderr)
                return EXIT_NO_GPU
            device = h.device_info()
        print(f"gpu_check: device {device.get('name')}; running correctness checks",
              flush=True)
        res = run_checks(be, args.quick)
        passed = not res.failures
        print(f"gpu_check: {len(res.checks)} checks, {len(res.failures)} failed "
              f"({time.perf_counter() - t_start:.0f} s)", flush=True)
        bench = None
        if not args.no_bench:
            print("gpu_check: benchmarks", flush=True)
            bench = run_benchmarks(be, args.quick)
        if bench is None:
            perf = "not measured"
        else:
            targets = [r["target"] for r in bench["update"] if r["target"] is not None]
            targets.append(bench["multi_tensor"]["target"])
            perf = "met" if all(targets) else "MISSED"
            if simulated:
                perf += " (simulated: meaningless)"
        report = {
            "simulated": simulated, "backend": be.name, "device": device,
            "cuda_runtime": runtime, "cuda_driver": driver,
            "build": {k: v for k, v in build.items()},
            "python": sys.version.split()[0], "numpy": np.__version__,
            "quick": args.quick, "checks": res.checks, "bench": bench,
            "passed": passed, "perf_targets": perf,
            "elapsed_s": round(time.perf_counter() - t_start, 1),
        }
        print(markdown(report))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(_jsonable(report), f, indent=2)
        if not passed:
            return EXIT_FAIL
        if args.fail_on_perf and perf.startswith("MISSED"):
            return EXIT_PERF
        return EXIT_OK
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
