"""Statistics for comparisons over seeds, as pure functions (numpy and the standard library):
paired tests over seeds with Holm's correction, a hierarchical bootstrap over seeds, keywords
and problems, learning-curve summaries, and the one tuning rule of the sweep.

Vocabulary: a *seed* is one world (its own map, pre-trained model, problems and training
seed); two methods run on the same seed are paired. Within a seed the problems fall into
*clusters* (the world's keywords: accuracy is a mixture of per-keyword rates, so problems of
one keyword are not independent draws).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


# -- the t distribution, without scipy -------------------------------------------------------------
def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b), by its continued fraction (modified
    Lentz), using the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly."""
    if not (a > 0 and b > 0 and 0 <= x <= 1):
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1 (got a={a}, b={b}, x={x})")
    if x in (0.0, 1.0):
        return x
    if x > (a + 1) / (a + b + 2):
        return 1.0 - betainc(b, a, 1.0 - x)
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    frac = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            frac *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * frac / a


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom: I_{df/(df+t^2)}(df/2, 1/2)."""
    if df <= 0:
        raise ValueError(f"df must be > 0 (got {df})")
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Two-sided paired t test of mean(a - b) = 0 over seeds. Returns n, mean_diff, sd_diff,
    t, df, p. Identical pairs give t = 0, p = 1; a constant non-zero difference t = +-inf, p = 0."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)  # [S]
    if d.ndim != 1 or len(d) < 2 or len(a) != len(b):
        raise ValueError(f"paired test needs two equal-length sequences of >= 2 values (got {len(a)}, {len(b)})")
    n, mean = len(d), float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    return {"n": n, "mean_diff": mean, "sd_diff": sd, "t": t, "df": n - 1, "p": t_two_sided_p(t, n - 1)}


def sign_flip_p(diffs: Sequence[float], num_resamples: int = 20000, seed: int = 0) -> float:
    """Two-sided sign-flip (paired permutation) test of mean difference 0: the share of sign
    assignments whose |sum| is at least the observed one. Exact (every assignment) for up to
    16 pairs, Monte Carlo beyond. Needs no normality; with n pairs its smallest p is 2 / 2^n."""
    d = np.asarray(diffs, dtype=np.float64)  # [S]
    if d.ndim != 1 or len(d) < 1:
        raise ValueError("sign-flip test needs at least one difference")
    observed = abs(d.sum()) - 1e-12 * max(1.0, float(np.abs(d).sum()))  # ties count as extreme
    if len(d) <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))  # [2^S, S]
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(num_resamples, len(d)))  # [R, S]
    return float(np.mean(np.abs(signs @ d) >= observed))


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values over the comparisons given (family-wise error
    control): the i-th smallest of m is multiplied by m - i + 1, then made monotone, capped at 1."""
    names = sorted(pvalues, key=lambda k: pvalues[k])
    m, running, out = len(names), 0.0, {}
    for i, name in enumerate(names):
        running = max(running, min(1.0, (m - i) * pvalues[name]))
        out[name] = running
    return out


