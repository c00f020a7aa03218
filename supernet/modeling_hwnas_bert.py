"""An hwnas sub-network as a Hugging Face model: the elastic BERT, in one file.

This file is copied, unchanged, into every exported Hugging Face folder whose sub-network
the stock model of its family (``BertForSequenceClassification``,
``RobertaForSequenceClassification``, ...) cannot hold (per-layer attention heads or FFN
widths, or token retention), as ``modeling_hwnas_bert.py`` beside a ``config.json`` whose
``auto_map`` points here. It imports only torch and transformers, so that::

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    pipeline("text-classification", model=folder, trust_remote_code=True)

run the exported model without hwnas installed, with the logits hwnas computes.

What the config holds (``HwnasBertConfig``), one entry per layer of the exported model:

* ``layer_heads[i]``: attention heads of layer i, each ``head_dim`` wide (the heads need not
  fill ``hidden_size``);
* ``layer_ffn[i]``: FFN neurons of layer i;
* ``token_retention[i]``: the fraction of the input's real (non-padding) tokens still alive
  after layer i, non-increasing, 1.0 for no dropping. Layer i drops tokens where its value is
  below the one before it: after its attention, every token is scored by the attention it
  receives (summed over heads and over the alive query positions), and each example keeps
  its ``ceil(r * length)`` most attended tokens ([CLS] always among them) in their original
  order, gathered into a shorter tensor, so that later layers compute on fewer tokens
  (PoWER-BERT). ``length`` is the example's number of real tokens at the input.

and what sets the encoder family apart (``family`` names it; the defaults are BERT's):

* ``positions_after_padding``: RoBERTa / XLM-R number real tokens' positions pad+1, pad+2, ...
  (padding at pad), counted on the attention mask;
* ``type_vocab_size`` 0: no token-type embeddings (DistilBERT; ``token_type_ids`` is ignored);
* ``embedding_size``: ELECTRA's narrower embeddings (E < H), projected up to ``hidden_size``
  by ``embeddings.project``; None: E = H, no projection;
* ``head_activation``: after the classification head's first dense layer (``pooler.dense``):
  tanh (BERT's pooler, RoBERTa's / XLM-R's head), relu (DistilBERT's pre-classifier) or gelu
  (ELECTRA's head); ``classifier_dropout`` before its output layer (None: the hidden dropout).

Parameter names follow Hugging Face's BERT (``bert.encoder.layer.0.attention.self.query``
and so on) for every family; only the shapes differ per layer.

Shapes in comments: B batch, T tokens alive, H hidden size, E embedding size, h heads, d head
size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

# After the head's first dense layer, per family (see above).
HEAD_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu,
}

# ceil(r * n - eps): 0.3 * 20 = 6.0000001 keeps 6 tokens, not 7 (as hwnas's forward does).
_CEIL_EPS = 1e-4


class HwnasBertConfig(PretrainedConfig):
    """A BERT encoder whose layers each have their own heads, FFN width and token retention."""

    model_type = "hwnas_bert"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 384,
        head_dim: int = 32,
        layer_heads: list[int] | None = None,
        layer_ffn: list[int] | None = None,
        token_retention: list[float] | None = None,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        pad_token_id: int = 0,
        family: str = "bert",
        embedding_size: int | None = None,
        positions_after_padding: bool = False,
        head_activation: str = "tanh",
        classifier_dropout: float | None = None,
        **kwargs: object,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.head_dim = head_dim
        self.layer_heads = list(layer_heads if layer_heads is not None else [12])
        self.layer_ffn = list(layer_ffn if layer_ffn is not None else [4 * hidden_size] * len(self.layer_heads))
        self.token_retention = [float(r) for r in (token_retention or [1.0] * len(self.layer_heads))]
        if not len(self.layer_heads) == len(self.layer_ffn) == len(self.token_retention):
            raise ValueError("layer_heads, layer_ffn and token_retention need one entry per layer")
        self.num_hidden_layers = len(self.layer_heads)
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        if head_activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"head_activation {head_activation!r} is not one of {list(HEAD_ACTIVATIONS)}")
        self.family = family
        self.embedding_size = embedding_size
        self.positions_after_padding = positions_after_padding
        self.head_activation = head_activation
        self.classifier_dropout = classifier_dropout
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.pad_token_id = pad_token_id  # after: transformers 4 sets its own default in __init__

    def drops(self) -> dict[int, float]:
        """The layers that drop tokens, each with the retention it drops to."""
        out: dict[int, float] = {}
        applied = 1.0
        for i, r in enumerate(self.token_retention):
            if r < applied - 1e-9:
                out[i] = applied = r
        return out


def _kept(n: torch.Tensor, r: float) -> torch.Tensor:
    return torch.ceil(n * r - _CEIL_EPS).clamp(min=1).long()


class HwnasBertEmbeddings(nn.Module):
    def __init__(self, c: HwnasBertConfig) -> None:
        super().__init__()
        E = c.embedding_size or c.hidden_size
        self.word_embeddings = nn.Embedding(c.vocab_size, E, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, E)
        # No token types (DistilBERT): type_vocab_size 0.
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, E) if c.type_vocab_size else None
        self.LayerNorm = nn.LayerNorm(E, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.project = nn.Linear(E, c.hidden_size) if c.hidden_size != E else None  # ELECTRA
        self.positions_after_padding, self.pad_token_id = c.positions_after_padding, c.pad_token_id

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        if self.positions_after_padding:  # RoBERTa / XLM-R: real tokens at pad+1, pad+2, ..., padding at pad
            alive = mask.long()  # (B, T)
            positions = torch.cumsum(alive, dim=1) * alive + self.pad_token_id  # (B, T)
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]  # (1, T)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)  # (B, T, E)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        x = self.dropout(self.LayerNorm(x))  # (B, T, E)
        return x if self.project is None else self.project(x)  # (B, T, H)


class HwnasBertSelfAttention(nn.Module):
    def __init__(self, c: HwnasBertConfig, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, c.head_dim
        self.query = nn.Linear(c.hidden_size, heads * c.head_dim)
        self.key = nn.Linear(c.hidden_size, heads * c.head_dim)
        self.value = nn.Linear(c.hidden_size, heads * c.head_dim)
        self.dropout = nn.Dropout(c.attention_probs_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-head context (B, T, h*d) and the attention probabilities (B, h, T, T)."""
        B, T, _ = x.shape
        q, k, v = (lin(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
                   for lin in (self.query, self.key, self.value))  # (B, h, T, d)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, h, T, T)
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = scores.softmax(-1)
        ctx = self.dropout(probs) @ v  # (B, h, T, d)
        return ctx.transpose(1, 2).reshape(B, T, self.heads * self.head_dim), probs


class HwnasBertSelfOutput(nn.Module):
    def __init__(self, c: HwnasBertConfig, heads: int) -> None:
        super().__init__()
        self.dense = nn.Linear(heads * c.head_dim, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)


class HwnasBertAttention(nn.Module):
    def __init__(self, c: HwnasBertConfig, heads: int) -> None:
        super().__init__()
        self.self = HwnasBertSelfAttention(c, heads)
        self.output = HwnasBertSelfOutput(c, heads)


class HwnasBertIntermediate(nn.Module):
    def __init__(self, c: HwnasBertConfig, size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, size)


class HwnasBertOutput(nn.Module):
    def __init__(self, c: HwnasBertConfig, size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)


def select_tokens(probs: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor,
                  new_length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions (B, T') of each example's ``keep[b]`` most attended tokens, [CLS] first
    and in their original order, padded to ``new_length``; and the new alive mask (B, T')."""
    B, T = mask.shape
    received = (probs * mask[:, None, :, None]).sum(dim=(1, 2))  # (B, T) attention each token receives
    received = received.masked_fill(~mask, -1.0)  # padding last
    received[:, 0] = float("inf")  # [CLS] always survives
    top = received.topk(int(new_length), dim=1).indices  # (B, T')
    new_mask = torch.arange(int(new_length), device=mask.device)[None, :] < keep[:, None]  # (B, T')
    pos = torch.where(new_mask, top, torch.full_like(top, T)).sort(dim=1).values
    return pos.clamp(max=T - 1), new_mask


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[-1]))


class HwnasBertLayer(nn.Module):
    def __init__(self, c: HwnasBertConfig, i: int) -> None:
        super().__init__()
        self.attention = HwnasBertAttention(c, c.layer_heads[i])
        self.intermediate = HwnasBertIntermediate(c, c.layer_ffn[i])
        self.output = HwnasBertOutput(c, c.layer_ffn[i])

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, padded: int,
                retention: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``lengths`` (B,): real tokens per example and ``padded``: the padded length, both
        at the input; a dropping layer keeps ceil(r * each) of them."""
        ctx, probs = self.attention.self(x, mask)  # (B, T, h*d), (B, h, T, T)
        if retention is not None:  # drop the least attended tokens before the rest of the layer
            keep = _kept(lengths, retention)  # (B,)
            idx, mask = select_tokens(probs, mask, keep, _kept(lengths.new_tensor(padded), retention))
            ctx, x = _gather(ctx, idx), _gather(x, idx)  # (B, T', .)
        so = self.attention.output
        x = so.LayerNorm(x + so.dropout(so.dense(ctx)))
        o = self.output
        x = o.LayerNorm(x + o.dropout(o.dense(F.gelu(self.intermediate.dense(x)))))
        return x, mask  # (B, T', H), (B, T')


class HwnasBertEncoder(nn.Module):
    def __init__(self, c: HwnasBertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(HwnasBertLayer(c, i) for i in range(c.num_hidden_layers))


class HwnasBertPooler(nn.Module):
    def __init__(self, c: HwnasBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)


class HwnasBertPreTrainedModel(PreTrainedModel):
    config_class = HwnasBertConfig
    base_model_prefix = "bert"

    def _init_weights(self, module: nn.Module) -> None:
        # Only for weights a folder lacks: every exported folder holds all of them.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class HwnasBertModel(HwnasBertPreTrainedModel):
    """The encoder and the head's first dense layer (BERT's pooler; RoBERTa's and ELECTRA's
    head dense layer, DistilBERT's pre-classifier) with its activation; returns the pooled
    [CLS] vector (B, H)."""

    def __init__(self, config: HwnasBertConfig) -> None:
        super().__init__(config)
        self.embeddings = HwnasBertEmbeddings(config)
        self.encoder = HwnasBertEncoder(config)
        self.pooler = HwnasBertPooler(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = attention_mask.bool()  # (B, T)
        lengths = mask.sum(1)  # (B,) real tokens per example, fixed at the input
        x = self.embeddings(input_ids, mask, token_type_ids)  # (B, T, H)
        drops = self.config.drops()
        for i, layer in enumerate(self.encoder.layer):
            x, mask = layer(x, mask, lengths, input_ids.shape[1], drops.get(i))
        act = HEAD_ACTIVATIONS[self.config.head_activation]
        return act(self.pooler.dense(x[:, 0]))  # (B, H) from [CLS], always alive at 0


class HwnasBertForSequenceClassification(HwnasBertPreTrainedModel):
    def __init__(self, config: HwnasBertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = HwnasBertModel(config)
        p = config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, int(config.num_labels or 2))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.bert.embeddings.word_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs: object) -> SequenceClassifierOutput:
        logits = self.classifier(self.dropout(self.bert(input_ids, attention_mask, token_type_ids)))  # (B, labels)
        loss = None
        if labels is not None:
            loss = (F.mse_loss(logits.squeeze(-1), labels.float()) if self.num_labels == 1
                    else F.cross_entropy(logits, labels))
        return SequenceClassifierOutput(loss=loss, logits=logits)
