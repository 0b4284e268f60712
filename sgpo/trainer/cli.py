"""`sgpo train`: a thin driver over :func:`sgpo.trainer.trainer.train`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sgpo.trainer.specs import METHODS

HELP = """Train a policy with SGPO or a baseline (grpo, sft, luffy) or an ablation (imitation,
guided_rl) from a YAML config. Every method that samples draws algorithm.samples_per_problem
trajectories per problem (guided methods: algorithm.group_guided of them guided; luffy: one is
the strong-model trace); metrics.jsonl logs the split as samples/auto and samples/guided.
Runs as is on one device; under `accelerate launch` on several
processes (DDP, FSDP, DeepSpeed ZeRO-3). The output directory holds the resolved config
(config.json), metrics.jsonl (one JSON object per step), checkpoints (checkpoint-STEP, resumed
automatically) and the final model (final/). A folder holds one run: resuming with other
math-relevant settings (say another --method) or --no-resume into a folder that holds a run
is refused unless --overwrite deletes the earlier run."""


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train a policy (SGPO, baselines, ablations)", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config with sections model, data, algorithm, training, run "
                                    "(e.g. configs/cpu-tiny.yaml)")
    p.add_argument("--method", help="override algorithm.method: " + ", ".join(METHODS))
    p.add_argument("--output-dir", help="override run.output_dir")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config field, e.g. --set algorithm.top_k=32 (repeatable)")
    p.add_argument("--no-resume", action="store_true",
                   help="start from scratch; refused if the output directory already holds a run, unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in the output directory (checkpoints, metrics, final model) first")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sgpo.io import DataError
    from sgpo.trainer.config import load_config

    sets = list(args.set)
    if args.method:
        sets.append(f"algorithm.method={args.method}")
    if args.output_dir:
        sets.append(f"run.output_dir={args.output_dir}")
    if args.no_resume:
        sets.append("run.resume=false")
    if args.overwrite:
        sets.append("run.overwrite=true")
    try:
        cfg = load_config(args.config, sets).validate()
    except (ValueError, FileNotFoundError) as e:
        print(f"sgpo train: config error: {e}", file=sys.stderr)
        return 2
    from sgpo.trainer.trainer import train

    try:
        result = train(cfg)
    except DataError as e:
        print(f"sgpo train: data error: {e}", file=sys.stderr)
        return 2
    print(f"done: {len(result.history)} steps logged, {result.skipped_updates} optimiser updates skipped; outputs in {result.output_dir}")
    return 0
