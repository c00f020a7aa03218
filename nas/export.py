"""Name a device and a budget, get the best sub-network: search, re-measure, export.

``choose_and_export`` is a short pipeline of named steps; each step is handed its latency
model and device timer and returns a value, so each can be tested with fakes:

1. ``resolve_budget``: the budget in ms (or the full model's latency, timed now, divided by
   a speed-up, which every later timing then judges as a speed-up: ``budget_now``), and the
   device's drift against its predictor. Three reference sub-networks
   are timed; a device that runs more than ``drift_tolerance`` slower or faster than
   predicted (a shared or throttled machine) has every prediction of the search scaled by
   the measured ratio.
2. ``run_search`` then ``rank_finalists``: the most accurate sub-networks whose *predicted
   upper bound* (prediction plus the predictor's safety margin) meets the budget, re-ranked
   on the whole dev split.
3. ``verify_on_device``: predictions can still be wrong on the day, so the finalists are
   **re-measured on the device**, interleaved with the full model; a finalist that misses
   the budget is passed over for the next one (a "step down"); when every finalist misses,
   the predictions are rescaled by the misses and the next most accurate candidates that
   would still fit are tried. The report lists every step.
   ``step_up``: when the chosen one leaves more than 10% of the budget unused, the search is
   run again with the safety margin shrunk to what was measured, and its more accurate
   candidates, with the chosen one's one-step-larger neighbours (``SearchSpace.grown``), are
   measured; the first that measures within 95% of the budget, and again in a second, longer
   timing of it alone, replaces it (twice at most, while more than 10% is still unused).
4. ``finetune_and_confirm``: optionally, the chosen sub-network and a few others
   (``finetune_pool``) are distilled from the teacher (``finetune_best``) and ranked on dev
   (``finetuned_order``); the best that meets the budget in one more timing (``confirm``) is
   exported. Without fine-tuning, ``confirm_pick`` does that last timing.
5. ``write_export``: the standalone model (PyTorch, Hugging Face), its ONNX graph with the
   config and tokenizer beside it, ``report.json`` and the model card (``README.md``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from latency.measure import DeviceTimer, Timer
from latency.onnx_export import int8_reduce_range
from latency.target import PredictedLatency, Target, device_drift, drift_references, open_timer
from nas.card import CARD_NAME, model_card
from nas.objectives import DevAccuracy
from nas.search import (
    Candidate,
    SearchResult,
    depth_seeds,
    evolution_settings,
    fastest_reachable,
    is_feasible,
    make_searcher,
    method_label,
    predict,
    uniform_grid,
)
from supernet import faults
from supernet.checks import check_number
from supernet.cost import subnet_flops, subnet_params
from supernet.errors import ConfigError, HwnasError
from supernet.extract import needs_remote_code
from supernet.io import write_csv, write_json, write_text
from supernet.space import SearchSpace, SubnetConfig
from supernet.train import (
    StageConfig,
    distill_split,
    finetune_folder,
    finetune_subnet,
    held_out_loss,
    selected_epoch,
    teacher_logits,
)
from supernet.workflow import (
    LoadedRun,
    check_unlabeled,
    distill_teacher,
    teacher_path,
    tokenizer_as_trained,
    with_augmented,
    with_unlabeled,
)

if TYPE_CHECKING:
    import torch

    from nas.search import LatencyModel
    from supernet.data import Encoded
    from supernet.model import ElasticBert


class ImpossibleBudget(HwnasError):
    """No sub-network can meet the budget on that device."""


class DevScore(Protocol):
    """What the steps need of an accuracy model: the whole-dev score of a configuration."""

    def full_dev(self, cfg: SubnetConfig) -> float: ...


# How the fine-tuned candidates are ranked (``finetuned_order``): "dev-score", the task's metric
# on dev as deployed; "dev-loss", the fine-tuning's own loss on dev (distillation from the
# teacher's logits plus cross-entropy on the labels) as deployed.
FINETUNE_CHOICES = ("dev-score", "dev-loss")


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how: a budget in ms, or a ``speedup`` over the full model timed on
    the device now (exactly one of the two), the search, the re-measurement and the
    fine-tuning. ``drift_tolerance`` None skips the drift check."""

    budget_ms: float | None = None
    speedup: float | None = None
    method: str = "evolution"
    screen: int | None = None  # the evolution's children per evaluation (None: its default; ``EvolutionSearch``)
    n_evaluations: int = 150
    finalists: int = 5
    seed: int = 0
    finetune: StageConfig | None = None
    finetune_candidates: int = 3
    # Keep each fine-tuning's epoch with the lowest distillation loss on dev (``BestEpoch``),
    # not its last: the epochs are then a maximum.
    finetune_best_epoch: bool = False
    # How the fine-tuned candidates are ranked, the best exported (``FINETUNE_CHOICES``).
    finetune_choose: str = "dev-score"
    # Distil on the train split plus this many of the task's unlabeled texts when fine-tuning
    # (None: as the run was trained, ``TrainConfig.unlabeled``).
    finetune_unlabeled: int | None = None
    # And this many word-replaced copies of each train example (``supernet.augment``; 0: none).
    finetune_augment: int = 0
    # Weight of attention distillation in the fine-tuning (``supernet.train.attention_loss``; 0: off).
    finetune_attention: float = 0.0
    drift_tolerance: float | None = 0.10
    rounds: int = 3  # interleaved re-measurement rounds
    # Below this share of the budget used when re-measured, search again with the predictor's
    # margin shrunk to what was measured and try the more accurate candidates (measured).
    step_up_below: float | None = 0.9
    baselines: bool = True  # time the stock model (fp32, ORT-optimized, INT8) beside the export
    progress: bool = True
    train_device: str = "cpu"  # where the fine-tuning runs: cpu or cuda (``resolve_train_device``)

    def __post_init__(self) -> None:
        if (self.budget_ms is None) == (self.speedup is None):
            raise ConfigError("an export takes a budget in ms or a speed-up target, not both or neither")
        if self.speedup is not None and not self.speedup > 0:
            raise ConfigError(f"a speed-up target must be positive, got {self.speedup:g}")
        if self.budget_ms is not None and not (self.budget_ms > 0 and math.isfinite(self.budget_ms)):
            raise ConfigError(f"a budget must be a positive number of ms, got {self.budget_ms:g}")
        evolution_settings(self.method, self.screen)  # a screen for another method is refused here
        if self.step_up_below is not None and not 0 < self.step_up_below <= 1:
            raise ConfigError(f"step_up_below must lie in (0, 1], got {self.step_up_below:g}")
        if self.finetune_unlabeled is not None and self.finetune_unlabeled < 0:
            raise ConfigError(f"finetune_unlabeled must be >= 0 texts, got {self.finetune_unlabeled}")
        if not (isinstance(self.finetune_augment, int) and self.finetune_augment >= 0):
            raise ConfigError(f"finetune_augment must be a whole number of copies >= 0, got {self.finetune_augment!r}")
        check_number(self.finetune_attention, "finetune_attention", 0.0)  # a loss weight
        if self.finetune_choose not in FINETUNE_CHOICES:
            raise ConfigError(f"finetune_choose must be one of {', '.join(FINETUNE_CHOICES)}, "
                              f"got {self.finetune_choose!r}")
        if self.finalists < 1 or self.finetune_candidates < 1 or self.rounds < 1:
            raise ConfigError(f"finalists, fine-tuning candidates and rounds must be >= 1, got {self.finalists}, "
                              f"{self.finetune_candidates} and {self.rounds}")


# --- 1. the budget and the device's drift -------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    ms: float
    source: dict[str, float] | None  # a speed-up target: the full model's latency it divided
    drift: dict[str, Any] | None  # measured / predicted before the search; the search's scale
    scale: float  # what the search multiplies its predictions by (1.0: none)

    @property
    def relative_to(self) -> float | None:
        """A speed-up's budget: the full model's latency it divided (``budget_now``); None
        for a budget in ms."""
        return self.source["full_model_ms"] if self.source else None


def budget_now(budget_ms: float, full_ms: float, relative_to: float | None) -> float:
    """The budget in the ms of one timing, where the full model measured ``full_ms``. A budget in
    ms stays put. A speed-up's budget (``relative_to``: the full model's latency it divided) is
    a speed-up: it moves with the full model timed in the same timing, so a machine that runs
    slower that minute than when the budget was set (on this VM 1.2x within one export, the
    fine-tunings between its timings) does not turn a pick that keeps its speed-up into a miss.
    Without a finite ``full_ms`` it stays put too."""
    if relative_to is None or not math.isfinite(full_ms) or full_ms <= 0:
        return budget_ms
    return budget_ms * full_ms / relative_to


