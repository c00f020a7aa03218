"""Measurements and predictors inside a run folder (paths: ``supernet.runfolder.RunFolder``).

The device profiles a run knows are the built-in ones, those stored in its ``devices.json``
and those of a ``--devices`` TOML file; ``store_devices`` (called by the commands) adds a
TOML file's profiles to the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latency.devices import BUILTIN, DeviceProfile, check_available, get_device, load_profiles
from latency.measure import (
    REGIMES,
    STAT_COLUMNS,
    STATS,
    MeasurementLog,
    Workload,
    example_inputs,
    harness_ratio,
    sample_configs,
    sweep,
    traffic_inputs,
)
from latency.predictor import (
    BasePredictor,
    PredictorError,
    fit_device,
    load_predictor,
    plot_predicted_vs_measured,
    save_predictor,
)
from supernet.checkpoint import read_shape
from supernet.data import length_stats
from supernet.errors import ConfigError
from supernet.io import make_temp_dir, read_json, remove_temp_dir, write_json
from supernet.model import BertShape
from supernet.runfolder import RunFolder
from supernet.space import SubnetConfig
from supernet.workflow import LoadedRun


def stored_devices(run_dir: str | Path) -> dict[str, DeviceProfile]:
    """The user profiles this run has stored (``devices.json``)."""
    stored = RunFolder(run_dir).devices
    if not stored.exists():
        return {}
    profiles = read_json(stored, "the run's device profiles")
    if not isinstance(profiles, dict):
        raise ConfigError(f"{stored} is malformed: expected {{NAME: profile}}; delete it and pass --devices again")
    out = {}
    for name, d in profiles.items():
        try:
            if not isinstance(d, dict) or d.get("name") != name or not isinstance(d.get("lengths"), list):
                raise ConfigError(f"expected a profile with name {name!r} and a list of lengths")
            out[name] = DeviceProfile(**{**d, "lengths": tuple(d["lengths"])})
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{stored}: device {name!r} is malformed ({e}); delete it and pass --devices "
                              "again") from None
    return out


def devices_of(run_dir: str | Path, devices_file: str | Path | None = None) -> dict[str, DeviceProfile]:
    """Built-in profiles, those this run stored, and those of ``devices_file`` (read only)."""
    known = {**BUILTIN, **stored_devices(run_dir)}
    if devices_file is not None:
        known.update(load_profiles(devices_file))
    return known


def store_devices(run_dir: str | Path, devices_file: str | Path) -> dict[str, DeviceProfile]:
    """Add ``devices_file``'s profiles to the run's ``devices.json`` (a name defined again
    replaces the stored one), so later commands know them without the file."""
    new = load_profiles(devices_file)
    user = {**stored_devices(run_dir), **new}
    write_json(RunFolder(run_dir).devices, {n: p.to_dict() for n, p in user.items()})
    return new


def resolve_device(run_dir: str | Path, name: str, devices_file: str | Path | None = None) -> DeviceProfile:
    return get_device(name, devices_of(run_dir, devices_file))


def device_inputs(run: LoadedRun, profile: DeviceProfile) -> dict[int, dict[str, np.ndarray]]:
    """Real dev-split token arrays at each of the profile's fixed lengths (none for a
    traffic-only profile off a kit)."""
    stats = length_stats(run.splits["dev"])
    lengths = [min(L, run.spec.train.max_length) for L in profile.resolve_lengths(stats)]
    return {L: example_inputs(run.splits["dev"], profile.batch, L, 0) for L in sorted(set(lengths))}


def device_workloads(run: LoadedRun, profile: DeviceProfile) -> list[Workload]:
    """What ``profile`` is timed on in this run: the traffic sample (first, where the profile
    has one), then each fixed length. One sample per run and profile, whatever a measurement's
    seed (that draws configurations): the budgets and exports are timed on it
    (``latency.target``), and the predictor's length feature is its length."""
    out = [traffic_inputs(run.splits["dev"], profile.batch, profile.traffic_calls)] if profile.traffic else []
    return out + [Workload("fixed", L, (feed,)) for L, feed in device_inputs(run, profile).items()]


def measurement_plan(run: LoadedRun, profile: DeviceProfile, *, n: int,
                     seed: int = 0) -> tuple[list[SubnetConfig], list[Workload]]:
    """The ``n`` configurations and the workloads that ``profile`` is measured on in this run
    (they depend only on the run, ``n`` and ``seed``: the same wherever the device is; the
    workloads on the run alone)."""
    workloads = device_workloads(run, profile)
    configs = sample_configs(run.space.with_precisions(profile.precisions), run.supernet.shape, n, seed=seed,
                             length=min(run.typical_length, *(w.length for w in workloads)))
    return configs, workloads


def measure_device(
    run: LoadedRun,
    profile: DeviceProfile,
    *,
    n: int,
    seed: int = 0,
    reference_every: int = 20,
    noise_rounds: int = 8,
    progress: bool = True,
    onnx_cache: Path | None = None,
    passes: int = 1,
) -> pd.DataFrame:
    """Measure ``n`` sampled configurations (plus the harness check) on ``profile``, each in
    ``passes`` passes over the sample (``sweep``).

    The configurations depend only on the run, ``n`` and ``seed``, so several devices
    measured with the same settings see the same sub-networks (and can share ``onnx_cache``).
    """
    check_available(profile)
    configs, workloads = measurement_plan(run, profile, n=n, seed=seed)
    log = MeasurementLog(run.paths.measurements(profile.name))
    return sweep(profile, run.supernet, configs, workloads, log, reference_every=reference_every,
                 noise_rounds=noise_rounds, progress=progress, onnx_cache=onnx_cache, passes=passes)


