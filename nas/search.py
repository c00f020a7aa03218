"""The searcher interface: what a searcher receives, what it returns, and the registry.

A searcher works on ``SubnetConfig`` values and two injected callables:

* a ``LatencyModel`` (cheap): predicted latency and an upper bound (prediction + safety
  margin) for a batch of configurations;
* an ``AccuracyModel`` (expensive): dev accuracy of one configuration.

Budgets are checked against the *upper bound*, never the bare prediction, because a
prediction that is right on average still misses the budget half the time on the device
(HAT's users saw 200 ms predicted, 270 ms measured). ``n_evaluations`` caps the accuracy
calls; latency predictions are cheap and may be made more often, but every loop that draws
candidates is bounded, so a very tight budget ends the search instead of hanging it.

Every searcher here:

* returns immediately with ``best=None`` when even the smallest configuration misses the
  budget (``fastest_reachable``), so the caller can say so;
* evaluates the smallest configuration first when a budget is given (and the smallest and
  the largest in multi-objective mode, the two ends of the front), so that a reachable
  budget always yields an answer, however few feasible configurations random draws find;
* never evaluates the same configuration twice (de-duplication by ``SubnetConfig.key()``).

Searchers are registered by name in ``SEARCHERS`` and built with ``make_searcher``.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from nas.pareto import pareto_front
from supernet.errors import ConfigError
from supernet.space import SearchSpace, SubnetConfig

__all__ = [
    "SEARCHERS",
    "AccuracyModel",
    "Archive",
    "Candidate",
    "LatencyModel",
    "RandomSearch",
    "SearchResult",
    "Searcher",
    "anchors",
    "check_search_args",
    "depth_seeds",
    "draw_feasible",
    "evaluate_anchors",
    "fastest_reachable",
    "make_searcher",
    "uniform_grid",
]


# ---- what a searcher is given ------------------------------------------------------------
@runtime_checkable
class LatencyModel(Protocol):
    """Per-device latency predictor, as a searcher sees it."""

    def predict(self, configs: list[SubnetConfig]) -> list[tuple[float, float]]:
        """``(predicted ms, upper bound ms)`` per configuration; upper = prediction + margin."""
        ...


@runtime_checkable
class AccuracyModel(Protocol):
    """Dev accuracy of a sub-network (expensive; the caller caches)."""

    def __call__(self, cfg: SubnetConfig) -> float: ...


# ---- what a searcher returns ---------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One evaluated configuration with its accuracy and predicted latency."""

    config: SubnetConfig
    accuracy: float
    latency_ms: float
    upper_ms: float
    feasible: bool

    def to_row(self) -> dict[str, Any]:
        """A flat record for a DataFrame (``arch_*``, ``acc_*``, ``lat_*`` columns)."""
        return {
            "arch_key": self.config.key(),
            "arch_json": self.config.to_json(),
            "acc_dev": self.accuracy,
            "lat_pred_ms": self.latency_ms,
            "lat_upper_ms": self.upper_ms,
            "feasible": self.feasible,
        }


ROW_COLUMNS = ["arch_key", "arch_json", "acc_dev", "lat_pred_ms", "lat_upper_ms", "feasible"]


@dataclass
class SearchResult:
    """Outcome of one search.

    ``best`` is the most accurate feasible candidate (``None`` when none was found, e.g. an
    impossible budget); ``history`` holds every evaluated candidate once, in evaluation
    order; ``n_evaluations`` is its length (accuracy evaluations, including those reused
    from a resumed Optuna study); ``n_rejected`` counts candidates that the latency check
    turned away before their accuracy was computed.
    """

    best: Candidate | None
    history: list[Candidate]
    n_evaluations: int
    method: str
    budget_ms: float | None
    n_rejected: int = 0

    def frame(self) -> pd.DataFrame:
        """The history as a DataFrame, one row per candidate (``Candidate.to_row`` columns)."""
        return pd.DataFrame([c.to_row() for c in self.history], columns=ROW_COLUMNS)

    def front(self) -> pd.DataFrame:
        """Pareto front of the history (accuracy vs predicted latency), fastest first."""
        return pareto_front(self.frame(), acc_col="acc_dev", lat_col="lat_pred_ms")


