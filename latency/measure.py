"""Honest latency measurement: one flat row per (configuration, input shape, device).

How a configuration is timed: its standalone model is extracted (physically smaller),
exported to ONNX (token dropping inside the graph) or run in PyTorch eager, warmed up, then
run ``repeats`` times on real token sequences of each profile length; the row holds the
median, p90, mean, min, inter-quartile range and coefficient of variation, after dropping
outliers above Q3 + 3 IQR (a context switch, a page fault).

Three traps this module avoids:

* ONNX Runtime's intra-op threads spin after a run by default, so when sessions are timed in
  turn one session's spinning threads slow the next; every session here has
  ``session.intra_op.allow_spinning = 0`` (``latency.onnx_export.ort_session``).
* These machines drift: the full model is re-measured every ``reference_every``
  configurations and each row stores its ratio to the latest full-model figure.
* Noise: a harness check times two sessions of the *same* full model in turn; their ratio
  should be about 1, and the spread of those repeats is the noise floor.

Rows are appended to ``<run>/latency/<device>.csv`` one line per write with fsync, so an
interrupted sweep loses at most the configuration in flight and resumes without measuring a
finished configuration twice.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from latency.devices import DeviceProfile, check_available
from supernet import faults
from supernet.cost import subnet_flops, subnet_params
from supernet.data import Encoded
from supernet.errors import HwnasError
from supernet.io import CsvLog, disk_full, make_temp_dir, remove_temp_dir
from supernet.model import BertShape, ElasticBert
from supernet.space import SearchSpace, SubnetConfig

COLUMNS = [
    "device", "kind", "note", "arch_key", "arch_json", "arch_layers", "arch_heads", "arch_ffn",
    "arch_retention", "arch_flops", "arch_params", "batch", "length", "runtime", "provider", "threads",
    "precision", "regime", "calls", "warmup", "repeats", "lat_median_ms", "lat_p90_ms", "lat_p99_ms", "lat_mean_ms", "lat_min_ms",
    "lat_iqr_ms", "lat_cv", "outliers", "ref_median_ms", "lat_ratio", "runtime_version", "torch_version",
    "onnxruntime_version", "host", "cpu", "timestamp", "error",
]


REGIMES = ("traffic", "fixed")  # what a model serves while timed (``Workload``)
STATS = ("p50", "p90", "p99", "mean")  # what a budget may apply to (``--budget-stat``)
STAT_COLUMNS = {"p50": "lat_median_ms", "p90": "lat_p90_ms", "p99": "lat_p99_ms", "mean": "lat_mean_ms"}


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    iqr_ms: float
    cv: float
    n: int
    outliers: int
    p99_ms: float = float("nan")
    # Every timed call, in ms: several rounds' tails and mean come from them pooled (``_median_timing``).
    samples: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def stat(self, name: str) -> float:
        """One of ``STATS``: p50 (the median), p90, p99 or mean, in ms."""
        return {"p50": self.median_ms, "p90": self.p90_ms, "p99": self.p99_ms, "mean": self.mean_ms}[name]


def summarize(samples_ms: Sequence[float], *, drop_outliers: bool = True) -> Timing:
    """Statistics of timings. With ``drop_outliers``, the median, minimum and spread come
    after dropping the calls above Q3 + 3 IQR (a context switch, a page fault: right for the
    typical time of one input repeated); p90, p99 and the mean keep every call, since a tail
    (or a mean) without its slow calls promises less than a user gets. Per-call times of real
    traffic keep every call throughout: their spread is the inputs'."""
    x = np.asarray(samples_ms, dtype=float)
    q1, q3 = np.percentile(x, [25, 75])
    kept = x[x <= q3 + 3 * (q3 - q1)] if drop_outliers else x
    return Timing(
        median_ms=float(np.median(kept)),
        p90_ms=float(np.percentile(x, 90)),
        p99_ms=float(np.percentile(x, 99)),
        mean_ms=float(x.mean()),
        min_ms=float(kept.min()),
        iqr_ms=float(np.subtract(*np.percentile(kept, [75, 25]))),
        cv=float(kept.std() / kept.mean()) if kept.mean() > 0 else float("nan"),
        n=int(kept.size),
        outliers=int(x.size - kept.size),
        samples=tuple(float(v) for v in x),
    )


