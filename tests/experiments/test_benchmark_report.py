"""expectigrad_experiments.benchmark.report and workloads without measuring
anything (fast): statistics, ratios, targets and the Markdown of a made-up run."""

import json

import numpy as np
import pytest

from expectigrad_experiments.benchmark import backends, cli, report, workloads


def test_summarize_and_paired_ratio():
    st = report.summarize([0.001, 0.002, 0.003, 0.004, 0.005])
    assert st["n"] == 5 and st["median_ms"] == pytest.approx(3.0)
    assert st["min_ms"] == pytest.approx(1.0) and st["mean_ms"] == pytest.approx(3.0)
    assert st["p10_ms"] < st["median_ms"] < st["p90_ms"]
    pr = report.paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])
    assert pr["ratio"] == pytest.approx(2.0)
    assert pr["paired_median"] == pytest.approx(2.0) and pr["paired_p90"] <= 3.0


def test_tables_are_consistent():
    for label, role, n_vars, size, dtype, methods in workloads.FULL_WORKLOADS + workloads.QUICK_WORKLOADS:
        assert set(methods) <= set(backends.STEP_METHODS), label
        assert dtype in ("float32", "float64") and n_vars >= 1 and size >= 1
    for family, *_ in backends.STEP_METHODS.values():
        assert family in backends.ELEMENTS_MOVED
    for _, num, den, _ in report.STEP_RATIOS:
        assert {num, den} <= set(backends.STEP_METHODS)
    assert set(workloads.FULL_MODELS) == set(workloads.QUICK_MODELS) == {"mlp", "transformer"}


def _row(method, dtype="float32", label="1x1M", role="single_large", ms=1.0):
    family = backends.STEP_METHODS[method][0]
    samples = [ms * 1e-3 * f for f in (0.9, 1.0, 1.1)]
    return {"dtype": dtype, "workload": label, "role": role, "n_vars": 1, "size": 10**6,
            "elements": 10**6, "method": method, "family": family, "description": "",
            "xla": False, "dispatch": None, "bytes_per_element": 36, "inner_steps": 1,
            "trace_s": 0.1, "stats": report.summarize(samples),
            "bandwidth_gbs": 36e6 / (ms * 1e-3) / 1e9, "samples_s": samples}


