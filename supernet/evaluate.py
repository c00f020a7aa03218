"""Accuracy of any sub-network with inherited weights, cached by configuration hash
(in memory, and optionally in an append-only CSV)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from supernet.data import Encoded, iterate_batches
from supernet.errors import CheckpointError, ConfigError
from supernet.io import CsvLog, read_json, write_json
from supernet.model import ElasticBert
from supernet.space import SubnetConfig

PRECISIONS = ("auto", "fp32", "bf16")


def bf16_instructions() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))


def bf16_speedup(trials: int = 3, reps: int = 5) -> float:
    """How much faster bf16 autocast runs an FFN block of a small encoder (64 x 32 tokens,
    384 -> 1536 -> 384) than fp32 on this CPU: the median over ``trials`` of the fp32 time over
    the bf16 time (about 1 s in all). Having the instructions is not enough: on an AVX512-BF16
    Xeon without AMX, torch 2.13 ran bf16 autocast slower than fp32 (0.64x scoring rt's dev
    split, ``scripts/precision_check.py``); AMX machines ran it 1.87x faster."""
    gen = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(1536, 384, generator=gen) / 20, torch.randn(384, 1536, generator=gen) / 40
    x = torch.randn(64, 32, 384, generator=gen)

    def block_s(bf16: bool) -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for _ in range(2):  # warm-up
                F.linear(F.gelu(F.linear(x, w1)), w2)
            t0 = time.perf_counter()
            for _ in range(reps):
                F.linear(F.gelu(F.linear(x, w1)), w2)
            return time.perf_counter() - t0

    return float(np.median([block_s(False) / block_s(True) for _ in range(trials)]))


@functools.cache
def bf16_is_fast() -> bool:
    """Whether bf16 autocast scores sub-networks faster than fp32 here: the CPU has bf16
    matrix instructions and ``bf16_speedup`` finds it at least 1.15x faster (checked once per
    process)."""
    return bf16_instructions() and bf16_speedup() >= 1.15


def cpu_model() -> str:
    """This CPU's model name (``/proc/cpuinfo``; ``platform.processor()``, possibly empty,
    where there is none): what a measurement records and what a run's auto precision is kept for."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def resolve_precision(precision: str, remember: str | Path | None = None) -> str:
    """``auto`` -> ``bf16`` where it is measurably faster on this CPU (``bf16_is_fast``), else ``fp32``.

    ``remember``: a JSON file that keeps the decision for this CPU model. The check is a
    one-second timing, and a busy machine can tip it; what it decides names the search
    split (and so the cache rows and the Optuna study), so a search resumed after a crash
    must not decide again. The file is read when it names this CPU, else (re)written."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if remember is None:
        return "bf16" if bf16_is_fast() else "fp32"
    cpu = cpu_model()
    path = Path(remember)
    if path.exists():
        try:
            kept = read_json(path, "the auto precision decided on this CPU")
        except CheckpointError:
            kept = None  # unreadable: decide again and overwrite it
        if isinstance(kept, dict) and kept.get("cpu") == cpu and kept.get("precision") in ("fp32", "bf16"):
            return str(kept["precision"])
    decided = "bf16" if bf16_is_fast() else "fp32"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"cpu": cpu, "precision": decided, "rule": "bf16 where the CPU has bf16 instructions and "
                      "bf16 autocast runs a test block >= 1.15x faster than fp32 (supernet.evaluate.bf16_is_fast)"})
    return decided


@torch.no_grad()
def predict(
    model: ElasticBert, enc: Encoded, subnet: SubnetConfig | None = None, *, batch_size: int = 64,
    bf16: bool = False,
) -> np.ndarray:
    """Logits (N, num_labels) in the order of ``enc``, computed on the model's device;
    ``bf16`` runs the forward under bfloat16 autocast (weights stay fp32)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(enc), model.shape.num_labels), dtype=np.float32)
    try:
        for b in iterate_batches(enc, batch_size, shuffle=False, sort_by_length=True):
            ids, mask, types = (b[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids"))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(ids, mask, types, subnet=subnet).logits
            out[b["index"].numpy()] = logits.float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    pred = logits.argmax(1)
    return {
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1_score(labels, pred, average="macro", labels=np.unique(labels))),
    }


def model_score(model: ElasticBert, enc: Encoded, metric: str = "accuracy") -> float:
    """``metric`` of a (standalone) model on ``enc``."""
    return scores(predict(model, enc), enc.labels)[metric]


SCORE_COLUMNS = ["arch_key", "split", "accuracy", "macro_f1", "n"]
"""Columns of an ``Evaluator``'s score log (one row per split and configuration)."""


def _read_scores(log: CsvLog) -> Any:
    """The cached scores, checked: a score is a number in [0, 1] (a cache that is damaged is
    refused, not trusted; deleting it only costs the time to score again)."""
    redo = f"delete {log.path} (cached scores; they are computed again)"
    try:
        frame = log.read(dtype={"arch_key": str, "split": str})
    except (ValueError, UnicodeDecodeError) as e:  # pandas' ParserError is a ValueError
        raise CheckpointError(f"{log.path} is unreadable ({str(e).strip()}): {redo}") from None
    missing = [c for c in SCORE_COLUMNS[:4] if c not in frame.columns]
    if missing:
        raise CheckpointError(f"{log.path} lacks the columns {missing}: {redo}")
    for column in ("accuracy", "macro_f1"):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = np.flatnonzero(~((values >= 0) & (values <= 1)))
        if len(bad):
            raise CheckpointError(f"{log.path} line {bad[0] + 2}: {column} is {frame[column].iloc[bad[0]]!r}, not a "
                                  f"score in [0, 1]: {redo}")
        frame[column] = values
    return frame


class Evaluator:
    """Scores sub-networks on named splits; remembers every (split, configuration) it saw.

    The one accuracy cache of the project: ``metric`` is the task's headline metric
    ("accuracy" or "macro_f1"); splits named in ``bf16_splits`` are scored under bfloat16
    autocast. With ``log_path`` the scores also persist in an append-only CSV
    (``SCORE_COLUMNS``): the scores already there are loaded, and every new one is appended
    durably, so a resumed or repeated search never scores a configuration twice.
    ``n_computed`` counts the scores computed (not loaded or remembered). A sub-network at a
    precision other than fp32 is scored by ``graph_logits(subnet, examples)``: its deployed
    graph run by its runtime (``nas.objectives.QuantizedLogits``), not by this model.
    ``graph_key`` names how those graphs are run where it changes their scores (``b1``: one
    input per call; a dynamically quantized graph's predictions depend on its batch): such a
    score is cached under its split and that name (``dev@b1``), never mixed with another's.
    """

    def __init__(
        self, model: ElasticBert, splits: dict[str, Encoded], *, metric: str = "accuracy", batch_size: int = 64,
        bf16_splits: Collection[str] = (), log_path: str | Path | None = None,
        graph_logits: Callable[[SubnetConfig, Encoded], np.ndarray] | None = None, graph_key: str = "",
    ) -> None:
        self.model, self.splits, self.metric, self.batch_size = model, splits, metric, batch_size
        self.graph_logits, self.graph_key = graph_logits, graph_key
        self.bf16_splits = frozenset(bf16_splits)
        self.cache: dict[tuple[str, str], dict[str, float]] = {}
        self.n_computed = 0
        self.log = CsvLog(log_path, SCORE_COLUMNS) if log_path is not None else None
        if self.log is not None:
            for r in _read_scores(self.log).to_dict("records"):
                self.cache[(str(r["split"]), str(r["arch_key"]))] = {k: r[k] for k in ("accuracy", "macro_f1")}

    def __call__(self, subnet: SubnetConfig, split: str = "dev") -> dict[str, float]:
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; known: {sorted(self.splits)}")
        graph = subnet.precision != "fp32"
        key = (f"{split}@{self.graph_key}" if graph and self.graph_key else split, subnet.key())
        if key not in self.cache:
            enc = self.splits[split]
            self.cache[key] = scores(self.logits(subnet, split), enc.labels)
            self.n_computed += 1
            if self.log is not None:
                self.log.append([{"arch_key": subnet.key(), "split": key[0], **self.cache[key], "n": len(enc)}])
        return self.cache[key]

    def logits(self, subnet: SubnetConfig, split: str = "dev") -> np.ndarray:
        """``subnet``'s logits on ``split``, computed as its score is (never cached): for the
        paired statistics of a point against the teacher."""
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; known: {sorted(self.splits)}")
        enc = self.splits[split]
        if subnet.precision == "fp32":
            return predict(self.model, enc, subnet, batch_size=self.batch_size, bf16=split in self.bf16_splits)
        if self.graph_logits is None:
            raise ConfigError(f"a {subnet.precision} sub-network is scored by running its deployed graph; "
                              "this evaluator was given no graph_logits")
        return self.graph_logits(subnet, enc)

    def score(self, subnet: SubnetConfig, split: str = "dev") -> float:
        """The headline metric of ``subnet`` on ``split``."""
        return self(subnet, split)[self.metric]

    def records(self) -> list[dict[str, Any]]:
        return [{"split": s, "key": k, **v} for (s, k), v in self.cache.items()]
