"""Optuna-backed searchers: TPE under a latency budget, NSGA-II for the whole front.

Encoding (deterministic, the same for both samplers). Every trial suggests the same
parameters, so the search space is static, as TPE and NSGA-II need:

* ``keep_{i}`` (bool, only when the space allows skipping layers),
* ``heads_{i}``, ``ffn_{i}``: *index* into ``space.head_choices`` / ``space.ffn_choices``,
* ``retention_{i}``: *index* into ``space.retention_choices`` (1.0 first).

Indices rather than values because integer distributions are ordinal: TPE's kernels then
learn "more heads helps" instead of treating 3 and 4 heads as unrelated categories.

Decoding repairs the parameters to a valid configuration, always the same way:

1. if fewer than ``space.min_layers`` layers are kept, the layers of the evenly spaced
   DynaBERT pattern (``evenly_spaced_keep``) are switched on, in order, until enough are;
2. a skipped layer gets 0 heads and 0 neurons (its suggested values are ignored);
3. the kept layers' retention values are sorted non-increasing and given to the kept layers
   in order (as ``SearchSpace.sample`` does: dropped tokens never come back); a skipped layer
   inherits the retention of the layer before it (it computes no attention, so it cannot
   drop tokens) and its own suggestion is ignored.

``encode`` is the inverse on valid configurations (``decode(encode(c)) == c``); it is used
to enqueue the anchor configurations.

Constraints: Optuna 5 deprecates the samplers' ``constraints_func`` argument (FutureWarning,
removal planned for 7.0) in favour of ``Trial.set_constraint``, which both samplers read in
the same way; the constraint is ``upper_ms - budget_ms`` (feasible when <= 0). A trial whose
upper bound misses the budget is not evaluated: it is told the worst accuracy
(``infeasible_value``) with its constraint, and it counts against ``trials_per_evaluation *
n_evaluations`` trials in all, so a tight budget cannot make the search loop forever.
A trial that decodes to a configuration already evaluated reuses its accuracy (told to
Optuna so the sampler learns, but not evaluated or counted again).

Every trial stores its configuration (``arch_json``, and ``arch``, the one-line description),
``lat_pred_ms``, ``lat_upper_ms``, ``acc_dev`` and a ``status`` (``evaluated``, ``duplicate``
or ``rejected``) as user attributes. The study names its objectives (``acc_dev``, and
``lat_pred_ms`` for NSGA-II) and holds ``study_attrs`` (``nas.export.run_search``: the device,
budget, what latency means, the metric) as user attributes, so that optuna-dashboard
(``optuna-dashboard sqlite:///RUN/search/optuna.db``) shows a run's studies readably. The
searchers that do not run on Optuna (evolution, random, Ray Tune) have their evaluated
candidates written into a study of the same format when they end (``record_result``).

Resuming: with ``storage`` (e.g. ``sqlite:///runs/NAME/optuna.db``) and ``study_name`` the
study is opened with ``load_if_exists=True``; the finished trials' stored configurations and
accuracies (trial user attributes) rebuild the history, and only the remaining evaluations
run. A study created for another search space, budget or method is refused.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState

from nas.search import (
    AccuracyModel,
    Archive,
    Candidate,
    LatencyModel,
    SearchResult,
    anchors,
    check_search_args,
    fastest_reachable,
    is_feasible,
    predict,
)
from supernet import faults
from supernet.errors import ConfigError, HwnasError
from supernet.space import SearchSpace, SubnetConfig, evenly_spaced_keep

__all__ = [
    "CONSTRAINT_KEY",
    "NSGA2Search",
    "OptunaSearch",
    "PicklableNSGAIISampler",
    "PicklableTPESampler",
    "TPESearch",
    "arch_attrs",
    "constraint_value",
    "decode",
    "distributions",
    "encode",
    "nsga2_sampler",
    "open_study",
    "quiet_optuna",
    "record_result",
    "suggest_config",
    "tpe_sampler",
]

CONSTRAINT_KEY = "latency_over_budget_ms"


# ---- encoding ----------------------------------------------------------------------------------
def _index(choices: tuple[Any, ...], value: float) -> int:
    return min(range(len(choices)), key=lambda j: abs(choices[j] - value))


def encode(space: SearchSpace, cfg: SubnetConfig) -> dict[str, Any]:
    """Optuna parameters for a valid configuration (skipped layers get index 0)."""
    space.validate(cfg)
    params: dict[str, Any] = {}
    for i in range(space.num_layers):
        if space.allow_skip:
            params[f"keep_{i}"] = cfg.keep[i]
        params[f"heads_{i}"] = space.head_choices.index(cfg.heads[i]) if cfg.keep[i] else 0
        params[f"ffn_{i}"] = space.ffn_choices.index(cfg.ffn[i]) if cfg.keep[i] else 0
        params[f"retention_{i}"] = _index(space.retention_choices, cfg.retention[i])
    if len(space.precision_choices) > 1:
        params["precision"] = cfg.precision
    return params


def decode(space: SearchSpace, params: dict[str, Any]) -> SubnetConfig:
    """The valid configuration for a set of parameters (repair rules in the module doc)."""
    n = space.num_layers
    keep = [bool(params[f"keep_{i}"]) if space.allow_skip else True for i in range(n)]
    for i, on in enumerate(evenly_spaced_keep(n, space.min_layers)):
        if sum(keep) >= space.min_layers:
            break
        keep[i] = keep[i] or on
    heads = tuple(space.head_choices[params[f"heads_{i}"]] if keep[i] else 0 for i in range(n))
    ffn = tuple(space.ffn_choices[params[f"ffn_{i}"]] if keep[i] else 0 for i in range(n))
    # The kept layers' retention values, sorted so that they never increase; a skipped layer
    # inherits its predecessor's (its own suggestion is ignored, like its heads).
    kept_r = iter(sorted((space.retention_choices[params[f"retention_{i}"]] for i in range(n) if keep[i]),
                         reverse=True))
    retention, prev = [], 1.0
    for i in range(n):
        prev = next(kept_r) if keep[i] else prev
        retention.append(prev)
    precision = params.get("precision", space.precision_choices[0])
    return space.validate(SubnetConfig(heads, ffn, tuple(keep), tuple(retention), precision))


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """Every parameter of the encoding with its Optuna distribution, in the order trials
    suggest them: the same for the Optuna searchers' trials and the trials ``record_result``
    writes for the other searchers, so that one study format serves every method."""
    dists: dict[str, BaseDistribution] = {}
    for i in range(space.num_layers):
        if space.allow_skip:
            dists[f"keep_{i}"] = CategoricalDistribution([True, False])
        dists[f"heads_{i}"] = IntDistribution(0, len(space.head_choices) - 1)
        dists[f"ffn_{i}"] = IntDistribution(0, len(space.ffn_choices) - 1)
        dists[f"retention_{i}"] = IntDistribution(0, len(space.retention_choices) - 1)
    if len(space.precision_choices) > 1:  # fp32-only studies keep the parameters they always had
        dists["precision"] = CategoricalDistribution(list(space.precision_choices))
    return dists


def suggest_config(trial: optuna.Trial, space: SearchSpace) -> SubnetConfig:
    """Suggest every parameter of the encoding (``distributions``) on ``trial`` and decode them."""
    params: dict[str, Any] = {}
    for key, dist in distributions(space).items():
        if isinstance(dist, CategoricalDistribution):
            params[key] = trial.suggest_categorical(key, list(dist.choices))
        else:
            assert isinstance(dist, IntDistribution)
            params[key] = trial.suggest_int(key, dist.low, dist.high)
    return decode(space, params)


def arch_attrs(cfg: SubnetConfig, lat: float, upper: float) -> dict[str, Any]:
    """A trial's user attributes for its sub-network and predicted latency."""
    return {"arch_json": cfg.to_json(), "arch": cfg.describe(), "lat_pred_ms": lat, "lat_upper_ms": upper}


