"""The benchmark's numbers: medians, ratios, targets, machine metadata, and
the JSON / Markdown output.

``summarize`` and ``paired_ratio`` reduce timing samples; ``compute_ratios``
(``STEP_RATIOS``) compares methods measured in the same run; ``machine_info``
records what the numbers were taken on; ``to_markdown`` renders a result (the
tables of docs/BENCHMARKS.md), ``machine_summary_lines`` says in a few lines
what was measured on this machine, and ``finish`` writes the files.

``evaluate_targets`` (``TARGETS``, PASS / MISS) checks the thresholds of the
project's benchmark issue (docs/BENCHMARKS.md). They describe the development
machine's goals, not the user's: the command reports them only with
``--targets``.
"""

import datetime
import json
import math
import os
import platform

import numpy as np

SCHEMA_VERSION = 1

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
    ("xla_fused_vs_keras_adam_xla", "time_le", "float32", "single_large",
     "expectigrad_xla", "keras_adam_xla", 1.0,
     "XLA (fused custom call) step time <= keras Adam under XLA, 1x10M"),
    ("xla_fused_vs_keras_adam_xla_many_small", "time_le", "float32", "many_small",
     "expectigrad_xla", "keras_adam_xla", 1.0,
     "XLA (fused custom call) step time <= keras Adam under XLA, 1000x1K"),
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
    ("xla/keras_adam_xla", "expectigrad_xla", "keras_adam_xla",
     "time ratio, fused custom call under XLA vs keras Adam + XLA (lower is better)"),
    ("xla/fused", "expectigrad_xla", "expectigrad_fused",
     "time ratio, the op under XLA vs outside XLA (lower is better)"),
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


def _source_root():
    """The folder holding the measured expectigrad_tf package (the checkout,
    with an editable install): where the git queries below run."""
    import expectigrad_tf

    return os.path.dirname(os.path.dirname(os.path.abspath(expectigrad_tf.__file__)))


def fused_build_info(status):
    """Which op library was measured: build info, a hash, the source state."""
    import hashlib
    import subprocess

    root = _source_root()
    info = dict(status.get("build_info") or {})
    try:
        with open(status["library"], "rb") as f:
            info["library_sha256"] = hashlib.sha256(f.read()).hexdigest()[:16]
    except (OSError, KeyError, TypeError):
        info["library_sha256"] = None
    try:  # read-only git queries
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "csrc",
                                "expectigrad_tf"], cwd=root, capture_output=True,
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
        "command": " ".join(["expectigrad-benchmark"] + list(args.argv)),
    }


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
    if not res.get("targets"):
        return "\n".join(lines)
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


def _relative(ms, base_ms):
    """'1.23x faster' / '1.23x slower' / 'same speed' of ms against base_ms."""
    r = ms / base_ms
    if abs(r - 1.0) < 0.005:
        return "same speed"
    return f"{1 / r:.2f}x faster" if r < 1 else f"{r:.2f}x slower"


# Baselines of the summary: (method, how it is named).
SUMMARY_BASELINES = (
    ("tf_resource_apply_adam", "TF's C++ Adam kernel (ResourceApplyAdam)"),
    ("keras_adam", "Keras Adam"),
    ("keras_adam_xla", "Keras Adam + XLA"),
    ("expectigrad_composite", "Expectigrad without the op (fused=False)"),
)


def machine_summary_lines(res):
    """What this run measured, in words: per workload the median step time
    of Expectigrad with its fused op and how it compares with the baselines
    measured in the same run; per model the model.fit step times."""
    rows = res["step"]
    out = []
    keys = []
    for r in rows:
        k = (r["dtype"], r["workload"], r["role"])
        if k not in keys:
            keys.append(k)
    for dtype, label, role in keys:
        fused = _find(rows, dtype, role, "expectigrad_fused")
        if fused is None:
            continue
        ms = fused["stats"]["median_ms"]
        parts = []
        for method, name in SUMMARY_BASELINES:
            b = _find(rows, dtype, role, method)
            if b is not None:
                rel = _relative(ms, b["stats"]["median_ms"])
                parts.append(f"{'as fast as' if rel == 'same speed' else rel + ' than'} {name} "
                             f"({b['stats']['median_ms']:.3g} ms)")
        nv = fused["n_vars"]
        out.append(f"{dtype} {label} ({nv} variable{'s' if nv != 1 else ''} x {fused['size']:,}): "
                   f"Expectigrad {ms:.3g} ms per step (median); " + "; ".join(parts))
    by_model = {}
    for r in res.get("model", []):
        by_model.setdefault(r["model"], {})[r["optimizer"]] = r
    for model, opts in by_model.items():
        if "expectigrad" in opts and "adam" in opts:
            e, a = (opts[o]["stats"]["median_ms"] for o in ("expectigrad", "adam"))
            out.append(f"model.fit {model} ({opts['expectigrad']['params']:,} parameters, batch "
                       f"{opts['expectigrad']['batch']}): Expectigrad {e:.3g} ms per step, "
                       f"Adam {a:.3g} ms: Expectigrad {_relative(e, a)}")
    return out


def finish(res, args, quick):
    """Writes ``args.out_json`` / ``args.out_md`` (either may be None) and
    prints the Markdown and a summary of this machine's numbers. The
    targets (``evaluate_targets``) are kept, written and printed only with
    ``args.targets``."""
    if not getattr(args, "targets", False):
        res = {k: v for k, v in res.items() if k != "targets"}
    md = to_markdown(res)
    for path, text in ((args.out_json, json.dumps(res, indent=1) + "\n"), (args.out_md, md + "\n")):
        if path:
            d = os.path.dirname(os.path.abspath(path))
            os.makedirs(d, exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
    print("\n" + md, flush=True)
    print(f"## on this machine ({res['meta']['cpu_model']}"
          + ("; quick mode: small sizes, few repeats, indicative only" if quick else "") + ")")
    for line in machine_summary_lines(res):
        print("- " + line)
    if res.get("targets"):
        print("## targets of the project's benchmark issue (docs/BENCHMARKS.md)"
              + (" (quick mode: small sizes, not the target workloads)" if quick else ""))
        for line in target_lines(res["targets"]):
            print(line)
    written = [p for p in (args.out_json, args.out_md) if p]
    print("wrote " + (" and ".join(written) if written else "nothing"), flush=True)
    return res
