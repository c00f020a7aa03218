"""The elastic BERT supernet: one readable forward for every sub-network.

The same classes serve the supernet (full-size weights, sliced at run time) and every
extracted sub-network (physically smaller weights, nothing sliced): a model's ``BertShape``
says how many heads / FFN neurons each of its layers owns and which token retention it
applies by default. ``forward(..., subnet=cfg)`` runs the sub-network ``cfg`` with the
shared weights: the first ``heads[i]`` heads and the first ``ffn[i]`` neurons of layer i,
skipped layers do no work, and after each layer's attention the least attended tokens are
dropped *and gathered out* so that later layers compute on a shorter tensor.

Shapes in comments: B batch, T tokens alive, H hidden size, h heads, d head size, F FFN size.
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

    @property
    def num_layers(self) -> int:
        return len(self.heads)

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
class EncoderOutput:
    logits: torch.Tensor  # (B, num_labels)
    hidden: torch.Tensor  # (B, T', H) last hidden states of the tokens still alive
    mask: torch.Tensor  # (B, T') True where a token is alive


class Embeddings(nn.Module):
    def __init__(self, s: BertShape) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(s.vocab_size, s.hidden_size, padding_idx=s.pad_token_id)
        self.position_embeddings = nn.Embedding(s.max_position_embeddings, s.hidden_size)
        self.token_type_embeddings = nn.Embedding(s.type_vocab_size, s.hidden_size)
        self.LayerNorm = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.dropout = nn.Dropout(s.hidden_dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings(token_type_ids)
        )  # (B, T, H)
        return self.dropout(self.LayerNorm(x))


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
        self, x: torch.Tensor, mask: torch.Tensor, heads: int, need_probs: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the per-head context (B, T, h*d), before the output projection, and the
        attention probabilities (B, h, T, T) when ``need_probs`` (token retention)."""
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
        if need_probs or torch.onnx.is_in_onnx_export():
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, h, T, T)
            scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
            attn = scores.softmax(-1)
            ctx = F.dropout(attn, p_drop, self.training) @ v  # (B, h, T, d)
            probs = attn if need_probs else None
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], dropout_p=p_drop)
        if self.head_gate is not None:
            ctx = ctx * self.head_gate[:heads].view(1, heads, 1, 1)
        return ctx.transpose(1, 2).reshape(B, T, w), probs

    def project(self, ctx: torch.Tensor) -> torch.Tensor:
        w = ctx.shape[-1]
        return F.linear(ctx, self.out.weight[:, :w], self.out.bias)  # (B, T, H)

    def extract(self, heads: int) -> ElasticAttention:
        """A physically smaller copy holding only the first ``heads`` heads."""
        w = heads * self.head_dim
        new = ElasticAttention(self.out.out_features, heads, self.head_dim, self.dropout)
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
        new = ElasticFFN(self.out.out_features, n)
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx, probs = self.attn(x, mask, heads, need_probs=keep is not None)  # (B, T, h*d)
        if keep is not None:
            assert probs is not None
            idx, mask = select_tokens(probs, mask, keep, new_length)  # (B, T')
            ctx = _gather(ctx, idx)  # (B, T', h*d)
            x = _gather(x, idx)  # (B, T', H)
        x = self.attn_norm(x + self.dropout(self.attn.project(ctx)))
        x = self.ffn_norm(x + self.dropout(self.ffn(x, ffn)))
        return x, mask

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
    new = nn.LayerNorm(norm.normalized_shape, eps=norm.eps)
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
    """A BERT encoder with a sequence-classification head; elastic per ``BertShape``."""

    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.shape = shape
        self.embeddings = Embeddings(shape)
        self.layers = nn.ModuleList(EncoderLayer.for_shape(shape, i) for i in range(shape.num_layers))
        self.pooler = nn.Linear(shape.hidden_size, shape.hidden_size)
        self.classifier = nn.Linear(shape.hidden_size, shape.num_labels)
        self.dropout = nn.Dropout(shape.hidden_dropout)

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
    ) -> EncoderOutput:
        *_, (_, x, mask) = self.layer_states(input_ids, attention_mask, token_type_ids, subnet)  # the last layer's
        return EncoderOutput(logits=self.classify(x), hidden=x, mask=mask)

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
        if subnet is not None:
            self.check(subnet)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = attention_mask.bool()  # (B, T)
        lengths = mask.sum(1)  # (B,) real tokens per example, fixed at the input
        T = lengths.new_full((), input_ids.shape[1])  # () the padded length, as a tensor (see below)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)

        for i in cfg.kept_layers:
            x, mask = self.layer_step(cfg, i, x, mask, lengths, T)  # (B, T', H)
            yield i, x, mask

    def layer_step(
        self,
        cfg: SubnetConfig,
        i: int,
        x: torch.Tensor,  # (B, T, H)
        mask: torch.Tensor,  # (B, T) bool
        lengths: torch.Tensor,  # (B,) real tokens per example at the input
        T: torch.Tensor,  # () the input's padded length
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i`` of ``cfg`` (kept), with its token drop: (B, T', H) and the new mask."""
        keep = t_new = None
        drops = cfg.drops  # layer -> the retention it drops to
        if i in drops:
            keep = tokens_kept(lengths, drops[i])  # (B,)
            # The new padded length T' = max(keep). Padding is dynamic (T = the longest
            # example), so it is the same rounding of T: taken from the input's *shape*
            # with tensor ops, not from the data, so that a traced (ONNX) graph keeps T
            # dynamic. (Padded beyond the longest example, the extra slots stay dead.)
            t_new = tokens_kept(T, drops[i])  # ()
        return self.encoder_layers[i](x, mask, cfg.heads[i], cfg.ffn[i], keep, t_new)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The final classifier on the last hidden states (B, T', H) -> logits (B, num_labels)."""
        pooled = torch.tanh(self.pooler(x[:, 0]))  # (B, H) from [CLS], always alive at 0
        return self.classifier(self.dropout(pooled))  # (B, num_labels)
