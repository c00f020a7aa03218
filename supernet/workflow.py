"""A run: train it (``train_run``), open it (``open_run``), evaluate a few sub-networks.

What a run folder holds, and where, is ``supernet.runfolder.RunFolder``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from supernet.augment import AugmentConfig, augment_with
from supernet.checkpoint import load_model, load_pretrained
from supernet.checks import check_int, check_type
from supernet.cost import subnet_flops, subnet_params
from supernet.data import Encoded, concat, encode, encode_unlabeled, length_stats
from supernet.errors import CheckpointError, ConfigError
from supernet.evaluate import Evaluator, predict, scores
from supernet.io import read_json, write_csv, write_json
from supernet.model import ElasticBert
from supernet.parallel import SINGLE, Ranks
from supernet.runfolder import RunFolder
from supernet.space import SearchSpace, SubnetConfig
from supernet.tasks import TaskData, load_task, require_splits
from supernet.train import TrainConfig, check_shareable, distill_split, read_state, run_training


@dataclass(frozen=True)
class RunSpec:
    """What a run is trained on; stored as run.json so that later stages can rebuild it."""

    task: str = "rt"
    model: str = "minilm"
    seed: int = 0
    max_train: int | None = None
    max_eval: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"] = self.train.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any) -> RunSpec:
        """The settings of a run.json; ConfigError names a missing, unknown or bad field."""
        if not isinstance(d, dict):
            raise ConfigError(f"the run's settings must be a JSON object, got {type(d).__name__}")
        fields = set(cls.__dataclass_fields__)
        missing, extra = {"task", "model", "train"} - set(d), set(d) - fields
        if missing or extra:
            raise ConfigError(f"the run's settings need the fields {sorted(fields)}; missing {sorted(missing)}, "
                              f"unknown {sorted(extra)}")
        for name in ("task", "model"):
            check_type(d[name], name, str, "a string")
        check_int(d.get("seed", 0), "seed", 0)
        for name in ("max_train", "max_eval"):
            if d.get(name) is not None:
                check_int(d[name], name, 1)
        if not isinstance(d["train"], dict):
            raise ConfigError(f"train must be a JSON object of training settings, got {d['train']!r}")
        return cls(**{**d, "train": TrainConfig.from_dict(d["train"])})


def read_spec(run_dir: str | Path) -> RunSpec:
    path = RunFolder(run_dir).spec
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: is {run_dir} a folder written by `hwnas train`?")
    try:
        return RunSpec.from_dict(read_json(path, "the run's settings"))
    except ConfigError as e:
        raise CheckpointError(f"{path} is malformed: {e}") from None


def read_run_record(run_dir: str | Path) -> dict[str, Any]:
    """What a run stored about itself, by file: ``run`` (its settings, run.json), ``state``
    (finished training stages and their wall times) and ``data_summary`` (the task's splits
    and token lengths); a file the run has not written yet is left out."""
    paths = RunFolder(run_dir)
    files = {"run": paths.spec, "state": paths.state, "data_summary": paths.data_summary}
    return {name: read_json(f, name) for name, f in files.items() if f.exists()}


def check_unlabeled(task: TaskData, n: int | None) -> None:
    """ConfigError when ``n`` (> 0) unlabeled texts are asked of a task that has none: they
    would silently add nothing."""
    if n and not task.unlabeled:
        raise ConfigError(f"{n} unlabeled texts asked for, but task {task.name!r} has none (rt has, from its "
                          "plot synopses); ask for 0")


def load_data(spec: RunSpec, tokenizer: Any) -> tuple[TaskData, dict[str, Encoded]]:
    task = load_task(spec.task, seed=spec.seed, max_train=spec.max_train, max_eval=spec.max_eval)
    check_unlabeled(task, spec.train.unlabeled)
    splits = {s: encode(tokenizer, task.split(s), spec.train.max_length) for s in ("train", "dev", "test")}
    n = min(spec.train.unlabeled, len(task.unlabeled))
    if n > 0:  # a seeded subset of the task's unlabeled texts, after the train split
        pick = np.sort(np.random.default_rng([spec.seed, 17]).permutation(len(task.unlabeled))[:n])
        extra = encode_unlabeled(tokenizer, [task.unlabeled[i] for i in pick], spec.train.max_length)
        splits["distill"] = concat(splits["train"], extra)
    return task, splits


def with_unlabeled(run: LoadedRun, n: int | None) -> LoadedRun:
    """``run`` with its distillation texts set to the train split plus ``n`` of the task's
    unlabeled texts (the seeded subset ``load_data`` picks), for a fine-tuning that distils on
    more text than the supernet did; ``run`` itself when ``n`` is None or what it already has."""
    if n is None or n == run.spec.train.unlabeled:
        return run
    check_int(n, "unlabeled texts", 0)
    spec = replace(run.spec, train=replace(run.spec.train, unlabeled=n))
    return replace(run, spec=spec, splits=load_data(spec, run.tokenizer)[1])


def _with_copies(splits: dict[str, Encoded], model: ElasticBert, tokenizer: Any, copies: int,
                 seed: int) -> dict[str, Encoded]:
    """``splits`` with ``copies`` word-replaced copies of each train example (``supernet.augment``,
    neighbours from ``model``'s word embeddings) after its distillation texts; itself for 0."""
    if copies == 0:
        return splits
    extra = augment_with(splits["train"], model.embeddings.word_embeddings.weight, tokenizer,
                         AugmentConfig(copies=copies, seed=seed))
    return {**splits, "distill": concat(distill_split(splits), extra)}


def with_supernet_augment(spec: RunSpec, splits: dict[str, Encoded], pretrained: ElasticBert,
                          tokenizer: Any) -> dict[str, Encoded]:
    """``splits`` with the supernet stage's augmented copies (``TrainConfig.augment`` of each
    train example, neighbours from the ``pretrained`` model's word embeddings) added to its
    distillation texts; ``splits`` itself when there are none."""
    return _with_copies(splits, pretrained, tokenizer, spec.train.augment, spec.seed)


def distill_teacher(run: LoadedRun, attention: float = 0.0) -> ElasticBert:
    """The teacher a fine-tuning distils from: the run's teacher, or with an attention loss
    (``attention`` > 0) its rewired copy, the same function with its heads in the order the
    supernet keeps them, so that a sub-network's head j learns the teacher's head j."""
    return load_model(teacher_path(run, attention))


def teacher_path(run: LoadedRun, attention: float = 0.0) -> Path:
    """The folder ``distill_teacher`` loads; ``ConfigError`` when the run lacks it."""
    path = run.paths.rewired if attention > 0 else run.paths.teacher
    if not path.exists():
        raise ConfigError(f"{run.folder} has no {path.name}/ (written by `hwnas train`); attention distillation "
                          "needs the rewired teacher" if attention > 0 else f"{run.folder} has no teacher/")
    return path


def with_augmented(run: LoadedRun, copies: int) -> LoadedRun:
    """``run`` with ``copies`` word-replaced copies of each train example (``supernet.augment``,
    seeded by the run's seed, neighbours from the supernet's word embeddings) added to its
    distillation texts, after what it already distils on; ``run`` itself when ``copies`` is 0."""
    if copies == 0:
        return run
    return replace(run, splits=_with_copies(run.splits, run.supernet, run.tokenizer, copies, run.spec.seed))


def train_run(run_dir: str | Path, spec: RunSpec, *, resume: bool = False, progress: bool = True,
              stop_after: tuple[str, int] | None = None, ranks: Ranks = SINGLE) -> dict[str, Any]:
    """Train (or resume) a run; return the stage wall times. With ``ranks`` of several
    processes, every rank calls this alike and rank 0 writes the run (``supernet.parallel``)."""
    run = Path(run_dir)
    paths = RunFolder(run)
    if paths.spec.exists():
        if not resume:
            raise ConfigError(f"{run} already holds a run: pass --resume to continue it, or choose another --out")
        old = read_spec(run)
        if old != spec:
            raise ConfigError(
                f"{run} was started with different settings ({_diff(old, spec)}); resume it with the "
                "same settings (just --out and --resume) or choose another --out"
            )
    elif resume and run.exists() and any(p != paths.lock_file for p in run.iterdir()):
        raise CheckpointError(f"{run} has no run.json: nothing to resume there")
    elif run.exists() and any(p != paths.lock_file for p in run.iterdir()):  # the lock is this command's
        raise ConfigError(f"{run} is a folder with files but no run: choose a new or empty folder for --out")
    t0 = time.time()
    # Check the settings, the task, the model and the data before anything is written: a typo
    # or a data set too small leaves no half-made run.
    spec.train.validate()
    num_labels = require_splits(load_task(spec.task, seed=spec.seed, max_train=spec.max_train,
                                          max_eval=spec.max_eval)).num_labels
    model, tok = load_pretrained(spec.model, num_labels, seed=spec.seed)
    positions = model.shape.max_length  # RoBERTa's first pad + 1 position rows are not for tokens
    if spec.train.max_length > positions:
        raise ConfigError(f"max_length {spec.train.max_length} is more than the model's {positions} positions: "
                          f"give --max-length {positions} or less")
    task, splits = load_data(spec, tok)
    splits = with_supernet_augment(spec, splits, model, tok)
    for name in ("train", "distill"):  # the teacher trains on the first, the supernet on the second
        if name in splits:
            check_shareable(len(splits[name]), spec.train.batch_size, ranks.world)
    lengths = {s: length_stats(e) for s, e in splits.items()}
    ranks.barrier()  # every rank has checked the folder before rank 0 writes to it
    if ranks.main:
        run.mkdir(parents=True, exist_ok=True)
        write_json(paths.spec, spec.to_dict())
        tok.save_pretrained(str(paths.tokenizer))
        write_json(paths.data_summary, {**task.summary(), "lengths": lengths})
    ranks.barrier()
    times = {"load": round(time.time() - t0, 1)}
    times.update(run_training(run, model, splits, spec.train, progress=progress, stop_after=stop_after,
                              ranks=ranks))
    return times


def _diff(a: RunSpec, b: RunSpec) -> str:
    da, db = a.to_dict(), b.to_dict()
    return ", ".join(f"{k}: {da[k]!r} vs {db[k]!r}" for k in da if da[k] != db[k])


@dataclass
class LoadedRun:
    """A trained run, ready to evaluate, measure or search."""

    folder: Path
    spec: RunSpec
    task: TaskData
    tokenizer: Any
    supernet: ElasticBert
    space: SearchSpace
    splits: dict[str, Encoded]
    evaluator: Evaluator

    @property
    def paths(self) -> RunFolder:
        """Where each of the run's files lives."""
        return RunFolder(self.folder)

    @property
    def typical_length(self) -> int:
        """Median token length of the dev split (FLOPs are quoted at this length)."""
        return int(round(length_stats(self.splits["dev"])["p50"]))


def open_run(run_dir: str | Path, *, device: str = "cpu") -> LoadedRun:
    """A trained run, its supernet on ``device`` (where its evaluator scores sub-networks)."""
    from transformers import AutoTokenizer

    run = Path(run_dir)
    paths = RunFolder(run)
    spec = read_spec(run)
    if "supernet" not in read_state(paths.state)["done"]:
        raise CheckpointError(f"{run} has no trained supernet yet: finish it with `hwnas train --out {run} --resume`")
    if not (paths.tokenizer / "tokenizer_config.json").is_file():
        raise CheckpointError(f"{paths.tokenizer} is missing or incomplete: copy it from the model the run was "
                              f"trained from ({spec.model})")
    try:
        tok = AutoTokenizer.from_pretrained(str(paths.tokenizer))
    except Exception as e:  # transformers and tokenizers raise many types for a damaged folder
        raise CheckpointError(f"{paths.tokenizer} is not a readable tokenizer ({type(e).__name__}): copy it "
                              f"again from the model the run was trained from ({spec.model})") from None
    supernet = load_model(paths.supernet).to(device)
    if spec.train.max_length > supernet.shape.max_length:
        raise CheckpointError(f"{paths.spec}: max_length {spec.train.max_length} is more than the supernet's "
                              f"{supernet.shape.max_length} positions: restore the run's settings")
    try:
        space = SearchSpace.from_dict(read_json(paths.search_space, "the search space"))
    except (ConfigError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{paths.search_space} is malformed ({e}): delete it and run "
                              f"`hwnas train --out {run} --resume` to write it again") from None
    if space.num_layers != supernet.shape.num_layers:
        raise CheckpointError(f"{paths.search_space} has {space.num_layers} layers but the supernet "
                              f"{supernet.shape.num_layers}: delete it and run `hwnas train --out {run} --resume`")
    task, splits = load_data(spec, tok)
    check_same_data(paths.data_summary, task)
    ev = Evaluator(supernet, {"dev": splits["dev"], "test": splits["test"]}, metric=task.metric)
    return LoadedRun(run, spec, task, tok, supernet, space, splits, ev)


def check_same_data(summary_path: Path, task: TaskData) -> None:
    """CheckpointError when the task loaded now is not the one the run was trained and split on
    (``data_summary.json``'s fingerprint; runs written before it have none and are not checked):
    a data file changed since would put trained-on examples into dev or test."""
    if not summary_path.is_file():
        return
    summary = read_json(summary_path, "the run's data summary")
    stored = summary.get("fingerprint") if isinstance(summary, dict) else None
    if stored is not None and stored != task.fingerprint():
        raise CheckpointError(
            f"the data of task {task.name!r} are not those the run was trained on ({summary_path} has fingerprint "
            f"{stored}, they now give {task.fingerprint()}): restore the data file (or the package) the run was "
            "trained with, or train a new run on the new data")


def tokenizer_as_trained(run: LoadedRun) -> Any:
    """A copy of the run's tokenizer that cuts where the run did: its ``model_max_length`` is
    the run's ``max_length`` (the lengths trained, scored and timed on), so that an exported
    tokenizer with ``truncation=True`` does not let 512 tokens through."""
    import copy

    tokenizer = copy.deepcopy(run.tokenizer)
    tokenizer.model_max_length = run.spec.train.max_length
    return tokenizer


def named_subnets(space: SearchSpace) -> dict[str, SubnetConfig]:
    """The sub-networks of the evaluation table: largest, three middle ones, smallest."""
    return {
        "largest": space.largest(),
        "w0.75-d1.0-r0.8": space.uniform(width=0.75, depth=1.0, retention=0.8),
        "w0.5-d1.0-r1.0": space.uniform(width=0.5, depth=1.0, retention=1.0),
        "w0.75-d0.5-r0.6": space.uniform(width=0.75, depth=0.5, retention=0.6),
        "smallest": space.smallest(),
    }


def evaluation_table(run: LoadedRun, subnets: dict[str, SubnetConfig] | None = None) -> pd.DataFrame:
    """Teacher and sub-network scores on dev and test, with FLOPs at the typical length."""
    subnets = subnets or named_subnets(run.space)
    length = run.typical_length
    rows = []
    teacher = load_model(run.paths.teacher).to(next(run.supernet.parameters()).device)  # where the run scores
    full = run.space.largest()
    t_scores = {s: scores(predict(teacher, run.splits[s]), run.splits[s].labels) for s in ("dev", "test")}
    rows.append(_row("teacher", full, run, t_scores["dev"], t_scores["test"], length))
    for name, cfg in subnets.items():
        rows.append(_row(name, cfg, run, run.evaluator(cfg, "dev"), run.evaluator(cfg, "test"), length))
    return pd.DataFrame(rows)


def _row(name: str, cfg: SubnetConfig, run: LoadedRun, dev: dict[str, float], test: dict[str, float], length: int) -> dict[str, Any]:
    shape = run.supernet.shape
    flops = subnet_flops(shape, cfg, length)
    return {
        "name": name,
        "arch_key": cfg.key(),
        "arch": cfg.describe(),
        "arch_json": cfg.to_json(),
        "length": length,
        "flops": flops,
        "flops_ratio": flops / subnet_flops(shape, run.space.largest(), length),
        "params": subnet_params(shape, cfg),
        "acc_dev": dev["accuracy"],
        "f1_dev": dev["macro_f1"],
        "acc_test": test["accuracy"],
        "f1_test": test["macro_f1"],
    }


def write_evaluation(run: LoadedRun, table: pd.DataFrame) -> Path:
    return write_csv(run.paths.evaluation, table)
