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
  doubled for float64) and ratios against the anchors; the output ends
  with a summary of this machine's numbers (medians, and how Expectigrad
  compares with each baseline). ``--targets`` adds the PASS / MISS
  evaluation of the project's own targets (docs/BENCHMARKS.md).

Methods are measured round-robin (every repeat times every method once, in
a rotating order), so a burst of load from another process hits all
methods alike; medians and p10/p90 are reported, and every ratio also has
the spread of its per-repeat (paired) ratios. Python's garbage collector
is paused inside timed blocks (as ``timeit`` does) and run between them.

``--sparse`` measures instead one optimizer step on a large embedding table
(1M x 64 float32, 256 touched rows; ``tf.IndexedSlices`` gradients): the lazy
sparse path (``Expectigrad(lazy_sparse=True)``) against the exact one (see
``benchmark.sparse``); its output goes to runs/benchmark_sparse.{json,md}.

Usage::

    expectigrad-benchmark [--quick] [--sparse] [--out-json F] [--out-md F]
    python -m expectigrad_experiments.benchmark --quick

The modules of this package: ``backends`` (how each method is set up and
timed), ``workloads`` (what is measured, the measurement loops), ``report``
(medians, ratios, targets, JSON / Markdown), ``cli`` (this command line).
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from .backends import STEP_METHODS  # noqa: E402
from .report import (SCHEMA_VERSION, compute_ratios, evaluate_targets, finish,  # noqa: E402
                     load_average, machine_info)
from .sparse import FULL_SPARSE, QUICK_SPARSE, bench_sparse, sparse_to_markdown  # noqa: E402
from .workloads import (FULL_MODELS, FULL_WORKLOADS, QUICK_MODELS,  # noqa: E402
                        QUICK_WORKLOADS, bench_model, bench_workload)


# ------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="expectigrad-benchmark",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small sizes and few repeats (well under a minute)")
    p.add_argument("--sparse", action="store_true",
                   help="measure only the embedding-table step: lazy vs exact sparse path")
    p.add_argument("--out-json", default=None,
                   help="default runs/benchmark.json (runs/benchmark_sparse.json with --sparse)")
    p.add_argument("--out-md", default=None,
                   help="default runs/benchmark.md (runs/benchmark_sparse.md with --sparse)")
    p.add_argument("--repeats", type=int, default=None,
                   help="round-robin repeats per workload (default 21, quick 5)")
    p.add_argument("--model-repeats", type=int, default=None,
                   help="alternating fit epochs per optimizer (default 7, quick 2)")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="TensorFlow intra-op threads (0: TF default, one per core)")
    p.add_argument("--skip-models", action="store_true", help="no model.fit benchmarks")
    p.add_argument("--workloads", default=None,
                   help="comma-separated dtype:label filter, e.g. float32:1x10M")
    p.add_argument("--targets", action="store_true",
                   help="also evaluate the project's performance targets (PASS / MISS, "
                        "docs/BENCHMARKS.md): goals of its development machine, not a "
                        "verdict on yours")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--date", default=None, help="date to record (default: today)")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="measure nothing: re-render the Markdown (and re-evaluate ratios "
                        "and targets) from a JSON file this command wrote")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded as the command
    stem = "benchmark_sparse" if args.sparse else "benchmark"
    if args.out_json is None:
        args.out_json = os.path.join("runs", stem + ".json")
    if args.out_md is None:
        args.out_md = os.path.join("runs", stem + ".md")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            res = json.load(f)
        if os.path.abspath(args.out_json or "") == os.path.abspath(args.from_json):
            args.out_json = None  # never overwrite the measurements themselves
        if "sparse" in res:
            return finish_sparse(res, args)
        res["ratios"] = compute_ratios(res["step"])
        res["targets"] = evaluate_targets(res["step"], res["model"])
        return finish(res, args, res["meta"].get("quick", False))
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

    from expectigrad_tf import _ops

    if keras.backend.backend() != "tensorflow":
        sys.exit("benchmark needs KERAS_BACKEND=tensorflow")
    if args.sparse:
        return main_sparse(args, tf, keras)
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
    return finish(res, args, args.quick)


def main_sparse(args, tf, keras):
    """``--sparse``: the lazy vs exact sparse step (``benchmark.sparse``)."""
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    tf.get_logger().setLevel("ERROR")
    meta = machine_info(tf, keras, args)
    spec = QUICK_SPARSE if args.quick else FULL_SPARSE
    log(f"# Expectigrad sparse benchmark: {meta['cpu_model']}, {meta['usable_cpus']} usable "
        f"CPUs, TF {meta['tensorflow']}, {meta['date']}")
    cfg = dict(seed=args.seed, repeats=args.repeats, warmup=2 if args.quick else 3,
               target_block=0.02 if args.quick else 0.5, max_inner=10 if args.quick else 200)
    sparse = bench_sparse(spec, cfg, log)
    meta["load_average_end"] = sparse.pop("load_average_end")
    meta["wall_s"] = round(time.perf_counter() - t_start, 1)
    res = {"schema_version": SCHEMA_VERSION, "meta": meta, "sparse": sparse}
    print(f"measured in {meta['wall_s']}s")
    return finish_sparse(res, args)


def finish_sparse(res, args):
    """Writes and prints a ``--sparse`` result; the target line only with
    ``--targets``."""
    targets = bool(getattr(args, "targets", False))
    md = sparse_to_markdown(res, targets)
    for path, text in ((args.out_json, json.dumps(res, indent=1) + "\n"), (args.out_md, md + "\n")):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    print("\n" + md, flush=True)
    if targets:
        t = res["sparse"]["target"]
        print("## targets" + (" (quick mode: small sizes, not the target workload)"
                              if res["meta"].get("quick") else ""))
        print(f"{t['status']} {t['name']}: {t['description']} "
              f"[{t['workload']}: {t['ratio']:.2f} {t['comparison']} {t['threshold']}]")
    written = [p for p in (args.out_json, args.out_md) if p]
    print("wrote " + (" and ".join(written) if written else "nothing"), flush=True)
    return res


def console_main():
    """The ``expectigrad-benchmark`` command (exit status 0)."""
    main()
    return 0


if __name__ == "__main__":
    main()
