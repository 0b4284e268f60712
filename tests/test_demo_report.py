"""The demo report: files written, numbers finite and stated plainly, missing metrics tolerated."""

from __future__ import annotations

import json
import math

import pytest

from sgpo.demo.report import compare, series, training_summary, write_report


def eval_results(sgpo=(0.50, 0.40, 0.60)) -> dict:
    def r(avg, lo, hi):
        return {"avg@k": avg, "ci95": [lo, hi], "n": 32, "k": 4, "pass@k": 0.9}

    return {"sgpo": r(*sgpo), "initial": r(0.30, 0.22, 0.38), "grpo": r(0.45, 0.35, 0.55)}


def train_metrics(steps: int = 8) -> dict:
    sgpo = [{"step": s, "p_auto": 0.3 + 0.02 * s, "p_guided": 0.5, "weight/mean": 0.2 - 0.01 * s,
             "distill/kl_mean": 0.05, "distill/top10_share": 0.6, "loss": 1.0} for s in range(steps)]
    sgpo[3]["weight/mean"] = float("nan")  # a step with no eligible guided trajectory
    del sgpo[4]["distill/kl_mean"]
    return {"sgpo": sgpo, "grpo": [{"step": s, "p_auto": 0.3 + 0.01 * s} for s in range(steps)]}


def all_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from all_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from all_numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


def test_write_report_files_and_finite_numbers(tmp_path):
    path = write_report(tmp_path / "out", eval_results=eval_results(), train_metrics=train_metrics(),
                        examples={"unguided": "x = 3, so \\boxed{3}", "guided": "```code``` \\boxed{4}"},
                        guidance={"p_auto": 0.25, "p_guided": 0.5, "n": 64},
                        settings={"model": "smollm2", "steps": 8, "lr": 1e-5, "odd": float("inf")})
    out = tmp_path / "out"
    assert path == out / "report.md"
    for png in ("accuracy.png", "training_guidance.png", "training_distill.png"):
        assert (out / png).stat().st_size > 1000
        assert f"({png})" in path.read_text()
    text = path.read_text()
    # labels in the canonical order, numbers stated, overlap stated plainly
    assert text.index("| initial |") < text.index("| grpo |") < text.index("| sgpo |")
    assert "50.0%" in text and "[40.0%, 60.0%]" in text
    assert "**sgpo** 50.0% vs **grpo** 45.0%: +5.0 points; the 95% intervals overlap" in text
    assert "p_a = 25.0%" in text and "p_g = 50.0%" in text and "raised success by 25.0 points" in text
    assert "````text\n```code``` \\boxed{4}\n````" in text  # a completion cannot break its fence
    results = json.loads((out / "results.json").read_text())
    assert results["eval"]["sgpo"] == {"avg@k": 0.5, "ci95": [0.4, 0.6], "n": 32, "k": 4}
    assert results["guidance"]["difference"] == pytest.approx(0.25)
    assert results["training"]["sgpo"]["steps"] == 8
    assert results["settings"]["odd"] == "inf"
    assert all(math.isfinite(x) for x in all_numbers(results))


def test_non_overlapping_intervals_name_the_higher_model_whichever_it_is(tmp_path):
    path = write_report(tmp_path, eval_results=eval_results(sgpo=(0.10, 0.05, 0.15)), train_metrics={},
                        examples={}, guidance={}, settings={})
    text = path.read_text()
    assert "do not overlap: grpo is higher than sgpo" in text
    assert "sgpo is higher" not in text
    assert "Not measured" in text and "No training metrics" in text
    assert not (tmp_path / "training_guidance.png").exists()
    c = json.loads((tmp_path / "results.json").read_text())["comparisons"][0]
    assert c["a"] == "sgpo" and c["b"] == "grpo" and c["ci_overlap"] is False
    assert c["difference"] == pytest.approx(-0.35)  # 0.10 - 0.45


def test_non_finite_accuracy_is_rejected(tmp_path):
    bad = eval_results()
    bad["grpo"]["avg@k"] = float("nan")
    with pytest.raises(ValueError, match="grpo"):
        write_report(tmp_path, eval_results=bad, train_metrics={}, examples={}, guidance={}, settings={})


def test_series_and_summary_skip_missing_and_non_finite():
    hist = train_metrics()["sgpo"]
    assert [s for s, _ in series(hist, "weight/mean")] == [0, 1, 2, 4, 5, 6, 7]
    summary = training_summary(hist)
    # 7 finite points, quarter = 1 point: first 0.2, last 0.2 - 0.07 = 0.13
    assert summary["weight/mean"]["first_quarter"] == pytest.approx(0.2)
    assert summary["weight/mean"]["last_quarter"] == pytest.approx(0.13)
    # 8 points, quarter = 2: (0.30 + 0.32) / 2 and (0.42 + 0.44) / 2
    assert summary["p_auto"]["first_quarter"] == pytest.approx(0.31)
    assert summary["p_auto"]["last_quarter"] == pytest.approx(0.43)
    assert "distill/kl_mean" in summary and "loss" not in summary


def test_compare_overlap_boundaries():
    res = {"a": {"avg@k": 0.5, "ci95": [0.4, 0.6]}, "b": {"avg@k": 0.7, "ci95": [0.6, 0.8]},
           "c": {"avg@k": 0.9, "ci95": [0.81, 0.95]}}
    assert compare("a", "b", res)["ci_overlap"] is True  # touching intervals count as overlapping
    assert compare("a", "c", res)["ci_overlap"] is False