def measure_devices(run: LoadedRun, profiles: list[DeviceProfile], **kwargs: Any) -> dict[str, pd.DataFrame]:
    """Measure several devices in turn, exporting each configuration's ONNX file once."""
    for p in profiles:
        check_available(p)
    cache = make_temp_dir("onnx")
    try:
        return {p.name: measure_device(run, p, onnx_cache=cache, **kwargs) for p in profiles}
    finally:
        remove_temp_dir(cache)




def measured_rows(run_dir: str | Path, device: str) -> pd.DataFrame:
    """Every measurement row of ``device`` in a run (``RUN/latency/DEVICE.csv``); a
    ``PredictorError`` naming the command to run when the device was never measured."""
    path = RunFolder(run_dir).measurements(device)
    if not path.exists():
        raise PredictorError(f"{path} does not exist: run `hwnas measure --run {run_dir} --device {device}` first")
    return MeasurementLog(path).read()


def fit_run_device(run_dir: str | Path, shape: BertShape, device: str, *, seed: int = 0,
                   stats: tuple[str, ...] = STATS) -> list[dict[str, Any]]:
    """Fit a predictor for each regime the device was measured in (traffic, fixed lengths)
    and each of ``stats`` (the statistic a budget applies to); evaluate each on held-out
    configurations; save predictors, reports and plots. Returns the reports, the primary
    one first: p50 on real traffic where the device was timed on it, else on fixed lengths."""
    paths = RunFolder(run_dir)
    path = paths.measurements(device)
    rows = measured_rows(run_dir, device)
    reports: dict[tuple[str, str], dict[str, Any]] = {}
    for regime in [r for r in REGIMES if (rows["regime"] == r).any()]:
        on_regime = rows[rows["regime"] == regime]
        for stat in stats:
            if pd.to_numeric(on_regime[STAT_COLUMNS[stat]], errors="coerce").notna().any():  # older files: no p99
                reports[regime, stat] = _fit_one(paths, shape, device, on_regime, regime, stat, seed)
    if not reports:
        raise PredictorError(f"{path} holds no measurements: run `hwnas measure --run {run_dir} --device {device}`")
    return list(reports.values())


def _fit_one(paths: RunFolder, shape: BertShape, device: str, rows: pd.DataFrame, regime: str, stat: str,
             seed: int) -> dict[str, Any]:
    column = STAT_COLUMNS[stat]
    measured = rows
    if stat != "p50":
        # The predictors learn the median column; for another statistic, that column holds it.
        rows = rows.assign(lat_median_ms=pd.to_numeric(rows[column], errors="coerce"))
    pred, report = fit_device(shape, rows, device, seed=seed)
    report.update(regime=regime, stat=stat, target_column=column)
    # The harness check compares medians whatever the statistic fitted (the rows as measured).
    report["harness_ratio"] = harness_ratio(measured[measured["device"] == device])
    ok = rows[(rows["kind"] == "sample") & (rows["error"] == "")]
    report["measured_configs_per_minute"] = _rate(ok)
    save_predictor(pred, paths.predictor(device, regime, stat), device=device, shape=shape, report=report)
    held = report["holdout"]
    m = report["metrics"][report["chosen"]]
    what = "real traffic" if regime == "traffic" else "one fixed-length input repeated"
    plot_predicted_vs_measured(
        held["measured_ms"], held["pred_ms"], paths.fit_plot(device, regime, stat),
        f"{device} ({stat} on {what}): {report['chosen']} predictor, held-out configurations\n"
        f"MAPE {m['mape']:.1%}, within 10% {m['within_10pct']:.0%}, Kendall tau {m['kendall_tau']:.3f}",
    )
    write_json(paths.fit_report(device, regime, stat), report)
    return report


def _rate(ok: pd.DataFrame) -> float:
    """Configurations measured per minute of wall time (from the rows' timestamps)."""
    if ok.empty:
        return float("nan")
    t = pd.to_datetime(ok["timestamp"], utc=True)
    minutes = (t.max() - t.min()).total_seconds() / 60
    return float(ok["arch_key"].nunique() / minutes) if minutes > 0 else float("nan")


def load_device_predictor(run_dir: str | Path, device: str, regime: str = "traffic",
                          stat: str = "p50") -> BasePredictor:
    """The predictor of ``stat`` for ``device`` timed in ``regime`` (``fit_run_device``)."""
    path = RunFolder(run_dir).predictor(device, regime, stat)
    if not path.exists():
        what = "real traffic" if regime == "traffic" else "fixed-length inputs"
        raise PredictorError(f"no {stat} predictor for device {device!r} on {what} in {run_dir}: measure it there "
                             f"(`hwnas measure --run {run_dir} --device {device}`) and fit "
                             f"(`hwnas fit --run {run_dir} --device {device}`)")
    pred = load_predictor(path, device=device)
    if pred.shape != read_shape(RunFolder(run_dir).supernet):
        raise PredictorError(f"{path} was fitted for another model than this run's supernet: refit it "
                             f"(`hwnas fit --run {run_dir} --device {device}`)")
    return pred
