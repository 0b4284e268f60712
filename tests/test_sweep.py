"""benchmarks/sweep.py: cell ids, the plan (done cells skipped, reported cells only after their
variant's tuning), the report rebuilt from cell files alone, and one real cell end to end."""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sweep  # noqa: E402


def test_cell_ids_round_trip():
    for cell in (sweep.Cell("pair", "tune", "sgpo", 100, 3e-5), sweep.Cell("pair", "initial", "initial", 4),
                 sweep.Cell("pair", "report", "sgpo-constant", 9, 1e-3)):
        back = sweep.Cell.parse(cell.id)
        assert back == cell, cell.id
    assert sweep.Cell("pair", "tune", "grpo", 101, 1e-4).id == "pair/tune/grpo/lr-1e-04/seed-101"
    with pytest.raises(SystemExit, match="bad cell id"):
        sweep.Cell.parse("pair/tune")


def _fake_tune(cell, best_lr):
    acc = 0.5 if cell.lr == best_lr else 0.2
    return {"cell": cell.id, "setting": cell.setting, "phase": "tune", "variant": cell.variant, "seed": cell.seed,
            "lr": cell.lr, "curve": [{"step": 20, "accuracy": acc - 0.1}, {"step": 40, "accuracy": acc}]}


def test_plan_tunes_first_and_reports_at_the_tuned_rate():
    s = sweep.SETTINGS["pair"]
    todo = sweep.plan({}, [s])
    assert len(todo) == len(sweep.VARIANTS) * len(sweep.LR_GRID) * len(sweep.TUNE_SEEDS) + len(sweep.REPORT_SEEDS)
    assert all(c.phase == "tune" for c in todo[: -len(sweep.REPORT_SEEDS)])
    assert {c.seed for c in todo if c.phase == "tune"} == set(sweep.TUNE_SEEDS)
    assert not {c.seed for c in todo if c.phase == "tune"} & set(sweep.REPORT_SEEDS)  # tuning seeds never reported
    done = {c.id: _fake_tune(c, 3e-4) for c in sweep.tune_cells(s) if c.variant == "grpo"}
    # a seed's cells wait for its initial cell, which pre-trains the seed's model
    assert not [c for c in sweep.plan(done, [s]) if c.phase == "report"]
    done[sweep.Cell("pair", "initial", "initial", 0).id] = {}
    todo = sweep.plan(done, [s])
    assert [c.id for c in todo[-len(sweep.REPORT_SEEDS):][:2]] == ["pair/report/grpo/lr-3e-04/seed-0",
                                                                  "pair/initial/initial/seed-1"]
    for seed in sweep.REPORT_SEEDS:
        done[sweep.Cell("pair", "initial", "initial", seed).id] = {}
    todo = sweep.plan(done, [s])
    assert not any(c.id in done for c in todo)
    report = [c for c in todo if c.phase == "report"]
    assert {c.variant for c in report} == {"grpo"} and {c.lr for c in report} == {3e-4}
    assert {c.steps for c in report} == {40} and sorted(c.seed for c in report) == list(sweep.REPORT_SEEDS)


def _fake_report(setting, variant, seed, level, rng):
    splits = {}
    for sp in sweep.REPORTED_SPLITS:
        problems = [[f"{sp}-{i}", f"kw{i % 4}", float(rng.random() < level)] for i in range(16)]
        acc = sum(p[2] for p in problems) / 16
        per_kw = {}
        for _, kw, a in problems:
            per_kw.setdefault(kw, []).append(a)
        splits[sp] = {"avg@k": acc, "problems": problems, "per_keyword": {k: sum(v) / len(v) for k, v in per_kw.items()}}
    phase = "initial" if variant == "initial" else "report"
    cell = sweep.Cell(setting, phase, variant, seed, None if phase == "initial" else 1e-4)
    # as run_cell writes it: the setting's fields under "setting", the name only in the id
    rec = {"cell": cell.id, "setting": {"name": setting}, "phase": phase, "variant": variant, "seed": seed,
           "splits": splits}
    if phase == "initial":
        rec["probe_accuracy"] = 0.1
    else:
        rec["curve"] = [{"step": 20 * i, "trajectories_per_problem": 5.0 * i, "accuracy": min(level, 0.1 + 0.1 * i)}
                        for i in range(1, 5)]
        rec["samples_per_problem"] = {"auto": 4.0, "guided": 4.0}
    return rec


