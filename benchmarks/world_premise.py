"""SGPO's premise on the strategy world: does the pre-trained model follow a strategy it is
given (p_g) far more often than it finds the procedure alone (p_a)?

Pre-trains (or loads from the cache) the world model, then samples held-out problems and
held-out (keyword, noun) combinations unguided and guided with the demo's evaluation sampling,
graded by ``sgpo.rewards.score``. Writes a markdown table (and JSON beside it).

    PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE python benchmarks/world_premise.py \
        --out benchmarks/results/world_premise.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _results import write_results  # noqa: E402  (beside this script, on sys.path when run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=64, help="problems per split")
    ap.add_argument("--samples", type=int, default=4, help="samples per problem")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/world_premise.md")
    args = ap.parse_args()

    import tempfile

    from sgpo.generation import SamplingConfig
    from sgpo.evaluation.runner import evaluate_records
    from sgpo.models import load_model, load_tokenizer
    from sgpo.world.pretrain import WorldConfig, world_model_path
    from sgpo.world.tasks import make_problems

    cfg = WorldConfig()
    t0 = time.perf_counter()
    path = world_model_path(cfg)
    info = json.loads((path / "world.json").read_text())
    prep_s = time.perf_counter() - t0
    model, tok = load_model(str(path), dtype="float32"), load_tokenizer(str(path))
    sampling = SamplingConfig(temperature=args.temperature, top_p=1.0, max_new_tokens=32, seed=args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("heldout", "combos"):
            probs = make_problems(cfg.tasks, args.problems, seed=args.seed, split=split)
            res = {}
            for guided in (False, True):
                recs = [dict(p, strategy=p["strategy"] if guided else None) for p in probs]
                label = f"{split}-{'guided' if guided else 'auto'}"
                r, _ = evaluate_records(model, tok, recs, label, sampling, args.samples, output_dir=tmp,
                                        model_id="world", show_progress=False)
                res["p_g" if guided else "p_a"] = r
            rows.append((split, res))
    lines = [
        "# Strategy world: guidance before RL (the premise)",
        "",
        f"Pre-trained world model `{info['key']}`: {info['stats']['parameters']:,} parameters, vocabulary "
        f"{info['stats']['vocab_size']}, pre-training final loss {info['stats']['final_loss']:.3f} in "
        f"{info['stats']['seconds']:.0f} s (wall time of the run that built the cache). "
        f"{args.problems} problems per split x {args.samples} samples, "
        f"temperature {args.temperature}, graded by `sgpo.rewards.score`; 95% CIs over problems.",
        "",
        "| split | p_a (unguided) | p_g (guided) | p_g - p_a |",
        "|---|---:|---:|---:|",
    ]
    out_json = {"model": info, "problems": args.problems, "samples": args.samples,
                "temperature": args.temperature, "seed": args.seed, "splits": {}}
    for split, res in rows:
        a, g = res["p_a"], res["p_g"]
        lines.append(f"| {split} | {a['avg@k']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] | "
                     f"{g['avg@k']:.3f} [{g['ci95'][0]:.3f}, {g['ci95'][1]:.3f}] | {g['avg@k'] - a['avg@k']:+.3f} |")
        out_json["splits"][split] = {"p_a": a["avg@k"], "p_a_ci95": a["ci95"], "p_g": g["avg@k"],
                                     "p_g_ci95": g["ci95"], "difference": g["avg@k"] - a["avg@k"]}
    lines += ["", "`heldout`: training (keyword, noun) pairs on digits no training problem uses; `combos`: each "
              "keyword with the noun RL training never pairs it with. The unguided model must guess among "
              f"{len(cfg.tasks.methods)} procedures (chance {1 / len(cfg.tasks.methods):.3f}).", "",
              f"Command: `PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE python benchmarks/world_premise.py --out {args.out}` "
              f"(model preparation {prep_s:.0f} s in this run, 0 when cached)."]
    text = "\n".join(lines) + "\n"
    write_results(args.out, text, out_json)


if __name__ == "__main__":
    main()
