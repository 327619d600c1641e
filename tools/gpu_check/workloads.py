"""Bandwidth workloads: the update's effective bandwidth (bytes read + written
per element, 36 B for float32 with both slots) against a device-to-device
copy timed in the same run (target >= 80 % of copy), and one multi-tensor
call over 1,000 tensors of 10K elements against one 10M tensor (target
<= 1.5x)."""

import time

from tools.gpu_check.backends import DTYPES, ITEMSIZE, state_dtype
from tools.gpu_check.checks import EPS, LR, VARIANTS, variant_name

BANDWIDTH_TARGET = 0.80   # update bandwidth / copy bandwidth
MULTI_TENSOR_TARGET = 1.5  # 1,000 x 10K time / one 10M time


def bytes_per_element(dtype, beta, sparse):
    """Bytes read + written by one element of the update."""
    b, s = ITEMSIZE[dtype], ITEMSIZE[state_dtype(dtype)]
    # var and grad in the variable's dtype; sum, count, momentum: state.
    reads = b + s + b + (s if sparse else 0) + (s if beta > 0 else 0)  # var sum grad cnt mom
    writes = b + s + (s if sparse else 0) + (s if beta > 0 else 0)
    return reads + writes


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
                   be._full(n, st, 0.0) if beta > 0 else None, be._full(n, dtype, 0.5)))
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
