"""Pareto fronts and hypervolume for two objectives: maximise accuracy, minimise latency.

Pure numpy (and pandas at the DataFrame edge). Two objectives make every question a sort
and a sweep, so these are small exact functions rather than calls into Optuna's private
n-dimensional helpers (``optuna.study._multi_objective``, ``optuna._hypervolume``); the
tests check them on hand-computed cases and against Optuna's WFG hypervolume.

Conventions used throughout:

* a point ``p`` *dominates* ``q`` when ``acc_p >= acc_q`` and ``lat_p <= lat_q`` with at
  least one strict inequality;
* points that are equal on both axes are duplicates: the front keeps the *first* of them
  (in input order) and the other copies are reported as dominated, so a front never lists
  the same trade-off twice;
* a point with a NaN in either objective is never on the front (an unmeasured latency or a
  failed evaluation is not a trade-off).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = [
    "compare_fronts",
    "crowding_distance",
    "hypervolume",
    "non_dominated_rank",
    "normalized_hypervolume",
    "pareto_front",
    "pareto_mask",
]


def _as_pair(acc: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(acc, dtype=float).reshape(-1)
    t = np.asarray(lat, dtype=float).reshape(-1)
    if a.shape != t.shape:
        raise ValueError(f"acc and lat must have the same length, got {a.size} and {t.size}")
    return a, t


def pareto_mask(acc: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated points (maximise ``acc``, minimise ``lat``).

    Duplicates (equal on both axes) are kept once: the first occurrence is ``True``, the
    others ``False``. Points with a NaN objective are ``False``.
    """
    a, t = _as_pair(acc, lat)
    mask = np.zeros(a.size, dtype=bool)
    ok = np.flatnonzero(~(np.isnan(a) | np.isnan(t)))
    if ok.size == 0:
        return mask
    # Sweep by latency (ascending), best accuracy first within equal latency, input order
    # last so that the first of several duplicates is the one kept. A point is on the front
    # iff it is strictly more accurate than everything at least as fast seen before it.
    order = ok[np.lexsort((ok, -a[ok], t[ok]))]
    best = -np.inf
    for i in order:
        if a[i] > best:
            mask[i] = True
            best = a[i]
    return mask


def pareto_front(
    frame: pd.DataFrame, acc_col: str = "acc_dev", lat_col: str = "lat_ms"
) -> pd.DataFrame:
    """The non-dominated rows of ``frame``, sorted by latency (fastest first).

    The index of ``frame`` is kept, so rows can be traced back to the full table.
    """
    for col in (acc_col, lat_col):
        if col not in frame.columns:
            raise KeyError(f"column {col!r} not in the frame; columns are {list(frame.columns)}")
    mask = pareto_mask(frame[acc_col].to_numpy(dtype=float), frame[lat_col].to_numpy(dtype=float))
    return frame.loc[mask].sort_values(lat_col, kind="mergesort")


def hypervolume(acc: np.ndarray, lat: np.ndarray, ref_acc: float, ref_lat: float) -> float:
    """Area dominated by the points and bounded by the reference point ``(ref_acc, ref_lat)``.

    The reference point is the worst corner (lowest accuracy, highest latency) of the box
    that counts: a point contributes only the part of its dominated rectangle
    ``[ref_acc, acc] x [lat, ref_lat]`` that lies in the box, so a point less accurate than
    ``ref_acc`` or slower than ``ref_lat`` contributes nothing. Units are accuracy x latency
    units; an empty input gives 0.
    """
    a, t = _as_pair(acc, lat)
    inside = (a > ref_acc) & (t < ref_lat)  # NaNs compare False: excluded
    a, t = a[inside], t[inside]
    if a.size == 0:
        return 0.0
    m = pareto_mask(a, t)
    a, t = a[m], t[m]
    order = np.argsort(t, kind="mergesort")
    a, t = a[order], t[order]
    # Along the front accuracy rises with latency: each point owns the strip from its own
    # latency to the next (slower) front point's, at its accuracy height above ref_acc.
    widths = np.diff(np.append(t, ref_lat))
    return float(np.sum(widths * (a - ref_acc)))


def normalized_hypervolume(
    acc: np.ndarray,
    lat: np.ndarray,
    ref_acc: float,
    ref_lat: float,
    max_acc: float = 1.0,
) -> float:
    """Hypervolume as a fraction of the box ``[ref_acc, max_acc] x [0, ref_lat]``, in [0, 1].

    Latency is measured as a fraction of ``ref_lat`` (e.g. the largest sub-network's latency
    on that device), so fronts from devices with very different speeds compare on one scale.
    """
    if not ref_lat > 0:
        raise ValueError(f"ref_lat must be positive to normalise by it, got {ref_lat}")
    if not max_acc > ref_acc:
        raise ValueError(f"max_acc ({max_acc}) must exceed ref_acc ({ref_acc})")
    a, t = _as_pair(acc, lat)
    return hypervolume(a, t / ref_lat, ref_acc, 1.0) / (max_acc - ref_acc)


