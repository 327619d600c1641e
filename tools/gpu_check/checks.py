"""Correctness checks of the CUDA kernel (through a backend) against the
independent NumPy reference ``expectigrad_tf.reference.ExpectigradNumpy``.

References are computed in float64. For 16-bit variables the variable is
rounded to its storage dtype and the sum and momentum to float32 after each
step (the kernel stores them so). Each array is compared at the tolerance of
the dtype it is stored in: the variable in its own dtype (16-bit within two
units in the last place), the state (sum, count, momentum) in the state dtype
(float32, float64 for float64 variables); float32 within about 2e-6
relative, float64 within 1e-12.
"""

import time

import numpy as np

from expectigrad_tf.reference import ExpectigradNumpy
from tools.gpu_check.backends import DTYPES, DeviceArray, round_to, state_dtype

VARIANTS = [(beta, sparse) for beta in (0.0, 0.9) for sparse in (True, False)]
# Relative tolerance per stored dtype: ~2 ulp for 16-bit, see the docstring.
RTOL = {"float64": 1e-12, "float32": 2e-6, "float16": 2 * 2.0**-10,
        "bfloat16": 2 * 2.0**-7}
LR, EPS = 0.05, 1e-8


def variant_name(beta, sparse):
    return f"beta={beta:g},sparse_counter={'on' if sparse else 'off'}"


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
        # The kernel stores the variable in 16 bits and the state (sum,
        # momentum; the count is an integer) in float32.
        ref.x = round_to(ref.x, dtype)
        ref.s = round_to(ref.s, "float32")
        ref.m = round_to(ref.m, "float32")


def _slots(be, x0, dtype, beta, sparse, shape=None, misaligned=False):
    st = state_dtype(dtype)
    zeros = np.zeros(np.size(x0))
    var = be.upload(x0, dtype, shape, misaligned)
    s = be.upload(zeros, st, shape, misaligned)
    n = be.upload(zeros, st, shape, misaligned) if sparse else None
    m = be.upload(zeros, st, shape, misaligned) if beta > 0 else None
    return var, s, n, m


def _compare_slots(be, slots, ref, dtype, beta, sparse):
    """Worst (ratio, abs err) over var/sum/count/momentum; guards intact?"""
    var, s, n, m = slots
    pairs = [("var", var, ref.x, dtype), ("sum", s, ref.s, state_dtype(dtype))]
    if sparse:
        pairs.append(("count", n, ref.n, state_dtype(dtype)))
    if beta > 0:
        pairs.append(("momentum", m, ref.m, state_dtype(dtype)))
    worst, worst_abs, guards, which = 0.0, 0.0, True, None
    for name, arr, want, dt in pairs:
        got, ok = be.download(arr)
        guards &= ok
        ratio, err = compare(got, want, dt)
        if ratio > worst:
            worst, which = ratio, name
        worst_abs = max(worst_abs, err)
    return worst, worst_abs, guards, which


def check_single(be, res, dtype, beta, sparse, size, steps, misaligned, seed,
                 lr_dtype="float64", check="single"):
    rng = np.random.default_rng(seed)
    x0 = round_to(rng.standard_normal(size), dtype)
    # A float32 learning rate reaches the kernel rounded to float32.
    lr = float(np.float32(LR)) if lr_dtype == "float32" else LR
    ref = ExpectigradNumpy(x0, lr=lr, beta=beta, eps=EPS, sparse_counter=sparse)
    slots = _slots(be, x0, dtype, beta, sparse, misaligned=misaligned)
    var, s, n, m = slots
    for t in range(1, steps + 1):
        g = round_to(gradient(rng, size, t), dtype)
        gd = be.upload(g, dtype, misaligned=misaligned)
        be.apply([var.view], [s.view], [n.view] if n else None, [m.view] if m else None,
                 [gd.view], LR, beta, EPS, t, dtype, lr_dtype=lr_dtype)
        _step_reference(ref, g, dtype)
    be.sync()
    ratio, err, guards, which = _compare_slots(be, slots, ref, dtype, beta, sparse)
    return res.add(check=check, dtype=dtype, variant=variant_name(beta, sparse), size=size,
                   misaligned=misaligned, steps=steps, lr_dtype=lr_dtype, max_err_over_tol=ratio,
                   max_abs_err=err, worst_slot=which, guards_intact=guards,
                   passed=bool(ratio <= 1.0 and guards))


def multi_sizes(count):
    cycle = [0, 1, 7, 4097, 33, 1000, 2, 513, 65537, 10007, 0, 4096]
    return [cycle[i % len(cycle)] for i in range(count)]


def check_multi(be, res, dtype, beta, sparse, num, steps, seed, check="multi-tensor"):
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
    return res.add(check=check, dtype=dtype, variant=variant_name(beta, sparse),
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
    x16 = be.upload(np.arange(16.0), "float16")
    cases = {
        "non-contiguous var": ([strided.buf[::2]], [x.view], None, None, [x.view]),
        # Momentum is state: float32 for float16 variables, not float16.
        "float16 momentum for float16 var": ([x16.view], [be.upload(np.zeros(16), "float32").view],
                                             None, [be.upload(np.zeros(16), "float16").view],
                                             [x16.view]),
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


def check_small_grid(be, res, seed):
    """A grid much smaller than the data (2 blocks of 256 threads over ~20K
    elements in 45 tensors): every thread walks many elements and tensors."""
    if not be.set_max_blocks(2):
        return res.add(check="small-grid", dtype="float32", variant="-", size=0,
                       passed=True, skipped=True, note="backend cannot cap the grid")
    try:
        for i, dtype in enumerate(DTYPES):
            check_multi(be, res, dtype, 0.9, True, 45, 2, seed + i, check="small-grid")
    finally:
        be.set_max_blocks(0)


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
        # lr held as float32 in device memory (Keras' default variable dtype).
        seed += 1
        check_single(be, res, dtype, 0.9, True, 4097, steps, True, seed,
                     lr_dtype="float32", check="lr-float32")
        be.release()
    check_small_grid(be, res, 9000)
    if not be.simulated:
        check_api(be, res)
    large = (1 << 24) + 3 if quick else 100_000_003
    if be.simulated:
        large = 3_000_017
    check_large(be, res, large, 1 << 22, 12345)
    return res
