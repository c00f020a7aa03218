"""Training: fine-tune the teacher, rewire, then train the weight-shared supernet.

Stages of one run folder (each resumable; a finished stage is skipped on ``resume``):

1. ``teacher``  fine-tune the full pretrained model on the task (cross-entropy).
2. ``rewire``   importance of heads and FFN neurons on the **train** split; reorder weights.
3. ``supernet`` sandwich rule: each step trains the largest, the smallest and
   ``n_random`` random sub-networks. Every sub-network is distilled from the teacher
   (soft logits at ``temperature``; optionally the final [CLS] hidden state, and with
   ``layer_weight`` every kept layer's output, DynaBERT style); the largest also sees the
   labels. With ``distill_from="largest"`` the other sub-networks distil from the largest
   sub-network's logits of the same step instead (in-place distillation, as in Once-for-All
   and the Length-Adaptive Transformer). Random sub-networks draw a random token retention
   (LengthDrop).

Determinism: the batch order of epoch e is a permutation seeded by (seed, e), the
sub-networks of step s are drawn from a generator seeded by (seed, s), and dropout is
re-seeded every step, so a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from supernet import faults
from supernet.checkpoint import load_model, save_model
from supernet.checks import check_int, check_number, check_type
from supernet.data import UNLABELED, Encoded, iterate_batches, num_batches, to_device
from supernet.errors import CheckpointError, ConfigError, TrainingDiverged
from supernet.io import atomic_write, fsync_path, read_json, write_json
from supernet.model import ElasticBert, EncoderOutput
from supernet.parallel import SINGLE, Ranks
from supernet.rewire import importance_scores, rewire
from supernet.runfolder import RunFolder
from supernet.space import SearchSpace, SubnetConfig

DISTILL_SOURCES = ("teacher", "largest")
SCHEDULES = ("sandwich", "progressive")


@dataclass(frozen=True)
class StageConfig:
    epochs: float = 1.0
    lr: float = 1e-4
    warmup: float = 0.06  # share of the steps with a linear warm-up
    weight_decay: float = 0.01


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a training run (stored in the run folder as train_config.json)."""

    seed: int = 0
    batch_size: int = 32
    max_length: int = 64
    teacher: StageConfig = field(default_factory=lambda: StageConfig(epochs=2.0, lr=1e-4))
    supernet: StageConfig = field(default_factory=lambda: StageConfig(epochs=2.0, lr=5e-5))
    n_random: int = 2  # random sub-networks per step besides the largest and the smallest
    temperature: float = 1.0
    hidden_weight: float = 0.0  # weight of the final-[CLS]-hidden distillation loss
    layer_weight: float = 0.0  # weight of the layer-wise hidden-state distillation (layer_loss)
    distill_from: str = "teacher"  # or "largest": in-place distillation (see the module doc)
    # In-domain texts without labels (TaskData.unlabeled, seeded subset of at most this many)
    # added to the supernet stage's and the fine-tunings' data: they learn the teacher's
    # logits only. 0: none.
    unlabeled: int = 0
    # Word-replaced copies of each train example (``supernet.augment``: TinyBERT / DynaBERT
    # augmentation, neighbours from the pretrained model's word embeddings) added to the
    # supernet stage's data, unlabeled. 0: none. Fine-tunings take their own (--finetune-augment).
    augment: int = 0
    # "progressive": Once-for-All's progressive shrinking: the first third of the supernet
    # stage samples only depth, the second depth and width, the last third the whole space
    # (token retention too). "sandwich": the whole space from the first step.
    schedule: str = "sandwich"
    length_drop: bool = True  # random token retention for the sampled sub-networks
    bucket_by_length: bool = True  # shuffled batches of similar lengths: less padding, faster steps
    importance_batches: int = 32
    checkpoint_every: int = 100  # steps
    log_every: int = 10

    def validate(self) -> TrainConfig:
        """Check every field's type and range (NaN and infinities included); returns self."""
        check_int(self.seed, "seed", 0)
        for name in ("batch_size", "checkpoint_every", "log_every", "importance_batches"):
            check_int(getattr(self, name), name, 1)
        check_int(self.max_length, "max_length", 2)  # room for [CLS] and [SEP]
        check_int(self.n_random, "n_random", 0)
        check_int(self.unlabeled, "unlabeled", 0)
        check_int(self.augment, "augment", 0)
        for stage in ("teacher", "supernet"):
            s = getattr(self, stage)
            if not isinstance(s, StageConfig):
                raise ConfigError(f"{stage} must be a table of epochs, lr, warmup and weight_decay, got {s!r}")
            # Above 0: a stage of 0 epochs would still take one step (at the full learning rate).
            check_number(s.epochs, f"{stage} epochs", 0.0, above=True)
            check_number(s.lr, f"{stage} lr", 0.0, above=True)
            check_number(s.warmup, f"{stage} warmup", 0.0)
            if s.warmup > 1:
                raise ConfigError(f"{stage} warmup is a share of the steps in [0, 1], got {s.warmup!r}")
            check_number(s.weight_decay, f"{stage} weight_decay", 0.0)
        check_number(self.temperature, "temperature", 0.0, above=True)
        check_number(self.hidden_weight, "hidden_weight", 0.0)
        check_number(self.layer_weight, "layer_weight", 0.0)
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.distill_from not in DISTILL_SOURCES:
            raise ConfigError(f"distill_from must be one of {list(DISTILL_SOURCES)}, got {self.distill_from!r}")
        for name in ("length_drop", "bucket_by_length"):
            check_type(getattr(self, name), name, bool, "true or false")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        extra = set(d) - known
        if extra:
            raise ConfigError(f"unknown training fields {sorted(extra)}; known: {sorted(known)}")
        d = dict(d)
        d.setdefault("bucket_by_length", False)  # runs written before bucketing resume as they began
        for stage in ("teacher", "supernet"):
            if isinstance(d.get(stage), dict):
                unknown = set(d[stage]) - set(StageConfig.__dataclass_fields__)
                if unknown:
                    raise ConfigError(f"unknown {stage} fields {sorted(unknown)}; known: "
                                      f"{sorted(StageConfig.__dataclass_fields__)}")
                d[stage] = StageConfig(**d[stage])
        return cls(**d).validate()