def resolve_budget(cfg: ExportConfig, latency: PredictedLatency, timer: Timer | None,
                   references: list[SubnetConfig], *, device: str = "the device") -> Budget:
    """The budget in ms and the search's latency scale. ``timer`` None: the device is not on
    this machine (a kit device), so nothing is timed and a speed-up cannot be resolved.

    A speed-up's budget divides the full model's latency timed here, in at least
    ``FRESH_ROUNDS`` rounds: everything the export does after is sized by this one figure, and
    on a shared CPU a 3-round median can land far off (r8 at 4.5x on 2026-12-05: the full model
    at 15.38 ms here, 11.08 ms in the export's last timing and 11.03 ms at the budget sweep's
    start minutes later, so the search aimed at about 3.2x)."""
    drift: dict[str, Any] | None = None
    if cfg.drift_tolerance is not None or cfg.speedup is not None:
        if timer is not None:
            rounds = max(FRESH_ROUNDS, cfg.rounds) if cfg.speedup is not None else cfg.rounds
            drift = device_drift(timer, latency, references, rounds=rounds)
        elif cfg.speedup is not None:
            raise ConfigError(f"a speed-up target times the full model on {device}, which is not on this machine; "
                              "give a budget in ms instead")
    source: dict[str, float] | None = None
    budget_ms = cfg.budget_ms
    if cfg.speedup is not None:
        assert drift is not None
        full_now = drift["measured_ms"][0]
        budget_ms = round(full_now / cfg.speedup, 3)
        source = {"speedup": cfg.speedup, "full_model_ms": full_now}
        if cfg.drift_tolerance is None:
            drift = None  # timed for the budget only; no check asked for
    assert budget_ms is not None
    scale = drift["ratio"] if drift is not None and abs(drift["ratio"] - 1) > (cfg.drift_tolerance or 0.0) else 1.0
    if drift is not None:
        drift["scale_applied"] = scale
    return Budget(budget_ms, source, drift, scale)


# --- 2. search and finalists --------------------------------------------------------------------

def run_search(
    run: LoadedRun,
    target: Target,
    budget_ms: float | None,
    *,
    latency: PredictedLatency | None = None,
    method: str = "evolution",
    n_evaluations: int = 150,
    seed: int = 0,
    accuracy: DevAccuracy | None = None,
    searcher_kwargs: dict[str, Any] | None = None,
) -> tuple[SearchResult, float]:
    """One search on the run; returns the result and its wall time (the caller writes the
    history: ``search_history``). ``latency``: the device's predictor at the target's shape
    (default: loaded from the run), scaled by a measured drift where one was applied. Every
    method's search is also a named Optuna study in the run (``search_study``): tpe / nsga2
    keep theirs as they go (and resume from it); the others' evaluated candidates are written
    into one when they end (``nas.optuna_search.record_result``), for optuna-dashboard."""
    latency = latency or PredictedLatency.of(run.folder, target)
    space = target.search_space(run.space)  # at the precisions the device runs
    if budget_ms is not None:
        fastest = fastest_reachable(space, latency)
        if budget_ms < fastest:
            raise ImpossibleBudget(
                f"a budget of {budget_ms:g} ms cannot be met on {target.profile.name} ({target.describe()}): "
                f"the fastest reachable sub-network is predicted at {fastest:.2f} ms "
                "(upper bound with the safety margin"
                + (f", scaled by {latency.scale:.2f} for the device's measured drift" if latency.scale != 1.0 else "")
                + "); raise the budget to at least that"
            )
    accuracy = accuracy or DevAccuracy(run, batch=target.batch)
    check_int8_batch(accuracy, target)
    kwargs = dict(searcher_kwargs or {})
    storage, name, attrs = search_study(run, target, budget_ms, latency, method_label(method, kwargs), seed, accuracy)
    optuna_native = method in ("tpe", "nsga2")  # the study is their state: they write it as they go
    if optuna_native:
        kwargs.setdefault("storage", storage)
        kwargs.setdefault("study_name", name)
        kwargs.setdefault("study_attrs", attrs)
    searcher = make_searcher(method, **kwargs)
    if method == "evolution":
        attrs["screen"] = getattr(searcher, "screen", None)
    t0 = time.time()
    result = searcher.search(space, accuracy, latency, budget_ms=budget_ms, n_evaluations=n_evaluations, seed=seed)
    wall = time.time() - t0
    if not optuna_native:
        from nas.optuna_search import record_result

        record_result(result, space, storage=storage, study_name=name, study_attrs=attrs)
    return result, wall


def check_int8_batch(accuracy: DevAccuracy, target: Target) -> None:
    """Where ``target`` runs int8, ``accuracy`` must score int8 sub-networks at the batch it
    serves: a dynamically quantized graph's predictions depend on its batch."""
    if "int8" in target.profile.precisions and accuracy.batch != target.batch:
        raise ConfigError(f"the accuracy model scores int8 sub-networks at batch {accuracy.batch}, but "
                          f"{target.profile.name} serves batch {target.batch}: give it "
                          f"DevAccuracy(run, batch={target.batch})")


def search_study(run: LoadedRun, target: Target, budget_ms: float | None, latency: PredictedLatency, method: str,
                 seed: int, accuracy: DevAccuracy) -> tuple[str, str, dict[str, Any]]:
    """Where a search's Optuna study lives, its name and its user attributes (every method's:
    optuna-dashboard shows them all). The name holds all that the stored values depend on:
    device, budget, method, latency target, seed, dev subset (and the batch int8 graphs are
    scored at, where the device runs int8), predictor, drift scale."""
    paths = run.paths
    paths.search.mkdir(parents=True, exist_ok=True)  # the study's own storage
    # The study's stored values are only valid for this predictor and this dev subset.
    predictor = paths.predictor(target.profile.name, target.regime, target.stat)  # the one the search predicts with
    fingerprint = hashlib.sha1(predictor.read_bytes()).hexdigest()[:8] if predictor.exists() else "none"
    scaled = "" if latency.scale == 1.0 else f"-x{latency.scale:.4g}"
    b = "front" if budget_ms is None else f"{budget_ms:g}ms"
    shape = f"L{target.length}" if target.regime == "fixed" else f"traffic{target.length}"
    stat = "" if target.stat == "p50" else f"-{target.stat}"
    int8 = f"-int8{accuracy.graph_key}" if "int8" in target.profile.precisions else ""  # b1, or b1r7: 7-bit weights
    name = (f"{target.profile.name}-{b}{stat}-{method}-{shape}-s{seed}-{accuracy.search_split}{int8}-p{fingerprint}"
            f"{scaled}")
    attrs = {"run": str(run.folder), "device": target.profile.name, "budget_ms": budget_ms,
             "latency": target.describe(), "metric": accuracy.metric, "accuracy_on": accuracy.search_split,
             "int8_scored_batch": accuracy.batch if int8 else None}
    return paths.optuna_storage, name, attrs


def write_search_history(run: LoadedRun, result: SearchResult, target: Target, budget_ms: float | None, method: str,
                         settings: dict[str, Any] | None = None) -> Path:
    """Write a search's history (``RUN/search/``): a file per device, budget, method label
    (``method_label`` of ``method`` and its searcher ``settings``) and latency target, so that a
    p90 or fixed-length search does not overwrite the p50 one on real traffic
    (``cpu_5ms_evolution-p90.csv``, ``cpu_5ms_evolution-L128.csv``); returns its path."""
    label = method_label(method, settings)
    stat = "" if target.stat == "p50" else f"-{target.stat}"
    shape = "" if target.regime == "traffic" else f"-L{target.length}"
    frame = result.frame()
    frame.insert(0, "method", label)
    frame.insert(0, "device", target.profile.name)
    frame["budget_ms"] = budget_ms
    frame["length"], frame["batch"] = target.length, target.batch
    frame["regime"], frame["budget_stat"] = target.regime, target.stat
    path = run.paths.search_history(target.profile.name, budget_ms, f"{label}{stat}{shape}")
    write_csv(path, frame)
    return path


def rank_finalists(result: SearchResult, accuracy: DevScore, k: int) -> list[Candidate]:
    """The ``k`` most accurate feasible candidates of the search (on its dev subset),
    re-ranked on the whole dev split."""
    return best_on_whole_dev([c for c in result.history if c.feasible], accuracy, k)


