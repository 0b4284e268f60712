"""Per-call time of the grader: the in-process watchdog grader it replaced (loaded from git
history) against the current one (cheap path in-process, sympy in worker processes), side by
side in one run.

    python benchmarks/grader_speed.py [--baseline-rev REV] [--calls N] [--answers FILE.jsonl]

Rows: the common path (integer and identically spelt answers, decided without sympy), a
sympy comparison with a new answer each call (no memo), the same sympy comparison repeated
(memoised), and eight threads grading new sympy comparisons at once. With ``--answers`` (a
JSONL file with an ``answer`` field per line, e.g. a benchmark's gold answers), a realistic
row too: each gold graded against itself boxed (a correct answer as the gold spells it) and
against the next line's gold (a wrong answer). Also the share of gradings the cheap path
decides (the rule that keeps sympy out of the caller's process) and the share of gold
answers with several parts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sgpo.rewards as current  # noqa: E402
from sgpo.rewards.answers import normalize, split_parts  # noqa: E402
from sgpo.rewards.matching import decide, quick_equal  # noqa: E402


def load_baseline(rev: str | None) -> tuple[ModuleType, str]:
    """sgpo/rewards.py as it was before it became a package (or at ``rev``)."""
    if rev is None:
        last = subprocess.run(["git", "rev-list", "-1", "HEAD", "--", "sgpo/rewards.py"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
        rev = f"{last}^"  # the commit that removed the file; its parent still has it
    source = subprocess.run(["git", "show", f"{rev}:sgpo/rewards.py"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    path = Path(tempfile.mkdtemp()) / "sgpo_rewards_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sgpo_rewards_baseline", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]  # dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module, rev


def box(s: str) -> str:
    return f"Some reasoning... so the answer is \\boxed{{{s}}}."


def per_call_us(fns: dict[str, Callable[[int], object]], calls: int, rounds: int = 3) -> dict[str, float]:
    """Per-call microseconds of each function, the graders alternating in ``rounds`` chunks
    so that load from other jobs on the machine falls on both alike."""
    spent = {label: 0.0 for label in fns}
    chunk = max(calls // rounds, 1)
    for r in range(rounds):
        for label, fn in fns.items():
            start = time.perf_counter()
            for i in range(r * chunk, (r + 1) * chunk):
                fn(i)
            spent[label] += time.perf_counter() - start
    return {label: t / (chunk * rounds) * 1e6 for label, t in spent.items()}


def threaded_per_call_us(graders: dict[str, Callable[..., float]], calls: int) -> dict[str, float]:
    """Eight threads grading new sympy comparisons at once."""
    out = {}
    for k, (label, score) in enumerate(graders.items()):
        offset = 100000 * (k + 1)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda i: score(box(f"\\frac{{\\sqrt{{3}}}}{{{i + offset}}}"), f"\\sqrt{{3}}/{i + offset}"),
                          range(calls)))
        out[label] = (time.perf_counter() - start) / calls * 1e6
    return out


def demo_golds() -> list[str]:
    from sgpo.arithmetic import make_problems  # the procedural problems the demo trains on

    return [p["answer"] for p in make_problems(128, seed=0)]


def gold_pairs(golds: list[str]) -> list[tuple[str, str]]:
    """(completion, gold): each gold boxed as is, and the next gold as a wrong answer."""
    return [(box(g), g) for g in golds] + [(box(golds[(i + 1) % len(golds)]), g) for i, g in enumerate(golds)]


def cheap_share(pairs: list[tuple[str, str]]) -> str:
    decided = 0
    for completion, gold in pairs:
        cmp, _ = current._comparison(completion, gold)
        decided += cmp is None or decide(cmp, quick_equal) is not None
    return f"{decided}/{len(pairs)} = {decided / len(pairs):.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-rev", default=None, help="git revision holding the old sgpo/rewards.py")
    parser.add_argument("--calls", type=int, default=3000, help="calls per common-path row")
    parser.add_argument("--answers", default=None, help="JSONL with an 'answer' field per line (a realistic mix)")
    args = parser.parse_args()
    baseline, rev = load_baseline(args.baseline_rev)
    graders = {"before": baseline.score, "after": current.score}
    for score in graders.values():  # imports, warm-up, worker start: not timed
        score(box("17"), "17")
        score(box("\\frac{\\sqrt{2}}{2}"), "\\sqrt{2}/2")

    sympy_calls = max(args.calls // 20, 50)
    rows: list[tuple[str, dict[str, float]]] = []
    cases: list[tuple[str, int, Callable[[Callable[..., float], int], object]]] = [
        ("integer answer (common path)", args.calls, lambda s, i: s(box(str(i % 50)), "17")),
        ("same spelling as the gold (common path)", args.calls, lambda s, i: s(box("\\frac{1}{2}"), "\\frac{1}{2}")),
        ("sympy comparison, new answer each call", sympy_calls,
         lambda s, i: s(box(f"\\frac{{\\sqrt{{2}}}}{{{i + 2}}}"), f"\\sqrt{{2}}/{i + 2}")),
        ("sympy comparison, repeated (memoised)", args.calls,
         lambda s, i: s(box("\\frac{\\sqrt{2}}{2}"), "\\sqrt{2}/2")),
    ]
    for offset, (name, calls, case) in enumerate(cases):
        # distinct answers per grader (offset), so neither sees the other's memo
        fns = {label: (lambda i, s=s, k=k, o=offset: case(s, i + 1000 * k * (o + 1)))
               for k, (label, s) in enumerate(graders.items())}
        rows.append((name, per_call_us(fns, calls)))
    rows.append(("8 threads, sympy comparison, new answers", threaded_per_call_us(graders, sympy_calls * 2)))
    golds = demo_golds()
    if args.answers:
        golds = [str(json.loads(line)["answer"]) for line in Path(args.answers).read_text().splitlines() if line.strip()]
        pairs = gold_pairs(golds)
        fns = {label: (lambda i, s=s: s(*pairs[i])) for label, s in graders.items()}
        rows.append((f"{Path(args.answers).name}: gold as spelt + next gold ({len(pairs)} calls)",
                     per_call_us(fns, len(pairs), rounds=1)))

    print(f"baseline: sgpo/rewards.py at {rev}; workers: {current.workers.default_size()}; cpus: {os.cpu_count()}")
    print("| case | before us/call | after us/call | after / before |")
    print("|---|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t['before']:.1f} | {t['after']:.1f} | {t['after'] / t['before']:.2f}x |")
    source = Path(args.answers).name if args.answers else "demo problems"
    print(f"cheap path decides ({source}: gold as spelt + next gold): {cheap_share(gold_pairs(golds))}")
    multi = sum(len(split_parts(normalize(g))) > 1 for g in golds)
    print(f"gold answers with several parts ({source}): {multi}/{len(golds)}")


if __name__ == "__main__":
    main()
