"""What the benchmark measures, and the measurement loops.

* optimizer-step workloads (``FULL_WORKLOADS`` / ``QUICK_WORKLOADS``):
  (label, role, number of variables, elements each, dtype, methods), with
  shared precomputed gradients, timed round-robin by ``bench_workload``;
* model.fit workloads (``FULL_MODELS`` / ``QUICK_MODELS``): a 2x1000 ReLU
  MLP and a small Transformer encoder classifier (``build_model``,
  ``model_data``), Expectigrad vs Adam from the same initial weights, timed
  by ``bench_model``.
"""

import gc
import time

import numpy as np

from .backends import (ELEMENTS_MOVED, STEP_METHODS, StepBench, StepTimer,
                       model_optimizers, round_robin)
from .report import summarize

__all__ = ["ALL_F32", "F64_METHODS", "FLOOR_METHODS", "FULL_WORKLOADS", "QUICK_WORKLOADS",
           "FULL_MODELS", "QUICK_MODELS", "bench_workload", "build_model", "model_data",
           "bench_model"]

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
    samples, inner = round_robin(benches, cfg)
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

    x, y = model_data(spec, cfg["seed"])
    base = build_model(spec, cfg["seed"])
    weights = base.get_weights()
    runs = {}
    for opt_name, make in model_optimizers():
        model = build_model(spec, cfg["seed"])
        model.set_weights(weights)
        opt = make()
        model.compile(optimizer=opt, jit_compile=False,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        timer = StepTimer()
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