def best_on_whole_dev(candidates: Iterable[Candidate], accuracy: DevScore, k: int) -> list[Candidate]:
    """The ``k`` most accurate of ``candidates`` on the search's dev subset, re-ranked on the
    whole dev split (scoring only those ``k`` on it)."""
    top = sorted(candidates, key=lambda c: -c.accuracy)[: max(1, k)]
    return sorted(top, key=lambda c: -accuracy.full_dev(c.config))


# --- 3. re-measure on the device, step down -----------------------------------------------------

@dataclass(frozen=True)
class Verified:
    chosen: Candidate
    measured_ms: float  # nan when the device is not on this machine
    full_ms: float
    steps: list[dict[str, Any]]
    # The other measured sub-networks that met the budget, best on dev first, with their
    # measured ms: what ``confirm`` falls back on.
    alternatives: tuple[tuple[Candidate, float], ...] = ()
    # Each search the step up ran (``step_up``): its scale, how many of its candidates it
    # considered, how many beat the chosen on the whole dev split (those are timed) and what it
    # stepped up to (None: nothing). A search with nothing better times nothing, so ``steps``
    # alone cannot say it ran.
    step_up_searches: tuple[dict[str, Any], ...] = ()

    @property
    def measured(self) -> bool:
        return not math.isnan(self.measured_ms)


def verify_on_device(ranked: list[Candidate], history: list[Candidate], budget_ms: float, timer: Timer | None,
                     accuracy: DevScore, *, finalists: int = 5, rounds: int = 3, device: str = "the device",
                     relative_to: float | None = None) -> Verified:
    """The first of ``ranked`` (best first) that meets the budget when re-measured. When all
    miss, the search's other candidates (``history``) are rescaled by the worst miss's
    measured / predicted ratio and the ``finalists`` most accurate that would still fit are
    tried. ``timer`` None (a kit device): the best by prediction, unmeasured. ``relative_to``:
    a speed-up's budget, judged as one in each timing (``budget_now``)."""
    if not ranked:
        raise ImpossibleBudget(f"the search found no sub-network under {budget_ms:g} ms on {device}")
    steps: list[dict[str, Any]] = []
    if timer is None:
        steps.append(_step(ranked[0], float("nan"), None, accuracy))
        return Verified(ranked[0], float("nan"), float("nan"), steps)
    got = timer.measure([c.config for c in ranked], rounds=rounds)
    full_ms, limit = got.full_ms, budget_now(budget_ms, got.full_ms, relative_to)
    chosen, chosen_ms = _step_down(ranked, got.ms, limit, steps, accuracy)
    met = [(c, ms) for c, ms in zip(ranked, got.ms, strict=True) if ms <= limit]
    if chosen is None:
        # Every finalist missed: the device is slower today than the predictor thinks.
        slow = max(s["measured_ms"] / s["predicted_ms"] for s in steps)
        tried = {c.config.key() for c in ranked}
        rest = best_on_whole_dev((c for c in history if c.config.key() not in tried and c.latency_ms * slow <= limit),
                                 accuracy, finalists)  # ranked as the first finalists were
        if rest:
            again = timer.measure([c.config for c in rest], rounds=rounds)
            full_ms, limit = again.full_ms, budget_now(budget_ms, again.full_ms, relative_to)
            chosen, chosen_ms = _step_down(rest, again.ms, limit, steps, accuracy)
            met = [(c, ms) for c, ms in zip(rest, again.ms, strict=True) if ms <= limit]
    if chosen is None:
        raise ImpossibleBudget(
            f"none of the {len(steps)} finalists met {limit:g} ms when re-measured on {device} "
            f"(measured {', '.join(format(s['measured_ms'], '.2f') for s in steps)} ms; the full model measured "
            f"{full_ms:.2f} ms): raise the budget or re-measure with `hwnas measure` and refit"
        )
    return Verified(chosen, chosen_ms, full_ms, steps, tuple((c, ms) for c, ms in met if c is not chosen))


# Rounds of a timing that a choice rests on (a step up's second look, the timings just before
# writing): more than a search's few, since nothing checks it again afterwards.
FRESH_ROUNDS = 5


def step_up(verified: Verified, budget_ms: float, relaxed_search: Callable[[float], list[Candidate]],
            timer: Timer | None, accuracy: DevScore, *, below: float = 0.9, finalists: int = 5,
            rounds: int = 3, tries: int = 2, headroom: float = 0.95, relative_to: float | None = None,
            grow: Callable[[SubnetConfig, float], list[Candidate]] | None = None) -> Verified:
    """Use the whole budget. When the chosen sub-network measured under ``below`` of the
    budget, the predictor's safety margin kept larger ones out: ``relaxed_search(scale)``
    searches again with every prediction multiplied by ``scale`` (the chosen's measured / upper
    bound), and its ``finalists`` most accurate candidates that beat the chosen on the whole dev
    split are measured, best first; the first that measures within ``headroom`` of the budget
    replaces the chosen. Up to ``tries`` times while the chosen still leaves more than
    ``1 - below`` of the budget unused (the next search's scale from the new chosen's
    measurement), stopping when a try finds nothing better that fits or the chosen measured at
    or above its upper bound (nothing to relax). A step up goes to the
    edge of the budget, where the next timing can land over it (repeats of one sub-network
    spread by about 10% on a shared CPU): hence the ``headroom``; and the first of several near
    the edge to fit is often the one whose timing happened to be lowest, so it is timed again
    alone in at least 5 fresh rounds and taken only if that timing fits too (its latency: the
    higher of the two). One chosen sub-network's measurement is a poor guide for others: a
    token-dropping pick that measures at half its upper bound makes wide, full-length
    sub-networks look as if they fit too (the main job of 2026-12-06: scale 0.47, five
    candidates measured 1.3x-1.7x their scaled bounds). So a try whose candidates all missed
    searches again, while tries remain, under the scale they measured at (its scale times
    the median of their measured / upper bound), when that is higher than its own and below 1.
    ``grow(config, scale)``: the chosen's one-step-larger neighbours (``SearchSpace.grown``)
    predicted under ``scale``; those that fit and beat it on the whole dev split join the
    candidates (up to ``finalists`` of them, best on dev first). A search of half the
    evaluations rarely lands just above the pick, and its most accurate few were often no
    better on dev than the pick that beat them in the first search (the main job of
    2026-12-07: 5 candidates, none better, the pick at 66% of the budget); a neighbour holds
    the pick inside it. They are tried even when the pick measured at or over its upper bound
    (no search then): predicted under that measured scale, they are what still fits.
    Never on a prediction alone: off the device (``timer`` None) nothing changes. ``relative_to``:
    a speed-up's budget, judged as one in each timing (``budget_now``)."""
    base = 1.0  # the scale the chosen's predictions were made under (relative to the first search's)
    retry: float | None = None  # the scale the last try's candidates measured at, when all missed
    for _ in range(max(1, tries)):
        before = verified
        verified, base, retry = _step_up_once(verified, budget_ms, relaxed_search, timer, accuracy, below=below,
                                              finalists=finalists, rounds=rounds, base=base, headroom=headroom,
                                              scale=retry, relative_to=relative_to, grow=grow)
        if verified.chosen is before.chosen and retry is None:
            break
    return verified


