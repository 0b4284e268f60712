"""Tables of the claims' dials (issue 17), rebuilt from the committed cells alone, in the form the
predictions of benchmarks/results/claims-plan.md are stated in. The verdict per claim is
written by a person against the plan; these tables are what it is read from.

    PYTHONPATH=. python benchmarks/claims_report.py --out benchmarks/results/claims.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep  # noqa: E402
import sweep_claims  # noqa: E402
from _results import write_results  # noqa: E402

from sgpo.evaluation import stats  # noqa: E402

SPLITS = ("heldout", "transfer")
ALPHA = 0.05


def _cells(done: dict[str, dict], setting: str, variant: str) -> dict[int, dict]:
    phase = "initial" if variant == "initial" else "report"
    return {r["seed"]: r for r in done.values()
            if sweep.setting_name(r) == setting and r["phase"] == phase and r["variant"] == variant}


def _acc(cells: dict[int, dict], split: str) -> list[float]:
    return [c["splits"][split]["avg@k"] for c in cells.values() if split in c.get("splits", {})]


def _ms(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.1f} ± {scale * sd:.1f}"


def paired(done: dict[str, dict], a: tuple[str, str], b: tuple[str, str], split: str) -> dict[str, Any] | None:
    """(setting, variant) a minus b on ``split``, paired by seed; None below two common seeds."""
    ca, cb = _cells(done, *a), _cells(done, *b)
    seeds = sorted(s for s in set(ca) & set(cb) if split in ca[s].get("splits", {}) and split in cb[s].get("splits", {}))
    if len(seeds) < 2:
        return None
    x = [ca[s]["splits"][split]["avg@k"] for s in seeds]
    y = [cb[s]["splits"][split]["avg@k"] for s in seeds]
    return {"a": "/".join(a), "b": "/".join(b), "split": split, "seeds": seeds, **stats.paired_t_test(x, y)}


def _holm(tests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    adjusted = stats.holm({str(i): t["p"] for i, t in enumerate(tests)})
    for i, t in enumerate(tests):
        t["p_holm"] = adjusted[str(i)]
        t["significant"] = t["p_holm"] < ALPHA
    return tests


def _comparisons(title: str, tests: list[dict[str, Any]]) -> list[str]:
    tests = [t for t in tests if t is not None]
    lines = [f"### {title}", ""]
    if not tests:
        return lines + ["No comparison has two seeds in common yet.", ""]
    _holm(tests)
    lines += [f"Paired by seed, absolute points; p: paired t test; Holm over the {len(tests)} tests of this table.", "",
              "| a | b | split | seeds | a - b | p | p (Holm) | significant |", "|---|---|---|---:|---:|---:|---:|---|"]
    for t in tests:
        lines.append(f"| {t['a']} | {t['b']} | {t['split']} | {t['n']} | {100 * t['mean_diff']:+.1f} | {t['p']:.3g} | "
                     f"{t['p_holm']:.3g} | {'yes' if t['significant'] else 'no'} |")
    return lines + [""]


def results_table(done: dict[str, dict], settings: list[str]) -> list[str]:
    """Per setting: the initial model's axes (trace NLL, execution, p_a, p_g) and every variant's
    accuracy (mean ± sd over seeds, %)."""
    lines = ["| setting | variant | seeds | " + " | ".join(SPLITS) + " | initial trace NLL | execution | p_a | p_g |",
             "|---|---|---:|" + "---:|" * len(SPLITS) + "---:|---:|---:|---:|"]
    missing: list[str] = []
    for name in settings:
        init = _cells(done, name, "initial")
        cap = [c["capability"] for c in init.values() if "capability" in c]
        axes = [_ms([c["trace_nll"] for c in cap], 1.0), _ms([c["execution"] for c in cap]), _ms(_acc(init, "heldout")),
                _ms([c["splits"]["heldout-guided"]["avg@k"] for c in init.values() if "heldout-guided" in c["splits"]])]
        for v in sweep.setting_variants(sweep.SETTINGS[name]):
            cells = _cells(done, name, v.label)
            if not cells:
                gate = sweep.GATES.get(name)
                if gate is None or gate(done):  # a closed gate's cells are not due (the controls elsewhere)
                    missing.append(f"{name}/{v.label}")
                continue
            lines.append(f"| {name} | {v.label} | {len(cells)} | " + " | ".join(_ms(_acc(cells, sp)) for sp in SPLITS)
                         + " | " + " | ".join(axes) + " |")
    if len(lines) == 2:
        return [f"Not run yet ({len(missing)} registered cells' variants)", ""]
    if missing:
        lines += ["", f"Registered, not run (yet): {', '.join(missing)}."]
    return lines + [""]


def collapse(cell: dict[str, Any], window: int = 5, initial: dict[str, Any] | None = None) -> bool:
    """Guided success collapsed: the plan's rule where the cell recorded the guided training probe
    and its seed's initial cell its step-0 value (:func:`sweep_claims.collapsed`); otherwise (cells
    from before the probe) a later window's mean ``p_guided`` (the step's own problems) below half
    of the first window's."""
    rule = sweep_claims.collapsed(cell, initial, sweep.GUIDED_PROBE_SPLIT)
    if rule is not None:
        return rule
    series = [v for _, v in cell.get("metrics", {}).get("p_guided", [])]
    if len(series) < 2 * window:
        return False
    means = [statistics.fmean(series[i : i + window]) for i in range(0, len(series) - window + 1, window)]
    return any(m < 0.5 * means[0] for m in means[1:])