# ---- what every Optuna-backed search shares (also nas.distributed) -------------------------------
@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's per-trial INFO lines for the duration of a search, then restore."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def _require_set_constraint() -> None:
    if not hasattr(optuna.trial.Trial, "set_constraint"):
        raise HwnasError(
            f"the Optuna searchers need optuna>=5.0 (Trial.set_constraint); found {optuna.__version__}: "
            "pip install -U 'optuna>=5'"
        )


def constraint_value(upper_ms: float, budget_ms: float) -> float:
    """The latency constraint told to Optuna: ``upper_ms - budget_ms``, feasible when <= 0.

    Optuna refuses NaN constraints; an unpredictable latency is simply infeasible (``inf``).
    """
    over = upper_ms - budget_ms
    return float("inf") if math.isnan(over) else over


# ---- samplers ----------------------------------------------------------------------------------
_LOCK_KINDS = {type(threading.Lock()): "Lock", type(threading.RLock()): "RLock"}


class _NewLocksWhenUnpickled:
    """Mixin for an Optuna sampler that must survive pickling.

    Ray Tune pickles its searcher, and the sampler with it, when the Tuner is made and at
    every searcher checkpoint. Optuna 5.1's GA samplers (NSGA-II) keep a ``threading.Lock``
    (``_thread_lock``, guarding their generation cache), and a lock cannot be pickled. A lock
    only orders the threads of one process, so a copy gets a new, unlocked one; everything
    else (the random generator, the cache) is copied, so an unpickled sampler suggests what
    the original would have. Only the sampler's own attributes are looked at.
    """

    def __getstate__(self) -> tuple[dict[str, Any], dict[str, str]]:
        locks = {name: _LOCK_KINDS[type(v)] for name, v in self.__dict__.items() if type(v) in _LOCK_KINDS}
        attrs = {name: v for name, v in self.__dict__.items() if name not in locks}
        return attrs, locks

    def __setstate__(self, state: tuple[dict[str, Any], dict[str, str]]) -> None:
        attrs, locks = state
        self.__dict__.update(attrs)
        for name, kind in locks.items():
            setattr(self, name, getattr(threading, kind)())


