"""Early exits (FastBERT / PABEE): a small classifier after every layer, and the exit policy.

**Heads.** ``ExitHeads`` holds one ``ExitHead`` per supernet layer. The hidden size is shared
by every sub-network, so one set of heads serves all of them: a sub-network's exit after its
kept layer ``i`` is head ``i`` (an extracted model maps its layers back through
``shape.source_layers``). The exit after the *last* kept layer is the model's own final
classifier, so that a sub-network that never exits early answers exactly as the static one.
Three kinds, to measure which reads early layers best:

- ``mean``: the mean of the alive tokens' hidden states, then a linear layer;
- ``cls``: the [CLS] hidden state, then a linear layer (the issue's first probe);
- ``attn``: FastBERT's small student classifier, reduced to its core: [CLS] attends over
  the alive tokens (one head, width 64), then a 64-wide tanh layer and a linear layer.

**Training** (``train_exits``, the ``exits`` stage): the backbone (the trained supernet) is
frozen and every head learns by self-distillation from the final classifier of the same
sub-network (FastBERT: KL to the final logits), with the sub-networks of the supernet's
sandwich (largest, smallest, random ones with random token retention). Frozen on purpose:
the final classifier's outputs cannot change (tested), the stage is cheap and can be added
to any trained run, and resumable like every stage. Training the backbone with the exits
(DeeBERT / PABEE) may make early layers more decisive; it is not done here. A standalone model
of the run (a fine-tuned export) gets heads of its own the same way, trained on its own
configuration only (``train_exits`` with no space; `hwnas exits --model`).

**Policy** (pure numpy, ``exit_layers``): given every exit's logits for a set of inputs
(one pass), any threshold is scored without running the model again.

- ``entropy`` (FastBERT): leave at the first exit whose normalized entropy
  (entropy / log C, in [0, 1]) is *below* the threshold (FastBERT's "speed"). Threshold 0
  never exits early; a threshold above 1 always leaves at the first exit.
- ``patience`` (PABEE): leave at the first exit whose prediction equals the previous
  ``patience`` exits' predictions. Patience 0 leaves at the first exit; a patience of at
  least the number of exits never exits early.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from supernet.checks import check_int, check_number
from supernet.data import Encoded, iterate_batches
from supernet.errors import CheckpointError, ConfigError
from supernet.io import atomic_write, write_json
from supernet.model import ElasticBert
from supernet.space import SearchSpace, SubnetConfig
from supernet.train import (
    MetricsLog,
    StageConfig,
    StageRunner,
    TrainConfig,
    kd_loss,
    sandwich,
    weights_sha1,
)

EXIT_KINDS = ("mean", "attn", "cls")
CRITERIA = ("entropy", "patience")
_ATTN_WIDTH = 64  # FastBERT's student classifier is this small (it uses 128 for BERT-base)


class ExitHead(nn.Module):
    """One exit: hidden states of the alive tokens (B, T, H) -> logits (B, C)."""

    def __init__(self, kind: str, hidden: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        if kind not in EXIT_KINDS:
            raise ConfigError(f"exit kind must be one of {', '.join(EXIT_KINDS)}, got {kind!r}")
        self.kind = kind
        self.dropout = nn.Dropout(dropout)
        if kind == "attn":
            self.query = nn.Linear(hidden, _ATTN_WIDTH)
            self.key = nn.Linear(hidden, _ATTN_WIDTH)
            self.dense = nn.Linear(hidden, _ATTN_WIDTH)
            self.out = nn.Linear(_ATTN_WIDTH, num_labels)
        else:
            self.out = nn.Linear(hidden, num_labels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "cls":
            return self.out(self.dropout(x[:, 0]))  # (B, C)
        m = mask[:, :, None].to(x.dtype)  # (B, T, 1)
        if self.kind == "mean":
            pooled = (x * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H) over the alive tokens
            return self.out(self.dropout(pooled))
        q = self.query(x[:, 0])  # (B, w): [CLS] asks
        k = self.key(x)  # (B, T, w)
        scores = (k @ q[:, :, None]).squeeze(-1) / math.sqrt(_ATTN_WIDTH)  # (B, T)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        pooled = (scores.softmax(-1)[:, :, None] * x).sum(1)  # (B, H)
        return self.out(torch.tanh(self.dense(self.dropout(pooled))))  # (B, C)


class ExitHeads(nn.Module):
    """One ``ExitHead`` per supernet layer (the last one is trained but never used: the final
    classifier answers there)."""

    def __init__(self, kind: str, hidden: int, num_labels: int, num_layers: int) -> None:
        super().__init__()
        self.kind, self.hidden, self.num_labels = kind, hidden, num_labels
        self.heads = nn.ModuleList(ExitHead(kind, hidden, num_labels) for _ in range(num_layers))

    @classmethod
    def for_model(cls, model: ElasticBert, kind: str) -> ExitHeads:
        """Fresh heads for a supernet, or for a standalone model with one per supernet layer up to
        its deepest source layer (seeded by the caller's ``torch.manual_seed``)."""
        s = model.shape
        return cls(kind, s.hidden_size, s.num_labels, max(s.source_layers) + 1)

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    def head(self, layer: int) -> ExitHead:
        h = self.heads[layer]
        assert isinstance(h, ExitHead)
        return h

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "hidden_size": self.hidden, "num_labels": self.num_labels,
                "num_layers": self.num_layers}


