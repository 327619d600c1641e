"""Optimizer-step timings on Keras 3's JAX backend (no TensorFlow needed).

    KERAS_BACKEND=jax python -m expectigrad_experiments.benchmark.keras_backend \\
        [--workloads 1x10M,1000x1K] [--repeats 15] [--quick]

One step is ``optimizer.stateless_apply`` under ``jax.jit`` with the optimizer
and model variables donated, as Keras's JAX trainer runs it. Per workload (float32,
``n`` variables of ``size`` elements, the same gradients for every method)
it prints the median step time of:

* ``expectigrad``: the default, the fused kernel (XLA custom call);
* ``expectigrad_composite``: ``fused=False``, the ``keras.ops`` update;
* ``keras_adam``: Keras's Adam, the baseline,

and the ratios of the medians against Keras Adam measured in the same run,
with the 10th-90th percentiles of the per-repeat ratios (methods interleaved
repeat by repeat, so drifting load hits all of them alike).
"""

import argparse
import functools
import os
import sys
import time

import numpy as np

from .report import paired_ratio, summarize

WORKLOADS = {"1x10M": (1, 10_000_000), "1000x1K": (1000, 1000), "1x1M": (1, 1_000_000),
             "8x1K": (8, 1000)}
METHODS = ("expectigrad", "expectigrad_composite", "keras_adam")


def _optimizer(method):
    import keras

    from expectigrad_tf import Expectigrad

    if method == "keras_adam":
        return keras.optimizers.Adam(learning_rate=1e-3)
    return Expectigrad(learning_rate=1e-3, fused=None if method == "expectigrad" else False)


class _Step:
    """One method's jitted, donating step on its own copies of the variables."""

    def __init__(self, method, n, size, grads):
        import jax
        import keras

        rng = np.random.default_rng(1)
        self.vars = [keras.Variable(rng.standard_normal(size).astype(np.float32))
                     for _ in range(n)]
        self.opt = _optimizer(method)
        self.opt.build(self.vars)
        self.grads = grads
        opt = self.opt

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def step(opt_values, var_values, grads):
            new_vars, new_opt = opt.stateless_apply(opt_values, grads, var_values)
            return new_opt, new_vars

        self._step = step
        self.opt_values = [v.value for v in opt.variables]
        self.var_values = [v.value for v in self.vars]

    def run(self):
        import jax

        t = time.perf_counter()
        self.opt_values, self.var_values = self._step(self.opt_values, self.var_values,
                                                      self.grads)
        jax.block_until_ready((self.opt_values, self.var_values))
        return time.perf_counter() - t

    def report(self):
        if hasattr(self.opt, "dispatch_report"):
            for v, value in zip(self.opt.variables, self.opt_values):
                v.assign(value)
            return sorted({p for p, _ in self.opt.dispatch_report().values()})
        return None


def measure(workloads, repeats, warmup=3):
    import jax.numpy as jnp

    rows, ratios = [], []
    for label in workloads:
        n, size = WORKLOADS[label]
        rng = np.random.default_rng(0)
        grads = [jnp.asarray(rng.standard_normal(size).astype(np.float32)) for _ in range(n)]
        steps = {m: _Step(m, n, size, grads) for m in METHODS}
        samples = {m: [] for m in METHODS}
        for _ in range(warmup):
            for s in steps.values():
                s.run()
        for _ in range(repeats):
            for m, s in steps.items():
                samples[m].append(s.run())
        for m in METHODS:
            rows.append({"workload": label, "method": m, "paths": steps[m].report(),
                         "stats": summarize(samples[m])})
        for m in METHODS[:2]:
            ratios.append({"workload": label, "name": f"{m}/keras_adam",
                           **paired_ratio(samples[m], samples["keras_adam"])})
        del steps
    return rows, ratios


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m expectigrad_experiments.benchmark.keras_backend",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="1x10M,1000x1K",
                   help=f"comma-separated, of {', '.join(WORKLOADS)} (default %(default)s)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="8x1K, 3 repeats (a smoke test)")
    args = p.parse_args(argv)
    import keras

    if keras.backend.backend() != "jax":
        p.error(f"run with KERAS_BACKEND=jax (the Keras backend is {keras.backend.backend()!r})")
    workloads = ["8x1K"] if args.quick else [w.strip() for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"--workloads: unknown workload {w!r} (known: {', '.join(WORKLOADS)})")
    repeats = 3 if args.quick else args.repeats
    if repeats < 1:
        p.error(f"--repeats must be >= 1, got {repeats}")
    import jax

    print(f"# Keras {keras.__version__} on JAX {jax.__version__} ({jax.default_backend()}), "
          f"{os.cpu_count()} logical CPUs, {repeats} repeats; float32")
    rows, ratios = measure(workloads, repeats)
    print("| workload | method | paths | median ms | p10-p90 ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        s = r["stats"]
        print(f"| {r['workload']} | {r['method']} | {','.join(r['paths'] or ['-'])} | "
              f"{s['median_ms']:.3f} | {s['p10_ms']:.3f}-{s['p90_ms']:.3f} |")
    print()
    for q in ratios:
        print(f"- {q['workload']} {q['name']}: {q['ratio']:.2f}x (paired p10-p90 "
              f"{q['paired_p10']:.2f}-{q['paired_p90']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
