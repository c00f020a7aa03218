"""The run folder: every path of a run, in one place.

A run is one folder (``runs/NAME/``) that ``hwnas train`` creates and every later stage
reads and adds to. This is the only module that spells out its layout; the commands (and
the few library functions that own a file, such as a resumable log) take their paths from a
``RunFolder``::

    runs/NAME/
      run.json              task, model, seed, data limits, training configuration (RunSpec)
      state.json            finished training stages and their wall times
      data_summary.json     the task's splits and token-length statistics
      metrics.csv           training losses
      tokenizer/            the tokenizer, so later stages need not reach the source model
      teacher/              the fine-tuned full model (model.safetensors + shape.json)
      rewired/              the teacher with heads and neurons reordered by importance
      supernet/             the trained weight-shared supernet
      importance.json       head / neuron importance scores (train split)
      search_space.json     the search space
      exits/KIND/           early-exit heads trained on the frozen supernet (`hwnas exits`):
                            exits.safetensors + exits.json (absent in runs that have none)
      early_exit/           where scripts/early_exit_figures.sh puts `hwnas early-exit`'s studies
      eval.csv              accuracy, FLOPs and parameters of a few sub-networks
      devices.json          user device profiles this run has used (from a --devices TOML)
      latency/
        DEVICE.csv            measurement rows (latency/measure.py, results/README.md)
        DEVICE.predictor.json the fitted predictor, plain JSON (p50 on real traffic); DEVICE.p90...,
                              DEVICE.fixed... for other statistics and fixed-length inputs
        DEVICE.predictor.trees.safetensors  a tree model's node arrays (latency/trees.py)
        DEVICE.fit.json/.png  its held-out quality and predicted-vs-measured plot (likewise)
        DEVICE.stock.json     the stock model (ONNX, ORT-optimized, INT8) timed there by `hwnas measure`
      search/
        accuracy.csv          cached dev / test scores of every configuration evaluated
        precision.json        what --search-precision auto decided on this CPU (kept: a resumed search
                              scores, caches and names its study as it did before)
        DEVICE_BUDGET_METHOD.csv  each search's history (BUDGET: "5ms" or "front")
        optuna.db             Optuna studies, one per search (tpe / nsga2: resumable)
        ray/                  Ray Tune's trial storage
      export/DEVICE_BUDGETms/ what `hwnas run` exports (`hwnas export --out` chooses its own)
      compare/              fronts.csv, hypervolume.csv, fronts.png
      bench/                `hwnas bench`'s exports and fine-tunings (its pages go to --out)
      baselines/            the stock model as ONNX, ORT-optimized and INT8, with test scores
      summary.csv, job.json what `hwnas run` found, and its stage times
      run.lock              who is writing to the run now (``RunFolder.lock``)

Names that become file names (devices, methods) are checked here, where they do
(``check_name``): letters, digits, '_' and '-', so that no name reaches outside the run or
collides with another's files (``cpu.x`` would write ``cpu.x.fit.json`` beside ``cpu``'s).

**Locking.** Every command that writes to a run holds its lock for as long as it runs
(``nas/cli.py`` takes it); a second one is refused at once with ``RunLocked``, which names
the holder's pid, command line and start time. One lock per run, not per stage: the stages
that could overlap share files (the accuracy cache, Optuna's study) or the machine (two
processes timing on one CPU spoil each other's measurements), and a stage is minutes long.
Commands that only read (``extract``, ``eval --subnet``) take none. The lock is an
``fcntl.flock`` on ``run.lock``, which the kernel releases when its process dies, however it
dies: a crash never leaves a stale lock behind. The one who takes the lock removes the
temporary files that a killed writer's atomic writes left (``supernet.io.remove_stray_tmp``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from supernet.errors import ConfigError, RunLocked

NAME = re.compile(r"[A-Za-z0-9_-]+")


def check_name(name: str, what: str = "device") -> str:
    """``name`` if it may become part of a file name in a run, else ConfigError."""
    if not NAME.fullmatch(name):
        raise ConfigError(f"{what} name {name!r} may use letters, digits, '_' and '-' only (e.g. cpu-1t), "
                          "since it names files in the run folder")
    return name


def budget_label(budget_ms: float | None) -> str:
    """How a budget appears in file names: ``5ms``, or ``front`` for a whole-front search."""
    if budget_ms is None:
        return "front"
    if not (math.isfinite(budget_ms) and budget_ms > 0):
        raise ConfigError(f"a latency budget must be a positive number of ms, got {budget_ms!r}")
    return f"{budget_ms:g}ms"


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    def __str__(self) -> str:
        return str(self.root)

    # Training (hwnas train)
    @property
    def spec(self) -> Path:
        return self.root / "run.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def data_summary(self) -> Path:
        return self.root / "data_summary.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def rewired(self) -> Path:
        return self.root / "rewired"

    @property
    def importance(self) -> Path:
        return self.root / "importance.json"

    @property
    def supernet(self) -> Path:
        return self.root / "supernet"

    @property
    def search_space(self) -> Path:
        return self.root / "search_space.json"

    def exits(self, kind: str) -> Path:
        """Early-exit heads of ``kind`` (supernet/exits.py), trained by `hwnas exits`."""
        return self.root / "exits" / check_name(kind, "exit kind")

    @property
    def evaluation(self) -> Path:
        return self.root / "eval.csv"

    @property
    def devices(self) -> Path:
        return self.root / "devices.json"

    # Latency (hwnas measure / fit)
    @property
    def latency(self) -> Path:
        return self.root / "latency"

    def measurements(self, device: str) -> Path:
        return self.latency / f"{check_name(device)}.csv"

    def _fit_stem(self, device: str, regime: str, stat: str) -> str:
        """``cpu`` for real traffic and p50 (the default); ``cpu.fixed``, ``cpu.p90``, ...
        otherwise."""
        parts = [check_name(device), *(["fixed"] if regime == "fixed" else []), *([stat] if stat != "p50" else [])]
        return ".".join(parts)

    def stock_timing(self, device: str) -> Path:
        """The stock deployments timed on the device by `hwnas measure` (latency/baselines.py)."""
        return self.latency / f"{check_name(device)}.stock.json"

    def predictor(self, device: str, regime: str = "traffic", stat: str = "p50") -> Path:
        return self.latency / f"{self._fit_stem(device, regime, stat)}.predictor.json"

    def fit_report(self, device: str, regime: str = "traffic", stat: str = "p50") -> Path:
        return self.latency / f"{self._fit_stem(device, regime, stat)}.fit.json"

    def fit_plot(self, device: str, regime: str = "traffic", stat: str = "p50") -> Path:
        return self.latency / f"{self._fit_stem(device, regime, stat)}.fit.png"

    # Search (hwnas search / export)
    @property
    def search(self) -> Path:
        return self.root / "search"

    @property
    def accuracy_cache(self) -> Path:
        return self.search / "accuracy.csv"

    @property
    def search_precision(self) -> Path:
        return self.search / "precision.json"

    def search_history(self, device: str, budget_ms: float | None, method: str) -> Path:
        return self.search / f"{check_name(device)}_{budget_label(budget_ms)}_{check_name(method, 'method')}.csv"

    def search_histories(self) -> list[Path]:
        """Every search history written so far (sorted; none if nothing was searched)."""
        return sorted(self.search.glob("*_*_*.csv")) if self.search.exists() else []

    @property
    def optuna_storage(self) -> str:
        return f"sqlite:///{self.search / 'optuna.db'}"

    @property
    def ray_storage(self) -> Path:
        return self.search / "ray"

    # What `hwnas run` writes
    def export(self, device: str, budget_ms: float) -> Path:
        return self.root / "export" / f"{check_name(device)}_{budget_label(budget_ms)}"

    @property
    def compare(self) -> Path:
        return self.root / "compare"

    @property
    def baselines(self) -> Path:
        """The stock deployments of the run's teacher (latency/baselines.py), built once."""
        return self.root / "baselines"

    @property
    def bench(self) -> Path:
        """Where `hwnas bench` keeps its exports and fine-tunings (its pages go to --out)."""
        return self.root / "bench"

    @property
    def summary(self) -> Path:
        return self.root / "summary.csv"

    @property
    def job(self) -> Path:
        return self.root / "job.json"

    # Who writes now
    @property
    def lock_file(self) -> Path:
        return self.root / "run.lock"

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the run's lock while the block runs (module doc); ``RunLocked`` if another
        process holds it. ``command`` is recorded for that process's error message. Creates
        the folder if needed, and removes it again if the block left nothing else in it (and
        the lock file it made, from a folder that holds no run afterwards)."""
        from supernet.io import fsync_path, remove_stray_tmp

        made = not self.root.exists()
        fresh = made or not self.lock_file.exists()
        fd = self._acquire()
        try:
            holder = {"pid": os.getpid(), "command": command,
                      "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "host": os.uname().nodename}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
            remove_stray_tmp(self.root)
            yield
        finally:
            if made and [p.name for p in self.root.iterdir()] == [self.lock_file.name]:
                self.lock_file.unlink()  # a refused first command leaves no half-made run
                self.root.rmdir()
            elif made:
                fsync_path(self.root.parent)
            elif fresh and not self.spec.exists():
                self.lock_file.unlink(missing_ok=True)  # a refused command leaves a user's folder as it was
            os.close(fd)  # releases the lock

    def _acquire(self) -> int:
        """The lock file, open and locked; RunLocked if another process holds it."""
        while True:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:  # a file where the folder should be, no permission, ...
                raise ConfigError(f"cannot write to the run folder {self.root}: {e.strerror or e}; give a "
                                  "folder this user can write to") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise RunLocked(f"{self.root} is in use by {holder}; wait for it to finish, or stop it "
                                "(a killed process releases the lock at once)") from None
            try:
                if os.stat(self.lock_file).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # we locked a lock file that its holder removed meanwhile: open it again

    @staticmethod
    def _holder(fd: int) -> str:
        """The lock holder, as it described itself in the lock file."""
        try:
            h = json.loads(os.pread(fd, 4096, 0))
            return f"pid {h['pid']} (`{h['command']}`, started {h['started']} on {h['host']})"
        except (ValueError, KeyError, TypeError):  # the holder is writing it at this moment
            return "another process"
