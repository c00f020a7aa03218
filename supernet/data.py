"""Tokenisation and dynamic-padding batches for the supernet (the tasks: ``supernet.tasks``).

Splits are tokenised once, unpadded (``encode``); batches are padded to their own longest
example and, by default, grouped by length so that little compute goes to padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from supernet.errors import DataError
from supernet.tasks import COLUMNS

__all__ = ["Encoded", "encode", "iterate_batches", "length_stats", "num_batches"]


# ----------------------------------------------------------------------------------------------
# Tokenisation and batching
# ----------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """Token ids of a split, unpadded (one list per example), with integer labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> np.ndarray:
        """Token count per example, special tokens included."""
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self))


UNLABELED = -100  # the label of a distillation-only example (cross-entropy ignores it)


def concat(a: Encoded, b: Encoded) -> Encoded:
    """``a``'s examples, then ``b``'s (positions in ``b`` shift by ``len(a)``)."""
    return Encoded(a.input_ids + b.input_ids, a.token_type_ids + b.token_type_ids,
                   np.concatenate([a.labels, b.labels]).astype(np.int64))


def encode_unlabeled(tokenizer: Any, texts: list[str], max_length: int) -> Encoded:
    """Texts without labels, for distillation only: every label is ``UNLABELED``."""
    frame = pd.DataFrame({"text_a": texts, "text_b": [None] * len(texts), "label": [UNLABELED] * len(texts)})
    return encode(tokenizer, frame, max_length)


def encode(tokenizer: Any, frame: pd.DataFrame, max_length: int) -> Encoded:
    """Tokenise ``text_a`` (and ``text_b`` when set) with truncation to ``max_length``, no padding.

    Missing ``token_type_ids`` (tokenizers without segments) become zeros.
    """
    if max_length < 2:
        raise DataError(
            f"max_length must be at least 2 (room for special tokens), got {max_length}"
        )
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"cannot encode: columns found {list(frame.columns)}, missing {missing}")
    labels = frame["label"].to_numpy(dtype=np.int64)
    if len(frame) == 0:
        return Encoded([], [], labels)
    texts_a = [str(t) for t in frame["text_a"].tolist()]
    has_b = frame["text_b"].notna()
    texts_b: list[str] | None = None
    if bool(has_b.any()):
        if not bool(has_b.all()):
            raise DataError(
                f"cannot encode: text_b is set in {int(has_b.sum())} of {len(frame)} rows; "
                "it must be set in all rows (pair task) or in none"
            )
        texts_b = [str(t) for t in frame["text_b"].tolist()]
    out = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length, padding=False)
    input_ids = [list(map(int, ids)) for ids in out["input_ids"]]
    tti = out.get("token_type_ids") if hasattr(out, "get") else None
    if tti is None:
        token_type_ids = [[0] * len(ids) for ids in input_ids]
    else:
        token_type_ids = [list(map(int, t)) for t in tti]
    return Encoded(input_ids, token_type_ids, labels)


def num_batches(enc: Encoded, batch_size: int) -> int:
    """How many batches :func:`iterate_batches` yields for ``enc``."""
    if batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size}")
    return math.ceil(len(enc) / batch_size)


def _batch_order(
    enc: Encoded, batch_size: int, shuffle: bool, seed: int, sort_by_length: bool
) -> list[np.ndarray]:
    n = len(enc)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle else np.arange(n)
    if not sort_by_length:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    lengths = enc.lengths()
    if not shuffle:
        # Longest first (peak memory shows up at once), stable for equal lengths.
        order = np.argsort(-lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    # Shuffled bucketing: sort within chunks of 50 batches, then shuffle the batch order.
    chunk = 50 * batch_size
    batches: list[np.ndarray] = []
    for start in range(0, n, chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def iterate_batches(
    enc: Encoded,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    sort_by_length: bool = False,
    pad_id: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield dynamically padded batches.

    Each batch has ``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T) and ``labels``,
    ``index`` (B,), all ``torch.long``; T is the longest example in the batch and ``index``
    holds positions in ``enc``. ``shuffle`` uses ``numpy.random.default_rng(seed)``;
    ``sort_by_length`` groups examples of similar length (longest first without shuffle, for
    fast evaluation; bucketed with shuffle). Every example is yielded exactly once.
    """
    num_batches(enc, batch_size)  # validates batch_size before the first batch is asked for
    return _padded_batches(
        enc, _batch_order(enc, batch_size, shuffle, seed, sort_by_length), pad_id
    )


def _padded_batches(
    enc: Encoded, batches: list[np.ndarray], pad_id: int
) -> Iterator[dict[str, torch.Tensor]]:
    for idx in batches:
        width = max(len(enc.input_ids[i]) for i in idx)
        ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        types = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            m = len(enc.input_ids[i])
            ids[row, :m] = enc.input_ids[i]
            types[row, :m] = enc.token_type_ids[i]
            mask[row, :m] = 1
        yield {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.from_numpy(types),
            "labels": torch.from_numpy(enc.labels[idx].astype(np.int64)),
            "index": torch.from_numpy(np.asarray(idx, dtype=np.int64)),
        }


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """``batch`` with every tensor on ``device`` (the same tensors where they are there already)."""
    return {k: v.to(device) for k, v in batch.items()}


def length_stats(enc: Encoded) -> dict[str, float]:
    """Token-length statistics (special tokens included): count, mean, p50, p90, p95, max."""
    if len(enc) == 0:
        raise DataError("length_stats needs at least one encoded example, got none")
    lengths = enc.lengths()
    return {
        "count": float(len(lengths)),
        "mean": float(lengths.mean()),
        "p50": float(np.percentile(lengths, 50)),
        "p90": float(np.percentile(lengths, 90)),
        "p95": float(np.percentile(lengths, 95)),
        "max": float(lengths.max()),
    }
