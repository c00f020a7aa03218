"""What a searcher is given for a trained run: dev accuracy (its predicted latency is
``latency.target.PredictedLatency``).

``DevAccuracy`` scores a sub-network with inherited supernet weights on a fixed, seeded
subset of the **dev** split (the whole dev split for finalists); the test split is only
touched by ``test()`` for reporting. An int8 sub-network is scored by running its quantized
ONNX graph in ONNX Runtime (``QuantizedLogits``; seconds a sub-network on 2 cores, most of
it the export and the quantizer) at the device's batch (``batch``, 1 by default: dynamic
quantization's scales span the whole batch, so its predictions depend on it), so that its
score is the deployed model's. The search objective (the subset) runs under bfloat16
autocast where the CPU has bf16 instructions (``precision="auto"``; see ``scripts/precision_check.py``), the
whole-dev and test scores always in fp32, as the exported model runs. Scores are cached by configuration hash in memory and
in ``RUN/search/accuracy.csv``, so a resumed or repeated search never re-evaluates.
It pickles as its run folder and settings (the model is re-opened in the receiving process),
which is how Ray Tune trials get it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from supernet.data import Encoded
from supernet.errors import ConfigError
from supernet.evaluate import Evaluator, resolve_precision
from supernet.io import make_temp_dir, remove_temp_dir
from supernet.runfolder import RunFolder
from supernet.space import SubnetConfig
from supernet.workflow import LoadedRun, open_run


def subset(enc: Encoded, n: int | None, seed: int) -> Encoded:
    if n is None or n >= len(enc):
        return enc
    idx = np.sort(np.random.default_rng(seed).choice(len(enc), size=n, replace=False))
    return Encoded([enc.input_ids[i] for i in idx], [enc.token_type_ids[i] for i in idx], enc.labels[idx])


def deployed_session(model: Any, precision: str, threads: int | None = None) -> Any:
    """An ONNX Runtime session of ``model``'s deployed graph at ``precision``
    (``latency.onnx_export.export_deployed``), its file removed once loaded."""
    from latency.onnx_export import export_deployed, ort_session

    folder = make_temp_dir("graph")
    try:
        return ort_session(export_deployed(model, precision, folder / "model.onnx"), threads=threads)
    finally:
        remove_temp_dir(folder)


def deployed_logits(model: Any, precision: str, *, batch: int = 1) -> Callable[[Encoded], np.ndarray]:
    """A function from examples to the logits of ``model`` as deployed at ``precision`` and
    ``batch`` inputs per call (fp32: PyTorch, which its ONNX graph matches to 1e-4 at any
    batch; int8: the quantized graph run by ONNX Runtime at ``batch``, exported and quantized
    once here for every split it then scores)."""
    from latency.baselines import onnx_logits
    from supernet.evaluate import predict

    if precision == "fp32":
        return lambda enc: predict(model, enc)
    session = deployed_session(model, precision)
    return lambda enc: onnx_logits(session, enc, batch_size=batch, in_order=True)


class QuantizedLogits:
    """Logits of a sub-network's deployed graph at its precision (``export_deployed``: the
    quantized ONNX graph for int8), run by ONNX Runtime at ``batch`` inputs per call, the
    device's. The last few sessions are kept, so that a finalist's dev-subset, dev and test
    scores export and quantize it once."""

    KEEP = 3

    def __init__(self, supernet: Any, *, batch: int = 1, threads: int | None = None) -> None:
        self.supernet, self.batch, self.threads = supernet, batch, threads
        self._sessions: OrderedDict[str, Any] = OrderedDict()

    def session(self, cfg: SubnetConfig) -> Any:
        from supernet.extract import extract

        key = cfg.key()
        if key not in self._sessions:
            self._sessions[key] = deployed_session(extract(self.supernet, cfg).eval(), cfg.precision, self.threads)
            while len(self._sessions) > self.KEEP:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(key)
        return self._sessions[key]

    def __call__(self, cfg: SubnetConfig, enc: Encoded) -> np.ndarray:
        from latency.baselines import onnx_logits

        return onnx_logits(self.session(cfg), enc, batch_size=self.batch, in_order=True)


class DevAccuracy:
    """The AccuracyModel of a run: headline metric on a fixed dev subset, cached. ``batch``:
    the inputs per call of the device searched for (``Target.batch``), which int8 sub-networks'
    graphs are scored at; their cached scores are kept apart by it."""

    def __init__(self, run: LoadedRun | str | Path, *, subset_size: int | None = 500, seed: int = 0,
                 cache: bool = True, precision: str = "auto", batch: int = 1) -> None:
        if batch < 1:
            raise ConfigError(f"int8 graphs are scored at a batch of at least 1 input, got {batch}")
        self._run = run if isinstance(run, LoadedRun) else open_run(run)
        self.folder = self._run.folder
        self.subset_size, self.seed, self.use_cache, self.batch = subset_size, seed, cache, batch
        paths = RunFolder(self.folder)
        # Of the search objective; auto decides once per run and CPU (it names the search split).
        self.precision = resolve_precision(precision, paths.search_precision if cache else None)
        bf16 = "bf16" if self.precision == "bf16" else ""
        self.search_split = f"dev{subset_size}s{seed}{bf16}" if subset_size else f"dev{bf16}"
        splits = {
            self.search_split: subset(self._run.splits["dev"], subset_size, seed),
            "dev": self._run.splits["dev"],
            "test": self._run.splits["test"],
        }
        self.metric = self._run.task.metric
        self.cache_path = paths.accuracy_cache
        from latency.onnx_export import int8_reduce_range

        # INT8 graphs' scores depend on the batch and on the weights' bits (7 on x86 without
        # VNNI): a run folder moved between such CPUs keeps the two kinds of score apart.
        # At batch > 1 scored in arrival-order batches since 2026-12-07 ("o"; before: length-sorted).
        self.graph_key = f"b{batch}" + ("o" if batch > 1 else "") + ("r7" if int8_reduce_range() else "")
        self._scores = Evaluator(
            self._run.supernet, splits, metric=self.metric,
            bf16_splits=[self.search_split] if self.precision == "bf16" else [],
            log_path=self.cache_path if cache else None,
            graph_logits=QuantizedLogits(self._run.supernet, batch=batch), graph_key=self.graph_key,
        )

    @property
    def n_computed(self) -> int:
        """Scores computed by this instance (not read from the cache)."""
        return self._scores.n_computed

    # Ray Tune and multiprocessing: ship the settings, not the model.
    def __getstate__(self) -> dict[str, Any]:
        # Absolute: a Ray trial runs in its own working folder, where a relative runs/NAME is not.
        return {"folder": str(Path(self.folder).resolve()), "subset_size": self.subset_size, "seed": self.seed, "cache": self.use_cache,
                "precision": self.precision, "batch": self.batch}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], subset_size=state["subset_size"], seed=state["seed"], cache=state["cache"],  # type: ignore[misc]
                      precision=state["precision"], batch=state["batch"])

    def scores(self, cfg: SubnetConfig, split: str) -> dict[str, float]:
        return self._scores(cfg, split)

    def __call__(self, cfg: SubnetConfig) -> float:
        """The search objective: the task's metric on the dev subset."""
        return float(self.scores(cfg, self.search_split)[self.metric])

    def full_dev(self, cfg: SubnetConfig) -> float:
        return float(self.scores(cfg, "dev")[self.metric])

    def test(self, cfg: SubnetConfig) -> float:
        """Reporting only: never used to choose."""
        return float(self.scores(cfg, "test")[self.metric])

    def test_logits(self, cfg: SubnetConfig) -> np.ndarray:
        """Logits on the test split, computed as ``test`` scores them (reporting only; not
        cached): for a point's paired interval against the teacher."""
        return self._scores.logits(cfg, "test")