def test_report_rebuilds_tables_and_the_readme_from_cells(tmp_path):
    rng = random.Random(0)
    cells = tmp_path / "cells"
    recs = [_fake_report("pair", "initial", s, 0.1, rng) for s in range(4)]
    recs += [_fake_report("pair", "sgpo", s, 0.8, rng) for s in range(4)]
    recs += [_fake_report("pair", "grpo", s, 0.3, rng) for s in range(4)]
    for rec in recs:
        path = cells / f"{rec['cell']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{sweep_report().README_BEGIN}\nold\n{sweep_report().README_END}\nafter\n")
    out = tmp_path / "results" / "sweep.md"
    args = argparse.Namespace(cells_dir=str(cells), out=str(out), readme=str(readme), settings="pair")
    assert sweep_report().report(args) == 0
    text, data = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert data["cells"] == 12 and "| sgpo - grpo | heldout | 4 |" in text
    (cmp_,) = [r for r in data["pair"]["comparisons"] if r["split"] == "heldout"]
    sg = [r["splits"]["heldout"]["avg@k"] for r in recs if r["variant"] == "sgpo"]
    gr = [r["splits"]["heldout"]["avg@k"] for r in recs if r["variant"] == "grpo"]
    assert cmp_["mean_diff"] == pytest.approx(sum(sg) / 4 - sum(gr) / 4)
    first = min(data["pair"]["comparisons"], key=lambda r: r["p"])  # Holm: the smallest of 3 p-values times 3
    assert first["p_holm"] == pytest.approx(min(1.0, 3 * first["p"])) and len(data["pair"]["comparisons"]) == 3
    assert data["pair"]["curves"]["sgpo"]["final"] == pytest.approx(0.5)  # min(0.8, 0.1 + 0.4)
    assert (out.parent / "sweep-curves-pair.png").exists()
    new = readme.read_text()
    assert new.startswith("intro\n") and new.endswith("after\n") and "old" not in new
    assert "| sgpo | 4 |" in new and "sgpo - grpo, heldout" in new and "- sgpo: AUC " in new
    # again from the same files: the same report
    sweep_report().report(args)
    assert out.read_text() == text


def sweep_report():
    import sweep_report as m

    return m


@pytest.mark.slow
def test_one_tune_cell_end_to_end(tmp_path, monkeypatch):
    """A small tune cell on the pair world's tuning seed (its model is pre-trained into the cache
    on first use): the file it writes, budget parity from the trainer's own counts, and a
    second call that skips it."""
    from dataclasses import replace

    small = replace(sweep.SETTINGS["pair"], name="pair", step_budget=4, probe_every=2, train_problems=32,
                    eval_problems=8, probe_problems=8)
    monkeypatch.setitem(sweep.SETTINGS, "pair", small)
    cell = sweep.Cell("pair", "tune", "sgpo", 100, 1e-4, 4)
    rec = sweep.run_cell(cell, tmp_path / "cells", tmp_path / "work")
    path = tmp_path / "cells" / "pair" / "tune" / "sgpo" / "lr-1e-04" / "seed-100.json"
    assert json.loads(path.read_text()) == rec
    assert [p["step"] for p in rec["curve"]] == [2, 4] and rec["config"]["training"]["learning_rate"] == 1e-4
    spp = rec["samples_per_problem"]
    assert spp["auto"] + spp["guided"] + spp["reference"] == small.budget and spp["guided"] == small.group_guided
    assert rec["code"]["commit"] and rec["world"]["transfer_pairs"]
    mtime = path.stat().st_mtime
    assert sweep.run_cell(cell, tmp_path / "cells", tmp_path / "work") == rec and path.stat().st_mtime == mtime


def test_budget_check_uses_the_trainers_counts():
    cell, sgpo, sft = sweep.Cell("pair", "tune", "sgpo", 100, 1e-4), sweep.variant("sgpo"), sweep.variant("sft")
    luffy = sweep.variant("luffy")
    sweep.check_budget(cell, sgpo, {"auto": 4.0, "guided": 4.0, "reference": 0.0, "logged": 1.0}, 8)
    sweep.check_budget(cell, luffy, {"auto": 7.0, "guided": 0.0, "reference": 1.0, "logged": 1.0}, 8)
    sweep.check_budget(cell, sft, {"auto": 0.0, "guided": 0.0, "reference": 0.0, "logged": 0.0}, 8)
    with pytest.raises(SystemExit, match="not the budget 8"):  # the old imitation/guided_rl setting
        sweep.check_budget(cell, sgpo, {"auto": 8.0, "guided": 4.0, "reference": 0.0, "logged": 1.0}, 8)
    with pytest.raises(SystemExit, match="logged no samples/auto"):
        sweep.check_budget(cell, sgpo, sweep.samples_per_problem([{"step": 1, "loss": 0.1}]), 8)


