"""Training: an interrupted run resumes to the same weights; the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from supernet.checkpoint import load_model
from supernet.errors import ConfigError
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
