"""The claims' dials (issue 17) as settings of the sweep harness (``benchmarks/sweep.py``).

Grids, measured axes and the predictions that would confirm or refute each claim:
``benchmarks/results/claims-plan.md`` (committed before any of these cells ran). Each dial is a
group of settings; nothing runs unless named, the issue-16 setting ``pair`` stays the default:

    PYTHONPATH=. nice -n 19 python benchmarks/sweep.py status --settings claims
    PYTHONPATH=. nice -n 19 python benchmarks/sweep.py run --settings trace --jobs 2 --until 15:35
    PYTHONPATH=. python benchmarks/claims_report.py        # the dials' tables, from the cells

Groups: ``trace`` (trace styles T0-T5), ``kl`` (KL vs imitation with partial strategies and
G_g), ``proximal`` (updates per rollout x learning rate x constraint, in two stages: ``none``
everywhere, then the constraint modes per U at the rate :func:`stage_two_lr` selects), ``proximal-controls`` (the
initial model as teacher and the RL term off, gated: only the collapsing setting's run, once the
grid's ``none`` cells name it, :func:`collapsing_setting`), ``quality`` (wrong or
partial strategies x distill_on x weight mode), ``competence`` (biased pre-training prior),
``capacity`` (model sizes and pre-training lengths); ``claims`` is all of them. A dial's
settings take the base setting's tuning choices (``tune_from="pair"``) except where the dial is
expected to move a method's optimum (``retune``), or fix the learning rate (the proximal grid).
"""

from __future__ import annotations

from types import ModuleType

FIVE = tuple(range(5))
TEN = tuple(range(10))
# what the proximal and KL dials read from the trainer's metrics, per step (the probe's at probe steps)
STABILITY_METRICS = ("p_auto", "p_guided", "distill/masked_frac", "distill/kl_mean", "rl/ratio_mean",
                     "rl/clip_frac_low", "rl/clip_frac_high", "grad_norm", "loss/distill", "loss/rl",
                     "rl/ratio_p05", "rl/ratio_p50", "rl/ratio_p95", "rl/ratio_max",
                     "probe/avg@k", "probe/guided_accuracy", "probe/kl_initial")
# the proximal dial's probes: guided success on the first 32 training problems with their strategy,
# the policy's KL to the initial model on the unguided probe's completions
PROXIMAL_PROBE = {"probe_guided_problems": 32, "probe_kl_initial": True}
# the controls at the collapsing setting: the initial model as teacher (with none and c2), the RL term off
CONTROLS = ("sgpo-none-initial", "sgpo-initial", "sgpo-none-norl")
SELECTIVITY_METRICS = ("p_auto", "p_guided", "distill/kl_mean", "distill/top10_share", "weight/mean")

# reported seeds per trace style: 10 where the issue asks for them (T0, T2, T4), else 5
TRACE_SEEDS = {"T0": TEN, "T1": FIVE, "T2": TEN, "T3": FIVE, "T4": TEN, "T5": FIVE}
PRIOR_BIAS = {"b0": 0.0, "b0.5": 0.5, "b0.8": 0.8}  # to be confirmed by benchmarks/world_dials.py on seed 0 (claims-plan.md)
MODELS = {"small": {"hidden_size": 64, "intermediate_size": 128}, "large": {"hidden_size": 256, "intermediate_size": 512},
          "short": {"steps": 350}, "long": {"steps": 1400}}


def variants(m: ModuleType) -> tuple:
    V = m.Variant
    alg = lambda **kw: {"algorithm": kw}  # noqa: E731
    loss = lambda **kw: {"loss": kw}  # noqa: E731
    out = [V("sft-grpo", "grpo", tune_as="grpo", init_from="sft"),
           V("luffy-g0.01", "luffy", loss(luffy_gamma=0.01), tune_as="luffy"),
           V("luffy-g1", "luffy", loss(luffy_gamma=1.0), tune_as="luffy"),
           V("sgpo-none", "sgpo", loss(proximal="none"), tune_as="sgpo"),
           V("sgpo-c1", "sgpo", loss(proximal="c1"), tune_as="sgpo"),
           V("sgpo-c3", "sgpo", loss(proximal="c3"), tune_as="sgpo"),
           V("sgpo-tau0.1", "sgpo", loss(proximal="c2", tau=0.1), tune_as="sgpo"),
           V("sgpo-tau0.5", "sgpo", loss(proximal="c2", tau=0.5), tune_as="sgpo"),
           V("sgpo-need", "sgpo", alg(weight_mode="need"), tune_as="sgpo"),
           V("sgpo-competence", "sgpo", alg(weight_mode="competence"), tune_as="sgpo")]
    for mode in ("marginal", "need", "competence", "constant"):
        label = "sgpo-all" if mode == "marginal" else f"sgpo-all-{mode}"
        out.append(V(label, "sgpo", alg(distill_on="all", weight_mode=mode), tune_as="sgpo"))
    out += [V("sgpo-none-initial", "sgpo", {"loss": {"proximal": "none"}, "algorithm": {"teacher": "initial"}},
              tune_as="sgpo"),
            V("sgpo-initial", "sgpo", alg(teacher="initial"), tune_as="sgpo"),
            V("sgpo-none-norl", "sgpo", loss(proximal="none", rl_coef=0.0), tune_as="sgpo")]
    return tuple(out)