class Searcher(Protocol):
    """Anything with this ``search`` method is a searcher.

    ``budget_ms=None`` asks for the whole accuracy / latency front (multi-objective); a
    number asks for the most accurate configuration whose upper latency bound fits it.
    """

    def search(
        self,
        space: SearchSpace,
        accuracy: AccuracyModel,
        latency: LatencyModel,
        *,
        budget_ms: float | None,
        n_evaluations: int,
        seed: int,
    ) -> SearchResult: ...


# ---- shared helpers --------------------------------------------------------------------------
def check_search_args(budget_ms: float | None, n_evaluations: int) -> None:
    """Reject budgets and evaluation counts that no search can honour (``ConfigError``)."""
    if isinstance(n_evaluations, bool) or not isinstance(n_evaluations, (int, np.integer)) or n_evaluations < 1:
        raise ConfigError(f"n_evaluations must be a positive integer, got {n_evaluations!r}")
    if budget_ms is not None and (
        isinstance(budget_ms, bool)
        or not isinstance(budget_ms, (int, float))
        or not (math.isfinite(budget_ms) and budget_ms > 0)
    ):
        raise ConfigError(
            f"budget_ms must be a positive number of milliseconds (or None for the whole front), got {budget_ms!r}"
        )


def predict(latency: LatencyModel, configs: list[SubnetConfig]) -> list[tuple[float, float]]:
    """``latency.predict`` with its contract checked (one pair per configuration).

    A NaN upper bound fails every budget comparison, so such a candidate is rejected.
    """
    if not configs:
        return []
    out = [(float(p), float(u)) for p, u in latency.predict(configs)]
    if len(out) != len(configs):
        raise ValueError(f"latency model returned {len(out)} predictions for {len(configs)} configurations")
    return out


def fastest_reachable(space: SearchSpace, latency: LatencyModel) -> float:
    """Upper latency bound of the smallest configuration: budgets below it are impossible.

    The smallest configuration (fewest layers, heads, neurons, tokens) is taken to be the
    fastest at its precision; that holds for any predictor that is monotone in the
    architecture's size. Across precisions, the fastest of them.
    """
    return min(u for _, u in predict(latency, [space.smallest().with_precision(p) for p in space.precision_choices]))


def is_feasible(upper_ms: float, budget_ms: float | None) -> bool:
    """The budget rule: the upper bound, not the prediction, must fit."""
    return budget_ms is None or upper_ms <= budget_ms


def draw_feasible(
    propose: Callable[[], SubnetConfig],
    latency: LatencyModel,
    budget_ms: float | None,
    n_wanted: int,
    *,
    exclude: set[str],
    max_attempts: int,
    batch: int = 32,
) -> tuple[list[tuple[SubnetConfig, float, float]], int]:
    """Draw up to ``n_wanted`` new feasible configurations from ``propose``.

    Proposals are predicted in batches (one predictor call per batch), configurations
    whose key is in ``exclude`` or already drawn are skipped, and at most ``max_attempts``
    proposals are made in all, so a budget that almost nothing fits ends the loop.
    Returns ``[(cfg, predicted ms, upper ms), ...]`` and the number rejected by latency.
    """
    out: list[tuple[SubnetConfig, float, float]] = []
    taken = set(exclude)
    attempts = rejected = 0
    while len(out) < n_wanted and attempts < max_attempts:
        size = min(batch, max_attempts - attempts)
        attempts += size
        fresh: list[SubnetConfig] = []
        for _ in range(size):
            cfg = propose()
            k = cfg.key()
            if k not in taken:
                taken.add(k)
                fresh.append(cfg)
        for cfg, (lat, upper) in zip(fresh, predict(latency, fresh), strict=True):
            if len(out) >= n_wanted:
                break
            if is_feasible(upper, budget_ms):
                out.append((cfg, lat, upper))
            else:
                rejected += 1
    return out, rejected


