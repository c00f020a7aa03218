"""The elastic BERT supernet: one readable forward for every sub-network.

The same classes serve the supernet (full-size weights, sliced at run time) and every
extracted sub-network (physically smaller weights, nothing sliced): a model's ``BertShape``
says how many heads / FFN neurons each of its layers owns and which token retention it
applies by default. ``forward(..., subnet=cfg)`` runs the sub-network ``cfg`` with the
shared weights: the first ``heads[i]`` heads and the first ``ffn[i]`` neurons of layer i,
skipped layers do no work, and after each layer's attention the least attended tokens are
dropped *and gathered out* so that later layers compute on a shorter tensor.

Encoder families (``BertShape.family``): BERT, RoBERTa, XLM-R, DistilBERT and ELECTRA share
this forward; what differs is data in the shape (``supernet/checkpoint.py`` maps each
family's checkpoint): RoBERTa and XLM-R number positions after the padding index, DistilBERT
has no token types, ELECTRA's narrower embeddings are projected up to the hidden size, and
the head's activation is BERT's and RoBERTa's tanh, DistilBERT's ReLU or ELECTRA's GELU.

Shapes in comments: B batch, T tokens alive, H hidden size, E embedding size (= H except
ELECTRA-small-style checkpoints), h heads, d head size, F FFN size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, overload

import torch
import torch.nn.functional as F
from torch import nn

from supernet.errors import ConfigError
from supernet.space import SearchSpace, SubnetConfig

FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra")
HEAD_ACTIVATIONS: dict[str, Any] = {"tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu}

# Subtracting a little before ceil() keeps 0.3 * 20 = 6.0000001 from becoming 7 tokens.
_CEIL_EPS = 1e-4


@overload
def tokens_kept(length: int, retention: float) -> int: ...
@overload
def tokens_kept(length: torch.Tensor, retention: float) -> torch.Tensor: ...
def tokens_kept(length: int | torch.Tensor, retention: float) -> int | torch.Tensor:
    """The tokens a layer keeps of ``length`` when it drops to ``retention``: ceil(r * length),
    at least 1. A tensor of lengths gives a tensor (the forward: lengths per example, and the
    padded length kept a tensor for tracing); an int gives an int (the analytic cost)."""
    if isinstance(length, torch.Tensor):
        return torch.ceil(length * retention - _CEIL_EPS).clamp(min=1).long()
    return max(1, math.ceil(length * retention - _CEIL_EPS))


@dataclass(frozen=True)
class BertShape:
    """The physical shape of a model: the supernet's, or an extracted sub-network's."""

    vocab_size: int
    hidden_size: int
    head_dim: int
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    retention: tuple[float, ...]
    num_labels: int = 2
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    # The encoder family and what sets it apart from BERT (the defaults are BERT's):
    family: str = "bert"
    embedding_size: int | None = None  # ELECTRA: E < H, projected up after the embeddings
    positions_after_padding: bool = False  # RoBERTa / XLM-R: real tokens at pad+1, pad+2, ...
    head_activation: str = "tanh"  # after the head's first dense layer: tanh, relu or gelu
    classifier_dropout: float | None = None  # None: hidden_dropout
    # For an extracted sub-network: which supernet layers its layers came from.
    source_layers: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("heads", "ffn", "retention", "source_layers"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.source_layers:
            object.__setattr__(self, "source_layers", tuple(range(len(self.heads))))
        n = len(self.heads)
        if not (len(self.ffn) == len(self.retention) == len(self.source_layers) == n):
            raise ConfigError("BertShape: heads, ffn, retention and source_layers need one entry per layer")
        if self.family not in FAMILIES:
            raise ConfigError(f"BertShape: family {self.family!r} is not one of {list(FAMILIES)}")
        if self.head_activation not in HEAD_ACTIVATIONS:
            raise ConfigError(f"BertShape: head_activation {self.head_activation!r} is not one of "
                              f"{list(HEAD_ACTIVATIONS)}")

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    @property
    def embedding_dim(self) -> int:
        """E: the width of the token, position and type embeddings."""
        return self.embedding_size or self.hidden_size

    @property
    def max_length(self) -> int:
        """The longest input the position table holds (RoBERTa's first pad + 1 rows are not
        positions of real tokens)."""
        if self.positions_after_padding:
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertShape:
        known = set(cls.__dataclass_fields__)
        extra = set(d) - known
        if extra:
            raise ConfigError(f"unknown model-shape fields {sorted(extra)}; known: {sorted(known)}")
        return cls(**d)

    def search_space(self, **kwargs: Any) -> SearchSpace:
        """The default search space for a (uniform) supernet of this shape."""
        if len(set(self.heads)) != 1 or len(set(self.ffn)) != 1:
            raise ConfigError("a search space needs a supernet with the same size in every layer")
        return SearchSpace.for_model(self.num_layers, self.heads[0], self.ffn[0], **kwargs)


@dataclass
class LayerState:
    """What one layer handed on, for layer-wise distillation (``forward(..., states=True)``)."""

    layer: int  # the source layer in the original model (-1: the embeddings)
    hidden: torch.Tensor  # (B, T', H)
    positions: torch.Tensor | None  # (B, T') each slot's position in the input (None: not tracked)
    mask: torch.Tensor  # (B, T') True where a token is alive
    # The layer's attention scores (B, h, T, T) over the tokens it was handed (the previous
    # state's slots), when asked for (``forward(..., attention=True)``); None otherwise.
    scores: torch.Tensor | None = None


@dataclass
class EncoderOutput:
    logits: torch.Tensor  # (B, num_labels)
    hidden: torch.Tensor  # (B, T', H) last hidden states of the tokens still alive
    mask: torch.Tensor  # (B, T') True where a token is alive
    states: list[LayerState] = field(default_factory=list)  # filled when asked for


class Embeddings(nn.Module):
    def __init__(self, s: BertShape) -> None:
        super().__init__()
        E = s.embedding_dim
        self.word_embeddings = nn.Embedding(s.vocab_size, E, padding_idx=s.pad_token_id)
        self.position_embeddings = nn.Embedding(s.max_position_embeddings, E)
        # DistilBERT has no token types (type_vocab_size 0).
        self.token_type_embeddings = nn.Embedding(s.type_vocab_size, E) if s.type_vocab_size else None
        self.LayerNorm = nn.LayerNorm(E, eps=s.layer_norm_eps)
        self.dropout = nn.Dropout(s.hidden_dropout)
        self.project = nn.Linear(E, s.hidden_size) if s.hidden_size != E else None  # ELECTRA
        self.positions_after_padding, self.pad_token_id = s.positions_after_padding, s.pad_token_id

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        if self.positions_after_padding:
            # RoBERTa / XLM-R (fairseq's numbering): real tokens at pad+1, pad+2, ..., padding at
            # pad. Counted on the attention mask, which is the tokenizer's padding.
            alive = mask.long()  # (B, T)
            positions = torch.cumsum(alive, dim=1) * alive + self.pad_token_id  # (B, T)
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]  # (1, T)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)  # (B, T, E)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        x = self.dropout(self.LayerNorm(x))  # (B, T, E)
        return x if self.project is None else self.project(x)  # (B, T, H)


class ElasticAttention(nn.Module):
    """Multi-head self-attention whose first ``h`` heads can run alone."""

    def __init__(self, hidden: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = heads, head_dim, dropout
        self.query = nn.Linear(hidden, heads * head_dim)
        self.key = nn.Linear(hidden, heads * head_dim)
        self.value = nn.Linear(hidden, heads * head_dim)
        self.out = nn.Linear(heads * head_dim, hidden)
        # Set only while importance scores are computed (rewire.py): a (heads,) multiplier.
        self.head_gate: torch.Tensor | None = None

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, heads: int, need_probs: bool,
        scores_out: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the per-head context (B, T, h*d), before the output projection, and the
        attention probabilities (B, h, T, T) when ``need_probs`` (token retention).
        ``scores_out``: a list the attention scores q.k / sqrt(d) (B, h, T, T), before the
        padding mask, are appended to (attention distillation, ``supernet.train.attention_loss``)."""
        B, T, _ = x.shape
        w = heads * self.head_dim
        q, k, v = (
            F.linear(x, lin.weight[:w], lin.bias[:w]).view(B, T, heads, self.head_dim).transpose(1, 2)
            for lin in (self.query, self.key, self.value)
        )  # (B, h, T, d) each
        p_drop = self.dropout if self.training else 0.0
        probs = None
        # Exported to ONNX, attention is written out as stock BERT's graph is (scaled scores,
        # mask, softmax): the exporter's decomposition of scaled_dot_product_attention adds
        # scalar ops per layer and ran 4-7% slower in ONNX Runtime (scripts/stock_check.py).
        if need_probs or scores_out is not None or torch.onnx.is_in_onnx_export():
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, h, T, T)
            if scores_out is not None:
                scores_out.append(scores)
            scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
            attn = scores.softmax(-1)
            ctx = F.dropout(attn, p_drop, self.training) @ v  # (B, h, T, d)
            probs = attn if need_probs else None
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], dropout_p=p_drop)
        if self.head_gate is not None:
            ctx = ctx * self.head_gate[:heads].view(1, heads, 1, 1)
        return ctx.transpose(1, 2).reshape(B, T, w), probs

    def project(self, ctx: torch.Tensor, heads: int) -> torch.Tensor:
        # The width is a Python int, not ``ctx.shape[-1]``: traced to ONNX, a width read from
        # the input's shape became a Slice of the weight matrix on every call, where a constant
        # one folds away (our full model ran 1.10x the stock model's latency in ONNX Runtime
        # with the slice, 0.93x without: scripts/stock_check.py).
        w = heads * self.head_dim
        return F.linear(ctx, self.out.weight[:, :w], self.out.bias)  # (B, T, H)

    def extract(self, heads: int) -> ElasticAttention:
        """A physically smaller copy holding only the first ``heads`` heads."""
        w = heads * self.head_dim
        new = ElasticAttention(self.out.out_features, heads, self.head_dim, self.dropout).to(self.out.weight)
        with torch.no_grad():
            for name in ("query", "key", "value"):
                getattr(new, name).weight.copy_(getattr(self, name).weight[:w])
                getattr(new, name).bias.copy_(getattr(self, name).bias[:w])
            new.out.weight.copy_(self.out.weight[:, :w])
            new.out.bias.copy_(self.out.bias)
        return new