def proximal_table(done: dict[str, dict]) -> list[str]:
    lines = ["| setting | variant | seeds | collapsed | peak | final | area under the curve |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name in sweep.GROUPS["proximal"] + sweep.GROUPS["proximal-controls"]:
        initial = _cells(done, name, "initial")
        for v in sweep.setting_variants(sweep.SETTINGS[name]):
            cells = _cells(done, name, v.label)
            if not cells:
                continue
            curves = [[p["accuracy"] for p in c["curve"]] for c in cells.values() if c.get("curve")]
            n_collapsed = sum(collapse(c, initial=initial.get(seed)) for seed, c in cells.items())
            lines.append(f"| {name} | {v.label} | {len(cells)} | {n_collapsed} | "
                         f"{_ms([max(c) for c in curves])} | {_ms([c[-1] for c in curves])} | "
                         f"{_ms([statistics.fmean(c) for c in curves])} |")
    return lines + [""]


def _u_lr(name: str) -> tuple[int, float]:
    s = sweep.SETTINGS[name]
    return int(name.split("-")[1].removeprefix("u")), float(s.fixed_lr)  # type: ignore[arg-type]


def _first_collapse(cell: dict[str, Any], initial: dict[str, Any] | None) -> int | None:
    """The step of the first guided training probe below half of its step-0 value (the plan's
    rule, :func:`sweep_claims.collapsed`); None when the run never collapses or lacks the probe."""
    start = (initial or {}).get("splits", {}).get(sweep.GUIDED_PROBE_SPLIT, {}).get("avg@k")
    for step, v in cell.get("metrics", {}).get("probe/guided_accuracy", []):
        if start is not None and v < 0.5 * start:
            return int(step)
    return None


def proximal_collapse_grid(done: dict[str, dict]) -> tuple[list[str], dict[str, Any]]:
    """Stage one: how many seeds of ``sgpo-none`` collapse at each (U, lr), and which rate each
    U's stage two runs at (:func:`sweep_claims.stage_two_lr`)."""
    import sweep_claims

    rates = sorted({_u_lr(n)[1] for n in sweep.GROUPS["proximal"]})
    us = sorted({_u_lr(n)[0] for n in sweep.GROUPS["proximal"]})
    grid: dict[str, Any] = {}
    lines = ["Seeds of `sgpo-none` (no constraint) that collapsed, of those run (collapse: the guided "
             "training probe below half of its step-0 value at any probe); * marks each U's stage-two rate.", "",
             "| U (updates per rollout) | " + " | ".join(f"lr {r:.0e}" for r in rates) + " |",
             "|---|" + "---:|" * len(rates)]
    for u in us:
        stage = sweep_claims.stage_two_lr(sweep, done, u)
        row = []
        for r in rates:
            name = f"prox-u{u}-lr{r:.0e}"
            initial = _cells(done, name, "initial")
            cells = _cells(done, name, "sgpo-none")
            n = sum(_first_collapse(c, initial.get(seed)) is not None for seed, c in cells.items())
            grid[name] = {"collapsed": n, "seeds": len(cells)}
            row.append(f"{n}/{len(cells)}" + (" *" if stage == r else ""))
        grid[f"u{u}-stage-two-lr"] = stage
        lines.append(f"| {u} | " + " | ".join(row) + " |")
    return lines + [""], grid


def proximal_matrix(done: dict[str, dict]) -> list[str]:
    """Every mode (rows) at every (U, lr) (columns): seeds collapsed of those run, and the mean
    area under the held-out probe curve (%); blank where the mode does not run at that U."""
    names = list(sweep.GROUPS["proximal"])
    modes: list[str] = []
    for n in names:
        modes += [v for v in sweep.SETTINGS[n].variants if v not in modes]
    head = [f"U{_u_lr(n)[0]} {_u_lr(n)[1]:.0e}" for n in names]
    lines = ["Collapsed seeds / seeds run, and the area under the held-out probe curve (mean over seeds, %), "
             "per mode and (U, learning rate); `sgpo` is c2 (tau 0.2), the default.", "",
             "| mode | " + " | ".join(head) + " |", "|---|" + "---:|" * len(names)]
    for v in modes:
        row = []
        for n in names:
            if v not in sweep.SETTINGS[n].variants:
                row.append("")
                continue
            initial = _cells(done, n, "initial")
            cells = _cells(done, n, v)
            if not cells:
                row.append("not run")
                continue
            k = sum(_first_collapse(c, initial.get(seed)) is not None for seed, c in cells.items())
            areas = [_area(c) for c in cells.values() if c.get("curve")]
            row.append(f"{k}/{len(cells)}, " + (f"{100 * statistics.fmean(areas):.1f}" if areas else "—"))
        lines.append(f"| {v} | " + " | ".join(row) + " |")
    return lines + [""]


def _area(cell: dict[str, Any]) -> float:
    return statistics.fmean(p["accuracy"] for p in cell["curve"])


def proximal_modes(done: dict[str, dict]) -> tuple[list[str], list[dict[str, Any]]]:
    """Every constraint mode minus ``none`` at the same (U, lr) (stage two's settings first, the
    rest of the grid as it runs), paired by seed, on the area under the held-out probe curve and on the final held-out accuracy (Holm
    over this table's tests); and the collapse counts side by side."""
    tests: list[dict[str, Any]] = []
    lines: list[str] = []
    for name in sweep.GROUPS["proximal"]:
        base = _cells(done, name, "sgpo-none")
        for v in sweep.SETTINGS[name].variants:
            if v == "sgpo-none":
                continue
            cells = _cells(done, name, v)
            seeds = sorted(set(cells) & set(base))
            if len(seeds) < 2:
                continue
            for what, f in (("area", _area), ("final held-out", lambda c: c["splits"]["heldout"]["avg@k"])):
                t = stats.paired_t_test([f(cells[s]) for s in seeds], [f(base[s]) for s in seeds])
                tests.append({"a": f"{name}/{v}", "b": f"{name}/sgpo-none", "split": what, "seeds": seeds, **t})
    for name in sweep.GROUPS["proximal"]:  # the controls, where they ran, against `none` on the same seeds
        base = _cells(done, name, "sgpo-none")
        ctl = f"{name}-controls"
        for v in sweep.SETTINGS[ctl].variants:
            cells = _cells(done, ctl, v)
            seeds = sorted(set(cells) & set(base))
            if len(seeds) < 2:
                continue
            for what, f in (("area", _area), ("final held-out", lambda c: c["splits"]["heldout"]["avg@k"])):
                t = stats.paired_t_test([f(cells[s]) for s in seeds], [f(base[s]) for s in seeds])
                tests.append({"a": f"{ctl}/{v}", "b": f"{name}/sgpo-none", "split": what, "seeds": seeds, **t})
    return _comparisons("proximal: each constraint mode and control minus none at the same (U, lr)", tests), tests


def kl_before_collapse(done: dict[str, dict]) -> tuple[list[str], dict[str, Any]]:
    """The controls' prediction (1): in the `none` runs that collapse, the policy's KL to the
    initial model at the probe before the collapse, against the runs that do not collapse at the
    same probe step (mean over runs; every (U, lr) of the grid)."""
    before, calm = [], []
    steps = []
    for name in sweep.GROUPS["proximal"]:
        initial = _cells(done, name, "initial")
        for seed, c in _cells(done, name, "sgpo-none").items():
            kl = dict((int(s), v) for s, v in c.get("metrics", {}).get("probe/kl_initial", []))
            at = _first_collapse(c, initial.get(seed))
            if at is not None:
                prior = [s for s in kl if s < at]
                if prior:
                    before.append(kl[max(prior)])
                    steps.append(max(prior))
            else:
                calm.append(kl)
    data: dict[str, Any] = {"collapsing_runs_with_a_prior_probe": len(before), "calm_runs": len(calm)}
    if not before or not calm:
        return ["KL before collapse: not enough runs yet.", ""], data
    at = int(statistics.median_low(steps))  # a probe step
    calm_at = [kl[at] for kl in calm if at in kl]
    data.update(kl_before=statistics.fmean(before), median_step=at,
                kl_calm=statistics.fmean(calm_at) if calm_at else None)
    text = (f"KL(policy || initial) on the unguided probe, at the probe before the collapse in the {len(before)} "
            f"collapsing `none` runs that had one: {statistics.fmean(before):.3f} (median step {at}); in the "
            f"{len(calm_at)} runs that never collapse, at step {at}: "
            + (f"{statistics.fmean(calm_at):.3f}." if calm_at else "—."))
    return [text, ""], data


def plot_proximal(done: dict[str, dict], path: Path) -> bool:
    """Guided training probe and held-out probe against steps, mean over seeds, every variant of
    every proximal setting with more than `none` run (the stage-two settings) and the controls."""
    panels = []
    for name in sweep.GROUPS["proximal"]:
        ctl = f"{name}-controls"
        labels = [(name, v) for v in sweep.SETTINGS[name].variants] + [(ctl, v) for v in sweep.SETTINGS[ctl].variants]
        series = {}
        for setting, v in labels:
            cells = [c for c in _cells(done, setting, v).values() if c.get("curve")]
            if not cells:
                continue
            g = [c["metrics"].get("probe/guided_accuracy", []) for c in cells]
            n = min(len(x) for x in g)
            m = min(len(c["curve"]) for c in cells)
            if n == 0 or m == 0:
                continue
            series[f"{v} ({len(cells)})"] = ([g[0][i][0] for i in range(n)],
                                             [statistics.fmean(x[i][1] for x in g) for i in range(n)],
                                             [cells[0]["curve"][i]["step"] for i in range(m)],
                                             [statistics.fmean(c["curve"][i]["accuracy"] for c in cells) for i in range(m)])
        if len(series) > 1:
            panels.append((name, series))
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for row, (name, series) in zip(axes, panels):
        for label, (gx, gy, hx, hy) in series.items():
            style = "--" if "initial" in label or "norl" in label else "-"
            row[0].plot(gx, [100 * v for v in gy], style, marker="o", ms=2, label=label)
            row[1].plot(hx, [100 * v for v in hy], style, marker="o", ms=2, label=label)
        row[0].set_title(f"{name}: guided success, training probe (%)", fontsize=9)
        row[1].set_title(f"{name}: held-out accuracy, unguided probe (%)", fontsize=9)
        for ax in row:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def dial_tests(done: dict[str, dict]) -> dict[str, list[dict[str, Any] | None]]:
    """The comparisons each prediction of the plan is stated in."""
    out: dict[str, list[dict[str, Any] | None]] = {}
    trace = []
    for name in sweep.GROUPS["trace"]:
        sg = (name, "sgpo") if "sgpo" in sweep.SETTINGS[name].variants else ("pair", "sgpo")
        for v in sweep.SETTINGS[name].variants:
            if v.startswith(("sft", "luffy")):
                trace += [paired(done, sg, (name, v), sp) for sp in SPLITS]
    out["trace: SGPO minus each trace-imitating method"] = trace
    out["kl: SGPO minus imitation"] = [paired(done, (n, "sgpo"), (n, "imitation"), sp)
                                       for n in sweep.GROUPS["kl"] for sp in SPLITS]
    quality = []
    for name in sweep.GROUPS["quality"]:
        vs = sweep.SETTINGS[name].variants
        for v in vs:
            ref = "sgpo-all-constant" if v.startswith("sgpo-all") else "sgpo-constant"
            if v != ref and ref in vs and "constant" not in v:
                quality.append(paired(done, (name, v), (name, ref), "heldout"))
    out["quality: each adaptive weight minus constant (same distill_on)"] = quality
    comp = []
    for name in sweep.GROUPS["competence"]:
        vs = sweep.SETTINGS[name].variants
        if "sgpo-constant" in vs:
            comp += [paired(done, (name, v), (name, "sgpo-constant"), "heldout") for v in vs if v.startswith("sgpo")
                     and v != "sgpo-constant"]
            comp.append(paired(done, (name, "sgpo"), (name, "grpo"), "heldout"))
    out["competence: adaptive minus constant, SGPO minus GRPO"] = comp
    cap = []
    for name in sweep.GROUPS["capacity"]:
        for base in ("grpo", "sft", "imitation"):
            cap.append(paired(done, (name, "sgpo"), (name, base), "heldout"))
    out["capacity: SGPO minus each baseline"] = cap
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Rank correlation (ties by mean rank); None below three points."""
    if len(x) < 3:
        return None

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else None


def trace_axis(done: dict[str, dict]) -> dict[str, Any]:
    """SFT's held-out accuracy against the initial student's trace NLL over the styles (the
    plan's prediction (a): a negative rank correlation)."""
    nll, acc = [], []
    for name in sweep.GROUPS["trace"]:
        cap = [c["capability"]["trace_nll"] for c in _cells(done, name, "initial").values() if "capability" in c]
        sft = _acc(_cells(done, name, "sft"), "heldout")
        if cap and sft:
            nll.append(statistics.fmean(cap))
            acc.append(statistics.fmean(sft))
    return {"styles": len(nll), "nll": nll, "sft_heldout": acc, "spearman": spearman(nll, acc)}


def report(cells_dir: Path, out: Path) -> int:
    done = sweep.load_cells(cells_dir)
    text = ["# The claims' dials: results", "",
            f"Rebuilt from the {len(done)} cells in `{cells_dir.name}/` by `python benchmarks/claims_report.py`. Grids "
            "and predictions: `benchmarks/results/claims-plan.md` (committed before these results).", ""]
    data: dict[str, Any] = {"cells": len(done)}
    for group in ("trace", "kl", "proximal", "proximal-controls", "quality", "competence", "capacity"):
        text += [f"## {group}", ""] + results_table(done, list(sweep.GROUPS[group]))
        if group == "proximal":
            text += proximal_table(done)
            lines, data["proximal_grid"] = proximal_collapse_grid(done)
            text += ["### Stage one: collapses without a constraint", ""] + lines
            text += ["### Every mode at every (U, lr)", ""] + proximal_matrix(done)
            lines, data["proximal_modes"] = proximal_modes(done)
            text += lines
            lines, data["kl_before_collapse"] = kl_before_collapse(done)
            text += ["### The policy's drift before a collapse", ""] + lines
            plot = out.with_name("claims-proximal.png")
            if plot_proximal(done, plot):
                text += [f"![proximal dial]({plot.name})", ""]
    ax = trace_axis(done)
    rho = "—" if ax["spearman"] is None else f"{ax['spearman']:+.2f}"
    text += ["## The trace dial's axis", "", f"Spearman rank correlation of SFT's held-out accuracy with the initial "
             f"student's trace NLL over {ax['styles']} styles: {rho} (the plan predicts it negative).", ""]
    data["trace_axis"] = ax
    data["tests"] = {}
    for title, tests in dial_tests(done).items():
        text += _comparisons(title, [t for t in tests if t is not None])
        data["tests"][title] = [t for t in tests if t is not None]
    write_results(out, "\n".join(text), data)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells-dir", default=str(sweep.CELLS_DIR))
    ap.add_argument("--out", default=str(sweep.ROOT / "benchmarks" / "results" / "claims.md"))
    args = ap.parse_args()
    return report(Path(args.cells_dir), Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