@dataclass
class Archive:
    """Every evaluated configuration once, in order, with a hard cap on accuracy calls.

    ``evaluate`` returns the stored candidate for a configuration seen before (no call, no
    count) and ``None`` once the cap is reached; searchers stop when ``full`` is true.
    """

    accuracy: AccuracyModel
    budget_ms: float | None
    cap: int
    history: list[Candidate] = field(default_factory=list)
    by_key: dict[str, Candidate] = field(default_factory=dict)
    n_rejected: int = 0

    @property
    def full(self) -> bool:
        return len(self.history) >= self.cap

    def __contains__(self, cfg: SubnetConfig) -> bool:
        return cfg.key() in self.by_key

    def keys(self) -> set[str]:
        return set(self.by_key)

    def add(self, cand: Candidate) -> Candidate:
        """Record a candidate evaluated elsewhere (e.g. a stored Optuna trial)."""
        k = cand.config.key()
        if k not in self.by_key:
            self.by_key[k] = cand
            self.history.append(cand)
        return self.by_key[k]

    def record(self, cfg: SubnetConfig, acc: float, lat: float, upper: float) -> Candidate:
        """Record a configuration whose accuracy was computed elsewhere (a stored Optuna
        trial, a Ray trial); its feasibility follows from the archive's budget."""
        return self.add(Candidate(cfg, acc, lat, upper, is_feasible(upper, self.budget_ms)))

    def evaluate(self, cfg: SubnetConfig, lat: float, upper: float) -> Candidate | None:
        known = self.by_key.get(cfg.key())
        if known is not None:
            return known
        if self.full:
            return None
        acc = float(self.accuracy(cfg))
        if not math.isfinite(acc):
            # A NaN would silently lose every comparison and poison Pareto fronts.
            raise ValueError(f"accuracy model returned {acc} for {cfg.describe()}")
        return self.record(cfg, acc, lat, upper)

    def best(self) -> Candidate | None:
        """Most accurate feasible candidate; the earliest wins a tie (stable across runs)."""
        feasible = [c for c in self.history if c.feasible]
        return max(feasible, key=lambda c: c.accuracy) if feasible else None

    def result(self, method: str) -> SearchResult:
        return SearchResult(
            best=self.best(),
            history=list(self.history),
            n_evaluations=len(self.history),
            method=method,
            budget_ms=self.budget_ms,
            n_rejected=self.n_rejected,
        )


def anchors(space: SearchSpace, budget_ms: float | None, latency: LatencyModel) -> list[SubnetConfig]:
    """Configurations evaluated first: the smallest, plus the largest for a whole front.

    Under a budget, also one *depth seed* per depth: the widest uniform
    (DynaBERT-style) sub-network with that many layers whose upper bound fits, at full
    retention if one fits, else at the lowest retention. A budget search started from random
    samples rarely reaches deep, narrow sub-networks (at 3x on rt, none of 150 evaluations kept
    6 layers), yet those recover the most when fine-tuned (``choose_and_export``'s
    ``finetune_candidates``); the seeds put one of each depth in the history.
    """
    smallest, largest = space.smallest(), space.largest()
    if smallest.key() == largest.key():
        return [smallest]
    if budget_ms is None:
        return [smallest, largest]
    return [smallest, *depth_seeds(space, latency, budget_ms)]


def uniform_grid(space: SearchSpace, retentions: tuple[float, ...] | None = None
                 ) -> list[tuple[tuple[int, str], SubnetConfig]]:
    """The uniform sub-networks of ``space`` keyed by (depth, precision): per precision and depth
    (fewest layers first), full retention then the lowest (or ``retentions``), widest first."""
    depths = range(space.min_layers, space.num_layers + 1) if space.allow_skip else [space.num_layers]
    widths = sorted({h / space.max_heads for h in space.head_choices}, reverse=True)
    keep = (1.0, space.retention_choices[-1]) if retentions is None else retentions
    return [((n, p), space.uniform(width=w, depth=n / space.num_layers, retention=r).with_precision(p))
            for p in space.precision_choices for n in depths for r in keep for w in widths]


def depth_seeds(space: SearchSpace, latency: LatencyModel, budget_ms: float) -> list[SubnetConfig]:
    """Per depth (fewest to most layers) and precision, the widest uniform sub-network that
    fits the budget: full retention first, else the lowest retention; depths where none fits
    are left out."""
    grid = uniform_grid(space)
    seeds: dict[tuple[int, str], SubnetConfig] = {}
    for (slot, cfg), (_, upper) in zip(grid, predict(latency, [c for _, c in grid]), strict=True):
        if slot not in seeds and is_feasible(upper, budget_ms):
            seeds[slot] = cfg  # the grid runs full retention before low, widest first
    return [seeds[s] for s in sorted(seeds) if seeds[s].key() != space.smallest().key()]


def evaluate_anchors(archive: Archive, space: SearchSpace, latency: LatencyModel) -> None:
    """Evaluate ``anchors`` (the caller has checked that the smallest fits the budget)."""
    configs = anchors(space, archive.budget_ms, latency)
    for cfg, (lat, upper) in zip(configs, predict(latency, configs), strict=True):
        archive.evaluate(cfg, lat, upper)


