"""Per-device latency predictors: fit, predict with an error bar, evaluate, save, load.

Measurements arrive as flat rows (one per measured sub-network and input shape, see
``latency/measure.py``); ``fit_device`` turns one device's rows into a predictor:

1. keep the device's successful ``kind == "sample"`` rows, one per configuration and input
   shape (the median of its timings where ``hwnas measure --passes`` timed it several times);
2. hold out a seeded share of the *configurations* (a configuration measured at several
   input shapes is never on both sides, so the held-out score is a score on unseen networks);
3. fit every registered predictor on the rest, score it on the held-out part, pick the best by
   mean relative error, refit the winner on all rows.

Every prediction comes with ``std_ms`` (spread) and ``upper_ms``, a bound meant to cover about
95% of real measurements: the search compares ``upper_ms``, not ``pred_ms``, with a budget, so
that a predictor's optimism does not turn into a missed budget on the device. The bound is a
relative margin calibrated on residuals of models that did not see the row (cross-validation
for the linear model, out-of-bag rows for the tree ensemble), with the finite-sample conformal
quantile, so its coverage holds on new configurations drawn like the measured ones.

Persistence holds plain data only, so loading a predictor from someone else's run folder runs
no code. The JSON file holds the settings, the calibrated margin and, for the linear model, its
coefficients. A tree ensemble's nodes are arrays in ``<stem>.trees.safetensors`` next to it
(see ``latency/trees.py``), whose sha256 the JSON records; loaded trees are walked by a small
numpy evaluator, not rebuilt as scikit-learn objects, and a fitted predictor predicts with the
same evaluator. Every loaded value is bounded before use (finite, non-negative margins and
costs, feature names this version produces, tree indices in range): a file that fails a check
is refused with a message saying what was wrong, to refit the predictor.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from latency.features import (
    FEATURE_VERSION,
    PredictorError,
    feature_frame,
    feature_names,
    require_columns,
)
from latency.trees import TreeEnsemble
from supernet.errors import ConfigError
from supernet.io import atomic_write, write_json
from supernet.model import BertShape

__all__ = [
    "AnalyticPredictor",
    "BasePredictor",
    "LearnedPredictor",
    "PREDICTORS",
    "Predictor",
    "ResidualPredictor",
    "PredictorError",
    "evaluate",
    "fit_device",
    "load_predictor",
    "make_predictor",
    "noise_floor",
    "plot_predicted_vs_measured",
    "save_predictor",
]

TARGET = "lat_median_ms"
COVERAGE = 0.95  # the share of measurements ``upper_ms`` is calibrated to cover
MIN_ROWS = 20  # fewer sample rows than this cannot both train and check a predictor
MIN_CONFIGS = 5  # ... nor fewer configurations (the held-out part needs whole ones)
FILE_FORMAT = "hwnas-latency-predictor"
# 2: trees as arrays in a safetensors file (1 kept them in a pickle, which is no longer loaded).
FILE_FORMAT_VERSION = 2

OUTPUT_COLUMNS = ("pred_ms", "std_ms", "upper_ms", "name")


@runtime_checkable
class Predictor(Protocol):
    """What a searcher needs from a latency predictor (see ``BasePredictor``)."""

    @property
    def name(self) -> str: ...

    def fit(self, rows: pd.DataFrame) -> Predictor: ...

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame: ...


# ---- helpers -----------------------------------------------------------------------------
def _successful(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows whose ``error`` is empty (a missing column or NaN counts as no error)."""
    if "error" not in rows.columns:
        return rows
    err = rows["error"].fillna("").astype(str).str.strip()
    return rows[err == ""]