def settings(m: ModuleType) -> dict[str, dict]:
    """name -> Setting fields, per group."""
    groups: dict[str, dict[str, dict]] = {g: {} for g in ("trace", "kl", "proximal", "proximal-controls", "quality",
                                                          "competence", "capacity")}
    base = {"tune_from": "pair"}
    luffy3 = ("luffy-g0.01", "luffy", "luffy-g1")
    for style, seeds in TRACE_SEEDS.items():
        if style == "T0":  # the base cells are T0's; new here: the two-stage run and LUFFY's gamma
            vs, retune = ("sft", "sft-grpo", "luffy-g0.01", "luffy-g1"), ()
        elif style in ("T2", "T4"):
            vs, retune = ("sft", "sft-grpo") + luffy3, ("sft",)
        else:
            vs, retune = ("sft", "sft-grpo", "luffy"), ("sft",)
        extra = {}
        if style == "T4":  # long traces: the length limit is raised for every method
            vs += ("sgpo", "imitation", "grpo")
            extra = {"max_new_tokens": 96}
        groups["trace"][f"trace-{style}"] = dict(base, tasks={"trace_style": style}, variants=vs, retune=retune,
                                                 seeds=seeds, **extra)
    partial_model = {"partial_pretrain_share": 0.25}
    kl = [("p2", {"strategy_partial_share": 1.0, "partial_shifts": 2}, (1, 2, 4, 8)),
          ("p3", {"strategy_partial_share": 1.0, "partial_shifts": 3}, (1, 4)),
          ("full", {}, (1, 4))]
    for name, tasks, ggs in kl:
        for gg in ggs:  # G_a = 4 autonomous for both methods, G_g guided: budget 4 + G_g
            groups["kl"][f"kl-{name}-g{gg}"] = dict(base, tasks={**partial_model, **tasks}, variants=("sgpo", "imitation"),
                                                    budget=4 + gg, group_guided=gg, seeds=FIVE,
                                                    record_metrics=SELECTIVITY_METRICS)
    for u, (epochs, minis) in {1: (1, 1), 4: (1, 4), 8: (2, 4)}.items():
        modes = ("sgpo-none", "sgpo", "sgpo-c3") if u == 1 else ("sgpo-none", "sgpo", "sgpo-c1", "sgpo-c3")
        if u == 8:
            modes += ("sgpo-tau0.1", "sgpo-tau0.5")
        for lr in (1e-4, 3e-4, 1e-3):
            fields = dict(overrides={"algorithm": {"ppo_epochs": epochs, "mini_batches": minis}, "eval": PROXIMAL_PROBE},
                          fixed_lr=lr, step_budget=100, probe_every=10, seeds=FIVE, record_metrics=STABILITY_METRICS)
            groups["proximal"][f"prox-u{u}-lr{lr:.0e}"] = dict(fields, variants=modes)
            # run only at the collapsing setting, once the grid's `none` cells say which it is (GATES)
            groups["proximal-controls"][f"prox-u{u}-lr{lr:.0e}-controls"] = dict(fields, variants=CONTROLS)
    all_modes = ("sgpo-all", "sgpo-all-need", "sgpo-all-competence", "sgpo-all-constant")
    quality = {"w0": {}, "w10": {"strategy_wrong_share": 0.1}, "w30": {"strategy_wrong_share": 0.3},
               "w50": {"strategy_wrong_share": 0.5}, "p30": {"strategy_partial_share": 0.3}}
    for name, tasks in quality.items():
        vs = all_modes if name == "w0" else all_modes + ("sgpo", "sgpo-constant")
        if name == "w30":
            vs += ("sgpo-need", "sgpo-competence")
        groups["quality"][f"quality-{name}"] = dict(base, tasks=tasks, variants=vs, seeds=FIVE,
                                                    record_metrics=SELECTIVITY_METRICS)
    for name, bias in PRIOR_BIAS.items():
        vs = ("sgpo-need", "sgpo-competence") if bias == 0 else ("sgpo", "sgpo-need", "sgpo-competence",
                                                                  "sgpo-constant", "grpo")
        groups["competence"][f"comp-{name}"] = dict(base, tasks={"prior_bias": bias} if bias else {}, variants=vs,
                                                    seeds=FIVE, record_metrics=SELECTIVITY_METRICS)
    for name, pretrain in MODELS.items():
        retune = ("sgpo", "grpo") if name in ("small", "large") else ()
        groups["capacity"][f"cap-{name}"] = dict(base, pretrain=pretrain, variants=("sgpo", "grpo", "sft", "imitation"),
                                                 retune=retune, seeds=FIVE)
    return groups


