"""Measurements and predictors inside a run folder.

``runs/NAME/``
  ``devices.json``             user device profiles this run has used (from --devices TOML)
  ``latency/<device>.csv``     measurement rows (see latency/measure.py and results/README.md)
  ``latency/<device>.predictor/``  the fitted predictor of that device
  ``latency/<device>.report.json`` / ``.png``  held-out quality and predicted-vs-measured plot
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latency.devices import BUILTIN, DeviceProfile, check_available, get_device, load_profiles
from latency.measure import MeasurementLog, example_inputs, harness_ratio, sample_configs, sweep
from latency.predictor import (
    BasePredictor,
    PredictorError,
    fit_device,
    load_predictor,
    plot_predicted_vs_measured,
    save_predictor,
)
from supernet.data import length_stats
from supernet.io import write_json
from supernet.model import BertShape
from supernet.workflow import LoadedRun


def devices_of(run_dir: str | Path, devices_file: str | Path | None = None) -> dict[str, DeviceProfile]:
    """Built-in profiles, those this run stored, and those of ``devices_file`` (stored too)."""
    run = Path(run_dir)
    stored = run / "devices.json"
    known = dict(BUILTIN)
    if stored.exists():
        for name, d in json.loads(stored.read_text()).items():
            known[name] = DeviceProfile(**{**d, "lengths": tuple(d["lengths"])})
    if devices_file is not None:
        new = load_profiles(devices_file)
        known.update(new)
        user = {n: p.to_dict() for n, p in known.items() if n not in BUILTIN or n in new}
        write_json(stored, user)
    return known


def resolve_device(run_dir: str | Path, name: str, devices_file: str | Path | None = None) -> DeviceProfile:
    return get_device(name, devices_of(run_dir, devices_file))


def log_path(run_dir: str | Path, device: str) -> Path:
    return Path(run_dir) / "latency" / f"{device}.csv"


def device_inputs(run: LoadedRun, profile: DeviceProfile, seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    """Real dev-split token arrays at each of the profile's lengths."""
    stats = length_stats(run.splits["dev"])
    lengths = [min(L, run.spec.train.max_length) for L in profile.resolve_lengths(stats)]
    return {L: example_inputs(run.splits["dev"], profile.batch, L, seed) for L in sorted(set(lengths))}


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
) -> pd.DataFrame:
    """Measure ``n`` sampled configurations (plus the harness check) on ``profile``.

    The configurations depend only on the run, ``n`` and ``seed``, so several devices
    measured with the same settings see the same sub-networks (and can share ``onnx_cache``).
    """
    check_available(profile)
    inputs = device_inputs(run, profile, seed)
    configs = sample_configs(run.space, run.supernet.shape, n, seed=seed, length=min(run.typical_length, *inputs))
    log = MeasurementLog(log_path(run.folder, profile.name))
    return sweep(profile, run.supernet, configs, inputs, log, reference_every=reference_every,
                 noise_rounds=noise_rounds, progress=progress, onnx_cache=onnx_cache)


def measure_devices(run: LoadedRun, profiles: list[DeviceProfile], **kwargs: Any) -> dict[str, pd.DataFrame]:
    """Measure several devices in turn, exporting each configuration's ONNX file once."""
    import shutil
    import tempfile

    for p in profiles:
        check_available(p)
    cache = Path(tempfile.mkdtemp(prefix="hwnas-onnx-"))
    try:
        return {p.name: measure_device(run, p, onnx_cache=cache, **kwargs) for p in profiles}
    finally:
        shutil.rmtree(cache, ignore_errors=True)




def predictor_path(run_dir: str | Path, device: str) -> Path:
    return Path(run_dir) / "latency" / f"{device}.predictor.json"


def fit_run_device(run_dir: str | Path, shape: BertShape, device: str, *, seed: int = 0) -> dict[str, Any]:
    """Fit, evaluate on held-out configurations, save the predictor, the report and the plot."""
    path = log_path(run_dir, device)
    if not path.exists():
        raise PredictorError(f"{path} does not exist: run `hwnas measure --run {run_dir} --device {device}` first")
    rows = MeasurementLog(path).read()
    pred, report = fit_device(shape, rows, device, seed=seed)
    report["harness_ratio"] = harness_ratio(rows[rows["device"] == device])
    ok = rows[(rows["kind"] == "sample") & (rows["error"] == "")]
    report["measured_configs_per_minute"] = _rate(ok)
    save_predictor(pred, predictor_path(run_dir, device), device=device, shape=shape, report=report)
    base = Path(run_dir) / "latency" / device
    held = report["holdout"]
    m = report["metrics"][report["chosen"]]
    plot_predicted_vs_measured(
        held["measured_ms"], held["pred_ms"], base.with_suffix(".fit.png"),
        f"{device}: {report['chosen']} predictor, held-out configurations\n"
        f"MAPE {m['mape']:.1%}, within 10% {m['within_10pct']:.0%}, Kendall tau {m['kendall_tau']:.3f}",
    )
    write_json(base.with_suffix(".fit.json"), report)
    return report


def _rate(ok: pd.DataFrame) -> float:
    """Configurations measured per minute of wall time (from the rows' timestamps)."""
    if ok.empty:
        return float("nan")
    t = pd.to_datetime(ok["timestamp"], utc=True)
    minutes = (t.max() - t.min()).total_seconds() / 60
    return float(ok["arch_key"].nunique() / minutes) if minutes > 0 else float("nan")


def load_device_predictor(run_dir: str | Path, device: str) -> BasePredictor:
    path = predictor_path(run_dir, device)
    if not path.exists():
        raise PredictorError(f"no predictor for device {device!r} in {run_dir}: run `hwnas fit --run {run_dir} --device {device}`")
    return load_predictor(path, device=device)