@pytest.mark.parametrize("label", [v.label for v in sweep.VARIANTS])
def test_every_variant_gets_the_budget_by_construction(label, tmp_path):
    from sgpo.trainer.specs import method_spec

    s, v = sweep.SETTINGS["pair"], sweep.variant(label)
    paths = {"train": tmp_path / "train.jsonl"}
    cfg = sweep.train_config(s, v, 1e-4, 10, 0, paths, tmp_path / "probe.jsonl", "m", tmp_path / "run")
    b = method_spec(v.method).budget(cfg.algorithm.samples_per_problem, cfg.algorithm.group_guided)
    assert b.total == (s.budget if v.method != "sft" else 1) and cfg.training.learning_rate == 1e-4
    assert cfg.eval.probe_every == s.probe_every and cfg.algorithm.method == v.method


def test_committed_readme_table_is_the_one_the_committed_cells_give(tmp_path):
    """README.md's sweep block is generated: after committing cells, run `sweep.py report`."""
    root = Path(__file__).resolve().parents[1]
    readme = tmp_path / "README.md"
    readme.write_text((root / "README.md").read_text())
    args = argparse.Namespace(cells_dir=str(root / "benchmarks" / "results" / "cells"),
                              out=str(tmp_path / "sweep.md"), readme=str(readme), settings="pair")
    sweep_report().report(args)
    assert readme.read_text() == (root / "README.md").read_text(), "run: python benchmarks/sweep.py report"


def _fake_curves(cell, acc_by_lr):
    acc = acc_by_lr.get(cell.lr, 0.1)
    return {"cell": cell.id, "setting": cell.setting, "phase": "tune", "variant": cell.variant, "seed": cell.seed,
            "lr": cell.lr, "curve": [{"step": 20, "accuracy": acc / 2}, {"step": 40, "accuracy": acc}]}


def test_a_choice_on_the_grid_edge_grows_that_variants_grid_one_rung():
    s = sweep.SETTINGS["pair"]
    base = {c.id: _fake_curves(c, {3e-5: 0.4, 1e-4: 0.3}) for c in sweep.tune_cells(s) if c.variant == "grpo"}
    assert sweep.tuned(s, base, "grpo") is None  # 3e-5 is the grid's lower edge: 1e-5 must be tried first
    todo = [c for c in sweep.plan(base, [s]) if c.variant == "grpo"]
    assert sorted({c.lr for c in todo}) == [1e-5] and {c.seed for c in todo} == set(sweep.TUNE_SEEDS)
    assert {c.lr for c in sweep.tune_cells(s) if c.variant == "grpo"} == set(sweep.LR_GRID)  # without cells: the grid
    worse = dict(base, **{c.id: _fake_curves(c, {1e-5: 0.35}) for c in todo})
    assert sweep.tuned(s, worse, "grpo")["lr"] == 3e-5
    better = dict(base, **{c.id: _fake_curves(c, {1e-5: 0.5}) for c in todo})
    assert sweep.tuned(s, better, "grpo")["lr"] == 1e-5  # the ladder's last rung: no further growth
    # the upper edge grows upwards; an interior choice grows nothing
    top = {c.id: _fake_curves(c, {1e-3: 0.6}) for c in sweep.tune_cells(s) if c.variant == "sft"}
    assert sweep.tuned(s, top, "sft") is None
    assert {c.lr for c in sweep.tune_cells(s, top) if c.variant == "sft"} == set(sweep.LR_GRID) | {3e-3}
    mid = {c.id: _fake_curves(c, {1e-4: 0.6}) for c in sweep.tune_cells(s) if c.variant == "sft"}
    assert sweep.tuned(s, mid, "sft")["lr"] == 1e-4


def test_the_long_setting_reports_at_the_tuned_rate_for_its_own_step_count():
    s, long = sweep.SETTINGS["pair"], sweep.SETTINGS["pair-long"]
    done = {c.id: _fake_curves(c, {1e-4: 0.6}) for c in sweep.tune_cells(s)}
    assert sweep.tune_cells(long, done) == []
    assert sweep.tuned(long, done, "grpo") == {**sweep.tuned(s, done, "grpo"), "steps": long.report_steps}
    for seed in long.seeds:
        done[sweep.Cell(long.name, "initial", "initial", seed).id] = {}
    report = [c for c in sweep.plan(done, [long]) if c.phase == "report"]
    assert {c.variant for c in report} == set(long.variants) and {c.steps for c in report} == {600}
    assert sorted({c.seed for c in report}) == list(long.seeds)


def test_budget_counts_the_trace_and_reach_counts_the_seeds_that_got_there():
    import sweep_report

    assert sweep_report._budget({"auto": 7.0, "guided": 0.0, "reference": 1.0}) == "7 + 0 + 1 trace"
    assert sweep_report._budget({"auto": 4.0, "guided": 4.0, "reference": 0.0}) == "4 + 4"
    assert sweep_report._budget({"auto": 8.0, "guided": float("nan")}) == "8 + 0"
    assert sweep_report._reach([None, 10.0, 20.0]) == "2/3 (15)" and sweep_report._reach([None, None]) == "0/2"
