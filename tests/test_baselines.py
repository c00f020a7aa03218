"""The stock deployments a user could ship without us: built from the run's teacher, scored by
running their ONNX graphs, timed beside our models on the same workload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from latency.baselines import (
    FP32_SCORE_BATCH,
    FP32_STOCK,
    STOCK,
    compare_deployments,
    onnx_logits,
    speedups,
    stock_models,
)
from latency.target import Target, target_timer
from latency.workflow import resolve_device
from supernet.checkpoint import load_model
from supernet.evaluate import predict, scores


def test_stock_models_compute_what_the_teacher_computes(job: Path) -> None:
    from supernet.workflow import open_run

    run = open_run(job)
    stock = stock_models(run)
    assert list(stock) == list(STOCK)
    test = run.splits["test"]
    teacher = predict(load_model(job / "teacher"), test)
    for name, atol in (("stock-fp32", 1e-4), ("stock-ort", 1e-3)):  # fusions reorder float sums
        assert np.abs(onnx_logits(stock[name]["path"], test) - teacher).max() < atol, name
    int8 = onnx_logits(stock["stock-int8"]["path"], test)
    assert int8.shape == teacher.shape and (int8.argmax(1) == teacher.argmax(1)).mean() > 0.8
    assert all(0 <= stock[n]["acc_test"] <= 1 for n in STOCK) and stock["stock-int8"]["precision"] == "int8"
    before = {n: Path(stock[n]["path"]).stat().st_mtime_ns for n in STOCK}
    again = stock_models(run)  # built once per run
    assert {n: Path(again[n]["path"]).stat().st_mtime_ns for n in STOCK} == before


def test_stock_int8_is_scored_at_the_deployed_batch_and_again_when_that_changes(
        job: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dynamic INT8's predictions depend on the batch: the stock INT8 accuracy recorded is its
    graph's at the deployed batch (1 by default); a stock.json scored at another batch, or from
    before the batch was recorded, is scored again without rebuilding the graphs."""
    import json

    import latency.baselines as baselines
    from supernet.workflow import open_run

    run = open_run(job)
    test = run.splits["test"]
    stock = stock_models(run)
    int8 = stock["stock-int8"]
    at1 = scores(onnx_logits(int8["path"], test, batch_size=1), test.labels)
    assert int8["scored_batch"] == 1 and (int8["acc_test"], int8["f1_test"]) == (at1["accuracy"], at1["macro_f1"])
    assert all(stock[n]["scored_batch"] == FP32_SCORE_BATCH for n in FP32_STOCK)  # the same at any batch
    about = run.paths.baselines / "stock.json"
    old = json.loads(about.read_text())
    for v in old.values():  # as written before scored_batch, with a figure that must not survive
        del v["scored_batch"]
        v["acc_test"] = -1.0
    about.write_text(json.dumps(old))
    built = {n: Path(stock[n]["path"]).stat().st_mtime_ns for n in STOCK}
    real, seen = onnx_logits, []

    def spy(path, enc, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append((Path(path).name, kw.get("batch_size")))
        return real(path, enc, **kw)

    monkeypatch.setattr(baselines, "onnx_logits", spy)
    again = stock_models(run, batch=4)
    assert sorted(seen) == [("stock-fp32.onnx", FP32_SCORE_BATCH), ("stock-int8.onnx", 4),
                            ("stock-ort.onnx", FP32_SCORE_BATCH)]
    at4 = scores(real(int8["path"], test, batch_size=4), test.labels)
    assert again["stock-int8"]["acc_test"] == at4["accuracy"] and again["stock-int8"]["scored_batch"] == 4
    assert all(again[n]["acc_test"] == stock[n]["acc_test"] for n in FP32_STOCK)
    assert {n: Path(again[n]["path"]).stat().st_mtime_ns for n in STOCK} == built  # not rebuilt
    # Back at batch 1: only the INT8 graph is scored again, and the file records it.
    seen.clear()
    assert stock_models(run)["stock-int8"]["acc_test"] == at1["accuracy"] and seen == [("stock-int8.onnx", 1)]
    assert json.loads(about.read_text())["stock-int8"]["scored_batch"] == 1
    seen.clear()
    stock_models(run)
    assert seen == []  # recorded at this batch: nothing to score
    # The run folder moved to a CPU that quantizes the other way (7-bit weights without VNNI):
    # the INT8 graph is quantized again and scored again, the fp32 graphs are kept.
    import latency.onnx_export

    here = latency.onnx_export.int8_reduce_range()
    assert json.loads(about.read_text())["stock-int8"]["reduce_range"] == here
    for flipped in (not here, here):  # there, and back (the job's run is shared)
        monkeypatch.setattr(baselines, "int8_reduce_range", lambda v=flipped: v)
        monkeypatch.setattr(latency.onnx_export, "int8_reduce_range", lambda v=flipped: v)
        seen.clear()
        moved = stock_models(run)
        assert seen == [("stock-int8.onnx", 1)] and moved["stock-int8"]["reduce_range"] == flipped
        assert json.loads(about.read_text())["stock-int8"]["reduce_range"] == flipped
        assert {n: Path(moved[n]["path"]).stat().st_mtime_ns for n in FP32_STOCK} == {n: built[n] for n in FP32_STOCK}
    assert moved["stock-int8"]["acc_test"] == at1["accuracy"]


def test_deployments_are_timed_in_turn_on_the_budgets_workload(job: Path) -> None:
    from supernet.workflow import open_run

    run = open_run(job)
    stock = stock_models(run)
    with target_timer(run, Target.of(run, resolve_device(job, "cpu"))) as timer:
        timed = compare_deployments(timer, {n: stock[n]["path"] for n in STOCK}, rounds=1)
    assert list(timed) == list(STOCK)
    for t in timed.values():
        assert 0 < t["p50_ms"] <= t["p90_ms"] <= t["p99_ms"]


def test_stock_rows_are_scored_in_the_tasks_metric(job: Path) -> None:
    """Beside ours, whose scores are the task's metric, a macro-F1 task's stock rows carry
    macro F1, not accuracy (r8's page once put stock accuracy beside our F1)."""
    import dataclasses

    from latency.baselines import time_beside_stock
    from supernet.workflow import open_run

    run = open_run(job)
    stock = stock_models(run)
    for metric, key in (("accuracy", "acc_test"), ("macro_f1", "f1_test")):
        run.task = dataclasses.replace(run.task, metric=metric)
        with target_timer(run, Target.of(run, resolve_device(job, "cpu"))) as timer:
            rows = time_beside_stock(run, timer, rounds=1)
        assert rows is not None and rows["ours-full"]["acc_test"] is None  # the caller scores ours
        assert {n: rows[n]["acc_test"] for n in STOCK} == {n: stock[n][key] for n in STOCK}, metric
    assert stock["stock-fp32"]["acc_test"] != stock["stock-fp32"]["f1_test"]  # the check can tell them apart


def test_speedups_are_against_the_fastest_stock_fp32_and_stock_int8() -> None:
    got = speedups({"stock-fp32": 10.0, "stock-ort": 8.0, "stock-int8": 5.0, "ours": 2.0}, "ours")
    assert got == {"vs_fastest_stock_fp32": 4.0, "fastest_stock_fp32": "stock-ort", "vs_stock_int8": 2.5}
    with pytest.raises(ValueError):
        speedups({"ours": 2.0}, "ours")  # nothing to compare with


def test_the_export_reports_the_stock_comparison(job: Path) -> None:
    import json

    (export,) = list((job / "export").iterdir())
    report = json.loads((export / "report.json").read_text())
    # The same sub-network at the precision not chosen is timed beside it.
    other = "ours-int8" if report["precision"] == "fp32" else "ours-fp32"
    assert set(report["deployments"]) == {*STOCK, "ours-full", "ours", other}
    assert report["deployments"]["ours"]["precision"] == report["precision"]
    sp, stat = report["speedup_vs_stock"], report["budget_stat"]
    lat = {n: r[f"{stat}_ms"] for n, r in report["deployments"].items()}
    assert sp["stat"] == stat and sp["ours_vs_fastest_stock_fp32"] == pytest.approx(
        min(lat["stock-fp32"], lat["stock-ort"]) / lat["ours"])
    assert sp["ours_vs_stock_int8"] == pytest.approx(lat["stock-int8"] / lat["ours"])
    assert torch.isfinite(torch.tensor(report["deployments"][other]["acc_test"]))
    # Against the teacher on the same sentences, with paired statistics (rt's metric is accuracy).
    vs = report["vs_teacher"]
    assert set(vs) == {"ours", other, "stock-int8"}
    written = report["finetuned"]["test_accuracy"] if report["finetuned"] else report["test_accuracy"]
    assert report["written_test_accuracy"] == written
    assert vs["ours"]["diff_points"] == pytest.approx(100 * (written - report["full_model_test_accuracy"]))
    assert vs["stock-int8"]["diff_points"] == pytest.approx(
        100 * (report["deployments"]["stock-int8"]["acc_test"] - report["full_model_test_accuracy"]))
    for v in vs.values():
        assert v["metric"] == report["metric"] == "accuracy"
        assert v["ci95_low"] <= v["diff_points"] <= v["ci95_high"] and 0 <= v["mcnemar_p"] <= 1