def _step_up_once(verified: Verified, budget_ms: float, relaxed_search: Callable[[float], list[Candidate]],
                  timer: Timer | None, accuracy: DevScore, *, below: float, finalists: int, rounds: int,
                  base: float, headroom: float, scale: float | None = None, relative_to: float | None = None,
                  grow: Callable[[SubnetConfig, float], list[Candidate]] | None = None
                  ) -> tuple[Verified, float, float | None]:
    """One try of ``step_up``, under ``scale`` if given (else the chosen's measured / upper
    bound, times ``base``); returns the result, the scale the chosen's predictions are now
    under, and the scale to search under again when every candidate measured missed (None:
    stop)."""
    chosen = verified.chosen
    if (timer is None or not verified.measured
            or verified.measured_ms >= below * budget_now(budget_ms, verified.full_ms, relative_to)):
        return verified, base, None
    # Measured at or above its own upper bound, the margin kept nothing out: a search under a
    # scale above 1 relaxes nothing and can find even the smallest sub-network over the budget.
    # (Both in the ms of the timing the budget was set in, as the scale below.)
    relaxable = verified.measured_ms * _as_budget_set(budget_ms, verified.full_ms, relative_to) < chosen.upper_ms
    if not relaxable and grow is None:
        return verified, base, None
    # In the ms of the timing the budget was set in: a speed-up's timing on a machine 1.2x slower
    # that minute measures everything 1.2x longer, and the relaxed search judges against budget_ms.
    scale = scale if scale is not None else (base * verified.measured_ms / chosen.upper_ms
                                             * _as_budget_set(budget_ms, verified.full_ms, relative_to))
    tried = {s["arch_key"] for s in verified.steps}
    floor = accuracy.full_dev(chosen.config)
    pool = sorted((c for c in (relaxed_search(scale) if relaxable else []) if c.feasible and c.config.key() not in tried),
                  key=lambda c: -c.accuracy)[: max(1, finalists)]
    seen = tried | {c.config.key() for c in pool}
    grown = [c for c in (grow(chosen.config, scale) if grow is not None else [])
             if c.feasible and c.config.key() not in seen and accuracy.full_dev(c.config) > floor]
    grown = sorted(grown, key=lambda c: -accuracy.full_dev(c.config))[: max(1, finalists)]
    better = sorted([*(c for c in pool if accuracy.full_dev(c.config) > floor), *grown],
                    key=lambda c: -accuracy.full_dev(c.config))

    def searches(stepped_up_to: str | None = None) -> tuple[dict[str, Any], ...]:
        """The step up's searches so far, this one's record last (``grown``: the chosen's
        neighbours that fit and beat it on dev; ``searched``: False when only those were tried)."""
        return (*verified.step_up_searches, {"scale": scale, "candidates": len(pool), "better_on_dev": len(better),
                                             "grown": len(grown), "searched": relaxable,
                                             "stepped_up_to": stepped_up_to})

    if not better:
        return replace(verified, step_up_searches=searches()), base, None
    got = timer.measure([c.config for c in better], rounds=rounds)
    steps = list(verified.steps)
    limit = budget_now(budget_ms, got.full_ms, relative_to)
    edge = headroom * limit
    for i, (cand, ms) in enumerate(zip(better, got.ms, strict=True)):
        step = {**_step(cand, ms, ms <= limit, accuracy, limit), "step": "up", "scale": scale, "taken": False}
        steps.append(step)
        if ms > edge:
            continue
        # Of several candidates near the edge, the one that timed luckiest fits first (the
        # winner's curse): a second, longer timing of it alone must fit too.
        again = timer.measure([cand.config], rounds=max(FRESH_ROUNDS, rounds))
        step["recheck_ms"] = again.ms[0]
        if again.ms[0] > headroom * budget_now(budget_ms, again.full_ms, relative_to):
            continue
        step["taken"] = True
        ms = max(ms, again.ms[0])
        # Fall-backs: the less accurate step-ups that also fit, the old pick and its own.
        fits = [(c, m) for c, m in zip(better[i + 1:], got.ms[i + 1:], strict=True) if m <= edge]
        rest = sorted([*fits, (chosen, verified.measured_ms), *verified.alternatives],
                      key=lambda cm: -accuracy.full_dev(cm[0].config))
        return Verified(cand, ms, again.full_ms, steps, tuple(rest), searches(cand.config.describe())), scale, None
    # None fitted: the scale these candidates measured at, if it says the predictions were optimistic.
    measured_at = scale * float(np.median([ms / c.upper_ms for c, ms in zip(better, got.ms, strict=True)])) \
        * _as_budget_set(budget_ms, got.full_ms, relative_to)
    retry = measured_at if scale < measured_at < 1.0 else None
    return replace(verified, steps=steps, step_up_searches=searches()), base, retry


def _as_budget_set(budget_ms: float, full_ms: float, relative_to: float | None) -> float:
    """The factor that turns ms of a timing whose full model measured ``full_ms`` into ms of
    the timing the budget was set in: 1 for a budget in ms, else the full model's then / now."""
    return budget_ms / budget_now(budget_ms, full_ms, relative_to)


@dataclass(frozen=True)
class Confirmed:
    index: int  # into the options: the first whose median met the budget (0 when none did)
    measured_ms: float  # that option's latency in this timing (off the device: as given in the options)
    full_ms: float
    met: bool  # False: nothing met the budget this time, and the pick stands on its earlier timing
    steps: list[dict[str, Any]]


def confirm(options: list[tuple[Candidate, float]], budget_ms: float, timer: Timer | None, accuracy: DevScore,
            *, rounds: int = FRESH_ROUNDS, at_most: int = 4, dev: list[float] | None = None,
            relative_to: float | None = None) -> Confirmed:
    """Time the pick once more just before it is written. ``options``: sub-networks that met
    the budget when measured (with that ms), the pick first, then its fall-backs, best first.
    The first ``at_most`` are timed again in ``rounds`` fresh interleaved rounds with the full
    model, and the first whose median meets the budget is the one to write; its latency and
    the full model's come from this timing. A pick measured near the budget can land over it
    at the next timing (on a shared CPU one sub-network's timings minutes apart differ by 10%
    and at times by 40%): this is the timing the export's report quotes, so it is the one the
    budget is checked on. When none meets it, the machine is slower now than when the pick was
    measured: the pick stands, recorded as not met (``met`` False). Off the device (``timer``
    None) nothing is timed. ``dev``: each option's dev score for the records (default: the
    supernet weights'). ``relative_to``: a speed-up's budget, judged as one (``budget_now``):
    the option keeps its speed-up against the full model timed with it. This timing comes
    after any fine-tuning, often 20 minutes or more after the budget was set: rt at 4x on
    2026-12-07 timed the full model at 6.30 ms for the budget and 7.70 ms here, and judged in
    ms the better of two fine-tuned sub-networks (4.39x in this timing) missed and a 2-layer
    fall-back 2 points lower on test was written."""
    if timer is None or not options or math.isnan(options[0][1]):
        return Confirmed(0, options[0][1] if options else math.nan, math.nan, True, [])
    opts = options[: max(1, at_most)]
    got = timer.measure([c.config for c, _ in opts], rounds=rounds)
    limit = budget_now(budget_ms, got.full_ms, relative_to)
    steps = []
    for i, ((cand, before), ms) in enumerate(zip(opts, got.ms, strict=True)):
        step = {**_step(cand, ms, ms <= limit, accuracy, limit), "step": "confirm", "measured_before_ms": before}
        if dev is not None:
            step["acc_dev"] = dev[i]
        steps.append(step)
    index = next((i for i, ms in enumerate(got.ms) if ms <= limit), None)
    if index is None:
        return Confirmed(0, got.ms[0], got.full_ms, False, steps)
    for i, step in enumerate(steps):
        step["taken"] = i == index
    return Confirmed(index, got.ms[index], got.full_ms, True, steps)


def _step(cand: Candidate, ms: float, ok: bool | None, accuracy: DevScore,
          limit: float | None = None) -> dict[str, Any]:
    """One timing's record; ``limit``: the budget it was judged against (``budget_now``)."""
    step = {"arch_key": cand.config.key(), "arch": cand.config.describe(), "predicted_ms": cand.latency_ms,
            "upper_ms": cand.upper_ms, "measured_ms": ms, "acc_dev": accuracy.full_dev(cand.config),
            "meets_budget": ok, "step": "down"}
    return step if limit is None else {**step, "budget_now_ms": limit}


def _step_down(cands: list[Candidate], measured: list[float], limit: float, steps: list[dict[str, Any]],
               accuracy: DevScore) -> tuple[Candidate | None, float]:
    """The first candidate (best first) whose measured latency meets the budget (``limit``: in
    this timing's ms, ``budget_now``)."""
    for cand, ms in zip(cands, measured, strict=True):
        steps.append(_step(cand, ms, ms <= limit, accuracy, limit))
        if ms <= limit:
            return cand, ms
    return None, float("nan")


# --- 4. fine-tuning -----------------------------------------------------------------------------

# Uniform sub-networks predicted at up to this multiple of the budget are timed for the fine-tuning
# pool (``measured_seeds``): the predictor's margin is sized for its worst errors (rt, cpu: the
# 4-layer, 3-head sub-network predicted 1.82 ms, upper bound 2.93 ms, measured 1.67 ms).
SEED_STRETCH = 1.25