def searched_dev_subset(run: LoadedRun, default: int | None = 500) -> int | None:
    """The dev subset a run's searches scored on (None: the whole dev split), read from its
    accuracy cache: the split that holds the most cached scores (a search scores dozens to
    hundreds of sub-networks there; finalists on the whole dev split are a handful).
    ``default`` when nothing was scored yet."""
    import re

    from supernet.evaluate import SCORE_COLUMNS, _read_scores
    from supernet.io import CsvLog

    path = RunFolder(run.folder).accuracy_cache
    if not path.is_file():
        return default
    counts: dict[int | None, int] = {}
    for split in _read_scores(CsvLog(path, SCORE_COLUMNS))["split"].astype(str):
        m = re.fullmatch(r"dev(?:(\d+)s\d+)?(?:bf16)?(?:@.*)?", split)
        if m:
            size = int(m[1]) if m[1] else None
            counts[size] = counts.get(size, 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else default


def dev_accuracies(run: LoadedRun, batches: Iterable[int], *, subset_size: int | None = 500, seed: int = 0,
                   precision: str = "auto") -> dict[int, DevAccuracy]:
    """One ``DevAccuracy`` of ``run`` per batch of ``batches`` (the ``Target.batch`` of each
    device searched for), so that each device's int8 graphs are scored at its own batch."""
    return {b: DevAccuracy(run, subset_size=subset_size, seed=seed, precision=precision, batch=b) for b in set(batches)}