def time_fn(fn: Callable[[], Any], warmup: int, repeats: int) -> Timing:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return summarize(samples)


Feed = dict[str, np.ndarray]


def time_calls(fn: Callable[[Feed], Any], feeds: Sequence[Feed], warmup: int) -> Timing:
    """Per-call times of ``fn`` serving ``feeds`` in order, after ``warmup`` untimed calls
    (the first feeds again): a warm server meeting a stream of different inputs."""
    for i in range(warmup):
        fn(feeds[i % len(feeds)])
    samples = []
    for feed in feeds:
        t0 = time.perf_counter_ns()
        fn(feed)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return summarize(samples, drop_outliers=False)


@dataclass(frozen=True)
class Workload:
    """What a model serves while it is timed.

    * ``traffic``: a fixed, seeded sample of real dev inputs at their own lengths (``batch``
      per call, each call padded to its own longest input), served in order; ``length`` is
      the sample's median token length. The default: what a user's server meets.
    * ``fixed``: one real input of exactly ``length`` tokens, repeated; for users who pad
      every call to one shape. It flatters small models (every cache is warm for that one
      shape: 3.9x against 3.2x on real sentences for the same two models, BRIEF.md).
    """

    regime: str
    length: int
    feeds: tuple[Feed, ...]

    @property
    def key(self) -> tuple[str, int]:
        return (self.regime, self.length)

    @property
    def batch(self) -> int:
        """Inputs per call."""
        return int(self.feeds[0]["input_ids"].shape[0])


