"""Word-replacement augmentation for distillation (supernet.augment), on a hand-made vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supernet.augment import AugmentConfig, augment, neighbours, word_marks
from supernet.data import UNLABELED, Encoded
from supernet.errors import ConfigError

#         0        1        2        3       4       5       6       7      8    9    10     11      12
VOCAB = ["[PAD]", "[CLS]", "[SEP]", "good", "great", "film", "movie", "##s", ",", "a", "12", "bad", "awful"]
SPECIAL = {0, 1, 2}


def embeddings() -> torch.Tensor:
    """Pairs of near-identical rows: good ~ great, film ~ movie, bad ~ awful; the rest apart."""
    rng = np.random.default_rng(0)
    e = rng.normal(size=(len(VOCAB), 16))
    for a, b in ((3, 4), (5, 6), (11, 12)):
        e[b] = e[a] + 0.01 * rng.normal(size=16)
    return torch.tensor(e, dtype=torch.float32)


def test_whole_words_and_continuations_wordpiece() -> None:
    word, cont = word_marks(VOCAB, SPECIAL)
    assert [VOCAB[i] for i in np.flatnonzero(word)] == ["good", "great", "film", "movie", "bad", "awful"]
    assert [VOCAB[i] for i in np.flatnonzero(cont)] == ["##s"]  # one letter, numbers, punctuation: never words


def test_whole_words_and_continuations_sentencepiece() -> None:
    vocab = ["<pad>", "\u2581good", "ness", "\u2581film", "\u2581,", "\u2581a"]
    word, cont = word_marks(vocab, {0})
    assert list(np.flatnonzero(word)) == [1, 3] and list(np.flatnonzero(cont)) == [2]


def test_nearest_neighbours_exclude_themselves() -> None:
    word, _ = word_marks(VOCAB, SPECIAL)
    table = neighbours(embeddings(), np.array([3, 5, 11]), np.flatnonzero(word), k=1)
    assert {VOCAB[i]: VOCAB[int(t[0])] for i, t in table.items()} == {"good": "great", "film": "movie", "bad": "awful"}
    with pytest.raises(ConfigError, match="lower k"):
        neighbours(embeddings(), np.array([3]), np.flatnonzero(word), k=6)


def test_augment_replaces_whole_words_only() -> None:
    # [CLS] good film ##s , a bad movie 12 [SEP]: "film" is continued by "##s", so kept.
    ids = [1, 3, 5, 7, 8, 9, 11, 6, 10, 2]
    data = Encoded([ids], [[0] * len(ids)], np.array([1]))
    out = augment(data, embeddings(), VOCAB, SPECIAL, AugmentConfig(copies=3, p=1.0, k=1))
    assert len(out) == 3 and (out.labels == UNLABELED).all() and out.token_type_ids == [[0] * len(ids)] * 3
    # p = 1 and one neighbour: every replaceable word becomes its nearest; the rest stays.
    assert out.input_ids == [[1, 4, 5, 7, 8, 9, 12, 5, 10, 2]] * 3
    assert data.input_ids == [ids]  # the original is untouched


def test_augment_is_seeded_and_drops_unchanged_copies() -> None:
    ids = [[1, 3, 5, 11, 2], [1, 8, 2], [1, 6, 12, 4, 2]]  # the second has no whole word
    data = Encoded(ids, [[0] * len(i) for i in ids], np.array([0, 1, 0]))
    cfg = AugmentConfig(copies=20, p=0.4, k=2, seed=3)
    a, b = (augment(data, embeddings(), VOCAB, SPECIAL, cfg) for _ in range(2))
    assert a.input_ids == b.input_ids
    assert 0 < len(a) <= 40 and all(new not in ids for new in a.input_ids)
    assert all(len(new) == 5 for new in a.input_ids)  # replacement keeps the length
    other = augment(data, embeddings(), VOCAB, SPECIAL, AugmentConfig(copies=20, p=0.4, k=2, seed=4))
    assert other.input_ids != a.input_ids
    assert len(augment(data, embeddings(), VOCAB, SPECIAL, AugmentConfig(copies=0))) == 0


def test_augment_config_refuses_bad_settings() -> None:
    for bad, match in (({"copies": -1}, "copies"), ({"p": 0.0}, "probability"), ({"k": 0}, "neighbours")):
        with pytest.raises(ConfigError, match=match):
            AugmentConfig(**bad)
    with pytest.raises(ConfigError, match="vocabulary"):
        augment(Encoded([[1, 3, 2]], [[0, 0, 0]], np.array([0])), embeddings()[:5], VOCAB, SPECIAL, AugmentConfig())
