"""Analytic cost of a sub-network: parameters and FLOPs for a given input length.

FLOPs count a multiply-add as 2 and cover the matrix products (Q/K/V, attention scores,
attention-weighted values, output projection, FFN, pooler, classifier); layer norms,
softmax and GELU are left out (a few percent at these sizes). Token retention follows the
forward exactly: a layer's attention runs on the tokens that enter it, its output projection
and FFN on the tokens it keeps.
"""

from __future__ import annotations

from supernet.model import BertShape, tokens_kept
from supernet.space import SubnetConfig


def tokens_per_layer(cfg: SubnetConfig, length: int) -> list[tuple[int, int]]:
    """(tokens entering, tokens kept) for each layer of ``cfg``; (0, 0) for skipped layers."""
    out, alive, drops = [], length, cfg.drops
    for i in range(cfg.num_layers):
        if not cfg.keep[i]:
            out.append((0, 0))
            continue
        t_in = alive
        if i in drops:
            alive = tokens_kept(length, drops[i])
        out.append((t_in, alive))
    return out


def subnet_flops(shape: BertShape, cfg: SubnetConfig, length: int) -> int:
    """FLOPs of one example of ``length`` tokens through sub-network ``cfg``."""
    H, d = shape.hidden_size, shape.head_dim
    total = 0
    for i, (t_in, t_out) in enumerate(tokens_per_layer(cfg, length)):
        if not cfg.keep[i]:
            continue
        w, n = cfg.heads[i] * d, cfg.ffn[i]
        total += 2 * 3 * t_in * H * w  # Q, K, V
        total += 2 * 2 * t_in * t_in * w  # scores and attention-weighted values
        total += 2 * t_out * w * H  # output projection
        total += 2 * 2 * t_out * H * n  # FFN in and out
    total += 2 * H * H + 2 * H * shape.num_labels  # pooler and classifier on [CLS]
    if shape.embedding_dim != H:  # ELECTRA's projection of the embeddings, on every token
        total += 2 * length * shape.embedding_dim * H
    return total


def subnet_params(shape: BertShape, cfg: SubnetConfig) -> int:
    """Parameters of the standalone model for ``cfg`` (embeddings and head included)."""
    H, d = shape.hidden_size, shape.head_dim
    E = shape.embedding_dim
    total = (shape.vocab_size + shape.max_position_embeddings + shape.type_vocab_size) * E + 2 * E
    if E != H:
        total += E * H + H  # ELECTRA's projection of the embeddings
    for i in cfg.kept_layers:
        w, n = cfg.heads[i] * d, cfg.ffn[i]
        total += 3 * (H * w + w) + (w * H + H) + 2 * H  # attention + its layer norm
        total += (H * n + n) + (n * H + H) + 2 * H  # FFN + its layer norm
    total += H * H + H + H * shape.num_labels + shape.num_labels
    return total
