#!/usr/bin/env python
"""Optimizer-step and model-level benchmarks for Expectigrad on CPU.

Measures, in one process and one run, so that every ratio compares numbers
taken under the same machine conditions:

* the time of one optimizer step (precomputed gradients, ``opt.apply`` inside
  a ``tf.function``; gradient computation excluded) for

  - ``expectigrad_fused``: Expectigrad with the fused multi-tensor op;
  - ``expectigrad_composite``: Expectigrad(fused=False), keras.ops, no XLA;
  - ``expectigrad_composite_xla``: Expectigrad under
    ``tf.function(jit_compile=True)`` (composite ops compiled by XLA);
  - ``keras_adam`` / ``keras_adam_xla``: ``keras.optimizers.Adam`` without
    and with XLA;
  - ``tf_resource_apply_adam``: TensorFlow's engineered C++ Adam kernel,
    ``tf.raw_ops.ResourceApplyAdam``, one op per variable: the anchor;
  - ``stream_sgd_reference``: ``tf.raw_ops.ResourceApplyGradientDescent``
    (x -= lr * g, 12 bytes/element in float32): a memory-streaming
    reference that shows what bandwidth a trivial TF kernel reaches here;

  on the workloads 1 x 10M elements, 100 x 100K and 1,000 x 1K in float32,
  and (fused path and anchors only) float64;
* seconds per ``model.fit`` step, steady state (the first epoch, which
  traces the step, is excluded), for a 2x1000 ReLU MLP and a small
  Transformer encoder classifier, Expectigrad vs Adam, same batch and
  same initial weights;
* effective bandwidth (minimum bytes moved per element / step time: 36 B for
  Expectigrad float32 = 5 reads + 4 writes, 28 B for Adam, 12 B for SGD;
  doubled for float64) and ratios against the anchors, with PASS/MISS
  lines for the targets of the benchmark issue.

Methods are measured round-robin (every repeat times every method once, in
a rotating order), so a burst of load from another process hits all
methods alike; medians and p10/p90 are reported, and every ratio also has
the spread of its per-repeat (paired) ratios. Python's garbage collector
is paused inside timed blocks (as ``timeit`` does) and run between them.

Usage::

    python scripts/benchmark.py [--quick] [--out-json F] [--out-md F]
    python -m scripts.benchmark --quick
"""

import argparse
import datetime
import gc
import json
import math
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402


def _import_package():
    """The installed expectigrad_tf; else the source tree's (in-place build)."""
    try:
        import expectigrad_tf
    except ImportError:
        sys.path.append(_ROOT)
        import expectigrad_tf
    return expectigrad_tf


SCHEMA_VERSION = 1

# ---------------------------------------------------------------- methods
# name -> (family, description, XLA?, expected Expectigrad dispatch path)
STEP_METHODS = {
    "expectigrad_fused": ("expectigrad", "Expectigrad, fused multi-tensor op", False, "fused"),
    "expectigrad_composite": ("expectigrad", "Expectigrad(fused=False), keras.ops, no XLA", False, "composite"),
    "expectigrad_composite_xla": ("expectigrad", "Expectigrad, composite ops under jit_compile=True", True, "composite-xla"),
    "keras_adam": ("adam", "keras.optimizers.Adam, no XLA", False, None),
    "keras_adam_xla": ("adam", "keras.optimizers.Adam under jit_compile=True", True, None),
    "tf_resource_apply_adam": ("adam", "tf.raw_ops.ResourceApplyAdam, one op per variable", False, None),
    "stream_sgd_reference": ("sgd", "tf.raw_ops.ResourceApplyGradientDescent (stream reference)", False, None),
}
# Minimum memory traffic per element, in units of the dtype's size:
# Expectigrad reads var, sum, count, momentum, grad and writes the first 4;
# Adam reads var, m, v, grad and writes 3; SGD reads var, grad, writes var.
ELEMENTS_MOVED = {"expectigrad": 9, "adam": 7, "sgd": 3}

ALL_F32 = list(STEP_METHODS)
F64_METHODS = ["expectigrad_fused", "tf_resource_apply_adam", "stream_sgd_reference"]
FLOOR_METHODS = ["expectigrad_fused", "tf_resource_apply_adam", "stream_sgd_reference"]