def read_state(path: Path) -> dict[str, Any]:
    """A run's state.json: the finished training stages (none when it is not there yet)."""
    if not path.exists():
        return {"done": {}}
    state = read_json(path, "the finished training stages")
    if not isinstance(state, dict) or not isinstance(state.get("done"), dict):
        raise CheckpointError(f'{path} is malformed: expected {{"done": {{STAGE: {{...}}}}}}; delete it to train '
                              "every stage again")
    return state


class Interrupted(Exception):
    """Raised by ``stop_after`` in tests to simulate a crash mid-stage."""


class MetricsLog:
    """Appends rows to ``metrics.csv`` (rewritten atomically, so it is never half-written)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = pd.read_csv(path).to_dict("records") if path.exists() else []

    def add(self, **row: Any) -> None:
        self.rows.append(row)

    def trim(self, stage: str, after_step: int) -> None:
        """Forget rows of ``stage`` past ``after_step`` (written after the last checkpoint)."""
        self.rows = [r for r in self.rows if not (r.get("stage") == stage and r.get("step", 0) > after_step)]

    def flush(self) -> None:
        if self.rows:
            frame = pd.DataFrame(self.rows)
            atomic_write(self.path, lambda p: frame.to_csv(p, index=False))


def _lr_lambda(total: int, warmup: float) -> Callable[[int], float]:
    w = max(1, int(total * warmup))

    def f(step: int) -> float:
        if step < w:
            return (step + 1) / w
        return max(0.0, (total - step) / max(1, total - w))

    return f


def _optimizer(model: torch.nn.Module, stage: StageConfig, total: int) -> tuple[Any, Any]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": stage.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=stage.lr,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, stage.warmup))
    return opt, sched


def _on_cpu(state: Any) -> Any:
    """``state`` (tensors in nested dicts, lists and tuples) with every tensor on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _on_cpu(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_on_cpu(v) for v in state)
    return state


