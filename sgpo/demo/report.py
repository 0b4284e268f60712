"""The report of ``sgpo demo``: held-out accuracy of the initial, GRPO- and SGPO-trained
models with confidence intervals (and, for the strategy world, on held-out combinations and
keyword pairs never trained), what guidance did before and during training, how
selective the distillation was, example completions and the settings used.

The demo is small enough that its differences are often noise, so the report states the
measured numbers and whether the intervals overlap; it never declares a winner the numbers
do not support. ``results.json`` carries the same numbers for scripts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sgpo.evaluation import report as eval_report
from sgpo.io import write_json_atomic

REPORT_FILE, RESULTS_FILE = "report.md", "results.json"
ACCURACY_PNG, GUIDANCE_PNG, DISTILL_PNG = "accuracy.png", "training_guidance.png", "training_distill.png"
LABEL_ORDER = ("initial", "grpo", "sgpo")  # shown first, in this order; other labels follow
# (label, key, legend) of the curves in the guidance figure
GUIDANCE_CURVES = (("sgpo", "p_auto", "SGPO p_a (unguided)"), ("sgpo", "p_guided", "SGPO p_g (guided)"),
                   ("sgpo", "weight/mean", "SGPO mean weight w"), ("grpo", "p_auto", "GRPO p_a"))
DISTILL_KEYS = ("distill/kl_mean", "distill/top10_share")
SUMMARY_KEYS = ("p_auto", "p_guided", "weight/mean") + DISTILL_KEYS


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _pct(x: float) -> str:
    return eval_report.percent(x, "%")


def ordered_labels(labels: Sequence[str]) -> list[str]:
    return [lab for lab in LABEL_ORDER if lab in labels] + [lab for lab in labels if lab not in LABEL_ORDER]


def clean_eval(eval_results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``label -> {avg@k, ci95, n, k}`` as plain finite numbers; raises ValueError naming the
    label and field of anything missing or not finite."""
    out: dict[str, dict[str, Any]] = {}
    for label in ordered_labels(list(eval_results)):
        r = eval_results[label]
        ci = r.get("ci95")
        values = [r.get("avg@k")] + (list(ci) if isinstance(ci, (list, tuple)) and len(ci) == 2 else [None])
        if not all(_finite(v) for v in values):
            raise ValueError(f"eval_results['{label}'] needs finite 'avg@k' and 'ci95': [lo, hi] (got {dict(r)})")
        out[label] = {"avg@k": float(r["avg@k"]), "ci95": [float(ci[0]), float(ci[1])],
                      "n": int(r.get("n", 0)), "k": int(r.get("k", 0))}
    return out


