"""The supernet forward: largest == original, rewiring, retention, padding, cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_batch, tiny_model
from supernet.checkpoint import load_pretrained
from supernet.cost import subnet_flops, subnet_params, tokens_per_layer
from supernet.errors import ConfigError
from supernet.extract import extract
from supernet.rewire import importance_scores, rewire
from supernet.space import SubnetConfig


def _run(model, batch, cfg=None):
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], subnet=cfg)


def test_largest_subnet_equals_the_original_hf_model(tiny_hf_dir, bundled_tokenizer) -> None:
    from transformers import AutoModelForSequenceClassification

    model, _ = load_pretrained(str(tiny_hf_dir), num_labels=2)
    hf = AutoModelForSequenceClassification.from_pretrained(str(tiny_hf_dir)).eval()
    enc = bundled_tokenizer(["a short one", "a longer sentence with several more words in it"],
                            padding=True, return_tensors="pt")
    ours = model.eval()(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"],
                        subnet=model.shape.search_space().largest()).logits
    with torch.no_grad():
        ref = hf(**enc).logits
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_rewiring_preserves_outputs_and_orders_by_importance() -> None:
    model, batch = tiny_model(), tiny_batch()
    before = _run(model, batch).logits
    heads, ffn = importance_scores(model, [batch], progress=False)
    assert all(h.shape == (4,) and f.shape == (64,) for h, f in zip(heads, ffn, strict=True))
    assert all(float(h.sum()) > 0 for h in heads)
    rewire(model, heads, ffn)
    assert torch.allclose(_run(model, batch).logits, before, atol=1e-5)
    heads2, ffn2 = importance_scores(model, [batch], progress=False)
    for h in heads2:  # the most important head now comes first
        assert torch.all(h[:-1] >= h[1:] - 1e-6)
    # A sub-network keeping half the heads/neurons loses less after rewiring than with the
    # least important half (the reverse order).
    assert float(ffn2[0][:32].sum()) >= float(ffn2[0][32:].sum())


def test_retention_shortens_hidden_states_and_keeps_cls() -> None:
    model, batch = tiny_model(), tiny_batch(lengths=(20, 10, 4))
    space = model.shape.search_space()
    cfg = SubnetConfig((4, 4, 4), (64, 64, 64), (True, True, True), (1.0, 0.5, 0.3))
    out = _run(model, batch, cfg)
    full = _run(model, batch, space.largest())
    assert full.hidden.shape[1] == 20
    assert out.hidden.shape[1] == 6  # ceil(0.3 * 20): the tensor really is shorter
    assert out.mask.sum(1).tolist() == [6, 3, 2]  # ceil(0.3 * length) per example
    # [CLS] stays at position 0: the pooled output comes from it.
    assert tokens_per_layer(cfg, 20) == [(20, 20), (20, 10), (10, 6)]


def test_retention_selects_the_most_attended_tokens() -> None:
    from supernet.model import select_tokens

    probs = torch.zeros(1, 1, 5, 5)
    probs[0, 0, :, 3] = 0.6  # every query attends to token 3 most
    probs[0, 0, :, 1] = 0.3
    probs[0, 0, :, 4] = 0.1
    mask = torch.tensor([[True] * 5])
    idx, new_mask = select_tokens(probs, mask, torch.tensor([3]))
    assert idx.tolist() == [[0, 1, 3]]  # [CLS], then the two most attended, in original order
    assert new_mask.all()


def test_padding_does_not_change_an_example() -> None:
    model = tiny_model()
    batch = tiny_batch(lengths=(16, 9, 5))
    cfg = SubnetConfig((4, 2, 3), (64, 32, 48), (True, True, True), (0.8, 0.6, 0.4))
    together = _run(model, batch, cfg).logits
    for b, n in enumerate((16, 9, 5)):
        alone = {k: v[b : b + 1, :n] if v.ndim == 2 else v[b : b + 1] for k, v in batch.items()}
        assert torch.allclose(_run(model, alone, cfg).logits, together[b : b + 1], atol=1e-5)


def test_skipped_layers_do_no_work() -> None:
    model, batch = tiny_model(), tiny_batch()
    calls: list[int] = []
    hooks = [layer.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, layer in enumerate(model.layers)]
    _run(model, batch, SubnetConfig((4, 0, 4), (64, 0, 64), (True, False, True), (1.0, 1.0, 1.0)))
    for h in hooks:
        h.remove()
    assert calls == [0, 2]


@pytest.mark.parametrize("retention", [False, True])
def test_extraction_matches_the_supernet(retention: bool) -> None:
    model = tiny_model()
    space = model.shape.search_space()
    rng = np.random.default_rng(3)
    batch = tiny_batch(lengths=(12, 11, 6, 3, 9))
    for _ in range(12):
        cfg = space.sample(rng, retention=retention)
        small = extract(model, cfg).eval()
        assert sum(p.numel() for p in small.parameters()) == subnet_params(model.shape, cfg)
        assert small.shape.num_layers == sum(cfg.keep)
        a, b = _run(model, batch, cfg), _run(small, batch)
        assert torch.allclose(a.logits, b.logits, atol=1e-5), cfg
        assert a.hidden.shape == b.hidden.shape
        # The extracted copy owns its weights: training the supernet does not change it.
        assert small.layers[0].attn.query.weight.data_ptr() != model.layers[cfg.kept_layers[0]].attn.query.weight.data_ptr()


def test_extracted_model_shares_no_storage_and_no_hooks_with_the_supernet() -> None:
    model, batch = tiny_model(), tiny_batch()
    cfg = SubnetConfig((3, 4, 2), (48, 64, 16), (True, False, True), (1.0, 1.0, 0.5))
    fired: list[str] = []
    hooks = [model.layers[0].register_forward_hook(lambda *_: fired.append("before extraction"))]
    small = extract(model, cfg)
    hooks += [m.register_forward_hook(lambda *_, name=name: fired.append(name)) for name, m in model.named_modules()]
    _run(small, batch)
    assert fired == []  # neither copied into the extracted model nor shared with it
    _run(model, batch, cfg)
    assert "before extraction" in fired and "layers.0.attn_norm" in fired
    for h in hooks:
        h.remove()

    storage = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not storage & {p.untyped_storage().data_ptr() for p in small.parameters()}
    before = _run(model, batch, cfg).logits
    with torch.no_grad():
        for p in small.parameters():
            p.add_(1.0)
    assert torch.equal(_run(model, batch, cfg).logits, before)


def test_flops_shrink_with_every_dimension() -> None:
    shape = tiny_model().shape
    space = shape.search_space()
    full = subnet_flops(shape, space.largest(), 32)
    assert subnet_flops(shape, space.uniform(width=0.5), 32) < full
    assert subnet_flops(shape, space.uniform(depth=0.67), 32) < full
    assert subnet_flops(shape, space.uniform(retention=0.5), 32) < full
    assert subnet_flops(shape, space.largest(), 64) > 2 * full  # attention is quadratic
    # Hand-checked: one layer, 4 heads of 8, FFN 64, length 2, hidden 32, 2 labels.
    one = SubnetConfig((4, 0, 0), (64, 0, 0), (True, False, False), (1.0, 1.0, 1.0))
    qkv, att, proj, ffn, head = 2 * 3 * 2 * 32 * 32, 2 * 2 * 2 * 2 * 32, 2 * 2 * 32 * 32, 2 * 2 * 2 * 32 * 64, 2 * 32 * 32 + 2 * 32 * 2
    assert subnet_flops(shape, one, 2) == qkv + att + proj + ffn + head


def test_configs_outside_the_model_are_rejected() -> None:
    model, batch = tiny_model(), tiny_batch()
    with pytest.raises(ConfigError, match=r"heads\[0\]"):
        _run(model, batch, SubnetConfig((8, 4, 4), (64,) * 3, (True,) * 3, (1.0,) * 3))
    with pytest.raises(ConfigError, match="layers"):
        _run(model, batch, SubnetConfig((4,), (64,), (True,), (1.0,)))


@pytest.mark.slow
def test_bundled_model_extraction_on_real_inputs(bundled_tokenizer) -> None:
    """The real all-MiniLM-L6-v2: largest == HF, and extracted == supernet within 1e-4."""
    from transformers import AutoModelForSequenceClassification

    from supernet.checkpoint import bundled_model_path
    from supernet.data import encode, iterate_batches
    from supernet.tasks import load_task

    model, _ = load_pretrained(None, num_labels=2, seed=0)
    model.eval()
    torch.manual_seed(0)
    hf = AutoModelForSequenceClassification.from_pretrained(str(bundled_model_path()), num_labels=2).eval()
    hf.classifier.load_state_dict(model.classifier.state_dict())
    enc = encode(bundled_tokenizer, load_task("rt", max_eval=16).dev, 64)
    batch = next(iterate_batches(enc, 16, shuffle=False))
    with torch.no_grad():
        ref = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 token_type_ids=batch["token_type_ids"]).logits
    assert (_run(model, batch).logits - ref).abs().max() < 1e-4
    space = model.shape.search_space()
    rng = np.random.default_rng(0)
    for cfg in [space.smallest(), space.uniform(0.5, 0.5, 0.5)] + [space.sample(rng) for _ in range(4)]:
        diff = (_run(model, batch, cfg).logits - _run(extract(model, cfg).eval(), batch).logits).abs().max()
        assert diff < 1e-4, (cfg.describe(), diff)
