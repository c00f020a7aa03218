"""The main job and the search / export / compare commands, end to end on a tiny BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from nas.cli import main

REPORT_KEYS = {"device", "budget_ms", "predicted_latency_ms", "measured_latency_ms", "full_model_latency_ms",
               "dev_accuracy", "test_accuracy", "full_model_test_accuracy", "flops", "params"}


def test_main_job_writes_everything(job: Path) -> None:
    summary = pd.read_csv(job / "summary.csv")
    assert set(summary["device"]) == {"cpu", "cpu-1t"}
    assert (summary["measured_ms"] > 0).all() and (summary["speedup"] > 0).all()
    for device in ("cpu", "cpu-1t"):
        rows = pd.read_csv(job / "latency" / f"{device}.csv")
        assert rows[rows["kind"] == "sample"]["arch_key"].nunique() == 12
        assert (job / "latency" / f"{device}.fit.png").stat().st_size > 1000
        report = json.loads((job / "latency" / f"{device}.fit.json").read_text())
        assert {"mape", "within_10pct", "kendall_tau"} <= set(report["metrics"][report["chosen"]])
    for name in ("fronts.csv", "hypervolume.csv", "fronts.png"):
        assert (job / "compare" / name).exists()
    fronts = pd.read_csv(job / "compare" / "fronts.csv")
    assert set(fronts["device"]) == {"cpu", "cpu-1t"} and fronts["acc_test"].between(0, 1).all()
    (export,) = list((job / "export").iterdir())
    report = json.loads((export / "report.json").read_text())
    assert set(report) >= REPORT_KEYS
    assert report["measured_latency_ms"] <= report["budget_ms"]
    for f in ("model.onnx", "subnet.json", "pytorch/model.safetensors"):
        assert (export / f).exists()


def test_exported_models_give_the_supernet_logits(job: Path) -> None:
    from latency.onnx_export import check_onnx
    from supernet.checkpoint import load_model
    from supernet.data import iterate_batches
    from supernet.space import SubnetConfig
    from supernet.workflow import open_run

    run = open_run(job)
    (export,) = list((job / "export").iterdir())
    cfg = SubnetConfig.from_dict(json.loads((export / "subnet.json").read_text()))
    standalone = load_model(export / "pytorch")
    batches = list(iterate_batches(run.splits["test"], 8, shuffle=False))[:3]
    assert check_onnx(standalone, export / "model.onnx", batches) < 1e-4
    with torch.no_grad():
        for b in batches:
            args = (b["input_ids"], b["attention_mask"], b["token_type_ids"])
            assert torch.allclose(standalone(*args).logits, run.supernet(*args, subnet=cfg).logits, atol=1e-5)


def test_impossible_budget_names_the_fastest_latency(job: Path, tmp_path: Path, capsys) -> None:
    code = main(["export", "--run", str(job), "--device", "cpu", "--budget-ms", "0.0001", "--out", str(tmp_path / "x"), "--n", "5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "fastest reachable sub-network is predicted at" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_search_front_and_compare_methods(job: Path, tmp_path: Path) -> None:
    assert main(["search", "--run", str(job), "--device", "cpu", "--front", "--method", "nsga2", "--n", "8"]) == 0
    assert main(["search", "--run", str(job), "--device", "cpu-1t", "--budget-ms", "5", "--method", "random", "--n", "6"]) == 0
    assert (job / "search" / "cpu_front_nsga2.csv").exists() and (job / "search" / "optuna.db").exists()
    assert main(["compare", "--run", str(job), "--devices", "cpu,cpu-1t", "--methods", "evolution,random",
                 "--out", str(tmp_path / "cmp"), "--no-remeasure"]) == 0
    hv = pd.read_csv(tmp_path / "cmp" / "hypervolume.csv")
    assert len(hv) == 4 and (hv["hypervolume"] >= 0).all()


def test_bad_device_and_missing_measurements(job: Path, capsys) -> None:
    assert main(["measure", "--run", str(job), "--device", "phone"]) == 2
    assert "known devices: cpu, cpu-1t, cuda, torch-cpu" in capsys.readouterr().err
    assert main(["fit", "--run", str(job), "--device", "torch-cpu"]) == 2
    assert "hwnas measure" in capsys.readouterr().err
    assert main(["search", "--run", str(job), "--device", "cpu", "--budget-ms", "abc"]) == 2
    assert "--budget-ms" in capsys.readouterr().err


def test_search_through_ray_tune_on_a_real_run(job: Path) -> None:
    """The Ray path with the run's own (pickled) dev accuracy and latency predictor."""
    assert main(["search", "--run", str(job), "--device", "cpu", "--budget-ms", "5", "--ray", "--workers", "2",
                 "--n", "4", "--dev-subset", "32"]) == 0
    hist = pd.read_csv(job / "search" / "cpu_5ms_ray.csv")
    assert 1 <= len(hist) <= 4 and (hist["lat_upper_ms"][hist["feasible"]] <= 5).all()
