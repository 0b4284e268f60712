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


FIVE = tuple(range(5))


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
    assert prox.overrides == {"algorithm": {"ppo_epochs": 2, "mini_batches": 4},
                              "eval": {"probe_guided_problems": 32, "probe_kl_initial": True}}


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
    rec = {"cell": f"{setting}/{phase}/{variant}/seed-{seed}", "setting": {"name": setting}, "phase": phase,
           "variant": variant,
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


NEW_METRICS = ("probe/guided_accuracy", "probe/kl_initial", "rl/ratio_p05", "rl/ratio_p50", "rl/ratio_p95",
               "rl/ratio_max", "distill/masked_frac", "grad_norm")


def test_proximal_cells_probe_guided_record_the_instruments_and_the_controls_switch_one_thing(tmp_path):
    """Every proximal setting (and its controls) probes 32 training problems guided, the same ones
    its initial cell measures at step 0, and the KL to the initial model, and keeps those metrics;
    the controls are the base's `none` / c2 with the initial model as teacher and `none` with the RL
    term off, at the base's updates per rollout and learning rate."""
    from sgpo.trainer.probe import guided_probe_rows
    from sgpo.trainer.trainer import load_training_problems

    assert set(sweep.GROUPS["claims"]) >= set(sweep.GROUPS["proximal-controls"])
    for name in sweep.GROUPS["proximal"]:
        base, ctl = sweep.SETTINGS[name], sweep.SETTINGS[f"{name}-controls"]
        assert ctl.variants == ("sgpo-none-initial", "sgpo-initial", "sgpo-none-norl")
        assert (ctl.overrides, ctl.fixed_lr, ctl.seeds, ctl.record_metrics) == \
               (base.overrides, base.fixed_lr, base.seeds, base.record_metrics)
        assert set(base.record_metrics) >= set(NEW_METRICS)
    s = sweep.SETTINGS["prox-u4-lr3e-04-controls"]
    data = sweep.write_data(s, 0, tmp_path)
    cfgs = {v.label: sweep.train_config(s, v, 3e-4, 100, 0, data, data["probe-test"], "strategy-world", tmp_path / v.label)
            for v in sweep.setting_variants(s)}
    for label, cfg in cfgs.items():
        assert (cfg.eval.probe_guided_problems, cfg.eval.probe_kl_initial, cfg.eval.probe_every) == (32, True, 10)
        assert (cfg.algorithm.ppo_epochs, cfg.algorithm.mini_batches) == (1, 4)
    assert {k: (c.loss.proximal, c.algorithm.teacher, c.loss.rl_coef) for k, c in cfgs.items()} == {
        "sgpo-none-initial": ("none", "initial", 1.0), "sgpo-initial": ("c2", "initial", 1.0),
        "sgpo-none-norl": ("none", "rollout", 0.0)}
    from sgpo.io import read_jsonl_tolerant

    step0 = [r["id"] for r in read_jsonl_tolerant(data[sweep.GUIDED_PROBE_SPLIT])]
    trainer_rows = guided_probe_rows(load_training_problems(cfgs["sgpo-initial"]).problems, 32)
    assert len(step0) == 32 and step0 == [r["id"] for r in trainer_rows]
    assert sweep.GUIDED_PROBE_SPLIT not in sweep.write_data(sweep.SETTINGS["pair"], 0, tmp_path)


def _prox_done(collapsing: dict[str, int], start=0.8):
    """Initial cells (guided training probe at step 0: ``start``) and `none` cells of the whole
    proximal grid; in setting N the first ``collapsing[N]`` seeds fall below half of ``start``."""
    done = {}
    for name in sweep.GROUPS["proximal"]:
        s = sweep.SETTINGS[name]
        for seed in s.seeds:
            done[sweep.Cell(name, "initial", "initial", seed).id] = {
                "splits": {sweep.GUIDED_PROBE_SPLIT: {"avg@k": start}}}
            low = seed < collapsing.get(name, 0)
            series = [[10, start], [20, 0.3 * start if low else 0.9 * start], [30, start]]
            done[sweep.Cell(name, "report", "sgpo-none", seed, s.fixed_lr).id] = {"metrics": {
                "probe/guided_accuracy": series}}
    return done


def test_controls_run_only_at_the_collapsing_setting():
    import claims_report
    import sweep_claims

    controls = sweep.settings_named("proximal-controls")
    # ties go to the smaller U, then the smaller learning rate
    done = _prox_done({"prox-u1-lr1e-03": 2, "prox-u8-lr1e-03": 3, "prox-u4-lr3e-04": 3})
    assert sweep_claims.collapsing_setting(sweep, done) == "prox-u4-lr3e-04"
    todo = sweep.plan(done, controls)
    assert {c.setting for c in todo} == {"prox-u4-lr3e-04-controls"} and {c.seed for c in todo} == set(FIVE)
    done.update({sweep.Cell("prox-u4-lr3e-04-controls", "initial", "initial", seed).id: {} for seed in FIVE})
    todo = sweep.plan(done, controls)
    assert {(c.variant, c.lr, c.steps) for c in todo} == {(v, 3e-4, 100) for v in sweep_claims.CONTROLS}
    # not before every `none` cell of the grid is done, and not where nothing collapses
    partial = dict(done)
    del partial[sweep.Cell("prox-u8-lr1e-03", "report", "sgpo-none", 4, 1e-3).id]
    assert sweep_claims.collapsing_setting(sweep, partial) is None and sweep.plan(partial, controls) == []
    calm = _prox_done({})
    assert sweep_claims.collapsing_setting(sweep, calm) is None and sweep.plan(calm, controls) == []
    # the report counts collapses with the same rule (the guided probe against its step-0 value)
    cell = done[sweep.Cell("prox-u4-lr3e-04", "report", "sgpo-none", 0, 3e-4).id]
    initial = done[sweep.Cell("prox-u4-lr3e-04", "initial", "initial", 0).id]
    assert claims_report.collapse(cell, initial=initial) and not claims_report.collapse(
        done[sweep.Cell("prox-u4-lr3e-04", "report", "sgpo-none", 3, 3e-4).id], initial=initial)



@pytest.mark.slow
def test_a_small_proximal_control_runs_end_to_end(tmp_path, monkeypatch):
    """The RL-off control at U = 4 on the pair world's tuning seed (its model is in the cache after
    first use), shrunk: the initial cell measures the guided probe at step 0 on the 32 problems
    the trainer probes; the report cell records the guided probe, the KL to the initial model and
    the ratio quantiles, its RL term is 0 at every step, and 4 updates per rollout move the ratios."""
    from dataclasses import replace

    name = "prox-u4-lr3e-04-controls"
    small = replace(sweep.SETTINGS[name], step_budget=4, probe_every=2, train_problems=48, eval_problems=8,
                    probe_problems=8)
    monkeypatch.setitem(sweep.SETTINGS, name, small)
    initial = sweep.run_cell(sweep.Cell(name, "initial", "initial", 100), tmp_path / "cells", tmp_path / "work")
    assert initial["splits"][sweep.GUIDED_PROBE_SPLIT]["n"] == 32
    rec = sweep.run_cell(sweep.Cell(name, "report", "sgpo-none-norl", 100, 3e-4, 4), tmp_path / "cells",
                         tmp_path / "work")
    m = rec["metrics"]
    assert [s for s, _ in m["probe/guided_accuracy"]] == [2, 4] and [s for s, _ in m["probe/kl_initial"]] == [2, 4]
    assert all(v > 0 for _, v in m["probe/kl_initial"]) and all(v == 0 for _, v in m["loss/rl"])
    assert all(hi > 1 for _, hi in m["rl/ratio_max"]) and len(m["rl/ratio_p50"]) == 4
    assert rec["config"]["loss"]["rl_coef"] == 0.0 and rec["config"]["eval"]["probe_guided_problems"] == 32


def test_constraint_modes_run_only_at_each_u_stage_two_rate():
    """The pruned proximal grid (claims-plan.md, amendment 2026-12-02 21:45): stage one is `none`
    at every (U, lr); at each U the constraint modes run only at the rate whose `none` cells
    collapsed in the most seeds (ties: the smaller rate; nothing collapsed: the largest rate), and
    only once every `none` cell at that U is done."""
    import sweep_claims

    prox = sweep.settings_named("proximal")
    done = _prox_done({"prox-u1-lr3e-04": 2, "prox-u1-lr1e-03": 2, "prox-u4-lr1e-04": 1, "prox-u4-lr1e-03": 4})
    assert [sweep_claims.stage_two_lr(sweep, done, u) for u in (1, 4, 8)] == [3e-4, 1e-3, 1e-3]
    modes = {(c.setting, c.variant) for c in sweep.plan(done, prox)}
    assert modes == {("prox-u1-lr3e-04", "sgpo"), ("prox-u1-lr3e-04", "sgpo-c3"),
                     *{("prox-u4-lr1e-03", v) for v in ("sgpo", "sgpo-c1", "sgpo-c3")},
                     *{("prox-u8-lr1e-03", v) for v in ("sgpo", "sgpo-c1", "sgpo-c3", "sgpo-tau0.1", "sgpo-tau0.5")}}
    # stage one first: with one `none` cell at U = 4 missing, U = 4's modes wait, the others do not
    partial = dict(done)
    del partial[sweep.Cell("prox-u4-lr3e-04", "report", "sgpo-none", 2, 3e-4).id]
    assert sweep_claims.stage_two_lr(sweep, partial, 4) is None
    todo = {(c.setting, c.variant) for c in sweep.plan(partial, prox)}
    assert ("prox-u4-lr3e-04", "sgpo-none") in todo and not any(s.startswith("prox-u4") and v != "sgpo-none"
                                                                  for s, v in todo)
    assert ("prox-u1-lr3e-04", "sgpo-c3") in todo


def test_proximal_report_counts_collapses_per_u_and_pairs_modes_with_none(tmp_path):
    """The dial-3 tables read the cells the way the plan states them: collapses of `none` per
    (U, lr) with each U's stage-two rate marked, every mode minus `none` paired by seed on the area
    under the held-out curve and on the final held-out accuracy, and the KL before a collapse."""
    import claims_report

    done = _prox_done({"prox-u4-lr1e-03": 4})
    for seed in FIVE:  # held-out curves and the KL probe: none at 20%, c2 at 60%
        for label, acc in (("sgpo-none", 0.2), ("sgpo", 0.6)):
            cid = sweep.Cell("prox-u4-lr1e-03", "report", label, seed, 1e-3).id
            cell = done.setdefault(cid, {"metrics": {"probe/guided_accuracy": [[10, 0.8], [20, 0.8], [30, 0.8]]}})
            cell.update(curve=[{"step": s, "accuracy": acc + 0.01 * seed} for s in (10, 20, 30)],
                        splits={"heldout": {"avg@k": acc + 0.01 * seed}})
            cell["metrics"]["probe/kl_initial"] = [[10, 0.5 if seed < 4 else 0.1], [20, 0.9], [30, 1.0]]
    for cid, r in done.items():  # the report finds cells by their id's fields
        name, phase, variant = cid.split("/")[:3]
        r.update(cell=cid, phase=phase, variant=variant)
        r.setdefault("seed", int(cid.rsplit("seed-", 1)[1]))
    lines, grid = claims_report.proximal_collapse_grid(done)
    assert grid["prox-u4-lr1e-03"] == {"collapsed": 4, "seeds": 5} and grid["u4-stage-two-lr"] == 1e-3
    assert grid["prox-u8-lr1e-03"]["collapsed"] == 0 and grid["u8-stage-two-lr"] == 1e-3
    assert any(line.startswith("| 4 |") and "4/5 *" in line for line in lines)
    _, tests = claims_report.proximal_modes(done)
    assert {(t["a"], t["split"]) for t in tests} == {("prox-u4-lr1e-03/sgpo", "area"),
                                                     ("prox-u4-lr1e-03/sgpo", "final held-out")}
    assert all(abs(t["mean_diff"] - 0.4) < 1e-9 and t["n"] == 5 for t in tests)
    rows = {line.split(" | ")[0]: line.split(" | ") for line in claims_report.proximal_matrix(done) if line.startswith("| sgpo")}
    column = 1 + list(sweep.GROUPS["proximal"]).index("prox-u4-lr1e-03")
    assert rows["| sgpo-none"][column] == "4/5, 22.0" and rows["| sgpo"][column] == "0/5, 62.0"
    assert rows["| sgpo-c1"][column] == "not run" and rows["| sgpo-c1"][1] == ""  # c1 is not in U = 1's row
    _, kl = claims_report.kl_before_collapse(done)
    assert kl["collapsing_runs_with_a_prior_probe"] == 4 and abs(kl["kl_before"] - 0.5) < 1e-9
    assert kl["median_step"] == 10 and abs(kl["kl_calm"] - 0.1) < 1e-9


def test_the_rest_of_the_proximal_grid_runs_once_stage_two_and_the_controls_are_done():
    """Amendment 2026-12-02 21:58: after stage two and the controls, every other registered cell
    of the grid runs (the plan's full grid); not before."""
    import sweep_claims

    prox = sweep.settings_named("proximal")
    done = _prox_done({"prox-u1-lr3e-04": 5, "prox-u4-lr1e-04": 3, "prox-u4-lr3e-04": 5})
    stage_two = {(c.setting, c.variant, c.seed) for c in sweep.plan(done, prox)}
    assert {s for s, _, _ in stage_two} == {"prox-u1-lr3e-04", "prox-u4-lr3e-04", "prox-u8-lr1e-03"}
    assert not sweep_claims.stage_two_done(sweep, done)
    for setting, variant, seed in stage_two:
        done[sweep.Cell(setting, "report", variant, seed, sweep.SETTINGS[setting].fixed_lr).id] = {}
    assert sweep_claims.collapsing_setting(sweep, done) == "prox-u1-lr3e-04"
    assert not sweep_claims.stage_two_done(sweep, done)  # the controls are not done yet
    for v in sweep_claims.CONTROLS:
        for seed in FIVE:
            done[sweep.Cell("prox-u1-lr3e-04-controls", "report", v, seed, 3e-4).id] = {}
    assert sweep_claims.stage_two_done(sweep, done)
    rest = {(c.setting, c.variant) for c in sweep.plan(done, prox)}
    registered = {(n, v) for n in sweep.GROUPS["proximal"] for v in sweep.SETTINGS[n].variants if v != "sgpo-none"}
    assert rest == registered - {(s, v) for s, v, _ in stage_two}
