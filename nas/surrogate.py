"""A cheap accuracy surrogate that screens an evolution's children before they are evaluated.

An evaluation is a dev-set pass of the supernet (about a second on 2 cores); a child is
drawn in microseconds. So a generation can draw several feasible children per slot and
evaluate only those a ridge regression, fitted to every configuration evaluated so far,
expects to help most (OFA and HAT screen with a learned accuracy predictor the same way;
here it is refitted each generation from the search's own evaluations, so nothing is
trained beforehand). Pure numpy.

Features per layer: kept, heads and FFN neurons as fractions of the largest (0 when
skipped), and the share of tokens the layer sees (the retention applied so far); plus one
indicator per precision other than fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from supernet.space import PRECISIONS, SearchSpace, SubnetConfig

__all__ = ["RidgeSurrogate", "config_features", "front_gain"]


def config_features(cfg: SubnetConfig, space: SearchSpace) -> np.ndarray:
    """One row of features for ``cfg`` (module doc); its length depends only on the space."""
    drops = cfg.drops
    tokens = 1.0
    row: list[float] = []
    for i in range(cfg.num_layers):
        kept = cfg.keep[i]
        row += [float(kept), kept * cfg.heads[i] / space.max_heads, kept * cfg.ffn[i] / space.max_ffn, tokens]
        tokens = drops.get(i, tokens)
    row += [float(cfg.precision == p) for p in PRECISIONS[1:]]
    return np.asarray(row, dtype=float)


@dataclass
class RidgeSurrogate:
    """Ridge regression on standardized features (``alpha``: the penalty on them)."""

    alpha: float = 1.0
    mean_: np.ndarray | None = None
    scale_: np.ndarray | None = None
    coef_: np.ndarray | None = None
    intercept_: float = 0.0

    def fit(self, x: np.ndarray, y: Sequence[float]) -> RidgeSurrogate:
        x = np.asarray(x, dtype=float)
        target = np.asarray(y, dtype=float)
        if x.ndim != 2 or len(x) != len(target) or len(x) < 2:
            raise ValueError(f"need at least 2 rows of features and one target per row, got {x.shape} and {target.shape}")
        self.mean_ = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)  # a constant feature stays 0 after centring
        z = (x - self.mean_) / self.scale_
        self.intercept_ = float(target.mean())
        gram = z.T @ z + self.alpha * np.eye(z.shape[1])
        self.coef_ = np.linalg.solve(gram, z.T @ (target - self.intercept_))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.coef_ is None or self.mean_ is None or self.scale_ is None:
            raise RuntimeError("RidgeSurrogate.predict before fit")
        z = (np.asarray(x, dtype=float) - self.mean_) / self.scale_
        return np.asarray(z @ self.coef_ + self.intercept_)


def front_gain(pred_acc: np.ndarray, pred_lat: np.ndarray, known_acc: np.ndarray, known_lat: np.ndarray) -> np.ndarray:
    """How far each proposal's predicted accuracy lies above the best already evaluated at
    its latency or faster (the front's level there); below the fastest evaluated point, above
    the worst evaluated accuracy."""
    known_acc = np.asarray(known_acc, dtype=float)
    known_lat = np.asarray(known_lat, dtype=float)
    order = np.argsort(known_lat, kind="stable")
    lat_sorted = known_lat[order]
    best_so_far = np.maximum.accumulate(known_acc[order])
    idx = np.searchsorted(lat_sorted, np.asarray(pred_lat, dtype=float), side="right") - 1
    level = np.where(idx >= 0, best_so_far[np.clip(idx, 0, None)], known_acc.min())
    return np.asarray(pred_acc, dtype=float) - level
