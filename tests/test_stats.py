"""sgpo.evaluation.stats against closed forms, hand-computed values and scipy where it is
installed (it is not a dependency)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from sgpo.evaluation import stats


def test_betainc_closed_forms_and_symmetry():
    for x in (0.0, 0.1, 0.37, 0.5, 0.93, 1.0):
        assert stats.betainc(1, 1, x) == pytest.approx(x, abs=1e-12)  # uniform
        assert stats.betainc(2.5, 1, x) == pytest.approx(x ** 2.5, abs=1e-12)  # I_x(a, 1) = x^a
        assert stats.betainc(1, 3, x) == pytest.approx(1 - (1 - x) ** 3, abs=1e-12)
        assert stats.betainc(3.2, 0.5, x) == pytest.approx(1 - stats.betainc(0.5, 3.2, 1 - x), abs=1e-12)
    with pytest.raises(ValueError):
        stats.betainc(0, 1, 0.5)


def test_t_p_values_match_closed_forms():
    for t in (0.0, 0.3, 1.0, 2.5, 4.37, 12.0):
        # df = 1 is the Cauchy distribution, df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2))
        assert stats.t_two_sided_p(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, abs=1e-10)
        assert stats.t_two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-10)
    # many degrees of freedom: the normal's 1.959964 gives 0.05
    assert stats.t_two_sided_p(1.959964, 1e7) == pytest.approx(0.05, abs=1e-5)
    assert stats.t_two_sided_p(2.262157, 9) == pytest.approx(0.05, abs=1e-5)  # t table, df 9


def test_paired_t_on_the_issue_numbers():
    # evidence.md seeds 0-2, held-out: SGPO - GRPO, said to give t = 4.37, p ~ 0.049
    sgpo, grpo = [60.2, 50.4, 77.0], [23.0, 23.8, 18.8]
    r = stats.paired_t_test(sgpo, grpo)
    d = [a - b for a, b in zip(sgpo, grpo)]
    assert r["mean_diff"] == pytest.approx(statistics.fmean(d))
    assert r["t"] == pytest.approx(statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(3)))
    assert r["t"] == pytest.approx(4.37, abs=0.01) and r["p"] == pytest.approx(0.049, abs=0.001)
    assert stats.paired_t_test([1, 2], [1, 2])["p"] == 1.0
    assert stats.paired_t_test([2, 3], [1, 2])["p"] == 0.0
    with pytest.raises(ValueError):
        stats.paired_t_test([1.0], [2.0])


def test_against_scipy_where_installed():
    sp = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.5, 0.1, 10), rng.normal(0.45, 0.1, 10)
    assert stats.paired_t_test(a, b)["p"] == pytest.approx(sp.ttest_rel(a, b).pvalue, rel=1e-9)


def test_sign_flip_by_enumeration_by_hand():
    assert stats.sign_flip_p([1, 2, 3]) == pytest.approx(2 / 8)  # only all + and all - reach |6|
    # +-1 +-2 +-3 sums: 6, 0, 2, -4, 4, -2, 0, -6; |sum| >= 2 in 6 of 8
    assert stats.sign_flip_p([1, -2, 3]) == pytest.approx(6 / 8)
    assert stats.sign_flip_p([0.1] * 10) == pytest.approx(2 / 1024)
    many = stats.sign_flip_p([0.1] * 20, num_resamples=4000)  # Monte Carlo: 2 / 2^20, so about 0
    assert many < 0.01


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> monotone: 0.03, 0.06, 0.06
    adj = stats.holm({"a": 0.04, "b": 0.01, "c": 0.03})
    assert adj == pytest.approx({"a": 0.06, "b": 0.03, "c": 0.06})
    assert stats.holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}
    assert stats.holm({"only": 0.02}) == {"only": 0.02}


def test_hierarchical_bootstrap_reduces_to_the_plain_one():
    # one seed, one cluster: the ordinary bootstrap of a mean (sd ~ population sd / sqrt(n))
    values = np.random.default_rng(1).random(50)
    draws = stats.hierarchical_bootstrap([{"k": values}], num_resamples=4000)
    assert draws.mean() == pytest.approx(values.mean(), abs=0.005)
    assert draws.std() == pytest.approx(values.std() / math.sqrt(50), rel=0.08)
    const = stats.hierarchical_bootstrap([{"a": [0.5, 0.5], "b": [0.5]}] * 3, num_resamples=100)
    assert np.allclose(const, 0.5)


def test_hierarchical_bootstrap_sees_seed_and_cluster_variation():
    # within each seed every problem agrees, seeds differ: the interval is the seeds' spread
    seeds = [{"a": [m] * 20, "b": [m] * 20} for m in (0.1, 0.5, 0.9)]
    lo, hi = stats.hierarchical_ci(seeds, num_resamples=4000)
    assert lo < 0.3 and hi > 0.7 and stats.point_estimate(seeds) == pytest.approx(0.5)
    # clusters that differ widen the interval past what pooling the problems gives
    clustered = [{"a": [0.0] * 30, "b": [1.0] * 30}]
    pooled_sd = 0.5 / math.sqrt(60)
    assert stats.hierarchical_bootstrap(clustered, num_resamples=4000).std() > 3 * pooled_sd
    with pytest.raises(ValueError):
        stats.hierarchical_bootstrap([{"a": []}])


def test_curve_summary_by_hand():
    # x 0, 10, 20; y 0.0, 0.4, 0.6: area = 10 * 0.2 + 10 * 0.5 = 7, / 20 = 0.35
    s = stats.curve_summary([0, 10, 20], [0.0, 0.4, 0.6], thresholds=(0.3, 0.5, 0.9, 0.0))
    assert s["auc"] == pytest.approx(0.35) and s["final"] == 0.6 and s["best"] == 0.6
    assert s["reach"] == {"0.3": pytest.approx(7.5), "0.5": pytest.approx(15.0), "0.9": None, "0": 0.0}
    with pytest.raises(ValueError):
        stats.curve_summary([0, 0], [0.1, 0.2])


def test_tuning_rule_by_hand():
    curves = {
        1e-4: [[(20, 0.1), (40, 0.3), (60, 0.50)], [(20, 0.1), (40, 0.3), (60, 0.40)]],  # mean max 0.45 at 60
        3e-4: [[(20, 0.3), (40, 0.59), (60, 0.60)], [(20, 0.3), (40, 0.59), (60, 0.60)]],  # 0.60, flat from 40
        1e-3: [[(20, 0.6), (40, 0.1), (60, 0.0)], [(20, 0.5), (40, 0.1), (60, 0.0)]],  # 0.55 at 20, collapses
    }
    r = stats.tuning_choice(curves, tolerance=0.02)
    assert r["lr"] == 3e-4 and r["steps"] == 40 and r["best"] == pytest.approx(0.60)
    assert r["per_lr"]["0.001"]["steps"] == 20
    tie = stats.tuning_choice({1e-3: [[(10, 0.5)]], 1e-4: [[(10, 0.5)]]})
    assert tie["lr"] == 1e-4  # ties go to the smaller rate
    with pytest.raises(ValueError, match="different steps"):
        stats.tuning_choice({1e-4: [[(10, 0.5)], [(20, 0.5)]]})