def check_heads_fit(model: ElasticBert, heads: ExitHeads) -> None:
    """ConfigError unless ``heads`` were trained for ``model``'s supernet (hidden size, labels,
    and a head for every layer the model's layers came from)."""
    s = model.shape
    if heads.hidden != s.hidden_size or heads.num_labels != s.num_labels:
        raise ConfigError(f"exit heads for hidden size {heads.hidden} and {heads.num_labels} labels do not fit a "
                          f"model of hidden size {s.hidden_size} and {s.num_labels} labels")
    if max(s.source_layers) >= heads.num_layers:
        raise ConfigError(f"exit heads cover {heads.num_layers} layers; the model's layers come from supernet "
                          f"layers {list(s.source_layers)}")


def exit_logits(
    model: ElasticBert,
    heads: ExitHeads,
    input_ids: torch.Tensor,  # (B, T)
    attention_mask: torch.Tensor,  # (B, T)
    token_type_ids: torch.Tensor,  # (B, T)
    subnet: SubnetConfig | None = None,
) -> list[torch.Tensor]:
    """Every exit's logits, one (B, C) per kept layer in order; the last is the final
    classifier's (equal to ``model(...).logits``)."""
    cfg = model.own_config() if subnet is None else subnet
    last = cfg.kept_layers[-1] if cfg.kept_layers else -1
    out = []
    for i, x, mask in model.layer_states(input_ids, attention_mask, token_type_ids, subnet):
        out.append(model.classify(x) if i == last else heads.head(model.shape.source_layers[i])(x, mask))
    return out


@torch.no_grad()
def predict_exits(
    model: ElasticBert, heads: ExitHeads, enc: Encoded, subnet: SubnetConfig | None = None, *, batch_size: int = 64
) -> np.ndarray:
    """Every exit's logits for ``enc`` in one pass: (exits, N, C), in ``enc``'s order."""
    model.eval()
    heads.eval()
    cfg = model.own_config() if subnet is None else subnet
    out = np.zeros((len(cfg.kept_layers), len(enc), model.shape.num_labels), dtype=np.float32)
    for b in iterate_batches(enc, batch_size, shuffle=False, sort_by_length=True):
        logits = exit_logits(model, heads, b["input_ids"], b["attention_mask"], b["token_type_ids"], subnet)
        out[:, b["index"].numpy()] = torch.stack(logits).numpy()
    return out


def exit_table(
    model: ElasticBert, heads: ExitHeads, enc: Encoded, subnets: dict[str, SubnetConfig]
) -> pd.DataFrame:
    """Per sub-network and exit: the exit's accuracy on ``enc`` and how often it agrees with
    the final classifier (the last exit is the final classifier itself)."""
    rows = []
    for name, cfg in subnets.items():
        logits = predict_exits(model, heads, enc, cfg)
        final = logits[-1].argmax(-1)
        for j, layer in enumerate(cfg.kept_layers):
            pred = logits[j].argmax(-1)
            rows.append({"subnet": name, "exit": j + 1, "layer": layer, "acc": float((pred == enc.labels).mean()),
                         "agrees_final": float((pred == final).mean())})
    return pd.DataFrame(rows)


# ---- the policy: pure numpy ------------------------------------------------------------

