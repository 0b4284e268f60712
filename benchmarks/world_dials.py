"""The measured axes of issue 17's dials, before any RL: for each world model variant (the base
model, partial-strategy pre-training, biased priors, other sizes and pre-training lengths) and
world seed, the initial student's capability (p_a, p_g, p_g with partial strategies, execution
accuracy when the procedure is given) and its per-token NLL of the strong traces in every style
(the trace-style dial's axis). Grids and predictions: benchmarks/results/claims-plan.md.

Models missing from the cache are skipped unless ``--build`` (pre-training takes minutes each).

    PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE python benchmarks/world_dials.py --world pair --seeds 0 \
        --variants base --out benchmarks/results/world_dials.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _results import write_results  # noqa: E402  (beside this script, on sys.path when run)

# model variants: WorldSpec overrides that pre-training reads, PretrainSpec overrides
MODEL_VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "base": ({}, {}),
    "partial": ({"partial_pretrain_share": 0.25}, {}),
    "bias-0.25": ({"prior_bias": 0.25}, {}),
    "bias-0.5": ({"prior_bias": 0.5}, {}),
    "bias-0.8": ({"prior_bias": 0.8}, {}),
    "small": ({}, {"hidden_size": 64, "intermediate_size": 128}),
    "large": ({}, {"hidden_size": 256, "intermediate_size": 512}),
    "short": ({}, {"steps": 350}),
    "long": ({}, {"steps": 1400}),
}


def measure(world: str, seed: int, variant: str, n: int, samples: int, build: bool) -> dict[str, Any] | None:
    from sgpo.models import load_model, load_tokenizer
    from sgpo.world.capability import execution_accuracy, success_rates, trace_nll
    from sgpo.world.pretrain import cache_root, seeded_world, world_model_path
    from sgpo.world.styles import STYLES
    from sgpo.world.tasks import make_problems

    tasks, pretrain = MODEL_VARIANTS[variant]
    cfg = seeded_world(world, seed, tasks=tasks, pretrain=pretrain)
    if not build and not (cache_root() / cfg.key() / "world.json").exists():
        print(f"skip {variant} seed {seed}: not in the cache ({cfg.key()}); --build pre-trains it", file=sys.stderr)
        return None
    t0 = time.perf_counter()
    path = world_model_path(cfg, progress=False)
    model, tok = load_model(str(path), dtype="float32"), load_tokenizer(str(path))
    rows = make_problems(cfg.tasks, n, seed=seed, split="heldout")
    out: dict[str, Any] = {"variant": variant, "seed": seed, "key": cfg.key(),
                           "parameters": sum(p.numel() for p in model.parameters())}
    out.update(success_rates(model, tok, rows, samples=samples, seed=seed))
    partial = make_problems(replace(cfg.tasks, strategy_partial_share=1.0), n, seed=seed, split="heldout")
    out["p_g_partial"] = success_rates(model, tok, partial, samples=samples, seed=seed)["p_g"]
    out["execution"] = execution_accuracy(model, tok, rows)["accuracy"]
    out["trace_nll"] = {s: trace_nll(model, tok, make_problems(replace(cfg.tasks, trace_style=s), n, seed=seed,
                                                                split="train"))["nll_per_token"] for s in STYLES}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="pair", help="a world of sgpo.world.pretrain.WORLDS (default: pair)")
    ap.add_argument("--seeds", default="0", help="comma-separated world seeds")
    ap.add_argument("--variants", default="base", help=f"comma-separated, of: {', '.join(MODEL_VARIANTS)}")
    ap.add_argument("--problems", type=int, default=64, help="problems per measurement")
    ap.add_argument("--samples", type=int, default=4, help="samples per problem for p_a and p_g (temperature 1)")
    ap.add_argument("--build", action="store_true", help="pre-train models missing from the cache")
    ap.add_argument("--out", default="benchmarks/results/world_dials.md")
    args = ap.parse_args()
    from sgpo.world.styles import STYLES

    unknown = [v for v in args.variants.split(",") if v not in MODEL_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown} (have {', '.join(MODEL_VARIANTS)})")
    res = [r for v in args.variants.split(",") for s in (int(x) for x in args.seeds.split(","))
           if (r := measure(args.world, s, v, args.problems, args.samples, args.build)) is not None]
    lines = [f"# World dials: the initial student's capability and trace NLL ({args.world} world)", "",
             "Held-out p_a and p_g (avg@{k}, temperature 1.0), p_g with partial strategies (order + 2 candidate "
             "shifts), execution accuracy (greedy, the native trace's procedure words given), and the per-token "
             "NLL (nats) of the strong traces of each style on training problems under the unguided prompt: "
             "the trace-style dial's measured axis. Styles: benchmarks/results/claims-plan.md.".format(k=args.samples),
             "", "| model | seed | parameters | p_a | p_g | p_g partial | execution | "
             + " | ".join(f"NLL {s}" for s in STYLES) + " |",
             "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(STYLES)]
    for r in res:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['parameters']:,} | {r['p_a']:.3f} | {r['p_g']:.3f} | "
                     f"{r['p_g_partial']:.3f} | {r['execution']:.3f} | "
                     + " | ".join(f"{r['trace_nll'][s]:.3f}" for s in STYLES) + " |")
    lines += ["", f"{args.problems} problems per cell. Command: `PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE python "
              f"benchmarks/world_dials.py --world {args.world} --seeds {args.seeds} --variants {args.variants}"
              f"{' --build' if args.build else ''}`", ""]
    write_results(args.out, "\n".join(lines), {"world": args.world, "results": res, "args": {k: v for k, v in vars(args).items() if k != "out"}})
    print(json.dumps([{k: r[k] for k in ("variant", "seed", "seconds")} for r in res]))


if __name__ == "__main__":
    main()
