"""`sgpo demo --quick` end to end on the real SmolLM2-135M-Instruct (about 4 minutes on 2
CPU cores): the report, its plots and results.json exist and hold finite numbers, and a rerun
into the same directory resumes every stage instead of redoing it."""

import json
import math
import time

import pytest

from sgpo.cli import main


def _finite_numbers(value):
    """Every number in a JSON value (bools excluded)."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in _finite_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _finite_numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


@pytest.mark.slow
def test_quick_demo_writes_a_report_with_finite_numbers(tmp_path, smollm2_dir):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output-dir", str(out)]) == 0
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    for label in ("initial", "grpo", "sgpo"):
        r = results["eval"][label]
        assert 0.0 <= r["ci95"][0] <= r["avg@k"] <= r["ci95"][1] <= 1.0 and r["n"] == 16, r
        assert f"| {label} |" in report
    g = results["guidance"]
    assert 0.0 <= g["p_auto"] <= 1.0 and 0.0 <= g["p_guided"] <= 1.0 and g["n"] == 16
    assert set(results["training"]) == {"grpo", "sgpo"} and "p_auto" in results["training"]["sgpo"]
    numbers = _finite_numbers({k: v for k, v in results.items() if k != "settings"})
    assert numbers and all(math.isfinite(x) for x in numbers)
    for png in ("accuracy.png", "training_guidance.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the distillation plot exists exactly when SGPO distilled something, and the report says which
    distilled = "distill/kl_mean" in results["training"]["sgpo"]
    assert (out / "training_distill.png").exists() == distilled
    assert ("training_distill.png" in report) == distilled and ("distilled no token" in report) != distilled
    for heading in ("## Held-out accuracy", "## Strategy guidance before training", "## Training",
                    "## Example completions"):
        assert heading in report

    # a rerun resumes: checkpoints at the last step and graded records mean no sampling or training
    start = time.perf_counter()
    assert main(["demo", "--quick", "--output-dir", str(out)]) == 0
    rerun_s = time.perf_counter() - start
    again = json.loads((out / "results.json").read_text())
    assert again["eval"] == results["eval"] and again["guidance"] == results["guidance"]
    print(f"rerun took {rerun_s:.1f} s")