def measured_seeds(space: SearchSpace, latency: LatencyModel, budget_ms: float, timer: Timer | None,
                   accuracy: DevScore, *, deeper_than: int, rounds: int = 3,
                   stretch: float = SEED_STRETCH, relative_to: float | None = None) -> list[Candidate]:
    """Deep, narrow sub-networks that the predictor's margin left out but that meet the budget
    when timed: the uniform sub-networks at full retention deeper than ``deeper_than`` layers
    whose prediction (not its upper bound) is within ``stretch`` times the budget, timed on the
    device; per depth the widest that measures under the budget, deepest first (none without a
    timer on this machine). Fine-tuning recovers deep, narrow sub-networks the most.
    ``relative_to``: a speed-up's budget, judged as one in this timing (``budget_now``)."""
    if timer is None:
        return []
    grid = [(slot, c) for slot, c in uniform_grid(space, retentions=(1.0,)) if slot[0] > deeper_than]
    near = [(slot, c) for (slot, c), (ms, _) in zip(grid, predict(latency, [c for _, c in grid]), strict=True)
            if ms <= stretch * budget_ms]
    if not near:
        return []
    got = timer.measure([c for _, c in near], rounds=rounds)
    limit = budget_now(budget_ms, got.full_ms, relative_to)
    best: dict[tuple[int, str], tuple[SubnetConfig, float]] = {}
    for (slot, cfg), ms in zip(near, got.ms, strict=True):  # widest first within a depth
        if ms <= limit and slot not in best:
            best[slot] = (cfg, ms)
    return [Candidate(cfg, accuracy.full_dev(cfg), ms, ms, True) for _, (cfg, ms) in sorted(best.items(), reverse=True)]


def finetune_pool(history: list[Candidate], chosen: Candidate, seed_keys: list[str], k: int,
                  measured: list[Candidate] | None = None) -> list[Candidate]:
    """At most ``k`` candidates to fine-tune beside ``chosen``, none twice: the deepest of the
    depth seeds (``depth_seeds``: the widest uniform sub-network that fits, at full retention
    where one fits) that the search evaluated as feasible and of ``measured`` (``measured_seeds``),
    then ``other_depths``."""
    first = seed_candidates(history, seed_keys, measured)[:1]
    out: dict[str, Candidate] = {}
    for c in [*first, *other_depths(history, chosen, k)]:
        if c.config.key() != chosen.config.key():
            out.setdefault(c.config.key(), c)
    return list(out.values())[: max(0, k)]


def seed_candidates(history: list[Candidate], seed_keys: list[str],
                    measured: list[Candidate] | None = None) -> list[Candidate]:
    """The depth seeds the search evaluated as feasible and those of ``measured``
    (``measured_seeds``), deepest first (at equal depth, the search's before the measured)."""
    feasible = {c.config.key(): c for c in history if c.feasible}
    seeds = [feasible[k_] for k_ in seed_keys if k_ in feasible] + list(measured or [])
    return sorted(seeds, key=lambda c: -len(c.config.kept_layers))


def other_depths(history: list[Candidate], chosen: Candidate, k: int) -> list[Candidate]:
    """The most accurate feasible candidate of each of the ``k`` deepest depths other than
    ``chosen``'s, deepest first."""
    best: dict[int, Candidate] = {}
    depth = len(chosen.config.kept_layers)
    for c in sorted((c for c in history if c.feasible), key=lambda c: -c.accuracy):
        best.setdefault(len(c.config.kept_layers), c)
    return [best[d] for d in sorted(best, reverse=True) if d != depth][: max(0, k)]


def measured_pool(verified: Verified, extra: list[Candidate], budget_ms: float, timer: Timer | None,
                  *, rounds: int = 3, backups: list[Candidate] | None = None,
                  log: list[dict[str, Any]] | None = None, relative_to: float | None = None
                  ) -> list[tuple[Candidate, float]]:
    """The chosen sub-network and those of ``extra`` that meet the budget when re-measured
    (all of them, unmeasured, when the device is not on this machine). Each of ``extra`` that
    misses gives its place to the next of ``backups`` (timed in the same call, in order; those
    already in the pool skipped) that meets it: a seed timed just under the budget can miss
    in the next timing, and the pool should still hold as many candidates as asked for.
    ``log`` receives one row per sub-network timed (arch, measured ms, ``backup``, ``pooled``).
    ``relative_to``: a speed-up's budget, judged as one in this timing (``budget_now``)."""
    pool = [(verified.chosen, verified.measured_ms)]
    if not extra:
        return pool
    if timer is None:
        return pool + [(c, math.nan) for c in extra]
    taken = {verified.chosen.config.key(), *(c.config.key() for c in extra)}
    spare: dict[str, Candidate] = {}
    for c in backups or []:
        if c.config.key() not in taken:
            spare.setdefault(c.config.key(), c)
    timing = [*extra, *spare.values()]
    got = timer.measure([c.config for c in timing], rounds=rounds)
    timed = list(zip(timing, got.ms, strict=True))
    limit = budget_now(budget_ms, got.full_ms, relative_to)
    fitting_spares = iter([(c, m) for c, m in timed[len(extra):] if m <= limit])
    for c, m in timed[:len(extra)]:
        replacement = (c, m) if m <= limit else next(fitting_spares, None)
        if replacement is not None:
            pool.append(replacement)
    if log is not None:
        pooled = {c.config.key() for c, _ in pool}
        log += [{"arch": c.config.describe(), "measured_ms": m, "backup": i >= len(extra),
                 "pooled": c.config.key() in pooled} for i, (c, m) in enumerate(timed)]
    return pool


@dataclass
class FineTuned:
    models: list[ElasticBert]
    rows: list[dict[str, Any]]  # one per pool entry, the search's pick first


def finetuned_order(rows: list[dict[str, Any]], by: str = "dev-score") -> list[int]:
    """Indices of fine-tuned candidates (``FineTuned.rows``), best first by ``by``
    (``FINETUNE_CHOICES``), ties to the earlier one (the search's pick first).

    The dev score of two candidates fine-tuned from the same teacher often differs by one or
    two examples (rt at 4x: 2 of 1,280 sentences); the loss averages how far every dev
    example's probabilities are from the teacher's, so it moves less with which examples dev
    happens to hold."""
    if by == "dev-score":
        return sorted(range(len(rows)), key=lambda i: (-rows[i]["dev_accuracy"], i))
    if by == "dev-loss":
        return sorted(range(len(rows)), key=lambda i: (rows[i]["dev_loss"], i))
    raise ConfigError(f"fine-tuned candidates are ranked by one of {', '.join(FINETUNE_CHOICES)}, got {by!r}")


def finetune_best(run: LoadedRun, teacher: ElasticBert, pool: list[tuple[Candidate, float]], stage: StageConfig,
                  out: Path, accuracy: DevAccuracy, targets: Callable[[], torch.Tensor],
                  *, progress: bool = True, device: str = "cpu", batch: int = 1,
                  best_epoch: bool = False, augment: int = 0, attention: float = 0.0) -> FineTuned:
    """Distil the teacher into each of ``pool`` (resumable, in ``out``, trained on ``device``)
    and score each as deployed, ``batch`` inputs per call (an int8 one: its quantized graph,
    whose predictions depend on it): dev and test in the task's metric, and the fine-tuning's
    loss on dev against ``teacher``'s logits (``dev_loss``; ``finetuned_order`` ranks them).
    ``best_epoch``: each keeps its epoch with the lowest distillation loss on dev (``BestEpoch``);
    the rows say which (``epoch_kept``) and every epoch's loss (``dev_loss_by_epoch``). ``augment``:
    how many word-replaced copies of each train example ``run``'s distillation texts hold (the
    folder's name says it). ``attention``: the weight of attention distillation (``teacher``
    then the rewired teacher, ``distill_teacher``)."""
    from nas.objectives import deployed_logits
    from supernet.evaluate import predict, scores

    teacher_dev = predict(teacher, run.splits["dev"])
    models, rows = [], []
    for cand, ms in pool:
        t0 = time.time()
        folder = finetune_folder(out, cand.config, stage, unlabeled=run.spec.train.unlabeled, best_epoch=best_epoch,
                                 augment=augment, attention_weight=attention)
        model, trained = finetune_subnet(run.supernet, teacher, cand.config, distill_split(run.splits), folder,
                                         run.spec.train, stage, targets=targets, progress=progress, device=device,
                                         select=run.splits["dev"] if best_epoch else None, attention_weight=attention)
        kept = selected_epoch(folder)
        model.eval()
        models.append(model)
        deployed = deployed_logits(model, cand.config.precision, batch=batch)  # int8: exported once for both splits
        logits = {split: deployed(run.splits[split]) for split in ("dev", "test")}
        rows.append({"arch_key": cand.config.key(), "arch": cand.config.describe(),
                     "depth": len(cand.config.kept_layers), "measured_ms": ms,
                     "dev_accuracy_before": accuracy.full_dev(cand.config), "wall_s": round(time.time() - t0, 1),
                     "reused": not trained, "precision": cand.config.precision,
                     "epoch_kept": kept["best_epoch"] if kept else stage.epochs,
                     "dev_loss_by_epoch": kept["dev_loss"] if kept else None,
                     # As deployed: an int8 candidate's quantized graph, run by ONNX Runtime.
                     **{f"{split}_accuracy": scores(logits[split], run.splits[split].labels)[run.task.metric]
                        for split in ("dev", "test")},
                     "dev_loss": held_out_loss(logits["dev"], teacher_dev, run.splits["dev"].labels,
                                               run.spec.train.temperature)})
    return FineTuned(models, rows)


