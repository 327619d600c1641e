"""The sparse-embedding benchmark (``expectigrad-benchmark --sparse``): one
optimizer step on a large embedding table given a ``tf.IndexedSlices``
gradient of a few rows, lazy (``Expectigrad(lazy_sparse=True)``: only the
given rows of sum, count, momentum and the table change) against exact
(the default sparse path: exact Algorithm 1, whose momentum decays and whose
table moves on every row when ``beta > 0``).

Default workload: a 1,000,000 x 64 float32 table, 256 touched rows per step
(``--quick``: 20,000 x 16, 64 rows). Each method has its own table and state
(same initial values); gradients are precomputed (``N_GRADIENTS`` different
row sets, cycled, so successive steps touch different rows) and the step is
``opt.apply`` inside a ``tf.function``. Methods are timed round-robin as in
the dense benchmark (``workloads.bench_workload``), medians and the spread of
the per-repeat paired ratio are reported; the target is lazy >= 10x faster
than exact. No correctness is measured here (tests/optimizer/test_lazy_sparse.py).
"""

import gc
import time

import numpy as np

from .backends import BlockTimed, round_robin
from .report import load_average, paired_ratio, summarize

__all__ = ["SPARSE_METHODS", "FULL_SPARSE", "QUICK_SPARSE", "SPARSE_TARGET",
           "bench_sparse", "sparse_to_markdown"]

# name -> (description, lazy_sparse, expected dispatch path)
SPARSE_METHODS = {
    "expectigrad_sparse_exact": (
        "Expectigrad, exact sparse path (default): sum/count on the given rows, "
        "momentum and table rewritten on every row", False, "sparse"),
    "expectigrad_sparse_lazy": (
        "Expectigrad(lazy_sparse=True): sum, count, momentum and table on the given rows only",
        True, "sparse-lazy"),
}
FULL_SPARSE = dict(rows=1_000_000, cols=64, touched=256, dtype="float32")
QUICK_SPARSE = dict(rows=20_000, cols=16, touched=64, dtype="float32")
N_GRADIENTS = 16
# (numerator = slow, denominator = fast, threshold): exact / lazy >= 10.
SPARSE_TARGET = ("expectigrad_sparse_exact", "expectigrad_sparse_lazy", 10.0,
                 "lazy sparse step >= 10 x faster than the exact sparse step")


class _SparseBench(BlockTimed):
    def __init__(self, method, table, grads, lr=1e-3, beta=0.9):
        import keras
        import tensorflow as tf

        from expectigrad_tf import Expectigrad

        self.method = method
        self.description, lazy, self.expected_path = SPARSE_METHODS[method]
        self.var = keras.Variable(table, name="table")
        self.opt = Expectigrad(learning_rate=lr, beta=beta, lazy_sparse=lazy)
        self.opt.build([self.var])
        self.grads = grads
        self._k = 0
        var, opt = self.var, self.opt
        shape = tf.constant(table.shape, tf.int64)

        def step(values, indices):
            opt.apply([tf.IndexedSlices(values, indices, shape)], [var])

        self._apply = tf.function(step, autograph=False)
        self._tf = tf
        self._row0 = tf.constant([0], tf.int64)
        self.dispatch = None

    def _step(self):
        values, indices = self.grads[self._k % len(self.grads)]
        self._k += 1
        self._apply(values, indices)

    def sync(self):
        """Reads one row (ResourceGather): ``var[0, 0]`` would read, and
        copy, the whole table."""
        row = self.var.value.sparse_read(self._row0)
        return float(self._tf.reshape(row, [-1])[0].numpy())

    def first_call(self):
        t0 = time.perf_counter()
        self._step()
        self.sync()
        dt = time.perf_counter() - t0
        paths = sorted({p for p, _ in self.opt.dispatch_report().values()})
        self.dispatch = ",".join(paths)
        if paths != [self.expected_path]:
            raise RuntimeError(f"{self.method}: expected dispatch path {self.expected_path!r}, "
                               f"got {paths}: {self.opt.dispatch_report()}")
        return dt


