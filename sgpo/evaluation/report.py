"""Turning evaluation and training outputs into something to read: the markdown table of
one run, a side-by-side table of several runs (methods as rows, benchmarks as columns),
an accuracy chart with confidence intervals, and training curves from ``metrics.jsonl``.

Formatting and data selection are pure functions; only the ``plot_*`` and
:func:`write_report` functions touch matplotlib and the file system.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sgpo.io import DataError, read_jsonl_tolerant

METRICS_FILE = "metrics.jsonl"
CURVES_PER_FIGURE = 4
# shown first when present, in this order; any other numeric key follows alphabetically
PREFERRED_CURVES = ("loss", "reward/auto_mean", "p_auto", "p_guided", "weight/mean", "distill/kl_mean")


def percent(x: float, unit: str = "") -> str:
    """A share in [0, 1] as a percentage with one decimal: tables, whose header says %, write
    ``percent(x)``; prose writes ``percent(x, "%")``. The one formatter of both reports."""
    return f"{100.0 * x:.1f}{unit}"


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (reports run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def results_markdown(results: Mapping[str, Any]) -> str:
    """The table of one ``sgpo eval`` run (benchmarks as rows, then the macro average)."""
    head = ("| benchmark | n | k | avg@k | 95% CI | pass@k | truncated | mean tokens | grader time-outs |\n"
            "|---|---:|---:|---:|---|---:|---:|---:|---:|\n")
    rows = []
    for name, r in list(results["benchmarks"].items()) + [("**macro**", results.get("macro") or {})]:
        if not r:
            continue
        ci = f"[{percent(r['ci95'][0])}, {percent(r['ci95'][1])}]" if r.get("ci95") else ""
        k = r.get("k", "")
        rows.append(f"| {name} | {r['n']} | {k} | {percent(r['avg@k'])} | {ci} | {percent(r['pass@k'])} | "
                    f"{percent(r['truncation_rate'])}% | {r['mean_length']:.0f} | {r['timeouts']} |")
    model = results.get("config", {}).get("model", "")
    protocol = run_protocol(results)
    table = protocol_markdown([(f"`{model}`", results)], protocol)
    published = f"\nAs the {protocol} protocol's table:\n\n{table}" if table else ""
    return (f"# Evaluation of `{model}`\n\nProtocol `{protocol}`. Accuracy in %.\n\n" + head + "\n".join(rows) + "\n"
            + published)


def run_protocol(results: Mapping[str, Any]) -> str:
    """The protocol a run was evaluated under (results written before protocols existed: ``default``)."""
    return str(results.get("config", {}).get("protocol") or "default")


def protocol_markdown(runs: Sequence[tuple[str, Mapping[str, Any]]], protocol: str) -> str:
    """The protocol's published table: its columns in the paper's order, avg@k in % (no
    interval, as the papers print it), then ``Avg``, the mean of those columns (a dash where a
    run lacks one of them, since the average would not be the paper's). Empty for a protocol
    without a fixed table."""
    from sgpo.evaluation.protocols import get_protocol

    columns = get_protocol(protocol).columns
    if not columns:
        return ""
    lines = ["| method | " + " | ".join(title for _, title in columns) + " | Avg |",
             "|---|" + "---:|" * (len(columns) + 1)]
    for label, res in runs:
        values = [res["benchmarks"].get(name, {}).get("avg@k") for name, _ in columns]
        cells = ["–" if v is None else percent(v) for v in values]
        cells.append("–" if None in values else percent(sum(values) / len(values)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_results(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    if not path.exists():
        raise DataError(str(path), "file not found (is this an `sgpo eval` output directory?)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(str(path), f"invalid JSON ({e.msg})") from None
    if not isinstance(results, dict) or not isinstance(results.get("benchmarks"), dict):
        raise DataError(str(path), "missing or not an object", field="benchmarks")
    return results


def benchmark_columns(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """Union of the runs' benchmarks, in order of first appearance."""
    return list(dict.fromkeys(name for _, res in runs for name in res["benchmarks"]))


def comparison_markdown(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Methods as rows, benchmarks (then the macro average) as columns, cells
    ``avg [lo, hi]`` in %. A benchmark a run lacks shows as a dash; the macro column is
    only comparable between runs over the same benchmarks."""
    cols = benchmark_columns(runs)
    lines = ["| method | " + " | ".join(cols) + " | macro |", "|---|" + "---|" * (len(cols) + 1)]
    for label, res in runs:
        cells = []
        for r in [res["benchmarks"].get(c) for c in cols] + [res.get("macro") or None]:
            if not r:
                cells.append("–")
                continue
            ci = r.get("ci95")
            cells.append(f"{percent(r['avg@k'])} [{percent(ci[0])}, {percent(ci[1])}]" if ci else percent(r["avg@k"]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def find_metrics_file(run_dir: str | Path) -> Path | None:
    """``metrics.jsonl`` of the training run an evaluation belongs to: in the run dir or
    its parent (``sgpo eval --output-dir RUN/eval``)."""
    for folder in (Path(run_dir), Path(run_dir).resolve().parent):
        if (folder / METRICS_FILE).exists():
            return folder / METRICS_FILE
    return None


def curve_groups(history: Sequence[Mapping[str, Any]], per_figure: int = CURVES_PER_FIGURE) -> list[list[str]]:
    """The numeric metric keys worth plotting (finite values, not ``step``), preferred
    keys first, split into groups of ``per_figure``."""
    keys: set[str] = set()
    for rec in history:
        keys.update(k for k, v in rec.items() if k != "step" and isinstance(v, (int, float))
                    and not isinstance(v, bool) and math.isfinite(v))
    ordered = [k for k in PREFERRED_CURVES if k in keys] + sorted(keys - set(PREFERRED_CURVES))
    return [ordered[i : i + per_figure] for i in range(0, len(ordered), per_figure)]


def plot_accuracy(runs: Sequence[tuple[str, Mapping[str, Any]]], path: Path,
                  ylabel: str = "avg@k accuracy (%), 95% CI") -> Path:
    """Grouped bars: avg@k per benchmark per run (``results.json``'s ``benchmarks``, and its
    ``macro`` where a run has one), with the 95% CI as error bars. ``sgpo report`` and
    ``sgpo demo`` both draw with it."""
    import numpy as np

    plt = pyplot()
    cols = benchmark_columns(runs) + (["macro"] if any(res.get("macro") for _, res in runs) else [])
    width = 0.8 / max(len(runs), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cols) * max(len(runs), 1) * 0.6), 4.0))
    x = np.arange(len(cols))
    for i, (label, res) in enumerate(runs):
        entries = [res["benchmarks"].get(c) if c != "macro" else res.get("macro") for c in cols]
        ys = [100 * e["avg@k"] if e else np.nan for e in entries]
        err = [[100 * (e["avg@k"] - e["ci95"][0]) if e and e.get("ci95") else 0 for e in entries],
               [100 * (e["ci95"][1] - e["avg@k"]) if e and e.get("ci95") else 0 for e in entries]]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, ys, width, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, cols, rotation=20 if len(cols) > 1 else 0)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_training_curves(history: Sequence[Mapping[str, Any]], out_dir: Path, label: str) -> list[Path]:
    """One PNG per group of up to four numeric metrics, each metric in its own panel."""
    plt = pyplot()
    paths = []
    for g, keys in enumerate(curve_groups(history)):
        fig, axes = plt.subplots(1, len(keys), figsize=(3.5 * len(keys), 3.0), squeeze=False)
        for ax, key in zip(axes[0], keys):
            pts = [(r.get("step", i), r[key]) for i, r in enumerate(history)
                   if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
            ax.set_title(key, fontsize="small")
            ax.set_xlabel("step")
        fig.suptitle(label, fontsize="small")
        fig.tight_layout()
        path = out_dir / f"training_{_slug(label)}_{g + 1}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_") or "run"


def default_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Folder names, with the parent prepended where names repeat (``a/eval``, ``b/eval``)."""
    names = [Path(d).resolve().name for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{Path(d).resolve().parent.name}/{Path(d).resolve().name}" for d in run_dirs]


def _protocol_parts(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """The shared protocol's published table, or a warning when the runs' protocols differ."""
    protocols = {label: run_protocol(res) for label, res in runs}
    if len(set(protocols.values())) > 1:
        listed = ", ".join(f"{label}: {p}" for label, p in protocols.items())
        return [f"**The runs were evaluated under different protocols** ({listed}): their numbers are not "
                "comparable.\n"]
    protocol = next(iter(protocols.values()))
    table = protocol_markdown(runs, protocol)
    if not table:
        return [f"Protocol `{protocol}`.\n"]
    return [f"Protocol `{protocol}`, in its published table's column order; Avg is the mean of these columns "
            "(avg@k in %).\n", table]


def write_report(run_dirs: Sequence[str | Path], output: str | Path, labels: Sequence[str] | None = None) -> Path:
    """Write report.md, accuracy.png and training_*.png for the given eval dirs; returns
    the markdown path."""
    if not run_dirs:
        raise ValueError("no run directories given")
    if labels and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} run directories")
    labels = list(labels) if labels else default_labels(run_dirs)
    runs = [(label, load_results(d)) for label, d in zip(labels, run_dirs)]
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# Evaluation report\n"] + _protocol_parts(runs)
    parts += ["avg@k accuracy in % with the 95% bootstrap CI over problems.\n",
              comparison_markdown(runs), f"![accuracy]({plot_accuracy(runs, out / 'accuracy.png').name})\n"]
    for label, d in zip(labels, run_dirs):
        metrics = find_metrics_file(d)
        history = read_jsonl_tolerant(metrics) if metrics else []
        if history:
            parts.append(f"## Training curves: {label}\n\nfrom `{metrics}`\n")
            parts += [f"![{p.stem}]({p.name})\n" for p in plot_training_curves(history, out, label)]
    path = out / "report.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
