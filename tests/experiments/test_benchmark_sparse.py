"""expectigrad-benchmark --sparse --quick (lazy vs exact sparse step) runs
and writes complete, well-formed output. No timing assertions: only the
presence, sign and finiteness of the numbers are checked."""

import json
import math
import os
import subprocess
import sys

import pytest

from expectigrad_experiments.benchmark import sparse

pytestmark = pytest.mark.slow
COMMAND = os.path.join(os.path.dirname(sys.executable), "expectigrad-benchmark")


def _positive_finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_sparse_quick_run(tmp_path):
    js, md = tmp_path / "s.json", tmp_path / "s.md"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    proc = subprocess.run(
        [COMMAND, "--sparse", "--quick", "--out-json", str(js), "--out-md", str(md),
         "--date", "2026-11-29"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    data = json.loads(js.read_text())
    text = md.read_text()
    assert data["meta"]["quick"] is True and data["meta"]["date"] == "2026-11-29"
    assert data["meta"]["command"].startswith("expectigrad-benchmark --sparse --quick")
    sp = data["sparse"]
    assert sp["spec"] == sparse.QUICK_SPARSE
    assert [r["method"] for r in sp["rows"]] == list(sparse.SPARSE_METHODS)
    for r in sp["rows"]:
        # The methods really took the path they are named after.
        assert r["dispatch"] == sparse.SPARSE_METHODS[r["method"]][2]
        st = r["stats"]
        assert st["n"] == data["meta"]["repeats"] == len(r["samples_s"]) == 5
        for k in ("median_ms", "p10_ms", "p90_ms"):
            assert _positive_finite(st[k])
        assert st["p10_ms"] <= st["median_ms"] <= st["p90_ms"]
        assert f"| {r['method']} | {r['dispatch']} |" in text
    assert _positive_finite(sp["ratio"]["ratio"])
    assert sp["target"]["status"] in ("PASS", "MISS")
    # The target (lazy >= 10 x faster) is evaluated in the JSON, shown with --targets.
    assert "| exact/lazy (" in text and "**PASS**" not in text and "**MISS**" not in text
    with_targets = sparse.sparse_to_markdown(data, targets=True)
    assert with_targets.count("**PASS**") + with_targets.count("**MISS**") == 1
    # Re-rendering from the JSON measures nothing and reproduces the table.
    again = tmp_path / "again.md"
    proc = subprocess.run(
        [sys.executable, "-m", "expectigrad_experiments.benchmark", "--from-json", str(js),
         "--out-json", str(js), "--out-md", str(again)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert again.read_text() == text
    assert json.loads(js.read_text()) == data
