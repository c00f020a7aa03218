"""Sub-network -> standalone model: physically smaller weights, the same logits.

``extract(supernet, cfg)`` returns an ``ElasticBert`` whose layers own only the kept heads
and neurons of the kept layers and which applies ``cfg``'s token retention by itself; it
gives the supernet's logits for ``cfg`` (up to float rounding).

Every standalone model is also written as a Hugging Face folder (``write_hf``): a stock folder
of the model's family (``export_hf``: ``BertForSequenceClassification``,
``RobertaForSequenceClassification``, ...) where the stock model can hold the sub-network,
which plain ``AutoModelForSequenceClassification.from_pretrained`` loads; otherwise (per-layer
heads or FFN widths, token retention) a folder with the elastic BERT's modeling code beside
its config (``export_hf_remote``: ``supernet/modeling_hwnas_bert.py``, copied unchanged; it
needs only torch and transformers and knows every family's embeddings and head), loaded with
``trust_remote_code=True``. Both hold the tokenizer and the labels.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supernet.checkpoint import FAMILIES, save_model, to_hf_key
from supernet.errors import ConfigError
from supernet.io import atomic_write, write_json, write_text
from supernet.model import BertShape, ElasticBert
from supernet.space import SubnetConfig


def extract(supernet: ElasticBert, cfg: SubnetConfig) -> ElasticBert:
    """A standalone model for ``cfg`` with the weights copied (not shared): ``supernet.extract(cfg)``."""
    return supernet.extract(cfg)


def config_in_supernet(model: ElasticBert, supernet: ElasticBert) -> SubnetConfig:
    """The configuration of ``supernet`` that a standalone model extracted from it holds (its
    layers back at the supernet layers they came from; a fine-tuned one keeps the shape), the
    inverse of ``extract``'s shape. ConfigError when the model cannot have come from it."""
    s, big = model.shape, supernet.shape
    same = ("vocab_size", "hidden_size", "head_dim", "num_labels", "family")
    differ = [k for k in same if getattr(s, k) != getattr(big, k)]
    if differ or max(s.source_layers) >= big.num_layers or list(s.source_layers) != sorted(set(s.source_layers)):
        raise ConfigError(f"the model ({s.num_layers} layers from supernet layers {list(s.source_layers)}, "
                          f"{', '.join(f'{k} {getattr(s, k)}' for k in same)}) was not made from this run's "
                          f"supernet ({big.num_layers} layers, {', '.join(f'{k} {getattr(big, k)}' for k in same)}): "
                          "give a model exported or fine-tuned from this run")
    at = dict(zip(s.source_layers, range(s.num_layers), strict=True))
    heads, ffn, keep, retention, last = [], [], [], [], 1.0
    for j in range(big.num_layers):
        i = at.get(j)
        keep.append(i is not None)
        heads.append(s.heads[i] if i is not None else 0)
        ffn.append(s.ffn[i] if i is not None else 0)
        last = s.retention[i] if i is not None else last  # a dropped layer keeps the tokens it is given
        retention.append(last)
    cfg = SubnetConfig(tuple(heads), tuple(ffn), tuple(keep), tuple(retention))
    supernet.check(cfg)
    return cfg


def hf_expressible(model: ElasticBert) -> str | None:
    """None if a stock Hugging Face model of its family (BERT, RoBERTa, ...) can hold ``model``
    exactly, else the reason why not."""
    s = model.shape
    unknown = _unknown_fields(s)
    if unknown:
        return f"the model has {unknown}, which a stock model has not"
    if any(r < 1.0 for r in s.retention):
        return "token retention < 1.0 (a stock model has no token dropping)"
    if len(set(s.heads)) != 1 or s.heads[0] * s.head_dim != s.hidden_size:
        return (
            "heads differ from the full count (a stock model ties head size to hidden_size / heads)"
        )
    if len(set(s.ffn)) != 1:
        return "FFN sizes differ between layers (a stock model has one intermediate_size)"
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