def bench_sparse(spec, cfg, log):
    """Times every method of ``SPARSE_METHODS`` on ``spec`` (rows, cols,
    touched, dtype); returns {"workload", "rows", "ratio", "target"}."""
    import tensorflow as tf

    rows, cols, touched, dtype = spec["rows"], spec["cols"], spec["touched"], spec["dtype"]
    rng = np.random.default_rng(cfg["seed"])
    table = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.1).astype(dtype)
    grads = []
    for _ in range(N_GRADIENTS):
        idx = rng.choice(rows, size=touched, replace=False).astype(np.int64)
        vals = (rng.standard_normal((touched, cols)) * 0.01).astype(dtype)
        grads.append((tf.constant(vals), tf.constant(idx)))
    methods = list(SPARSE_METHODS)
    benches, trace_s = {}, {}
    for m in methods:
        b = _SparseBench(m, table, grads)
        trace_s[m] = b.first_call()
        benches[m] = b
        log(f"  [sparse {rows:,}x{cols}] {m}: traced in {trace_s[m]:.1f}s")
    del table
    samples, inner = round_robin(benches, cfg)
    label = f"{rows // 1000:,}Kx{cols}" if rows < 1_000_000 else f"{rows // 1_000_000}Mx{cols}"
    out_rows = []
    for m in methods:
        st = summarize(samples[m])
        out_rows.append({
            "method": m, "description": benches[m].description, "dispatch": benches[m].dispatch,
            "workload": label, "rows": rows, "cols": cols, "touched": touched, "dtype": dtype,
            "inner_steps": inner[m], "trace_s": trace_s[m], "stats": st, "samples_s": samples[m],
        })
        log(f"  [sparse {label}] {m:26s} median {st['median_ms']:10.3f} ms "
            f"(p10 {st['p10_ms']:.3f}, p90 {st['p90_ms']:.3f}), {inner[m]} steps/block")
    num, den, thr, desc = SPARSE_TARGET
    ratio = paired_ratio(samples[num], samples[den])
    ratio.update(name="exact/lazy", numerator=num, denominator=den,
                 meaning="speedup of lazy over exact (higher is better)")
    target = {"name": "lazy_vs_exact_sparse", "description": desc, "threshold": thr,
              "comparison": ">=", "ratio": ratio["ratio"],
              "paired_p10": ratio.get("paired_p10"), "paired_p90": ratio.get("paired_p90"),
              "status": "PASS" if ratio["ratio"] >= thr else "MISS", "workload": label}
    del benches, grads
    gc.collect()
    return {"workload": label, "spec": dict(spec), "rows": out_rows, "ratio": ratio,
            "target": target, "load_average_end": load_average()}


def _f(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def sparse_to_markdown(res, targets=False):
    """The Markdown of a ``--sparse`` result; ``targets``: with the PASS /
    MISS line of ``SPARSE_TARGET`` (``--targets``)."""
    meta, sp = res["meta"], res["sparse"]
    spec = sp["spec"]
    lines = []
    w = lines.append
    w(f"Machine: {meta['cpu_model']} ({meta['logical_cpus']} logical CPUs, "
      f"{meta['usable_cpus']} usable; intra-op threads {meta['intra_op_threads']}).  ")
    w(f"Software: TensorFlow {meta['tensorflow']}, Keras {meta['keras']}, NumPy "
      f"{meta['numpy']}, Python {meta['python']}. Date: {meta['date']}. "
      f"Load average at start/end: {meta['load_average_start']} / {meta.get('load_average_end')}.  ")
    w(f"Command: `{meta['command']}`{' (quick mode: small sizes, few repeats)' if meta['quick'] else ''}; "
      f"{meta['repeats']} round-robin repeats.")
    w("")
    w(f"### Sparse step time: {spec['rows']:,} x {spec['cols']} {spec['dtype']} table, "
      f"{spec['touched']} touched rows per step")
    w("")
    w("`opt.apply` of a `tf.IndexedSlices` gradient inside a `tf.function`, beta = 0.9; "
      "median, p10 and p90 over repeats, in milliseconds per step.")
    w("")
    w("| method | dispatch | median ms | p10 ms | p90 ms | steps per block |")
    w("|---|---|---:|---:|---:|---:|")
    for r in sp["rows"]:
        st = r["stats"]
        w(f"| {r['method']} | {r['dispatch']} | {_f(st['median_ms'])} | {_f(st['p10_ms'])} | "
          f"{_f(st['p90_ms'])} | {r['inner_steps']} |")
    w("")
    q, t = sp["ratio"], sp["target"]
    band = (f"{_f(q.get('paired_p10'), 1)}-{_f(q.get('paired_p90'), 1)}"
            if q.get("paired_p10") is not None else "-")
    if targets:
        w("| ratio | value | paired p10-p90 | target | result |")
        w("|---|---:|---:|---:|---|")
        w(f"| {q['name']} ({q['meaning']}) | {_f(q['ratio'], 1)} | {band} | "
          f"{t['comparison']} {t['threshold']} | **{t['status']}** |")
    else:
        w("| ratio | value | paired p10-p90 |")
        w("|---|---:|---:|")
        w(f"| {q['name']} ({q['meaning']}) | {_f(q['ratio'], 1)} | {band} |")
    w("")
    return "\n".join(lines)
