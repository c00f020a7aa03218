"""Name a device and a budget, get the best sub-network: search, re-measure, export.

The chosen sub-network is the most accurate one whose *predicted upper bound* (prediction
plus the predictor's safety margin) meets the budget. Predictions can still be wrong on the
day, so before anything is handed over the finalists are **re-measured on the device**,
interleaved with the full model in the same run; a finalist that misses the budget is
passed over for the next one (a "step down"), and the report lists every step.

Before the search, three reference sub-networks are timed to check the device against its
predictor; a device that runs more than 10% slower or faster than predicted (a shared or
throttled machine) has every prediction of that search scaled by the measured ratio.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latency.devices import DeviceProfile, DeviceUnavailable, check_available
from latency.measure import example_inputs, open_runner, time_fn
from latency.workflow import device_inputs, load_device_predictor, predictor_path
from nas.objectives import DevAccuracy, PredictedLatency
from nas.search import Candidate, SearchResult, depth_seeds, fastest_reachable, make_searcher
from supernet.cost import subnet_flops, subnet_params
from supernet.errors import ConfigError, HwnasError
from supernet.io import write_csv, write_json
from supernet.space import SubnetConfig
from supernet.train import StageConfig, finetune_folder, finetune_subnet, teacher_logits
from supernet.workflow import LoadedRun

if TYPE_CHECKING:
    import torch


class ImpossibleBudget(HwnasError):
    """No sub-network can meet the budget on that device."""


@dataclass(frozen=True)
class Target:
    """A device at one input shape: the budget applies to one call at this (batch, length)."""

    profile: DeviceProfile
    batch: int
    length: int

    @classmethod
    def of(cls, run: LoadedRun, profile: DeviceProfile, length: int | None = None) -> Target:
        lengths = sorted(device_inputs(run, profile))
        return cls(profile, profile.batch, length if length is not None else lengths[0])


def latency_model(run: LoadedRun, target: Target, scale: float = 1.0) -> PredictedLatency:
    pred = load_device_predictor(run.folder, target.profile.name)
    return PredictedLatency(pred, batch=target.batch, length=target.length, scale=scale)


def drift_references(run: LoadedRun) -> list[SubnetConfig]:
    """Sub-networks timed to check the device against its predictor: the full model, half
    width, and quarter width at half depth (three sizes, so that one mispredicted
    configuration does not decide)."""
    return [run.space.largest(), run.space.uniform(width=0.5), run.space.uniform(width=0.25, depth=0.5)]


def device_drift(run: LoadedRun, target: Target, *, rounds: int = 3) -> dict[str, Any]:
    """How much slower (> 1) or faster (< 1) the device runs now than its predictor says:
    the median of measured / predicted over ``drift_references``, each re-measured now.

    A predictor is fitted once (``hwnas measure`` + ``hwnas fit``); a shared or throttled
    machine can be slower on the day, and a search that trusts stale predictions picks
    sub-networks that miss the budget when re-measured."""
    refs = drift_references(run)
    measured, full_ms = remeasure(run, target, refs[1:], rounds=rounds)
    predicted = [p for p, _ in latency_model(run, target).predict(refs)]
    ratios = [m / p for m, p in zip([full_ms, *measured], predicted, strict=True)]
    return {"ratio": float(np.median(ratios)), "ratios": ratios, "measured_ms": [full_ms, *measured],
            "predicted_ms": predicted, "references": [c.describe() for c in refs]}


def _budget_label(budget_ms: float | None) -> str:
    return "front" if budget_ms is None else f"{budget_ms:g}ms"


def search_file(run: LoadedRun, device: str, budget_ms: float | None, method: str) -> Path:
    return run.folder / "search" / f"{device}_{_budget_label(budget_ms)}_{method}.csv"


def run_search(
    run: LoadedRun,
    target: Target,
    budget_ms: float | None,
    *,
    method: str = "evolution",
    n_evaluations: int = 150,
    seed: int = 0,
    accuracy: DevAccuracy | None = None,
    searcher_kwargs: dict[str, Any] | None = None,
    latency_scale: float = 1.0,
) -> tuple[SearchResult, float]:
    """One search on the run; returns the result and its wall time. The history is written
    to ``RUN/search/<device>_<budget>_<method>.csv``. ``latency_scale`` multiplies the
    predictions (a measured drift of the device, ``device_drift``)."""
    latency = latency_model(run, target, latency_scale)
    if budget_ms is not None:
        fastest = fastest_reachable(run.space, latency)
        if budget_ms < fastest:
            raise ImpossibleBudget(
                f"a budget of {budget_ms:g} ms cannot be met on {target.profile.name} at batch {target.batch}, "
                f"length {target.length}: the fastest reachable sub-network is predicted at {fastest:.2f} ms "
                "(upper bound with the safety margin"
                + (f", scaled by {latency_scale:.2f} for the device's measured drift" if latency_scale != 1.0 else "")
                + "); raise the budget to at least that"
            )
    accuracy = accuracy or DevAccuracy(run)
    kwargs = dict(searcher_kwargs or {})
    if method in ("tpe", "nsga2"):
        kwargs.setdefault("storage", f"sqlite:///{run.folder / 'search' / 'optuna.db'}")
        b = _budget_label(budget_ms)
        # The study's stored values are only valid for this predictor and this dev subset.
        fingerprint = hashlib.sha1(predictor_path(run.folder, target.profile.name).read_bytes()).hexdigest()[:8]
        scaled = "" if latency_scale == 1.0 else f"-x{latency_scale:.4g}"
        kwargs.setdefault("study_name", f"{target.profile.name}-{b}-{method}-L{target.length}-s{seed}"
                                        f"-{accuracy.search_split}-p{fingerprint}{scaled}")
        (run.folder / "search").mkdir(parents=True, exist_ok=True)
    searcher = make_searcher(method, **kwargs)
    t0 = time.time()
    result = searcher.search(run.space, accuracy, latency, budget_ms=budget_ms, n_evaluations=n_evaluations, seed=seed)
    wall = time.time() - t0
    frame = result.frame()
    frame.insert(0, "method", method)
    frame.insert(0, "device", target.profile.name)
    frame["budget_ms"] = budget_ms
    frame["length"], frame["batch"] = target.length, target.batch
    write_csv(search_file(run, target.profile.name, budget_ms, method), frame)
    return result, wall


def remeasure(
    run: LoadedRun, target: Target, configs: list[SubnetConfig], *, rounds: int = 3
) -> tuple[list[float], float]:
    """Measured median latency of each config and of the full model, timed in turn on the
    device in this run (``rounds`` interleaved rounds; medians of the round medians)."""
    import tempfile

    from supernet.extract import extract

    check_available(target.profile)
    # Real dev text at exactly the length the budget applies to.
    feeds = example_inputs(run.splits["dev"], target.batch, target.length)

    work = Path(tempfile.mkdtemp(prefix="hwnas-remeasure-"))
    full = run.space.largest()
    runners = [open_runner(target.profile, extract(run.supernet, c), work) for c in [full, *configs]]
    times: list[list[float]] = [[] for _ in runners]
    p = target.profile
    def timed(r: Any) -> float:
        return time_fn(lambda: r(feeds), p.warmup, p.repeats).median_ms

    for _ in range(rounds):
        for i, r in enumerate(runners):
            times[i].append(timed(r))
    med = [float(np.median(t)) for t in times]
    return med[1:], med[0]


def choose_and_export(
    run: LoadedRun,
    target: Target,
    budget_ms: float | None,
    out_dir: str | Path,
    *,
    speedup: float | None = None,
    method: str = "evolution",
    n_evaluations: int = 150,
    finalists: int = 5,
    seed: int = 0,
    accuracy: DevAccuracy | None = None,
    finetune: StageConfig | None = None,
    finetune_candidates: int = 3,
    full_model_test: float | None = None,
    teacher_targets: Callable[[], torch.Tensor] | None = None,
    drift_tolerance: float | None = 0.10,
    progress: bool = True,
) -> dict[str, Any]:
    """Search, re-rank the finalists on the full dev split, re-measure, export; the report.

    With ``finetune``, the chosen sub-network is distilled from the teacher on the train split
    before it is written (its latency does not change; the report gives both accuracies).
    With ``finetune_candidates`` k > 1, up to k - 1 more candidates from the search's history
    (``finetune_pool``: the deepest depth seed, then the best of each of the deepest other
    depths) are put beside it; those that meet the budget when re-measured are fine-tuned too,
    and the one with the best fine-tuned dev score is exported. Supernet weights rank shallow,
    wide sub-networks and dropped tokens first, but deep, narrow, uniform ones recover more
    when fine-tuned (rt at 3x, 3 epochs: 6 layers of 3 heads at full retention 82.6 on dev
    against 80.9 for the search's 3-layer pick; the search's 6-layer pick with tokens dropped
    from layer 4 reached 82.3 on dev but 80.4 on test, against 82.2). ``full_model_test``: the teacher's test score when
    the caller already has it (a budget sweep), else it is computed here; ``teacher_targets``
    likewise gives the teacher's logits on the train split (``teacher_logits``, called only if
    there is fine-tuning to do), else they are computed here.

    Before searching, the device is checked against its predictor (``device_drift``): when it
    runs more than ``drift_tolerance`` (a fraction) slower or faster than predicted, the
    search scales every prediction by the measured ratio, and the report says so
    (``device_drift``). ``None`` skips the check.

    ``speedup`` instead of ``budget_ms`` (``None``): the budget is the full model's latency,
    timed on the device now (among the drift check's references), divided by ``speedup``; the
    report's ``budget_from`` gives that timing.
    """
    from latency.onnx_export import check_onnx, export_onnx
    from supernet.checkpoint import load_model
    from supernet.data import iterate_batches
    from supernet.evaluate import model_score
    from supernet.extract import export_standalone, extract

    if (budget_ms is None) == (speedup is None):
        raise ValueError("choose_and_export takes a budget_ms or a speedup, not both or neither")
    if speedup is not None and not speedup > 0:
        raise ConfigError(f"a speed-up target must be positive, got {speedup:g}")
    accuracy = accuracy or DevAccuracy(run)
    drift: dict[str, Any] | None = None
    budget_from: dict[str, float] | None = None
    if drift_tolerance is not None or speedup is not None:
        try:
            drift = device_drift(run, target)
        except DeviceUnavailable as e:
            if speedup is not None:
                raise ConfigError(f"a speed-up target times the full model on {target.profile.name}, which is not on "
                                  f"this machine ({e}); give a budget in ms instead") from None
            drift = None  # a kit device: nothing to check against here
    if speedup is not None:
        assert drift is not None
        full_now = drift["measured_ms"][0]
        budget_ms = round(full_now / speedup, 3)
        budget_from = {"speedup": speedup, "full_model_ms": full_now}
        if drift_tolerance is None:
            drift = None  # timed for the budget only; no check asked for
    assert budget_ms is not None
    # A drift dict is kept only when a check was asked for (drift_tolerance is set).
    scale = drift["ratio"] if drift is not None and abs(drift["ratio"] - 1) > (drift_tolerance or 0.0) else 1.0
    if drift is not None:
        drift["scale_applied"] = scale
    result, search_s = run_search(run, target, budget_ms, method=method, n_evaluations=n_evaluations,
                                  seed=seed, accuracy=accuracy, latency_scale=scale)
    feasible = sorted((c for c in result.history if c.feasible), key=lambda c: -c.accuracy)[: max(1, finalists)]
    if not feasible:
        raise ImpossibleBudget(f"the search found no sub-network under {budget_ms:g} ms on {target.profile.name}")
    # Finalists are re-ranked on the whole dev split (the search used a subset).
    ranked = sorted(feasible, key=lambda c: -accuracy.full_dev(c.config))
    steps: list[dict[str, Any]] = []
    chosen: Candidate | None = None
    chosen_ms = float("nan")
    try:
        measured, full_ms = remeasure(run, target, [c.config for c in ranked])
        measurable = True
    except DeviceUnavailable:
        measured, full_ms, measurable = [float("nan")] * len(ranked), float("nan"), False
    if not measurable:  # a kit device: hand over the best by prediction, and say so
        chosen = ranked[0]
        steps.append(_step(chosen, float("nan"), None, accuracy))
    else:
        chosen, chosen_ms = _step_down(ranked, measured, budget_ms, steps, accuracy)
        if chosen is None:
            # Every finalist missed: the device is slower today than the predictor thinks.
            # Scale the predictions by the misses' measured/predicted ratio and try the most
            # accurate remaining candidates that would still fit.
            slow = max(s["measured_ms"] / s["predicted_ms"] for s in steps)
            tried = {c.config.key() for c in ranked}
            rest = sorted((c for c in result.history if c.config.key() not in tried
                           and c.latency_ms * slow <= budget_ms), key=lambda c: -c.accuracy)[: max(1, finalists)]
            if rest:
                measured2, full_ms = remeasure(run, target, [c.config for c in rest])
                chosen, chosen_ms = _step_down(rest, measured2, budget_ms, steps, accuracy)
    if chosen is None:
        raise ImpossibleBudget(
            f"none of the {len(ranked)} finalists met {budget_ms:g} ms when re-measured on {target.profile.name} "
            f"(measured {', '.join(format(s['measured_ms'], '.2f') for s in steps)} ms; the full model measured "
            f"{full_ms:.2f} ms): raise the budget or re-measure with `hwnas measure` and refit"
        )
    out = Path(out_dir)
    teacher = load_model(run.folder / "teacher") if finetune is not None or full_model_test is None else None
    small = extract(run.supernet, chosen.config).eval()
    tuned: dict[str, Any] | None = None
    ft_rows: list[dict[str, Any]] = []
    if finetune is not None and teacher is not None:
        pool = [(chosen, chosen_ms)]
        seeds = [c.key() for c in depth_seeds(run.space, latency_model(run, target, scale), budget_ms)]
        extra = finetune_pool(result.history, chosen, seeds, finetune_candidates - 1)
        if extra:
            extra_ms = remeasure(run, target, [c.config for c in extra])[0] if measurable else [float("nan")] * len(extra)
            pool += [(c, ms) for c, ms in zip(extra, extra_ms, strict=True) if not ms > budget_ms]
        targets = teacher_targets or functools.cache(lambda: teacher_logits(teacher, run.splits["train"]))
        models = []
        for cand, ms in pool:
            t0 = time.time()
            model, trained = finetune_subnet(run.supernet, teacher, cand.config, run.splits["train"],
                                             finetune_folder(out, cand.config, finetune), run.spec.train, finetune,
                                             targets=targets, progress=progress)
            model.eval()
            models.append(model)
            ft_rows.append({"arch_key": cand.config.key(), "arch": cand.config.describe(),
                            "depth": len(cand.config.kept_layers), "measured_ms": ms,
                            "dev_accuracy_before": accuracy.full_dev(cand.config), "wall_s": round(time.time() - t0, 1),
                            "reused": not trained,
                            **{f"{split}_accuracy": model_score(model, run.splits[split], run.task.metric)
                               for split in ("dev", "test")}})
        best = max(range(len(pool)), key=lambda i: (ft_rows[i]["dev_accuracy"], -i))  # ties: the search's pick
        (chosen, chosen_ms), small = pool[best], models[best]
        tuned = {"epochs": finetune.epochs, "lr": finetune.lr, "candidates": len(pool),
                 **{k: ft_rows[best][k] for k in ("wall_s", "reused", "dev_accuracy", "test_accuracy")}}
    cfg = chosen.config
    written = export_standalone(run.supernet, cfg, out, run.tokenizer, list(run.task.label_names), model=small)
    onnx_path = export_onnx(small, out / "model.onnx")
    dev_batches = list(iterate_batches(run.splits["dev"], 16, shuffle=False))[:4]
    onnx_diff = check_onnx(small, onnx_path, dev_batches)
    full_test = full_model_test if full_model_test is not None or teacher is None else model_score(
        teacher, run.splits["test"], run.task.metric)
    report = {
        "device": target.profile.name,
        "budget_ms": budget_ms,
        "budget_from": budget_from,  # a speed-up target: the full model's latency it divided
        "batch": target.batch,
        "length": target.length,
        "metric": run.task.metric,
        "subnet": cfg.to_dict(),
        "arch_key": cfg.key(),
        "arch": cfg.describe(),
        "predicted_latency_ms": chosen.latency_ms,
        "predicted_upper_ms": chosen.upper_ms,
        "measured_latency_ms": chosen_ms,
        "full_model_latency_ms": full_ms,
        "speedup": full_ms / chosen_ms if measurable else None,
        "remeasured": measurable,
        "device_drift": drift,  # measured / predicted before the search; the search's scale
        "dev_accuracy": accuracy.full_dev(cfg),
        "test_accuracy": accuracy.test(cfg),
        "full_model_test_accuracy": full_test,
        "supernet_largest_test_accuracy": accuracy.test(run.space.largest()),
        "weights": "fine-tuned" if tuned else "supernet",  # what pytorch/ and model.onnx hold
        "finetuned": tuned,
        "finetune_candidates": ft_rows,  # every sub-network fine-tuned, the search's pick first
        "flops": subnet_flops(run.supernet.shape, cfg, target.length),
        "full_model_flops": subnet_flops(run.supernet.shape, run.space.largest(), target.length),
        "params": subnet_params(run.supernet.shape, cfg),
        "full_model_params": subnet_params(run.supernet.shape, run.space.largest()),
        "onnx_max_abs_diff": onnx_diff,
        "method": method,
        "n_evaluations": result.n_evaluations,
        "search_wall_s": round(search_s, 1),
        "step_downs": steps,
        "files": {**written, "onnx": str(onnx_path)},
    }
    write_json(out / "report.json", report)
    return report


def finetune_pool(history: list[Candidate], chosen: Candidate, seed_keys: list[str], k: int) -> list[Candidate]:
    """At most ``k`` candidates to fine-tune beside ``chosen``, none twice: the deepest of the
    depth seeds (``depth_seeds``: the widest uniform sub-network that fits, at full retention
    where one fits) that the search evaluated as feasible, then ``other_depths``."""
    feasible = {c.config.key(): c for c in history if c.feasible}
    seeds = [feasible[k_] for k_ in seed_keys if k_ in feasible]
    first = [max(seeds, key=lambda c: len(c.config.kept_layers))] if seeds else []
    out: dict[str, Candidate] = {}
    for c in [*first, *other_depths(history, chosen, k)]:
        if c.config.key() != chosen.config.key():
            out.setdefault(c.config.key(), c)
    return list(out.values())[: max(0, k)]


def other_depths(history: list[Candidate], chosen: Candidate, k: int) -> list[Candidate]:
    """The most accurate feasible candidate of each of the ``k`` deepest depths other than
    ``chosen``'s, deepest first."""
    best: dict[int, Candidate] = {}
    depth = len(chosen.config.kept_layers)
    for c in sorted((c for c in history if c.feasible), key=lambda c: -c.accuracy):
        best.setdefault(len(c.config.kept_layers), c)
    return [best[d] for d in sorted(best, reverse=True) if d != depth][: max(0, k)]


def _step(cand: Candidate, ms: float, ok: bool | None, accuracy: DevAccuracy) -> dict[str, Any]:
    return {"arch_key": cand.config.key(), "arch": cand.config.describe(), "predicted_ms": cand.latency_ms,
            "upper_ms": cand.upper_ms, "measured_ms": ms, "acc_dev": accuracy.full_dev(cand.config),
            "meets_budget": ok}


def _step_down(cands: list[Candidate], measured: list[float], budget_ms: float, steps: list[dict[str, Any]],
               accuracy: DevAccuracy) -> tuple[Candidate | None, float]:
    """The first candidate (best first) whose measured latency meets the budget."""
    for cand, ms in zip(cands, measured, strict=True):
        steps.append(_step(cand, ms, ms <= budget_ms, accuracy))
        if ms <= budget_ms:
            return cand, ms
    return None, float("nan")