class PicklableTPESampler(_NewLocksWhenUnpickled, optuna.samplers.TPESampler):
    """``TPESampler`` that pickles (see ``_NewLocksWhenUnpickled``)."""


class PicklableNSGAIISampler(_NewLocksWhenUnpickled, optuna.samplers.NSGAIISampler):
    """``NSGAIISampler`` that pickles (see ``_NewLocksWhenUnpickled``)."""


# Optuna's GA samplers name the generation they store on each trial after their class
# ("NSGAIISampler:generation"), so the in-process searchers, whose studies can be resumed from
# a file, keep Optuna's own classes; only Ray Tune's in-memory studies get the picklable ones.
def tpe_sampler(seed: int, *, n_startup_trials: int = 10, picklable: bool = False) -> optuna.samplers.BaseSampler:
    """Seeded TPE, random for its first ``n_startup_trials`` trials; ``picklable`` for a
    sampler that Ray Tune can pickle."""
    cls = PicklableTPESampler if picklable else optuna.samplers.TPESampler
    return cls(seed=seed, n_startup_trials=n_startup_trials)


def nsga2_sampler(seed: int, n_evaluations: int, *, population_size: int | None = None,
                  picklable: bool = False) -> optuna.samplers.BaseSampler:
    """Seeded NSGA-II; ``population_size=None`` uses ``n_evaluations / 5`` (at least 8), since
    Optuna's default of 50 would leave a 60-evaluation search with about one generation;
    ``picklable`` for a sampler that Ray Tune can pickle."""
    pop = population_size or max(8, n_evaluations // 5)
    cls = PicklableNSGAIISampler if picklable else optuna.samplers.NSGAIISampler
    return cls(seed=seed, population_size=pop)


def open_study(
    storage: str | None,
    study_name: str | None,
    *,
    method: str,
    budget_ms: float | None,
    space: SearchSpace,
    multi_objective: bool,
    sampler: optuna.samplers.BaseSampler | None = None,
    study_attrs: dict[str, Any] | None = None,
) -> optuna.Study:
    """Create or open the named study of a search: objectives named (``acc_dev``, and
    ``lat_pred_ms`` when ``multi_objective``), ``study_attrs`` as user attributes, and what
    its trials mean (method, budget, space) stored once; a study created for another search
    is refused (``ConfigError``)."""
    directions = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE] if multi_objective else [StudyDirection.MAXIMIZE]
    study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler, directions=directions,
                                load_if_exists=True)
    # What the stored trials mean: resuming under another space, budget or method would
    # mix incomparable accuracies and constraints, so it is refused instead.
    meaning = {"method": method, "budget_ms": budget_ms, "space": space.to_dict()}
    stored = study.user_attrs.get("hwnas")
    if stored is None:
        study.set_user_attr("hwnas", meaning)
    elif stored != json.loads(json.dumps(meaning)):
        raise ConfigError(
            f"study {study.study_name!r} in {storage} was created for {stored}, not {meaning}; "
            "use a new study name (or storage) for a different search"
        )
    if study.metric_names is None:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still in 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["acc_dev", "lat_pred_ms"] if multi_objective else ["acc_dev"])
    for key, value in (study_attrs or {}).items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    return study


