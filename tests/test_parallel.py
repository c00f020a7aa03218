"""Data-parallel training (supernet/parallel.py): 2 gloo processes against 1, and a resume
with another number of processes.

The model is the tiny BERT without dropout (dropout masks depend on which rank sees an
example, so with it the runs would differ by design). Everything else is deterministic, so
the 2-process run must take the 1-process run's optimizer steps up to float rounding: each
rank sums its slice's gradients in another order and the slices are padded to their own
widths after token dropping. Tolerance: 1e-4 on every weight (observed: ~5e-6), 1e-4
relative on the logged losses, with one exception: the attention's key biases. Their
gradient is zero in exact arithmetic (a bias added to every key shifts all of a query's
scores alike, which softmax ignores), so what they receive is rounding noise, which AdamW
scales up to steps of about the learning rate whatever its size: any change in the order of
float operations (another thread count too) moves them by ~lr. They do not change the
model's outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from nas.cli import _without_option, main
from supernet.checkpoint import load_model
from supernet.errors import ConfigError
from supernet.parallel import Ranks
from supernet.train import TrainConfig
from supernet.workflow import RunSpec, train_run

ROOT = Path(__file__).resolve().parents[1]
# 19 examples in batches of 8: the last batch (3) splits unevenly, 1 and 2, which the
# gradient weighting must get right. A checkpoint every step: the resume point is exact.
TRAIN = ["--max-train", "19", "--max-eval", "8", "--batch-size", "8", "--teacher-epochs", "1",
         "--supernet-epochs", "1", "--teacher-lr", "1e-3", "--supernet-lr", "1e-3", "--n-random", "1",
         "--checkpoint-every", "1", "--quiet"]
ATOL = 1e-4
NOISE_ONLY = ".attn.key.bias"  # zero gradient in exact arithmetic (module doc)


def hwnas(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("HWNAS_FAULT", None)
    if fault:
        env["HWNAS_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def close_weights(a: Path, b: Path) -> float:
    """The largest difference between two saved models' weights (same names asserted), the
    key biases aside (module doc)."""
    sa, sb = load_model(a).state_dict(), load_model(b).state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa if not k.endswith(NOISE_ONLY))


def test_two_processes_train_as_one_and_resume_with_one(no_dropout_bert: Path, tmp_path: Path) -> None:
    ref, par = tmp_path / "one", tmp_path / "two"
    assert main(["train", "--out", str(ref), "--model", str(no_dropout_bert), *TRAIN]) == 0

    # 2 processes: the teacher (3 steps) whole, then killed at the supernet's 2nd checkpoint
    # (the 5th: rank 0 alone writes them), mid-swap; the launcher then stops rank 1.
    p = hwnas("train", "--out", str(par), "--model", str(no_dropout_bert), "--nproc", "2", *TRAIN,
              fault="train.checkpoint:5")
    assert p.returncode == 128 + 9, p.stderr[-3000:]
    assert (par / "supernet" / "checkpoint.old").exists()
    assert close_weights(ref / "teacher", par / "teacher") < ATOL

    # Resumed by 1 process from the 2-process checkpoint: the same supernet.
    assert main(["train", "--out", str(par), "--resume"]) == 0
    for part in ("teacher", "rewired", "supernet"):
        assert close_weights(ref / part, par / part) < ATOL, part
    one, two = (pd.read_csv(r / "metrics.csv") for r in (ref, par))
    assert list(one["step"]) == list(two["step"]) and list(one["stage"]) == list(two["stage"])
    for col in [c for c in one.columns if c.startswith("loss")]:
        assert (two[col] - one[col]).abs().max() <= 1e-4 * one[col].abs().max(), col
    # The 2-process figures are the batch's, not one rank's: rank 1's slice alone would differ.
    assert one.loc[one["stage"] == "teacher", "loss"].iloc[0] == pytest.approx(
        two.loc[two["stage"] == "teacher", "loss"].iloc[0], rel=1e-4)


def test_a_batch_too_small_to_share_is_refused_before_anything_is_written(no_dropout_bert: Path,
                                                                          tmp_path: Path) -> None:
    spec = RunSpec(task="rt", model=str(no_dropout_bert), max_train=17, max_eval=8,
                   train=TrainConfig(batch_size=8, max_length=32))  # last batch: 1 example
    with pytest.raises(ConfigError, match="2 processes cannot share the last batch"):
        train_run(tmp_path / "r", spec, progress=False, ranks=Ranks(0, 2))  # no process group needed
    assert not (tmp_path / "r").exists()


def test_shards_cover_the_batch_in_order() -> None:
    batch = {"labels": torch.arange(7), "input_ids": torch.arange(14).view(7, 2)}
    parts = [Ranks(r, 3).shard(batch) for r in range(3)]
    assert [len(p["labels"]) for p in parts] == [2, 2, 3]
    assert torch.equal(torch.cat([p["labels"] for p in parts]), batch["labels"])
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), batch["input_ids"])
    assert Ranks().shard(batch) is batch


def test_sharded_cross_entropy_with_unlabeled_rows_adds_up_to_the_whole_batchs() -> None:
    """Unlabeled distillation rows spread unevenly over the shards ([L, L | L, U, U]): each
    rank's cross-entropy, weighted by its share of the examples as the gradients are, adds up
    to the whole batch's mean over its labeled rows (a shard's own mean would not)."""
    from supernet.data import UNLABELED
    from supernet.train import labeled_ce

    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.tensor([0, 2, 1, UNLABELED, UNLABELED])
    share = torch.full((5,), 3 / 5)
    whole = torch.autograd.grad(labeled_ce(logits, labels), logits)[0]

    def sharded(with_share: bool) -> torch.Tensor:
        total = torch.zeros_like(logits)
        for r in range(2):
            part = Ranks(r, 2).shard({"logits": logits, "labels": labels, "labeled_share": share})
            loss = labeled_ce(part["logits"], part["labels"], part["labeled_share"] if with_share else None)
            total += torch.autograd.grad(loss * len(part["labels"]) / 5, logits)[0]
        return total

    torch.testing.assert_close(sharded(True), whole)
    assert not torch.allclose(sharded(False), whole)  # each shard's own mean: the rows weigh otherwise
    torch.testing.assert_close(labeled_ce(logits, labels, torch.full((5,), 3 / 5)), labeled_ce(logits, labels))
    assert labeled_ce(logits[3:], labels[3:], share[3:]).item() == 0.0  # a shard without labels adds nothing


def test_nproc_is_taken_out_of_the_ranks_command_line() -> None:
    assert _without_option(["train", "--nproc", "2", "--out", "x"], "--nproc") == ["train", "--out", "x"]
    assert _without_option(["train", "--nproc=2", "--quiet"], "--nproc") == ["train", "--quiet"]
