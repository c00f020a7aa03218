"""Measurement kits for devices that cannot run this package (a phone, a Raspberry Pi).

``write_run_kit`` samples N sub-networks of a trained run and hands them, with real dev-split
inputs at the profile's lengths, to ``write_kit``, which puts their ONNX models, the input
token arrays, ``manifest.json`` and one standalone script (``measure_kit.py``: numpy and the
profile's runtime, onnxruntime or openvino, only) into a folder. The user copies the folder to the device and runs the script; it
writes a CSV that ``import_kit_csv`` turns into ordinary measurement rows of that device.
"""

from __future__ import annotations

import hashlib
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
    check_same_threads,
)
from latency.workflow import measurement_plan
from supernet.errors import HwnasError
from supernet.io import atomic_write, write_json, write_text
from supernet.model import BertShape, ElasticBert
from supernet.space import SubnetConfig

if TYPE_CHECKING:
    from supernet.workflow import LoadedRun

KIT_REQUIRED = ["device", "kind", "arch_key", "arch_json", "batch", "length", "lat_median_ms", "error"]


class KitError(HwnasError):
    """A kit folder or kit CSV that cannot be used."""


def write_run_kit(run: LoadedRun, profile: DeviceProfile, out_dir: str | Path, *, n: int, seed: int = 0,
                  reference_every: int = 20, progress: bool = True) -> Path:
    """A kit of the ``n`` sub-networks a local measurement of ``profile`` with this ``seed``
    would time (``measurement_plan``), with what the profile is timed on (the run's real
    traffic sample and any fixed lengths); returns the path of ``manifest.json``."""
    configs, workloads = measurement_plan(run, profile, n=n, seed=seed)
    return write_kit(out_dir, profile, run.supernet, configs, workloads, reference_every=reference_every,
                     progress=progress)


def kit_id(supernet: ElasticBert, profile: DeviceProfile, workloads: Sequence[Workload]) -> str:
    """What a kit's timings are valid for: the run's weights, the inputs timed (each workload's
    token arrays), the batch and the threads. ``measure_kit.py`` stamps it on every row and
    resumes only a CSV of the same id; ``import_kit_csv`` takes rows of this run's id only."""
    from supernet.train import weights_sha1

    h = hashlib.sha1(weights_sha1(supernet).encode())
    for w in workloads:
        h.update(f"{w.regime}:{w.length}:{len(w.feeds)};".encode())
        for feed in w.feeds:
            for k in sorted(feed):
                h.update(k.encode() + np.ascontiguousarray(feed[k], dtype=np.int64).tobytes())
    h.update(f"batch {profile.batch} threads {profile.threads}".encode())
    return h.hexdigest()[:16]


def write_kit(
    out_dir: str | Path,
    profile: DeviceProfile,
    supernet: ElasticBert,
    configs: Sequence[SubnetConfig],
    workloads: Sequence[Workload],
    *,
    reference_every: int = 20,
    progress: bool = True,
) -> Path:
    """Write the kit folder; returns the path of ``manifest.json``. Fixed-length workloads go
    to ``inputs/len<L>.npz``; a traffic workload to ``inputs/traffic.npz`` (each call's three
    arrays, suffixed ``_<i>``), replayed call by call by the script."""
    from latency.onnx_export import export_subnet_onnx
    from supernet.train import weights_sha1

    out = Path(out_dir)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "inputs").mkdir(exist_ok=True)
    # A model file is reused only if it was exported from these weights: a kit folder written
    # again for another run (its configurations' names are the same) gets its graphs anew.
    stamp, weights = out / "models" / "weights.sha1", weights_sha1(supernet)
    if not stamp.exists() or stamp.read_text().strip() != weights:
        for old in (out / "models").glob("*.onnx"):
            old.unlink()
        write_text(stamp, weights + "\n")
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
        "warmup": profile.warmup, "repeats": profile.repeats, "reference_every": reference_every,
        "kit_id": kit_id(supernet, profile, workloads),
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


def import_kit_csv(csv_path: str | Path, shape: BertShape, log: MeasurementLog, device: str, *,
                   expected_id: str | None = None) -> int:
    """Add a kit CSV's rows to ``log`` as measurements of ``device``; returns rows added.

    Rows already present (same kind, configuration, length and timestamp) are skipped, so
    importing the same file twice adds nothing. ``expected_id``: the ``kit_id`` of this run
    and device; a CSV whose rows carry another (a kit of another run, inputs, batch or
    threads) is refused (CSVs of kits written before it existed carry none).
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
    if kit.empty:
        raise KitError(f"{p} holds no rows: run measure_kit.py on the device until it says 'wrote ...'")
    devices = set(kit["device"].astype(str))
    if devices != {device}:
        raise KitError(f"{p} holds measurements of {sorted(devices)}, not of {device!r}: pass --device {sorted(devices)[0]}")
    if expected_id is not None and "kit_id" in kit:
        ids = set(kit["kit_id"].fillna("").astype(str)) - {""}
        if ids - {expected_id}:
            raise KitError(f"{p} was timed with a kit of id {sorted(ids)}, and this run's kit for {device} has id "
                           f"{expected_id}: it was written for another run, inputs, batch or threads. Write a kit "
                           f"from this run (hwnas measure --kit) and time that one")
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
    if "threads" in kit:  # one device's rows all timed with one thread count, as a local measurement's
        counts = pd.to_numeric(kit.loc[kit["kind"] == "sample", "threads"], errors="coerce").dropna()
        try:
            if len(counts):
                check_same_threads(kit, int(counts.iloc[0]), p, device)
                check_same_threads(have, int(counts.iloc[0]), log.path, device)
        except MeasurementError as e:
            raise KitError(str(e)) from None
    seen = set(zip(have["kind"], have["arch_key"], have["regime"], have["length"].astype(int),
                   have["timestamp"].astype(str), strict=True)) if len(have) else set()
    rows, ref = [], {}
    for r in kit.to_dict("records"):
        L = int(r["length"])
        regime = str(r["regime"])
        cfg = SubnetConfig.from_dict(json.loads(r["arch_json"]))  # checked above
        # An empty cell (a failed model's latencies) stays empty: a NaN would be written as "nan",
        # which the measurement log reads back as text and refuses.
        row = {c: "" if isinstance(r[c], float) and np.isnan(r[c]) else r[c] for c in COLUMNS if c in r}
        row.update(arch_columns(shape, cfg, L))
        row.update(provider="kit", precision=cfg.precision, regime=regime)
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