def non_dominated_rank(acc: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Non-domination rank of every point: 0 for the front, 1 for the front without it, ...

    Duplicates get the same rank (unlike ``pareto_mask``, which keeps one copy), because
    selection should not punish a point for having a twin. NaN points get the last rank.
    O(n^2) per front, fine for the few hundred points a search population holds.
    """
    a, t = _as_pair(acc, lat)
    n = a.size
    rank = np.full(n, -1, dtype=int)
    valid = ~(np.isnan(a) | np.isnan(t))
    # dom[i, j]: i dominates j.
    ge = (a[:, None] >= a[None, :]) & (t[:, None] <= t[None, :])
    gt = (a[:, None] > a[None, :]) | (t[:, None] < t[None, :])
    dom = ge & gt & valid[:, None] & valid[None, :]
    remaining = valid.copy()
    r = 0
    while remaining.any():
        dominated = (dom & remaining[:, None]).any(axis=0)
        layer = remaining & ~dominated
        rank[layer] = r
        remaining &= ~layer
        r += 1
    rank[~valid] = r
    return rank


def crowding_distance(acc: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance within one set of points (larger = more isolated).

    The two extremes of each objective get ``inf`` so that selection keeps the ends of the
    front; each objective's gaps are divided by its range so both axes weigh the same.
    """
    a, t = _as_pair(acc, lat)
    n = a.size
    dist = np.zeros(n)
    if n <= 2:
        dist[:] = np.inf
        return dist
    for values in (a, t):
        order = np.argsort(values, kind="mergesort")
        v = values[order]
        span = v[-1] - v[0]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (v[2:] - v[:-2]) / span
    return dist


def compare_fronts(
    fronts: Mapping[str, pd.DataFrame],
    *,
    acc_col: str = "acc_dev",
    lat_col: str = "lat_ms",
    ref_acc: float | None = None,
    ref_lat: float | None = None,
    lat_scale: Mapping[str, float] | str | None = None,
) -> pd.DataFrame:
    """One row per front: hypervolume under a common reference point, size and extremes.

    ``fronts`` maps a name (method, device, budget) to a table with ``acc_col`` and
    ``lat_col``; dominated rows are allowed and ignored. The reference point defaults to the
    worst accuracy and the worst latency over all fronts together (so the points that define
    it add no area); pass ``ref_acc`` / ``ref_lat`` to fix it across several comparisons.

    ``lat_scale`` gives each point a reference latency of its device (e.g. the full model's):
    a mapping from front name to one latency, or the name of a column that holds it per row
    (when it was timed along with the points). Every latency is divided by it before anything
    else, making fronts from different devices comparable, and ``ref_lat`` is read in those
    units: ``ref_lat=1.0`` then bounds the box at the reference latency itself.

    Columns: ``front``, ``n_points`` (non-dominated points), ``hypervolume``, ``best_acc``,
    ``fastest_lat`` (in the units used for the hypervolume), ``ref_acc``, ``ref_lat``.
    """
    columns = ["front", "n_points", "hypervolume", "best_acc", "fastest_lat", "ref_acc", "ref_lat"]
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, frame in fronts.items():
        for col in (acc_col, lat_col):
            if col not in frame.columns:
                raise KeyError(f"front {name!r} has no column {col!r}; columns are {list(frame.columns)}")
        a = frame[acc_col].to_numpy(dtype=float)
        t = frame[lat_col].to_numpy(dtype=float)
        if isinstance(lat_scale, str):
            if lat_scale not in frame.columns:
                raise KeyError(f"front {name!r} has no column {lat_scale!r} (lat_scale); columns are {list(frame.columns)}")
            t = t / frame[lat_scale].to_numpy(dtype=float)
        elif lat_scale is not None:
            if name not in lat_scale:
                raise KeyError(f"lat_scale has no entry for front {name!r}; it has {sorted(lat_scale)}")
            t = t / float(lat_scale[name])
        m = pareto_mask(a, t)
        pairs[name] = (a[m], t[m])
    if not pairs:
        return pd.DataFrame(columns=columns)
    all_a = np.concatenate([a for a, _ in pairs.values()])
    all_t = np.concatenate([t for _, t in pairs.values()])
    if ref_acc is None:
        ref_acc = float(np.min(all_a)) if all_a.size else 0.0
    if ref_lat is None:
        ref_lat = float(np.max(all_t)) if all_t.size else 0.0
    rows = []
    for name, (a, t) in pairs.items():
        rows.append({
            "front": name,
            "n_points": int(a.size),
            "hypervolume": hypervolume(a, t, ref_acc, ref_lat),
            "best_acc": float(a.max()) if a.size else float("nan"),
            "fastest_lat": float(t.min()) if t.size else float("nan"),
            "ref_acc": ref_acc,
            "ref_lat": ref_lat,
        })
    return pd.DataFrame(rows, columns=columns)
