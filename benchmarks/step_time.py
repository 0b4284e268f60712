"""Training-step time, measured side by side in one run: SGPO vs GRPO at equal sampled
trajectories per problem (SGPO: G_a autonomous + G_g guided; GRPO: G_a + G_g autonomous), each
at several settings (``--variants``, :data:`VARIANTS`):

- ``before``: the original settings: transformers ``model.generate`` (``system.generation_sampler:
  generate``), every row's prompt run in the update (``system.share_prompt_forward: false``),
  the world demo's former micro-batch of 32;
- ``lean``: the lean sampler alone (the defaults between the two);
- ``after``: today's defaults (the demo's config as it is).

Every configuration is a live trainer; the run goes round-robin over them, one step each per
round, so a load change on a shared machine hits all of them alike, and reports medians over
rounds (the first round, which warms allocators up, is dropped) and the ratios between them.

- ``world``: the strategy-world demo's settings exactly (8 problems x 8 trajectories x up to 32
  tokens, the 0.67M-parameter model pre-trained on first use, ``sgpo.demo``).
- ``smollm2``: SmolLM2-135M-Instruct on procedural arithmetic, ``--smollm2-prompts`` problems x 8
  trajectories x ``--smollm2-tokens`` tokens (4 x 64 by default). The 135M model rarely solves a problem when guided, so SGPO would distil almost
  nothing; to time SGPO's worst case the run uses ``weight_mode: constant`` and
  ``distill_on: all`` (every guided trajectory distilled: teacher pass, full top-k targets).

    python benchmarks/step_time.py [--models world,smollm2] [--rounds 8] [--variants before,lean,after]
                                   [--smollm2-variants lean,after] [--smollm2-prompts 4]
                                   [--smollm2-tokens 64] [--out benchmarks/results/step_time.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402

METHODS = ("grpo", "sgpo")
# system overrides of each variant; micro_batch_size applies to the world only (SmolLM2 sets its own)
VARIANTS: dict[str, dict[str, Any]] = {
    "before": {"generation_sampler": "generate", "share_prompt_forward": False, "micro_batch_size": 32},
    "lean": {"generation_sampler": "lean", "share_prompt_forward": False, "micro_batch_size": 32},
    "after": {},
}
PHASES = ("time/sample", "time/teacher_targets", "time_update")


class _NoBar:
    def update(self, *_: object) -> None: ...
    def set_postfix(self, **_: object) -> None: ...


def _apply(cfg: Any, variant: str, world: bool) -> None:
    for key, value in VARIANTS[variant].items():
        if world or key != "micro_batch_size":
            setattr(cfg.system, key, value)


def world_trainers(out: Path, variants: tuple[str, ...]) -> dict[tuple[str, str], Any]:
    from sgpo.demo.run import DemoSettings, _train_config, prepare_world
    from sgpo.models import load_model, load_tokenizer
    from sgpo.trainer.trainer import Trainer

    s = DemoSettings()
    d = prepare_world(out, s)
    tok = load_tokenizer(d.model_path)
    trainers = {}
    for method in METHODS:
        for variant in variants:
            cfg = _train_config(method, out / variant, s, d.model_path, d.data_path)
            _apply(cfg, variant, world=True)
            cfg.run.progress, cfg.run.save_steps = False, 0
            trainers[method, variant] = Trainer(cfg, problems=d.problems, model=load_model(d.model_path, "float32"),
                                                tokenizer=tok)
    return trainers


def smollm2_trainers(out: Path, variants: tuple[str, ...], prompts: int, tokens: int) -> dict[tuple[str, str], Any]:
    from sgpo.data import build_problems
    from sgpo.arithmetic import make_problems
    from sgpo.demo.run import DemoSettings, _train_config
    from sgpo.models import load_model, load_tokenizer, smollm2_path
    from sgpo.trainer.trainer import Trainer

    s = DemoSettings.for_model("smollm2")
    s.prompts_per_step, s.samples_per_problem, s.group_guided, s.max_new_tokens = prompts, 8, 4, tokens
    path = str(smollm2_path())
    tok = load_tokenizer(path)
    problems = build_problems(make_problems(64, seed=0), "procedural", teacher_response_field="solution")
    trainers = {}
    for method in METHODS:
        for variant in variants:
            cfg = _train_config(method, out / f"smollm2-{variant}", s, path)
            cfg.algorithm.weight_mode, cfg.algorithm.distill_on = "constant", "all"
            cfg.system.micro_batch_size, cfg.system.generation_batch_size = 8, 8 * prompts
            _apply(cfg, variant, world=False)
            cfg.run.progress, cfg.run.save_steps = False, 0
            trainers[method, variant] = Trainer(cfg, problems=problems, model=load_model(path, "float32"),
                                                tokenizer=tok)
    return trainers


def round_robin(trainers: dict[tuple[str, str], Any], rounds: int) -> dict[tuple[str, str], dict[str, float]]:
    """One step of every trainer per round; medians over rounds 2.. of the step and its phases."""
    steps: dict[Any, list[float]] = {k: [] for k in trainers}
    cpu: dict[Any, list[float]] = {k: [] for k in trainers}
    for r in range(rounds + 1):
        for key, trainer in trainers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.train_step(_NoBar())
            if r:
                steps[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
        print(f"round {r}/{rounds}, load average {os.getloadavg()[0]:.1f}", flush=True)
    out = {}
    for key, trainer in trainers.items():
        h = trainer.history[1:]
        row: dict[str, Any] = {"step": statistics.median(steps[key]), "step_cpu": statistics.median(cpu[key])}
        row.update({p: statistics.median(x.get(p, 0.0) for x in h) for p in PHASES})
        row["steps"] = steps[key]  # every measured round, in order
        out[key] = row
    return out


def table(name: str, res: dict[tuple[str, str], dict[str, float]]) -> list[str]:
    variants = [v for v in VARIANTS if ("grpo", v) in res]
    lines = [f"### {name}", "", "| method | variant | step s | steps/s | step CPU s | sample s | teacher targets s | "
             "update s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for method in METHODS:
        for v in variants:
            r = res[method, v]
            lines.append(f"| {method} | {v} | {r['step']:.3f} | {1 / r['step']:.2f} | {r['step_cpu']:.3f} | "
                         f"{r['time/sample']:.3f} | "
                         f"{r['time/teacher_targets']:.3f} | {r['time_update']:.3f} |")
    lines.append("")
    for v in variants:
        lines.append(f"- SGPO/GRPO step time, {v}: **{res['sgpo', v]['step'] / res['grpo', v]['step']:.2f}x** "
                     f"(CPU time {res['sgpo', v]['step_cpu'] / res['grpo', v]['step_cpu']:.2f}x)")
    base = variants[0]
    for v in variants[1:]:
        for method in METHODS:
            b, a = res[method, base], res[method, v]
            lines.append(f"- {method}: {v} vs {base}, step **{b['step'] / a['step']:.2f}x** faster "
                         f"(CPU time {b['step_cpu'] / a['step_cpu']:.2f}x; sampling "
                         f"{b['time/sample'] / a['time/sample']:.2f}x; update {b['time_update'] / a['time_update']:.2f}x)")
    return lines + [""]


def _variants(arg: str) -> tuple[str, ...]:
    out = tuple(v for v in arg.split(",") if v)
    unknown = [v for v in out if v not in VARIANTS]
    if unknown or not out:
        raise SystemExit(f"unknown variants {unknown} (have {', '.join(VARIANTS)})")
    return tuple(v for v in VARIANTS if v in out)  # the first named is the baseline of the speed-ups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="world,smollm2", help="comma-separated: world, smollm2")
    ap.add_argument("--rounds", type=int, default=8, help="measured rounds (world); smollm2 runs a quarter of them")
    ap.add_argument("--variants", default="before,lean,after", help=f"settings timed on the world ({', '.join(VARIANTS)})")
    ap.add_argument("--smollm2-variants", default="lean,after", help="settings timed on smollm2")
    ap.add_argument("--smollm2-prompts", type=int, default=4, help="smollm2: problems per step (8 trajectories each)")
    ap.add_argument("--smollm2-tokens", type=int, default=64, help="smollm2: max new tokens")
    ap.add_argument("--out", default="benchmarks/results/step_time.md")
    args = ap.parse_args()
    import torch

    models = [m for m in args.models.split(",") if m]
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "load_average_start": os.getloadavg()[0]}
    text = ["# Training-step time, side by side", "",
            f"`python benchmarks/step_time.py {' '.join(sys.argv[1:])}` on {os.cpu_count()} "
            f"CPU cores, torch threads {torch.get_num_threads()}, load average at the start "
            f"{os.getloadavg()[0]:.1f} (a shared machine: the ratios are measured side by side, round-robin; "
            "absolute seconds are not comparable between runs). Medians over rounds, the first dropped; "
            "step CPU s is this process's CPU time (all threads), which waiting for a core does not inflate.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            if model == "world":
                res = round_robin(world_trainers(Path(tmp) / "world", _variants(args.variants)), args.rounds)
                text += table("Strategy world (the demo's settings)", res)
            elif model == "smollm2":
                res = round_robin(smollm2_trainers(Path(tmp) / "smollm2", _variants(args.smollm2_variants),
                                                   args.smollm2_prompts,
                                                   args.smollm2_tokens), max(2, args.rounds // 4))
                text += table(f"SmolLM2-135M-Instruct ({args.smollm2_prompts} problems x 8 trajectories x "
                              f"{args.smollm2_tokens} tokens, SGPO distils every guided trajectory)", res)
            else:
                raise SystemExit(f"unknown model {model!r} (world, smollm2)")
            results[model] = {f"{m}/{s}": v for (m, s), v in res.items()}
    results["load_average_end"] = os.getloadavg()[0]
    text.append(f"Load average at the end: {results['load_average_end']:.1f}.")
    write_results(args.out, "\n".join(text) + "\n", results)


if __name__ == "__main__":
    main()