# The elastic BERT's modeling code, copied into a Hugging Face folder under this name.
REMOTE_CODE = Path(__file__).with_name("modeling_hwnas_bert.py")
REMOTE_MODULE = REMOTE_CODE.stem
REMOTE_MODEL_TYPE = "hwnas_bert"


def _labels(model: ElasticBert, label_names: list[str] | None) -> dict[str, Any]:
    labels = label_names or [f"LABEL_{i}" for i in range(model.shape.num_labels)]
    return {"id2label": {str(i): n for i, n in enumerate(labels)}, "label2id": {n: i for i, n in enumerate(labels)}}


def _remote_key(key: str) -> str:
    """Our parameter name -> its name in ``modeling_hwnas_bert.py``: Hugging Face BERT's for
    every family (ELECTRA's embedding projection: ``bert.embeddings.project``)."""
    return "bert." + key if key.startswith("embeddings.") else to_hf_key(key, "bert")


def _write_hf_files(model: ElasticBert, out: Path, config: dict[str, Any], tokenizer: Any,
                    hf_key: Callable[[str], str]) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {hf_key(k): v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    write_json(out / "config.json", config)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def export_hf(model: ElasticBert, out_dir: str | Path, tokenizer: Any = None, label_names: list[str] | None = None) -> Path:
    """Write a Hugging Face folder of the model's family (``BertForSequenceClassification``,
    ``RobertaForSequenceClassification``, ...) for a standalone model.

    Only possible when ``hf_expressible(model)`` is None: every layer keeps all heads and the
    same FFN size, with no token retention (layers may be dropped).
    """
    why = hf_expressible(model)
    if why is not None:
        raise ConfigError(f"cannot write a Hugging Face folder for this sub-network: {why}")
    s = model.shape
    config = {
        **hf_config(s),
        **_labels(model, label_names),
        "hwnas_source_layers": list(s.source_layers),
    }
    return _write_hf_files(model, Path(out_dir), config, tokenizer, lambda k: to_hf_key(k, s.family))


# The BertShape fields that modeling_hwnas_bert.py computes with (and hf_config writes). A
# field added to BertShape (a further encoder family's quirk, say) must be taught to them before
# such a model is written with it: otherwise the folder would load and give other logits, silently.
_REMOTE_FIELDS = {"vocab_size", "hidden_size", "head_dim", "heads", "ffn", "retention", "num_labels",
                  "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_dropout",
                  "attention_dropout", "pad_token_id", "source_layers",
                  "family", "embedding_size", "positions_after_padding", "head_activation", "classifier_dropout"}


def _unknown_fields(shape: BertShape) -> list[str]:
    """The fields of ``shape`` the Hugging Face folders do not know, set to other than their default."""
    defaults = {f.name: f.default for f in dataclasses.fields(BertShape)}
    return sorted(k for k in set(defaults) - _REMOTE_FIELDS if getattr(shape, k) != defaults[k])


def _check_remote_fields(shape: BertShape) -> None:
    unknown = _unknown_fields(shape)
    if unknown:
        raise ConfigError(f"the Hugging Face modeling code ({REMOTE_CODE.name}) does not implement "
                          f"{unknown} of this model; teach it those before exporting such a model")


def export_hf_remote(model: ElasticBert, out_dir: str | Path, tokenizer: Any = None,
                     label_names: list[str] | None = None) -> Path:
    """Write any standalone model as a Hugging Face folder with the elastic BERT's code
    (``modeling_hwnas_bert.py``, see its docstring for the config's per-layer fields):
    ``from_pretrained(folder, trust_remote_code=True)`` gives this model's logits."""
    s = model.shape
    _check_remote_fields(s)
    cls = f"{REMOTE_MODULE}.HwnasBert"
    config = {
        "architectures": ["HwnasBertForSequenceClassification"],
        "model_type": REMOTE_MODEL_TYPE,
        "auto_map": {"AutoConfig": f"{cls}Config", "AutoModel": f"{cls}Model",
                     "AutoModelForSequenceClassification": f"{cls}ForSequenceClassification"},
        "vocab_size": s.vocab_size,
        "hidden_size": s.hidden_size,
        "head_dim": s.head_dim,
        "layer_heads": list(s.heads),
        "layer_ffn": list(s.ffn),
        "token_retention": list(s.retention),
        "max_position_embeddings": s.max_position_embeddings,
        "type_vocab_size": s.type_vocab_size,
        "layer_norm_eps": s.layer_norm_eps,
        "hidden_dropout_prob": s.hidden_dropout,
        "attention_probs_dropout_prob": s.attention_dropout,
        "pad_token_id": s.pad_token_id,
        "family": s.family,
        "embedding_size": s.embedding_size,
        "positions_after_padding": s.positions_after_padding,
        "head_activation": s.head_activation,
        "classifier_dropout": s.classifier_dropout,
        **_labels(model, label_names),
        "hwnas_source_layers": list(s.source_layers),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / REMOTE_CODE.name, REMOTE_CODE.read_text())
    return _write_hf_files(model, out, config, tokenizer, _remote_key)


def write_hf(model: ElasticBert, out_dir: str | Path, tokenizer: Any = None,
             label_names: list[str] | None = None) -> tuple[Path, bool]:
    """A fresh Hugging Face folder for ``model`` (an earlier one at ``out_dir`` is replaced):
    the stock model of its family where it can hold the model, else the elastic BERT's code. Returns the folder
    and whether it needs ``trust_remote_code=True``."""
    out = Path(out_dir)
    if out.is_dir():  # an earlier sub-network's files would pass for this one's
        shutil.rmtree(out)
    if hf_expressible(model) is None:
        return export_hf(model, out, tokenizer, label_names), False
    return export_hf_remote(model, out, tokenizer, label_names), True


def needs_remote_code(hf_dir: str | Path) -> bool:
    """Whether a Hugging Face folder written here needs ``trust_remote_code=True``."""
    return (Path(hf_dir) / REMOTE_CODE.name).is_file()


def copy_runtime_files(hf_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Copy a Hugging Face folder's config, code and tokenizer files (not its weights) into
    ``out_dir``, the folder of ``model.onnx``: what a runtime needs beside the graph (the
    labels, the tokenizer; Optimum's ``ORTModelForSequenceClassification`` reads
    ``config.json``). Returns the names copied."""
    src, out = Path(hf_dir), Path(out_dir)
    names = sorted(p.name for p in src.iterdir() if p.is_file() and p.suffix != ".safetensors")
    for name in names:
        data = (src / name).read_bytes()

        def write(p: Path, d: bytes = data) -> None:
            p.write_bytes(d)

        atomic_write(out / name, write)
    if REMOTE_CODE.name not in names:
        (out / REMOTE_CODE.name).unlink(missing_ok=True)  # an earlier elastic export's
    return names


def export_standalone(
    supernet: ElasticBert, cfg: SubnetConfig, out_dir: str | Path, tokenizer: Any = None,
    label_names: list[str] | None = None, model: ElasticBert | None = None,
) -> dict[str, str]:
    """Write the standalone PyTorch model (``pytorch/``), the Hugging Face folder (``hf/``:
    the family's stock model where expressible, else with the elastic BERT's code; ``write_hf``) and
    ``subnet.json``. Returns the paths written (``needs_remote_code(hf)`` tells the two kinds
    of ``hf/`` apart). ``model``: the standalone model to write (a fine-tuned one)
    instead of the supernet's weights for ``cfg``."""
    out = Path(out_dir)
    small = (model if model is not None else extract(supernet, cfg)).eval()
    written = {"pytorch": str(save_model(small, out / "pytorch", {"subnet": cfg.to_dict()}))}
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out / "pytorch"))
    hf_dir, _ = write_hf(small, out / "hf", tokenizer, label_names)
    written["hf"] = str(hf_dir)
    write_json(out / "subnet.json", cfg.to_dict())
    return written