def test_step_table_and_held_out_combinations(tmp_path):
    from sgpo.demo.report import step_table

    metrics = train_metrics(steps=6)
    metrics["sgpo"][2]["distill/tokens"] = 123.0
    lines = step_table(metrics)
    assert lines[0] == "| step | SGPO p_a | SGPO p_g | SGPO w | SGPO KL mean | SGPO KL tokens | SGPO top-10% KL share | GRPO p_a |"
    # step 2: p_a 0.3 + 0.04, w 0.2 - 0.02; tokens as a count; GRPO p_a 0.3 + 0.02
    assert lines[4] == "| 2 | 0.340 | 0.500 | 0.180 | 0.050 | 123 | 0.600 | 0.320 |"
    assert lines[5].split(" | ")[3] == "-" and lines[6].split(" | ")[4] == "-"  # NaN weight, missing KL
    combos = eval_results(sgpo=(0.8, 0.7, 0.9))
    path = write_report(tmp_path, eval_results=eval_results(), train_metrics=metrics, examples={},
                        guidance={"p_auto": 0.1, "p_guided": 0.9, "n": 32, "k": 4,
                                  "combos": {"p_auto": 0.05, "p_guided": 0.95}},
                        settings={}, combo_results=combos)
    text = path.read_text()
    assert "## Held-out combinations" in text and "| SGPO KL tokens |" in text
    assert "**sgpo** 80.0% vs **grpo** 45.0%: +35.0 points; the 95% intervals do not overlap" in text
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["eval_combos"]["sgpo"]["avg@k"] == 0.8 and results["eval"]["sgpo"]["avg@k"] == 0.5
    assert results["guidance"]["combos"]["difference"] == pytest.approx(0.9, abs=1e-12)
    assert [c["ci_overlap"] for c in results["comparisons_combos"]] == [False, False, True]


def test_results_record_the_trajectories_each_run_spent(tmp_path):
    metrics = train_metrics(6)
    for r in metrics["sgpo"]:
        r.update({"samples/auto": 4.0, "samples/guided": 4.0})
    for r in metrics["grpo"]:
        r.update({"samples/auto": 8.0, "samples/guided": 0.0})
    path = write_report(tmp_path, eval_results=eval_results(), train_metrics=metrics, examples={},
                        guidance={"p_auto": 0.25, "p_guided": 0.5, "n": 64}, settings={})
    spent = json.loads((tmp_path / "results.json").read_text())["samples_per_problem"]
    assert spent == {"sgpo": {"auto": 4.0, "guided": 4.0, "reference": 0.0, "total": 8.0},
                     "grpo": {"auto": 8.0, "guided": 0.0, "reference": 0.0, "total": 8.0}}
    assert "sgpo 8 (4 autonomous + 4 guided); grpo 8 (8 autonomous + 0 guided)" in path.read_text()


def test_demo_and_sgpo_report_share_one_plot_and_one_percentage_formatter(tmp_path):
    from sgpo.demo import report as demo_report
    from sgpo.evaluation import report as eval_report

    assert not hasattr(demo_report, "_pyplot")  # the demo draws through the evaluation report's helpers
    assert eval_report.percent(0.5) == "50.0" and eval_report.percent(0.5, "%") == demo_report._pct(0.5) == "50.0%"
    calls = []
    real = eval_report.plot_accuracy
    try:
        eval_report.plot_accuracy = lambda runs, path, **kw: calls.append(runs) or path
        demo_report.plot_accuracy({"sgpo": {"avg@k": 0.5, "ci95": [0.4, 0.6]}}, tmp_path / "a.png")
    finally:
        eval_report.plot_accuracy = real
    assert calls == [[("sgpo", {"benchmarks": {"held-out": {"avg@k": 0.5, "ci95": [0.4, 0.6]}}})]]


def test_transfer_split_guidance_and_notes_reach_the_report_and_results(tmp_path):
    transfer = eval_results(sgpo=(0.25, 0.15, 0.35))
    transfer["grpo"] = {"avg@k": 0.05, "ci95": [0.02, 0.08], "n": 32, "k": 4}
    path = write_report(tmp_path, eval_results=eval_results(), train_metrics=train_metrics(), examples={},
                        guidance={"p_auto": 0.1, "p_guided": 0.9, "n": 64, "k": 4,
                                  "transfer": {"p_auto": 0.05, "p_guided": 1.0}},
                        settings={}, transfer_results=transfer, notes=["SGPO lr 1e-4 for 200 steps."])
    text = path.read_text()
    assert text.index("SGPO lr 1e-4 for 200 steps.") < text.index("## Held-out accuracy")
    assert "## Transfer: keyword pairs never trained" in text and "## Held-out combinations" not in text
    assert "On the keyword pairs never trained: p_a = 5.0%, p_g = 100.0%." in text
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["eval_transfer"]["sgpo"]["avg@k"] == 0.25 and "eval_combos" not in results
    # 0.25 - 0.05 = 0.20, intervals [0.15, 0.35] and [0.02, 0.08] apart
    assert results["comparisons_transfer"][0] == {"a": "sgpo", "b": "grpo", "difference": pytest.approx(0.2),
                                                  "ci_overlap": False}
    assert results["guidance"]["transfer"]["difference"] == pytest.approx(0.95)
    assert results["guidance"]["difference"] == pytest.approx(0.8)