# (label, role, n_vars, size, dtype, methods)
FULL_WORKLOADS = [
    ("1x10M", "single_large", 1, 10_000_000, "float32", ALL_F32),
    ("100x100K", "medium", 100, 100_000, "float32", ALL_F32),
    ("1000x1K", "many_small", 1000, 1_000, "float32", ALL_F32),
    ("1x10M", "single_large", 1, 10_000_000, "float64", F64_METHODS),
    ("100x100K", "medium", 100, 100_000, "float64", F64_METHODS),
    ("1000x1K", "many_small", 1000, 1_000, "float64", F64_METHODS),
    # Diagnostic: same number of variables as 1000x1K, almost no elements:
    # the per-call cost (function call, 1000s of inputs, per-op dispatch).
    ("1000x1", "call_overhead_floor", 1000, 1, "float32", FLOOR_METHODS),
]
QUICK_WORKLOADS = [
    ("1x1M", "single_large", 1, 1_000_000, "float32", ALL_F32),
    ("8x25K", "medium", 8, 25_000, "float32", ALL_F32),
    ("8x1K", "many_small", 8, 1_000, "float32", ALL_F32),
    ("1x1M", "single_large", 1, 1_000_000, "float64", F64_METHODS),
    ("8x25K", "medium", 8, 25_000, "float64", F64_METHODS),
    ("8x1K", "many_small", 8, 1_000, "float64", F64_METHODS),
]

FULL_MODELS = {
    "mlp": dict(kind="mlp", inputs=784, hidden=1000, classes=10, batch=128, steps=30),
    "transformer": dict(kind="transformer", vocab=2000, seq=64, d_model=64, heads=4,
                        ff=256, layers=2, classes=2, batch=64, steps=30),
}
QUICK_MODELS = {
    "mlp": dict(kind="mlp", inputs=64, hidden=64, classes=10, batch=32, steps=4),
    "transformer": dict(kind="transformer", vocab=100, seq=8, d_model=16, heads=2,
                        ff=32, layers=1, classes=2, batch=16, steps=4),
}

# (name, kind, dtype, role, numerator, denominator, threshold, description)
# kind "time_le": median(numerator) / median(denominator) <= threshold.
# kind "speedup_ge": median(numerator) / median(denominator) >= threshold,
#   i.e. numerator is the slow one.
TARGETS = [
    ("fused_vs_resource_apply_adam", "time_le", "float32", "single_large",
     "expectigrad_fused", "tf_resource_apply_adam", 1.35,
     "fused step time <= 1.35 x ResourceApplyAdam"),
    ("fused_vs_composite", "speedup_ge", "float32", "single_large",
     "expectigrad_composite", "expectigrad_fused", 3.0,
     "fused >= 3 x faster than composite (no XLA)"),
    ("fused_vs_keras_adam_many_small", "speedup_ge", "float32", "many_small",
     "keras_adam", "expectigrad_fused", 5.0,
     "fused >= 5 x faster than keras Adam"),
    ("composite_xla_vs_keras_adam_xla", "time_le", "float32", "single_large",
     "expectigrad_composite_xla", "keras_adam_xla", 1.3,
     "XLA composite step time <= 1.3 x keras Adam under XLA"),
    ("fit_mlp_expectigrad_vs_adam", "fit_le", None, "mlp",
     "expectigrad", "adam", 1.0, "MLP model.fit step: Expectigrad no slower than Adam"),
    ("fit_transformer_expectigrad_vs_adam", "fit_le", None, "transformer",
     "expectigrad", "adam", 1.0,
     "Transformer model.fit step: Expectigrad no slower than Adam"),
]

# Ratios reported for every workload/dtype where both methods exist.
# (name, numerator, denominator, meaning)
STEP_RATIOS = [
    ("fused/resource_apply_adam", "expectigrad_fused", "tf_resource_apply_adam",
     "time ratio, fused vs TF's C++ Adam kernel (lower is better)"),
    ("composite/fused", "expectigrad_composite", "expectigrad_fused",
     "speedup of fused over composite (higher is better)"),
    ("keras_adam/fused", "keras_adam", "expectigrad_fused",
     "speedup of fused over keras Adam (higher is better)"),
    ("keras_adam_xla/fused", "keras_adam_xla", "expectigrad_fused",
     "speedup of fused over keras Adam + XLA (higher is better)"),
    ("composite_xla/keras_adam_xla", "expectigrad_composite_xla", "keras_adam_xla",
     "time ratio, XLA composite vs keras Adam + XLA (lower is better)"),
    ("fused/composite_xla", "expectigrad_fused", "expectigrad_composite_xla",
     "time ratio, fused vs XLA composite (lower is better)"),
]