@dataclass
class Pick:
    """What an export writes: the sub-network, its model (the supernet's weights, or
    fine-tuned), the last timing before writing (``confirm``: its latency as last measured is
    ``final.measured_ms``), and with fine-tuning the report's ``finetuned`` summary, every
    candidate's row (``FineTuned.rows``) and the uniform sub-networks timed for the pool
    (``measured_seeds``)."""

    chosen: Candidate
    model: ElasticBert
    final: Confirmed
    tuned: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    stretched: list[Candidate] = field(default_factory=list)


def confirm_pick(run: LoadedRun, verified: Verified, budget_ms: float, timer: Timer | None, accuracy: DevScore,
                 *, rounds: int, relative_to: float | None = None) -> Pick:
    """Without fine-tuning: the pick, or the first of its measured fall-backs that meets the
    budget in one more timing (``confirm``), with the supernet's weights."""
    from supernet.extract import extract

    options = [(verified.chosen, verified.measured_ms), *verified.alternatives]
    final = confirm(options, budget_ms, timer, accuracy, rounds=max(FRESH_ROUNDS, rounds), relative_to=relative_to)
    chosen = options[final.index][0]
    return Pick(chosen, extract(run.supernet, chosen.config).eval(), final)


def finetune_and_confirm(run: LoadedRun, target: Target, cfg: ExportConfig, stage: StageConfig, verified: Verified,
                         history: list[Candidate], budget: Budget, latency: PredictedLatency, timer: Timer | None,
                         accuracy: DevAccuracy, teacher: ElasticBert, out: Path,
                         teacher_targets: Callable[[], torch.Tensor] | None) -> Pick:
    """Step 4: the pool (the pick, the deepest depth seed, timed deeper seeds and the best of
    the deepest other depths, each re-measured under the budget; one that misses is replaced
    by the next shallower seed that meets it), each fine-tuned from
    ``teacher`` (``finetune_best``), ranked by ``cfg.finetune_choose`` (``finetuned_order``),
    and the best that meets the budget in one more timing (``confirm``; the others are its
    fall-backs, in that order). ``teacher_targets``: the teacher's logits on the distillation
    texts when the caller has them (computed once here otherwise, and only if needed)."""
    space, scaled = target.search_space(run.space), latency.scaled(budget.scale)
    seed_cfgs = depth_seeds(space, scaled, budget.ms)
    deepest = max((len(c.kept_layers) for c in seed_cfgs), default=0)
    stretched = measured_seeds(space, scaled, budget.ms, timer, accuracy, deeper_than=deepest,
                               rounds=cfg.rounds, relative_to=budget.relative_to) if cfg.finetune_candidates > 1 else []
    seed_keys = [c.key() for c in seed_cfgs]
    extra = finetune_pool(history, verified.chosen, seed_keys, cfg.finetune_candidates - 1, measured=stretched)
    pool_timing: list[dict[str, Any]] = []
    pool = measured_pool(verified, extra, budget.ms, timer, rounds=cfg.rounds,
                         backups=seed_candidates(history, seed_keys, stretched)[1:], log=pool_timing,
                         relative_to=budget.relative_to)
    ft_run = with_augmented(with_unlabeled(run, cfg.finetune_unlabeled), cfg.finetune_augment)
    distill = distill_split(ft_run.splits)
    targets = teacher_targets or functools.cache(lambda: teacher_logits(teacher, distill))
    ft = finetune_best(ft_run, teacher, pool, stage, out, accuracy, targets, progress=cfg.progress,
                       device=cfg.train_device, batch=target.batch, best_epoch=cfg.finetune_best_epoch,
                       augment=cfg.finetune_augment, attention=cfg.finetune_attention)
    order = finetuned_order(ft.rows, cfg.finetune_choose)  # best first; ties to the pool's order
    final = confirm([pool[i] for i in order], budget.ms, timer, accuracy, rounds=max(FRESH_ROUNDS, cfg.rounds),
                    dev=[ft.rows[i]["dev_accuracy"] for i in order], relative_to=budget.relative_to)
    best = order[final.index]
    chosen = pool[best][0]
    tuned = {"epochs": stage.epochs, "lr": stage.lr, "candidates": len(pool),
             "best_epoch": cfg.finetune_best_epoch, "epoch_kept": ft.rows[best]["epoch_kept"],
             "texts": len(distill), "unlabeled": ft_run.spec.train.unlabeled,
             "augmented_copies": cfg.finetune_augment, "attention_weight": cfg.finetune_attention,
             "chosen_by": cfg.finetune_choose, "pool_timing": pool_timing,
             **{k: ft.rows[best][k] for k in ("wall_s", "reused", "dev_accuracy", "test_accuracy")}}
    return Pick(chosen, ft.models[best], final, tuned, ft.rows, stretched)


# --- 5. write ------------------------------------------------------------------------------------

def write_export(run: LoadedRun, target: Target, out: Path, chosen: Candidate, model: ElasticBert) -> dict[str, Any]:
    """The standalone model (``pytorch/``; ``hf/``, the family's stock model or the elastic BERT's code;
    fp32 weights), ``model.onnx`` (the graph to deploy: quantized for an int8 sub-network,
    whose fp32 graph is kept beside it as ``model-fp32.onnx``) with ``hf/``'s config, code
    and tokenizer files beside it (what Optimum and a plain ONNX Runtime user read), and how
    far the fp32 graph's outputs are from PyTorch's on dev batches; returns what was written."""
    from latency.onnx_export import check_onnx, export_onnx, input_names, quantize_subnet
    from supernet.data import iterate_batches
    from supernet.extract import copy_runtime_files, export_standalone

    # An earlier export's report and card go first: they are written last, so a folder without
    # report.json is an unfinished export, even where a re-export into it stopped halfway.
    for stale in (out / "report.json", out / CARD_NAME):
        stale.unlink(missing_ok=True)
    written = export_standalone(run.supernet, chosen.config, out, tokenizer_as_trained(run),
                                list(run.task.label_names), model=model)
    int8 = chosen.config.int8
    faults.hit("export.write")
    fp32_path = export_onnx(model, out / ("model-fp32.onnx" if int8 else "model.onnx"))
    if not int8:
        (out / "model-fp32.onnx").unlink(missing_ok=True)  # an earlier int8 export's
    dev_batches = list(iterate_batches(run.splits["dev"], 16, shuffle=False))[:4]
    diff = check_onnx(model, fp32_path, dev_batches)
    files = {**written, "onnx": str(quantize_subnet(fp32_path, out / "model.onnx") if int8 else fp32_path)}
    if int8:
        files["onnx_fp32"] = str(fp32_path)
    copy_runtime_files(written["hf"], out)
    files["config"] = str(out / "config.json")
    return {"files": files, "onnx_max_abs_diff": diff, "onnx_inputs": list(input_names(model))}


def written_logits(files: dict[str, str], model: ElasticBert, precision: str, enc: Encoded, *,
                   batch: int) -> np.ndarray:
    """The written model's logits on ``enc`` as deployed: an int8 export's ``model.onnx`` run
    by ONNX Runtime at ``batch`` inputs per call, the device's (dynamic quantization's scales
    span the batch); an fp32 export's PyTorch model, which its graph matches to 1e-4."""
    from latency.baselines import onnx_logits
    from supernet.evaluate import predict

    if precision == "int8":
        return onnx_logits(files["onnx"], enc, batch_size=batch, in_order=True)
    return predict(model, enc)