def normalized_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy of softmax(logits) over the last axis, divided by log(C): in [0, 1]."""
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    ent = -(p * np.log(np.clip(p, 1e-30, None))).sum(-1)
    return np.asarray(ent / math.log(logits.shape[-1]))


def exit_layers(logits: np.ndarray, criterion: str, threshold: float) -> np.ndarray:
    """The exit each input leaves at (index into the exits, 0-based), from every exit's
    logits (exits, N, C): the module doc gives the two criteria. The last exit is taken when
    no earlier one qualifies."""
    n_exits, n = logits.shape[:2]
    if criterion == "entropy":
        done = normalized_entropy(logits) < threshold  # (exits, N)
    elif criterion == "patience":
        if threshold < 0 or threshold != int(threshold):
            raise ConfigError(f"patience must be a whole number >= 0, got {threshold!r}")
        pred = logits.argmax(-1)  # (exits, N)
        same = np.zeros((n_exits, n), dtype=np.int64)  # how many exits in a row agree before this one
        for j in range(1, n_exits):
            same[j] = np.where(pred[j] == pred[j - 1], same[j - 1] + 1, 0)
        done = same >= threshold
    else:
        raise ConfigError(f"exit criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    done[-1] = True
    return np.asarray(done.argmax(0))  # the first exit that qualifies


def exit_predictions(logits: np.ndarray, layers: np.ndarray) -> np.ndarray:
    """The logits each input answers with (N, C), at its exit."""
    return np.asarray(logits[layers, np.arange(logits.shape[1])])


def exit_histogram(layers: np.ndarray, n_exits: int) -> np.ndarray:
    """Share of inputs leaving at each exit (n_exits,)."""
    return np.bincount(layers, minlength=n_exits) / max(1, len(layers))


# ---- training and storage ------------------------------------------------------------------

@dataclass(frozen=True)
class ExitConfig:
    """How the exit heads are trained (recorded in the exits folder)."""

    kind: str = "mean"
    epochs: float = 2.0
    lr: float = 1e-3
    n_random: int = 2
    temperature: float = 1.0
    seed: int = 0

    def validate(self) -> ExitConfig:
        if self.kind not in EXIT_KINDS:
            raise ConfigError(f"exit kind must be one of {', '.join(EXIT_KINDS)}, got {self.kind!r}")
        check_number(self.epochs, "exit epochs", 0.0, above=True)
        check_number(self.lr, "exit lr", 0.0, above=True)
        check_number(self.temperature, "temperature", 0.0, above=True)
        check_int(self.n_random, "n_random", 0)
        check_int(self.seed, "seed", 0)
        return self


HEADS_FILE, META_FILE = "exits.safetensors", "exits.json"


def model_exits_dir(exits_root: str | Path, model_sha: str) -> Path:
    """Where the exit heads of a standalone model of a run (a fine-tuned export; ``model_sha``:
    ``weights_sha1`` of it) are kept, beside the supernet's heads of the same kind
    (``exits_root``: ``RUN/exits/KIND``): one folder per model's weights."""
    return Path(exits_root) / "models" / model_sha[:12]


def load_standalone(path: str | Path) -> ElasticBert:
    """A standalone model to put exits on: an ``hwnas export`` folder (its ``pytorch/``), or a
    model folder (``shape.json`` + ``model.safetensors``: a fine-tuning's, say)."""
    from supernet.checkpoint import load_model

    d = Path(path)
    if not d.is_dir():
        raise ConfigError(f"--model {d}: no such folder; give an `hwnas export` folder or a model folder "
                          "(shape.json + model.safetensors)")
    folder = d / "pytorch" if (d / "pytorch" / "shape.json").is_file() else d
    if not (folder / "shape.json").is_file():
        raise ConfigError(f"--model {d}: neither an `hwnas export` folder (pytorch/shape.json) nor a model folder "
                          "(shape.json + model.safetensors)")
    return load_model(folder)


def save_exits(heads: ExitHeads, folder: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """``exits.safetensors`` (tensors only) and ``exits.json`` (what they are; written last)."""
    from safetensors.torch import save_file

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in heads.state_dict().items()}
    atomic_write(d / HEADS_FILE, lambda p: save_file(state, str(p)))
    write_json(d / META_FILE, {**heads.describe(), "meta": meta or {}})
    return d


