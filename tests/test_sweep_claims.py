"""The claims' dials on the sweep harness (benchmarks/sweep_claims.py): every setting's world and
every variant's training config validate, the knobs reach the cells only as problem files and
model settings, tuning choices are inherited or redone as declared, two-stage variants wait for
their first stage, and nothing of the dials runs unless named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sweep  # noqa: E402


def _claims():
    return [sweep.SETTINGS[n] for n in sweep.GROUPS["claims"]]


def test_every_dial_setting_builds_its_world_and_valid_configs(tmp_path):
    data = {"train": tmp_path / "train.jsonl"}
    data["train"].write_text("")
    assert set(sweep.GROUPS) >= {"trace", "kl", "proximal", "quality", "competence", "capacity", "claims"}
    for s in _claims():
        world = sweep.world_of(s, 0)
        for key, value in s.tasks.items():
            assert getattr(world.tasks, key) == value, (s.name, key)
        for key, value in s.pretrain.items():
            assert getattr(world.pretrain, key) == value, (s.name, key)
        for v in sweep.setting_variants(s):
            cfg = sweep.train_config(s, v, 1e-4, 10, 0, data, tmp_path / "probe.jsonl", "strategy-world",
                                     tmp_path / "run")
            assert cfg.algorithm.samples_per_problem == s.budget and cfg.algorithm.max_new_tokens == s.max_new_tokens
            for section, values in v.overrides.items():
                for key, value in values.items():
                    assert getattr(getattr(cfg, section), key) == value, (s.name, v.label, key)


def test_nothing_of_the_dials_runs_by_default():
    assert [s.name for s in sweep.settings_named(",".join(sweep.DEFAULT_SETTINGS))] == ["pair", "pair-long"]
    assert not any(c.setting != "pair" for c in sweep.plan({}, sweep.settings_named("pair")))
    with pytest.raises(SystemExit, match="unknown setting"):
        sweep.settings_named("trace-T9")


def _tune_record(cell, best_lr):
    acc = 0.6 if cell.lr == best_lr else 0.2
    return {"cell": cell.id, "curve": [{"step": 20, "accuracy": acc - 0.1}, {"step": 40, "accuracy": acc}]}


def _initials_done(done, setting):
    """A seed's cells wait for its initial cell (it pre-trains the seed's model): mark them done."""
    done.update({sweep.Cell(setting.name, "initial", "initial", seed).id: {} for seed in setting.seeds})
    return done


def test_tuning_is_inherited_retuned_or_fixed_as_declared():
    base = sweep.SETTINGS["pair"]
    done = {c.id: _tune_record(c, 3e-4 if c.variant != "sft" else 1e-3) for c in sweep.tune_cells(base)}
    t2 = sweep.SETTINGS["trace-T2"]
    # SFT is re-tuned per style; LUFFY's gamma variants and the two-stage run inherit the base's choice
    assert {c.variant for c in sweep.tune_cells(t2)} == {"sft"}
    choice = sweep.tuned(t2, done, "luffy-g0.01")
    assert choice == sweep.tuned(base, done, "luffy") and (choice["lr"], choice["steps"]) == (3e-4, 40)
    assert sweep.tuned(t2, done, "sft") is None  # its own tuning has not run
    kl = sweep.SETTINGS["kl-p2-g8"]
    assert sweep.tune_cells(kl) == [] and kl.budget == 12 and kl.group_guided == 8
    todo = sweep.plan(_initials_done(done, kl), [kl])
    assert {(c.variant, c.lr) for c in todo if c.phase == "report"} == {("sgpo", 3e-4), ("imitation", 3e-4)}
    assert sorted({c.seed for c in todo}) == list(range(5))
    prox = sweep.SETTINGS["prox-u8-lr1e-03"]
    assert sweep.tune_cells(prox) == [] and sweep.tuned(prox, {}, "sgpo-c1") == {"lr": 1e-3, "steps": 100}
    assert prox.overrides == {"algorithm": {"ppo_epochs": 2, "mini_batches": 4}}


def test_two_stage_variant_waits_for_its_first_stage():
    base = sweep.SETTINGS["pair"]
    done = {c.id: _tune_record(c, 1e-4) for c in sweep.tune_cells(base)}
    t0 = sweep.SETTINGS["trace-T0"]
    todo = sweep.plan(_initials_done(done, t0), [t0])
    assert not any(c.variant == "sft-grpo" for c in todo)
    first = sweep.Cell("trace-T0", "report", "sft", 3, 1e-4)
    done[first.id] = {"cell": first.id}
    todo = sweep.plan(done, [t0])
    assert [c.seed for c in todo if c.variant == "sft-grpo"] == [3]


def test_trace_style_reaches_the_cells_only_through_the_problem_files(tmp_path):
    from sgpo.io import read_jsonl_tolerant

    native = sweep.write_data(sweep.SETTINGS["trace-T0"], 0, tmp_path)
    for style in ("T2", "T4"):
        styled = sweep.write_data(sweep.SETTINGS[f"trace-{style}"], 0, tmp_path)
        for split in ("train", "heldout", "transfer"):
            a, b = read_jsonl_tolerant(native[split]), read_jsonl_tolerant(styled[split])
            assert [(r["problem"], r["answer"], r["strategy"]) for r in a] == \
                   [(r["problem"], r["answer"], r["strategy"]) for r in b]
            assert all(r["trace_style"] == style for r in b)
            assert all(x["teacher_response"] != y["teacher_response"] for x, y in zip(a, b))
    # the dial's world is the base model: the same cache key, so the student is the same
    assert sweep.world_of(sweep.SETTINGS["trace-T4"], 0).key() == sweep.world_of(sweep.SETTINGS["pair"], 0).key()
    assert sweep.world_of(sweep.SETTINGS["kl-p2-g1"], 0).key() != sweep.world_of(sweep.SETTINGS["pair"], 0).key()
    rows = read_jsonl_tolerant(sweep.write_data(sweep.SETTINGS["quality-w30"], 0, tmp_path)["train"])
    share = sum(r["strategy_quality"] == "wrong" for r in rows) / len(rows)
    assert 0.2 < share < 0.4
    assert json.dumps(sweep.SETTINGS["quality-w30"].tasks) == '{"strategy_wrong_share": 0.3}'


def test_initial_cells_record_the_dials_axes(tmp_path):
    """An initial cell's capability: the per-token NLL of its own setting's traces (T2 here) and
    execution accuracy, from the same functions benchmarks/world_dials.py uses."""
    from sgpo.io import read_jsonl_tolerant
    from sgpo.world.capability import trace_nll
    from sgpo.world.pretrain import PretrainSpec, WorldConfig, build_model
    from sgpo.world.tokenizer import build_tokenizer

    s = sweep.SETTINGS["trace-T2"]
    data = sweep.write_data(s, 0, tmp_path)
    tok = build_tokenizer(sweep.world_of(s, 0).tasks)
    model = build_model(WorldConfig(pretrain=PretrainSpec(hidden_size=16, num_layers=1, num_heads=2,
                                                          intermediate_size=32)), tok)
    cap = sweep.capability(model, tok, data)
    rows = read_jsonl_tolerant(data["train"])
    assert all(r["teacher_response"].count(":") == 1 for r in rows)  # T2: answer only
    assert cap["trace_nll"] == pytest.approx(trace_nll(model, tok, rows)["nll_per_token"])
    assert 0.0 <= cap["execution"] <= 1.0 and cap["parameters"] == sum(p.numel() for p in model.parameters())


def _cell(setting, variant, seed, acc, **extra):
    phase = "initial" if variant == "initial" else "report"
    rec = {"cell": f"{setting}/{phase}/{variant}/seed-{seed}", "setting": setting, "phase": phase, "variant": variant,
           "seed": seed, "splits": {sp: {"avg@k": acc} for sp in ("heldout", "transfer", "heldout-guided")}}
    rec.update(extra)
    return rec


def test_claims_report_from_cells(tmp_path):
    import claims_report

    cells = [_cell("pair", "sgpo", s, 0.6 + 0.01 * s) for s in range(5)]
    for style, nll, sft in (("T0", 0.1, 0.95), ("T2", 5.0, 0.3), ("T4", 4.0, 0.5)):
        name = f"trace-{style}"
        cells += [_cell(name, "initial", s, 0.07, capability={"trace_nll": nll, "execution": 1.0}) for s in range(5)]
        cells += [_cell(name, "sft", s, sft + 0.01 * s) for s in range(5)]
    rising = [[i, 0.9] for i in range(1, 31)]
    falling = [[i, 0.9 if i < 10 else 0.2] for i in range(1, 31)]
    curve = [{"step": 10 * i, "accuracy": 0.1 * i} for i in range(1, 4)]
    cells += [_cell("prox-u8-lr1e-03", "sgpo-none", s, 0.1, metrics={"p_guided": falling}, curve=curve) for s in range(5)]
    cells += [_cell("prox-u8-lr1e-03", "sgpo", s, 0.5, metrics={"p_guided": rising}, curve=curve) for s in range(5)]
    d = tmp_path / "cells"
    for rec in cells:
        p = d / f"{rec['cell']}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(rec))
    claims_report.report(d, tmp_path / "claims.md")
    text = (tmp_path / "claims.md").read_text()
    data = json.loads((tmp_path / "claims.json").read_text())
    assert data["trace_axis"]["styles"] == 3 and data["trace_axis"]["spearman"] == pytest.approx(-1.0)
    trace = data["tests"]["trace: SGPO minus each trace-imitating method"]
    t2 = [t for t in trace if t["b"] == "trace-T2/sft" and t["split"] == "heldout"][0]
    assert t2["a"] == "pair/sgpo" and t2["mean_diff"] == pytest.approx(0.3) and t2["significant"]
    assert "| prox-u8-lr1e-03 | sgpo-none | 5 | 5 |" in text and "| prox-u8-lr1e-03 | sgpo | 5 | 0 |" in text
