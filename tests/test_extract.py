"""Standalone models: Hugging Face folders, save / load, corrupt checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny_batch, tiny_model
from supernet.checkpoint import load_model, load_pretrained, save_model
from supernet.errors import CheckpointError, ConfigError
from supernet.extract import (
    export_hf,
    export_standalone,
    extract,
    hf_expressible,
    needs_remote_code,
)
from supernet.space import SubnetConfig


def _logits(model, batch):
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits


def test_hf_folder_loads_with_plain_transformers(tmp_path: Path, tiny_hf_dir, bundled_tokenizer) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, tok = load_pretrained(str(tiny_hf_dir), num_labels=2)
    model.eval()
    # Drop the middle layer and shrink FFN uniformly: a stock BERT can hold that.
    cfg = SubnetConfig((4, 0, 4), (32, 0, 32), (True, False, True), (1.0, 1.0, 1.0))
    written = export_standalone(model, cfg, tmp_path / "out", tok, ["neg", "pos"])
    assert set(written) == {"pytorch", "hf"}
    hf = AutoModelForSequenceClassification.from_pretrained(written["hf"]).eval()
    assert hf.config.num_hidden_layers == 2 and hf.config.intermediate_size == 32
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    hf_tok = AutoTokenizer.from_pretrained(written["hf"])
    enc = hf_tok(["a movie", "not a good movie at all, sadly"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], subnet=cfg).logits
        got = hf(**enc).logits
    assert torch.allclose(got, ref, atol=1e-5)
    # The PyTorch folder round-trips too.
    assert torch.allclose(_logits(load_model(written["pytorch"]), dict(enc)), ref, atol=1e-5)


def test_stock_hf_folder_refused_when_stock_bert_cannot_express_it(tmp_path: Path) -> None:
    model = tiny_model()
    for cfg, why in [
        (SubnetConfig((2, 2, 2), (64,) * 3, (True,) * 3, (1.0,) * 3), "heads"),
        (SubnetConfig((4,) * 3, (64, 32, 64), (True,) * 3, (1.0,) * 3), "FFN"),
        (SubnetConfig((4,) * 3, (64,) * 3, (True,) * 3, (1.0, 0.5, 0.5)), "retention"),
    ]:
        small = extract(model, cfg)
        assert why in (hf_expressible(small) or "")
        with pytest.raises(ConfigError, match=why):
            export_hf(small, tmp_path / "hf")
        # hf/ is still written, with the elastic BERT's code (tests/test_using_export.py loads it).
        written = export_standalone(model, cfg, tmp_path / cfg.key())
        assert needs_remote_code(written["hf"]) and (tmp_path / cfg.key() / "subnet.json").exists()


def test_save_load_round_trip_with_retention(tmp_path: Path) -> None:
    model, batch = tiny_model(), tiny_batch()
    cfg = SubnetConfig((3, 4, 1), (16, 64, 48), (True, True, True), (0.9, 0.6, 0.3))
    small = extract(model, cfg).eval()
    save_model(small, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.shape == small.shape
    assert torch.equal(_logits(again, batch), _logits(small, batch))


def test_corrupt_or_missing_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path / "nothing")
    save_model(tiny_model(), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path / "m")
    save_model(tiny_model(layers=2), tmp_path / "m2")
    (tmp_path / "m" / "model.safetensors").write_bytes((tmp_path / "m2" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "shape.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid"):
        load_model(tmp_path / "m")


def test_non_bert_checkpoints_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_layer": 1}')
    with pytest.raises(CheckpointError, match="model_type"):
        load_pretrained(str(tmp_path), num_labels=2)
    with pytest.raises(CheckpointError, match="cannot load"):
        load_pretrained(str(tmp_path / "does-not-exist"), num_labels=2)


def test_an_extracted_model_keeps_the_supernets_dtype() -> None:
    """Extracted from a bfloat16 supernet (or one on a GPU), every layer is made where the
    supernet lives and in its dtype: a mixed model would fail on its first matmul."""
    model = tiny_model().to(torch.bfloat16)
    cfg = SubnetConfig((2, 0, 4), (32, 0, 64), (True, False, True), (1.0, 1.0, 0.5))
    small = extract(model, cfg)
    assert {p.dtype for p in small.parameters()} == {torch.bfloat16}
    assert {p.device for p in small.parameters()} == {next(model.parameters()).device}
    batch = tiny_batch()
    torch.testing.assert_close(_logits(small, batch), _logits_of(model, batch, cfg))


def _logits_of(model, batch, cfg):  # noqa: ANN001, ANN202
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], subnet=cfg).logits
