"""`sgpo demo`: its learning rates and step counts are the sweep's tuning choice (recomputed
from the committed tuning cells) and its settings the sweep's; `--quick` end to end: on the
strategy world (pre-training world seed 0 of the pair world if the cache lacks it), the premise
is measured (guidance helps the initial model) and SGPO's distillation term fires; on the real
SmolLM2-135M-Instruct (one step), the report, its plots and results.json exist and hold finite
numbers; a rerun into the same directory resumes every stage."""

import json
import math
import sys
import time
from pathlib import Path

import pytest

from sgpo.cli import main
from sgpo.demo.run import DEMO_WORLD, TUNED_SCHEDULES, DemoSettings, _train_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sweep  # noqa: E402


@pytest.mark.parametrize("method", sorted(TUNED_SCHEDULES))
def test_demo_schedule_is_the_sweeps_tuning_choice(method):
    """TUNED_SCHEDULES against the tuning rule applied to the committed tuning cells of the
    demo's world (benchmarks/results/cells/pair/tune/): a re-tuned method fails here until the
    demo follows it."""
    setting = sweep.SETTINGS[DEMO_WORLD]
    done = sweep.load_cells(sweep.CELLS_DIR / setting.name / "tune")
    choice = sweep.tuned(setting, done, method)
    if choice is None:
        missing = [c.id for c in sweep.tune_cells(setting) if c.variant == method and c.id not in done]
        pytest.skip(f"{method}'s tuning on {setting.name} is not complete ({len(missing)} cells missing, "
                    f"e.g. {missing[0]})")
    demo = TUNED_SCHEDULES[method]
    assert (demo.learning_rate, demo.steps) == (pytest.approx(choice["lr"], rel=1e-12), choice["steps"]), (
        f"sgpo.demo.run.TUNED_SCHEDULES[{method!r}] = {demo}, the sweep's tuning chose lr {choice['lr']:g} "
        f"for {choice['steps']} steps")


def test_demo_trains_and_evaluates_with_the_sweeps_settings(tmp_path):
    """The default world demo is a sweep cell of its seed without the probes: the same world,
    budget split, prompts per step, sampling and evaluation sizes, at each method's schedule."""
    s, setting = DemoSettings.for_model("world"), sweep.SETTINGS[DEMO_WORLD]
    assert DEMO_WORLD == setting.world and not setting.tasks and not setting.pretrain and not setting.overrides
    for demo_key, sweep_key in (("samples_per_problem", "budget"), ("group_guided", "group_guided"),
                                ("prompts_per_step", "prompts_per_step"), ("train_problems", "train_problems"),
                                ("eval_problems", "eval_problems"), ("eval_samples", "eval_samples"),
                                ("max_new_tokens", "max_new_tokens"), ("train_temperature", "train_temperature"),
                                ("eval_temperature", "eval_temperature"), ("top_k", "top_k")):
        assert getattr(s, demo_key) == getattr(setting, sweep_key), demo_key
    for method, sch in TUNED_SCHEDULES.items():
        cfg = _train_config(method, tmp_path, s, "unused-model").validate()
        assert (cfg.training.learning_rate, cfg.training.max_steps) == (sch.learning_rate, sch.steps)
    s.common_steps = 7  # --steps: one count for every method, the rates unchanged
    cfg = _train_config("grpo", tmp_path, s, "unused-model").validate()
    assert (cfg.training.learning_rate, cfg.training.max_steps) == (TUNED_SCHEDULES["grpo"].learning_rate, 7)
    assert "every method trains 7 steps instead of its scheduled count" in s.schedule_note()
    with pytest.raises(ValueError, match="no learning rate for method 'sft'"):
        s.schedule("sft")


def test_demo_rejects_a_step_count_below_one(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err


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
    # equal budgets, as each run's metrics.jsonl logged them
    spent = results["samples_per_problem"]
    assert spent["grpo"]["total"] == spent["sgpo"]["total"] == 8 and spent["sgpo"]["guided"] == 4
    for label in ("grpo", "sgpo"):
        logged = [json.loads(x) for x in (out / "runs" / label / "metrics.jsonl").read_text().splitlines()]
        assert len(logged) == 12
        for key in ("auto", "guided"):
            assert spent[label][key] == sum(r[f"samples/{key}"] for r in logged) / len(logged)
    # each method at its tuned learning rate, for the quick mode's 12 steps
    for label, sch in TUNED_SCHEDULES.items():
        config = json.loads((out / "runs" / label / "config.json").read_text())
        assert config["training"]["learning_rate"] == sch.learning_rate and config["training"]["max_steps"] == 12
    assert results["settings"]["schedules"]["grpo"]["learning_rate"] == TUNED_SCHEDULES["grpo"].learning_rate
    for label in ("initial", "grpo", "sgpo"):
        for key in ("eval", "eval_combos", "eval_transfer"):
            r = results[key][label]
            assert 0.0 <= r["ci95"][0] <= r["avg@k"] <= r["ci95"][1] <= 1.0 and r["n"] == 32 and r["k"] == 2, r
    assert g["transfer"]["p_guided"] > g["transfer"]["p_auto"]
    transfer = [json.loads(x) for x in (out / "data" / "transfer.jsonl").read_text().splitlines()]
    trained = {r["keyword"] for r in map(json.loads, (out / "data" / "train.jsonl").read_text().splitlines())}
    assert transfer and not {r["keyword"] for r in transfer} & trained  # keyword pairs never trained
    report = (out / "report.md").read_text()
    assert "## Held-out combinations" in report and "| step | SGPO p_a | SGPO p_g | SGPO w |" in report
    assert "## Transfer: keyword pairs never trained" in report and "GRPO lr 3e-5 for 12 steps" in report
    assert (out / "training_distill.png").exists()
    assert json.loads((out / "data" / "train.jsonl").read_text().splitlines()[0])["strategy"].startswith("Method ")

    start = time.perf_counter()  # a rerun resumes from checkpoints and graded records
    assert main(["demo", "--quick", "--output-dir", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["eval"] == results["eval"] and again["eval_combos"] == results["eval_combos"]
    assert again["eval_transfer"] == results["eval_transfer"]
    assert again["samples_per_problem"] == results["samples_per_problem"]
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

