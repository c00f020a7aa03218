"""Sub-network -> standalone model: physically smaller weights, the same logits.

``extract(supernet, cfg)`` returns an ``ElasticBert`` whose layers own only the kept heads
and neurons of the kept layers and which applies ``cfg``'s token retention by itself; it
gives the supernet's logits for ``cfg`` (up to float rounding). ``export_hf`` writes a Hugging
Face folder of the model's family (BERT, RoBERTa, ...) that plain
``AutoModelForSequenceClassification.from_pretrained`` loads, for configurations that the
stock model can express (see its docstring).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from supernet.checkpoint import FAMILIES, save_model, to_hf_key
from supernet.errors import ConfigError
from supernet.io import write_json
from supernet.model import BertShape, ElasticBert
from supernet.space import SubnetConfig


def extract(supernet: ElasticBert, cfg: SubnetConfig) -> ElasticBert:
    """A standalone model for ``cfg`` with the weights copied (not shared): ``supernet.extract(cfg)``."""
    return supernet.extract(cfg)


def hf_expressible(model: ElasticBert) -> str | None:
    """None if a stock Hugging Face BERT can hold ``model`` exactly, else the reason why not."""
    s = model.shape
    if any(r < 1.0 for r in s.retention):
        return "token retention < 1.0 (stock BERT has no token dropping; use the PyTorch or ONNX export)"
    if len(set(s.heads)) != 1 or s.heads[0] * s.head_dim != s.hidden_size:
        return (
            "heads differ from the full count (stock BERT ties head size to hidden_size / heads); "
            "use the PyTorch or ONNX export"
        )
    if len(set(s.ffn)) != 1:
        return "FFN sizes differ between layers (stock BERT has one intermediate_size)"
    return None


def hf_config(s: BertShape) -> dict[str, Any]:
    """The transformers ``config.json`` entries of a stock model of ``s.family`` with shape ``s``
    (every layer alike: see ``hf_expressible``), without labels."""
    family = FAMILIES[s.family]
    config: dict[str, Any] = {
        "architectures": [family.architecture], "model_type": family.model_type,
        "vocab_size": s.vocab_size, "max_position_embeddings": s.max_position_embeddings,
        "pad_token_id": s.pad_token_id,
    }
    if s.family == "distilbert":  # its own names
        return {**config, "dim": s.hidden_size, "n_layers": s.num_layers, "n_heads": s.heads[0],
                "hidden_dim": s.ffn[0], "activation": "gelu", "dropout": s.hidden_dropout,
                "attention_dropout": s.attention_dropout,
                "seq_classif_dropout": s.hidden_dropout if s.classifier_dropout is None else s.classifier_dropout}
    config.update({
        "hidden_size": s.hidden_size, "num_hidden_layers": s.num_layers, "num_attention_heads": s.heads[0],
        "intermediate_size": s.ffn[0], "hidden_act": "gelu", "hidden_dropout_prob": s.hidden_dropout,
        "attention_probs_dropout_prob": s.attention_dropout, "type_vocab_size": s.type_vocab_size,
        "layer_norm_eps": s.layer_norm_eps, "classifier_dropout": s.classifier_dropout,
    })
    if s.family == "electra":
        config["embedding_size"] = s.embedding_dim
    return config


def export_hf(model: ElasticBert, out_dir: str | Path, tokenizer: Any = None, label_names: list[str] | None = None) -> Path:
    """Write a Hugging Face folder of the model's family (``BertForSequenceClassification``,
    ``RobertaForSequenceClassification``, ...) for a standalone model.

    Only possible when ``hf_expressible(model)`` is None: every layer keeps all heads and the
    same FFN size, with no token retention (layers may be dropped).
    """
    from safetensors.torch import save_file

    why = hf_expressible(model)
    if why is not None:
        raise ConfigError(f"cannot write a Hugging Face folder for this sub-network: {why}")
    s = model.shape
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = label_names or [f"LABEL_{i}" for i in range(s.num_labels)]
    config = {
        **hf_config(s),
        "id2label": {str(i): n for i, n in enumerate(labels)},
        "label2id": {n: i for i, n in enumerate(labels)},
        "hwnas_source_layers": list(s.source_layers),
    }
    state = {to_hf_key(k, s.family): v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_json(out / "config.json", config)
    save_file(state, str(out / "model.safetensors"))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def export_standalone(
    supernet: ElasticBert, cfg: SubnetConfig, out_dir: str | Path, tokenizer: Any = None,
    label_names: list[str] | None = None, model: ElasticBert | None = None,
) -> dict[str, str]:
    """Write the standalone PyTorch model (``pytorch/``), and the HF folder (``hf/``) when
    expressible, plus ``subnet.json``. Returns what was written. ``model``: the standalone
    model to write (a fine-tuned one) instead of the supernet's weights for ``cfg``."""
    out = Path(out_dir)
    small = (model if model is not None else extract(supernet, cfg)).eval()
    written = {"pytorch": str(save_model(small, out / "pytorch", {"subnet": cfg.to_dict()}))}
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out / "pytorch"))
    if hf_expressible(small) is None:
        written["hf"] = str(export_hf(small, out / "hf", tokenizer, label_names))
    elif (out / "hf").is_dir():  # an earlier sub-network's: it would pass for this one's
        shutil.rmtree(out / "hf")
    write_json(out / "subnet.json", cfg.to_dict())
    return written