# ------------------------------------------------------------------ stats
def summarize(samples):
    """Robust summary of a list of seconds, reported in milliseconds."""
    a = np.asarray(samples, dtype=np.float64) * 1e3
    q = np.percentile(a, [10, 25, 50, 75, 90])
    return {
        "n": int(a.size),
        "median_ms": float(q[2]),
        "p10_ms": float(q[0]),
        "p25_ms": float(q[1]),
        "p75_ms": float(q[3]),
        "p90_ms": float(q[4]),
        "min_ms": float(a.min()),
        "mean_ms": float(a.mean()),
    }


def paired_ratio(num, den):
    """Ratio of medians, plus the spread of the per-repeat ratios."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = {"ratio": float(np.median(num) / np.median(den))}
    n = min(num.size, den.size)
    if n:
        r = num[:n] / den[:n]
        p = np.percentile(r, [10, 50, 90])
        out.update(paired_median=float(p[1]), paired_p10=float(p[0]), paired_p90=float(p[2]))
    return out


# --------------------------------------------------------------- machine
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_ids():
    """family / model / stepping / cache size from /proc/cpuinfo (first CPU)."""
    out = {}
    keys = {"cpu family": "family", "model": "model", "stepping": "stepping",
            "cache size": "cache_size"}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                k, _, v = line.partition(":")
                if k.strip() in keys:
                    out[keys[k.strip()]] = v.strip()
    except OSError:
        pass
    return out


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [x for x in ("sse4_2", "avx", "avx2", "fma", "avx512f") if x in flags]
    except OSError:
        pass
    return []


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def fused_build_info(status):
    """Which op library was measured: build info, a hash, the source state."""
    import hashlib
    import subprocess

    info = dict(status.get("build_info") or {})
    try:
        with open(status["library"], "rb") as f:
            info["library_sha256"] = hashlib.sha256(f.read()).hexdigest()[:16]
    except (OSError, KeyError, TypeError):
        info["library_sha256"] = None
    try:  # read-only git queries
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT,
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "csrc",
                                "expectigrad_tf"], cwd=_ROOT, capture_output=True,
                               text=True, timeout=10)
        info["git_head"] = head.stdout.strip() or None
        info["sources_modified"] = sorted(
            line[3:] for line in dirty.stdout.splitlines() if line.strip()) if head.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        info["git_head"] = None
        info["sources_modified"] = None
    return info


def machine_info(tf, keras, args):
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    from expectigrad_tf import _ops

    status = _ops.fused_status()
    return {
        "fused_op_build": fused_build_info(status),
        "date": args.date or datetime.date.today().isoformat(),
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_ids": cpu_ids(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "intra_op_threads_setting": intra,
        # 0 means TensorFlow's default: one thread per usable core.
        "intra_op_threads": intra if intra > 0 else affinity,
        "inter_op_threads_setting": inter,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fused_op_available": bool(status["available"]),
        "fused_op_reason": status["reason"],
        "load_average_start": load_average(),
        "quick": bool(args.quick),
        "repeats": args.repeats,
        "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
        if sys.argv and sys.argv[0] else "python -m scripts.benchmark",
    }


# ---------------------------------------------------------- step benches
class StepBench:
    """One method on one workload: variables, optimizer state, a traced step."""

    def __init__(self, method, shapes, dtype, grads, seed):
        import keras
        import tensorflow as tf

        self.method = method
        family, self.description, self.xla, self.expected_path = STEP_METHODS[method]
        self.family = family
        self.dtype = dtype
        self.dispatch = None
        rng = np.random.default_rng(seed)
        init = [rng.standard_normal(s).astype(dtype) * 0.1 for s in shapes]
        self._opt = None
        if method.startswith("expectigrad") or method.startswith("keras_adam"):
            from expectigrad_tf import Expectigrad

            self.vars = [keras.Variable(v, dtype=dtype, name=f"w{i}") for i, v in enumerate(init)]
            if method == "expectigrad_fused":
                opt = Expectigrad(learning_rate=1e-3, fused=True)
            elif method == "expectigrad_composite":
                opt = Expectigrad(learning_rate=1e-3, fused=False)
            elif method == "expectigrad_composite_xla":
                opt = Expectigrad(learning_rate=1e-3)
            else:
                opt = keras.optimizers.Adam(learning_rate=1e-3)
            opt.build(self.vars)
            self._opt = opt
            variables = self.vars

            def step():
                opt.apply(grads, variables)

            self._last = self.vars[-1].value
        elif method == "tf_resource_apply_adam":
            self.vars = [tf.Variable(v) for v in init]
            ms = [tf.Variable(tf.zeros_like(v)) for v in self.vars]
            vs = [tf.Variable(tf.zeros_like(v)) for v in self.vars]
            t = tf.Variable(0, dtype=tf.int64)
            tfd = tf.as_dtype(dtype)
            lr, b1, b2, eps = (tf.constant(x, tfd) for x in (1e-3, 0.9, 0.999, 1e-7))
            variables = self.vars

            def step():
                tt = tf.cast(t.assign_add(1), tfd)
                b1p, b2p = tf.pow(b1, tt), tf.pow(b2, tt)
                for v, m, s, g in zip(variables, ms, vs, grads):
                    tf.raw_ops.ResourceApplyAdam(
                        var=v.handle, m=m.handle, v=s.handle, beta1_power=b1p,
                        beta2_power=b2p, lr=lr, beta1=b1, beta2=b2, epsilon=eps, grad=g)

            self._last = self.vars[-1]
        elif method == "stream_sgd_reference":
            self.vars = [tf.Variable(v) for v in init]
            alpha = tf.constant(1e-3, tf.as_dtype(dtype))
            variables = self.vars

            def step():
                for v, g in zip(variables, grads):
                    tf.raw_ops.ResourceApplyGradientDescent(var=v.handle, alpha=alpha, delta=g)

            self._last = self.vars[-1]
        else:  # pragma: no cover
            raise ValueError(method)
        self._step = tf.function(step, jit_compile=self.xla, autograph=False)
        self._tf = tf

    def sync(self):
        """Forces completion: reads one element of the last variable."""
        tf = self._tf
        return float(tf.reshape(self._last, [-1])[0].numpy())

    def first_call(self):
        """Traces (and XLA-compiles) the step; returns seconds, records dispatch."""
        t0 = time.perf_counter()
        self._step()
        self.sync()
        dt = time.perf_counter() - t0
        if self.method.startswith("expectigrad"):
            paths = sorted({p for p, _ in self._opt.dispatch_report().values()})
            self.dispatch = ",".join(paths)
            if paths != [self.expected_path]:
                raise RuntimeError(
                    f"{self.method}: expected dispatch path {self.expected_path!r}, "
                    f"got {paths}: {self._opt.dispatch_report()}")
        return dt

    def run_block(self, n):
        """Seconds per step over n steps, synced at the end; GC paused."""
        gc.disable()
        try:
            t0 = time.perf_counter()
            for _ in range(n):
                self._step()
            value = self.sync()
            dt = time.perf_counter() - t0
        finally:
            gc.enable()
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.method}: non-finite variable value {value}")
        return dt / n


def bench_workload(label, role, n_vars, size, dtype, methods, cfg, log):
    import tensorflow as tf

    shapes = [(size,)] * n_vars
    rng = np.random.default_rng(cfg["seed"])
    # Shared read-only gradients; ~1 in 10 entries exactly zero, as with
    # ReLU networks, so the sparse counter really has work to do.
    grads = []
    for s in shapes:
        g = rng.standard_normal(s).astype(dtype) * 0.01
        g[rng.random(s) < 0.1] = 0
        grads.append(tf.constant(g))
    benches, trace_s = {}, {}
    for k, m in enumerate(methods):
        b = StepBench(m, shapes, dtype, grads, cfg["seed"] + k + 1)
        trace_s[m] = b.first_call()
        benches[m] = b
        log(f"  [{dtype} {label}] {m}: traced in {trace_s[m]:.1f}s")
    # Warm-up, and a per-method block size giving ~target_block seconds.
    inner = {}
    for m, b in benches.items():
        est = min(b.run_block(1) for _ in range(cfg["warmup"]))
        inner[m] = int(min(cfg["max_inner"], max(1, round(cfg["target_block"] / max(est, 1e-6)))))
    samples = {m: [] for m in methods}
    for r in range(cfg["repeats"]):
        gc.collect(1)
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        for m in order:
            samples[m].append(benches[m].run_block(inner[m]))
    rows = []
    elements = n_vars * size
    itemsize = np.dtype(dtype).itemsize
    for m in methods:
        b = benches[m]
        st = summarize(samples[m])
        bpe = ELEMENTS_MOVED[b.family] * itemsize
        rows.append({
            "dtype": dtype, "workload": label, "role": role, "n_vars": n_vars,
            "size": size, "elements": elements, "method": m, "family": b.family,
            "description": b.description, "xla": b.xla, "dispatch": b.dispatch,
            "bytes_per_element": bpe, "inner_steps": inner[m],
            "trace_s": trace_s[m], "stats": st,
            "bandwidth_gbs": bpe * elements / (st["median_ms"] * 1e-3) / 1e9,
            "samples_s": samples[m],
        })
        log(f"  [{dtype} {label}] {m:28s} median {st['median_ms']:9.3f} ms "
            f"(p10 {st['p10_ms']:.3f}, p90 {st['p90_ms']:.3f}) "
            f"{rows[-1]['bandwidth_gbs']:6.2f} GB/s")
    del benches, grads
    gc.collect()
    return rows


# ---------------------------------------------------------- model benches
def build_model(spec, seed):
    import keras

    keras.utils.set_random_seed(seed)
    if spec["kind"] == "mlp":
        return keras.Sequential([
            keras.Input((spec["inputs"],)),
            keras.layers.Dense(spec["hidden"], activation="relu"),
            keras.layers.Dense(spec["hidden"], activation="relu"),
            keras.layers.Dense(spec["classes"]),
        ])

    class AddPosition(keras.layers.Layer):
        """Adds a learned position embedding."""

        def build(self, input_shape):
            self.pos = self.add_weight(shape=tuple(input_shape[1:]),
                                       initializer="random_normal", name="position")

        def call(self, x):
            return x + self.pos

    seq, d = spec["seq"], spec["d_model"]
    tokens = keras.Input((seq,), dtype="int32")
    x = keras.layers.Embedding(spec["vocab"], d)(tokens)
    x = AddPosition()(x)
    for _ in range(spec["layers"]):
        a = keras.layers.MultiHeadAttention(spec["heads"], d // spec["heads"])(x, x)
        x = keras.layers.LayerNormalization()(x + a)
        f = keras.layers.Dense(spec["ff"], activation="relu")(x)
        f = keras.layers.Dense(d)(f)
        x = keras.layers.LayerNormalization()(x + f)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, keras.layers.Dense(spec["classes"])(x))


def model_data(spec, seed):
    rng = np.random.default_rng(seed)
    n = spec["batch"] * spec["steps"]
    if spec["kind"] == "mlp":
        x = rng.standard_normal((n, spec["inputs"])).astype("float32")
    else:
        x = rng.integers(0, spec["vocab"], (n, spec["seq"])).astype("int32")
    y = rng.integers(0, spec["classes"], (n,)).astype("int32")
    return x, y


def bench_model(name, spec, cfg, log):
    import keras

    from expectigrad_tf import Expectigrad

    x, y = model_data(spec, cfg["seed"])
    base = build_model(spec, cfg["seed"])
    weights = base.get_weights()
    runs = {}
    for opt_name, make in (("expectigrad", lambda: Expectigrad(learning_rate=1e-3)),
                           ("adam", lambda: keras.optimizers.Adam(learning_rate=1e-3))):
        model = build_model(spec, cfg["seed"])
        model.set_weights(weights)
        opt = make()
        model.compile(optimizer=opt, jit_compile=False,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        timer = _StepTimer()
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=spec["batch"], epochs=1, shuffle=False, verbose=0)
        first = time.perf_counter() - t0
        dispatch = None
        if opt_name == "expectigrad":
            counts = {}
            for path, _ in opt.dispatch_report().values():
                counts[path] = counts.get(path, 0) + 1
            dispatch = counts
        runs[opt_name] = dict(model=model, timer=timer, first_epoch_s=first,
                              dispatch=dispatch, samples=[], repeat_medians=[])
        log(f"  [{name}] {opt_name}: first epoch (traces the step) {first:.1f}s")
    order = list(runs)
    for r in range(cfg["model_repeats"]):
        for opt_name in (order if r % 2 == 0 else order[::-1]):
            run = runs[opt_name]
            run["timer"].times = []
            gc.collect(1)
            gc.disable()
            try:
                run["model"].fit(x, y, batch_size=spec["batch"], epochs=1, shuffle=False,
                                 verbose=0, callbacks=[run["timer"]])
            finally:
                gc.enable()
            run["samples"].extend(run["timer"].times)
            run["repeat_medians"].append(float(np.median(run["timer"].times)))
    rows = []
    for opt_name, run in runs.items():
        st = summarize(run["samples"])
        losses = run["model"].history.history.get("loss", [float("nan")])
        rows.append({
            "model": name, "optimizer": opt_name, "params": int(run["model"].count_params()),
            "batch": spec["batch"], "steps_per_epoch": spec["steps"], "spec": spec,
            "first_epoch_s": run["first_epoch_s"], "dispatch": run["dispatch"],
            "stats": st, "repeat_medians_s": run["repeat_medians"],
            "final_loss": float(losses[-1]),
        })
        log(f"  [{name}] {opt_name:12s} median {st['median_ms']:8.3f} ms/step "
            f"(p10 {st['p10_ms']:.3f}, p90 {st['p90_ms']:.3f}), n={st['n']}")
    return rows


class _StepTimer:
    """Keras callback: wall time of each train step (train_function call)."""

    def __new__(cls):
        import keras

        class StepTimer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times = []
                self._t0 = None

            def on_train_batch_begin(self, batch, logs=None):
                self._t0 = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                self.times.append(time.perf_counter() - self._t0)

        return StepTimer()


# ---------------------------------------------------------------- ratios
def _find(rows, dtype, role, method):
    for r in rows:
        if r["dtype"] == dtype and r["role"] == role and r["method"] == method:
            return r
    return None


def compute_ratios(step_rows):
    out = []
    keys = []
    for r in step_rows:
        k = (r["dtype"], r["workload"], r["role"])
        if k not in keys:
            keys.append(k)
    for dtype, label, role in keys:
        for name, num, den, meaning in STEP_RATIOS:
            a, b = _find(step_rows, dtype, role, num), _find(step_rows, dtype, role, den)
            if a is None or b is None:
                continue
            entry = {"name": name, "dtype": dtype, "workload": label, "role": role,
                     "numerator": num, "denominator": den, "meaning": meaning}
            entry.update(paired_ratio(a["samples_s"], b["samples_s"]))
            out.append(entry)
        f, s = _find(step_rows, dtype, role, "expectigrad_fused"), _find(
            step_rows, dtype, role, "stream_sgd_reference")
        # Only where the step is memory-bound; with many small variables the
        # per-call cost dominates and "bandwidth" means little.
        if f is not None and s is not None and role in ("single_large", "medium"):
            out.append({
                "name": "fused_bandwidth/stream_bandwidth", "dtype": dtype, "workload": label,
                "role": role, "numerator": "expectigrad_fused",
                "denominator": "stream_sgd_reference",
                "meaning": "fused effective GB/s / stream_sgd_reference GB/s "
                           "(>= 1: as fast per byte as TF's simplest streaming kernel)",
                "ratio": f["bandwidth_gbs"] / s["bandwidth_gbs"],
            })
    return out


def evaluate_targets(step_rows, model_rows):
    out = []
    for name, kind, dtype, role, num, den, thr, desc in TARGETS:
        entry = {"name": name, "description": desc, "threshold": thr, "role": role,
                 "dtype": dtype, "numerator": num, "denominator": den}
        if kind == "fit_le":
            a = [r for r in model_rows if r["model"] == role and r["optimizer"] == num]
            b = [r for r in model_rows if r["model"] == role and r["optimizer"] == den]
            if not a or not b:
                entry.update(status="SKIP", ratio=None, workload=role)
                out.append(entry)
                continue
            ratio = a[0]["stats"]["median_ms"] / b[0]["stats"]["median_ms"]
            pr = paired_ratio(a[0]["repeat_medians_s"], b[0]["repeat_medians_s"])
            entry.update(workload=role, ratio=ratio, comparison="<=",
                         paired_p10=pr.get("paired_p10"), paired_p90=pr.get("paired_p90"),
                         status="PASS" if ratio <= thr else "MISS")
        else:
            a, b = _find(step_rows, dtype, role, num), _find(step_rows, dtype, role, den)
            if a is None or b is None:
                entry.update(status="SKIP", ratio=None, workload=None)
                out.append(entry)
                continue
            pr = paired_ratio(a["samples_s"], b["samples_s"])
            ratio = pr["ratio"]
            entry.update(workload=a["workload"], ratio=ratio,
                         paired_p10=pr.get("paired_p10"), paired_p90=pr.get("paired_p90"))
            if kind == "time_le":
                entry.update(comparison="<=", status="PASS" if ratio <= thr else "MISS")
            else:
                entry.update(comparison=">=", status="PASS" if ratio >= thr else "MISS")
        out.append(entry)
    return out


# -------------------------------------------------------------- markdown
def _f(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "nan"
    return f"{x:.{nd}f}"


def to_markdown(res):
    meta = res["meta"]
    lines = []
    w = lines.append
    w(f"Machine: {meta['cpu_model']} ({meta['logical_cpus']} logical CPUs, "
      f"{meta['usable_cpus']} usable; intra-op threads {meta['intra_op_threads']}"
      f"{' (TF default)' if meta['intra_op_threads_setting'] == 0 else ''}); "
      f"ISA flags: {', '.join(meta['cpu_flags']) or '-'}.  ")
    w(f"Software: TensorFlow {meta['tensorflow']}, Keras {meta['keras']}, NumPy "
      f"{meta['numpy']}, Python {meta['python']}. Date: {meta['date']}. "
      f"Load average at start/end: {meta['load_average_start']} / {meta.get('load_average_end')}.  ")
    w(f"Command: `{meta['command']}`{' (quick mode: small sizes, few repeats)' if meta['quick'] else ''}; "
      f"{meta['repeats']} round-robin repeats per workload.")
    w("")
    w("### Optimizer step time (precomputed gradients, `opt.apply` in a `tf.function`)")
    w("")
    w("Median, p10 and p90 over repeats, in milliseconds per step; GB/s = "
      "minimum bytes moved per element (Expectigrad 9, Adam 7, SGD 3 x dtype size) x "
      "elements / median time.")
    w("")
    w("| dtype | workload | method | median ms | p10 ms | p90 ms | GB/s | vs ResourceApplyAdam |")
    w("|---|---|---|---:|---:|---:|---:|---:|")
    rows = res["step"]
    for r in rows:
        anchor = _find(rows, r["dtype"], r["role"], "tf_resource_apply_adam")
        rel = r["stats"]["median_ms"] / anchor["stats"]["median_ms"] if anchor else None
        st = r["stats"]
        w(f"| {r['dtype']} | {r['workload']} | {r['method']} | {_f(st['median_ms'])} | "
          f"{_f(st['p10_ms'])} | {_f(st['p90_ms'])} | {r['bandwidth_gbs']:.3g} | "
          f"{_f(rel, 2)}x |")
    w("")
    w("### Ratios (same run; ratio of medians, and p10-p90 of the per-repeat paired ratios)")
    w("")
    w("| dtype | workload | ratio | value | paired p10-p90 | meaning |")
    w("|---|---|---|---:|---:|---|")
    for q in res["ratios"]:
        band = (f"{_f(q['paired_p10'], 2)}-{_f(q['paired_p90'], 2)}"
                if q.get("paired_p10") is not None else "-")
        w(f"| {q['dtype']} | {q['workload']} | {q['name']} | {_f(q['ratio'], 2)} | {band} | "
          f"{q['meaning']} |")
    w("")
    if res["model"]:
        w("### model.fit, seconds per step (steady state; first epoch excluded)")
        w("")
        w("| model | params | batch | optimizer | median ms/step | p10 | p90 | steps timed | "
          "Expectigrad dispatch |")
        w("|---|---:|---:|---|---:|---:|---:|---:|---|")
        for r in res["model"]:
            st = r["stats"]
            disp = (", ".join(f"{k}: {v}" for k, v in sorted(r["dispatch"].items()))
                    if r["dispatch"] else "-")
            w(f"| {r['model']} | {r['params']:,} | {r['batch']} | {r['optimizer']} | "
              f"{_f(st['median_ms'])} | {_f(st['p10_ms'])} | {_f(st['p90_ms'])} | {st['n']} | "
              f"{disp} |")
        w("")
    w("### Targets")
    w("")
    w("| target | workload | ratio | paired p10-p90 | threshold | result |")
    w("|---|---|---:|---:|---:|---|")
    for t in res["targets"]:
        band = (f"{_f(t.get('paired_p10'), 2)}-{_f(t.get('paired_p90'), 2)}"
                if t.get("paired_p10") is not None else "-")
        w(f"| {t['description']} | {t.get('workload') or '-'} | {_f(t['ratio'], 2)} | {band} | "
          f"{t.get('comparison', '')} {t['threshold']} | **{t['status']}** |")
    w("")
    return "\n".join(lines)


def target_lines(targets):
    out = []
    for t in targets:
        if t["ratio"] is None:
            out.append(f"SKIP {t['name']}: not measured")
            continue
        out.append(f"{t['status']} {t['name']}: {t['description']} "
                   f"[{t.get('workload')}: {t['ratio']:.2f} {t['comparison']} {t['threshold']}]")
    return out


# ------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small sizes and few repeats (well under a minute)")
    p.add_argument("--out-json", default=os.path.join("runs", "benchmark.json"))
    p.add_argument("--out-md", default=os.path.join("runs", "benchmark.md"))
    p.add_argument("--repeats", type=int, default=None,
                   help="round-robin repeats per workload (default 21, quick 5)")
    p.add_argument("--model-repeats", type=int, default=None,
                   help="alternating fit epochs per optimizer (default 7, quick 2)")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="TensorFlow intra-op threads (0: TF default, one per core)")
    p.add_argument("--skip-models", action="store_true", help="no model.fit benchmarks")
    p.add_argument("--workloads", default=None,
                   help="comma-separated dtype:label filter, e.g. float32:1x10M")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--date", default=None, help="date to record (default: today)")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="measure nothing: re-render the Markdown (and re-evaluate ratios "
                        "and targets) from a JSON file this script wrote")
    return p.parse_args(argv)


def _finish(res, args, quick):
    md = to_markdown(res)
    for path, text in ((args.out_json, json.dumps(res, indent=1) + "\n"), (args.out_md, md + "\n")):
        if path:
            d = os.path.dirname(os.path.abspath(path))
            os.makedirs(d, exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    print("\n" + md, flush=True)
    print("## targets" + (" (quick mode: small sizes, not the target workloads)"
                          if quick else ""))
    for line in target_lines(res["targets"]):
        print(line)
    written = [p for p in (args.out_json, args.out_md) if p]
    print("wrote " + (" and ".join(written) if written else "nothing"), flush=True)
    return res


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            res = json.load(f)
        res["ratios"] = compute_ratios(res["step"])
        res["targets"] = evaluate_targets(res["step"], res["model"])
        if os.path.abspath(args.out_json or "") == os.path.abspath(args.from_json):
            args.out_json = None  # never overwrite the measurements themselves
        return _finish(res, args, res["meta"].get("quick", False))
    if args.repeats is None:
        args.repeats = 5 if args.quick else 21
    if args.model_repeats is None:
        args.model_repeats = 2 if args.quick else 7
    if args.repeats < 1 or args.model_repeats < 1:
        sys.exit("--repeats and --model-repeats must be >= 1")

    import tensorflow as tf

    if args.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    import keras

    _import_package()
    from expectigrad_tf import _ops

    if keras.backend.backend() != "tensorflow":
        sys.exit("benchmark needs KERAS_BACKEND=tensorflow")
    if _ops.unavailable_reason() is not None:
        sys.exit(f"the fused op is unavailable: {_ops.unavailable_reason()}")

    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}" if msg else "", flush=True)

    tf.get_logger().setLevel("ERROR")  # retracing notes: many step functions by design
    meta = machine_info(tf, keras, args)
    log(f"# Expectigrad benchmark: {meta['cpu_model']}, {meta['usable_cpus']} usable CPUs, "
        f"intra-op threads {meta['intra_op_threads']}, TF {meta['tensorflow']}, {meta['date']}")
    cfg = dict(
        seed=args.seed, repeats=args.repeats, model_repeats=args.model_repeats,
        warmup=2 if args.quick else 3,
        target_block=0.02 if args.quick else 0.25,
        max_inner=10 if args.quick else 50,
    )
    workloads = QUICK_WORKLOADS if args.quick else FULL_WORKLOADS
    if args.workloads:
        keep = {w.strip() for w in args.workloads.split(",") if w.strip()}
        workloads = [w for w in workloads if f"{w[4]}:{w[0]}" in keep]
    step_rows = []
    for label, role, n_vars, size, dtype, methods in workloads:
        log(f"## step: {dtype} {label} ({n_vars} x {size:,})")
        step_rows += bench_workload(label, role, n_vars, size, dtype, methods, cfg, log)
    model_rows = []
    if not args.skip_models:
        models = QUICK_MODELS if args.quick else FULL_MODELS
        for name, spec in models.items():
            log(f"## model.fit: {name}")
            model_rows += bench_model(name, spec, cfg, log)
    meta["load_average_end"] = load_average()
    meta["wall_s"] = round(time.perf_counter() - t_start, 1)
    res = {
        "schema_version": SCHEMA_VERSION,
        "meta": meta,
        "methods": {k: {"family": v[0], "description": v[1], "xla": v[2]}
                    for k, v in STEP_METHODS.items()},
        "step": step_rows,
        "ratios": compute_ratios(step_rows),
        "model": model_rows,
    }
    res["targets"] = evaluate_targets(step_rows, model_rows)
    print(f"measured in {meta['wall_s']}s")
    return _finish(res, args, args.quick)


if __name__ == "__main__":
    main()
