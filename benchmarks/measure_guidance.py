"""Does strategy guidance help SmolLM2-135M-Instruct on the demo's problem families?

For each family, samples unguided and guided (strategy in a ``<strategy>`` block) answers
from the real model with the project's prompts, generator and grader, and reports the
autonomous success p_a, the guided success p_g and the mean completion length in tokens, at
the demo's training temperature (0.7) and evaluation temperature (0.6), with the demo's prompt
format (``--style spec`` for the spec's). The demo's default families and number ranges were
chosen from this table; the length decides its runtime.

    python benchmarks/measure_guidance.py [--families add_items groups] [--problems 8]
        [--samples 4] [--temperatures 0.7 0.6] [--max-new-tokens 64] [--style demo|spec] [--ranges '{"groups": {"each": [2, 9]}}']

Writes ``benchmarks/results/guidance.json`` and ``guidance.md`` (``--name`` changes the stem).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sgpo.arithmetic import DEFAULT_FAMILIES, FAMILIES, make_problems  # noqa: E402
from sgpo.generation import SamplingConfig  # noqa: E402
from sgpo.generation.hf import HFGenerator  # noqa: E402
from sgpo.models import load_model, load_tokenizer, smollm2_path  # noqa: E402
from sgpo.demo.run import DemoSettings  # noqa: E402
from sgpo.prompts import PromptStyle  # noqa: E402
from sgpo.rewards import score  # noqa: E402
from sgpo.schema import strategy_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
KEYS = ("r_a", "r_g", "num_a", "num_g", "len_a", "len_g", "cut_a", "cut_g")


def last_number_correct(text: str, answer: str) -> float:
    """Diagnostic only, not the reward: 1.0 if the last number in the text is the answer.
    Separates "cannot compute it" from "computed it but never stated it the way the grader
    reads" (a box or "the answer is"), which for a 135M model is most of the gap."""
    numbers = _NUMBER.findall(text)
    return float(bool(numbers) and numbers[-1] == answer)


def measure(generator: HFGenerator, tokenizer: Any, problems: list[dict[str, Any]], samples: int,
            temperature: float, max_new_tokens: int, seed: int, show: int = 0,
            style: PromptStyle = PromptStyle()) -> dict[str, dict[str, float]]:
    """Per family and over all ("all"): p_a, p_g, mean completion tokens (len_a, len_g), the
    share cut at ``max_new_tokens`` (cut_a, cut_g) and the last-number diagnostic (num_a,
    num_g). Guided and unguided prompts share one call so batches stay full."""
    prompts = [style.render(tokenizer, p["problem"]) for p in problems]
    prompts += [style.render(tokenizer, p["problem"], strategy_text(p["strategy"])) for p in problems]
    sampling = SamplingConfig(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens, seed=seed)
    outputs = generator.generate(prompts, sampling, n=samples)
    rows: dict[str, dict[str, list[float]]] = {}
    shown: dict[tuple[str, str], int] = {}
    for i, completions in enumerate(outputs):
        prob = problems[i % len(problems)]
        mode = "a" if i < len(problems) else "g"
        if shown.get((prob["family"], mode), 0) < show:
            shown[(prob["family"], mode)] = shown.get((prob["family"], mode), 0) + 1
            c = completions[0]
            print(f"--- {prob['family']} {'guided' if mode == 'g' else 'unguided'} (gold {prob['answer']}, "
                  f"reward {score(c.text, prob['answer']):.0f}): {prob['problem']}\n{c.text}\n", flush=True)
        acc = rows.setdefault(prob["family"], {k: [] for k in KEYS})
        for c in completions:
            acc[f"r_{mode}"].append(score(c.text, prob["answer"]))
            acc[f"num_{mode}"].append(last_number_correct(c.text, prob["answer"]))
            acc[f"len_{mode}"].append(len(c.token_ids))
            acc[f"cut_{mode}"].append(float(c.finish_reason == "length"))
    rows["all"] = {k: [x for v in rows.values() for x in v[k]] for k in KEYS}
    names = {"r_a": "p_a", "r_g": "p_g"}
    return {fam: {**{names.get(k, k): sum(xs) / len(xs) for k, xs in v.items()}, "n": len(v["r_a"])}
            for fam, v in rows.items()}


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Strategy guidance on the demo families ({results['model']})", "",
             f"{results['problems_per_family']} problems x {results['samples']} samples per family and mode, "
             f"max_new_tokens={results['max_new_tokens']}, top_p=1.0, graded by `sgpo.rewards.score`. "
             f"Prompt format: {results.get('style', 'spec')}. "
             "p_a: unguided success, p_g: guided success, len: mean completion tokens, cut: share "
             "stopped at max_new_tokens; num: share whose last number is the answer (a diagnostic, "
             "not the reward).", ""]
    for temp, table in results["by_temperature"].items():
        lines += [f"## temperature {temp} ({table['_seconds']:.0f} s)", "",
                  "| family | n | p_a | p_g | p_g - p_a | len_a | len_g | cut_a | cut_g | num_a | num_g |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for fam, r in table.items():
            if fam.startswith("_"):
                continue
            lines.append(f"| {fam} | {r['n']} | {r['p_a']:.2f} | {r['p_g']:.2f} | {r['p_g'] - r['p_a']:+.2f} | "
                         f"{r['len_a']:.0f} | {r['len_g']:.0f} | {r['cut_a']:.2f} | {r['cut_g']:.2f} | "
                         f"{r.get('num_a', float('nan')):.2f} | {r.get('num_g', float('nan')):.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES), choices=sorted(FAMILIES))
    ap.add_argument("--problems", type=int, default=8, help="problems per family")
    ap.add_argument("--samples", type=int, default=4, help="samples per problem and mode")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 0.6])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ranges", type=json.loads, default=None, help="JSON: family -> knob -> [lo, hi]")
    ap.add_argument("--name", default="guidance", help="stem of the result files")
    ap.add_argument("--show", type=int, default=0, help="print this many completions per family and mode")
    ap.add_argument("--style", choices=("demo", "spec"), default="demo",
                    help="prompt format: the demo's (system turn, short instruction, one few-shot exchange) "
                         "or the spec's plain \\boxed{} instruction")
    args = ap.parse_args()

    path = smollm2_path()
    tokenizer, model = load_tokenizer(str(path)), load_model(str(path), dtype="float32")
    generator = HFGenerator(model, tokenizer, batch_size=args.batch_size)
    ranges = {f: {k: tuple(v) for k, v in r.items()} for f, r in (args.ranges or {}).items()}
    problems = make_problems(args.problems * len(args.families), args.seed, args.families, ranges=ranges)
    results: dict[str, Any] = {"model": "SmolLM2-135M-Instruct", "style": args.style, "families": args.families,
                               "problems_per_family": args.problems, "samples": args.samples,
                               "max_new_tokens": args.max_new_tokens, "seed": args.seed,
                               "ranges": {f: {**FAMILIES[f].ranges, **ranges.get(f, {})} for f in args.families},
                               "by_temperature": {}}
    style = DemoSettings.for_model("smollm2").style if args.style == "demo" else PromptStyle()
    for temp in args.temperatures:
        start = time.perf_counter()
        table = measure(generator, tokenizer, problems, args.samples, temp, args.max_new_tokens, args.seed, args.show,
                        style)
        table["_seconds"] = time.perf_counter() - start
        results["by_temperature"][str(temp)] = table
        print(markdown({**results, "by_temperature": {str(temp): table}}).split("\n", 4)[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(results))
    print(f"wrote {RESULTS / args.name}.json and .md")


if __name__ == "__main__":
    main()