# -- the hierarchical bootstrap ------------------------------------------------------------------
def hierarchical_bootstrap(seeds: Sequence[Mapping[str, Sequence[float]]], num_resamples: int = 2000,
                           seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of the mean over seeds of each seed's problem-weighted mean, where
    ``seeds[s]`` maps cluster (keyword) -> per-problem values of seed s (accuracies, or paired
    differences of two methods on the same problems). Each resample draws seeds with
    replacement, within each drawn seed its clusters with replacement, and within each drawn
    cluster its problems with replacement. Shape [R]."""
    if not seeds or any(not s or any(len(v) == 0 for v in s.values()) for s in seeds):
        raise ValueError("hierarchical bootstrap needs at least one seed, each with non-empty clusters")
    rng = np.random.default_rng(seed)
    per_seed = []  # [S] arrays of [R]
    for clusters in seeds:
        sizes = np.array([len(v) for v in clusters.values()])  # [K]
        values = np.zeros((len(sizes), sizes.max()))  # [K, M] padded
        for k, v in enumerate(clusters.values()):
            values[k, : len(v)] = np.asarray(v, dtype=np.float64)
        kw = rng.integers(0, len(sizes), size=(num_resamples, len(sizes)))  # [R, K] clusters drawn
        n = sizes[kw]  # [R, K]
        idx = (rng.random((num_resamples, len(sizes), sizes.max())) * n[..., None]).astype(int)  # [R, K, M]
        mask = np.arange(sizes.max())[None, None, :] < n[..., None]  # [R, K, M]
        drawn = values[kw[..., None], idx] * mask  # [R, K, M]
        per_seed.append(drawn.sum(axis=(1, 2)) / mask.sum(axis=(1, 2)))  # [R]
    table = np.stack(per_seed, axis=1)  # [R, S]
    pick = rng.integers(0, table.shape[1], size=table.shape)  # [R, S] seeds drawn
    return np.take_along_axis(table, pick, axis=1).mean(axis=1)  # [R]


def hierarchical_ci(seeds: Sequence[Mapping[str, Sequence[float]]], confidence: float = 0.95,
                    num_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of :func:`hierarchical_bootstrap`."""
    means = hierarchical_bootstrap(seeds, num_resamples, seed)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def point_estimate(seeds: Sequence[Mapping[str, Sequence[float]]]) -> float:
    """The statistic :func:`hierarchical_bootstrap` resamples, on the data as they are."""
    return float(np.mean([np.mean([x for v in s.values() for x in v]) for s in seeds]))


# -- learning curves -------------------------------------------------------------------------------
def curve_summary(x: Sequence[float], acc: Sequence[float], thresholds: Sequence[float] = ()) -> dict[str, Any]:
    """Summaries of one learning curve, accuracy ``acc`` at ``x`` (for example trajectories
    sampled per problem so far, increasing): ``auc`` (trapezoid area divided by the x range: the
    mean accuracy over the run), ``final``, ``best``, and for each threshold the x at which the
    curve first reaches it (linear interpolation between points; None if it never does)."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(acc, dtype=np.float64)  # [P]
    if len(xs) < 2 or len(xs) != len(ys) or np.any(np.diff(xs) <= 0):
        raise ValueError("a curve needs >= 2 points with increasing x")
    auc = float(np.sum((ys[1:] + ys[:-1]) / 2 * np.diff(xs)) / (xs[-1] - xs[0]))
    reach: dict[str, float | None] = {}
    for thr in thresholds:
        hit = np.nonzero(ys >= thr)[0]
        if not len(hit):
            reach[f"{thr:g}"] = None
        elif hit[0] == 0:
            reach[f"{thr:g}"] = float(xs[0])
        else:
            i = hit[0]
            frac = (thr - ys[i - 1]) / (ys[i] - ys[i - 1])
            reach[f"{thr:g}"] = float(xs[i - 1] + frac * (xs[i] - xs[i - 1]))
    return {"auc": auc, "final": float(ys[-1]), "best": float(ys.max()), "reach": reach}


# -- the tuning rule -------------------------------------------------------------------------------
def tuning_choice(curves: Mapping[float, Sequence[Sequence[tuple[int, float]]]],
                  tolerance: float = 0.02) -> dict[str, Any]:
    """The sweep's one rule, the same for every method. ``curves[lr]`` holds one validation
    curve per tuning seed, as (step, accuracy) pairs at the same probe steps. For each learning
    rate the seeds' curves are averaged; the learning rate whose mean curve has the highest
    maximum wins (ties: the smaller rate); the step count is the first probe step at which that
    mean curve comes within ``tolerance`` of its maximum (where it has flattened). Returns lr,
    steps, best (the mean curve's maximum) and per-lr summaries."""
    if not curves:
        raise ValueError("no curves to choose from")
    table = {}
    for lr, runs in curves.items():
        if not runs:
            raise ValueError(f"learning rate {lr}: no tuning runs")
        steps = [s for s, _ in runs[0]]
        if any([s for s, _ in r] != steps for r in runs):
            raise ValueError(f"learning rate {lr}: tuning runs were probed at different steps")
        mean = np.mean([[a for _, a in r] for r in runs], axis=0)  # [P]
        best = float(mean.max())
        first = next(s for s, m in zip(steps, mean) if m >= best - tolerance)
        table[lr] = {"steps": first, "best": best, "mean_curve": [[s, float(m)] for s, m in zip(steps, mean)],
                     "seeds": len(runs)}
    lr = min(table, key=lambda k: (-round(table[k]["best"], 12), k))
    return {"lr": lr, "steps": table[lr]["steps"], "best": table[lr]["best"], "tolerance": tolerance,
            "per_lr": {f"{k:g}": v for k, v in sorted(table.items())}}