def compare_with_stock(run: LoadedRun, timer: DeviceTimer, files: dict[str, str], precision: str,
                       ours_logits: np.ndarray, full_acc: float, *, rounds: int = 3) -> dict[str, Any] | None:
    """The exported sub-network (``ours``: ``files["onnx"]`` at ``precision``; its test logits
    ``ours_logits``), the same sub-network at the other precision (``ours-int8``, quantized as
    int8 sub-networks are, or ``ours-fp32``, ``files["onnx_fp32"]``) and the supernet's full
    model (``ours-full``, test accuracy ``full_acc``) timed in turn with the stock deployments
    (``latency.baselines.time_beside_stock``), on the timer's workload and statistic, with
    their test scores (the ONNX graphs run by ONNX Runtime, the INT8 ones at the timer's batch
    as ``ours_logits`` should be; their test logits are returned for the paired statistics).
    Every graph is timed with the device's own runtime (ONNX Runtime or
    OpenVINO, which reads the same files: ``latency.baselines.ONNX_RUNTIMES``), so a speed-up
    never mixes runtimes; the speed-ups name it. None on a PyTorch eager device."""
    from latency.baselines import (
        FP32_SCORE_BATCH,
        ONNX_RUNTIMES,
        onnx_logits,
        speedups,
        stock_models,
        time_beside_stock,
    )
    from latency.onnx_export import quantize_subnet
    from supernet.evaluate import scores

    if timer.profile.runtime not in ONNX_RUNTIMES:
        return None
    onnx_path = Path(files["onnx"])
    if precision == "int8":
        other, other_path = "ours-fp32", Path(files["onnx_fp32"])
    else:
        other, other_path = "ours-int8", quantize_subnet(onnx_path, timer.workdir / "ours-int8.onnx")
    rows = time_beside_stock(run, timer, {"ours": onnx_path, other: other_path}, rounds=rounds)
    assert rows is not None
    test, batch = run.splits["test"], timer.batch  # dynamic INT8's predictions depend on the batch
    int8 = other == "ours-int8"  # INT8 in batches as requests arrive, at the device's batch (``onnx_logits``)
    logits = {other: onnx_logits(other_path, test, batch_size=batch if int8 else FP32_SCORE_BATCH, in_order=int8),
              "stock-int8": onnx_logits(stock_models(run, batch=batch)["stock-int8"]["path"], test, batch_size=batch,
                                        in_order=True)}
    metric = run.task.metric  # as the stock rows are scored (``latency.baselines.STOCK_SCORE``)
    rows["ours"]["acc_test"] = scores(ours_logits, test.labels)[metric]
    rows["ours"]["precision"] = precision
    rows[other]["acc_test"] = scores(logits[other], test.labels)[metric]
    rows[other]["precision"] = other.removeprefix("ours-")
    rows["ours-full"]["acc_test"] = full_acc
    lat = {n: r[f"{timer.stat}_ms"] for n, r in rows.items()}
    ours, alt, full_x = (speedups(lat, n) for n in ("ours", other, "ours-full"))
    o = other.replace("-", "_")
    speedup = {"stat": timer.stat, "runtime": timer.profile.runtime, "fastest_stock_fp32": ours["fastest_stock_fp32"],
               "precision": precision,
               "ours_vs_fastest_stock_fp32": ours["vs_fastest_stock_fp32"], "ours_vs_stock_int8": ours["vs_stock_int8"],
               f"{o}_vs_fastest_stock_fp32": alt["vs_fastest_stock_fp32"], f"{o}_vs_stock_int8": alt["vs_stock_int8"],
               # Below 1: our full-model export is slower than the stock one (its graph, not its size).
               "ours_full_vs_fastest_stock_fp32": full_x["vs_fastest_stock_fp32"]}
    return {"deployments": rows, "speedup": speedup, "logits": logits}


def against_teacher(teacher_logits: np.ndarray, logits: dict[str, np.ndarray], labels: np.ndarray, *,
                    metric: str) -> dict[str, dict[str, Any]]:
    """Each model's test ``metric`` (the task's: accuracy, or macro F1 recomputed on every
    bootstrap resample) against the teacher's on the same sentences, with its paired 95%
    interval (``nas.stats.compare_with``; McNemar's p-value for accuracy): name -> test logits
    (``ours``, the written model, and e.g. the INT8 graphs run by ONNX Runtime)."""
    from nas.stats import compare_with

    return {name: compare_with(teacher_logits, out, labels, metric=metric) for name, out in logits.items()}


# --- the pipeline --------------------------------------------------------------------------------

EXPORT_MARKS = ("report.json", "subnet.json", "model.onnx", "pytorch")  # what an export, or one stopped halfway, leaves


def foreign_folder(out: Path) -> str | None:
    """Why an export may not write into ``out``, or None: a folder holding other files and no
    earlier export (an export replaces README.md, config.json, the tokenizer's files and hf/
    there, so ``--out .`` in a project would delete its README). New, empty, and earlier
    exports' folders (finished or stopped: a fine-tuning's ``finetune_*`` is enough) are fine."""
    if not out.is_dir():
        return None
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if not names or any(n in EXPORT_MARKS or n.startswith("finetune_") for n in names):
        return None
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"{out} holds other files ({shown}) and no earlier export, which writing one would overwrite: give a "
            "new or empty folder, or an earlier export's")



