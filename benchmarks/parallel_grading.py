"""A step's completions graded one at a time (as before) and concurrently through the reward
functions' threads and the grader's worker processes (sgpo.rewards.functions), side by side,
alternating, each pass on fresh worker processes with the verdict memo cleared, so both do the same work.

    python benchmarks/parallel_grading.py --cases GRADER_CASES.jsonl [--rounds 3] [--threads 0]

``--cases``: a JSONL file with ``response`` and ``gold`` per line (grader test cases: a mix of
answers the cheap in-process path decides and ones that need sympy in a worker). Reports the
seconds per pass (median over rounds), the ratio, and whether the verdicts agree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._results import write_results  # noqa: E402
import sgpo.rewards as grader  # noqa: E402
from sgpo.rewards import workers  # noqa: E402
from sgpo.rewards.functions import RewardConfig, RewardFunctions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", required=True, help="JSONL with response and gold per line")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="reward.threads (0 = 2 x grader workers)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "parallel_grading.md"))
    args = ap.parse_args()
    cases = [json.loads(x) for x in Path(args.cases).read_text().splitlines() if x.strip()]
    texts, golds = [c["response"] for c in cases], [c["gold"] for c in cases]
    fns = RewardFunctions(RewardConfig(threads=args.threads))
    warm = [f"so \\boxed{{x^{k} + 1}}" for k in range(2, 2 + 2 * workers.default_size())]

    def fresh_workers() -> None:
        """New worker processes, started and warmed outside the timings: the workers memoise
        parsed answers, so a pass after another would find them parsed."""
        if workers._POOL is not None:
            workers._POOL.close()
            workers._POOL = None
        fns.grade(warm, ["1 + x^2"] * len(warm), [{}] * len(warm))
        grader._CACHE.clear()

    def serial() -> list[float]:
        return [grader.score_detailed(t, g).reward for t, g in zip(texts, golds)]

    def parallel() -> list[float]:
        return fns.grade(texts, golds, [{}] * len(texts)).rewards

    times: dict[str, list[float]] = {"serial": [], "parallel": []}
    verdicts: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, run in (("serial", serial), ("parallel", parallel)):
            fresh_workers()
            t0 = time.perf_counter()
            verdicts[name] = run()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    same = verdicts["serial"] == verdicts["parallel"]
    load = os.getloadavg()[0]
    text = "\n".join([
        "# Grading a step's completions: one at a time vs in parallel", "",
        f"{len(cases)} completions ({sum(verdicts['serial']):.0f} correct), {args.rounds} rounds alternating, "
        f"fresh workers and memo before each pass; {workers.default_size()} grader workers, {fns.threads} threads; "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the end (a shared machine).", "",
        "| grading | seconds per pass (median) | all passes |", "|---|---:|---|",
        *[f"| {k} | {med[k]:.2f} | {', '.join(f'{x:.2f}' for x in v)} |" for k, v in times.items()], "",
        f"Serial / parallel: **{med['serial'] / med['parallel']:.2f}x**. Verdicts identical: {same}.", ""])
    write_results(args.out, text, {"cases": len(cases), "rounds": args.rounds, "threads": fns.threads,
                                   "workers": workers.default_size(), "seconds": times, "median": med,
                                   "ratio": med["serial"] / med["parallel"], "verdicts_identical": same,
                                   "load_average": load})


if __name__ == "__main__":
    main()
