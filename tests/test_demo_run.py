"""`sgpo demo --quick` end to end: on the strategy world (pre-training its model on a fresh
cache), the premise is measured (guidance helps the initial model) and SGPO's distillation term
fires; on the real SmolLM2-135M-Instruct (one step), the report, its plots and results.json
exist and hold finite numbers; a rerun into the same directory resumes every stage."""

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
def test_quick_world_demo_measures_the_premise_and_distils(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    g = results["guidance"]
    # the premise, measured on held-out problems before training: the strategy helps
    assert g["p_guided"] > g["p_auto"] and g["difference"] == g["p_guided"] - g["p_auto"]
    assert g["combos"]["p_guided"] > g["combos"]["p_auto"]
    # the distillation term fired: positive weights and a logged forward KL
    sgpo = results["training"]["sgpo"]
    assert sgpo["weight/mean"]["mean"] > 0 and sgpo["distill/kl_mean"]["mean"] > 0
    assert "distill/kl_mean" not in results["training"]["grpo"]
    # equal budgets, as the runs logged them
    spent = results["samples_per_problem"]
    assert spent["grpo"]["total"] == spent["sgpo"]["total"] == 8 and spent["sgpo"]["guided"] == 4
    for label in ("initial", "grpo", "sgpo"):
        for key in ("eval", "eval_combos"):
            r = results[key][label]
            assert 0.0 <= r["ci95"][0] <= r["avg@k"] <= r["ci95"][1] <= 1.0 and r["n"] == 32 and r["k"] == 2, r
    report = (out / "report.md").read_text()
    assert "## Held-out combinations" in report and "| step | SGPO p_a | SGPO p_g | SGPO w |" in report
    assert (out / "training_distill.png").exists()
    assert json.loads((out / "data" / "train.jsonl").read_text().splitlines()[0])["strategy"].startswith("Method ")

    start = time.perf_counter()  # a rerun resumes from checkpoints and graded records
    assert main(["demo", "--quick", "--output-dir", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["eval"] == results["eval"] and again["eval_combos"] == results["eval_combos"]
    print(f"rerun took {time.perf_counter() - start:.1f} s")


@pytest.mark.slow
def test_quick_smollm2_demo_writes_a_report_with_finite_numbers(tmp_path, smollm2_dir):
    out = tmp_path / "demo"
    assert main(["demo", "--model", "smollm2", "--quick", "--steps", "1", "--output-dir", str(out)]) == 0
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

