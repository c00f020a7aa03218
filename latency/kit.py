"""Measurement kits for devices that cannot run this package (a phone, a Raspberry Pi).

``write_run_kit`` samples N sub-networks of a trained run and hands them, with real dev-split
inputs at the profile's lengths, to ``write_kit``, which puts their ONNX models, the input
token arrays, ``manifest.json`` and one standalone script (``measure_kit.py``: numpy and the
profile's runtime, onnxruntime or openvino, only) into a folder. The user copies the folder to the device and runs the script; it
writes a CSV that ``import_kit_csv`` turns into ordinary measurement rows of that device.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from latency.devices import DeviceProfile
from latency.features import misfit
from latency.measure import (
    COLUMNS,
    MeasurementError,
    MeasurementLog,
    Workload,
    arch_columns,
    check_rows,
    sample_configs,
)
from latency.workflow import device_workloads
from supernet.errors import HwnasError
from supernet.io import atomic_write, write_json
from supernet.model import BertShape, ElasticBert
from supernet.space import SubnetConfig

if TYPE_CHECKING:
    from supernet.workflow import LoadedRun

KIT_REQUIRED = ["device", "kind", "arch_key", "arch_json", "batch", "length", "lat_median_ms", "error"]


class KitError(HwnasError):
    """A kit folder or kit CSV that cannot be used."""


def write_run_kit(run: LoadedRun, profile: DeviceProfile, out_dir: str | Path, *, n: int, seed: int = 0,
                  progress: bool = True) -> Path:
    """A kit of ``n`` sampled sub-networks of ``run`` for ``profile``, with what the profile is
    timed on (the run's real traffic sample, the same as a local measurement's, and any fixed
    lengths); returns the path of ``manifest.json``."""
    workloads = device_workloads(run, profile)
    configs = sample_configs(run.space.with_precisions(profile.precisions), run.supernet.shape, n, seed=seed,
                             length=min(w.length for w in workloads))
    return write_kit(out_dir, profile, run.supernet, configs, workloads, progress=progress)


def write_kit(
    out_dir: str | Path,
    profile: DeviceProfile,
    supernet: ElasticBert,
    configs: Sequence[SubnetConfig],
    workloads: Sequence[Workload],
    *,
    progress: bool = True,
) -> Path:
    """Write the kit folder; returns the path of ``manifest.json``. Fixed-length workloads go
    to ``inputs/len<L>.npz``; a traffic workload to ``inputs/traffic.npz`` (each call's three
    arrays, suffixed ``_<i>``), replayed call by call by the script."""
    from latency.onnx_export import export_subnet_onnx

    out = Path(out_dir)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "inputs").mkdir(exist_ok=True)
    shape = supernet.shape
    full = SubnetConfig.full(shape.heads, shape.ffn)
    models = []
    for cfg in tqdm([full, *configs], desc=f"kit {profile.name}", disable=not progress):
        f = f"models/{cfg.key()}.onnx"
        if not (out / f).exists():
            export_subnet_onnx(supernet, cfg, out / f)
        models.append({"file": f, "arch_key": cfg.key(), "arch_json": cfg.to_json()})
    files = {}
    traffic: dict[str, Any] | None = None
    for w in workloads:
        if w.regime == "traffic":
            traffic = {"file": "inputs/traffic.npz", "calls": len(w.feeds), "length": w.length}
            _savez(out / "inputs" / "traffic.npz", {f"{k}_{i}": feed[k] for i, feed in enumerate(w.feeds) for k in feed})
        else:
            files[str(w.length)] = f"inputs/len{w.length}.npz"
            _savez(out / files[str(w.length)], w.feeds[0])
    shutil.copyfile(Path(__file__).with_name("kit_script.py"), out / "measure_kit.py")
    manifest = {
        "device": profile.name, "batch": profile.batch,
        # What the script times the ONNX graphs with: OpenVINO for an OpenVINO device, else
        # ONNX Runtime (a kit device has no PyTorch).
        "runtime": "openvino" if profile.runtime == "openvino" else "onnxruntime",
        # None: the device's own core count (this host's count says nothing about a phone).
        "threads": profile.threads,
        "warmup": profile.warmup, "repeats": profile.repeats, "reference_every": 20,
        "inputs": files, "traffic": traffic, "reference": models[0], "models": models[1:],
        "shape": shape.to_dict(),
    }
    return write_json(out / "manifest.json", manifest)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            # numpy types **kwds as its allow_pickle flag; these are named arrays
            np.savez(f, **arrays)  # type: ignore[arg-type]

    atomic_write(path, write)


def import_kit_csv(csv_path: str | Path, shape: BertShape, log: MeasurementLog, device: str) -> int:
    """Add a kit CSV's rows to ``log`` as measurements of ``device``; returns rows added.

    Rows already present (same kind, configuration, length and timestamp) are skipped, so
    importing the same file twice adds nothing.
    """
    p = Path(csv_path)
    if not p.is_file():
        raise KitError(f"{p} does not exist: give the CSV that measure_kit.py wrote on the device")
    try:
        kit = pd.read_csv(p, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise KitError(f"{p} is not a CSV written by measure_kit.py: {e}") from e
    missing = [c for c in KIT_REQUIRED if c not in kit.columns]
    if missing:
        raise KitError(f"{p} lacks the columns {missing}; a kit CSV has {KIT_REQUIRED} and more (found {list(kit.columns)})")
    devices = set(kit["device"].astype(str))
    if devices != {device}:
        raise KitError(f"{p} holds measurements of {sorted(devices)}, not of {device!r}: pass --device {sorted(devices)[0]}")
    kit["error"] = kit["error"].fillna("").astype(str)
    kit["regime"] = kit["regime"].fillna("fixed").astype(str) if "regime" in kit else "fixed"  # older kits
    try:
        kit = check_rows(kit, p)
    except MeasurementError as e:
        raise KitError(str(e)) from None
    for i, text in enumerate(kit["arch_json"]):
        why = misfit(SubnetConfig.from_dict(json.loads(text)), shape)
        if why:
            raise KitError(f"{p} line {i + 2}: its sub-network {why}: was this kit written for another run?")
    have = log.read()
    seen = set(zip(have["kind"], have["arch_key"], have["regime"], have["length"].astype(int),
                   have["timestamp"].astype(str), strict=True)) if len(have) else set()
    rows, ref = [], {}
    for r in kit.to_dict("records"):
        L = int(r["length"])
        regime = str(r["regime"])
        cfg = SubnetConfig.from_dict(json.loads(r["arch_json"]))  # checked above
        row = {c: r.get(c, "") for c in COLUMNS if c in r}
        row.update(arch_columns(shape, cfg, L))
        row.update(provider="kit", precision="fp32", regime=regime)
        if r.get("runtime", "onnxruntime") == "onnxruntime":
            row["onnxruntime_version"] = r.get("runtime_version", "")
        if r["kind"] == "reference" and not r["error"]:
            ref[regime, L] = float(r["lat_median_ms"])
        if r["kind"] == "sample" and not r["error"] and (regime, L) in ref:
            row.update(ref_median_ms=ref[regime, L], lat_ratio=float(r["lat_median_ms"]) / ref[regime, L])
        if (row["kind"], row["arch_key"], regime, L, str(row.get("timestamp", ""))) not in seen:
            rows.append(row)
    if rows:
        log.append(rows)
    return len(rows)
