"""The GPU check's report: Markdown for the terminal, JSON-safe values."""

import json

import numpy as np

from tools.gpu_check.workloads import BANDWIDTH_TARGET, MULTI_TENSOR_TARGET


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