class ElasticFFN(nn.Module):
    """The feed-forward block whose first ``n`` neurons can run alone."""

    def __init__(self, hidden: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.inter = nn.Linear(hidden, size)
        self.out = nn.Linear(size, hidden)
        self.neuron_gate: torch.Tensor | None = None  # rewire.py only: a (size,) multiplier

    def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        a = F.gelu(F.linear(x, self.inter.weight[:n], self.inter.bias[:n]))  # (B, T, n)
        if self.neuron_gate is not None:
            a = a * self.neuron_gate[:n]
        return F.linear(a, self.out.weight[:, :n], self.out.bias)  # (B, T, H)

    def extract(self, n: int) -> ElasticFFN:
        new = ElasticFFN(self.out.out_features, n).to(self.out.weight)  # the source's device and dtype
        with torch.no_grad():
            new.inter.weight.copy_(self.inter.weight[:n])
            new.inter.bias.copy_(self.inter.bias[:n])
            new.out.weight.copy_(self.out.weight[:, :n])
            new.out.bias.copy_(self.out.bias)
        return new


class EncoderLayer(nn.Module):
    """Attention, then FFN, each with a residual and a layer norm (post-norm, as BERT)."""

    def __init__(
        self, attn: ElasticAttention, attn_norm: nn.LayerNorm, ffn: ElasticFFN, ffn_norm: nn.LayerNorm,
        dropout: nn.Dropout,
    ) -> None:
        super().__init__()
        self.attn = attn
        self.attn_norm = attn_norm
        self.ffn = ffn
        self.ffn_norm = ffn_norm
        self.dropout = dropout

    @classmethod
    def for_shape(cls, s: BertShape, i: int) -> EncoderLayer:
        """Layer ``i`` of a model of shape ``s``, freshly initialised."""
        return cls(
            ElasticAttention(s.hidden_size, s.heads[i], s.head_dim, s.attention_dropout),
            nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps),
            ElasticFFN(s.hidden_size, s.ffn[i]),
            nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps),
            nn.Dropout(s.hidden_dropout),
        )

    def forward(
        self,
        x: torch.Tensor,  # (B, T, H)
        mask: torch.Tensor,  # (B, T) bool, True = alive
        heads: int,
        ffn: int,
        keep: torch.Tensor | None,  # (B,) tokens to keep per example, None = keep all
        new_length: torch.Tensor | None = None,  # () T' >= max(keep), None = max(keep)
        scores_out: list[torch.Tensor] | None = None,  # gets the attention scores (``ElasticAttention``)
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Return the new states (B, T', H), their alive mask (B, T') and, when tokens were
        dropped, the positions they were gathered from (B, T'; None otherwise)."""
        ctx, probs = self.attn(x, mask, heads, need_probs=keep is not None, scores_out=scores_out)  # (B, T, h*d)
        idx = None
        if keep is not None:
            assert probs is not None
            idx, mask = select_tokens(probs, mask, keep, new_length)  # (B, T')
            ctx = _gather(ctx, idx)  # (B, T', h*d)
            x = _gather(x, idx)  # (B, T', H)
        x = self.attn_norm(x + self.dropout(self.attn.project(ctx, heads)))
        x = self.ffn_norm(x + self.dropout(self.ffn(x, ffn)))
        return x, mask, idx

    def extract(self, heads: int, ffn: int) -> EncoderLayer:
        """A physically smaller copy with the first ``heads`` heads and ``ffn`` neurons:
        fresh modules with the weights copied (no storage or hooks shared with this one)."""
        new = EncoderLayer(
            self.attn.extract(heads),
            _copy_norm(self.attn_norm),
            self.ffn.extract(ffn),
            _copy_norm(self.ffn_norm),
            nn.Dropout(self.dropout.p),
        )
        return new.train(self.training)


def _copy_norm(norm: nn.LayerNorm) -> nn.LayerNorm:
    new = nn.LayerNorm(norm.normalized_shape, eps=norm.eps).to(norm.weight)  # the source's device and dtype
    new.load_state_dict(norm.state_dict())  # copies the values into the new tensors
    return new


def select_tokens(
    probs: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor, new_length: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """PoWER-BERT token selection.

    A token's significance is the attention it receives, summed over heads and over the
    (alive) query positions. Each example keeps its ``keep[b]`` most significant tokens,
    [CLS] always among them, in their original order; the result is padded to ``new_length``
    (a 0-dim tensor, at least ``max(keep)``; default ``max(keep)``).
    Returns the positions to gather (B, T') and the new alive mask (B, T').
    """
    B, T = mask.shape
    received = (probs * mask[:, None, :, None]).sum(dim=(1, 2))  # (B, T)
    received = received.masked_fill(~mask, -1.0)  # dead tokens last (scores are >= 0)
    received[:, 0] = float("inf")  # [CLS] always survives
    # T' stays a tensor (never a Python int): traced for ONNX, it becomes TopK's k input.
    t_new = keep.max() if new_length is None else new_length  # ()
    top = received.topk(t_new, dim=1).indices  # type: ignore[arg-type]  # (B, T') by significance
    slots = torch.arange(t_new, device=mask.device)[None, :]  # type: ignore[call-overload]  # (1, T')
    new_mask = slots < keep[:, None]  # (B, T')
    # Push the slots each example does not use to the end, then restore the original order.
    pos = torch.where(new_mask, top, torch.full_like(top, T)).sort(dim=1).values
    return pos.clamp(max=T - 1), new_mask


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[-1]))


class ElasticBert(nn.Module):
    """A BERT-family encoder with a sequence-classification head; elastic per ``BertShape``.

    The head is one shape for every family: a dense layer on the first token, an activation
    (BERT's pooler: tanh; RoBERTa's / XLM-R's head: tanh; DistilBERT's pre-classifier: ReLU;
    ELECTRA's head: GELU), dropout and the output layer. (RoBERTa's and ELECTRA's heads also
    drop out the first token's vector before the dense layer; in training only, so left out.)
    """

    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.shape = shape
        self.embeddings = Embeddings(shape)
        self.layers = nn.ModuleList(EncoderLayer.for_shape(shape, i) for i in range(shape.num_layers))
        self.pooler = nn.Linear(shape.hidden_size, shape.hidden_size)  # the head's first dense layer
        self.classifier = nn.Linear(shape.hidden_size, shape.num_labels)
        p = shape.hidden_dropout if shape.classifier_dropout is None else shape.classifier_dropout
        self.dropout = nn.Dropout(p)
        self.head_activation = HEAD_ACTIVATIONS[shape.head_activation]

    @property
    def encoder_layers(self) -> list[EncoderLayer]:
        """The layers, typed (``self.layers`` is an ``nn.ModuleList``)."""
        return [layer for layer in self.layers if isinstance(layer, EncoderLayer)]

    def own_config(self) -> SubnetConfig:
        """This model's own (largest) configuration, with the token retention it applies by
        default: none for a supernet, the sub-network's for an extracted model (so not
        ``SubnetConfig.full``, which never drops tokens)."""
        s = self.shape
        return SubnetConfig(s.heads, s.ffn, (True,) * s.num_layers, s.retention)

    def check(self, subnet: SubnetConfig) -> None:
        s = self.shape
        if subnet.num_layers != s.num_layers:
            raise ConfigError(f"configuration has {subnet.num_layers} layers, the model has {s.num_layers}")
        for i in subnet.kept_layers:
            if not 1 <= subnet.heads[i] <= s.heads[i]:
                raise ConfigError(f"heads[{i}]={subnet.heads[i]} is outside 1..{s.heads[i]}")
            if not 1 <= subnet.ffn[i] <= s.ffn[i]:
                raise ConfigError(f"ffn[{i}]={subnet.ffn[i]} is outside 1..{s.ffn[i]}")
        if not subnet.kept_layers:
            raise ConfigError("keep: at least one layer must be kept")
        prev = 1.0
        for i, r in enumerate(subnet.retention):
            if not 0.0 < r <= prev + 1e-9:
                raise ConfigError(f"retention[{i}]={r} must be in (0, {prev}] (non-increasing)")
            prev = r

    def extract(self, cfg: SubnetConfig) -> ElasticBert:
        """A standalone, physically smaller model for ``cfg``: its layers own only the kept
        heads and neurons of the kept layers, it applies ``cfg``'s token retention by itself,
        and its modules are fresh, with the weights copied (no storage or hooks shared)."""
        self.check(cfg)
        kept = cfg.kept_layers
        s = self.shape
        shape = replace(
            s,
            heads=tuple(cfg.heads[i] for i in kept),
            ffn=tuple(cfg.ffn[i] for i in kept),
            retention=tuple(cfg.retention[i] for i in kept),
            source_layers=tuple(s.source_layers[i] for i in kept),
        )
        with torch.device("meta"):  # no memory and no initialisation: every tensor is set below
            small = ElasticBert(shape)
        small.layers = nn.ModuleList(self.encoder_layers[i].extract(cfg.heads[i], cfg.ffn[i]) for i in kept)
        # Embeddings, pooler and classifier: copies of this model's tensors (same device and
        # dtype); the layers, extracted above, load their own tensors back (a strict load).
        outer = {k: v.clone() for k, v in self.state_dict().items() if not k.startswith("layers.")}
        small.load_state_dict({**outer, **small.layers.state_dict(prefix="layers.")}, assign=True)
        return small.train(self.training)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T) 1 = token, 0 = padding
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        subnet: SubnetConfig | None = None,
        states: bool = False,  # also return every layer's output (layer-wise distillation)
        attention: bool = False,  # and, in those states, every layer's attention scores
    ) -> EncoderOutput:
        trace: list[LayerState] = []  # every state only when asked for: no reference kept otherwise
        states = states or attention
        for last in self.layer_trace(input_ids, attention_mask, token_type_ids, subnet, positions=states,
                                     attention=attention):
            if states:
                trace.append(last)
        x, mask = last.hidden, last.mask  # the last layer's (B, T', H), (B, T')
        return EncoderOutput(logits=self.classify(x), hidden=x, mask=mask, states=trace)

    def layer_states(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T) 1 = token, 0 = padding
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        subnet: SubnetConfig | None = None,
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """The encoder, one kept layer at a time: yields ``(i, hidden, mask)`` after layer ``i``
        (hidden (B, T', H) of the tokens still alive, mask (B, T')). ``forward`` classifies the
        last state; the early exits (``supernet/exits.py``) read every one."""
        cfg = self.own_config() if subnet is None else subnet
        states = self.layer_trace(input_ids, attention_mask, token_type_ids, subnet)
        next(states)  # the embeddings
        for i, state in zip(cfg.kept_layers, states, strict=True):
            yield i, state.hidden, state.mask

    def layer_trace(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T) 1 = token, 0 = padding
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        subnet: SubnetConfig | None = None,
        positions: bool = False,  # track each slot's input position (layer-wise distillation)
        attention: bool = False,  # keep each layer's attention scores (``LayerState.scores``)
    ) -> Iterator[LayerState]:
        """The embeddings' output (layer -1), then each kept layer's, as ``LayerState``s."""
        cfg = self.own_config() if subnet is None else subnet
        if subnet is not None:
            self.check(subnet)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = attention_mask.bool()  # (B, T)
        lengths = mask.sum(1)  # (B,) real tokens per example, fixed at the input
        T = lengths.new_full((), input_ids.shape[1])  # () the padded length, as a tensor (see below)
        x = self.embeddings(input_ids, mask, token_type_ids)  # (B, T, H)
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids) if positions else None
        yield LayerState(-1, x, pos, mask)
        for i in cfg.kept_layers:
            got: list[torch.Tensor] | None = [] if attention else None
            x, mask, idx = self.layer_step(cfg, i, x, mask, lengths, T, scores_out=got)  # (B, T', H)
            if pos is not None and idx is not None:
                pos = pos.gather(1, idx)  # (B, T') where each slot came from
            yield LayerState(self.shape.source_layers[i], x, pos, mask, got[0] if got else None)

    def layer_step(
        self,
        cfg: SubnetConfig,
        i: int,
        x: torch.Tensor,  # (B, T, H)
        mask: torch.Tensor,  # (B, T) bool
        lengths: torch.Tensor,  # (B,) real tokens per example at the input
        T: torch.Tensor,  # () the input's padded length
        scores_out: list[torch.Tensor] | None = None,  # gets the layer's attention scores
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Layer ``i`` of ``cfg`` (kept), with its token drop: (B, T', H), the new mask and,
        when tokens were dropped, the positions gathered (B, T'; ``EncoderLayer.forward``)."""
        keep = t_new = None
        drops = cfg.drops  # layer -> the retention it drops to
        if i in drops:
            keep = tokens_kept(lengths, drops[i])  # (B,)
            # The new padded length T' = max(keep). Padding is dynamic (T = the longest
            # example), so it is the same rounding of T: taken from the input's *shape*
            # with tensor ops, not from the data, so that a traced (ONNX) graph keeps T
            # dynamic. (Padded beyond the longest example, the extra slots stay dead.)
            t_new = tokens_kept(T, drops[i])  # ()
        return self.encoder_layers[i](x, mask, cfg.heads[i], cfg.ffn[i], keep, t_new, scores_out)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The final classifier on the last hidden states (B, T', H) -> logits (B, num_labels)."""
        pooled = self.head_activation(self.pooler(x[:, 0]))  # (B, H) from [CLS], always alive at 0
        return self.classifier(self.dropout(pooled))  # (B, num_labels)