def series(history: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    """(step, value) points of one metric, skipping steps where it is missing or not finite
    (e.g. the mean weight of a step with no eligible guided trajectory)."""
    return [(float(rec.get("step", i)), float(rec[key])) for i, rec in enumerate(history) if _finite(rec.get(key))]


def compare(a: str, b: str, results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Difference in accuracy of ``a`` over ``b`` and whether their 95% intervals overlap."""
    ra, rb = results[a], results[b]
    overlap = ra["ci95"][0] <= rb["ci95"][1] and rb["ci95"][0] <= ra["ci95"][1]
    return {"a": a, "b": b, "difference": ra["avg@k"] - rb["avg@k"], "ci_overlap": bool(overlap)}


def comparison_sentence(c: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> str:
    a, b, d = c["a"], c["b"], c["difference"]
    head = (f"- **{a}** {_pct(results[a]['avg@k'])} vs **{b}** {_pct(results[b]['avg@k'])}: "
            f"{100 * d:+.1f} points; ")
    if c["ci_overlap"]:
        return head + "the 95% intervals overlap, so this run does not separate the two."
    higher, lower = (a, b) if d > 0 else (b, a)
    return head + f"the 95% intervals do not overlap: {higher} is higher than {lower} on these problems."


def training_summary(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Steps logged, and for each summary metric present: its mean over the first and the
    last quarter of training (single steps are too noisy with a few problems per step)."""
    out: dict[str, Any] = {"steps": len(history)}
    for key in SUMMARY_KEYS:
        pts = series(history, key)
        if not pts:
            continue
        q = max(1, len(pts) // 4)
        out[key] = {"first_quarter": sum(v for _, v in pts[:q]) / q, "last_quarter": sum(v for _, v in pts[-q:]) / q,
                    "mean": sum(v for _, v in pts) / len(pts)}
    return out


def plot_accuracy(results: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """One bar per model (held-out avg@k), 95% CI as error bars: the evaluation report's plot
    with the demo's one benchmark."""
    runs = [(label, {"benchmarks": {"held-out": r}}) for label, r in results.items()]
    return eval_report.plot_accuracy(runs, path, ylabel="held-out avg@k accuracy (%), 95% CI")


def _step_axis(ax: Any, steps: Sequence[float]) -> None:
    """Integer step ticks over the whole run, so a lone point (one distilled step) sits in context."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if steps:
        ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)


def plot_guidance(train_metrics: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path | None:
    """p_a, p_g and the mean instance weight of SGPO over steps, with GRPO's p_a for reference."""
    curves = [(legend, series(train_metrics.get(label, []), key)) for label, key, legend in GUIDANCE_CURVES]
    curves = [(legend, pts) for legend, pts in curves if pts]
    if not curves:
        return None
    plt = eval_report.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for legend, pts in curves:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 60 else None,
                linestyle="--" if legend.startswith("GRPO") else "-", label=legend)
    _step_axis(ax, [p[0] for _, pts in curves for p in pts])
    ax.set_ylabel("success rate / weight")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_distillation(history: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Forward-KL mean over distilled tokens, and the share of it carried by the top 10% of
    tokens (0.1 would mean no selectivity at all)."""
    kl, share = series(history, DISTILL_KEYS[0]), series(history, DISTILL_KEYS[1])
    if not kl and not share:
        return None
    plt = eval_report.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    ax1.plot([p[0] for p in kl], [p[1] for p in kl], marker=".", color="C0")
    ax1.set_ylim(bottom=0)
    ax1.set_title("distillation KL(teacher || student), token mean", fontsize="small")
    ax2.plot([p[0] for p in share], [p[1] for p in share], marker=".", color="C1")
    ax2.axhline(0.1, color="grey", linestyle=":", label="no selectivity (0.1)")
    ax2.set_ylim(0, 1.02)
    ax2.set_title("share of KL mass in the top 10% of tokens", fontsize="small")
    ax2.legend(fontsize="small")
    for ax in (ax1, ax2):
        _step_axis(ax, [h["step"] for h in history if _finite(h.get("step"))])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fenced(text: str) -> str:
    """A code fence longer than any backtick run in ``text``, so completions cannot break it."""
    longest = max((len(run) for run in text.split("\n") for run in _backtick_runs(run)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text.rstrip()}\n{fence}"


def _backtick_runs(line: str) -> list[str]:
    runs, cur = [], ""
    for ch in line:
        if ch == "`":
            cur += ch
        elif cur:
            runs.append(cur)
            cur = ""
    return runs + ([cur] if cur else [])


def _json_safe(value: Any) -> Any:
    """Settings as JSON: non-finite floats and unknown objects become strings."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _interval(ci: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_finite(x) for x in ci):
        return f" (95% CI [{_pct(ci[0])}, {_pct(ci[1])}])"
    return ""


def _guidance_section(guidance: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """``guidance``: {"p_auto", "p_guided", "n" problems, "k" samples each, optional
    "ci95_auto", "ci95_guided"}, measured on held-out problems before training."""
    p_a, p_g, n, k = guidance.get("p_auto"), guidance.get("p_guided"), guidance.get("n"), guidance.get("k")
    if not (_finite(p_a) and _finite(p_g)):
        return ["## Strategy guidance before training", "", "Not measured in this run.", ""], {}
    d = p_g - p_a
    verdict = ("guidance raised success" if d > 0 else "guidance lowered success" if d < 0
               else "guidance made no difference")
    ci_a, ci_g = guidance.get("ci95_auto"), guidance.get("ci95_guided")
    lines = ["## Strategy guidance before training", "",
             f"Sampling the initial model on the held-out problems ({n} problems x {k or '?'} samples, each "
             f"prompt once without and once with its strategy): unguided success p_a = {_pct(p_a)}{_interval(ci_a)}, "
             f"with the strategy in the prompt p_g = {_pct(p_g)}{_interval(ci_g)}; {verdict} by "
             f"{100 * abs(d):.1f} points. SGPO distills a problem's guided rollouts only where its own p_g "
             "exceeds its p_a (weight w = clip(p_g - p_a, 0, 1)), so where guidance does not help it trains "
             "like GRPO.", ""]
    out = {"p_auto": float(p_a), "p_guided": float(p_g), "n": int(n or 0), "k": int(k or 0), "difference": float(d)}
    out.update({key: list(map(float, v)) for key, v in (("ci95_auto", ci_a), ("ci95_guided", ci_g)) if _interval(v)})
    for split, name in (("combos", "held-out combinations"), ("transfer", "keyword pairs never trained")):
        g = guidance.get(split)
        if isinstance(g, Mapping) and _finite(g.get("p_auto")) and _finite(g.get("p_guided")):
            lines[-1:-1] = ["", f"On the {name}: p_a = {_pct(g['p_auto'])}{_interval(g.get('ci95_auto'))}, "
                            f"p_g = {_pct(g['p_guided'])}{_interval(g.get('ci95_guided'))}."]
            out[split] = {"p_auto": float(g["p_auto"]), "p_guided": float(g["p_guided"]),
                          "difference": float(g["p_guided"] - g["p_auto"])}
    return lines, out


def _training_section(train_metrics: Mapping[str, Sequence[Mapping[str, Any]]], out: Path) -> tuple[list[str], dict]:
    summaries = {label: training_summary(hist) for label, hist in train_metrics.items()}
    lines = ["## Training", ""]
    rows = []
    for label in ordered_labels(list(summaries)):
        for key in SUMMARY_KEYS:
            s = summaries[label].get(key)
            if s:
                rows.append(f"| {label} | {key} | {s['first_quarter']:.3f} | {s['last_quarter']:.3f} | {s['mean']:.3f} |")
    if rows:
        lines += ["Means over the first and last quarter of the logged steps, and over all steps.", "",
                  "| run | metric | first quarter | last quarter | all steps |", "|---|---|---:|---:|---:|", *rows, ""]
    else:
        lines += ["No training metrics were logged.", ""]
    if plot_guidance(train_metrics, out / GUIDANCE_PNG):
        lines += ["p_a: success of unguided rollouts; p_g: success of strategy-guided rollouts; w: the "
                  "instance weight of the distillation term (mean over the step's problems).", "",
                  f"![guidance over training]({GUIDANCE_PNG})", ""]
    steps = step_table(train_metrics)
    if steps:
        lines += ["Step by step (rollout success on the step's training problems; w: mean instance weight; "
                  "KL: forward KL(teacher || student) per distilled token; top-10% share: the fraction of the "
                  "KL mass carried by the 10% of distilled tokens with the largest KL):", "", *steps, ""]
    sgpo = train_metrics.get("sgpo", [])
    if plot_distillation(sgpo, out / DISTILL_PNG):
        share = summaries.get("sgpo", {}).get(DISTILL_KEYS[1])
        if share:
            lines.append(f"On average the top 10% of distilled tokens carried {_pct(share['mean'])} of the "
                         "forward-KL mass (10% would mean the strategy shifted every token alike).")
            lines.append("")
        lines += [f"![distillation]({DISTILL_PNG})", ""]
    elif sgpo:
        lines += ["SGPO distilled no token in this run: no problem had a correct guided rollout with a "
                  "positive weight (its guided success never exceeded its unguided success), so the "
                  "distillation term was zero at every step and no distillation plot was drawn.", ""]
    return lines, summaries


STEP_COLUMNS = (("p_auto", "p_a"), ("p_guided", "p_g"), ("weight/mean", "w"), ("distill/kl_mean", "KL mean"),
                ("distill/tokens", "KL tokens"), ("distill/top10_share", "top-10% KL share"))


def step_table(train_metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """SGPO's per-step p_a, p_g, w and distillation numbers, with GRPO's p_a beside them."""
    sgpo, grpo = train_metrics.get("sgpo", []), {r.get("step"): r for r in train_metrics.get("grpo", [])}
    if not sgpo:
        return []
    keys = [(k, name) for k, name in STEP_COLUMNS if any(_finite(r.get(k)) for r in sgpo)]
    head = "| step | " + " | ".join(f"SGPO {name}" for _, name in keys) + " | GRPO p_a |"
    lines = [head, "|---:|" + "---:|" * (len(keys) + 1)]
    for r in sgpo:
        cells = [("-" if not _finite(r.get(k)) else f"{r[k]:.0f}" if k == "distill/tokens" else f"{r[k]:.3f}")
                 for k, _ in keys]
        g = grpo.get(r.get("step"), {}).get("p_auto")
        cells.append(f"{g:.3f}" if _finite(g) else "-")
        lines.append(f"| {int(r.get('step', 0))} | " + " | ".join(cells) + " |")
    return lines


def _accuracy_table(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return ["| model | avg@k | 95% CI | problems | k |", "|---|---:|---|---:|---:|"] + [
        f"| {lab} | {_pct(r['avg@k'])} | [{_pct(r['ci95'][0])}, {_pct(r['ci95'][1])}] | {r['n']} | {r['k']} |"
        for lab, r in results.items()]


# held-out splits besides held-out problems: split -> (heading, what it tests)
SPLIT_SECTIONS = {
    "combos": ("Held-out combinations",
               "Each keyword paired with the noun that no training problem pairs it with (unguided, same "
               "sampling): what RL taught transfers only if it is the keyword's procedure, not the surface."),
    "transfer": ("Transfer: keyword pairs never trained",
                 "The pair world's keyword pairs (order word, shift word) that no training problem uses, on "
                 "held-out digits (unguided, same sampling): whether what RL learnt on the other pairs composes."),
}


def _split_section(split: str, split_results: Mapping[str, Mapping[str, Any]]
                   ) -> tuple[list[str], dict[str, Any], list[dict]]:
    if not split_results:
        return [], {}, []
    results = clean_eval(split_results)
    pairs = [(a, b) for a, b in (("sgpo", "grpo"), ("sgpo", "initial"), ("grpo", "initial"))
             if a in results and b in results]
    comparisons = [compare(a, b, results) for a, b in pairs]
    heading, blurb = SPLIT_SECTIONS[split]
    lines = [f"## {heading}", "", blurb, "", *_accuracy_table(results), "",
             *[comparison_sentence(c, results) for c in comparisons], ""]
    return lines, results, comparisons


def samples_per_problem(train_metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, float]]:
    """label -> mean trajectories per problem and step over the run (``samples/auto``,
    ``samples/guided``, ``samples/reference`` as the trainer logged them) and their total;
    runs that logged none are left out."""
    out = {}
    for label, steps in train_metrics.items():
        if not any("samples/auto" in r for r in steps):
            continue
        row = {}
        for key in ("auto", "guided", "reference"):
            vals = [float(r[f"samples/{key}"]) for r in steps if f"samples/{key}" in r]
            row[key] = sum(vals) / len(vals) if vals else 0.0
        out[label] = {**row, "total": row["auto"] + row["guided"] + row["reference"]}
    return out


def write_report(output_dir: str | Path, *, eval_results: Mapping[str, Mapping[str, Any]],
                 train_metrics: Mapping[str, Sequence[Mapping[str, Any]]], examples: Mapping[str, str],
                 guidance: Mapping[str, Any], settings: Mapping[str, Any],
                 combo_results: Mapping[str, Mapping[str, Any]] | None = None,
                 transfer_results: Mapping[str, Mapping[str, Any]] | None = None,
                 notes: Sequence[str] = ()) -> Path:
    """Write ``report.md``, its PNGs and ``results.json`` into ``output_dir``; return the
    report path.

    ``eval_results``: label ("initial", "grpo", "sgpo", ...) -> {"avg@k", "ci95": [lo, hi],
    "n", "k"}. ``train_metrics``: label -> per-step dicts as in the run's metrics.jsonl ("step",
    "p_auto", "p_guided", "weight/mean", "distill/kl_mean", "distill/top10_share",
    "samples/auto", "samples/guided"; missing keys are skipped). ``examples``: label ->
    completion text. ``guidance``: {"p_auto", "p_guided", "n"} measured before training,
    optionally with the same under "combos" and "transfer". ``settings``: shown as a table and
    stored as given. ``combo_results``, ``transfer_results``: like ``eval_results``, on held-out
    combinations and on keyword pairs never trained (the strategy world); stored as
    ``eval_combos`` and ``eval_transfer``. ``notes``: paragraphs shown under the model's name
    (what the runs were trained with)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = clean_eval(eval_results)
    lines = ["# SGPO demo report", ""]
    if settings.get("model"):
        lines += [f"Model: `{settings['model']}`.", ""]
    for note in notes:
        lines += [note, ""]
    lines += ["## Held-out accuracy", ""]
    comparisons: list[dict[str, Any]] = []
    if results:
        k_values = sorted({r["k"] for r in results.values()})
        lines += [f"avg@k over held-out problems (k = {', '.join(map(str, k_values))} samples per problem), "
                  "95% bootstrap interval over problems.", "",
                  *_accuracy_table(results)]
        plot_accuracy(results, out / ACCURACY_PNG)
        lines += ["", f"![held-out accuracy]({ACCURACY_PNG})", ""]
        pairs = [(a, b) for a, b in (("sgpo", "grpo"), ("sgpo", "initial"), ("grpo", "initial"))
                 if a in results and b in results]
        comparisons = [compare(a, b, results) for a, b in pairs]
        lines += [comparison_sentence(c, results) for c in comparisons] + [""]
    else:
        lines += ["No evaluation results.", ""]
    splits = {split: _split_section(split, r or {}) for split, r in (("combos", combo_results),
                                                                     ("transfer", transfer_results))}
    guidance_lines, guidance_json = _guidance_section(guidance)
    training_lines, summaries = _training_section(train_metrics, out)
    spent = samples_per_problem(train_metrics)
    if spent:
        lines += ["Trajectories per problem and step, as each run logged them (`samples/*`): " + "; ".join(
            f"{label} {v['total']:g} ({v['auto']:g} autonomous + {v['guided']:g} guided"
            + (f" + {v['reference']:g} strong-model trace" if v["reference"] else "") + ")"
            for label, v in spent.items()) + ".", ""]
    for split_lines, _, _ in splits.values():
        lines += split_lines
    lines += guidance_lines + training_lines
    if examples:
        lines += ["## Example completions", ""]
        for label, text in examples.items():
            lines += [f"### {label}", "", _fenced(text), ""]
    lines += ["## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | `{json.dumps(_json_safe(v))}` |" for k, v in settings.items()] + [""]
    path = out / REPORT_FILE
    path.write_text("\n".join(lines), encoding="utf-8")
    payload = {"eval": results, "comparisons": comparisons, "guidance": guidance_json, "training": summaries,
               "samples_per_problem": spent, "settings": _json_safe(settings)}
    for split, (_, split_json, split_comparisons) in splits.items():
        if split_json:
            payload.update({f"eval_{split}": split_json, f"comparisons_{split}": split_comparisons})
    write_json_atomic(out / RESULTS_FILE, payload)
    return path
