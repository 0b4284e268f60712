"""A miniature of the paper's table on the strategy world: every method and ablation, seeds
0-2, evaluated unguided on held-out problems and held-out (keyword, noun) combinations.
Superseded by ``benchmarks/sweep.py`` (equal budgets checked per cell, every method tuned, world
seeds); its committed table ran ``imitation`` and ``guided_rl`` at 12 trajectories per problem
(benchmarks/results/evidence.md says so).

Each run uses the data and sampling settings of ``sgpo demo`` (sgpo.demo.run.DemoSettings) at one
learning rate and step count for every method (``EVIDENCE_SCHEDULE``, the committed table's). The
committed table ran the demo of its day, the ``single`` world with one pre-trained model for every
seed; the demo now runs world seed N of the ``pair`` world, so a rerun does not reproduce it. Every method
spends ``samples_per_problem`` trajectories per problem and step, split by its entry of
sgpo.trainer.specs.METHODS (SGPO, its ablations, imitation and guided_rl: G_g guided, the rest
autonomous; GRPO: all autonomous; LUFFY: one of them the worked solution); SFT samples nothing
and imitates the worked solutions of the same prompts. Runs resume: finished
runs are read back from ``--work-dir``.

    PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE python benchmarks/evidence.py \
        --work-dir runs/evidence --out benchmarks/results/evidence.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _results import write_results  # noqa: E402  (beside this script, on sys.path when run)

EVIDENCE_SCHEDULE = (1e-4, 60)  # (learning rate, steps) of every method in the committed table


def demo_settings(seed: int):  # -> sgpo.demo.run.DemoSettings
    from sgpo.demo.run import DemoSettings, Schedule
    from sgpo.trainer.specs import METHODS

    s = DemoSettings.for_model("world")
    s.seed = seed
    s.schedules = {m: Schedule(*EVIDENCE_SCHEDULE) for m in METHODS}
    return s


# (label, method, extra config overrides)
VARIANTS: list[tuple[str, str, list[str]]] = [
    ("sgpo", "sgpo", []),
    ("grpo", "grpo", []),
    ("sft", "sft", []),
    ("luffy", "luffy", []),
    ("sgpo, weight_mode=constant", "sgpo", ["algorithm.weight_mode=constant"]),
    ("sgpo, proximal=none", "sgpo", ["loss.proximal=none"]),
    ("guided_rl", "guided_rl", []),
    ("imitation", "imitation", []),
]


def slug(label: str) -> str:
    return label.replace(", ", "-").replace("=", "-").replace("_", "-")


def run_one(work: Path, label: str, method: str, extra: list[str], seed: int) -> dict:
    """Train and evaluate one variant. Folders follow ``sgpo demo --output-dir WORK/seedN``
    (runs/<name>, eval/<name>, eval/<name>-combos), so the demo's own GRPO and SGPO runs are
    reused through the trainer's and the evaluation's resume instead of being redone."""
    from sgpo.data import load_problems
    from sgpo.demo.run import _evaluate, _train_config, _unguided, prepare_world
    from sgpo.models import load_model, load_tokenizer
    from sgpo.trainer.config import apply_overrides
    from sgpo.trainer.specs import METHODS
    from sgpo.trainer.trainer import train

    root, name = work / f"seed{seed}", slug(label)
    done = root / "evidence" / f"{name}.json"
    if done.exists():
        return json.loads(done.read_text())
    s = demo_settings(seed)
    t0 = time.perf_counter()
    d = prepare_world(root, s)
    tok = load_tokenizer(d.model_path)
    cfg = _train_config(method, root, s, d.model_path, d.data_path)
    extra = extra + [f"run.output_dir={root / 'runs' / name}"]
    apply_overrides(cfg, sets=extra)
    problems = load_problems(d.data_path, need_teacher_response=METHODS[method].needs_reference)
    result = train(cfg, problems=problems, model=load_model(d.model_path, dtype="float32"), tokenizer=tok)
    heldout = _evaluate(result.model, tok, _unguided(d.eval_rows), name, root, s)
    combos = _evaluate(result.model, tok, _unguided(d.combo_rows), f"{name}-combos", root, s)
    last = result.history[-1] if result.history else {}
    rec = {"label": label, "method": method, "overrides": extra[:-1], "seed": seed,
           "heldout": {k: heldout[k] for k in ("avg@k", "ci95", "n", "k")},
           "combos": {k: combos[k] for k in ("avg@k", "ci95", "n", "k")},
           "final_p_auto": last.get("p_auto"), "minutes": round((time.perf_counter() - t0) / 60, 2)}
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(rec, indent=2))
    return rec


def initial(work: Path, seed: int) -> dict:
    from sgpo.demo.run import _evaluate, _unguided, prepare_world
    from sgpo.models import load_model, load_tokenizer

    root = work / f"seed{seed}"
    s = demo_settings(seed)
    d = prepare_world(root, s)
    tok, model = load_tokenizer(d.model_path), load_model(d.model_path, dtype="float32")
    rec = {"label": "initial", "seed": seed}
    for split, rows, name in (("heldout", d.eval_rows, "initial"), ("combos", d.combo_rows, "initial-combos")):
        r = _evaluate(model, tok, _unguided(rows), name, root, s)
        rec[split] = {k: r[k] for k in ("avg@k", "ci95", "n", "k")}
    return rec


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * sd:.1f}"


def _seeds(recs: list[dict], split: str) -> str:
    return "; ".join(f"{100 * r[split]['avg@k']:.1f} [{100 * r[split]['ci95'][0]:.0f}, {100 * r[split]['ci95'][1]:.0f}]"
                     for r in sorted(recs, key=lambda r: r["seed"]))


def table(results: dict[str, list[dict]], seeds: list[int], command: str, settings: dict) -> str:
    lines = ["# Evidence: every method on the strategy world, seeds " + ", ".join(map(str, seeds)), "",
             "Unguided held-out accuracy (avg@k, %) after training from the same pre-trained world model with the "
             "default `sgpo demo` settings; mean ± standard deviation over seeds, then each seed's value with its "
             "95% bootstrap interval over problems. `heldout`: training (keyword, noun) pairs on unseen digits; "
             "`combos`: each keyword with the noun no training problem pairs it with.", "",
             "| method | heldout mean ± sd | heldout per seed [95% CI] | combos mean ± sd | combos per seed [95% CI] |",
             "|---|---:|---|---:|---|"]
    for label, recs in results.items():
        lines.append(f"| {label} | {_cell([r['heldout']['avg@k'] for r in recs])} | {_seeds(recs, 'heldout')} | "
                     f"{_cell([r['combos']['avg@k'] for r in recs])} | {_seeds(recs, 'combos')} |")
    keys = ("steps", "prompts_per_step", "samples_per_problem", "group_guided", "learning_rate", "train_temperature",
            "eval_problems", "eval_samples", "eval_temperature", "top_k")
    lines += ["", "Settings: " + ", ".join(f"{k}={settings[k]}" for k in keys) + ".", "",
              f"Command: `{command}`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", default="", help="comma-separated labels to run (default: all)")
    ap.add_argument("--work-dir", default="runs/evidence")
    ap.add_argument("--out", default="benchmarks/results/evidence.md")
    args = ap.parse_args()
    from dataclasses import asdict

    seeds = [int(x) for x in args.seeds.split(",") if x]
    work = Path(args.work_dir)
    variants = [v for v in VARIANTS if not args.only or v[0] in args.only.split(",")]
    results: dict[str, list[dict]] = {"initial": [initial(work, seed) for seed in seeds]}
    for label, method, extra in variants:
        for seed in seeds:
            rec = run_one(work, label, method, extra, seed)
            results.setdefault(label, []).append(rec)
            print(f"seed {seed} {label}: heldout {rec['heldout']['avg@k']:.3f} combos {rec['combos']['avg@k']:.3f} "
                  f"({rec['minutes']} min)", flush=True)
    command = ("PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE python benchmarks/evidence.py --seeds "
               f"{args.seeds} --work-dir {args.work_dir} --out {args.out}")
    lr, steps = EVIDENCE_SCHEDULE
    text = table(results, seeds, command, {**asdict(demo_settings(0)), "learning_rate": lr, "steps": steps})
    write_results(args.out, text, results)


if __name__ == "__main__":
    main()
