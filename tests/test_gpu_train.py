"""Training on GPUs (``--train-device cuda``): one process on a GPU against the CPU, a run
trained on a GPU resumed on the CPU, and 2 processes over NCCL. Only where torch sees a GPU
(two for NCCL); elsewhere every test here is skipped and says why, and
``tests/test_train_device.py`` checks that ``cuda`` is then refused with a clear message.

The model is the tiny BERT without dropout (the GPU draws other dropout masks). Tolerance:
1e-3 on every weight and relative on the logged losses (the CPU-only 1- against 2-process
test holds 1e-4): the GPU's kernels sum in other orders than the CPU's, and AdamW scales
rounding differences in small gradients up to steps of about the learning rate. The
attention's key biases are left out, as in ``tests/test_parallel.py``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from test_parallel import TRAIN, close_weights, hwnas

from nas.cli import main

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason=f"training on cuda needs a GPU that torch sees; torch {torch.__version__} here has "
                       "torch.cuda.is_available() False"),
]
GPU_ATOL = 1e-3
PARTS = ("teacher", "rewired", "supernet")


@pytest.fixture(scope="module")
def on_cpu(no_dropout_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same run trained by one process on the CPU."""
    out = tmp_path_factory.mktemp("cpu") / "run"
    assert main(["train", "--out", str(out), "--model", str(no_dropout_bert), "--train-device", "cpu", *TRAIN]) == 0
    return out


def assert_trained_alike(ref: Path, run: Path) -> None:
    for part in PARTS:
        assert close_weights(ref / part, run / part) < GPU_ATOL, part
    one, two = (pd.read_csv(r / "metrics.csv") for r in (ref, run))
    assert list(one["step"]) == list(two["step"]) and list(one["stage"]) == list(two["stage"])
    for col in [c for c in one.columns if c.startswith("loss")]:
        assert (two[col] - one[col]).abs().max() <= GPU_ATOL * one[col].abs().max(), col


def test_one_gpu_trains_as_the_cpu(no_dropout_bert: Path, on_cpu: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu"
    assert main(["train", "--out", str(out), "--model", str(no_dropout_bert), "--train-device", "cuda", *TRAIN]) == 0
    assert "trained with 1 process on cuda" in capsys.readouterr().out
    assert_trained_alike(on_cpu, out)


def test_a_run_trained_on_a_gpu_resumes_on_the_cpu(no_dropout_bert: Path, on_cpu: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    # Killed at the supernet's 2nd checkpoint (the 5th of the run), mid-swap.
    p = hwnas("train", "--out", str(out), "--model", str(no_dropout_bert), "--train-device", "cuda", *TRAIN,
              fault="train.checkpoint:5")
    assert p.returncode == -9, p.stderr[-3000:]
    state = torch.load(out / "supernet" / "checkpoint.old" / "trainer_state.pt", weights_only=True)
    tensors = [v for s in state["optimizer"]["state"].values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)  # loads on a machine without a GPU
    assert main(["train", "--out", str(out), "--resume", "--train-device", "cpu"]) == 0
    assert_trained_alike(on_cpu, out)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=f"2 processes over NCCL need 2 GPUs; torch sees "
                    f"{torch.cuda.device_count()}")
def test_two_gpus_over_nccl_train_as_one_cpu(no_dropout_bert: Path, on_cpu: Path, tmp_path: Path) -> None:
    out = tmp_path / "two"
    p = hwnas("train", "--out", str(out), "--model", str(no_dropout_bert), "--nproc", "2", "--train-device", "cuda",
              *TRAIN)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "trained with 2 processes on cuda" in p.stdout
    assert_trained_alike(on_cpu, out)