def collapsed(cell: dict, initial: dict | None, guided_split: str) -> bool | None:
    """The plan's collapse: the guided training-probe success (``probe/guided_accuracy``) falls
    below half of its step-0 value (the seed's initial cell on the same problems) at any probe;
    None when either is missing."""
    series = cell.get("metrics", {}).get("probe/guided_accuracy")
    start = (initial or {}).get("splits", {}).get(guided_split, {}).get("avg@k")
    if not series or start is None:
        return None
    return any(v < 0.5 * start for _, v in series)


def collapsing_setting(m: ModuleType, done: dict[str, dict]) -> str | None:
    """The proximal grid's collapsing setting (claims-plan.md, dial 3): the (U, lr) setting whose
    ``sgpo-none`` cells collapse in the most seeds, ties to the smaller U, then the smaller lr
    (the grid's order). None until every such cell and its seed's initial cell is done, and
    when no seed collapses anywhere (the controls then have nothing to explain)."""
    best, most = None, 0
    for name in m.GROUPS["proximal"]:
        s = m.SETTINGS[name]
        cells = [done.get(m.Cell(name, "report", "sgpo-none", seed, s.fixed_lr).id) for seed in s.seeds]
        initial = [done.get(m.Cell(name, "initial", "initial", seed).id) for seed in s.seeds]
        if any(c is None for c in cells + initial):
            return None
        flags = [collapsed(c, i, m.GUIDED_PROBE_SPLIT) for c, i in zip(cells, initial)]
        if any(f is None for f in flags):
            return None
        if sum(flags) > most:  # type: ignore[arg-type]
            best, most = name, sum(flags)  # type: ignore[arg-type]
    return best


def stage_two_lr(m: ModuleType, done: dict[str, dict], u: int) -> float | None:
    """The proximal grid's second stage at ``u`` updates per rollout (claims-plan.md, amendment of
    2026-12-02 21:45): the learning rate whose ``sgpo-none`` cells collapse in the most seeds, ties
    to the smaller rate; the largest rate when none of them collapses. None until every ``none``
    cell at ``u`` and its seed's initial cell is done."""
    best, most = None, -1
    names = [n for n in m.GROUPS["proximal"] if n.startswith(f"prox-u{u}-")]
    for name in names:  # the grid's order: increasing learning rate
        s = m.SETTINGS[name]
        cells = [done.get(m.Cell(name, "report", "sgpo-none", seed, s.fixed_lr).id) for seed in s.seeds]
        initial = [done.get(m.Cell(name, "initial", "initial", seed).id) for seed in s.seeds]
        if any(c is None for c in cells + initial):
            return None
        flags = [collapsed(c, i, m.GUIDED_PROBE_SPLIT) for c, i in zip(cells, initial)]
        if any(f is None for f in flags):
            return None
        if sum(flags) > most:  # type: ignore[arg-type]
            best, most = s.fixed_lr, sum(flags)  # type: ignore[arg-type]
    if most == 0:
        return max(m.SETTINGS[n].fixed_lr for n in names)
    return best


def stage_two_done(m: ModuleType, done: dict[str, dict]) -> bool:
    """Stages one and two of the proximal grid and the controls are all done (amendment of
    2026-12-02 21:58: the rest of the registered grid runs after them)."""
    for name in m.GROUPS["proximal"]:
        s = m.SETTINGS[name]
        u = int(name.split("-")[1].removeprefix("u"))
        lr = stage_two_lr(m, done, u)
        if lr is None:
            return False
        labels = s.variants if lr == s.fixed_lr else ("sgpo-none",)
        if any(m.Cell(name, "report", v, seed, s.fixed_lr).id not in done for v in labels for seed in s.seeds):
            return False
    target = collapsing_setting(m, done)
    if target is not None:
        ctl = m.SETTINGS[f"{target}-controls"]
        if any(m.Cell(ctl.name, "report", v, seed, ctl.fixed_lr).id not in done for v in ctl.variants
               for seed in ctl.seeds):
            return False
    return True


def register(m: ModuleType) -> None:
    """Add the dials to the harness module ``m`` (its SETTINGS, EXTRA_VARIANTS, GROUPS and GATES)."""
    m.EXTRA_VARIANTS = tuple(v for v in m.EXTRA_VARIANTS if v.label not in {x.label for x in variants(m)}) + variants(m)
    groups = settings(m)
    for group, entries in groups.items():
        for name, fields in entries.items():
            m.SETTINGS[name] = m.Setting(name, **fields)
        m.GROUPS[group] = tuple(entries)
    m.GROUPS["claims"] = tuple(n for g in groups.values() for n in g)
    for name in groups["proximal-controls"]:
        base = name.removesuffix("-controls")
        m.GATES[name] = lambda done, base=base: collapsing_setting(m, done) == base
    for name in groups["proximal"]:  # stage two: the constraint modes at the stage's learning rate; then the rest
        s = m.SETTINGS[name]
        u = int(name.split("-")[1].removeprefix("u"))
        for label in s.variants:
            if label != "sgpo-none":
                m.VARIANT_GATES[name, label] = lambda done, u=u, lr=s.fixed_lr: (stage_two_lr(m, done, u) == lr
                                                                                 or stage_two_done(m, done))

