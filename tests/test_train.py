"""Training: an interrupted run resumes to the same weights; the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from supernet.checkpoint import load_model
from supernet.errors import ConfigError, TrainingDiverged
from supernet.train import Interrupted, StageConfig, TrainConfig
from supernet.workflow import RunSpec, train_run

TINY = dict(batch_size=8, max_length=32, teacher=StageConfig(epochs=1, lr=1e-3),
            supernet=StageConfig(epochs=1, lr=1e-3), importance_batches=2, checkpoint_every=3, log_every=2)


def _spec(model_dir: Path, **kw) -> RunSpec:
    return RunSpec(task="rt", model=str(model_dir), seed=0, max_train=64, max_eval=32,
                   train=TrainConfig(**{**TINY, **kw}))


def test_interrupted_training_resumes_to_the_same_weights(tmp_path: Path, tiny_hf_dir) -> None:
    spec = _spec(tiny_hf_dir)
    train_run(tmp_path / "straight", spec, progress=False)
    for stage, step in (("teacher", 4), ("supernet", 5)):
        run = tmp_path / f"broken-{stage}"
        with pytest.raises(Interrupted):
            train_run(run, spec, progress=False, stop_after=(stage, step))
        assert (run / stage / "checkpoint" / "trainer_state.pt").exists()
        with pytest.raises(ConfigError, match="--resume"):
            train_run(run, spec, progress=False)
        train_run(run, spec, resume=True, progress=False)
        for part in ("teacher", "supernet"):
            a = load_model(tmp_path / "straight" / part).state_dict()
            b = load_model(run / part).state_dict()
            assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), (stage, part)
        metrics = pd.read_csv(run / "metrics.csv")
        straight = pd.read_csv(tmp_path / "straight" / "metrics.csv")
        assert len(metrics) == len(straight)  # no duplicated rows from the replayed steps
        assert not (run / stage / "checkpoint").exists()  # cleaned up once the stage is done


def test_resume_refuses_other_settings(tmp_path: Path, tiny_hf_dir) -> None:
    with pytest.raises(Interrupted):
        train_run(tmp_path / "r", _spec(tiny_hf_dir), progress=False, stop_after=("teacher", 2))
    with pytest.raises(ConfigError, match="different settings"):
        train_run(tmp_path / "r", _spec(tiny_hf_dir, n_random=3), resume=True, progress=False)


def test_training_config_validation() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0).validate()
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({"lr": 1})
    cfg = TrainConfig(n_random=3)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.bucket_by_length  # new runs train on length buckets
    old = {k: v for k, v in cfg.to_dict().items() if k != "bucket_by_length"}
    assert not TrainConfig.from_dict(old).bucket_by_length  # a run from before bucketing resumes as it began


def test_cli_train_eval_extract(tmp_path: Path, tiny_hf_dir, capsys) -> None:
    from nas.cli import main

    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--model", str(tiny_hf_dir), "--max-train", "48", "--max-eval", "32",
            "--teacher-epochs", "1", "--supernet-epochs", "1", "--batch-size", "8", "--quiet"]
    assert main(args) == 0
    table = pd.read_csv(out / "eval.csv")
    assert list(table["name"]) == ["teacher", "largest", "w0.75-d1.0-r0.8", "w0.5-d1.0-r1.0", "w0.75-d0.5-r0.6", "smallest"]
    assert table["flops"].is_monotonic_decreasing or table["flops"].iloc[-1] < table["flops"].iloc[1]
    assert table[["acc_dev", "acc_test"]].apply(lambda c: c.between(0, 1)).all().all()
    for name in ("teacher", "supernet", "tokenizer"):
        assert (out / name).is_dir()
    assert {"teacher", "rewire", "supernet"} <= set(json.loads((out / "state.json").read_text())["done"])

    # Running again without --resume is refused with advice; with --resume it is a no-op.
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0

    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps({"heads": [4, 0, 4], "ffn": [32, 0, 32], "keep": [True, False, True],
                               "retention": [1.0, 1.0, 1.0]}))
    assert main(["extract", "--run", str(out), "--subnet", str(sub), "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "hf" / "config.json").exists()
    trained = json.loads((out / "run.json").read_text())["train"]["max_length"]
    for folder in ("hf", "pytorch"):  # the tokenizer cuts where the run did, not at the pretrained model's 512
        assert json.loads((tmp_path / "x" / folder / "tokenizer_config.json").read_text())["model_max_length"] == trained
    assert main(["eval", "--run", str(out), "--subnet", str(sub)]) == 0
    assert main(["eval", "--run", str(out), "--save", str(tmp_path / "pub" / "supernet_eval_rt.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "pub" / "supernet_eval_rt.csv")) == 6
    assert "supernet" in json.loads((tmp_path / "pub" / "supernet_train_rt.json").read_text())["state"]["done"]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"heads": [5, 4, 4], "ffn": [64] * 3, "keep": [True] * 3, "retention": [1.0] * 3}))
    assert main(["extract", "--run", str(out), "--subnet", str(bad), "--out", str(tmp_path / "y")]) == 2
    assert "heads[0]=5" in capsys.readouterr().err


def test_cli_reports_bad_input_without_traceback(tmp_path: Path, capsys) -> None:
    from nas.cli import main

    assert main(["train", "--out", str(tmp_path / "r"), "--task", "nope", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "rt" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing half-made is left behind
    assert main(["eval", "--run", str(tmp_path / "missing")]) == 2
    assert "run.json" in capsys.readouterr().err


def test_supernet_stage_trains_on_unlabeled_text_too(tmp_path: Path, tiny_hf_dir) -> None:
    """With unlabeled=N the supernet stage runs over the train split plus N unlabeled texts
    (more steps per epoch), the teacher over the train split only."""
    from supernet.data import UNLABELED
    from supernet.workflow import load_data, open_run

    spec = _spec(tiny_hf_dir, unlabeled=24)
    train_run(tmp_path / "r", spec, progress=False)
    run = open_run(tmp_path / "r")
    assert len(run.splits["distill"]) == len(run.splits["train"]) + 24
    assert (run.splits["distill"].labels[len(run.splits["train"]):] == UNLABELED).all()
    metrics = pd.read_csv(tmp_path / "r" / "metrics.csv")
    steps = metrics.groupby("stage")["step"].max()
    assert steps["supernet"] == -(-(64 + 24) // 8) and steps["teacher"] == 64 // 8
    assert metrics["loss"].notna().all()
    # the same seed picks the same texts; without the option there is no distill split
    again = load_data(spec, run.tokenizer)[1]["distill"]
    assert again.input_ids == run.splits["distill"].input_ids
    assert "distill" not in load_data(_spec(tiny_hf_dir), run.tokenizer)[1]


def test_supernet_stage_trains_on_augmented_copies(tmp_path: Path, tiny_hf_dir) -> None:
    """With augment=K the supernet stage also runs over K word-replaced copies of each train
    example (neighbours from the pretrained embeddings; the teacher trains on the train split
    only); the copies are seeded, so an interrupted run resumes to the same weights."""
    from supernet.checkpoint import load_pretrained
    from supernet.workflow import load_data, with_supernet_augment

    spec = _spec(tiny_hf_dir, augment=1)
    pretrained, tok = load_pretrained(str(tiny_hf_dir), 2, seed=0)
    splits = with_supernet_augment(spec, load_data(spec, tok)[1], pretrained, tok)
    extra = len(splits["distill"]) - 64
    assert 0 < extra <= 64 and splits["distill"].input_ids[:64] == splits["train"].input_ids
    assert with_supernet_augment(_spec(tiny_hf_dir), splits, pretrained, tok) is splits  # 0: nothing added
    train_run(tmp_path / "r", spec, progress=False)
    steps = pd.read_csv(tmp_path / "r" / "metrics.csv").groupby("stage")["step"].max()
    assert steps["supernet"] == -(-(64 + extra) // 8) and steps["teacher"] == 64 // 8
    assert json.loads((tmp_path / "r" / "run.json").read_text())["train"]["augment"] == 1
    with pytest.raises(Interrupted):
        train_run(tmp_path / "b", spec, progress=False, stop_after=("supernet", 5))
    train_run(tmp_path / "b", spec, resume=True, progress=False)
    a, b = (load_model(tmp_path / r / "supernet").state_dict() for r in ("r", "b"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_step_with_a_nan_loss_stops_the_stage_before_it_is_applied(tmp_path: Path) -> None:
    """A loss that turns NaN stops the stage with one line naming the step; that step's update
    is not applied, so the weights in memory and the last checkpoint stay finite."""
    import numpy as np
    import torch.nn.functional as F

    from conftest import tiny_model
    from supernet.data import Encoded
    from supernet.train import MetricsLog, StageRunner

    model = tiny_model()
    rng = np.random.default_rng(0)
    ids = [[2, *rng.integers(5, 120, size=int(n)).tolist()] for n in rng.integers(3, 12, size=32)]
    train = Encoded(ids, [[0] * len(x) for x in ids], (np.arange(32) % 2).astype(np.int64))
    cfg = TrainConfig(batch_size=4, checkpoint_every=3, log_every=1)
    runner = StageRunner("teacher", tmp_path / "teacher", model, train, StageConfig(epochs=1, lr=1e-3), cfg,
                         MetricsLog(tmp_path / "metrics.csv"), progress=False)
    before_bad: dict[str, torch.Tensor] = {}

    def step_fn(batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        loss = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits,
                               batch["labels"])
        if step == 4:  # the fifth step goes wrong
            before_bad.update({k: v.detach().clone() for k, v in model.state_dict().items()})
            loss = loss * float("nan")
        loss.backward()
        return {"loss": loss.item()}

    with pytest.raises(TrainingDiverged, match=r"teacher stage diverged at step 5 of 8: its loss is nan.*"
                                               r"last checkpoint \(step 3\) is kept"):
        runner.run(step_fn)
    after = model.state_dict()
    assert all(torch.equal(after[k], before_bad[k]) for k in after)  # the NaN step was not applied
    saved = load_model(tmp_path / "teacher" / "checkpoint").state_dict()
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())


def test_cli_train_that_diverges_says_so_in_one_line(tmp_path: Path, tiny_hf_dir, capsys) -> None:
    """A learning rate far too high: the weights overflow, the loss turns NaN; the command
    stops with one line (exit 2) instead of training on and saving NaN weights."""
    from nas.cli import main

    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--model", str(tiny_hf_dir), "--max-train", "48", "--max-eval", "32",
            "--teacher-epochs", "1", "--supernet-epochs", "1", "--batch-size", "8", "--teacher-lr", "1e30", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "teacher stage diverged at step" in err and "learning rate 1e+30" in err
    assert not (out / "teacher" / "model.safetensors").exists()  # no teacher saved


def test_a_run_refuses_data_that_changed_since_it_was_trained(tmp_path: Path, tiny_hf_dir) -> None:
    """A data file grown after training would be split anew, moving trained-on examples into
    dev and test: opening the run says so instead (the fingerprint in data_summary.json)."""
    from supernet.errors import CheckpointError
    from supernet.workflow import open_run

    data = tmp_path / "reviews.csv"
    rows = [{"text": f"review number {i} was {['bad', 'good'][i % 2]}", "label": ["neg", "pos"][i % 2]} for i in range(80)]
    pd.DataFrame(rows).to_csv(data, index=False)
    spec = RunSpec(task=str(data), model=str(tiny_hf_dir), seed=0, train=TrainConfig(**TINY))
    train_run(tmp_path / "r", spec, progress=False)
    summary = json.loads((tmp_path / "r" / "data_summary.json").read_text())
    run = open_run(tmp_path / "r")  # the same data: opens
    assert summary["fingerprint"] == run.task.fingerprint()
    more = rows + [{"text": f"one more review {i}", "label": "pos"} for i in range(10)]
    pd.DataFrame(more).to_csv(data, index=False)
    with pytest.raises(CheckpointError, match="not those the run was trained on"):
        open_run(tmp_path / "r")
    pd.DataFrame(rows).to_csv(data, index=False)
    open_run(tmp_path / "r")  # restored: opens again
    del summary["fingerprint"]  # a run written before the fingerprint is not checked
    (tmp_path / "r" / "data_summary.json").write_text(json.dumps(summary))
    pd.DataFrame(more).to_csv(data, index=False)
    open_run(tmp_path / "r")
