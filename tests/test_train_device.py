"""Where training runs (``--train-device``; ``supernet.parallel.resolve_train_device`` and
``join``), checked on any machine: ``auto`` is cuda only where torch sees a GPU, ``cuda``
without one is refused in one line before anything is written, more processes than GPUs are
refused before they join, and ``--train-device cpu`` trains exactly as the default (bit for
bit, dropout included). The runs on GPUs are in ``tests/test_gpu_train.py``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
from test_parallel import TRAIN

from nas.cli import main
from supernet.checkpoint import load_model
from supernet.errors import ConfigError
from supernet.parallel import SINGLE, Ranks, join, resolve_train_device


def test_auto_is_cuda_only_where_torch_sees_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_train_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_train_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="--train-device cuda, but torch .* sees no GPU"):
        resolve_train_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_train_device("auto") == "cuda"
    assert resolve_train_device("cuda") == "cuda"
    with pytest.raises(ConfigError, match="one of auto, cpu, cuda, got 'gpu'"):
        resolve_train_device("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here: --train-device cuda is not refused")
def test_cuda_without_a_gpu_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    for argv in (["train", "--out", str(out), "--quiet"], ["train", "--out", str(out), "--nproc", "2", "--quiet"],
                 ["run", "--out", str(out), "--quiet"],
                 ["export", "--run", str(tmp_path / "no-run"), "--device", "cpu", "--budget-ms", "3", "--out",
                  str(tmp_path / "x")]):
        assert main([*argv, "--train-device", "cuda"]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err  # one line, no traceback
        assert "--train-device cuda, but torch" in err and "sees no GPU" in err and "--train-device cpu" in err
    assert not out.exists() and not (tmp_path / "x").exists()
    assert main(["train", "--out", str(out), "--train-device", "tpu"]) == 2  # argparse names the choices
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_join_places_a_lone_process_and_refuses_more_ranks_than_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert join("cpu") == SINGLE
    assert join("cuda") == Ranks(device="cuda")  # alone: no process group, no GPU touched yet
    # torchrun's environment for rank 0 of 2 on this machine, which has one GPU.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="2 processes on this machine need as many GPUs .* but it has 1"):
        join("cuda")
    assert not dist.is_initialized()


def test_train_device_cpu_trains_exactly_as_the_default(tiny_hf_dir: Path, tmp_path: Path) -> None:
    default, cpu = tmp_path / "default", tmp_path / "cpu"
    assert main(["train", "--out", str(default), "--model", str(tiny_hf_dir), *TRAIN]) == 0
    assert main(["train", "--out", str(cpu), "--model", str(tiny_hf_dir), "--train-device", "cpu", *TRAIN]) == 0
    for part in ("teacher", "rewired", "supernet"):
        a, b = load_model(default / part).state_dict(), load_model(cpu / part).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    one, two = (pd.read_csv(r / "metrics.csv").drop(columns="elapsed_s") for r in (default, cpu))
    pd.testing.assert_frame_equal(one, two)
    pd.testing.assert_frame_equal(pd.read_csv(default / "eval.csv"), pd.read_csv(cpu / "eval.csv"))