def read_exits_meta(folder: str | Path) -> dict[str, Any]:
    f = Path(folder) / META_FILE
    if not f.is_file():
        raise CheckpointError(f"{f} is missing: train the exit heads with `hwnas exits --run RUN`")
    try:
        d = json.loads(f.read_text())
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        check_int(d["hidden_size"], "hidden_size", 1)
        check_int(d["num_labels"], "num_labels", 2)
        check_int(d["num_layers"], "num_layers", 1)
        if d["kind"] not in EXIT_KINDS:
            raise ValueError(f"unknown kind {d['kind']!r}")
    except (ValueError, KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{f} is malformed ({e}): train the exit heads again with `hwnas exits`") from None
    return d


def load_exits(folder: str | Path, backbone: torch.nn.Module | None = None) -> ExitHeads:
    """Heads written by ``save_exits``; CheckpointError if missing, corrupt or mismatched.
    ``backbone``: the model they will run on; heads recorded as trained on other weights (a
    supernet trained again in the same run folder, say) are refused, since their exits would
    decide on hidden states they never saw."""
    from safetensors.torch import load_file

    d = Path(folder)
    meta = read_exits_meta(d)
    trained_on = (meta.get("meta") or {}).get("backbone")
    if backbone is not None and trained_on is not None and trained_on != weights_sha1(backbone):
        raise CheckpointError(f"{d} holds exit heads trained on other weights than this model's (backbone "
                              f"{trained_on}, this one {weights_sha1(backbone)}): delete {d} and train them again "
                              "with `hwnas exits`")
    heads = ExitHeads(meta["kind"], meta["hidden_size"], meta["num_labels"], meta["num_layers"])
    try:
        heads.load_state_dict(load_file(str(d / HEADS_FILE)))
    except Exception as e:  # a missing or corrupt file, or tensors of another shape
        raise CheckpointError(f"{d / HEADS_FILE} cannot be loaded ({str(e)[:200]}): train the exit heads again "
                              "with `hwnas exits`") from None
    return heads.eval()


def train_exits(
    supernet: ElasticBert,
    space: SearchSpace | None,
    train: Encoded,
    folder: str | Path,
    cfg: ExitConfig,
    *,
    batch_size: int = 32,
    bucket_by_length: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> tuple[ExitHeads, bool]:
    """Train exit heads on the frozen ``supernet`` (module doc) into ``folder``; resumable.
    ``space`` None: ``supernet`` is a standalone model (a fine-tuned export, say) and the heads
    learn its own configuration only, every step (no sandwich: its weights serve no other).

    Returns the heads and whether they were trained now (False: finished heads with the same
    settings were loaded). A folder holding heads trained with other settings is an error.
    """
    cfg.validate()
    out = Path(folder)
    settings = json.loads(json.dumps({"stage": "exits", **asdict(cfg), "train_examples": len(train),
                                      "batch_size": batch_size, "backbone": weights_sha1(supernet)}))
    if (out / META_FILE).exists():
        if read_exits_meta(out).get("meta") == settings:
            return load_exits(out), False
        raise CheckpointError(f"{out} holds exit heads trained with other settings; delete it or use another kind")
    plan = out / "plan.json"
    if plan.exists() and json.loads(plan.read_text()) != settings:
        raise CheckpointError(f"{out} holds an exits training with other settings ({plan}); delete it to start again")
    write_json(plan, settings)

    was_training, grads = supernet.training, [p.requires_grad for p in supernet.parameters()]
    supernet.eval()  # frozen: no dropout, no gradients, its outputs cannot change
    for p in supernet.parameters():
        p.requires_grad_(False)
    try:
        return _train_heads(supernet, space, train, cfg, out, settings, batch_size=batch_size,
                            bucket_by_length=bucket_by_length, progress=progress, stop_after=stop_after)
    finally:  # the caller's model as it was given
        supernet.train(was_training)
        for p, g in zip(supernet.parameters(), grads, strict=True):
            p.requires_grad_(g)


def _train_heads(supernet: ElasticBert, space: SearchSpace | None, train: Encoded, cfg: ExitConfig, out: Path,
                 settings: dict[str, Any], *, batch_size: int, bucket_by_length: bool, progress: bool,
                 stop_after: int | None) -> tuple[ExitHeads, bool]:
    """``train_exits``' training, on a frozen ``supernet``."""
    torch.manual_seed(cfg.seed)
    heads = ExitHeads.for_model(supernet, cfg.kind)
    source = supernet.shape.source_layers  # layer -> the supernet layer it came from (its head)
    train_cfg = TrainConfig(seed=cfg.seed, batch_size=batch_size, n_random=cfg.n_random,
                            bucket_by_length=bucket_by_length, temperature=cfg.temperature)
    stage = StageConfig(epochs=cfg.epochs, lr=cfg.lr, weight_decay=0.0)
    log = MetricsLog(out / "metrics.csv")
    runner = _ExitRunner("exits", out, heads, train, stage, train_cfg, log, progress=progress, stop_after=stop_after)

    def step_fn(batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        total = 0.0
        configs = sandwich(space, step, train_cfg) if space is not None else [None]
        for sub in configs:
            with torch.no_grad():
                states = list(supernet.layer_states(*args, subnet=sub))
                target = supernet.classify(states[-1][1])  # the final classifier teaches every exit
            loss = sum(kd_loss(heads.head(source[i])(x, mask), target, cfg.temperature)
                       for i, x, mask in states[:-1])
            if isinstance(loss, torch.Tensor):  # a one-layer sub-network has no early exit
                (loss / len(configs)).backward()
                total += loss.item() / len(configs)
        return {"loss": total}

    runner.run(step_fn)
    save_exits(heads.eval(), out, settings)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return heads, True


class _ExitRunner(StageRunner):
    """The training loop of ``StageRunner``, checkpointing the heads instead of a BERT."""

    def write_weights(self, folder: Path, step: int) -> None:
        assert isinstance(self.model, ExitHeads)
        save_exits(self.model, folder, {"step": step})

    def read_weights(self, folder: Path) -> None:
        self.model.load_state_dict(load_exits(folder).state_dict())
