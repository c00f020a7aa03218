"""Statistics for accuracy differences on one test set: paired, because both models answer
the same examples.

A test split of about 1,280 sentences gives one accuracy a 95% interval of about +-2.2
points, wider than a 1-point goal; the *difference* between two models on the same
sentences is far tighter, since most sentences are answered alike. Two views of it:

* ``paired_bootstrap``: resample the examples (the same indices for both models) and take
  the percentile interval of the accuracy difference;
* ``mcnemar``: the exact McNemar test on the discordant pairs (one model right, the other
  wrong): the p-value of "both models are equally accurate".

Macro F1 (the headline metric of the long-text tasks) is not a mean over examples, so its
paired bootstrap (``paired_bootstrap_metric``) recomputes the score of both models on each
resample; McNemar, a test of accuracy, has no macro-F1 form and is given for accuracy only.

And one for rankings: ``kendall_tau`` (tau-b) says how well one score orders sub-networks the
way another does (the supernet's weights as a proxy for fine-tuned accuracy, issue 15), and
``spread`` summarizes a figure over seeds (mean, standard deviation, min, max).

Pure numpy, seeded.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"need two equally long, non-empty 1-d arrays of per-example correctness, got {x.shape} "
                         f"and {y.shape}")
    return x, y


def paired_bootstrap(correct_a: Any, correct_b: Any, *, n_resamples: int = 10_000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """(difference, low, high): accuracy of ``a`` minus accuracy of ``b`` on the same examples,
    and its ``level`` percentile interval over ``n_resamples`` paired resamples."""
    x, y = _pair(correct_a, correct_b)
    d = x.astype(np.int8) - y.astype(np.int8)  # +1, 0 or -1 per example
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_resamples, d.size))
    means = d[idx].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(d.mean()), float(lo), float(hi)


def mcnemar(correct_a: Any, correct_b: Any) -> float:
    """Exact two-sided McNemar p-value: under "equally accurate", the examples only one model
    gets right split evenly between the two (a binomial with p = 1/2)."""
    x, y = _pair(correct_a, correct_b)
    only_a, only_b = int((x & ~y).sum()), int((~x & y).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def macro_f1_rows(pred: Any, labels: Any, idx: np.ndarray) -> np.ndarray:
    """Macro F1 of class ids ``pred`` against ``labels`` on each row of example indices
    ``idx`` (R, n): the mean over the classes present in that row's labels of
    2 tp / (2 tp + fp + fn), as ``sklearn.metrics.f1_score(..., average="macro",
    labels=np.unique(row_labels))`` gives it. (R,)."""
    p, y = np.asarray(pred, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if p.shape != y.shape or p.ndim != 1 or (p < 0).any() or (y < 0).any():
        raise ValueError(f"need two equally long 1-d arrays of class ids >= 0, got {p.shape} and {y.shape}")
    idx = np.atleast_2d(idx)
    rows, c = idx.shape[0], int(max(p.max(), y.max())) + 1
    offset = (np.arange(rows) * c)[:, None]
    yi, pi = y[idx], p[idx]
    tp = np.bincount((offset + yi).ravel(), weights=(yi == pi).ravel(), minlength=rows * c).reshape(rows, c)
    support = np.bincount((offset + yi).ravel(), minlength=rows * c).reshape(rows, c)
    predicted = np.bincount((offset + pi).ravel(), minlength=rows * c).reshape(rows, c)
    present = support > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros((rows, c)), where=present)
    return (f1 * present).sum(1) / present.sum(1)


def paired_bootstrap_metric(pred_a: Any, pred_b: Any, labels: Any, metric: str = "accuracy", *,
                            n_resamples: int = 10_000, level: float = 0.95, seed: int = 0,
                            chunk: int = 500) -> tuple[float, float, float]:
    """(difference, low, high) of ``metric`` ("accuracy" or "macro_f1"): ``a``'s score minus
    ``b``'s on the same examples (class ids), and its ``level`` percentile interval over
    ``n_resamples`` paired resamples (both scored on the same indices; ``chunk`` resamples at
    a time). For accuracy it is ``paired_bootstrap`` on the per-example correctness."""
    a, b, y = (np.asarray(v) for v in (pred_a, pred_b, labels))
    if metric == "accuracy":
        return paired_bootstrap(a == y, b == y, n_resamples=n_resamples, level=level, seed=seed)
    if metric != "macro_f1":
        raise ValueError(f"metric must be 'accuracy' or 'macro_f1', got {metric!r}")
    if not (a.shape == b.shape == y.shape) or y.ndim != 1 or y.size == 0:
        raise ValueError(f"need three equally long, non-empty 1-d arrays, got {a.shape}, {b.shape} and {y.shape}")
    whole = np.arange(y.size)[None]
    diff = float(macro_f1_rows(a, y, whole)[0] - macro_f1_rows(b, y, whole)[0])
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, y.size, size=(min(chunk, n_resamples - start), y.size))
        diffs.append(macro_f1_rows(a, y, idx) - macro_f1_rows(b, y, idx))
    tail = (1 - level) / 2
    lo, hi = np.quantile(np.concatenate(diffs), [tail, 1 - tail])
    return diff, float(lo), float(hi)


def compare_with(reference: Any, other: Any, labels: Any, *, metric: str = "accuracy",
                 seed: int = 0) -> dict[str, Any]:
    """How ``other``'s predictions (class ids, or logits) compare with ``reference``'s on
    ``labels``: the ``metric`` difference in points (other minus reference), its
    paired-bootstrap 95% interval, the McNemar p-value (accuracy only), the share of examples
    where the two predict the same class, and ``n``."""
    y = np.asarray(labels)
    pa, pb = (np.asarray(p).argmax(1) if np.asarray(p).ndim == 2 else np.asarray(p) for p in (other, reference))
    diff, lo, hi = paired_bootstrap_metric(pa, pb, y, metric, seed=seed)
    out: dict[str, Any] = {"metric": metric, "diff_points": 100 * diff, "ci95_low": 100 * lo, "ci95_high": 100 * hi}
    if metric == "accuracy":
        out["mcnemar_p"] = mcnemar(pa == y, pb == y)
    return out | {"agreement": float((pa == pb).mean()), "n": int(y.size)}


def kendall_tau(x: Any, y: Any) -> float:
    """Kendall's tau-b between two scorings of the same items: +1 when they order every pair
    alike, -1 when they order every pair oppositely; ties (in either scoring) count as
    neither and shrink the denominator (tau-b). NaN when either scoring is constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"need two equally long 1-d arrays of at least 2 scores, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("kendall_tau: scores must be finite")
    i, j = np.triu_indices(a.size, k=1)  # every pair once
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n_a, n_b = np.count_nonzero(da), np.count_nonzero(db)  # pairs not tied in a, in b
    if n_a == 0 or n_b == 0:
        return float("nan")
    return float((da * db).sum() / math.sqrt(n_a * n_b))


