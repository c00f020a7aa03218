"""Encoder families beyond BERT: RoBERTa, XLM-R, DistilBERT, ELECTRA.

Each family's tiny random checkpoint (hidden 32, 2 layers, built offline from a config) is
loaded into the elastic model; its largest sub-network must give the transformers model's
logits (padding included: RoBERTa numbers positions after the padding index), a smaller one
must survive the trip to the family's stock folder and to ONNX, and an elastic one (per-layer
widths, token dropping) the trip to a remote-code folder (modeling_hwnas_bert.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from supernet.checkpoint import load_pretrained, shape_from_hf_config
from supernet.errors import CheckpointError
from supernet.space import SubnetConfig

COMMON = {"vocab_size": 120, "max_position_embeddings": 64, "initializer_range": 0.2}


def _config(family: str):  # noqa: ANN202 (a transformers config)
    from transformers import DistilBertConfig, ElectraConfig, RobertaConfig, XLMRobertaConfig

    bert_like = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    if family == "roberta":
        return RobertaConfig(**bert_like, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1, **COMMON)
    if family == "xlm-roberta":
        return XLMRobertaConfig(**bert_like, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                                **COMMON)
    if family == "distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **COMMON)
    if family == "electra":  # embeddings narrower than the hidden size: the projection is mapped too
        return ElectraConfig(embedding_size=16, **bert_like, **COMMON)
    raise ValueError(family)


FAMILIES = ("roberta", "xlm-roberta", "distilbert", "electra")


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, bundled_tokenizer) -> Path:
    """A tiny random ``*ForSequenceClassification`` of one family (3 labels), saved as a folder
    (with the bundled tokenizer: only the weights and config are the family's)."""
    from transformers import AutoModelForSequenceClassification

    cfg = _config(request.param)
    cfg.num_labels = 3
    d = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(str(d))
    bundled_tokenizer.save_pretrained(str(d))
    return d


def _batch(pad: int) -> dict[str, torch.Tensor]:
    """Three examples of 10, 6 and 3 tokens, padded with the family's padding id."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, COMMON["vocab_size"], (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad))
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _hf_logits(hf, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # noqa: ANN001
    with torch.no_grad():  # DistilBERT takes no token types; every family's default is zeros
        return hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_largest_subnet_equals_the_original(family_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from supernet.cost import subnet_params

    model, _ = load_pretrained(str(family_dir), num_labels=3)
    hf = AutoModelForSequenceClassification.from_pretrained(str(family_dir)).eval()
    assert model.shape.family == hf.config.model_type
    batch = _batch(hf.config.pad_token_id)
    largest = model.shape.search_space().largest()
    with torch.no_grad():
        ours = model.eval()(**batch, subnet=largest).logits
    ref = _hf_logits(hf, batch)
    assert ref.abs().max() > 0.1  # a head that is really there (initializer_range 0.2)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    # Every tensor of the checkpoint's classifier is used: as many parameters as the original.
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())
    assert subnet_params(model.shape, largest) == sum(p.numel() for p in model.parameters())


def test_a_shallower_subnet_round_trips_through_the_familys_stock_folder(family_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from supernet.extract import export_hf

    model, _ = load_pretrained(str(family_dir), num_labels=3)
    cfg = SubnetConfig((4, 4), (48, 48), (False, True), (1.0, 1.0))  # drop layer 0, 48 of 64 neurons
    small = model.extract(cfg).eval()
    hf = AutoModelForSequenceClassification.from_pretrained(str(export_hf(small, tmp_path / "hf"))).eval()
    assert type(hf).__name__.lower().startswith(model.shape.family.replace("-", ""))
    assert hf.config.num_hidden_layers == 1
    batch = _batch(hf.config.pad_token_id)
    with torch.no_grad():
        ours = small(**batch).logits
    assert torch.allclose(ours, _hf_logits(hf, batch), atol=1e-5)


def test_an_elastic_subnet_loads_with_remote_code_and_gives_our_logits(family_dir: Path, tmp_path: Path) -> None:
    """Per-layer heads and FFN widths with token dropping: no stock model holds it, so ``hf/``
    carries modeling_hwnas_bert.py, which must know the family (RoBERTa's positions counted
    on the mask, DistilBERT's missing token types and ReLU head, ELECTRA's projection)."""
    from transformers import AutoModelForSequenceClassification

    from supernet.extract import needs_remote_code, write_hf

    model, tokenizer = load_pretrained(str(family_dir), num_labels=3)
    cfg = SubnetConfig((4, 2), (64, 32), (True, True), (0.7, 0.5))
    small = model.extract(cfg).eval()
    hf_dir, remote = write_hf(small, tmp_path / "hf", tokenizer)
    assert remote and needs_remote_code(hf_dir)
    hf = AutoModelForSequenceClassification.from_pretrained(str(hf_dir), trust_remote_code=True).eval()
    assert type(hf).__name__ == "HwnasBertForSequenceClassification"
    assert hf.config.family == model.shape.family and hf.config.layer_heads == [4, 2]
    batch = _batch(model.shape.pad_token_id)
    with torch.no_grad():
        ours = small(**batch).logits
    ref = _hf_logits(hf, batch)
    assert ref.abs().max() > 0.1
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_onnx_export_with_token_dropping_matches_pytorch(family: str, tmp_path: Path, bundled_tokenizer) -> None:
    """RoBERTa's positions (a cumulative sum in the graph), DistilBERT's graph without
    ``token_type_ids`` and ELECTRA's embedding projection survive the export, token dropping
    included."""
    from transformers import AutoModelForSequenceClassification

    from latency.onnx_export import check_onnx, export_subnet_onnx, ort_session

    cfg_hf = _config(family)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(cfg_hf).save_pretrained(str(tmp_path / "ckpt"))
    bundled_tokenizer.save_pretrained(str(tmp_path / "ckpt"))
    model, _ = load_pretrained(str(tmp_path / "ckpt"), num_labels=2)
    cfg = SubnetConfig((4, 2), (64, 32), (True, True), (0.7, 0.5))
    path = export_subnet_onnx(model, cfg, tmp_path / "m.onnx")
    names = [i.name for i in ort_session(path).get_inputs()]
    assert names == (["input_ids", "attention_mask"] if family == "distilbert"
                     else ["input_ids", "attention_mask", "token_type_ids"])
    batches = [_batch(cfg_hf.pad_token_id), {k: v[:1] for k, v in _batch(cfg_hf.pad_token_id).items()}]
    worst = check_onnx(model.extract(cfg), path, batches)
    assert np.isfinite(worst) and worst < 1e-4


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_early_exit_segments_match_pytorch(family: str, tmp_path: Path, bundled_tokenizer) -> None:
    """The early-exit runner's ONNX segments of each family (RoBERTa's positions, DistilBERT's
    graph without token types, ELECTRA's projection; token dropping in one layer) give
    PyTorch's exit logits, per input, at the first exit and at the last."""
    from transformers import AutoModelForSequenceClassification

    from latency.early_exit import export_early_exit, load_runner
    from supernet.exits import ExitHeads, exit_logits

    cfg_hf = _config(family)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(cfg_hf).save_pretrained(str(tmp_path / "ckpt"))
    bundled_tokenizer.save_pretrained(str(tmp_path / "ckpt"))
    model, _ = load_pretrained(str(tmp_path / "ckpt"), num_labels=2)
    model.eval()
    heads = ExitHeads.for_model(model, "attn").eval()
    cfg = SubnetConfig((4, 2), (64, 32), (True, True), (0.7, 0.5))
    export_early_exit(model.extract(cfg).eval(), heads, tmp_path / "runner", criterion="entropy", threshold=0.0)
    assert not heads.training and not model.training  # left in the modes they came in
    runner = load_runner(tmp_path / "runner", threads=1)
    batch = _batch(cfg_hf.pad_token_id)
    with torch.no_grad():
        ref = [x.numpy() for x in exit_logits(model, heads, batch["input_ids"], batch["attention_mask"],
                                              batch["token_type_ids"], subnet=cfg)]
    args = [batch[k].numpy() for k in ("input_ids", "attention_mask", "token_type_ids")]
    for threshold, exit_at in ((0.0, 1), (1.01, 0)):  # never below 0: the last exit; always below 1.01: the first
        runner.threshold = threshold
        logits, exits = runner.run(*args)  # the padded batch, as PyTorch ran it
        assert (exits == exit_at).all()
        np.testing.assert_allclose(logits, ref[exit_at], rtol=1e-4, atol=1e-5)


def test_unsupported_checkpoints_are_refused_with_the_reason() -> None:
    from transformers import DistilBertConfig, ElectraConfig, GPT2Config

    with pytest.raises(CheckpointError, match="activation 'relu' is not supported"):
        shape_from_hf_config(DistilBertConfig(activation="relu"), num_labels=2)
    with pytest.raises(CheckpointError, match="activation 'gelu_new'"):
        shape_from_hf_config(ElectraConfig(hidden_act="gelu_new"), num_labels=2)
    with pytest.raises(CheckpointError, match="roberta, xlm-roberta, distilbert, electra"):
        shape_from_hf_config(GPT2Config(), num_labels=2)