# ---- random search -----------------------------------------------------------------------------
@dataclass
class RandomSearch:
    """Uniform random sampling (``SearchSpace.sample``): the baseline to compare methods with.

    With a budget, samples whose upper bound misses it are rejected before evaluation
    (at most ``attempts_per_evaluation * n_evaluations`` samples in all); without one, every
    new sample is evaluated.
    """

    name: ClassVar[str] = "random"
    attempts_per_evaluation: int = 50
    anchor: bool = True

    def search(
        self,
        space: SearchSpace,
        accuracy: AccuracyModel,
        latency: LatencyModel,
        *,
        budget_ms: float | None,
        n_evaluations: int,
        seed: int,
    ) -> SearchResult:
        check_search_args(budget_ms, n_evaluations)
        archive = Archive(accuracy, budget_ms, n_evaluations)
        if budget_ms is not None and fastest_reachable(space, latency) > budget_ms:
            return archive.result(self.name)
        rng = np.random.default_rng(seed)
        if self.anchor:
            evaluate_anchors(archive, space, latency)
        # One bounded draw: every drawn configuration is new and feasible, so each costs
        # exactly one evaluation and the archive's cap is never exceeded.
        drawn, archive.n_rejected = draw_feasible(
            lambda: space.sample(rng), latency, budget_ms, n_evaluations - len(archive.history),
            exclude=archive.keys(), max_attempts=self.attempts_per_evaluation * n_evaluations,
        )
        for cfg, lat, upper in drawn:
            archive.evaluate(cfg, lat, upper)
        return archive.result(self.name)


# ---- registry ------------------------------------------------------------------------------------
# Values are "module:Class" so that the Optuna-backed searchers (and optuna itself) are only
# imported when asked for, and so that nas.search need not import the modules that import it.
SEARCHERS: dict[str, str] = {
    "random": "nas.search:RandomSearch",
    "evolution": "nas.evolution:EvolutionSearch",
    "tpe": "nas.optuna_search:TPESearch",
    "nsga2": "nas.optuna_search:NSGA2Search",
    # Optuna inside Ray Tune: the path for users who outgrow one machine (tests/test_distributed.py).
    "ray": "nas.distributed:RayTuneSearch",
}


def searcher_class(name: str) -> type:
    """The class registered under ``name``; ``ConfigError`` listing the known names if none."""
    if name not in SEARCHERS:
        raise ConfigError(f"unknown searcher {name!r}; known searchers: {', '.join(sorted(SEARCHERS))}")
    module, attr = SEARCHERS[name].split(":")
    cls: type = getattr(importlib.import_module(module), attr)
    return cls


def evolution_settings(method: str, screen: int | None) -> dict[str, Any]:
    """The keyword settings of ``method``'s searcher for a ``screen`` a user gave (None: the
    searcher's default); ``screen`` is the evolution's alone (``EvolutionSearch.screen``), so a
    screen for another method raises ``ConfigError``."""
    if screen is None:
        return {}
    if method != "evolution":
        raise ConfigError(f"screen (children drawn per evaluation) is the evolution's setting; got it with "
                          f"method {method!r}: leave it out or use method 'evolution'")
    return {"screen": screen}


def method_label(method: str, settings: dict[str, Any] | None) -> str:
    """How a search with these searcher ``settings`` is named in its Optuna study and history
    file: ``method``, with a non-default screen after it (``evolution-screen1``), so that a
    screened and an unscreened evolution of one seed neither pool their candidates in one study
    nor overwrite each other's history."""
    screen = (settings or {}).get("screen")
    if method != "evolution" or screen is None:
        return method
    default = inspect.signature(searcher_class(method)).parameters["screen"].default
    return method if screen == default else f"{method}-screen{screen}"


def make_searcher(name: str, **kwargs: Any) -> Searcher:
    """Build the searcher registered under ``name`` with its keyword settings.

    An unknown name, or a setting the searcher does not have, raises ``ConfigError`` that
    lists what would be accepted.
    """
    cls = searcher_class(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        accepted = list(inspect.signature(cls).parameters)
        raise ConfigError(
            f"searcher {name!r} got bad settings {sorted(kwargs)} ({exc}); it accepts {accepted}"
        ) from None
    searcher: Searcher = cls(**kwargs)
    return searcher