def _target(rows: pd.DataFrame) -> np.ndarray:
    require_columns(rows, (TARGET,), "fitting a latency predictor")
    y = pd.to_numeric(rows[TARGET], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(y) | (y <= 0)
    if bad.any():
        raise PredictorError(
            f"{TARGET} must be a positive number on every row; {int(bad.sum())} rows are not "
            "(drop failed measurements, those with a non-empty error, before fitting)"
        )
    return y


def _groups(rows: pd.DataFrame) -> np.ndarray:
    """One label per architecture, so that splits never cut a configuration in two, nor put
    an int8 configuration on one side and its fp32 twin (the same layers, heads and widths)
    on the other: the twin's latency would tell the held-out one's. The label is the
    configuration's ``arch_key``, or for an int8 one its fp32 twin's where the rows hold it
    (so an fp32 device's splits are those its keys alone give)."""
    if "arch_key" not in rows.columns:
        return rows["arch_json"].astype(str).to_numpy()
    keys = rows["arch_key"].astype(str).to_numpy()
    if "arch_json" not in rows.columns:
        return keys

    def architecture(text: str) -> tuple[str, bool]:
        """The configuration without its precision, and whether it was fp32."""
        try:
            d = json.loads(text)
        except ValueError:
            return text, True
        if not isinstance(d, dict):
            return text, True
        return json.dumps({k: v for k, v in d.items() if k != "precision"}, sort_keys=True), \
            d.get("precision", "fp32") == "fp32"

    archs = [architecture(str(j)) for j in rows["arch_json"]]
    fp32_key: dict[str, str] = {}
    for (a, fp32), k in zip(archs, keys, strict=True):
        if fp32:
            fp32_key.setdefault(a, k)
    return np.array([fp32_key.get(a, k) for (a, _), k in zip(archs, keys, strict=True)])


def _conformal_quantile(residuals: np.ndarray, coverage: float) -> float:
    """The split-conformal quantile: with n exchangeable residuals, a new one is at most this
    value with probability >= ``coverage`` (the ``ceil((n + 1) c) / n`` level)."""
    r = np.asarray(residuals, dtype=float)
    if r.size == 0:
        raise PredictorError("no held-out residuals to calibrate the upper bound on; measure more configurations")
    level = min(1.0, math.ceil((r.size + 1) * coverage) / r.size)
    return float(np.quantile(r, level, method="higher"))


def _bounded(value: Any, what: str, *, low: float = -math.inf) -> float:
    """``value`` as a float if it is a finite number >= ``low``; else a ``PredictorError``
    naming ``what`` (loaded values: JSON may hold anything, null for NaN included)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < low:
        bound = f" >= {low:g}" if low > -math.inf else ""
        raise PredictorError(f"{what} is {value!r}; it must be a finite number{bound}")
    return float(value)


def _group_folds(groups: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A fold number per row, whole configurations per fold, seeded."""
    unique = rng.permutation(np.unique(groups))
    fold_of = {g: i % k for i, g in enumerate(unique)}
    return np.array([fold_of[g] for g in groups])


def _one_thread() -> Any:
    """Run tree code on one OpenMP thread. The data are small (hundreds to thousands of rows),
    so more threads barely help, and when a measurement or training job shares the machine,
    spinning OpenMP workers make a 0.3 s fit take 10 s or more."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def _work_monotone(names: list[str]) -> list[int]:
    """Tree constraints: non-decreasing in every feature that counts work; free in the
    precision flag (int8 is usually faster, but not for every size: quantizing activations
    costs too)."""
    return [0 if n == "int8" else 1 for n in names]


# ---- predictors --------------------------------------------------------------------------
class BasePredictor(ABC):
    """Shared mechanics: features, the output frame, the calibrated margin.

    A subclass models log latency (``_fit`` / ``_predict_log``) and sets two numbers in
    ``_fit``: ``margin_log``, the calibrated one-sided log residual (``upper = pred *
    exp(margin_log)``), and ``sigma_log``, the RMS log residual on unseen rows.
    """

    name: ClassVar[str]
    STORES_ARRAYS: ClassVar[bool] = False  # True: ``arrays()`` go to a tensor file next to the JSON

    def __init__(self, shape: BertShape, *, seed: int = 0, coverage: float = COVERAGE) -> None:
        if not 0.5 <= coverage < 1.0:
            raise PredictorError(f"coverage must be in [0.5, 1), got {coverage}")
        self.shape = shape
        self.seed = seed
        self.coverage = coverage
        self.feature_names: list[str] = []
        self.margin_log = math.nan
        self.sigma_log = math.nan
        self.device: str | None = None  # set by fit_device / load_predictor
        self.report: dict[str, Any] = {}

    @property
    def fitted(self) -> bool:
        return bool(self.feature_names)

    def fit(self, rows: pd.DataFrame) -> BasePredictor:
        """Fit on measurement rows (``arch_json``, ``batch``, ``length``, ``lat_median_ms``;
        ``arch_key`` groups rows of one configuration). Returns ``self``."""
        y = _target(rows)
        X = feature_frame(self.shape, rows)
        self.feature_names = list(X.columns)
        self._fit(X.to_numpy(dtype=float), y, _groups(rows))
        return self

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """``pred_ms``, ``std_ms``, ``upper_ms`` and ``name`` for every row (same index)."""
        if not self.fitted:
            raise PredictorError(f"the {self.name} predictor is not fitted yet: call fit() or load_predictor()")
        X = feature_frame(self.shape, rows).reindex(columns=self.feature_names)
        mean_log, spread_log = self._predict_log(X.to_numpy(dtype=float))
        pred = np.exp(mean_log)
        return pd.DataFrame(
            {
                "pred_ms": pred,
                "std_ms": pred * np.sqrt(spread_log**2 + self.sigma_log**2),
                "upper_ms": pred * math.exp(self.margin_log),
                "name": self.name,
            },
            index=rows.index,
        )

    def _calibrate(self, log_residuals: np.ndarray) -> None:
        """Set the margin and spread from residuals ``log(measured) - log(predicted)`` of
        models that did not see those rows. The margin is at least 0: ``upper_ms`` is never
        below ``pred_ms`` (a loaded file is held to the same bound)."""
        self.margin_log = max(0.0, _conformal_quantile(log_residuals, self.coverage))
        self.sigma_log = float(np.sqrt(np.mean(np.square(log_residuals))))

    @abstractmethod
    def _fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> None: ...

    @abstractmethod
    def _predict_log(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean log latency, spread of log latency across the model's members) per row."""

    # Persistence: JSON-able state, plus named numeric arrays (a tensor file) where needed.
    def state(self) -> dict[str, Any]:
        return {"seed": self.seed, "coverage": self.coverage, "feature_names": self.feature_names,
                "margin_log": self.margin_log, "sigma_log": self.sigma_log}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Restore from loaded data, bounding every value (``PredictorError`` on the first
        one out of bounds): the names must be features this version produces for the
        shape, the margin and spread finite and >= 0."""
        names = state["feature_names"]
        known = feature_names(self.shape)
        if not isinstance(names, list) or not names:
            raise PredictorError("feature_names must be a non-empty list")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise PredictorError(f"unknown feature names {unknown[:5]} (this version's features "
                                 f"for the model shape: {known[:3]} ... {known[-3:]})")
        if len(set(names)) != len(names):
            raise PredictorError("feature_names lists a feature more than once")
        self.feature_names = list(names)
        self.margin_log = _bounded(state["margin_log"], "the safety margin margin_log", low=0.0)
        self.sigma_log = _bounded(state["sigma_log"], "the spread sigma_log", low=0.0)

    @classmethod
    def from_state(cls, shape: BertShape, state: dict[str, Any],
                   arrays: dict[str, np.ndarray] | None = None) -> BasePredictor:
        seed = state["seed"]
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise PredictorError(f"seed must be an integer, got {seed!r}")
        pred = cls(shape, seed=seed, coverage=_bounded(state["coverage"], "coverage"))
        pred._set_state(state, arrays or {})
        return pred


class AnalyticPredictor(BasePredictor):
    """Latency as a non-negative combination of FLOPs-like terms plus a constant.

    Each coefficient is a cost per unit of work (ms per linear FLOP, per attention FLOP, per
    kept layer, per token-layer, per token-dropping layer; int8 and fp32 matrix products apart),
    so all are constrained to be >= 0:
    a fit cannot buy accuracy with a negative cost that the search would then exploit. The fit
    minimises *relative* squared error (weights 1/y^2) because a 1 ms error matters on a 2 ms
    model and not on a 200 ms one. The margin comes from grouped 5-fold cross-validation.
    """

    name = "analytic"
    # Linear FLOPs by precision (int8 matrix products cost less per FLOP; an fp32-only device's
    # int8 terms are all zero and get no weight) and the per-call quantization of activations.
    TERMS = ("flops_linear_fp32", "flops_linear_int8", "flops_attn", "kept_layers", "kept_layers_x_batch",
             "token_layers", "token_layers_int8", "drop_layers")
    FOLDS = 5

    def __init__(self, shape: BertShape, *, seed: int = 0, coverage: float = COVERAGE) -> None:
        super().__init__(shape, seed=seed, coverage=coverage)
        self.coef: dict[str, float] = {}  # ms per unit of each term, "const" included

    def _design(self, X: np.ndarray) -> np.ndarray:
        cols = [self.feature_names.index(t) for t in self.TERMS]
        return np.column_stack([X[:, cols], np.ones(len(X))])

    @staticmethod
    def _solve(A: np.ndarray, y: np.ndarray) -> np.ndarray:
        from sklearn.linear_model import LinearRegression

        # Columns span ~12 orders of magnitude (FLOPs vs counts): scale them to [0, 1] for the
        # solver, then map the coefficients back so that predictions need no scaler.
        scale = np.abs(A).max(axis=0)
        scale[scale == 0] = 1.0
        lr = LinearRegression(positive=True, fit_intercept=False)
        lr.fit(A / scale, y, sample_weight=1.0 / y**2)
        return np.asarray(lr.coef_, dtype=float) / scale

    @staticmethod
    def _log_pred(A: np.ndarray, w: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(A @ w, 1e-6))  # floor: a log must stay finite

    def _fit_parts(self, A: np.ndarray, X: np.ndarray, y: np.ndarray) -> Any:
        """What ``_fit`` fits, on design ``A`` / features ``X`` / latencies ``y`` (here the
        coefficients; a subclass adds parts)."""
        return self._solve(A, y)

    def _log_model(self, parts: Any, A: np.ndarray, X: np.ndarray) -> np.ndarray:
        """The log latency ``parts`` (from ``_fit_parts``) predict."""
        return self._log_pred(A, parts)

    def _keep(self, parts: Any) -> None:
        self.coef = dict(zip([*self.TERMS, "const"], map(float, parts), strict=True))

    def _fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> None:
        A = self._design(X)
        k = min(self.FOLDS, len(np.unique(groups)))
        if k < 2:
            raise PredictorError(f"the {self.name} predictor needs measurements of at least 2 configurations")
        folds = _group_folds(groups, k, np.random.default_rng(self.seed))
        resid = np.empty(len(y))
        for f in range(k):
            test = folds == f
            parts = self._fit_parts(A[~test], X[~test], y[~test])
            resid[test] = np.log(y[test]) - self._log_model(parts, A[test], X[test])
        self._calibrate(resid)
        self._keep(self._fit_parts(A, X, y))

    def _predict_log(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = np.array([self.coef[t] for t in (*self.TERMS, "const")])
        return self._log_pred(self._design(X), w), np.zeros(len(X))

    def state(self) -> dict[str, Any]:
        return {**super().state(), "coef": self.coef}

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super()._set_state(state, arrays)
        missing = [t for t in self.TERMS if t not in self.feature_names]
        if missing:
            raise PredictorError(f"feature_names lacks the analytic terms {missing}")
        coef, names = state["coef"], [*self.TERMS, "const"]
        if not isinstance(coef, dict) or sorted(coef) != sorted(names):
            got = sorted(coef) if isinstance(coef, dict) else coef
            raise PredictorError(f"coef must have exactly the keys {names}, got {got}")
        # A cost per unit of work: the fit constrains it to >= 0, so must a loaded one be.
        self.coef = {k: _bounded(coef[k], f"coefficient {k!r}", low=0.0) for k in names}


class LearnedPredictor(BasePredictor):
    """Gradient-boosted trees on the full feature vector, predicting log latency.

    A seeded bootstrap ensemble (resampling whole configurations) gives both the prediction
    (mean of the members' log predictions) and its spread. Each configuration left out of a
    member's sample is scored by the members that never saw it; those out-of-bag residuals
    calibrate the upper margin (jackknife+-after-bootstrap, Kim, Xu & Barber 2020) at no extra
    fits. Every feature but the precision flag counts work, so the trees are constrained to be
    non-decreasing in each: a searcher cannot find a larger network that the predictor thinks
    is faster at the same precision.
    """

    name = "gbt"
    STORES_ARRAYS = True
    MEMBERS = 5
    PARAMS: ClassVar[dict[str, Any]] = dict(
        max_iter=300, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=10, early_stopping=False
    )

    def __init__(self, shape: BertShape, *, seed: int = 0, coverage: float = COVERAGE) -> None:
        super().__init__(shape, seed=seed, coverage=coverage)
        self.members: list[TreeEnsemble] = []

    def _monotone(self) -> list[int]:
        return _work_monotone(self.feature_names)

    def _fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor

        rng = np.random.default_rng(self.seed)
        unique, inverse = np.unique(groups, return_inverse=True)
        log_y = np.log(y)
        oob_sum, oob_count = np.zeros(len(y)), np.zeros(len(y))
        self.members = []
        for m in range(self.MEMBERS):
            counts = np.bincount(rng.integers(0, len(unique), len(unique)), minlength=len(unique))
            weight = counts[inverse].astype(float)  # a configuration drawn twice counts twice
            bag = weight > 0
            model = HistGradientBoostingRegressor(
                **self.PARAMS, monotonic_cst=self._monotone(), random_state=self.seed * 1000 + m
            )
            with _one_thread():
                model.fit(X[bag], log_y[bag], sample_weight=weight[bag])
                if (~bag).any():
                    oob_sum[~bag] += model.predict(X[~bag])
            oob_count[~bag] += 1
            # Keep plain arrays, predicted by numpy: a fitted and a loaded predictor are the same.
            self.members.append(TreeEnsemble.from_sklearn(model))
        seen = oob_count > 0
        self._calibrate(log_y[seen] - oob_sum[seen] / oob_count[seen])

    def _predict_log(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logs = np.stack([m.predict(X) for m in self.members])
        return logs.mean(axis=0), logs.std(axis=0)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "members": len(self.members)}

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for m, member in enumerate(self.members):
            out.update(member.to_arrays(f"member{m}."))
        return out

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super()._set_state(state, arrays)
        n = state["members"]
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 100:
            raise PredictorError(f"members must be an integer in [1, 100], got {n!r}")
        expected = {k for m in range(n) for k in TreeEnsemble.array_names(f"member{m}.")}
        unexpected = sorted(set(arrays) - expected)
        if unexpected:
            raise PredictorError(f"the tree file holds unexpected arrays {unexpected[:5]}")
        self.members = [TreeEnsemble.from_arrays(arrays, f"member{m}.", len(self.feature_names))
                        for m in range(n)]


class ResidualPredictor(AnalyticPredictor):
    """The analytic model times a correction that small gradient-boosted trees learn from
    its log residuals: the analytic terms carry what scales with the work (and so extrapolate
    beyond the measured sizes), the trees what is not a line in it (a cost that steps up
    where weights outgrow a cache, say).

    The trees are shallow and few (``PARAMS``) and, like ``LearnedPredictor``'s, non-decreasing
    in every feature that counts work, so analytic times correction stays non-decreasing: a
    search cannot find a larger network predicted faster. The margin comes from grouped 5-fold
    cross-validation of both stages together. Over 5 held-out splits of this project's CPU
    measurements (``scripts/predictor_splits.py``, 2026-12-05) it led on rt (2 threads: MAPE
    5.6% against 6.0% analytic, 6.3% trees alone; 1 thread: 3.3% against 7.0% and 5.4%) and
    trailed the analytic model on r8 (5.4% against 5.1%): the README's "Devices" section.
    """

    name = "analytic+gbt"
    STORES_ARRAYS = True
    PARAMS: ClassVar[dict[str, Any]] = dict(
        max_iter=100, learning_rate=0.05, max_leaf_nodes=7, min_samples_leaf=15, early_stopping=False
    )

    def __init__(self, shape: BertShape, *, seed: int = 0, coverage: float = COVERAGE) -> None:
        super().__init__(shape, seed=seed, coverage=coverage)
        self.correction: TreeEnsemble | None = None

    def _fit_parts(self, A: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, TreeEnsemble]:
        """Analytic coefficients on (A, y), then trees on X for log(y) - log(analytic)."""
        from sklearn.ensemble import HistGradientBoostingRegressor

        w = self._solve(A, y)
        model = HistGradientBoostingRegressor(**self.PARAMS, monotonic_cst=_work_monotone(self.feature_names),
                                              random_state=self.seed)
        with _one_thread():
            model.fit(X, np.log(y) - self._log_pred(A, w))
        return w, TreeEnsemble.from_sklearn(model)

    def _log_model(self, parts: Any, A: np.ndarray, X: np.ndarray) -> np.ndarray:
        w, trees = parts
        return self._log_pred(A, w) + trees.predict(X)

    def _keep(self, parts: Any) -> None:
        super()._keep(parts[0])
        self.correction = parts[1]

    def _predict_log(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.correction is not None  # fit and load set it; predict() refuses an unfitted predictor
        base, spread = super()._predict_log(X)
        return base + self.correction.predict(X), spread

    def arrays(self) -> dict[str, np.ndarray]:
        assert self.correction is not None  # save_predictor refuses an unfitted predictor
        return self.correction.to_arrays("correction.")

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super()._set_state(state, arrays)
        unexpected = sorted(set(arrays) - set(TreeEnsemble.array_names("correction.")))
        if unexpected:
            raise PredictorError(f"the tree file holds unexpected arrays {unexpected[:5]}")
        self.correction = TreeEnsemble.from_arrays(arrays, "correction.", len(self.feature_names))


PREDICTORS: dict[str, type[BasePredictor]] = {
    AnalyticPredictor.name: AnalyticPredictor,
    LearnedPredictor.name: LearnedPredictor,
    ResidualPredictor.name: ResidualPredictor,
}


def make_predictor(name: str, shape: BertShape, *, seed: int = 0) -> BasePredictor:
    """A new, unfitted predictor by registry name (``"analytic"``, ``"gbt"`` or ``"analytic+gbt"``)."""
    if name not in PREDICTORS:
        raise PredictorError(f"unknown latency predictor {name!r}; known: {sorted(PREDICTORS)}")
    return PREDICTORS[name](shape, seed=seed)


# ---- evaluation --------------------------------------------------------------------------
def evaluate(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Accuracy of predicted latencies: ``rmse_ms``, ``mape`` (a fraction), ``within_10pct``
    (share with |pred / true - 1| <= 0.10), ``kendall_tau`` (rank agreement, what a search
    relies on) and ``n``."""
    from scipy.stats import kendalltau

    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    if t.shape != p.shape:
        raise PredictorError(f"y_true has {t.size} values but y_pred has {p.size}")
    if t.size == 0:
        raise PredictorError("nothing to evaluate: y_true is empty")
    if (t <= 0).any():
        raise PredictorError("measured latencies must be positive for relative errors")
    rel = np.abs(p / t - 1.0)
    # A small tolerance: 1.1 / 1.0 - 1 is 0.10000000000000009 in floating point.
    within = rel <= 0.10 + 1e-12
    tau = float(kendalltau(t, p).statistic) if t.size >= 2 else math.nan
    return {
        "rmse_ms": float(np.sqrt(np.mean((p - t) ** 2))),
        "mape": float(rel.mean()),
        "within_10pct": float(within.mean()),
        "kendall_tau": tau,
        "n": int(t.size),
    }


SAME_MEASUREMENT = ("arch_key", "batch", "regime", "length", "device")  # repeats of one timing


def noise_floor(rows: pd.DataFrame) -> dict[str, float]:
    """How repeatable measurements are: the best relative accuracy any predictor can show.

    From ``kind == "noise"`` rows (repeated measurements of one configuration; several
    configurations / input shapes are grouped separately): ``median_abs_rel`` (median
    |x / group median - 1|), ``within_10pct`` (share within +-10% of their group median),
    ``cv`` (mean over groups of std / mean) and ``n_noise`` (NaNs without noise rows).
    ``iqr_rel_median`` is the median of ``lat_iqr_ms / lat_median_ms`` over all successful
    rows: the spread within one measurement.

    The noise rows are timed back to back at the start, so they miss how the machine moves
    over the minutes a measurement takes. The same figures over the ``kind == "reference"``
    rows (the full model, timed again every 20 configurations from start to end) are the
    ``reference_*`` fields (``n_reference``; NaNs with fewer than 2): each sample row is one
    such timing, so this is the noise in the labels a predictor is fitted and scored on. On
    r8 (2026-12-04) the noise rows fell within +-10% 94% of the time, the references 82%.
    Configurations timed in several passes (``hwnas measure --passes``) give the same figures
    under ``retest_*`` (``n_retest``: their rows), each timing against its configuration's
    median: the noise of every sub-network, not the full model's alone.
    """
    ok = _successful(rows)
    out: dict[str, float] = {"n_noise": 0, "median_abs_rel": math.nan, "within_10pct": math.nan,
                             "cv": math.nan, "iqr_rel_median": math.nan, "n_reference": 0,
                             "reference_median_abs_rel": math.nan, "reference_within_10pct": math.nan,
                             "reference_cv": math.nan, "n_retest": 0, "retest_median_abs_rel": math.nan,
                             "retest_within_10pct": math.nan, "retest_cv": math.nan}
    if "lat_iqr_ms" in ok.columns and TARGET in ok.columns and len(ok):
        out["iqr_rel_median"] = float((ok["lat_iqr_ms"] / ok[TARGET]).median())
    if "kind" not in ok.columns or TARGET not in ok.columns:
        return out
    for kind, prefix, name in (("noise", "", "noise"), ("reference", "reference_", "reference"),
                               ("sample", "retest_", "retest")):
        repeats = ok[ok["kind"] == kind]
        keys = [c for c in SAME_MEASUREMENT if c in repeats.columns]
        if kind == "sample" and keys:  # only configurations timed more than once
            repeats = repeats[repeats.duplicated(keys, keep=False)]
        if len(repeats) < (1 if kind == "noise" else 2):
            continue
        by = repeats.groupby(keys, sort=False)[TARGET] if keys else repeats.groupby(lambda _: 0)[TARGET]
        rel = repeats[TARGET] / by.transform("median") - 1.0
        cv = (by.std(ddof=1) / by.mean()).dropna()
        out.update({
            f"n_{name}": int(len(repeats)),
            f"{prefix}median_abs_rel": float(rel.abs().median()),
            f"{prefix}within_10pct": float((rel.abs() <= 0.10 + 1e-12).mean()),
            f"{prefix}cv": float(cv.mean()) if len(cv) else math.nan,
        })
    return out


def per_configuration(samples: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per configuration and workload (``SAME_MEASUREMENT``): where it was timed in
    several passes (``hwnas measure --passes``), the first row with the median of its
    timings. Returns the rows and the most passes of any configuration (1: nothing merged)."""
    keys = [c for c in SAME_MEASUREMENT if c in samples.columns]
    if samples.empty or not samples.duplicated(keys).any():
        return samples, 1 if len(samples) else 0
    by = samples.groupby(keys, sort=False)[TARGET]
    merged = samples.assign(**{TARGET: by.transform("median")}).drop_duplicates(keys)
    return merged, int(by.size().max())


# ---- fitting per device ------------------------------------------------------------------
def _holdout_split(groups: np.ndarray, share: float, seed: int) -> np.ndarray:
    """True for rows whose configuration is held out (a seeded share of configurations)."""
    unique = np.random.default_rng(seed).permutation(np.unique(groups))
    n_hold = min(len(unique) - 1, max(1, round(share * len(unique))))
    return np.isin(groups, unique[:n_hold])


SELECTION_FOLDS = 3


def _cross_validated_mape(shape: BertShape, train: pd.DataFrame, groups: np.ndarray, seed: int) -> dict[str, float]:
    """Each registered predictor's MAPE over ``SELECTION_FOLDS`` folds of whole configurations
    of ``train`` (fitted on the others); empty when there are too few configurations for folds
    of at least ``MIN_CONFIGS`` to train on."""
    unique = np.random.default_rng(seed + 1).permutation(np.unique(groups))
    if len(unique) < SELECTION_FOLDS * MIN_CONFIGS:
        return {}
    fold = dict(zip(unique, np.arange(len(unique)) % SELECTION_FOLDS, strict=True))
    of_row = np.array([fold[g] for g in groups])
    y = train[TARGET].to_numpy(dtype=float)
    out: dict[str, float] = {}
    for name in PREDICTORS:
        errors = []
        for k in range(SELECTION_FOLDS):
            pred = make_predictor(name, shape, seed=seed).fit(train[of_row != k]).predict(train[of_row == k])
            errors.append(np.abs(pred["pred_ms"].to_numpy(dtype=float) / y[of_row == k] - 1.0))
        out[name] = float(np.concatenate(errors).mean())
    return out


def fit_device(
    shape: BertShape, rows: pd.DataFrame, device: str, *, seed: int = 0, holdout: float = 0.2
) -> tuple[BasePredictor, dict[str, Any]]:
    """Fit, compare and choose a latency predictor for ``device``.

    Uses the device's successful ``kind == "sample"`` rows; a seeded ``holdout`` share of the
    configurations scores every registered predictor; the one with the lowest MAPE in a grouped
    cross-validation on the other configurations (``selection``; on few configurations, the
    lowest held-out MAPE) is refitted on all rows and returned with a report (``device``,
    ``chosen``, ``selection``, ``metrics`` per predictor with ``coverage_upper``, the chosen
    one's ``coverage_upper``, ``noise_floor``, ``n_train``, ``n_holdout``, ``n_configs``,
    ``feature_version``).
    """
    require_columns(rows, ("device", "kind", "arch_key", TARGET, "arch_json", "batch", "length"),
                     "fitting a device's latency predictor")
    if not 0.0 < holdout < 1.0:
        raise PredictorError(f"holdout must be a share in (0, 1), got {holdout}")
    present = sorted(map(str, rows["device"].dropna().unique()))
    if device not in present:
        raise PredictorError(f"no measurements for device {device!r}; devices present: {present}")
    on_device = _successful(rows[rows["device"] == device])
    samples, passes = per_configuration(on_device[on_device["kind"] == "sample"])
    groups = _groups(samples)
    n_configs = samples["arch_key"].nunique() if "arch_key" in samples else len(np.unique(groups))
    if len(samples) < MIN_ROWS or n_configs < MIN_CONFIGS:
        raise PredictorError(
            f"device {device!r} has {len(samples)} successful sample measurements of {n_configs} "
            f"configurations; a predictor needs at least {MIN_ROWS} of at least {MIN_CONFIGS} "
            "(measure more sub-networks)"
        )

    held = _holdout_split(groups, holdout, seed)
    train, test = samples[~held], samples[held]
    y_test = test[TARGET].to_numpy(dtype=float)
    metrics: dict[str, dict[str, float]] = {}
    held_pred: dict[str, np.ndarray] = {}
    for name in PREDICTORS:
        out = make_predictor(name, shape, seed=seed).fit(train).predict(test)
        held_pred[name] = out["pred_ms"].to_numpy(dtype=float)
        metrics[name] = {
            **evaluate(y_test, out["pred_ms"]),
            "coverage_upper": float((y_test <= out["upper_ms"].to_numpy()).mean()),
        }
    # The choice is made on the training configurations alone (grouped cross-validation), so the
    # held-out figures reported for it are not the best of three on the split they are read on;
    # with too few configurations for folds, on the held-out ones. Ties (equal MAPE) go to the
    # registry's order, which puts the simpler model first.
    cv = _cross_validated_mape(shape, train, groups[~held], seed)
    chosen = min(PREDICTORS, key=lambda n: cv[n] if cv else metrics[n]["mape"])
    best = make_predictor(chosen, shape, seed=seed).fit(samples)
    best.device = device
    report: dict[str, Any] = {
        "device": device,
        "chosen": chosen,
        "metrics": metrics,
        "coverage_upper": metrics[chosen]["coverage_upper"],
        # How the predictor was chosen: ``cv`` (MAPE of each, 3-fold cross-validation on the training
        # configurations) or ``holdout`` (too few configurations for folds: on the held-out MAPE).
        "selection": {"on": "cv" if cv else "holdout", "cv_mape": cv or None},
        "upper_margin": math.exp(best.margin_log) - 1.0,
        "noise_floor": noise_floor(on_device),
        "n_train": int(len(train)),
        "n_holdout": int(len(test)),
        "n_configs": int(n_configs),
        "passes": passes,  # the most timings of one configuration (hwnas measure --passes), fitted on their median
        "seed": seed,
        "feature_version": FEATURE_VERSION,
        # The chosen predictor's held-out points (fitted without them): the plot's data.
        "holdout": {
            "arch_key": test["arch_key"].astype(str).tolist(),
            "length": test["length"].astype(int).tolist(),
            "measured_ms": y_test.tolist(),
            "pred_ms": held_pred[chosen].tolist(),
        },
    }
    best.report = report
    return best, report


# ---- persistence -------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars become Python ones, NaN / inf become null."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _model_path(path: Path) -> Path:
    return path.with_name(path.stem + ".trees.safetensors")


def save_predictor(
    pred: BasePredictor, path: str | Path, *, device: str, shape: BertShape, report: dict[str, Any]
) -> Path:
    """Write ``pred`` to ``path`` (JSON; tree models add ``<stem>.trees.safetensors`` next to
    it, plain arrays whose sha256 the JSON records). Written atomically, arrays first, JSON
    last."""
    path = Path(path)
    if not isinstance(pred, BasePredictor) or not pred.fitted:
        raise PredictorError("only a fitted predictor from make_predictor / fit_device can be saved")
    if shape != pred.shape:
        raise PredictorError("shape differs from the shape the predictor was fitted for")
    meta: dict[str, Any] = {
        "format": FILE_FORMAT,
        "format_version": FILE_FORMAT_VERSION,
        "feature_version": FEATURE_VERSION,
        "predictor": pred.name,
        "device": device,
        "shape": shape.to_dict(),
        "state": pred.state(),
        "report": report,
    }
    if pred.STORES_ARRAYS:
        from safetensors.numpy import save

        data = save(pred.arrays())

        def write(tmp: Path) -> None:
            tmp.write_bytes(data)

        atomic_write(_model_path(path), write)
        meta.update(model_file=_model_path(path).name, model_sha256=hashlib.sha256(data).hexdigest())
    # NaN is not JSON: write null (a margin is never NaN once fitted; report metrics can be).
    return write_json(path, _jsonable(meta))


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise PredictorError(f"no saved latency predictor at {path}; fit one first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PredictorError(f"{path} is not a readable latency predictor file ({e}); refit it") from e
    if not isinstance(meta, dict) or meta.get("format") != FILE_FORMAT:
        raise PredictorError(f"{path} is not a latency predictor file written by hwnas")
    if meta.get("format_version") != FILE_FORMAT_VERSION or meta.get("feature_version") != FEATURE_VERSION:
        old = ""
        if meta.get("format_version") == 1:
            old = " (format 1 kept trees in a pickle, which is no longer loaded)"
        raise PredictorError(
            f"{path} was written with file format {meta.get('format_version')} / features "
            f"{meta.get('feature_version')}; this version reads {FILE_FORMAT_VERSION} / "
            f"{FEATURE_VERSION}{old}: refit the predictor"
        )
    return meta


def _read_arrays(path: Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The tree file next to ``path``: only under the name this version writes, only if its
    bytes match the recorded sha256, parsed as safetensors (tensors only, no code)."""
    from safetensors.numpy import load

    model_path = _model_path(path)
    if meta.get("model_file") != model_path.name:
        raise PredictorError(f"{path} names the tree file {meta.get('model_file')!r}, expected "
                             f"{model_path.name!r}; refit the predictor")
    try:
        data = model_path.read_bytes()
    except OSError as e:
        raise PredictorError(f"the tree file of {path} is missing or unreadable ({e}); refit it") from e
    # Check the bytes we are about to parse, not the file again (it could change between).
    if hashlib.sha256(data).hexdigest() != meta.get("model_sha256"):
        raise PredictorError(f"{model_path} does not match the sha256 recorded in {path}: "
                             "corrupt or replaced; refit the predictor")
    try:
        return load(data)
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise PredictorError(f"{model_path} is not a readable tensor file ({e}); refit the predictor") from e


def load_predictor(path: str | Path, device: str | None = None) -> BasePredictor:
    """Load a predictor written by ``save_predictor``; with ``device``, refuse one fitted on
    another device. Every loaded value is bounded (see ``BasePredictor._set_state`` and
    ``TreeEnsemble.check``). Its ``device`` and ``report`` attributes are restored."""
    path = Path(path)
    meta = _read_meta(path)
    fitted_on = meta.get("device")
    if device is not None and fitted_on != device:
        raise PredictorError(
            f"{path} is a latency predictor for device {fitted_on!r}, not {device!r}: "
            f"fit one on {device!r} measurements"
        )
    name = meta.get("predictor")
    if name not in PREDICTORS:
        raise PredictorError(f"{path} holds an unknown predictor {name!r}; known: {sorted(PREDICTORS)}")
    cls = PREDICTORS[name]
    arrays = _read_arrays(path, meta) if cls.STORES_ARRAYS else {}
    try:
        shape = BertShape.from_dict(meta["shape"])
        state = meta["state"]
        if not isinstance(state, dict):
            raise PredictorError(f"state must be a JSON object, got {type(state).__name__}")
        pred = cls.from_state(shape, state, arrays)
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise PredictorError(f"{path} is an incomplete latency predictor file ({e!r}); refit it") from e
    except PredictorError as e:
        raise PredictorError(f"{path} holds an invalid latency predictor: {e}; refit the predictor") from e
    pred.device = fitted_on
    pred.report = meta.get("report") or {}
    return pred


# ---- figures -----------------------------------------------------------------------------
def plot_predicted_vs_measured(y_true: Any, y_pred: Any, path: str | Path, title: str) -> Path:
    """A log-log scatter of predicted against measured latency with the y = x line and a
    +-10% band, written atomically (format from the file suffix, e.g. ``.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(y_true, dtype=float)
    p = np.asarray(y_pred, dtype=float)
    if t.shape != p.shape or t.size == 0:
        raise PredictorError(f"need equally many measured and predicted values, got {t.size} and {p.size}")
    path = Path(path)
    lo, hi = float(min(t.min(), p.min())) * 0.8, float(max(t.max(), p.max())) * 1.25
    line = np.geomspace(lo, hi, 50)
    fig, ax = plt.subplots(figsize=(5, 5))
    try:
        ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="±10%")
        ax.plot(line, line, color="black", lw=1, label="y = x")
        ax.scatter(t, p, s=12, alpha=0.7, label=f"n = {t.size}")
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi),
               xlabel="measured latency (ms)", ylabel="predicted latency (ms)", title=title)
        ax.legend(loc="upper left")
        fig.tight_layout()
        fmt = path.suffix.lstrip(".") or "png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120))
    finally:
        plt.close(fig)
    return path