def choose_and_export(
    run: LoadedRun,
    target: Target,
    out_dir: str | Path,
    cfg: ExportConfig,
    *,
    accuracy: DevAccuracy | None = None,
    latency: PredictedLatency | None = None,
    timer: Timer | None = None,
    full_model_test: float | None = None,
    teacher_targets: Callable[[], torch.Tensor] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Search, re-rank the finalists on the full dev split, re-measure, fine-tune, export;
    writes the search history and the export, and returns the report (``report.json``); the
    model card (``README.md``, ``nas.card``) names ``command``, the command line that asked.

    ``latency`` and ``timer`` default to the run's predictor for the target and a timer on
    this machine (none for a kit device). With ``cfg.finetune``, up to
    ``cfg.finetune_candidates`` sub-networks (the search's pick, then ``finetune_pool``)
    that meet the budget when re-measured are distilled from the teacher on the train split
    and the best on dev is exported: supernet weights rank shallow, wide sub-networks and
    dropped tokens first, but deep, narrow, uniform ones recover more when fine-tuned (rt at
    3x, 3 epochs: 6 layers of 3 heads at full retention 82.6 on dev against 80.9 for the
    search's 3-layer pick). ``full_model_test``: the teacher's test score when the caller
    already has it (a budget sweep); ``teacher_targets``: the teacher's logits on what the
    fine-tunings distil on (``teacher_logits`` of the distillation split of ``run`` with
    ``cfg.finetune_unlabeled`` and ``cfg.finetune_augment`` applied; called only if there is
    fine-tuning to do).
    """
    from supernet.checkpoint import load_model
    from supernet.evaluate import predict, scores

    why = foreign_folder(Path(out_dir))
    if why is not None:
        raise ConfigError(why)
    if cfg.finetune:
        teacher_path(run, cfg.finetune_attention)  # a missing teacher is refused now, not after the search and timings
        check_unlabeled(run.task, cfg.finetune_unlabeled)
    accuracy = accuracy or DevAccuracy(run, batch=target.batch)
    check_int8_batch(accuracy, target)
    latency = latency or PredictedLatency.of(run.folder, target)
    own_timer = open_timer(run, target) if timer is None else None  # closed here; a caller's is not
    timer = timer or own_timer
    device = target.profile.name
    try:
        budget = resolve_budget(cfg, latency, timer, drift_references(run.space), device=device)
        settings = evolution_settings(cfg.method, cfg.screen)
        result, search_s = run_search(run, target, budget.ms, latency=latency.scaled(budget.scale), method=cfg.method,
                                      n_evaluations=cfg.n_evaluations, seed=cfg.seed, accuracy=accuracy,
                                      searcher_kwargs=settings)
        write_search_history(run, result, target, budget.ms, cfg.method, settings)
        ranked = rank_finalists(result, accuracy, cfg.finalists)
        verified = verify_on_device(ranked, result.history, budget.ms, timer, accuracy, finalists=cfg.finalists,
                                    rounds=cfg.rounds, device=device, relative_to=budget.relative_to)
        if cfg.step_up_below is not None:
            def relaxed(scale: float) -> list[Candidate]:
                # Half the evaluations: it starts from the same anchors and only looks above the pick.
                try:
                    again, _ = run_search(run, target, budget.ms, latency=latency.scaled(budget.scale * scale),
                                          method=cfg.method, n_evaluations=max(1, cfg.n_evaluations // 2),
                                          seed=cfg.seed + 1, accuracy=accuracy, searcher_kwargs=settings)
                except ImpossibleBudget:  # under a scale above 1 nothing may fit: keep the verified pick
                    return []
                return again.history

            def grow(config: SubnetConfig, scale: float) -> list[Candidate]:
                # The pick's one-step-larger neighbours that fit, predicted as the relaxed search would;
                # scored on the whole dev split (what the step up ranks them by), not on the search's subset.
                configs = target.search_space(run.space).grown(config)
                bounds = latency.scaled(budget.scale * scale).predict(configs)
                return [Candidate(c, accuracy.full_dev(c), p, u, True) for c, (p, u) in zip(configs, bounds, strict=True)
                        if is_feasible(u, budget.ms)]

            verified = step_up(verified, budget.ms, relaxed, timer, accuracy, below=cfg.step_up_below,
                               finalists=cfg.finalists, rounds=cfg.rounds, relative_to=budget.relative_to, grow=grow)
        out = Path(out_dir)
        teacher = (distill_teacher(run, cfg.finetune_attention).to(cfg.train_device)  # the fine-tunings' targets
                   if cfg.finetune is not None or full_model_test is None else None)
        if cfg.finetune is not None and teacher is not None:
            pick = finetune_and_confirm(run, target, cfg, cfg.finetune, verified, result.history, budget, latency,
                                        timer, accuracy, teacher, out, teacher_targets)
        else:
            pick = confirm_pick(run, verified, budget.ms, timer, accuracy, rounds=cfg.rounds,
                                relative_to=budget.relative_to)
        chosen, small, final = pick.chosen, pick.model, pick.final
        chosen_ms = final.measured_ms
        full_ms = final.full_ms if final.steps else verified.full_ms  # timed again just now: what the report quotes
        written = write_export(run, target, out, chosen, small)
        precision = chosen.config.precision
        # The written model's test logits, as deployed: for its score and the paired statistics.
        ours_logits = written_logits(written["files"], small, precision, run.splits["test"], batch=target.batch)
        # At least 5 rounds: the headline speed-ups come from this one comparison (about 1 s a round).
        stock = (compare_with_stock(run, timer, written["files"], precision, ours_logits,
                                    accuracy.test(run.space.largest()), rounds=max(FRESH_ROUNDS, cfg.rounds))
                 if cfg.baselines and isinstance(timer, DeviceTimer) else None)
    finally:
        if own_timer is not None:
            own_timer.close()
    # The teacher's test logits, once: its score (unless the caller has it) and the paired statistics.
    test = run.splits["test"]
    teacher_test = predict(teacher or load_model(run.paths.teacher), test)
    full_test = full_model_test if full_model_test is not None else scores(teacher_test, test.labels)[run.task.metric]
    vs_teacher = against_teacher(teacher_test, {"ours": ours_logits, **(stock["logits"] if stock else {})},
                                 test.labels, metric=run.task.metric)
    sub, largest = chosen.config, run.space.largest()
    # The sub-network with the supernet's weights, as deployed (int8: the quantized graph).
    supernet_dev, supernet_test = accuracy.full_dev(sub), accuracy.test(sub)
    # The predictor's bounds for what is written, times the drift scale the search applied: not
    # the candidate's own, which a step up scaled further and a timed seed set to its timing.
    predicted_ms, predicted_upper_ms = latency.scaled(budget.scale).predict([sub])[0]
    report = {
        "device": device,
        "runtime": target.profile.runtime,  # what every latency here was timed with
        "budget_ms": budget.ms,
        "budget_from": budget.source,  # a speed-up target: the full model's latency it divided
        # "speedup": every timing judged the sub-network's speed-up against the full model timed
        # with it (``budget_now``: each step's ``budget_now_ms``); "ms": against budget_ms itself.
        "budget_judged_as": "speedup" if budget.source else "ms",
        "batch": target.batch,
        "length": target.length,  # real traffic: its median length
        "regime": target.regime,  # "traffic": real dev inputs served in turn; "fixed": one input repeated
        "budget_stat": target.stat,  # the statistic of per-call latency the budget and every ms here apply to
        "traffic_calls": target.profile.traffic_calls if target.regime == "traffic" else None,
        "metric": run.task.metric,
        "subnet": sub.to_dict(),
        "arch_key": sub.key(),
        "arch": sub.describe(),
        "predicted_latency_ms": float(predicted_ms),
        "predicted_upper_ms": float(predicted_upper_ms),
        "measured_latency_ms": chosen_ms,
        "full_model_latency_ms": full_ms,
        "speedup": full_ms / chosen_ms if verified.measured else None,
        "remeasured": verified.measured,
        "device_drift": budget.drift,  # measured / predicted before the search; the search's scale
        "precision": sub.precision,  # what model.onnx runs at
        # What model.onnx and pytorch/ hold, scored: the fine-tuned model where it was fine-tuned.
        "written_dev_accuracy": pick.tuned["dev_accuracy"] if pick.tuned else supernet_dev,
        "written_test_accuracy": pick.tuned["test_accuracy"] if pick.tuned else supernet_test,
        # The supernet-weight scores: the written model's only when ``weights`` is "supernet".
        "dev_accuracy": supernet_dev,
        "test_accuracy": supernet_test,
        # The same sub-network in fp32 (supernet weights) and the written model's test score
        # before and after quantization: what INT8 cost (null for an fp32 export).
        "quantization": None if not sub.int8 else {
            "dev_accuracy_fp32": accuracy.full_dev(sub.with_precision("fp32")),
            "test_accuracy_fp32": accuracy.test(sub.with_precision("fp32")),
            "written_test_accuracy_fp32": scores(predict(small, run.splits["test"]), run.splits["test"].labels)[
                run.task.metric],
            "written_test_accuracy_int8": scores(ours_logits, run.splits["test"].labels)[run.task.metric],
        },
        "full_model_test_accuracy": full_test,
        "supernet_largest_test_accuracy": accuracy.test(largest),
        "weights": "fine-tuned" if pick.tuned else "supernet",  # what pytorch/ and model.onnx hold
        "finetuned": pick.tuned,
        "finetune_candidates": pick.rows,  # every sub-network fine-tuned, the search's pick first
        # Deeper uniform sub-networks than the predictor's bound allowed, timed under the budget (``measured_seeds``).
        "finetune_timed_seeds": [{"arch": c.config.describe(), "measured_ms": c.latency_ms} for c in pick.stretched],
        "flops": subnet_flops(run.supernet.shape, sub, target.length),
        "full_model_flops": subnet_flops(run.supernet.shape, largest, target.length),
        "params": subnet_params(run.supernet.shape, sub),
        "full_model_params": subnet_params(run.supernet.shape, largest),
        "onnx_max_abs_diff": written["onnx_max_abs_diff"],
        "method": cfg.method,
        "n_evaluations": result.n_evaluations,
        "search_wall_s": round(search_s, 1),
        # Every timing that chose: step downs, step ups (``step_up``) and the last one just
        # before writing (``confirm``: "step" "confirm"), in order.
        "step_downs": [*verified.steps, *final.steps],
        # Each search the step up ran, timed or not (``Verified.step_up_searches``): empty when
        # the pick used enough of the budget (or nothing was timed here).
        "step_up_searches": list(verified.step_up_searches),
        # False: in that last timing nothing met the budget (the machine is slower now than
        # when the pick was measured) and the pick stands on its earlier measurement.
        "budget_confirmed": final.met,
        # The stock model as a user would deploy it without us, timed in the same run on the
        # same workload and statistic: name -> latency and test accuracy (INT8 scored by
        # running the quantized graph); the speed-ups against the fastest stock fp32 and INT8.
        "deployments": stock["deployments"] if stock else None,
        # Test accuracy against the teacher's on the same sentences, in points: paired
        # bootstrap 95% interval and McNemar p-value (nas/stats.py), for ours and the INT8 graphs.
        "vs_teacher": vs_teacher,
        "speedup_vs_stock": stock["speedup"] if stock else None,
        "files": written["files"],
        "hf_remote_code": needs_remote_code(written["files"]["hf"]),  # hf/ loads with trust_remote_code=True
        "family": run.supernet.shape.family,  # the encoder family: hf/'s stock class, the tokenizer's
        "onnx_inputs": written["onnx_inputs"],  # model.onnx's inputs (DistilBERT's has no token_type_ids)
        "max_length": run.spec.train.max_length,  # tokens per input it was trained, scored and timed on
        "is_pair": run.task.is_pair,  # sentence pairs: `hwnas predict` takes each as FIRST<TAB>SECOND
        # int8: whether its weights use 7 bits (quantized on a CPU without VNNI); 8-bit weights
        # can saturate on such a CPU (latency.onnx_export.int8_reduce_range).
        "int8_reduce_range": int8_reduce_range() if sub.int8 else None,
    }
    write_text(out / CARD_NAME, model_card(report, command, remote_code=report["hf_remote_code"]))
    write_json(out / "report.json", report)  # last: a folder without it is an unfinished export
    return report
