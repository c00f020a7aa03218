"""DynaBERT network rewiring: score heads and FFN neurons, most important first.

Importance is the first-order Taylor estimate of the loss change when a head / neuron is
removed: |sum over the data of dL/dg| for a multiplicative gate g = 1 on that head's context
or that neuron's activation (Michel et al. 2019; DynaBERT). Scores are computed on the
**train** split only. Reordering permutes the weights so that "keep the first k" keeps the k
most important; the full model computes exactly the same function afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from supernet.data import to_device
from supernet.model import ElasticAttention, ElasticBert, ElasticFFN


def importance_scores(
    model: ElasticBert,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    progress: bool = True,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer head scores (heads,) and neuron scores (ffn,) of the full model, on the CPU:
    the size of the cross-entropy's gradient (with the batch labels) with respect to each
    head's and neuron's gate. The batches run on the model's device. (A KL to the model's own
    detached predictions would need no labels, but its gradient at the model is zero.)"""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gates_h = [torch.ones(layer.attn.num_heads, requires_grad=True, device=device) for layer in model.encoder_layers]
    gates_f = [torch.ones(layer.ffn.size, requires_grad=True, device=device) for layer in model.encoder_layers]
    for layer, gh, gf in zip(model.encoder_layers, gates_h, gates_f, strict=True):
        layer.attn.head_gate, layer.ffn.neuron_gate = gh, gf
    try:
        for batch in tqdm(batches, desc="importance", disable=not progress, leave=False):
            batch = to_device(batch, device)
            out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            loss = F.cross_entropy(out.logits, batch["labels"])
            loss.backward()  # gradients accumulate in the gates over all batches
    finally:
        for layer in model.encoder_layers:
            layer.attn.head_gate = layer.ffn.neuron_gate = None
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    zero_h = [torch.zeros_like(g) for g in gates_h]
    zero_f = [torch.zeros_like(g) for g in gates_f]
    heads = [(g.grad if g.grad is not None else z).abs().cpu() for g, z in zip(gates_h, zero_h, strict=True)]
    ffn = [(g.grad if g.grad is not None else z).abs().cpu() for g, z in zip(gates_f, zero_f, strict=True)]
    return heads, ffn


@torch.no_grad()
def reorder_heads(attn: ElasticAttention, order: torch.Tensor) -> None:
    """Permute heads so that head ``order[0]`` comes first."""
    d = attn.head_dim
    rows = (order[:, None] * d + torch.arange(d)[None, :]).reshape(-1)
    for lin in (attn.query, attn.key, attn.value):
        lin.weight.copy_(lin.weight[rows])
        lin.bias.copy_(lin.bias[rows])
    attn.out.weight.copy_(attn.out.weight[:, rows])


@torch.no_grad()
def reorder_neurons(ffn: ElasticFFN, order: torch.Tensor) -> None:
    ffn.inter.weight.copy_(ffn.inter.weight[order])
    ffn.inter.bias.copy_(ffn.inter.bias[order])
    ffn.out.weight.copy_(ffn.out.weight[:, order])


def rewire(model: ElasticBert, head_scores: list[torch.Tensor], ffn_scores: list[torch.Tensor]) -> None:
    """Reorder every layer's heads and neurons by descending importance (in place)."""
    for layer, hs, fs in zip(model.encoder_layers, head_scores, ffn_scores, strict=True):
        reorder_heads(layer.attn, torch.argsort(hs, descending=True, stable=True))
        reorder_neurons(layer.ffn, torch.argsort(fs, descending=True, stable=True))
