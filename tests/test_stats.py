"""Paired statistics for accuracy differences, on hand-checked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nas.stats import compare_with, mcnemar, paired_bootstrap


def test_mcnemar_exact_p_values_by_hand() -> None:
    right, wrong = [True] * 6, [False] * 6
    assert mcnemar(right, right) == 1.0  # no discordant pair: no evidence either way
    # 4 examples only a gets right, none the other way: 2 * (1/2)^4
    assert mcnemar([True] * 4 + right, [False] * 4 + right) == pytest.approx(0.125)
    # 5 only b, 0 only a, with concordant ones around: 2 * (1/2)^5
    assert mcnemar([False] * 5 + wrong, [True] * 5 + wrong) == pytest.approx(0.0625)
    # 2 only a, 8 only b: 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024
    a = [True] * 2 + [False] * 8
    assert mcnemar(a, [not x for x in a]) == pytest.approx(112 / 1024)


def test_paired_bootstrap_interval() -> None:
    same = np.array([True, False, True, True])
    assert paired_bootstrap(same, same) == (0.0, 0.0, 0.0)
    assert paired_bootstrap([True] * 4, [False] * 4) == (1.0, 1.0, 1.0)
    # 30 of 100 examples only a gets right: difference 0.3, normal-approximation interval
    # 0.3 +- 1.96 * sqrt(0.3 * 0.7 / 100) = 0.21 .. 0.39
    a = np.array([True] * 30 + [True] * 20 + [False] * 50)
    b = np.array([False] * 30 + [True] * 20 + [False] * 50)
    diff, lo, hi = paired_bootstrap(a, b, seed=1)
    assert diff == pytest.approx(0.3) and 0.19 < lo < 0.23 and 0.37 < hi < 0.41
    assert paired_bootstrap(a, b, seed=1) == (diff, lo, hi)  # seeded
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([True], [True, False])


def test_compare_with_takes_logits_or_class_ids() -> None:
    labels = np.array([0, 1, 1, 0, 1])
    teacher = np.array([0, 1, 1, 0, 0])  # 4 of 5 right
    logits = np.eye(2)[[0, 1, 0, 0, 0]]  # 3 of 5 right, as logits
    got = compare_with(teacher, logits, labels)
    assert got["diff_points"] == pytest.approx(-20.0) and got["n"] == 5
    assert got["ci95_low"] <= -20.0 <= got["ci95_high"] and got["agreement"] == pytest.approx(0.8)
    assert got["mcnemar_p"] == pytest.approx(1.0)  # one discordant pair


def test_kendall_tau_by_hand_and_against_scipy() -> None:
    from nas.stats import kendall_tau

    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # 4 items, 6 pairs: (1,2),(1,3),(1,4),(2,3),(2,4),(3,4); y swaps the last two -> 5 agree, 1 disagrees
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx((5 - 1) / 6)
    # a tie in x: pair (1,2) counts for neither; tau-b = (4 - 1) / sqrt(5 * 6)
    assert kendall_tau([1, 1, 3, 4], [1, 2, 4, 3]) == pytest.approx(3 / math.sqrt(30))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 6, 30), rng.normal(size=30)
        assert kendall_tau(x, y) == pytest.approx(scipy_stats.kendalltau(x, y).statistic)
    with pytest.raises(ValueError, match="equally long"):
        kendall_tau([1, 2], [1, 2, 3])


def test_spread_over_seeds() -> None:
    from nas.stats import spread

    s = spread([0.5, 0.7, 0.6])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1)
    assert (s["min"], s["max"], s["n"]) == (0.5, 0.7, 3)
    assert spread([0.4])["std"] == 0.0
