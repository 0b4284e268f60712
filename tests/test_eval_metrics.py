"""Evaluation metrics against brute force and hand-derived values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sgpo.evaluation.metrics import (avg_at_k, bootstrap_ci, bootstrap_means, macro_average, mean_pass_at_k,
                                     pass_at_k, per_problem_accuracy, summarize)


def pass_at_k_brute_force(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n samples (c correct) that contain a correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_brute_force(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(pass_at_k_brute_force(n, c, k), abs=1e-12)


def test_pass_at_k_hand_values() -> None:
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25, abs=1e-15)  # pass@1 = c/n
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5, abs=1e-15)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0
    # large n stays stable: 1 - C(900,32)/C(1000,32) = 1 - prod_{i=901}^{1000} (1 - 32/i)
    exact = 1 - math.comb(900, 32) / math.comb(1000, 32)
    assert pass_at_k(1000, 100, 32) == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_avg_and_mean_pass_at_k() -> None:
    scores = [[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert per_problem_accuracy(scores) == [0.25, 1.0, 0.0]
    assert avg_at_k(scores) == pytest.approx((0.25 + 1.0 + 0.0) / 3, abs=1e-15)
    # pass@2 per problem: 1 - C(3,2)/C(4,2) = 0.5; 1; 0  -> mean 0.5
    assert mean_pass_at_k(scores, 2) == pytest.approx(0.5, abs=1e-15)


def test_bootstrap_of_constant_values_is_a_point() -> None:
    assert bootstrap_ci([[0.5] * 10]) == (0.5, 0.5)


def test_bootstrap_two_values_spans_the_range() -> None:
    # mean of 2 draws from {0, 1}: 0 w.p. 1/4, 0.5 w.p. 1/2, 1 w.p. 1/4 -> 2.5% / 97.5% quantiles 0 and 1
    assert bootstrap_ci([[0.0, 1.0]], num_resamples=1000, seed=0) == (0.0, 1.0)


def test_bootstrap_matches_normal_approximation() -> None:
    # 400 problems, half right: standard error sqrt(0.25 / 400) = 0.025, so about 0.5 +- 1.96 * 0.025
    lo, hi = bootstrap_ci([[1.0, 0.0] * 200], num_resamples=4000, seed=1)
    assert lo == pytest.approx(0.5 - 0.049, abs=0.006)
    assert hi == pytest.approx(0.5 + 0.049, abs=0.006)


def test_bootstrap_vectorised_equals_loop() -> None:
    groups = [[0.0, 0.25, 1.0, 0.5], [1.0, 0.0, 0.0]]
    rng = np.random.default_rng(7)
    per_group = []
    for g in groups:  # same draws as bootstrap_means, one resample at a time
        idx = rng.integers(0, len(g), size=(50, len(g)))
        per_group.append([float(np.mean([g[i] for i in row])) for row in idx])
    expected = [(a + b) / 2 for a, b in zip(*per_group)]
    np.testing.assert_allclose(bootstrap_means(groups, num_resamples=50, seed=7), expected, rtol=0, atol=1e-12)


def test_bootstrap_is_seeded() -> None:
    data = [[0.0, 0.3, 0.9, 1.0, 0.2]]
    assert bootstrap_ci(data, seed=3) == bootstrap_ci(data, seed=3)


def test_summarize_hand_derived() -> None:
    records = [
        {"scores": [1.0, 0.0], "lengths": [10, 30], "finish_reasons": ["stop", "length"], "timed_out": [False, False]},
        {"scores": [0.0, 0.0], "lengths": [20, 20], "finish_reasons": ["stop", "stop"], "timed_out": [True, False]},
    ]
    r = summarize(records, k=2)
    assert r["n"] == 2 and r["k"] == 2
    assert r["avg@k"] == pytest.approx(0.25, abs=1e-15)  # (0.5 + 0) / 2
    assert r["pass@k"] == pytest.approx(0.5, abs=1e-15)  # (1 + 0) / 2
    assert r["truncation_rate"] == pytest.approx(0.25, abs=1e-15)  # 1 of 4
    assert r["mean_length"] == pytest.approx(20.0, abs=1e-15)  # (10 + 30 + 20 + 20) / 4
    assert r["timeouts"] == 1
    lo, hi = r["ci95"]
    assert 0.0 <= lo <= r["avg@k"] <= hi <= 0.5


def test_macro_average() -> None:
    results = {
        "a": {"n": 2, "avg@k": 0.5, "pass@k": 1.0, "truncation_rate": 0.0, "mean_length": 10.0, "timeouts": 1},
        "b": {"n": 3, "avg@k": 0.0, "pass@k": 0.5, "truncation_rate": 1.0, "mean_length": 30.0, "timeouts": 2},
    }
    m = macro_average(results, {"a": [0.5, 0.5], "b": [0.0, 0.0, 0.0]})
    assert m == {"benchmarks": 2, "n": 5, "avg@k": 0.25, "pass@k": 0.75, "truncation_rate": 0.5,
                 "mean_length": 20.0, "timeouts": 3, "ci95": [0.25, 0.25]}  # constant groups: a point
    assert "ci95" not in macro_average(results)


def test_empty_inputs_raise() -> None:
    with pytest.raises(ValueError):
        summarize([], k=1)
    with pytest.raises(ValueError):
        avg_at_k([])
    with pytest.raises(ValueError):
        per_problem_accuracy([[]])
    with pytest.raises(ValueError):
        bootstrap_ci([])
