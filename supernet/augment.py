"""Word-replacement augmentation for distillation (TinyBERT, DynaBERT).

A distilled student learns from the teacher's soft predictions, which need no labels, so new
training text can be made from the train split itself: copies of each example with some of its
words replaced by their nearest neighbours. TinyBERT and DynaBERT found this matters most on
small data sets. Here neighbours come from the model's own word embeddings (cosine similarity
between whole-word tokens), and replacement works on token ids, so nothing is re-tokenised:

- a *whole word* is a vocabulary token of letters only that starts a word and is not continued by
  the next token (WordPiece: no ``##`` prefix and the next token has none; SentencePiece / BPE:
  the ``▁`` or ``Ġ`` word-start mark and the next token does not continue it); words split into
  several pieces, punctuation, numbers and special tokens are never replaced;
- each whole word of a copy is replaced with probability ``p`` by one of its ``k`` nearest whole
  words, uniformly;
- copies identical to their original are dropped (short texts with nothing replaced).

The copies carry no label (``UNLABELED``): they serve distillation only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from supernet.data import UNLABELED, Encoded
from supernet.errors import ConfigError

__all__ = ["AugmentConfig", "augment", "augment_with", "neighbours", "word_marks"]

WORD_START = ("\u2581", "\u0120")  # SentencePiece's and byte-level BPE's word-start marks


@dataclass(frozen=True)
class AugmentConfig:
    """How many word-replaced copies of each example to make, and how (TinyBERT: p 0.4, k 15)."""

    copies: int = 1
    p: float = 0.4  # the chance each whole word is replaced
    k: int = 15  # neighbours a replacement is drawn from
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.copies, int) and self.copies >= 0):
            raise ConfigError(f"augmented copies must be a whole number >= 0, got {self.copies!r}")
        if not 0 < self.p <= 1:
            raise ConfigError(f"the replacement probability must lie in (0, 1], got {self.p:g}")
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ConfigError(f"the number of neighbours must be a whole number >= 1, got {self.k!r}")


def word_marks(tokens: list[str], special: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """For a vocabulary (token strings by id): which ids are whole words that may be replaced,
    and which ids continue the word before them (a word followed by one is split in pieces)."""
    n = len(tokens)
    word, cont = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    wordpiece = any(t.startswith("##") for t in tokens)
    for i, t in enumerate(tokens):
        if i in special or not t:
            continue
        if wordpiece:
            cont[i] = t.startswith("##")
            word[i] = t.isalpha() and len(t) > 1
        else:
            starts = t.startswith(WORD_START)
            cont[i] = not starts
            word[i] = starts and t[1:].isalpha() and len(t) > 2
    return word, cont


def neighbours(embeddings: torch.Tensor, ids: np.ndarray, candidates: np.ndarray, k: int,
               chunk: int = 2048) -> dict[int, np.ndarray]:
    """The ``k`` nearest of ``candidates`` (token ids) to each of ``ids`` by the cosine of their
    rows of ``embeddings`` (vocabulary x dimension), itself excluded, nearest first."""
    if len(candidates) <= k:
        raise ConfigError(f"{k} neighbours asked for among only {len(candidates)} whole-word tokens: lower k")
    with torch.no_grad():
        unit = torch.nn.functional.normalize(embeddings.detach().float().cpu(), dim=1)
        cand = torch.as_tensor(candidates)
        pool = unit[cand]
        out: dict[int, np.ndarray] = {}
        for start in range(0, len(ids), chunk):
            rows = torch.as_tensor(ids[start:start + chunk])
            sim = unit[rows] @ pool.T
            sim[cand[None, :] == rows[:, None]] = -2.0  # never itself
            top = sim.topk(k, dim=1).indices
            for r, t in zip(rows.tolist(), cand[top].numpy(), strict=True):
                out[r] = t
    return out


def augment(data: Encoded, embeddings: torch.Tensor, tokens: list[str], special: set[int],
            cfg: AugmentConfig) -> Encoded:
    """``cfg.copies`` word-replaced copies of each example of ``data`` (seeded), unlabeled; the
    copies of example 0 first, then those of example 1, and so on."""
    if cfg.copies == 0 or len(data) == 0:
        return Encoded([], [], np.zeros(0, dtype=np.int64))
    if embeddings.shape[0] != len(tokens):
        raise ConfigError(f"the embeddings have {embeddings.shape[0]} rows but the vocabulary {len(tokens)} tokens: "
                          "augment with the tokenizer the model was trained with")
    word, cont = word_marks(tokens, special)
    used = np.unique(np.fromiter((t for ids in data.input_ids for t in ids), dtype=np.int64))
    used = used[(used < len(tokens)) & word[np.minimum(used, len(tokens) - 1)]]
    table = neighbours(embeddings, used, np.flatnonzero(word), cfg.k) if len(used) else {}
    rng = np.random.default_rng([cfg.seed, 31])
    ids_out: list[list[int]] = []
    types_out: list[list[int]] = []
    for ids, types in zip(data.input_ids, data.token_type_ids, strict=True):
        # Positions of whole words: replaceable, and not continued by the next token.
        spots = [i for i, t in enumerate(ids)
                 if t in table and not (i + 1 < len(ids) and ids[i + 1] < len(cont) and cont[ids[i + 1]])]
        for _ in range(cfg.copies):
            if not spots:
                break
            hit = rng.random(len(spots)) < cfg.p
            if not hit.any():
                continue
            new = list(ids)
            for i in np.asarray(spots)[hit]:
                new[i] = int(table[ids[i]][rng.integers(cfg.k)])
            ids_out.append(new)
            types_out.append(list(types))
    return Encoded(ids_out, types_out, np.full(len(ids_out), UNLABELED, dtype=np.int64))


def augment_with(data: Encoded, weights: torch.Tensor, tokenizer: Any, cfg: AugmentConfig) -> Encoded:
    """``augment`` with the vocabulary and special tokens read from ``tokenizer`` and the word
    embeddings ``weights`` (vocabulary x dimension) of the model the texts are for."""
    tokens = [t or "" for t in tokenizer.convert_ids_to_tokens(list(range(weights.shape[0])))]
    return augment(data, weights, tokens, set(tokenizer.all_special_ids), cfg)
