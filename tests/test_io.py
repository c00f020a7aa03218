"""Crash-safe files: the append-only CSV log, the score cache built on it and files written together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_model
from supernet.data import Encoded
from supernet.evaluate import SCORE_COLUMNS, Evaluator
from supernet.io import CsvLog
from supernet.space import SearchSpace

COLUMNS = ["key", "value", "note"]


def test_rows_round_trip_and_the_header_is_written_once(tmp_path: Path) -> None:
    log = CsvLog(tmp_path / "sub" / "log.csv", COLUMNS)
    assert list(log.read().columns) == COLUMNS and log.read().empty  # no file yet
    log.append([{"key": "a", "value": 1.5, "note": "x, with a comma"}])
    log.append([{"key": "b", "value": 2.0, "extra": "ignored"}, {"key": "c", "value": -3.25, "note": ""}])
    lines = log.path.read_text().splitlines()
    assert lines[0] == "key,value,note" and lines.count("key,value,note") == 1 and len(lines) == 4
    frame = log.read(keep_default_na=False, na_values=[""])
    assert list(frame.columns) == COLUMNS
    assert frame["key"].tolist() == ["a", "b", "c"]
    assert frame["value"].tolist() == [1.5, 2.0, -3.25]
    assert frame["note"].fillna("").tolist() == ["x, with a comma", "", ""]


def test_a_torn_tail_is_ignored_then_cut_and_the_next_append_parses(tmp_path: Path) -> None:
    log = CsvLog(tmp_path / "log.csv", COLUMNS)
    log.append([{"key": "a", "value": 1}])
    with open(log.path, "a") as f:
        f.write("b,2,half a li")  # a crash in the middle of a write
    before = log.path.read_bytes()
    assert log.read()["key"].tolist() == ["a"]
    assert log.path.read_bytes() == before  # reading changes nothing
    log.append([{"key": "c", "value": 3}])
    assert log.path.read_text() == "key,value,note\na,1,\nc,3,\n"
    assert log.read()["key"].tolist() == ["a", "c"]


def test_a_torn_header_is_cut_and_written_again(tmp_path: Path) -> None:
    log = CsvLog(tmp_path / "log.csv", COLUMNS)
    log.path.write_text("key,val")  # the crash came while the first append wrote the header
    assert log.read().empty
    log.append([{"key": "a", "value": 1}])
    assert log.path.read_text() == "key,value,note\na,1,\n"


def test_an_empty_file_gets_the_header(tmp_path: Path) -> None:
    log = CsvLog(tmp_path / "log.csv", COLUMNS)
    log.path.touch()
    assert list(log.read().columns) == COLUMNS
    log.append([{"key": "a", "value": 1}])
    assert log.read()["key"].tolist() == ["a"]


def test_evaluator_scores_persist_and_are_not_recomputed(tmp_path: Path) -> None:
    model = tiny_model()
    rng = np.random.default_rng(0)
    enc = Encoded([[2, *rng.integers(5, 120, size=n).tolist()] for n in (6, 9, 3, 7)],
                  [[0] * (n + 1) for n in (6, 9, 3, 7)], np.array([0, 1, 1, 0]))
    space = SearchSpace.for_model(3, 4, 64)  # tiny_model's shape
    cfgs = [space.largest(), space.smallest()]
    path = tmp_path / "search" / "accuracy.csv"
    first = Evaluator(model, {"dev": enc}, log_path=path)
    scored = [first(c, "dev") for c in cfgs]
    assert first.n_computed == len(cfgs)
    frame = pd.read_csv(path, dtype={"arch_key": str})
    assert list(frame.columns) == SCORE_COLUMNS and len(frame) == len(cfgs)
    again = Evaluator(model, {"dev": enc}, log_path=path)
    assert [again(c, "dev") for c in cfgs] == scored and again.n_computed == 0


def test_json_files_are_strict_json(tmp_path: Path) -> None:
    """No bare NaN or Infinity in a written file (a kit device's report has no measured latency):
    not-finite numbers become null, numpy values plain ones."""
    import json

    from supernet.io import write_json

    path = write_json(tmp_path / "r.json", {"ms": float("nan"), "xs": [np.float64(1.5), float("inf"), np.int64(3)],
                                             "a": np.array([0.25, -np.inf])})

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"ms": None, "xs": [1.5, None, 3],
                                                                   "a": [0.25, None]}


def test_files_written_together_replace_the_old_set_only_when_all_are_made(tmp_path: Path) -> None:
    from supernet.io import write_text, write_together

    for name in ("page.md", "page_fronts.csv", "page_summary.json"):
        (tmp_path / name).write_text("old")

    def broken(p: Path) -> None:
        raise RuntimeError("the plot failed")

    files = {"page_fronts.csv": lambda p: write_text(p, "new"), "page_summary.json": broken,
             "page.md": lambda p: write_text(p, "new")}
    with pytest.raises(RuntimeError, match="plot failed"):
        write_together(tmp_path, "page", files)
    # The first file was made before the failure, yet nothing of the new set reached the folder.
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "page.md": "old", "page_fronts.csv": "old", "page_summary.json": "old"}

    stale = tmp_path / ".page.abc123.tmp"  # what a writer killed before its renames leaves
    stale.mkdir()
    (stale / "page.md").write_text("half")
    files["page_summary.json"] = lambda p: write_text(p, "new")
    written = write_together(tmp_path, "page", files)
    assert sorted(p.name for p in written) == ["page.md", "page_fronts.csv", "page_summary.json"]
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "page.md": "new", "page_fronts.csv": "new", "page_summary.json": "new"}


def _append_one(path: str, k: int, start: Any) -> None:
    start.wait()
    CsvLog(path, COLUMNS).append([{"key": f"k{k}", "value": k, "note": ""}])


def test_appenders_that_find_the_file_new_at_once_write_one_header(tmp_path: Path) -> None:
    """Ray workers append to one run's accuracy cache: several creating it at the same moment
    must leave one header and every row."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for trial in range(10):
        path = tmp_path / f"cache{trial}.csv"
        start = ctx.Barrier(6)
        procs = [ctx.Process(target=_append_one, args=(str(path), k, start)) for k in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        lines = path.read_text().splitlines()
        assert lines.count(",".join(COLUMNS)) == 1 and lines[0] == ",".join(COLUMNS), lines
        assert sorted(CsvLog(path, COLUMNS).read()["key"]) == sorted(f"k{k}" for k in range(6))
