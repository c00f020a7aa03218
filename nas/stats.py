"""Statistics for accuracy differences on one test set: paired, because both models answer
the same examples.

A test split of about 1,280 sentences gives one accuracy a 95% interval of about +-2.2
points, wider than a 1-point goal; the *difference* between two models on the same
sentences is far tighter, since most sentences are answered alike. Two views of it:

* ``paired_bootstrap``: resample the examples (the same indices for both models) and take
  the percentile interval of the accuracy difference;
* ``mcnemar``: the exact McNemar test on the discordant pairs (one model right, the other
  wrong): the p-value of "both models are equally accurate".

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


def compare_with(reference: Any, other: Any, labels: Any, *, seed: int = 0) -> dict[str, float]:
    """How ``other``'s predictions (class ids, or logits) compare with ``reference``'s on
    ``labels``: accuracy difference in points, its paired-bootstrap 95% interval, the McNemar
    p-value, the share of examples where the two predict the same class, and ``n``."""
    y = np.asarray(labels)
    pa, pb = (np.asarray(p).argmax(1) if np.asarray(p).ndim == 2 else np.asarray(p) for p in (other, reference))
    diff, lo, hi = paired_bootstrap(pa == y, pb == y, seed=seed)
    return {"diff_points": 100 * diff, "ci95_low": 100 * lo, "ci95_high": 100 * hi,
            "mcnemar_p": mcnemar(pa == y, pb == y), "agreement": float((pa == pb).mean()), "n": int(y.size)}


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


def spread(values: Any) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of a figure measured over seeds."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"need a non-empty 1-d array, got shape {v.shape}")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}
