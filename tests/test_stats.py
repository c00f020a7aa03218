"""Paired statistics for accuracy differences, on hand-checked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nas.stats import (
    compare_with,
    macro_f1_rows,
    mcnemar,
    paired_bootstrap,
    paired_bootstrap_metric,
)


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


def test_macro_f1_rows_by_hand_and_against_sklearn() -> None:
    from sklearn.metrics import f1_score

    labels = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    # class 0: tp 1, fp 1, fn 1 -> 2/4; class 1: tp 2, fp 1, fn 0 -> 4/5; class 2: tp 0, fn 1 -> 0
    assert macro_f1_rows(pred, labels, np.arange(5))[0] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # a resample without class 2 in its labels averages over classes 0 and 1 only (as sklearn
    # does with labels=np.unique of the resample's labels); the prediction 0 for it is a fp of 0
    rows = np.array([[0, 1, 2, 3, 4], [0, 0, 2, 3, 3], [4, 4, 4, 1, 2]])
    for row, got in zip(rows, macro_f1_rows(pred, labels, rows), strict=True):
        y, p = labels[row], pred[row]
        assert got == pytest.approx(f1_score(y, p, average="macro", labels=np.unique(y)))
    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 8, 300), rng.integers(0, 8, 300)
    idx = rng.integers(0, 300, (20, 300))
    want = [f1_score(y[r], p[r], average="macro", labels=np.unique(y[r])) for r in idx]
    assert macro_f1_rows(p, y, idx) == pytest.approx(want)


def test_paired_bootstrap_of_macro_f1() -> None:
    labels = np.array([0, 0, 1, 1, 2] * 40)
    a = np.array([0, 1, 1, 1, 0] * 40)
    assert paired_bootstrap_metric(a, a, labels, "macro_f1") == (0.0, 0.0, 0.0)
    b = labels.copy()  # perfect: macro F1 1.0 against a's 13/30
    diff, lo, hi = paired_bootstrap_metric(a, b, labels, "macro_f1", n_resamples=2000, chunk=300)
    assert diff == pytest.approx(13 / 30 - 1.0) and lo <= diff <= hi and hi - lo < 0.1
    assert paired_bootstrap_metric(a, b, labels, "macro_f1", n_resamples=2000) == pytest.approx((diff, lo, hi))
    # accuracy goes through the per-example bootstrap
    assert paired_bootstrap_metric(a, b, labels) == paired_bootstrap(a == labels, b == labels)
    got = compare_with(b, np.eye(3)[a], labels, metric="macro_f1")
    assert got["diff_points"] == pytest.approx(100 * diff) and "mcnemar_p" not in got and got["n"] == 200
    with pytest.raises(ValueError, match="macro_f1"):
        paired_bootstrap_metric(a, b, labels, "f2")


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


def test_close_pair_agreement_by_hand() -> None:
    from nas.stats import close_pair_agreement

    # Items 0-2 lie within 1 point on dev, item 3 far below; test orders them 1 > 0 > 2 > 3.
    dev = [0.820, 0.818, 0.815, 0.700]
    test = [0.81, 0.82, 0.80, 0.70]
    loss = [0.54, 0.53, 0.60, 0.90]  # lower is better: scored as its negative
    got = close_pair_agreement(test, {"dev": dev, "loss": [-x for x in loss]}, close=dev, within=0.01)
    # The close pairs: (0, 1), (0, 2), (1, 2). Dev orders (0, 1) against test, the others alike;
    # the loss orders all three alike.
    assert got == {"pairs": 3.0, "dev": 2 / 3, "loss": 1.0}
    # A tie in a scoring counts half; a tie in the truth leaves the pair out.
    tied = close_pair_agreement([1.0, 2.0, 2.0], {"s": [5.0, 5.0, 6.0]}, close=[0, 0, 0], within=1)
    assert tied == {"pairs": 2.0, "s": 0.75}
    assert math.isnan(close_pair_agreement([1, 2], {"s": [1, 2]}, close=[0, 5], within=1)["s"])
    with pytest.raises(ValueError, match="scoring 's' has"):
        close_pair_agreement([1, 2], {"s": [1, 2, 3]}, close=[0, 0], within=1)
