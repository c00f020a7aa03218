"""A device at one input shape: what its predictor says there, and what it measures now.

* ``Target``: a device profile at the (batch, length) a budget applies to;
  ``resolve_length`` reads a length given as text (``128`` or ``p90`` of the dev split).
* ``PredictedLatency``: the device's fitted predictor evaluated at that shape (optionally
  scaled by a measured drift); what a searcher is handed as its latency model.
* ``DeviceTimer``: opens the full model and the input feeds **once** and times sub-networks
  in turn with the full model; the one timing loop behind measurement sweeps, drift checks
  and the export's re-measurement. A context manager: it removes its temp folder.
* ``device_drift``: measured / predicted on three reference sub-networks, to catch a device
  that runs slower or faster today than when its predictor was fitted.

Anything with a ``measure`` method of ``Timer``'s shape can stand in for a ``DeviceTimer``
(tests hand the export steps a fake timer in milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latency.devices import DeviceProfile, DeviceUnavailable
from latency.features import config_rows
from latency.measure import (
    REGIMES,
    STATS,
    DeviceTimer,
    Timer,
    Workload,
    fixed_inputs,
    traffic_inputs,
)
from latency.predictor import BasePredictor
from latency.workflow import device_inputs, load_device_predictor
from supernet.data import length_stats
from supernet.errors import ConfigError
from supernet.space import SearchSpace, SubnetConfig

if TYPE_CHECKING:
    from supernet.workflow import LoadedRun


@dataclass(frozen=True)
class Target:
    """What a budget applies to: one statistic (``stat``: p50, p90, p99 or mean) of the
    per-call latency of ``batch`` inputs on a device, either on the run's real traffic
    (``regime`` "traffic"; ``length`` is then the traffic's median length) or on one input
    of ``length`` tokens, repeated (``regime`` "fixed")."""

    profile: DeviceProfile
    batch: int
    length: int
    regime: str = "fixed"
    stat: str = "p50"

    def __post_init__(self) -> None:
        if self.regime not in REGIMES or self.stat not in STATS:
            raise ConfigError(f"a target's regime is one of {list(REGIMES)} and its statistic one of {list(STATS)}, "
                              f"got {self.regime!r} and {self.stat!r}")

    @classmethod
    def of(cls, run: LoadedRun, profile: DeviceProfile, length: int | None = None, *, stat: str = "p50") -> Target:
        """On the run's real traffic where the profile is timed on it and no ``length`` is
        given; else at ``length``, or at the shortest of the profile's fixed lengths."""
        if length is None and profile.traffic:
            traffic = traffic_inputs(run.splits["dev"], profile.batch, profile.traffic_calls)  # as measured
            return cls(profile, profile.batch, traffic.length, "traffic", stat)
        if length is None:
            lengths = sorted(device_inputs(run, profile))
            length = lengths[0]
        return cls(profile, profile.batch, length, "fixed", stat)

    def search_space(self, space: SearchSpace) -> SearchSpace:
        """``space`` at the precisions the device runs sub-networks at (its profile's)."""
        return space.with_precisions(self.profile.precisions)

    def describe(self) -> str:
        what = "real traffic" if self.regime == "traffic" else f"{self.length} tokens repeated"
        return f"{self.stat} per call of batch {self.batch} on {what}"


def resolve_length(run: LoadedRun, text: str) -> int:
    """An input length given as text: an integer (``"128"``) or a percentile of the run's
    dev-split token lengths (``"p50"``, ``"p90"``, ...), at least 2. Raises ``ConfigError``
    for other text and for a length outside 2..the run's max_length (inputs are cut there,
    so a budget at a longer length would be timed on inputs that never occur)."""
    stats = length_stats(run.splits["dev"])
    pct = sorted(k for k in stats if k.startswith("p"))
    if text.isdigit():
        length = int(text)
    elif text in pct:
        length = max(2, int(round(stats[text])))
    else:
        raise ConfigError(f"--length {text!r} must be an integer or one of {pct}")
    limit = run.spec.train.max_length
    if not 2 <= length <= limit:
        raise ConfigError(f"--length {length} is outside 2..{limit} (the run's max_length: inputs are cut there)")
    return length


class PredictedLatency:
    """The LatencyModel of a device: its predictor at a fixed input shape (batch, length).

    ``scale`` multiplies predictions and upper bounds: the device's measured drift since the
    predictor was fitted (``device_drift``), 1.0 for none."""

    def __init__(self, predictor: BasePredictor, *, batch: int, length: int, scale: float = 1.0) -> None:
        self.predictor, self.batch, self.length, self.scale = predictor, batch, length, scale

    @classmethod
    def of(cls, run_dir: str | Path, target: Target, scale: float = 1.0) -> PredictedLatency:
        """The fitted predictor of ``target``'s device in the run folder (``hwnas fit``)."""
        pred = load_device_predictor(run_dir, target.profile.name, target.regime, target.stat)
        return cls(pred, batch=target.batch, length=target.length, scale=scale)

    def scaled(self, scale: float) -> PredictedLatency:
        return PredictedLatency(self.predictor, batch=self.batch, length=self.length, scale=scale)

    def predict(self, configs: list[SubnetConfig]) -> list[tuple[float, float]]:
        """(prediction, upper bound) in ms for each configuration."""
        if not configs:
            return []
        out = self.predictor.predict(config_rows(configs, self.batch, self.length))
        return list(zip(out["pred_ms"].astype(float) * self.scale, out["upper_ms"].astype(float) * self.scale,
                        strict=True))


def target_workload(run: LoadedRun, target: Target, *, seed: int = 0) -> Workload:
    """What the target's budget is measured on: the same traffic sample as the device's
    measurements (same seed), or one real input of exactly the target's length."""
    if target.regime == "traffic":
        return traffic_inputs(run.splits["dev"], target.batch, target.profile.traffic_calls, seed)
    return fixed_inputs(run.splits["dev"], target.batch, target.length, seed)


def target_timer(run: LoadedRun, target: Target, *, seed: int = 0) -> DeviceTimer:
    """A timer for ``target``: its workload and statistic. Raises ``DeviceUnavailable``
    when the device is not on this machine."""
    return DeviceTimer(target.profile, run.supernet, [target_workload(run, target, seed=seed)], stat=target.stat)


def open_timer(run: LoadedRun, target: Target) -> DeviceTimer | None:
    """``target_timer``, or None when the device is not on this machine (a kit device)."""
    try:
        return target_timer(run, target)
    except DeviceUnavailable:
        return None


def drift_references(space: SearchSpace) -> list[SubnetConfig]:
    """Sub-networks timed to check the device against its predictor: the full model, half
    width, and quarter width at half depth (three sizes, so that one mispredicted
    configuration does not decide)."""
    return [space.largest(), space.uniform(width=0.5), space.uniform(width=0.25, depth=0.5)]


def device_drift(timer: Timer, latency: PredictedLatency, references: list[SubnetConfig],
                 *, rounds: int = 3) -> dict[str, Any]:
    """How much slower (> 1) or faster (< 1) the device runs now than its predictor says:
    the median of measured / predicted over ``references`` (the first is the full model,
    ``drift_references``), each timed now.

    A predictor is fitted once (``hwnas measure`` + ``hwnas fit``); a shared or throttled
    machine can be slower on the day, and a search that trusts stale predictions picks
    sub-networks that miss the budget when re-measured."""
    got = timer.measure(references[1:], rounds=rounds)
    measured = [got.full_ms, *got.ms]
    predicted = [p for p, _ in latency.predict(references)]
    ratios = [m / p for m, p in zip(measured, predicted, strict=True)]
    return {"ratio": float(np.median(ratios)), "ratios": ratios, "measured_ms": measured,
            "predicted_ms": predicted, "references": [c.describe() for c in references]}