def record_result(
    result: SearchResult,
    space: SearchSpace,
    *,
    storage: str,
    study_name: str,
    study_attrs: dict[str, Any] | None = None,
) -> optuna.Study:
    """Write a search that does not run on Optuna (evolution, random, Ray Tune) into a named
    study, so that optuna-dashboard shows every method's searches alike.

    Each evaluated candidate becomes one completed trial, in evaluation order, with the
    encoding's parameters and distributions, its values (``acc_dev``; with ``lat_pred_ms`` for
    a whole-front search), the budget's constraint and the user attributes an Optuna
    searcher's trial has (status ``evaluated``). Candidates already in the study (a search run
    again, which the accuracy cache makes cheap) are not added twice; the study's
    ``n_rejected`` is the last search's count of candidates the budget turned away unevaluated.
    """
    budget_ms = result.budget_ms
    with quiet_optuna():
        study = open_study(storage, study_name, method=result.method, budget_ms=budget_ms, space=space,
                           multi_objective=budget_ms is None, study_attrs=study_attrs)
        stored = {SubnetConfig.from_dict(json.loads(t.user_attrs["arch_json"])).key()
                  for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if t.user_attrs.get("status") == "evaluated"}
        dists = distributions(space)
        study.add_trials([_completed_trial(c, space, dists, budget_ms)
                          for c in result.history if c.config.key() not in stored])
        study.set_user_attr("n_rejected", result.n_rejected)
    return study


def _completed_trial(cand: Candidate, space: SearchSpace, dists: dict[str, BaseDistribution],
                     budget_ms: float | None) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        params=encode(space, cand.config),
        distributions=dists,
        values=[cand.accuracy] if budget_ms is not None else [cand.accuracy, cand.latency_ms],
        user_attrs={**arch_attrs(cand.config, cand.latency_ms, cand.upper_ms), "acc_dev": cand.accuracy,
                    "status": "evaluated"},
        constraints=None if budget_ms is None else {CONSTRAINT_KEY: constraint_value(cand.upper_ms, budget_ms)},
    )