def traffic_inputs(enc: Encoded, batch: int, n_calls: int, seed: int = 0) -> Workload:
    """A traffic workload: ``n_calls`` calls of ``batch`` real examples each, drawn without
    replacement where the split is large enough (seeded), each call padded to its longest."""
    if len(enc) == 0:
        raise ValueError("no examples to draw traffic from")
    rng = np.random.default_rng(seed)
    need = n_calls * batch
    order = rng.permutation(len(enc))
    idx = np.concatenate([order] * (need // len(order) + 1))[:need] if need > len(order) else order[:need]
    feeds = []
    for c in range(n_calls):
        rows = [enc.input_ids[i] for i in idx[c * batch:(c + 1) * batch]]
        T = max(len(r) for r in rows)
        ids = np.zeros((len(rows), T), dtype=np.int64)
        mask = np.zeros((len(rows), T), dtype=np.int64)
        for b, r in enumerate(rows):
            ids[b, :len(r)], mask[b, :len(r)] = r, 1
        feeds.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    lengths = [len(enc.input_ids[i]) for i in idx]
    return Workload("traffic", int(round(float(np.median(lengths)))), tuple(feeds))


def fixed_inputs(enc: Encoded, batch: int, length: int, seed: int = 0) -> Workload:
    """A fixed workload: ``example_inputs`` repeated."""
    return Workload("fixed", length, (example_inputs(enc, batch, length, seed),))


def example_inputs(enc: Encoded, batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``batch`` real token sequences of exactly ``length`` tokens (int64 arrays).

    Examples at least that long are cut to ``length`` (keeping [CLS] first and [SEP] last);
    shorter ones are extended with tokens of other examples, so every row is real text.
    """
    rng = np.random.default_rng(seed)
    lengths = enc.lengths()
    order = rng.permutation(len(enc))
    long_enough = [i for i in order if lengths[i] >= length]
    rows = []
    pool = [t for i in order for t in enc.input_ids[i][1:-1]] or [1000]
    for b in range(batch):
        if b < len(long_enough):
            ids = list(enc.input_ids[long_enough[b]][: length - 1]) + [enc.input_ids[long_enough[b]][-1]]
        else:
            start = int(rng.integers(0, len(pool)))
            body = [pool[(start + j) % len(pool)] for j in range(length - 2)]
            ids = [enc.input_ids[0][0], *body, enc.input_ids[0][-1]]
        rows.append(ids)
    ids_arr = np.asarray(rows, dtype=np.int64)
    return {
        "input_ids": ids_arr,
        "attention_mask": np.ones_like(ids_arr),
        "token_type_ids": np.zeros_like(ids_arr),
    }


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch

    from supernet.evaluate import cpu_model

    return {
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "host": socket.gethostname(),
        "cpu": cpu_model(),
    }


Runner = Callable[[dict[str, np.ndarray]], Any]


def _ort_runner(sess: Any) -> Runner:
    from latency.onnx_export import session_feed

    take = session_feed(sess)
    return lambda feeds: sess.run(["logits"], take(feeds))


def open_onnx_runner(profile: DeviceProfile, path: str | Path) -> Runner:
    """A runner of the ONNX file ``path`` on ``profile``'s runtime: an ONNX Runtime session or
    an OpenVINO compiled model (``latency.onnx_export``), with the profile's threads."""
    from latency.onnx_export import ort_session, ov_compiled, ov_runner

    if profile.runtime == "openvino":
        return ov_runner(ov_compiled(path, threads=profile.effective_threads, device=profile.provider))
    if profile.runtime != "onnxruntime":
        raise MeasurementError(f"device {profile.name!r} runs {profile.runtime}, which does not run ONNX files")
    return _ort_runner(ort_session(path, threads=profile.effective_threads, providers=[profile.provider]))


def runtime_version(runtime: str) -> str:
    """The installed version of a runtime of ``latency.devices.RUNTIMES``."""
    import importlib

    return str(importlib.import_module(runtime).__version__)


# What the ONNX cache of a measurement leaves free on its disk: 300 configurations measured on
# two devices in 3 passes keep 300 files, about 20 GB for MiniLM (its 47 MB of word embeddings
# are in each); below this, files are exported again when timed instead of kept.
CACHE_KEEPS_FREE = 4 * 2**30


def open_runner(profile: DeviceProfile, model: ElasticBert, workdir: Path, *, cache_name: str | None = None,
                precision: str = "fp32") -> Runner:
    """A callable that runs one inference of ``model`` on ``profile``'s runtime, at
    ``precision`` (int8: its quantized ONNX graph, ``latency.onnx_export.export_deployed``).

    With ``cache_name``, the ONNX file is kept in ``workdir`` under that name and reused by
    later calls (several devices measured in one go export each configuration once), while
    the disk keeps ``CACHE_KEEPS_FREE`` bytes free; past that it is exported for each call.
    """
    if profile.runtime in ("onnxruntime", "openvino"):  # both read the exported ONNX graph
        from latency.onnx_export import export_deployed

        cached = workdir / f"{cache_name}.onnx" if cache_name is not None else None
        if cached is not None and cached.exists():
            return open_onnx_runner(profile, cached)
        fd, name = tempfile.mkstemp(suffix=".onnx", dir=workdir)
        os.close(fd)
        try:
            path = export_deployed(model, precision, name)
            if cached is not None and shutil.disk_usage(workdir).free > CACHE_KEEPS_FREE:
                os.replace(path, cached)  # renamed once whole: no half file is reused
                path = cached
            return open_onnx_runner(profile, path)
        finally:
            Path(name).unlink(missing_ok=True)  # the session holds the graph in memory; a kept file was renamed

    import torch

    if precision != "fp32":
        raise MeasurementError(f"device {profile.name!r} runs PyTorch eager, which this project times in fp32 "
                               f"only; {precision} sub-networks run on ONNX Runtime devices")
    device = "cuda" if profile.provider == "cuda" else "cpu"
    torch.set_num_threads(profile.effective_threads)
    m = model.eval().to(device)
    if profile.precision == "fp16":
        m = m.half()

    def run(feeds: dict[str, np.ndarray]) -> Any:
        with torch.inference_mode():
            out = m(*(torch.from_numpy(feeds[k]).to(device) for k in ("input_ids", "attention_mask", "token_type_ids")))
            if device == "cuda":
                torch.cuda.synchronize()
            return out

    return run


def arch_columns(shape: BertShape, cfg: SubnetConfig, length: int) -> dict[str, Any]:
    kept = cfg.kept_layers
    return {
        "arch_key": cfg.key(),
        "arch_json": cfg.to_json(),
        "arch_layers": len(kept),
        "arch_heads": "/".join(str(h) for h in cfg.heads),
        "arch_ffn": "/".join(str(f) for f in cfg.ffn),
        "arch_retention": "/".join(f"{r:g}" for r in cfg.retention),
        "arch_flops": subnet_flops(shape, cfg, length),
        "arch_params": subnet_params(shape, cfg),
    }


class MeasurementLog:
    """The per-device measurement file: append-only CSV, one fsync'ed write per append
    (``supernet.io.CsvLog``: a crash mid-write loses only the row being written).

    Files written before the ``regime`` column existed read as fixed-length rows; appending
    to one is refused (its header lacks today's columns). ``on_append`` is called with every
    batch of rows once it is stored (a measurement on a cluster node sends them back)."""

    def __init__(self, path: str | Path, on_append: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self.path = Path(path)
        self._log = CsvLog(self.path, COLUMNS)
        self.on_append = on_append

    def read(self) -> pd.DataFrame:
        """Every complete row, checked (``check_rows``): MeasurementError names a bad line."""
        try:
            frame = self._log.read(keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise MeasurementError(f"{self.path} is not a readable measurement file ({str(e).strip()}): fix or "
                                   "delete the malformed line") from None
        if len(frame.columns) and "kind" not in frame.columns:
            raise MeasurementError(f"{self.path} is not a measurement file (its columns are {list(frame.columns)[:6]}"
                                   "...): move it away and measure again")
        frame = frame.reindex(columns=[*COLUMNS, *(c for c in frame.columns if c not in COLUMNS)])
        frame["error"] = frame["error"].fillna("").astype(str)
        frame["regime"] = frame["regime"].fillna("fixed").astype(str)  # older files: fixed lengths only
        return check_rows(frame, self.path)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path) as f:
                header = f.readline().strip().split(",")
            if header != COLUMNS:
                raise MeasurementError(
                    f"{self.path} was written by an older hwnas (its columns differ from today's): move it "
                    "away and measure again, or import it into a new file")
        rows = list(rows)
        self._log.append(rows)
        if self.on_append is not None:
            self.on_append(rows)

    def timed(self) -> Counter[tuple[str, int, str, int]]:
        """How many sample rows each (arch_key, batch, regime, length) has (errors count, except
        a full disk's, which a measurement made before ``sweep`` stopped on it recorded): the
        passes done."""
        f = self.read()
        f = f[(f["kind"] == "sample") & ~f["error"].map(lambda e: disk_full(Exception(e)) is not None)]
        return Counter(zip(f["arch_key"], f["batch"].astype(int), f["regime"], f["length"].astype(int), strict=True))


class MeasurementError(HwnasError):
    """A measurement file that cannot be appended to or read."""


KINDS = ("sample", "reference", "noise")  # what a row times (``sweep``)


def check_rows(frame: pd.DataFrame, where: str | Path) -> pd.DataFrame:
    """``frame`` (measurement rows, as read from ``where``) with its numeric columns as numbers;
    MeasurementError names the first bad line (a header is line 1): an unknown kind or
    regime, a batch or length that is not a positive whole number, a latency that is not a
    finite number (or missing from a row without an error), or an arch_json that is not a
    sub-network configuration."""
    def check(wrong: Any, column: str, want: str) -> None:
        lines = np.flatnonzero(np.asarray(wrong, dtype=bool))
        if len(lines):
            i = int(lines[0])
            value = frame.at[i, column]
            shown = repr(value) if isinstance(value, str) else str(value)
            raise MeasurementError(f"{where} line {i + 2}: {column} is {shown}, expected {want}; fix or delete "
                                   "that line")

    frame = frame.reset_index(drop=True)
    for column, allowed in (("kind", KINDS), ("regime", REGIMES)):
        check(~frame[column].isin(allowed), column, f"one of {list(allowed)}")
    for column in ("batch", "length"):
        values = pd.to_numeric(frame[column], errors="coerce")
        check(~((values >= 1) & (values <= 10**6)) | (values % 1 != 0), column, "a whole number in 1..1000000")
        frame[column] = values.astype(int)
    timed = frame["error"] == ""
    for column in [c for c in COLUMNS if (c.startswith("lat_") or c == "ref_median_ms") and c in frame]:
        values = pd.to_numeric(frame[column], errors="coerce")
        wrong = frame[column].notna() & ~(np.isfinite(values) & (values >= 0))
        if column == "lat_median_ms":
            wrong |= timed & ~(values > 0)  # every timed row has its median
        check(wrong, column, "a finite number of ms" + (" above 0" if column == "lat_median_ms" else " >= 0"))
        frame[column] = values
    parsed = []
    for text in frame["arch_json"]:
        try:
            SubnetConfig.from_dict(json.loads(str(text)))
            parsed.append(True)
        except (ValueError, HwnasError):  # ConfigError is a ValueError; so is a JSON error
            parsed.append(False)
    check(~np.array(parsed, dtype=bool), "arch_json", "a sub-network configuration as JSON")
    return frame


def sample_configs(space: SearchSpace, shape: BertShape, n: int, *, seed: int = 0, length: int = 32) -> list[SubnetConfig]:
    """``n`` distinct configurations covering the space: the largest, the smallest, a
    DynaBERT-style uniform grid (each at every precision of the space), then half
    uniform-random and half stratified over FLOPs
    (evenly spaced FLOPs quantiles of a large random pool), so that cheap and expensive
    regions are both well represented."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, SubnetConfig] = {}

    def add(c: SubnetConfig) -> None:
        if len(chosen) < n:
            chosen.setdefault(c.key(), c)

    for precision in space.precision_choices:  # the anchors at every precision the device runs
        add(space.largest().with_precision(precision))
        add(space.smallest().with_precision(precision))
        for w in (0.25, 0.5, 0.75, 1.0):
            for d in (0.5, 0.75, 1.0):
                add(space.uniform(width=w, depth=d).with_precision(precision))
    target = len(chosen) + (n - len(chosen)) // 2
    for _ in range(20 * n):  # bounded: a tiny space may not hold that many distinct ones
        if len(chosen) >= target:
            break
        add(space.sample(rng))
    pool = [space.sample(rng) for _ in range(max(50, 20 * n))]
    pool.sort(key=lambda c: subnet_flops(shape, c, length))
    for q in np.linspace(0, len(pool) - 1, num=max(1, n)).astype(int):
        add(pool[int(q)])
    for c in pool:  # top up if the strata collided with configurations already chosen
        add(c)
    return list(chosen.values())


@dataclass(frozen=True)
class Measured:
    """Latency (ms, the statistic ``measure`` was asked for) of each timed configuration and
    of the full model, in one run; ``timings`` / ``full`` hold every statistic."""

    ms: list[float]
    full_ms: float
    timings: tuple[Timing, ...] = ()
    full: Timing | None = None


class Timer(Protocol):
    """What the export's steps need of a device: time configurations beside the full model."""

    def measure(self, configs: Sequence[SubnetConfig], *, rounds: int = 3) -> Measured: ...


class DeviceTimer:
    """Times sub-networks on a device, in turn with the full model.

    The full model's session and the workloads are opened once, at construction; each
    ``measure`` call opens the configurations it is given. ``measure`` and ``time`` use one
    workload (default: the first) and report ``stat`` (default p50) of its per-call
    latency. Raises ``DeviceUnavailable`` if this machine cannot run the profile (a kit
    device)."""

    def __init__(
        self,
        profile: DeviceProfile,
        supernet: ElasticBert,
        workloads: Sequence[Workload],
        *,
        stat: str = "p50",
        extract_fn: Callable[[ElasticBert, SubnetConfig], ElasticBert] | None = None,
    ) -> None:
        from supernet.extract import extract

        check_available(profile)
        if not workloads:
            raise ValueError("DeviceTimer needs at least one workload")
        if stat not in STATS:
            raise ValueError(f"stat must be one of {STATS}, got {stat!r}")
        self.profile, self.supernet, self.workloads, self.stat = profile, supernet, list(workloads), stat
        self.extract = extract_fn or extract
        self.full_config = SubnetConfig.full(supernet.shape.heads, supernet.shape.ffn)
        self.workdir = make_temp_dir("timer")  # removed by close(); after a crash, by the next run
        self.full = self.open(self.full_config)

    @property
    def batch(self) -> int:
        """Inputs per call of its (first) workload: the batch a model is deployed at here, and
        the one a dynamically quantized graph is scored at (its scales depend on the batch)."""
        return self.workloads[0].batch

    def open(self, cfg: SubnetConfig, *, cache: Path | None = None) -> Runner:
        """A runner of ``cfg``'s standalone model on the device (``cache``: keep its ONNX file
        there under the configuration's key and reuse it)."""
        model = self.extract(self.supernet, cfg)
        if cache is not None:
            return open_runner(self.profile, model, cache, cache_name=cfg.key(), precision=cfg.precision)
        return open_runner(self.profile, model, self.workdir, precision=cfg.precision)

    def time(self, runner: Runner, workload: Workload | None = None) -> Timing:
        """The timing loop: a fixed workload is warmed up and repeated the profile's times; a
        traffic workload is served call by call after the profile's warm-up calls."""
        w = workload or self.workloads[0]
        if w.regime == "traffic":
            return time_calls(runner, w.feeds, self.profile.warmup)
        return time_fn(lambda: runner(w.feeds[0]), self.profile.warmup, self.profile.repeats)

    def measure(self, configs: Sequence[SubnetConfig], *, rounds: int = 3,
                workload: Workload | None = None) -> Measured:
        """Each configuration and the full model timed in turn, ``rounds`` interleaved rounds;
        per statistic, the median over the rounds."""
        runners: dict[Any, Runner] = {"full": self.full, **{i: self.open(c) for i, c in enumerate(configs)}}
        timed = self.compare(runners, rounds=rounds, workload=workload)
        subs = [timed[i] for i in range(len(configs))]
        return Measured(ms=[t.stat(self.stat) for t in subs], full_ms=timed["full"].stat(self.stat),
                        timings=tuple(subs), full=timed["full"])

    def compare(self, runners: Mapping[Any, Runner], *, rounds: int = 3,
                workload: Workload | None = None) -> dict[Any, Timing]:
        """Named runners (sub-networks, stock models, quantized graphs) timed in turn,
        ``rounds`` interleaved rounds: the first in the order given, later ones in a seeded
        shuffled order, so that no model is always timed right after the same one (a small
        model timed after large ones can meet a warmer or cooler machine); field by field, the
        median of each."""
        times: dict[Any, list[Timing]] = {name: [] for name in runners}
        names = list(runners)
        rng = np.random.default_rng(0)
        for r in range(rounds):
            for i in (range(len(names)) if r == 0 else rng.permutation(len(names))):
                times[names[i]].append(self.time(runners[names[i]], workload))
        return {name: _median_timing(t) for name, t in times.items()}

    def close(self) -> None:
        remove_temp_dir(self.workdir)

    def __enter__(self) -> DeviceTimer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_same_threads(previous: pd.DataFrame, threads: int, path: Path, device: str) -> None:
    """A measurement resumes only with the threads its rows were timed with: rows of 4 threads
    and of 2 (another machine, a profile redefined) would be fitted as one device."""
    if not len(previous) or "threads" not in previous:
        return
    seen = {int(t) for t in pd.to_numeric(previous.loc[previous["kind"] == "sample", "threads"], errors="coerce").dropna()}
    if seen - {threads}:
        raise MeasurementError(
            f"{path} holds {device}'s timings with {sorted(seen)} thread(s); here {device} runs with {threads}: measure "
            "it under another device name (a --devices profile), or move the file aside to start over")


def check_same_runtime(previous: pd.DataFrame, profile: DeviceProfile, path: Path) -> None:
    """A measurement resumes only with the runtime and provider its rows were timed with (a
    profile redefined under the same name, say ONNX Runtime then OpenVINO): ``hwnas fit``
    would fit both kinds of row as one device, and the configurations already timed would not
    be timed again with the new one."""
    samples = previous[previous["kind"] == "sample"] if len(previous) else previous
    for column, now in (("runtime", profile.runtime), ("provider", profile.provider)):
        if not len(samples) or column not in samples:
            continue
        seen = set(samples[column].dropna().astype(str)) - {""}
        if seen - {str(now)}:
            raise MeasurementError(
                f"{path} holds {profile.name}'s timings with {column} {sorted(seen)}; here {profile.name} runs with "
                f"{now!r}: measure it under another device name (a --devices profile), or move the file aside to "
                "start over")


def _median_timing(ts: Sequence[Timing]) -> Timing:
    """Several rounds' timings as one: the median and spread figures field by field, the
    median over the rounds (a round on a busy minute does not move them); p90, p99 and the
    mean over every call of every round pooled, so that a tail is one of all the calls timed
    (3 rounds of 32 calls: a p99 of 96 calls, not the median of three rounds' slowest calls)
    and a round that met a stall shows in it."""
    if len(ts) == 1:
        return ts[0]
    med: dict[str, Any] = {f: float(np.median([getattr(t, f) for t in ts]))
                           for f in Timing.__dataclass_fields__ if f != "samples"}
    med["n"], med["outliers"] = sum(t.n for t in ts), sum(t.outliers for t in ts)
    if all(t.samples for t in ts):
        pooled = np.concatenate([np.asarray(t.samples, dtype=float) for t in ts])
        med.update(p90_ms=float(np.percentile(pooled, 90)), p99_ms=float(np.percentile(pooled, 99)),
                   mean_ms=float(pooled.mean()), samples=tuple(float(v) for v in pooled))
    return Timing(**med)


def sweep(
    profile: DeviceProfile,
    supernet: ElasticBert,
    configs: Sequence[SubnetConfig],
    workloads: Sequence[Workload],
    log: MeasurementLog,
    *,
    reference_every: int = 20,
    noise_rounds: int = 8,
    progress: bool = True,
    extract_fn: Callable[[ElasticBert, SubnetConfig], ElasticBert] | None = None,
    onnx_cache: Path | None = None,
    passes: int = 1,
) -> pd.DataFrame:
    """Measure every configuration on every workload; resume-safe.

    ``onnx_cache``: a folder where exported ONNX files are kept and reused (the caller
    removes it). ``passes``: each configuration is timed in that many passes over the whole
    sample, one after the other, so that its timings are minutes apart (one row each; `hwnas
    fit` fits on their median). Returns the device's full measurement table (earlier rows
    included). When the log already holds everything asked for, nothing is timed or appended
    (a resumed measurement that finished leaves its file as it was).
    """
    shape = supernet.shape
    batch = int(workloads[0].feeds[0]["input_ids"].shape[0])
    base = {
        "device": profile.name, "runtime": profile.runtime, "provider": profile.provider,
        "threads": profile.effective_threads, "precision": profile.precision, "warmup": profile.warmup,
        "repeats": profile.repeats, "batch": batch, **_versions(),
    }
    base["runtime_version"] = runtime_version(profile.runtime)
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    timed = log.timed()
    # A configuration's pass k counts as done once all its workloads have k rows (a failed row
    # counts: delete it to try again); pass k + 1 starts when every configuration has had k.
    todo = [c for k in range(passes) for c in configs if any(timed[(c.key(), batch, *w.key)] <= k for w in workloads)]
    previous = log.read()
    check_same_threads(previous, profile.effective_threads, log.path, profile.name)
    check_same_runtime(previous, profile, log.path)
    have_noise = bool(((previous["kind"] == "noise") & (previous["batch"] == batch)).any()) if len(previous) else False
    if not todo and (have_noise or noise_rounds <= 0):
        return previous  # every pass of every configuration is in the log: nothing timed, nothing appended

    with DeviceTimer(profile, supernet, workloads, extract_fn=extract_fn) as timer:
        full = timer.full_config
        refs: dict[tuple[str, int], float] = {}

        def row(cfg: SubnetConfig, w: Workload, t: Timing | None, kind: str, note: str = "",
                error: str = "") -> dict[str, Any]:
            r = {**base, **arch_columns(shape, cfg, w.length), "kind": kind, "note": note, "length": w.length,
                 "precision": cfg.precision if cfg.int8 else profile.precision,
                 "regime": w.regime, "calls": len(w.feeds) if w.regime == "traffic" else profile.repeats,
                 "error": error, "timestamp": datetime.now(UTC).isoformat(timespec="seconds")}
            if t is not None:
                r.update(lat_median_ms=t.median_ms, lat_p90_ms=t.p90_ms, lat_p99_ms=t.p99_ms, lat_mean_ms=t.mean_ms,
                         lat_min_ms=t.min_ms, lat_iqr_ms=t.iqr_ms, lat_cv=t.cv, outliers=t.outliers)
                if w.key in refs:
                    r.update(ref_median_ms=refs[w.key], lat_ratio=t.median_ms / refs[w.key])
            return r

        def reference() -> None:
            rows = []
            for w in workloads:
                t = timer.time(timer.full, w)
                refs[w.key] = t.median_ms
                rows.append(row(full, w, t, "reference"))
            log.append(rows)

        if not have_noise and noise_rounds > 0:
            # Harness check and noise floor: two sessions of the same full model, timed in turn.
            twin = timer.open(full)
            for _ in tqdm(range(noise_rounds), desc=f"{profile.name} noise floor", disable=not progress, leave=False):
                rows = []
                for note, run in (("harness-a", timer.full), ("harness-b", twin)):
                    for w in workloads:
                        rows.append(row(full, w, timer.time(run, w), "noise", note))
                log.append(rows)
            del twin
        reference()
        bar = tqdm(todo, desc=f"measure {profile.name}", disable=not progress, dynamic_ncols=True)
        for j, cfg in enumerate(bar):
            if j and j % reference_every == 0:
                reference()
            try:
                run = timer.open(cfg, cache=onnx_cache)
                rows = [row(cfg, w, timer.time(run, w), "sample") for w in workloads]
            except Exception as e:  # a failure is a row, not the end of the sweep
                no_room = disk_full(e)
                if no_room is not None:  # the machine's failure, not the configuration's: stop, resume later
                    raise no_room from e
                rows = [row(cfg, w, None, "sample", error=f"{type(e).__name__}: {e}"[:300]) for w in workloads]
            log.append(rows)
            faults.hit("measure.row")
        reference()
        bar.close()
    return log.read()


def harness_ratio(rows: pd.DataFrame) -> float:
    """Median over workloads (regime, batch and length) of median(harness-b) / median(harness-a):
    ~1 for a sound harness. A traffic sample whose median length equals a fixed length is its own
    workload, not pooled with that length's timings."""
    noise = rows[(rows["kind"] == "noise") & (rows["error"] == "")]
    if noise.empty:
        return float("nan")
    workload = [c for c in ("regime", "batch", "length") if c in noise]
    med = noise.groupby([*workload, "note"])["lat_median_ms"].median().unstack("note")
    return float((med["harness-b"] / med["harness-a"]).median())


def sweep_summary(rows: pd.DataFrame) -> dict[str, float]:
    """A sweep's rows in three numbers: ``configs`` (distinct sub-networks measured without
    error), ``failed_rows`` (sample rows with an error) and ``harness_ratio``."""
    samples = rows[rows["kind"] == "sample"]
    return {"configs": int(samples.loc[samples["error"] == "", "arch_key"].nunique()),
            "failed_rows": int((samples["error"] != "").sum()),
            "harness_ratio": harness_ratio(rows)}