def labeled_ce(logits: torch.Tensor, labels: torch.Tensor, labeled_share: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over the labeled examples of a batch (``UNLABELED`` rows learn only by
    distillation); 0 for a batch without labels.

    ``labeled_share`` (a data-parallel rank's shard, ``StageRunner``): each row holds the share
    of labeled rows in the whole batch. The shard's summed loss is then divided by that share
    times the shard's rows, so that the ranks' losses, weighted by their shares of the batch,
    add up to the whole batch's mean over its labeled rows (a shard's own mean would weigh a
    shard with few labeled rows as much as one full of them)."""
    labeled = labels != UNLABELED
    if not bool(labeled.any()):
        return logits.sum() * 0.0  # keeps the graph (and the dtype) without a NaN mean
    if labeled_share is None:
        return F.cross_entropy(logits[labeled], labels[labeled])
    # A shard with a labeled row is part of a batch whose labeled share is above 0.
    return F.cross_entropy(logits[labeled], labels[labeled], reduction="sum") / (float(labeled_share[0]) * len(labels))


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    t = temperature
    return F.kl_div(
        (student / t).log_softmax(-1), (teacher / t).softmax(-1), reduction="batchmean"
    ) * (t * t)


def finetune_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """A fine-tuning's loss on some examples: distillation from the teacher's logits plus
    cross-entropy on the labeled ones (``finetune_subnet`` trains on it, ``BestEpoch`` scores
    dev with it)."""
    return kd_loss(student, teacher, temperature) + labeled_ce(student, labels)


def held_out_loss(logits: np.ndarray, teacher: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """``finetune_loss`` over a whole split from its logits: how a fine-tuning scores dev
    (``BestEpoch``) and how ``--finetune-choose dev-loss`` ranks fine-tuned candidates."""
    return float(finetune_loss(torch.tensor(np.asarray(logits)), torch.tensor(np.asarray(teacher)),
                               torch.tensor(np.asarray(labels), dtype=torch.long), temperature))


def layer_loss(student: EncoderOutput, teacher: EncoderOutput) -> torch.Tensor:
    """Layer-wise hidden-state distillation (TinyBERT / DynaBERT): the mean, over the
    student's layer states (its embeddings and every layer it runs), of the mean squared error
    to the teacher's output of the same source layer, on the tokens the student still has.

    Kept layers map to the teacher layer they came from (``LayerState.layer``): a student that
    skips layers 1 and 3 learns layers 0, 2, 4, 5 from the teacher's 0, 2, 4, 5 (DynaBERT's
    depth mapping). After token dropping the student's slots are gathered from the teacher's
    states by their input position. Both come from ``forward(..., states=True)``; the teacher
    must keep every token and layer the student has."""
    by_layer = {s.layer: s for s in teacher.states}
    losses = []
    for s in student.states:
        t = by_layer.get(s.layer)
        if s.positions is None:
            raise ConfigError("layer_loss: the student's states carry no positions (forward(..., states=True))")
        if t is None:
            raise ConfigError(f"layer_loss: the teacher has no state for source layer {s.layer}")
        # The teacher keeps every token, so its slot j is input position j.
        target = t.hidden.gather(1, s.positions[:, :, None].expand(-1, -1, t.hidden.shape[-1]))  # (B, T', H)
        err = (s.hidden - target).pow(2).mean(-1)  # (B, T')
        alive = s.mask.to(err.dtype)
        losses.append((err * alive).sum() / alive.sum().clamp(min=1.0))
    if not losses:
        raise ConfigError("layer_loss: the student returned no layer states (forward(..., states=True))")
    return torch.stack(losses).mean()


def attention_loss(student: EncoderOutput, teacher: EncoderOutput) -> torch.Tensor:
    """Attention distillation (TinyBERT): the mean, over the student's layers, of the mean
    squared error between its attention scores (q.k / sqrt(d), before the softmax) and the
    teacher's in the source layer it came from, over the pairs of tokens both still have.

    Head ``j`` of a narrowed layer learns the teacher's head ``j``: the supernet keeps the
    first heads of the *rewired* teacher (``RunFolder.rewired``, heads ordered by importance,
    the same function as the teacher), so that is the teacher to pass; layers map as in
    ``layer_loss``. A layer's scores cover the tokens it was handed (the previous state's
    slots), gathered from the teacher's by input position on both axes. Both come from
    ``forward(..., attention=True)``; the teacher must keep every token and layer the
    student has, and at least as many heads."""
    by_layer = {s.layer: s for s in teacher.states}
    losses = []
    for before, s in itertools.pairwise(student.states):
        t = by_layer.get(s.layer)
        if s.scores is None or before.positions is None or t is None or t.scores is None:
            raise ConfigError(f"attention_loss: no attention scores for source layer {s.layer} "
                              "(forward(..., attention=True) on both models, the teacher keeping every layer)")
        heads, pos = s.scores.shape[1], before.positions  # (B, T) the slots the layer attended over
        if t.scores.shape[1] < heads:
            raise ConfigError(f"attention_loss: layer {s.layer} of the student has {heads} heads, "
                              f"the teacher's {t.scores.shape[1]}")
        B, T = pos.shape
        rows = t.scores[:, :heads].gather(2, pos[:, None, :, None].expand(B, heads, T, t.scores.shape[-1]))
        target = rows.gather(3, pos[:, None, None, :].expand(B, heads, T, T))  # (B, h, T, T)
        alive = (before.mask[:, None, :, None] & before.mask[:, None, None, :]).to(s.scores.dtype)  # (B, 1, T, T)
        err = (s.scores - target).pow(2) * alive
        losses.append(err.sum() / (alive.sum() * heads).clamp(min=1.0))
    if not losses:
        raise ConfigError("attention_loss: the student returned no layer states (forward(..., attention=True))")
    return torch.stack(losses).mean()


def check_shareable(n_examples: int, batch_size: int, world: int) -> None:
    """ConfigError unless every batch of an epoch gives each of ``world`` processes an example."""
    smallest = n_examples % batch_size or min(batch_size, n_examples)
    if smallest < world:
        raise ConfigError(f"{world} processes cannot share the last batch of an epoch: it holds {smallest} "
                          f"example(s) ({n_examples} examples, batch size {batch_size}); use fewer processes, "
                          "or a --batch-size / --max-train that leaves at least one example each")


class StageRunner:
    """Runs one training stage with checkpoints under ``folder`` and resume support.

    The batches go to the device of ``model``'s parameters (the caller places the model).
    With ``ranks`` of several processes (``supernet.parallel``), each step's batch is split
    among them and their gradients summed; only rank 0 writes checkpoints and metrics."""

    def __init__(
        self,
        name: str,
        folder: Path,
        model: torch.nn.Module,
        train: Encoded,
        stage: StageConfig,
        cfg: TrainConfig,
        log: MetricsLog,
        *,
        progress: bool = True,
        stop_after: int | None = None,
        ranks: Ranks = SINGLE,
    ) -> None:
        self.name, self.folder, self.model, self.train_enc = name, folder, model, train
        self.stage, self.cfg, self.log, self.progress, self.stop_after = stage, cfg, log, progress, stop_after
        self.ranks = ranks
        self.steps_per_epoch = num_batches(train, cfg.batch_size)
        self.total = max(1, math.ceil(stage.epochs * self.steps_per_epoch))
        check_shareable(len(train), cfg.batch_size, ranks.world)

    def run(self, step_fn: Callable[[dict[str, torch.Tensor], int], dict[str, float]],
            on_epoch: Callable[[int], None] | None = None) -> None:
        """Train to the stage's last step. ``on_epoch(k)`` runs after each whole epoch ``k``
        (1, 2, ...) and after the last step (a last partial epoch, say 2.5 epochs' third, is
        epoch 3), before that step's checkpoint: whatever it writes is on disk before the
        checkpoint that would skip it on a resume."""
        opt, sched = _optimizer(self.model, self.stage, self.total)
        step = self._restore(opt, sched)
        self.model.train()
        t0 = time.time()
        ranks = self.ranks
        device = next(self.model.parameters()).device
        bar = tqdm(total=self.total, initial=step, desc=self.name, disable=not (self.progress and ranks.main),
                   dynamic_ncols=True)
        while step < self.total:
            epoch, skip = divmod(step, self.steps_per_epoch)
            batches = iterate_batches(
                self.train_enc, self.cfg.batch_size, shuffle=True, seed=self.cfg.seed * 1000 + epoch,
                sort_by_length=self.cfg.bucket_by_length,
            )
            for i, batch in enumerate(batches):
                if i < skip:
                    continue
                if step >= self.total:
                    break
                # Dropout, reproducible (and different on each rank, which sees other examples).
                torch.manual_seed(self.cfg.seed * 1_000_003 + step + ranks.rank * 1_000_000_007)
                if ranks.world > 1:  # a shard's cross-entropy needs the whole batch's labeled share (labeled_ce)
                    n = len(batch["labels"])
                    batch = {**batch, "labeled_share": torch.full((n,), float((batch["labels"] != UNLABELED).sum()) / n)}
                shard = to_device(ranks.shard(batch), device)
                weight = len(shard["labels"]) / len(batch["labels"])  # this rank's share of the batch
                losses = step_fn(shard, step)
                ranks.reduce_gradients(self.model, weight)
                losses = ranks.mean(losses, weight)
                norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0))
                if not (math.isfinite(losses["loss"]) and math.isfinite(norm)):
                    bar.close()
                    raise self._diverged(step, losses["loss"], norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                if step % self.cfg.log_every == 0 or step == self.total:
                    bar.set_postfix(loss=f"{losses['loss']:.4f}")
                    self.log.add(stage=self.name, step=step, epoch=step / self.steps_per_epoch,
                                 lr=sched.get_last_lr()[0], elapsed_s=time.time() - t0, **losses)
                if on_epoch is not None and (step % self.steps_per_epoch == 0 or step == self.total):
                    on_epoch(math.ceil(step / self.steps_per_epoch))
                    self.model.train()
                if step % self.cfg.checkpoint_every == 0 or step == self.total:
                    self._save(opt, sched, step)
                if self.stop_after is not None and step >= self.stop_after:
                    bar.close()
                    raise Interrupted(f"{self.name} stopped after step {step}")
        bar.close()

    def _diverged(self, step: int, loss: float, norm: float) -> TrainingDiverged:
        """The error for a step whose loss or gradient norm is not finite. The step is not
        applied: neither the weights in memory nor any checkpoint hold a NaN, and a resume
        restarts from the last checkpoint (with the same settings it would diverge again)."""
        saved = (step // self.cfg.checkpoint_every) * self.cfg.checkpoint_every
        kept = f"its last checkpoint (step {saved}) is kept" if saved else "no checkpoint was written"
        return TrainingDiverged(
            f"the {self.name} stage diverged at step {step + 1} of {self.total}: its loss is {loss:g} and its "
            f"gradient norm {norm:g} (learning rate {self.stage.lr:g}); that step was not applied and {kept}. "
            f"Train it again with a lower learning rate (or check the starting weights for NaN)"
        )

    # ---- checkpoints ---------------------------------------------------------------------
    def _save(self, opt: Any, sched: Any, step: int) -> None:
        """Weights and trainer state land together: written to ``checkpoint.tmp`` and swapped
        in with renames, so a crash leaves either the old or the new checkpoint whole.

        The losses logged so far are flushed first: a crash after the flush but before the swap
        leaves rows past the old checkpoint, which ``_restore`` trims; flushed after the swap,
        the rows since the previous checkpoint would be lost by a crash in between."""
        if not self.ranks.main:
            self.ranks.barrier()  # the others go on once rank 0 has written it
            return
        ckpt, tmp, old = (self.folder / n for n in ("checkpoint", "checkpoint.tmp", "checkpoint.old"))
        shutil.rmtree(tmp, ignore_errors=True)
        self.write_weights(tmp, step)
        # On the CPU, so that a run trained on a GPU resumes anywhere (``_restore``).
        state = {"step": step, "optimizer": _on_cpu(opt.state_dict()), "scheduler": sched.state_dict()}
        atomic_write(tmp / "trainer_state.pt", lambda p: torch.save(state, p))
        self.log.flush()
        shutil.rmtree(old, ignore_errors=True)
        if ckpt.exists():
            os.replace(ckpt, old)
        faults.hit("train.checkpoint")
        os.replace(tmp, ckpt)
        fsync_path(self.folder)  # the swap's renames
        shutil.rmtree(old, ignore_errors=True)
        self.ranks.barrier()

    def write_weights(self, folder: Path, step: int) -> None:
        """The trained module's weights into a checkpoint folder (overridden by stages that
        train something other than an ``ElasticBert``: the early exits)."""
        assert isinstance(self.model, ElasticBert)
        save_model(self.model, folder, {"step": step})

    def read_weights(self, folder: Path) -> None:
        """Load what ``write_weights`` wrote into the trained module."""
        self.model.load_state_dict(load_model(folder).state_dict())

    def _restore(self, opt: Any, sched: Any) -> int:
        ckpt = self.folder / "checkpoint"
        if not ckpt.exists() and (self.folder / "checkpoint.old").exists():  # crashed mid-swap
            ckpt = self.folder / "checkpoint.old"
        if not (ckpt / "trainer_state.pt").exists():
            return 0
        try:
            state = torch.load(ckpt / "trainer_state.pt", weights_only=True, map_location="cpu")  # no pickled code
        except Exception as e:  # a torn or foreign file; torch's own advice (weights_only=False) would run its code
            raise CheckpointError(
                f"cannot resume from {ckpt}: trainer_state.pt is not a trainer state written by hwnas "
                f"({type(e).__name__}). Delete that folder to restart the {self.name} stage"
            ) from None
        try:
            step = check_int(state["step"], "step", 0)
            self.read_weights(ckpt)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        except (CheckpointError, ConfigError, RuntimeError, KeyError, OSError, TypeError, ValueError,
                IndexError) as e:
            raise CheckpointError(
                f"cannot resume from {ckpt}: {str(e)[:200]}. Delete that folder to restart the {self.name} stage"
            ) from e
        self.log.trim(self.name, step)
        return step


def phase_space(space: SearchSpace, progress: float) -> SearchSpace:
    """The part of ``space`` that progressive shrinking samples at ``progress`` (the share of
    the stage's steps done, in [0, 1]): depth only, then depth and width, then everything."""
    if progress >= 2 / 3:
        return space
    narrow = dataclasses.replace(space, retention_choices=(1.0,))
    if progress >= 1 / 3:
        return narrow
    return dataclasses.replace(narrow, head_choices=(space.max_heads,), ffn_choices=(space.max_ffn,))


def sandwich(space: SearchSpace, step: int, cfg: TrainConfig, total: int | None = None) -> list[SubnetConfig]:
    """Sub-networks trained at ``step`` (of ``total``): largest, smallest and ``n_random``
    random ones, from the whole space, or from the phase's part of it with
    ``schedule="progressive"`` (``phase_space``)."""
    if cfg.schedule == "progressive":
        if total is None:
            raise ConfigError("the progressive schedule needs the stage's total number of steps")
        space = phase_space(space, step / max(1, total))
    rng = np.random.default_rng([cfg.seed, step])
    configs = [space.largest(), space.smallest()]
    configs += [space.sample(rng, retention=cfg.length_drop) for _ in range(cfg.n_random)]
    return configs


def train_teacher(model: ElasticBert, runner: StageRunner) -> None:
    def step_fn(batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        loss = F.cross_entropy(out.logits, batch["labels"])
        loss.backward()
        return {"loss": loss.item()}

    runner.run(step_fn)


def train_supernet(model: ElasticBert, teacher: ElasticBert, space: SearchSpace, runner: StageRunner) -> None:
    cfg = runner.cfg
    teacher.eval()

    layers = cfg.layer_weight > 0

    def step_fn(batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        with torch.no_grad():
            t_out = teacher(*args, states=layers)
        configs = sandwich(space, step, cfg, runner.total)
        parts: dict[str, float] = {}
        total = 0.0
        soft = t_out.logits  # what the sub-networks after the largest distil from
        for j, sub in enumerate(configs):
            out = model(*args, subnet=sub, states=layers)
            loss = kd_loss(out.logits, t_out.logits if j == 0 else soft, cfg.temperature)
            if j == 0:  # the largest also learns from the labels
                loss = loss + labeled_ce(out.logits, batch["labels"], batch.get("labeled_share"))
                if cfg.distill_from == "largest":
                    soft = out.logits.detach()
            if cfg.hidden_weight > 0:
                loss = loss + cfg.hidden_weight * F.mse_loss(out.hidden[:, 0], t_out.hidden[:, 0])
            if layers:
                loss = loss + cfg.layer_weight * layer_loss(out, t_out)
            (loss / len(configs)).backward()
            total += loss.item() / len(configs)
            parts[["loss_largest", "loss_smallest"][j] if j < 2 else f"loss_random{j - 1}"] = loss.item()
        return {"loss": total, **parts}

    runner.run(step_fn)


def run_training(
    run_dir: str | Path,
    model: ElasticBert,
    splits: dict[str, Encoded],
    cfg: TrainConfig,
    *,
    space: SearchSpace | None = None,
    progress: bool = True,
    stop_after: tuple[str, int] | None = None,
    ranks: Ranks = SINGLE,
) -> dict[str, Any]:
    """Run (or resume) all stages in ``run_dir``; return the stage wall times.

    ``model`` is the pretrained starting point; the trained teacher lands in
    ``run_dir/teacher`` and the supernet in ``run_dir/supernet``. ``stop_after=(stage, step)``
    interrupts that stage after ``step`` steps (used by tests to simulate a crash). ``ranks``:
    this process's place in a data-parallel run (``supernet.parallel``) and the device it
    trains on (``Ranks.device``: the models and batches go there, the checkpoints are written
    from the CPU); every rank calls this with the same arguments, rank 0 writes the files and
    the others wait for them.
    """
    cfg.validate()
    run = Path(run_dir)
    paths = RunFolder(run)
    run.mkdir(parents=True, exist_ok=True)
    state_path = paths.state
    state = read_state(state_path)
    log = MetricsLog(paths.metrics)
    space = space or model.shape.search_space()
    main = ranks.main
    device = torch.device(ranks.device)
    if main:
        write_json(paths.search_space, space.to_dict())

    def finish(stage: str, seconds: float, **extra: Any) -> None:
        state["done"][stage] = {"wall_s": round(seconds, 1), **extra}
        if main:
            log.flush()
            write_json(state_path, state)
        ranks.barrier()  # the others read what rank 0 has just written

    def interrupt(stage: str) -> int | None:
        return stop_after[1] if stop_after and stop_after[0] == stage else None

    # 1. teacher
    if "teacher" not in state["done"]:
        t0 = time.time()
        runner = StageRunner("teacher", paths.teacher, model.to(device), splits["train"], cfg.teacher, cfg, log,
                             progress=progress, stop_after=interrupt("teacher"), ranks=ranks)
        train_teacher(model, runner)
        if main:
            save_model(model.eval(), paths.teacher, {"stage": "teacher"})
        finish("teacher", time.time() - t0)  # first: a crash now must not retrain the stage
        if main:
            shutil.rmtree(paths.teacher / "checkpoint", ignore_errors=True)
    teacher = load_model(paths.teacher).to(device)

    # 2. rewire (on train only)
    if "rewire" not in state["done"] and main:
        t0 = time.time()
        student = load_model(paths.teacher)
        batches = list(iterate_batches(splits["train"], cfg.batch_size, shuffle=True, seed=cfg.seed))
        heads, ffn = importance_scores(student.to(device), batches[: cfg.importance_batches], progress=progress)
        rewire(student.cpu(), heads, ffn)
        save_model(student, paths.rewired, {"stage": "rewired"})
        write_json(paths.importance, {"heads": [h.tolist() for h in heads], "ffn": [f.tolist() for f in ffn]})
        finish("rewire", time.time() - t0)
    elif "rewire" not in state["done"]:
        finish("rewire", 0.0)  # rank 0 rewires alone; the others wait for its files

    # 3. supernet
    if "supernet" not in state["done"]:
        t0 = time.time()
        student = load_model(paths.rewired).to(device)
        runner = StageRunner("supernet", paths.supernet, student, distill_split(splits), cfg.supernet, cfg, log,
                             progress=progress, stop_after=interrupt("supernet"), ranks=ranks)
        train_supernet(student, teacher, space, runner)
        if main:
            save_model(student.eval(), paths.supernet, {"stage": "supernet", "space": space.to_dict()})
        finish("supernet", time.time() - t0)
        if main:
            shutil.rmtree(paths.supernet / "checkpoint", ignore_errors=True)
    return {k: v["wall_s"] for k, v in state["done"].items()}


def distill_split(splits: dict[str, Encoded]) -> Encoded:
    """What the supernet stage and fine-tunings train on: the train split, plus the
    unlabeled texts when the run has them (``splits["distill"]``, ``TrainConfig.unlabeled``)."""
    return splits.get("distill", splits["train"])


def teacher_logits(teacher: ElasticBert, train: Encoded, batch_size: int = 64) -> torch.Tensor:
    """The teacher's logits for every training example (N, C), in ``train``'s order, on the
    teacher's device.

    The teacher runs in eval mode, so its logits do not change between steps: computing them
    once lets several fine-tunings share them.
    """
    device = next(teacher.parameters()).device
    out = torch.empty(len(train), teacher.shape.num_labels, device=device)
    teacher.eval()
    with torch.no_grad():
        for b in iterate_batches(train, batch_size, shuffle=False, sort_by_length=True):
            b = to_device(b, device)
            out[b["index"]] = teacher(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits
    return out


def finetune_folder(base: str | Path, cfg: SubnetConfig, stage: StageConfig, layer_weight: float = 0.0,
                    unlabeled: int = 0, best_epoch: bool = False, augment: int = 0,
                    attention_weight: float = 0.0) -> Path:
    """Where the fine-tuning of ``cfg`` with ``stage``'s settings (and ``unlabeled`` texts
    besides the train split; ``augment`` word-replaced copies of each train example,
    ``supernet.augment``; ``best_epoch``: the epoch kept on dev, ``BestEpoch``; the weights
    of the layer-wise and attention losses) lives under ``base``."""
    lw = f"_lw{layer_weight:g}" if layer_weight > 0 else ""
    lw += f"_aw{attention_weight:g}" if attention_weight > 0 else ""
    un = f"_u{unlabeled}" if unlabeled > 0 else ""
    aug = f"_a{augment}" if augment > 0 else ""
    best = "_best" if best_epoch else ""
    return Path(base) / f"finetune_{cfg.key()}_e{stage.epochs:g}_lr{stage.lr:g}{lw}{un}{aug}{best}"


def weights_sha1(model: torch.nn.Module) -> str:
    """A short hash of a model's weights (which run a fine-tuning started from)."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def finetune_subnet(
    supernet: ElasticBert,
    teacher: ElasticBert,
    cfg: SubnetConfig,
    train: Encoded,
    folder: str | Path,
    train_cfg: TrainConfig,
    stage: StageConfig,
    *,
    targets: Callable[[], torch.Tensor] | None = None,
    layer_weight: float = 0.0,
    attention_weight: float = 0.0,
    progress: bool = True,
    stop_after: int | None = None,
    device: str | torch.device = "cpu",
    select: Encoded | None = None,
) -> tuple[ElasticBert, bool]:
    """Distil ``teacher`` into the extracted sub-network ``cfg`` (HAT's retraining step).

    Returns the model and whether it was trained now (False: a finished fine-tuning with the
    same settings was loaded). The extracted model keeps ``cfg``'s token retention while it
    learns, so it is trained as it will run. The settings (sub-network, schedule, training
    settings, and hashes of the starting weights and of the teacher) are recorded in
    ``folder/finetune.json``; checkpoints go to ``folder/checkpoint`` and an interrupted run
    resumes; a folder holding other settings is an error. ``targets``: a function giving the
    teacher's logits for ``train`` (``teacher_logits``), so several fine-tunings can share
    them; called only when there is training to do. ``layer_weight`` > 0 adds layer-wise
    hidden-state distillation (``layer_loss``: each kept layer learns the teacher layer it
    came from), at the cost of a teacher forward per step; ``attention_weight`` > 0 adds
    attention distillation (``attention_loss``: pass the *rewired* teacher, whose head j is
    the sub-network's head j; its logits are the teacher's). ``device``: where it trains (the
    sub-network, the batches, the teacher's logits, and for either loss the teacher, moved
    there in place); the model comes back on the CPU, as a finished one is loaded.
    ``select`` (the dev split): after every epoch the same loss is computed on it, and the
    epoch where it is lowest is the model returned (``BestEpoch``: early stopping on held-out
    distillation loss, which varies less than held-out accuracy on a small dev split).
    """
    from supernet.checkpoint import read_meta
    from supernet.extract import extract

    if stage.epochs <= 0 or stage.lr <= 0:
        raise ConfigError(f"fine-tuning needs epochs > 0 and lr > 0, got epochs {stage.epochs:g}, lr {stage.lr:g}")
    out = Path(folder)
    model = extract(supernet, cfg)
    settings = json.loads(json.dumps({
        "stage": "finetune", "subnet": cfg.to_dict(), "epochs": stage.epochs, "lr": stage.lr,
        "train_examples": len(train), "train": train_cfg.to_dict(), "start_weights": weights_sha1(model),
        "teacher": weights_sha1(teacher)}))
    check_number(layer_weight, "layer_weight", 0.0)
    check_number(attention_weight, "attention_weight", 0.0)
    if layer_weight > 0:  # recorded only when used: folders written before it stay valid
        settings["layer_weight"] = layer_weight
    if attention_weight > 0:  # likewise
        settings["attention_weight"] = attention_weight
    if select is not None:  # likewise
        settings["select_epoch_on"] = {"examples": len(select), "loss": "distillation + labels"}
    plan = out / "finetune.json"
    if plan.exists() and json.loads(plan.read_text()) != settings:
        raise CheckpointError(f"{out} holds a fine-tuning with other settings ({plan}); delete it or use another folder")
    # shape.json is written last, with the settings: its presence marks a finished fine-tuning.
    if (out / "shape.json").exists() and read_meta(out) == settings:
        return load_model(out), False
    write_json(plan, settings)
    layers, attention = layer_weight > 0, attention_weight > 0
    if layers or attention:  # a teacher forward every step: the teacher trains beside the model
        teacher.to(device)
    logits = (targets() if targets is not None else teacher_logits(teacher, train)).to(device)
    if logits.shape[0] != len(train):
        raise ConfigError(f"teacher logits cover {logits.shape[0]} examples, the training split has {len(train)}")
    model.to(device).train()
    log = MetricsLog(out / "metrics.csv")
    runner = StageRunner("finetune", out, model, train, stage, train_cfg, log, progress=progress, stop_after=stop_after)

    teacher.eval()

    def step_fn(batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        out = model(*args, states=layers, attention=attention)
        loss = finetune_loss(out.logits, logits[batch["index"]], batch["labels"], train_cfg.temperature)
        parts = {}
        if layers or attention:
            with torch.no_grad():
                t_out = teacher(*args, states=True, attention=attention)
        if layers:
            hidden = layer_loss(out, t_out)
            loss = loss + layer_weight * hidden
            parts["loss_layers"] = hidden.item()
        if attention:
            att = attention_loss(out, t_out)
            loss = loss + attention_weight * att
            parts["loss_attention"] = att.item()
        loss.backward()
        return {"loss": loss.item(), **parts}

    best = BestEpoch(out, model, teacher, select, train_cfg.temperature) if select is not None else None
    runner.run(step_fn, best)
    if best is not None:
        best.restore()
    save_model(model.cpu().eval(), out, settings)
    if best is not None:  # only now: a crash while saving resumes from the kept epoch again
        best.discard()
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return model, True


EPOCHS_FILE = "epochs.json"  # a fine-tuning folder's epoch losses and the epoch kept (``BestEpoch``)


class BestEpoch:
    """Early stopping on a held-out split for a fine-tuning: called after each epoch, it
    scores the model on ``held`` with the training loss (distillation from the teacher's
    logits at ``temperature`` plus cross-entropy on the labels) and keeps the weights of the
    lowest. ``folder/epochs.json`` holds every epoch's loss and the best epoch, written after
    that epoch's weights (``folder/best_epoch_K``), so a crash leaves it naming weights that
    exist; an interrupted fine-tuning resumes with it."""

    def __init__(self, folder: Path, model: ElasticBert, teacher: ElasticBert, held: Encoded,
                 temperature: float) -> None:
        from supernet.evaluate import predict

        self.folder, self.model, self.held, self.temperature = folder, model, held, temperature
        self.teacher = predict(teacher, held)
        self.path = folder / EPOCHS_FILE

    def state(self) -> dict[str, Any]:
        return selected_epoch(self.folder) or {"dev_loss": {}, "best_epoch": None}

    def loss(self) -> float:
        from supernet.evaluate import predict

        return held_out_loss(predict(self.model, self.held), self.teacher, self.held.labels, self.temperature)

    def __call__(self, epoch: int) -> None:
        state, loss = self.state(), self.loss()
        state["dev_loss"][str(epoch)] = loss
        best = state["best_epoch"]
        if best is None or loss < state["dev_loss"][str(best)]:
            save_model(self.model, self.folder / f"best_epoch_{epoch}", {"epoch": epoch, "dev_loss": loss})
            state["best_epoch"] = epoch
        write_json(self.path, state)
        for old in self.folder.glob("best_epoch_*"):
            if old.name != f"best_epoch_{state['best_epoch']}":
                shutil.rmtree(old, ignore_errors=True)

    def restore(self) -> None:
        """Load the best epoch's weights into the model (the copy stays until ``discard``)."""
        best = self.state()["best_epoch"]
        if best is not None:
            self.model.load_state_dict(load_model(self.folder / f"best_epoch_{best}").state_dict())

    def discard(self) -> None:
        """Remove the best epoch's copy, once the fine-tuning's own weights are saved."""
        for folder in self.folder.glob("best_epoch_*"):
            shutil.rmtree(folder, ignore_errors=True)


def selected_epoch(folder: str | Path) -> dict[str, Any] | None:
    """A finished fine-tuning's held-out loss per epoch and the epoch kept (``BestEpoch``);
    None when it was not selected on a held-out split."""
    path = Path(folder) / EPOCHS_FILE
    return dict(read_json(path, "the fine-tuning's epoch losses")) if path.exists() else None