@dataclass
class OptunaSearch:
    """The search loop around an Optuna sampler: study, anchors, ask / tell, resuming.

    A subclass names itself, says whether it searches the whole front, and builds its sampler;
    everything else is shared. For instance, Optuna's random sampler as a searcher::

        @dataclass
        class OptunaRandomSearch(OptunaSearch):
            name: ClassVar[str] = "optuna-random"

            def sampler(self, seed: int, n_evaluations: int) -> optuna.samplers.BaseSampler:
                return optuna.samplers.RandomSampler(seed=seed)

    (plus its entry in ``nas.search.SEARCHERS``). ``multi_objective=False`` maximises
    accuracy alone (under the budget's constraint); ``True`` also minimises the predicted
    latency, for samplers that keep a front (NSGA-II).
    """

    name: ClassVar[str] = "optuna"
    multi_objective: ClassVar[bool] = False
    storage: str | None = None
    study_name: str | None = None
    trials_per_evaluation: int = 5
    infeasible_value: float = 0.0
    anchor: bool = True
    # Shown with the study (optuna-dashboard): what it searched for; not part of its meaning.
    study_attrs: dict[str, Any] | None = None

    def sampler(self, seed: int, n_evaluations: int) -> optuna.samplers.BaseSampler:
        """The seeded sampler of a search of ``n_evaluations`` evaluations."""
        raise NotImplementedError

    def _values(self, acc: float, lat: float) -> list[float]:
        return [acc, lat] if self.multi_objective else [acc]

    # -- the loop
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
        """Run (or resume) the study until ``n_evaluations`` configurations are evaluated."""
        check_search_args(budget_ms, n_evaluations)
        if self.trials_per_evaluation < 1:
            raise ConfigError(f"trials_per_evaluation must be >= 1, got {self.trials_per_evaluation}")
        _require_set_constraint()
        archive = Archive(accuracy, budget_ms, n_evaluations)
        if budget_ms is not None and fastest_reachable(space, latency) > budget_ms:
            return archive.result(self.name)
        with quiet_optuna():
            study = self._open_study(space, budget_ms, seed, n_evaluations)
            n_trials = self._replay(study, archive)
            if n_trials == 0 and self.anchor:
                for cfg in anchors(space, budget_ms, latency):
                    study.enqueue_trial(encode(space, cfg), skip_if_exists=True)
            max_trials = self.trials_per_evaluation * n_evaluations
            while not archive.full and n_trials < max_trials:
                self._one_trial(study, space, archive, latency, budget_ms)
                n_trials += 1
        return archive.result(self.name)

    def _open_study(
        self, space: SearchSpace, budget_ms: float | None, seed: int, n_evaluations: int
    ) -> optuna.Study:
        return open_study(self.storage, self.study_name, method=self.name, budget_ms=budget_ms, space=space,
                          multi_objective=self.multi_objective, sampler=self.sampler(seed, n_evaluations),
                          study_attrs=self.study_attrs)

    def _replay(self, study: optuna.Study, archive: Archive) -> int:
        """Rebuild the history from finished trials; returns how many trials are finished.

        A trial still RUNNING was left by a process killed mid-trial (``hwnas`` locks the run
        folder whose study this is, so no live process owns it): it is failed, and an anchor
        among them is queued again, so that a resumed search still evaluates every anchor."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            if "fixed_params" in t.system_attrs:
                study.enqueue_trial(t.system_attrs["fixed_params"])
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        for t in sorted(finished, key=lambda ft: ft.number):
            if archive.full:  # a study run further before (a larger --n): this search's first n only
                break
            attrs = t.user_attrs
            status = attrs.get("status") if t.state == TrialState.COMPLETE else None
            if status == "evaluated":
                cfg = SubnetConfig.from_dict(json.loads(attrs["arch_json"]))
                archive.record(cfg, attrs["acc_dev"], attrs["lat_pred_ms"], attrs["lat_upper_ms"])
            elif status == "rejected":
                archive.n_rejected += 1
        return len(finished)

    def _one_trial(
        self,
        study: optuna.Study,
        space: SearchSpace,
        archive: Archive,
        latency: LatencyModel,
        budget_ms: float | None,
    ) -> None:
        trial = study.ask()
        faults.hit("search.trial")
        try:
            cfg = suggest_config(trial, space)
            lat, upper = predict(latency, [cfg])[0]
            for key, value in arch_attrs(cfg, lat, upper).items():
                trial.set_user_attr(key, value)
            if budget_ms is not None:
                trial.set_constraint(CONSTRAINT_KEY, constraint_value(upper, budget_ms))
            if not is_feasible(upper, budget_ms):
                archive.n_rejected += 1
                trial.set_user_attr("status", "rejected")
                study.tell(trial, self._values(self.infeasible_value, lat))
                return
            known = cfg in archive
            cand = archive.evaluate(cfg, lat, upper)
            assert cand is not None, "the loop stops before the archive is full"
            acc = cand.accuracy
            trial.set_user_attr("acc_dev", acc)
            # Only the first trial of a configuration holds its evaluation; repeats are told
            # the same value but are not history (replay skips them).
            trial.set_user_attr("status", "duplicate" if known else "evaluated")
            study.tell(trial, self._values(acc, lat))
        except BaseException:
            # An interrupted or failing evaluation must not leave a RUNNING trial behind,
            # which a resumed TPE would avoid forever (constant liar).
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise


# ---- the searchers ---------------------------------------------------------------------------------
@dataclass
class TPESearch(OptunaSearch):
    """Tree-structured Parzen Estimator maximising accuracy under ``upper_ms <= budget_ms``.

    With ``budget_ms=None`` it maximises accuracy alone (use NSGA-II for a front).
    """

    name: ClassVar[str] = "tpe"
    n_startup_trials: int = 10

    def sampler(self, seed: int, n_evaluations: int) -> optuna.samplers.BaseSampler:
        return tpe_sampler(seed, n_startup_trials=self.n_startup_trials)


@dataclass
class NSGA2Search(OptunaSearch):
    """NSGA-II on two objectives: maximise accuracy, minimise predicted latency.

    Meant for ``budget_ms=None`` (the whole front); with a budget the latency constraint
    is added and NSGA-II's constrained domination keeps infeasible trials behind feasible
    ones. ``population_size=None``: see ``nsga2_sampler``.
    """

    name: ClassVar[str] = "nsga2"
    multi_objective: ClassVar[bool] = True
    population_size: int | None = None

    def sampler(self, seed: int, n_evaluations: int) -> optuna.samplers.BaseSampler:
        return nsga2_sampler(seed, n_evaluations, population_size=self.population_size)
