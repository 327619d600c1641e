"""expectigrad-benchmark --quick runs and writes complete, well-formed output.

No timing assertions: the numbers depend on the machine and its load; only
their presence, sign and finiteness are checked.
"""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from expectigrad_experiments.benchmark import workloads

pytestmark = pytest.mark.slow
COMMAND = os.path.join(os.path.dirname(sys.executable), "expectigrad-benchmark")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    js, md = out / "bench.json", out / "bench.md"
    rerendered = out / "rerendered.md"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    assert os.path.exists(COMMAND), f"expectigrad-benchmark is not installed next to {sys.executable}"
    proc = subprocess.run(
        [COMMAND, "--quick", "--out-json", str(js), "--out-md", str(md),
         "--date", "2026-11-28"],
        cwd=str(out), env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    with open(js) as f:
        data = json.load(f)
    with open(md) as f:
        text = f.read()
    # Re-rendering from the JSON measures nothing and reproduces the table.
    again = subprocess.run(
        [sys.executable, "-m", "expectigrad_experiments.benchmark", "--from-json", str(js),
         "--out-json", str(js),
         "--out-md", str(rerendered)],
        cwd=str(out), env=env, capture_output=True, text=True, timeout=120,
    )
    assert again.returncode == 0, again.stderr[-4000:]
    with open(rerendered) as f:
        assert f.read() == text
    with open(js) as f:
        assert json.load(f) == data  # --from-json never overwrites its input
    # The project's targets only on request (--targets), from the same JSON.
    targeted = subprocess.run(
        [sys.executable, "-m", "expectigrad_experiments.benchmark", "--from-json", str(js),
         "--out-json", str(out / "targets.json"), "--out-md", str(out / "targets.md"),
         "--targets"],
        cwd=str(out), env=env, capture_output=True, text=True, timeout=120,
    )
    assert targeted.returncode == 0, targeted.stderr[-4000:]
    with open(out / "targets.json") as f:
        with_targets = json.load(f)
    with open(out / "targets.md") as f:
        targets_md = f.read()
    return data, text, proc.stdout, (with_targets, targets_md, targeted.stdout)


def _positive_finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_meta(quick_run):
    data, _, _, _ = quick_run
    meta = data["meta"]
    assert data["schema_version"] == 1
    assert meta["quick"] is True
    assert meta["date"] == "2026-11-28"
    for key in ("cpu_model", "tensorflow", "keras", "command", "fused_op_build"):
        assert meta[key], key
    assert isinstance(meta["intra_op_threads"], int) and meta["intra_op_threads"] >= 1
    assert meta["usable_cpus"] >= 1
    assert meta["fused_op_available"] is True
    assert meta["command"].startswith("expectigrad-benchmark --quick --out-json ")
    assert meta["fused_op_build"]["library_sha256"]


def test_every_method_and_workload_present(quick_run):
    data, _, _, _ = quick_run
    mod = workloads
    got = {(r["dtype"], r["workload"], r["method"]) for r in data["step"]}
    want = {(dt, label, m) for label, _, _, _, dt, methods in mod.QUICK_WORKLOADS
            for m in methods}
    assert got == want
    assert len(data["step"]) == len(want)  # no duplicates
    # The method list, float32, for every quick workload.
    for label in {w[0] for w in mod.QUICK_WORKLOADS if w[4] == "float32"}:
        for m in ("expectigrad_fused", "expectigrad_composite", "expectigrad_composite_xla",
                  "keras_adam", "keras_adam_xla", "tf_resource_apply_adam"):
            assert ("float32", label, m) in got
    assert any(r["dtype"] == "float64" and r["method"] == "expectigrad_fused"
               for r in data["step"])


def test_step_rows_well_formed(quick_run):
    data, _, _, _ = quick_run
    for r in data["step"]:
        st = r["stats"]
        for k in ("median_ms", "p10_ms", "p25_ms", "p75_ms", "p90_ms", "min_ms", "mean_ms"):
            assert _positive_finite(st[k]), (r["method"], r["workload"], k, st[k])
        assert st["p10_ms"] <= st["median_ms"] <= st["p90_ms"]
        assert st["n"] == data["meta"]["repeats"] == len(r["samples_s"])
        assert all(_positive_finite(s) for s in r["samples_s"])
        assert _positive_finite(r["bandwidth_gbs"])
        assert r["elements"] == r["n_vars"] * r["size"]
        itemsize = 4 if r["dtype"] == "float32" else 8
        assert r["bytes_per_element"] == {"expectigrad": 9, "adam": 7, "sgd": 3}[r["family"]] * itemsize
        assert r["inner_steps"] >= 1 and _positive_finite(r["trace_s"])
        # The Expectigrad variants really took the path they are named after.
        expected = {"expectigrad_fused": "fused", "expectigrad_xla": "fused",
                    "expectigrad_composite": "composite",
                    "expectigrad_composite_xla": "composite-xla"}.get(r["method"])
        assert r["dispatch"] == expected


def test_ratios_and_targets(quick_run):
    data, _, stdout, (with_targets, targets_md, targets_stdout) = quick_run
    names = {(q["dtype"], q["workload"], q["name"]) for q in data["ratios"]}
    for r in data["step"]:
        if r["dtype"] != "float32":
            continue
        for name in ("fused/resource_apply_adam", "composite/fused", "keras_adam/fused",
                     "composite_xla/keras_adam_xla"):
            assert ("float32", r["workload"], name) in names
        if r["role"] in ("single_large", "medium"):  # memory-bound workloads only
            assert ("float32", r["workload"], "fused_bandwidth/stream_bandwidth") in names
    for q in data["ratios"]:
        assert _positive_finite(q["ratio"]), q
    # By default the output speaks of this machine, not of the project's targets.
    assert "targets" not in data
    assert not re.search(r"^(PASS|MISS|SKIP) ", stdout, re.M)
    assert "target" not in stdout.lower()
    assert "## on this machine" in stdout
    summary = [ln for ln in stdout.splitlines() if ln.startswith("- ")]
    fused = {(r["dtype"], r["workload"]) for r in data["step"] if r["method"] == "expectigrad_fused"}
    assert len(summary) == len(fused) + len({r["model"] for r in data["model"]})
    # Each comparison reads "N.NNx faster/slower than X", "as fast as X" (within 0.5%), or, for
    # model.fit, "Expectigrad N.NNx faster/slower" / "same speed".
    compared = re.compile(r"\d+\.\d\dx (faster|slower)|as fast as |same speed")
    for ln in summary:
        assert "ms per step" in ln and compared.search(ln), ln
    # --targets evaluates them from the saved measurements.
    targets = with_targets["targets"]
    assert len(targets) == 8
    for t in targets:
        assert t["status"] in ("PASS", "MISS"), t
        assert _positive_finite(t["ratio"])
        assert _positive_finite(t["threshold"])
    lines = [ln for ln in targets_stdout.splitlines() if re.match(r"^(PASS|MISS) ", ln)]
    assert len(lines) == len(targets)
    assert targets_md.count("**PASS**") + targets_md.count("**MISS**") == len(targets)


def test_models(quick_run):
    data, _, _, _ = quick_run
    rows = data["model"]
    assert {(r["model"], r["optimizer"]) for r in rows} == {
        (m, o) for m in ("mlp", "transformer") for o in ("expectigrad", "adam")}
    for r in rows:
        st = r["stats"]
        assert st["n"] >= 1 and _positive_finite(st["median_ms"])
        assert _positive_finite(st["p10_ms"]) and _positive_finite(st["p90_ms"])
        assert r["params"] > 0 and r["batch"] > 0
        assert math.isfinite(r["final_loss"])
        if r["optimizer"] == "expectigrad":
            assert r["dispatch"].get("fused", 0) > 0
    # Same model, same batch, for both optimizers.
    by_model = {}
    for r in rows:
        by_model.setdefault(r["model"], set()).add((r["params"], r["batch"]))
    assert all(len(v) == 1 for v in by_model.values())


def test_markdown(quick_run):
    data, text, _, _ = quick_run
    for heading in ("### Optimizer step time", "### Ratios", "### model.fit"):
        assert heading in text
    assert "### Targets" not in text and "**MISS**" not in text
    table = [ln for ln in text.splitlines() if ln.startswith("| float")]
    # One row per measured (dtype, workload, method), plus ratio rows.
    step_lines = [ln for ln in table if ln.count("|") == 9]
    assert len(step_lines) == len(data["step"])
    for r in data["step"]:
        assert any(f"| {r['dtype']} | {r['workload']} | {r['method']} |" in ln for ln in step_lines)
    for ln in step_lines:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        for c in cells[3:7]:
            v = float(c)
            assert math.isfinite(v) and v > 0
    assert "nan" not in text.lower()


def test_module_entry_point_help(tmp_path):
    """`python -m expectigrad_experiments.benchmark` resolves from any directory."""
    proc = subprocess.run([sys.executable, "-m", "expectigrad_experiments.benchmark", "--help"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--quick" in proc.stdout and "--out-json" in proc.stdout
