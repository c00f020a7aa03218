"""A fitted gradient-boosted tree ensemble as plain arrays, with a pure-numpy evaluator.

``LearnedPredictor`` fits scikit-learn's ``HistGradientBoostingRegressor`` and then keeps only
what prediction needs: per tree, its nodes as parallel arrays, in the order scikit-learn lays
them out (pre-order: a node's children come after it):

* ``feature``: the feature index a node splits on, ``-1`` for a leaf;
* ``threshold``: a row goes left when ``x[feature] <= threshold``;
* ``missing_left``: where a NaN goes (1: left, 0: right);
* ``left`` / ``right``: child node indices within the tree, ``-1`` for a leaf;
* ``value``: the leaf's output (scikit-learn folds the learning rate into it).

plus the ensemble's ``baseline`` (the constant its first tree starts from). A prediction is
``baseline + sum of the trees' leaf values`` (squared-error loss: an identity link), summed in
tree order, as scikit-learn does, so that the result is the same to the last bit.

Nothing here runs code on load: arrays come from a safetensors file, and ``check`` bounds
every value (lengths, indices, finiteness) before a prediction can walk the trees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from latency.features import PredictorError

__all__ = ["TreeEnsemble"]

# Field -> dtype of the per-node arrays (all trees of an ensemble concatenated).
NODE_FIELDS: dict[str, type[np.generic]] = {
    "feature": np.int32,
    "threshold": np.float64,
    "missing_left": np.uint8,
    "left": np.int32,
    "right": np.int32,
    "value": np.float64,
}


@dataclass(frozen=True, eq=False)
class TreeEnsemble:
    """One boosted ensemble: ``baseline`` and, for all its trees together, the node arrays of
    ``NODE_FIELDS``; ``tree_nodes[t]`` is how many nodes tree ``t`` has (trees are stored one
    after another, child indices are local to their tree)."""

    baseline: float
    tree_nodes: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray

    # ---- from scikit-learn ---------------------------------------------------------------
    @classmethod
    def from_sklearn(cls, model: Any) -> TreeEnsemble:
        """The arrays of a fitted ``HistGradientBoostingRegressor`` (squared error, numeric
        features only: what ``LearnedPredictor`` fits)."""
        # These hold for every model LearnedPredictor fits; anything else is a programming error.
        assert model.loss == "squared_error" and model.n_trees_per_iteration_ == 1
        baseline = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
        assert baseline.size == 1
        parts: dict[str, list[np.ndarray]] = {f: [] for f in NODE_FIELDS}
        sizes = []
        for (tree,) in model._predictors:
            nodes = tree.nodes
            assert not nodes["is_categorical"].any()
            leaf = nodes["is_leaf"].astype(bool)
            parts["feature"].append(np.where(leaf, -1, nodes["feature_idx"]))
            parts["threshold"].append(nodes["num_threshold"])
            parts["missing_left"].append(nodes["missing_go_to_left"])
            parts["left"].append(np.where(leaf, -1, nodes["left"].astype(np.int64)))
            parts["right"].append(np.where(leaf, -1, nodes["right"].astype(np.int64)))
            parts["value"].append(nodes["value"])
            sizes.append(len(nodes))
        arrays = {f: np.concatenate(p).astype(NODE_FIELDS[f]) for f, p in parts.items()}
        ens = cls(baseline=float(baseline[0]), tree_nodes=np.asarray(sizes, dtype=np.int32), **arrays)
        ens.check(model.n_features_in_)  # what a load will demand holds from the start
        return ens

    # ---- plain arrays in and out ---------------------------------------------------------
    @staticmethod
    def array_names(prefix: str) -> list[str]:
        """The names ``to_arrays(prefix)`` writes."""
        return [prefix + f for f in ("baseline", "tree_nodes", *NODE_FIELDS)]

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Named arrays (``prefix`` + field) for a tensor file."""
        out = {f"{prefix}baseline": np.array([self.baseline], dtype=np.float64),
               f"{prefix}tree_nodes": self.tree_nodes}
        out.update({f"{prefix}{f}": getattr(self, f) for f in NODE_FIELDS})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, n_features: int) -> TreeEnsemble:
        """The inverse of ``to_arrays``, checked (see ``check``): a ``PredictorError`` names
        the first bad array."""
        def get(name: str, dtype: type[np.generic]) -> np.ndarray:
            key = prefix + name
            if key not in arrays:
                raise PredictorError(f"tree array {key!r} is missing")
            a = arrays[key]
            if a.ndim != 1 or a.dtype != np.dtype(dtype):
                raise PredictorError(f"tree array {key!r} must be 1-d {np.dtype(dtype)}, got "
                                     f"{a.ndim}-d {a.dtype}")
            return a

        baseline = get("baseline", np.float64)
        if baseline.size != 1:
            raise PredictorError(f"tree array {prefix + 'baseline'!r} must hold one value, got {baseline.size}")
        ens = cls(baseline=float(baseline[0]), tree_nodes=get("tree_nodes", np.int32),
                  **{f: get(f, d) for f, d in NODE_FIELDS.items()})
        ens.check(n_features, prefix.rstrip("."))
        return ens

    def check(self, n_features: int, name: str = "") -> None:
        """Bound every value, so that a prediction walks only finite trees and reads only
        existing features: the baseline and all leaf values finite; all node arrays as long
        as ``tree_nodes`` adds up to; every tree non-empty; a leaf is ``feature == -1`` with
        both children ``-1``; a split node has a feature in ``[0, n_features)``, a
        threshold that is not NaN, and both children inside its tree and *after* it (so
        every walk ends at a leaf within the tree's size)."""
        where = f"tree ensemble {name!r}" if name else "tree ensemble"

        def bad(what: str) -> PredictorError:
            return PredictorError(f"{where}: {what}")

        if not np.isfinite(self.baseline):
            raise bad(f"baseline is {self.baseline}, not a finite number")
        sizes = self.tree_nodes.astype(np.int64)
        if sizes.size == 0 or (sizes < 1).any():
            raise bad("every tree needs at least one node, and there must be at least one tree")
        total = int(sizes.sum())
        for f in NODE_FIELDS:
            if len(getattr(self, f)) != total:
                raise bad(f"{f} has {len(getattr(self, f))} entries, the trees have {total} nodes")
        tree_of = np.repeat(np.arange(sizes.size), sizes)
        local = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        size = sizes[tree_of]
        leaf = self.feature == -1
        split = ~leaf
        if (self.feature < -1).any() or (self.feature >= n_features).any():
            raise bad(f"a feature index is outside [0, {n_features}) (the predictor's features)")
        if (leaf & ((self.left != -1) | (self.right != -1))).any():
            raise bad("a leaf (feature -1) has children")
        for side, child in (("left", self.left), ("right", self.right)):
            c = child.astype(np.int64)
            if (split & ((c <= local) | (c >= size))).any():
                i = int(np.flatnonzero(split & ((c <= local) | (c >= size)))[0])
                raise bad(f"node {int(local[i])} of tree {int(tree_of[i])} has {side} child "
                          f"{int(c[i])}; a child must come after its parent, inside the tree "
                          f"({int(local[i])} < child < {int(size[i])})")
        if np.isnan(self.threshold[split]).any():
            raise bad("a split threshold is NaN")
        if not np.isfinite(self.value[leaf]).all():
            raise bad("a leaf value is not a finite number")
        if (self.missing_left > 1).any():
            raise bad("missing_left must be 0 or 1")

    # ---- prediction ----------------------------------------------------------------------
    def predict(self, X: np.ndarray) -> np.ndarray:
        """``baseline`` + the sum of every tree's leaf value, per row of ``X`` (float64,
        ``(rows, features)``); NaN features follow ``missing_left``."""
        X = np.asarray(X, dtype=np.float64)
        starts = np.cumsum(self.tree_nodes.astype(np.int64)) - self.tree_nodes
        # Global child indices: a leaf keeps its own index, so a finished walk stays put.
        own = np.arange(len(self.feature))
        offset = np.repeat(starts, self.tree_nodes)
        leaf = self.feature == -1
        left = np.where(leaf, own, self.left + offset)
        right = np.where(leaf, own, self.right + offset)
        feature = np.maximum(self.feature, 0)
        missing_left = self.missing_left.astype(bool)

        node = np.repeat(starts[:, None], len(X), axis=1)  # (trees, rows): where each walk is
        rows = np.arange(len(X))[None, :]
        # Children come after their parent, so no walk is longer than its tree.
        for _ in range(int(self.tree_nodes.max())):
            if leaf[node].all():
                break
            x = X[rows, feature[node]]
            go_left = np.where(np.isnan(x), missing_left[node], x <= self.threshold[node])
            node = np.where(go_left, left[node], right[node])
        values = self.value[node]  # (trees, rows)
        out = np.full(len(X), self.baseline)
        for v in values:  # tree by tree, as scikit-learn adds them: the same rounding
            out += v
        return out
