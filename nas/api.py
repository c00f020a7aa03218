"""The pipeline as Python functions, for notebooks: what the ``hwnas`` commands do, no shell.

Train -> measure -> fit -> search -> export -> predict, each a thin call over the functions
the commands use (``supernet.workflow``, ``latency.workflow``, ``nas.export``,
``nas.predict``), writing the same files into the same run folder::

    from nas import api

    run = api.train("runs/nb", task="rt", max_train=3000)  # or api.load("runs/main")
    api.measure(run, "cpu", n=40)
    api.fit(run, "cpu")
    result = api.search(run, "cpu", budget_ms=4.0)  # nas.search.SearchResult
    print(result.best.config.describe(), result.best.accuracy, result.best.latency_ms)
    report = api.export(run, "cpu", "runs/nb/export/cpu_4ms", budget_ms=4.0, finetune_epochs=1)
    api.predict("runs/nb/export/cpu_4ms", ["a fine film", "a dull one"])

A function that writes to a run holds the run's lock while it does (``RunFolder.lock``), as
the commands do, so a notebook and a command cannot write one run at once. Errors are the
commands' (``supernet.errors.HwnasError`` and its subclasses), with the same messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supernet.runfolder import RunFolder

if TYPE_CHECKING:
    import pandas as pd

    from latency.target import Target
    from nas.search import SearchResult
    from supernet.train import TrainConfig
    from supernet.workflow import LoadedRun

__all__ = ["export", "fit", "load", "measure", "predict", "search", "train"]

def _run(run: LoadedRun | str | Path) -> LoadedRun:
    from supernet.workflow import LoadedRun, open_run

    return run if isinstance(run, LoadedRun) else open_run(run)


def _target(run: LoadedRun, device: str, length: int | None, stat: str) -> Target:
    from latency.target import Target
    from latency.workflow import resolve_device

    return Target.of(run, resolve_device(run.folder, device), length, stat=stat)


def load(run_dir: str | Path) -> LoadedRun:
    """A trained run folder, opened (the supernet, its data splits and search space)."""
    return _run(run_dir)


def train(out: str | Path, *, task: str = "rt", model: str = "minilm", seed: int = 0,
          max_train: int | None = None, max_eval: int | None = None, config: TrainConfig | None = None,
          resume: bool = False, progress: bool = True) -> LoadedRun:
    """``hwnas train``: fine-tune the teacher, rewire, train the supernet into ``out``, write
    the evaluation table; returns the opened run. ``config``: the training settings
    (``supernet.train.TrainConfig``; default: its defaults with ``seed``)."""
    from supernet.tasks import task_max_length
    from supernet.train import TrainConfig
    from supernet.workflow import RunSpec, evaluation_table, open_run, train_run, write_evaluation

    cfg = config or TrainConfig(seed=seed, max_length=task_max_length(task))
    spec = RunSpec(task=task, model=model, seed=seed, max_train=max_train, max_eval=max_eval, train=cfg.validate())
    with RunFolder(out).lock("nas.api.train"):
        train_run(out, spec, resume=resume, progress=progress)
        run = open_run(out)
        write_evaluation(run, evaluation_table(run))
    return run


def measure(run: LoadedRun | str | Path, devices: str | Sequence[str], *, n: int = 300, seed: int = 0,
            noise_rounds: int = 8, progress: bool = True) -> dict[str, pd.DataFrame]:
    """``hwnas measure``: time ``n`` sampled sub-networks on each device (built-in names or
    profiles stored in the run); resumes. Returns each device's measurement rows."""
    from latency.workflow import measure_devices, resolve_device

    r = _run(run)
    names = [devices] if isinstance(devices, str) else list(devices)
    with RunFolder(r.folder).lock("nas.api.measure"):
        return measure_devices(r, [resolve_device(r.folder, d) for d in names], n=n, seed=seed,
                               noise_rounds=noise_rounds, progress=progress)


def fit(run: LoadedRun | str | Path, device: str, *, seed: int = 0) -> dict[str, Any]:
    """``hwnas fit``: fit the device's latency predictors; returns the primary one's report
    (p50 on real traffic: ``chosen``, ``metrics`` with held-out MAPE, Kendall tau, ...)."""
    from latency.workflow import fit_run_device
    from supernet.checkpoint import read_shape

    folder = Path(run) if isinstance(run, str | Path) else run.folder
    with RunFolder(folder).lock("nas.api.fit"):
        return fit_run_device(folder, read_shape(RunFolder(folder).supernet), device, seed=seed)[0]


def search(run: LoadedRun | str | Path, device: str, *, budget_ms: float | None = None, method: str = "evolution",
           n_evaluations: int = 150, seed: int = 0, dev_subset: int | None = 500, length: int | None = None,
           budget_stat: str = "p50") -> SearchResult:
    """``hwnas search``: the most accurate sub-networks under ``budget_ms`` (None: the whole
    front) by the device's predictor; writes the history as the command does, and the search
    as a named Optuna study in the run's ``search/optuna.db`` (every method)."""
    from nas.export import run_search, write_search_history
    from nas.objectives import DevAccuracy

    r = _run(run)
    target = _target(r, device, length, budget_stat)
    with RunFolder(r.folder).lock("nas.api.search"):
        result, _ = run_search(r, target, budget_ms, method=method, n_evaluations=n_evaluations, seed=seed,
                               accuracy=DevAccuracy(r, subset_size=dev_subset, batch=target.batch))
        write_search_history(r, result, target, budget_ms, method)
    return result


def export(run: LoadedRun | str | Path, device: str, out: str | Path, *, budget_ms: float | None = None,
           speedup: float | None = None, finetune_epochs: float = 0.0, finetune_lr: float = 2e-4,
           dev_subset: int | None = 500, length: int | None = None, budget_stat: str = "p50",
           **options: Any) -> dict[str, Any]:
    """``hwnas export``: search, re-measure, (fine-tune,) and write the export folder ``out``
    (model.onnx with config and tokenizer, hf/, pytorch/, report.json, README.md); returns
    the report. ``options``: other ``nas.export.ExportConfig`` fields (method,
    n_evaluations, finalists, seed, step_up_below, baselines, ...)."""
    from nas.export import ExportConfig, choose_and_export
    from nas.objectives import DevAccuracy
    from supernet.train import StageConfig

    r = _run(run)
    finetune = StageConfig(epochs=finetune_epochs, lr=finetune_lr) if finetune_epochs > 0 else None
    cfg = ExportConfig(budget_ms=budget_ms, speedup=speedup, finetune=finetune, **options)
    target = _target(r, device, length, budget_stat)
    with RunFolder(r.folder).lock("nas.api.export"):
        return choose_and_export(r, target, out, cfg,
                                 accuracy=DevAccuracy(r, subset_size=dev_subset, batch=target.batch))


def predict(export_dir: str | Path, texts: Sequence[str], *, batch_size: int = 32) -> list[dict[str, Any]]:
    """``hwnas predict``: classify ``texts`` with an export folder's ``model.onnx``; one
    record per text (``text``, ``label``, ``score``, ``scores``); a single string is one
    text. A sentence-pair export takes each text as ``FIRST<TAB>SECOND``."""
    from nas.predict import ExportedModel, read_texts

    texts = [texts] if isinstance(texts, str) else texts
    return ExportedModel.open(export_dir).predict(read_texts(texts, None), batch_size=batch_size)
