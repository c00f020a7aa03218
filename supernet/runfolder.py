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
        DEVICE_BUDGET_METHOD.csv  each search's history (BUDGET: "5ms" or "front")
        optuna.db             Optuna studies (tpe / nsga2), resumable
        ray/                  Ray Tune's trial storage
      export/DEVICE_BUDGETms/ what `hwnas run` exports (`hwnas export --out` chooses its own)
      compare/              fronts.csv, hypervolume.csv, fronts.png
      bench/                `hwnas bench`'s exports and fine-tunings (its pages go to --out)
      baselines/            the stock model as ONNX, ORT-optimized and INT8, with test scores
      summary.csv, job.json what `hwnas run` found, and its stage times
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def budget_label(budget_ms: float | None) -> str:
    """How a budget appears in file names: ``5ms``, or ``front`` for a whole-front search."""
    return "front" if budget_ms is None else f"{budget_ms:g}ms"


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
        return self.latency / f"{device}.csv"

    def _fit_stem(self, device: str, regime: str, stat: str) -> str:
        """``cpu`` for real traffic and p50 (the default); ``cpu.fixed``, ``cpu.p90``, ...
        otherwise."""
        return ".".join([device, *(["fixed"] if regime == "fixed" else []), *([stat] if stat != "p50" else [])])

    def stock_timing(self, device: str) -> Path:
        """The stock deployments timed on the device by `hwnas measure` (latency/baselines.py)."""
        return self.latency / f"{device}.stock.json"

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

    def search_history(self, device: str, budget_ms: float | None, method: str) -> Path:
        return self.search / f"{device}_{budget_label(budget_ms)}_{method}.csv"

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
        return self.root / "export" / f"{device}_{budget_label(budget_ms)}"

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