def test_ratios_targets_and_rerender(tmp_path, capsys):
    times = {"expectigrad_fused": 1.0, "tf_resource_apply_adam": 0.9, "expectigrad_composite": 5.0,
             "keras_adam": 3.0, "keras_adam_xla": 1.2, "expectigrad_composite_xla": 1.5,
             "expectigrad_xla": 1.1, "stream_sgd_reference": 0.5}
    step = [_row(m, ms=t) for m, t in times.items()]
    step.append(_row("keras_adam", role="many_small", label="8x1K", ms=10.0))
    step.append(_row("expectigrad_fused", role="many_small", label="8x1K", ms=1.0))
    step.append(_row("keras_adam_xla", role="many_small", label="8x1K", ms=2.0))
    step.append(_row("expectigrad_xla", role="many_small", label="8x1K", ms=2.5))
    ratios = report.compute_ratios(step)
    by_name = {(q["workload"], q["name"]): q["ratio"] for q in ratios}
    assert by_name[("1x1M", "fused/resource_apply_adam")] == pytest.approx(1.0 / 0.9)
    assert by_name[("1x1M", "composite/fused")] == pytest.approx(5.0)
    assert by_name[("1x1M", "fused_bandwidth/stream_bandwidth")] == pytest.approx(0.5)
    assert ("8x1K", "fused_bandwidth/stream_bandwidth") not in by_name  # not memory-bound
    targets = {t["name"]: t for t in report.evaluate_targets(step, [])}
    assert targets["fused_vs_resource_apply_adam"]["status"] == "PASS"  # 1.11 <= 1.35
    assert targets["fused_vs_composite"]["status"] == "PASS"  # 5 >= 3
    assert targets["fused_vs_keras_adam_many_small"]["status"] == "PASS"  # 10 >= 5
    assert targets["composite_xla_vs_keras_adam_xla"]["status"] == "PASS"  # 1.25 <= 1.3
    assert targets["xla_fused_vs_keras_adam_xla"]["status"] == "PASS"  # 1.1/1.2 <= 1
    assert targets["xla_fused_vs_keras_adam_xla_many_small"]["status"] == "MISS"  # 1.25 > 1
    assert by_name[("1x1M", "xla/keras_adam_xla")] == pytest.approx(1.1 / 1.2)
    assert targets["fit_mlp_expectigrad_vs_adam"]["status"] == "SKIP"

    meta = {"cpu_model": "test CPU", "logical_cpus": 2, "usable_cpus": 2, "intra_op_threads": 2,
            "intra_op_threads_setting": 0, "cpu_flags": ["avx2"], "tensorflow": "x", "keras": "y",
            "numpy": "z", "python": "3", "date": "2026-01-01", "load_average_start": [0.0],
            "load_average_end": [0.1], "command": "expectigrad-benchmark --quick", "quick": True,
            "repeats": 3}
    res = {"schema_version": report.SCHEMA_VERSION, "meta": meta, "methods": {}, "step": step,
           "ratios": ratios, "model": [], "targets": list(targets.values())}
    src = tmp_path / "in.json"
    src.write_text(json.dumps(res))
    md = tmp_path / "out.md"
    # Default: this machine's numbers, no targets (they are the project's goals).
    out = cli.main(["--from-json", str(src), "--out-json", str(src), "--out-md", str(md)])
    assert json.loads(src.read_text()) == res  # never overwritten
    assert "targets" not in out
    text = md.read_text()
    assert text == report.to_markdown(out) + "\n"
    assert "Command: `expectigrad-benchmark --quick`" in text
    printed = capsys.readouterr().out
    for word in ("PASS", "MISS", "SKIP", "target", "Target"):  # (the tmp path has "targets")
        assert word not in text and word not in printed.replace(str(tmp_path), ""), word
    assert f"wrote {md}" in printed
    summary = [ln for ln in printed.splitlines() if ln.startswith("- ")]
    assert summary == ["- " + ln for ln in report.machine_summary_lines(out)]
    # Made-up times: fused 1.0 ms, ResourceApplyAdam 0.9, keras Adam 3.0 (1x1M);
    # fused 1.0, keras Adam 10.0 (8x1K).
    assert summary[0].startswith("- float32 1x1M (1 variable x 1,000,000): Expectigrad 1 ms")
    assert f"{1.0 / 0.9:.2f}x slower than TF's C++ Adam kernel" in summary[0]
    assert "3.00x faster than Keras Adam (3 ms)" in summary[0]
    assert "10.00x faster than Keras Adam (10 ms)" in summary[1]

    # --targets: the project's targets are evaluated and shown.
    out = cli.main(["--from-json", str(src), "--out-json", "", "--out-md", str(md), "--targets"])
    text = md.read_text()
    assert text == report.to_markdown(out) + "\n"
    assert text.count("**PASS**") == 5 and text.count("**MISS**") == 1
    assert text.count("**SKIP**") == 2
    printed = capsys.readouterr().out
    assert "PASS fused_vs_composite" in printed and f"wrote {md}" in printed


def test_relative_wording():
    assert report._relative(1.0, 2.0) == "2.00x faster"
    assert report._relative(3.0, 2.0) == "1.50x slower"
    assert report._relative(1.0, 1.001) == "same speed"


def test_summary_says_as_fast_as_within_half_a_percent():
    step = [{"dtype": "float64", "workload": "8x25K", "role": "medium", "method": m, "n_vars": 8,
             "size": 25000, "stats": {"median_ms": ms}}
            for m, ms in (("expectigrad_fused", 0.819), ("tf_resource_apply_adam", 0.818),
                          ("keras_adam", 2.0))]
    (line,) = report.machine_summary_lines({"step": step, "model": []})
    assert "as fast as TF's C++ Adam kernel (ResourceApplyAdam) (0.818 ms)" in line
    assert f"{2.0 / 0.819:.2f}x faster than Keras Adam (2 ms)" in line
    assert "same speed" not in line and "as fast as Keras Adam" not in line
