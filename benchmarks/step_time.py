"""One SGPO step vs one GRPO step with the same number of sampled trajectories per problem
(SGPO: G_a + G_g, GRPO: G_a + G_g autonomous), on a tiny model, measured side by side.

The tiny random model never answers correctly, so to time SGPO's worst case the run uses
``weight_mode: constant`` and ``distill_on: all``: every guided trajectory is distilled
(teacher forward, top-k targets, fused KL). Target: SGPO step time <= 1.3x GRPO.

    python benchmarks/step_time.py [--model PATH] [--steps 4] [--tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sgpo.data import build_problems
from sgpo.trainer.config import load_config
from sgpo.trainer.trainer import Trainer

STRATEGY = {"problem_type": "two-step arithmetic", "key_insight": "Compute the inner quantity before the outer one.",
            "plan": ["Identify the two quantities", "Combine them in order", "Check the result"]}


def step_times(method: str, model: str, steps: int, tokens: int, n: int, g_g: int, out: Path) -> list[float]:
    sets = [f"algorithm.method={method}", "data.path=unused", f"model.name_or_path={model}", "model.dtype=float32",
            f"algorithm.samples_per_problem={n}", f"algorithm.group_guided={g_g}", f"algorithm.max_new_tokens={tokens}",
            "algorithm.weight_mode=constant", "algorithm.distill_on=all", f"training.max_steps={steps + 1}",
            "training.prompts_per_step=4", "system.micro_batch_size=12", "system.generation_batch_size=48",
            "run.save_steps=0", "run.save_final_model=false", "run.progress=false", f"run.output_dir={out / method}"]
    problems = build_problems([{"id": str(i), "problem": f"What is {i} + {2 * i}?", "answer": str(3 * i),
                                "strategy": STRATEGY} for i in range(16)], "bench")
    trainer = Trainer(load_config(None, sets), problems=problems)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        trainer.train_step(_NoBar())
        times.append(time.perf_counter() - t0)
    h = trainer.history[1:]  # the first step warms up allocators and kernels
    print(f"{method}: rollout (generation, scoring, teacher targets) {statistics.median(x['time_rollout'] for x in h):.2f} s, "
          f"update {statistics.median(x['time_update'] for x in h):.2f} s")
    return times[1:]


class _NoBar:
    def update(self, *_: object) -> None: ...
    def set_postfix(self, **_: object) -> None: ...


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model path (default: a tiny random Llama with SmolLM2's tokenizer)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens (the random model always uses them all)")
    ap.add_argument("--samples-per-problem", type=int, default=12, help="trajectories per problem, both methods")
    ap.add_argument("--group-guided", type=int, default=4, help="of which SGPO samples this many guided")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        model = args.model
        if model is None:
            from sgpo.models import tiny_model

            model = str(tiny_model(out / "tiny", hidden_size=256, intermediate_size=512, num_hidden_layers=4))
        total = args.samples_per_problem
        sgpo = step_times("sgpo", model, args.steps, args.tokens, total, args.group_guided, out)
        grpo = step_times("grpo", model, args.steps, args.tokens, total, args.group_guided, out)
    s, g = statistics.median(sgpo), statistics.median(grpo)
    print(f"trajectories per problem: SGPO {total - args.group_guided} autonomous + {args.group_guided} guided, "
          f"GRPO {total} autonomous")
    print(f"SGPO step: median {s:.2f} s  ({', '.join(f'{x:.2f}' for x in sgpo)})")
    print(f"GRPO step: median {g:.2f} s  ({', '.join(f'{x:.2f}' for x in grpo)})")
    print(f"ratio SGPO/GRPO: {s / g:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
