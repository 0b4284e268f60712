"""Evaluation metrics as pure functions of per-problem grades (numpy and the standard
library only), so they can be checked against brute force and reused by reports.

Vocabulary: a benchmark has P problems, each sampled n times; ``scores[p][j]`` is 1.0 if
sample j of problem p was graded correct. avg@k is the mean accuracy over all samples
(problem-weighted), pass@k the unbiased probability that at least one of k samples is
correct, and the confidence interval is a bootstrap over problems.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def per_problem_accuracy(scores: Sequence[Sequence[float]]) -> list[float]:
    """Mean score of each problem's samples."""
    if any(len(s) == 0 for s in scores):
        raise ValueError("every problem needs at least one graded sample")
    return [float(sum(s)) / len(s) for s in scores]


def avg_at_k(scores: Sequence[Sequence[float]]) -> float:
    """Mean over problems of the per-problem mean accuracy over its samples."""
    if not scores:
        raise ValueError("avg@k of an empty benchmark")
    return float(np.mean(per_problem_accuracy(scores)))


def mean_pass_at_k(scores: Sequence[Sequence[float]], k: int) -> float:
    """Mean over problems of the unbiased pass@k (each problem with its own n samples). A sample
    passes when its score is at least 1 (the built-in grader's 1.0; with reward functions of
    the user's own, scores are weighted sums and avg@k is their mean)."""
    if not scores:
        raise ValueError("pass@k of an empty benchmark")
    return float(np.mean([pass_at_k(len(s), sum(x >= 1.0 for x in s), k) for s in scores]))


def bootstrap_means(groups: Sequence[Sequence[float]], num_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of the macro mean: each resample draws, independently per
    group, as many values as the group has (with replacement), takes each group's mean,
    then the mean over groups. One group gives the ordinary bootstrap of a mean. Shape [R]."""
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("bootstrap needs at least one non-empty group")
    rng = np.random.default_rng(seed)
    per_group = []
    for g in groups:
        values = np.asarray(g, dtype=np.float64)  # [P]
        idx = rng.integers(0, len(values), size=(num_resamples, len(values)))  # [R, P]
        per_group.append(values[idx].mean(axis=1))  # [R]
    return np.mean(per_group, axis=0)  # [R]


def bootstrap_ci(groups: Sequence[Sequence[float]], num_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the (macro) mean of per-problem accuracies."""
    means = bootstrap_means(groups, num_resamples, seed)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def summarize(records: Sequence[Mapping[str, Any]], k: int, num_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The per-benchmark result dict from per-problem records with the fields ``scores``
    (list of 0/1), ``lengths`` (completion tokens), ``finish_reasons`` and ``timed_out``."""
    if not records:
        raise ValueError("no graded problems to summarize")
    scores = [list(r["scores"]) for r in records]
    accuracy = per_problem_accuracy(scores)
    finish = [f for r in records for f in r["finish_reasons"]]
    lengths = [n for r in records for n in r["lengths"]]
    lo, hi = bootstrap_ci([accuracy], num_resamples, seed=seed)
    return {
        "n": len(records),
        "k": k,
        "avg@k": avg_at_k(scores),
        "pass@k": mean_pass_at_k(scores, k),
        "ci95": [lo, hi],
        "truncation_rate": sum(f == "length" for f in finish) / len(finish),
        "mean_length": float(np.mean(lengths)),
        "timeouts": int(sum(sum(bool(t) for t in r["timed_out"]) for r in records)),
    }


def macro_average(results: Mapping[str, Mapping[str, Any]], accuracies: Mapping[str, Sequence[float]] | None = None,
                  num_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Unweighted mean over benchmarks of each metric. With ``accuracies`` (per-problem
    accuracy per benchmark), the CI is a joint bootstrap of the macro mean; without, it is
    omitted rather than faked. pass@k uses each benchmark's own k."""
    if not results:
        raise ValueError("no benchmarks to average")
    names = list(results)
    out: dict[str, Any] = {"benchmarks": len(names), "n": int(sum(results[b]["n"] for b in names))}
    for key in ("avg@k", "pass@k", "truncation_rate", "mean_length"):
        out[key] = float(np.mean([results[b][key] for b in names]))
    out["timeouts"] = int(sum(results[b]["timeouts"] for b in names))
    if accuracies is not None:
        out["ci95"] = list(bootstrap_ci([accuracies[b] for b in names], num_resamples, seed=seed))
    return out