def close_pair_agreement(truth: Any, scorings: dict[str, Any], close: Any, within: float) -> dict[str, float]:
    """How often each scoring orders a near-tie as ``truth`` does: over the pairs of items whose
    ``close`` values differ by at most ``within`` and whose ``truth`` values differ, the share
    each of ``scorings`` orders the same way (higher is better for all; a tie in a scoring counts
    half). ``pairs``: how many such pairs; the shares are NaN without any. What choosing between
    candidates of nearly the same dev score by one scoring or another would get right."""
    t, c = np.asarray(truth, dtype=float), np.asarray(close, dtype=float)
    i, j = np.triu_indices(t.size, k=1)
    keep = (np.abs(c[i] - c[j]) <= within) & (t[i] != t[j])
    i, j = i[keep], j[keep]
    out = {"pairs": float(i.size)}
    for name, values in scorings.items():
        v = np.asarray(values, dtype=float)
        if v.shape != t.shape:
            raise ValueError(f"scoring {name!r} has {v.shape} values for {t.shape} items")
        alike = np.sign(v[i] - v[j]) * np.sign(t[i] - t[j])  # 1 alike, -1 opposite, 0 tied
        out[name] = float(((alike > 0) + 0.5 * (alike == 0)).mean()) if i.size else float("nan")
    return out


def spread(values: Any) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of a figure measured over seeds."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"need a non-empty 1-d array, got shape {v.shape}")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}
