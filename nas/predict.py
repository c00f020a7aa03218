"""Classify texts with an export folder: ``model.onnx`` in ONNX Runtime (``hwnas predict``).

``ExportedModel.open(folder)`` reads what the export wrote beside the graph: the tokenizer
and ``config.json`` (its ``id2label``). Exports written before those files were copied
beside ``model.onnx`` are read from ``pytorch/`` (tokenizer) and ``hf/config.json``
(labels). The graph is the one the export deploys: its own token dropping and, for an int8
export, its quantized weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from supernet.errors import ConfigError

ONNX_NAME = "model.onnx"


def _not_an_export(folder: Path, why: str) -> ConfigError:
    return ConfigError(f"{folder} {why}: give an export folder written by `hwnas export` or `hwnas run` "
                       f"(RUN/export/DEVICE_BUDGETms, with {ONNX_NAME})")


def _labels(folder: Path, n: int) -> list[str]:
    for config in (folder / "config.json", folder / "hf" / "config.json"):
        if config.is_file():
            try:
                id2label = json.loads(config.read_text()).get("id2label") or {}
                labels = [str(id2label[str(i)]) for i in range(n)]
            except (ValueError, KeyError, AttributeError, TypeError) as e:
                raise ConfigError(f"{config} has no usable id2label for {n} labels ({e}); re-export the model") from e
            return labels
    return [f"LABEL_{i}" for i in range(n)]


def _tokenizer_folder(folder: Path) -> Path:
    for d in (folder, folder / "pytorch", folder / "hf"):
        if (d / "tokenizer_config.json").is_file():
            return d
    raise _not_an_export(folder, "has no tokenizer (tokenizer_config.json) beside model.onnx, in pytorch/ or in hf/")


def _load_tokenizer(auto: Any, folder: Path) -> Any:
    """The tokenizer of ``folder``, without running its modeling code: AutoTokenizer reads
    ``config.json`` too, whose ``auto_map`` (an elastic export) would ask to trust the code;
    the tokenizer needs none of it, so the config is read as a plain one, quietly."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "a model of type hwnas_bert ... of type ''": the plain config
    try:
        return auto.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the tokenizer in {folder}: {str(e)[:200]}") from e
    finally:
        hf_logging.set_verbosity(verbosity)


def read_texts(texts: Sequence[str], file: str | None) -> list[str]:
    """The texts to classify: ``texts``, then ``file``'s non-blank lines (``-``: standard
    input). ConfigError for a missing file, an empty text or nothing at all."""
    out = []
    for i, t in enumerate(texts, 1):
        if not t.strip():
            raise ConfigError(f"text {i} is empty: give texts with words in them")
        out.append(t)
    if file is not None:
        import sys

        if file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            p = Path(file)
            if not p.is_file():
                raise ConfigError(f"{p} does not exist: give a text file with one text per line (or - for stdin)")
            try:
                lines = p.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise ConfigError(f"{p} is not UTF-8 text: {e}") from e
        out += [line for line in lines if line.strip()]
    if not out:
        raise ConfigError("no text to classify: give texts as arguments or --file FILE with one text per line")
    return out


def _report(folder: Path) -> dict[str, Any]:
    """What the export's report.json says ({} when it has none or cannot be read: an export
    copied without it, or one from before a field existed)."""
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def _deployed_batch(report: dict[str, Any]) -> int:
    """The batch an export's device serves (report.json ``batch``); 1 when it does not say."""
    batch = report.get("batch", 1)
    return batch if isinstance(batch, int) and batch >= 1 else 1


def _max_length(report: dict[str, Any], config: dict[str, Any], tokenizer: Any) -> int:
    """Tokens per text: the run's (report.json ``max_length``: what the model was trained,
    scored and timed on); for an export without it, as many as the model has positions for
    (RoBERTa's start after the padding index) and the tokenizer allows."""
    n = report.get("max_length")
    if isinstance(n, int) and n >= 2:
        return n
    positions = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in ("roberta", "xlm-roberta"):
        positions -= int(config.get("pad_token_id", 1)) + 1
    return min(positions, int(tokenizer.model_max_length))


def split_pairs(texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """Sentence pairs given as ``FIRST<TAB>SECOND`` (split at the first tab); ConfigError for a
    text without a tab or with an empty side."""
    first, second = [], []
    for i, t in enumerate(texts, 1):
        a, tab, b = t.partition("\t")
        if not tab or not a.strip() or not b.strip():
            raise ConfigError(f"text {i} is not a sentence pair: this export classifies pairs (its task has two "
                              "texts per example); give each as FIRST<TAB>SECOND")
        first.append(a)
        second.append(b)
    return first, second


@dataclass
class ExportedModel:
    """An export folder opened for prediction."""

    folder: Path
    session: Any  # onnxruntime.InferenceSession
    tokenizer: Any
    labels: list[str]
    max_length: int
    # An int8 export's graph quantizes its activations dynamically, with one scale per tensor:
    # a text's logits then depend on the other texts (and padding) in its batch, so it is run
    # at the batch its device was measured and its accuracy scored at (report.json "batch",
    # 1 by default), as a server would run it. None: an fp32 export, any batch.
    int8_batch: int | None = None
    is_pair: bool = False  # the task has two texts per example: each text is FIRST<TAB>SECOND
    notes: tuple[str, ...] = ()  # what a user should know before trusting the outputs here

    @classmethod
    def open(cls, folder: str | Path, *, threads: int | None = None) -> ExportedModel:
        """Open ``folder`` (ConfigError, naming what is missing, for anything but an export)."""
        import onnxruntime as ort
        from transformers import AutoTokenizer

        d = Path(folder)
        if not d.exists():
            raise _not_an_export(d, "does not exist")
        if not d.is_dir():
            raise _not_an_export(d, "is a file, not a folder")
        if not (d / ONNX_NAME).is_file():
            raise _not_an_export(d, f"has no {ONNX_NAME}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(d / ONNX_NAME), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for a corrupt graph
            raise ConfigError(f"{d / ONNX_NAME} cannot be opened by ONNX Runtime: {str(e)[:200]}") from e
        tokenizer = _load_tokenizer(AutoTokenizer, _tokenizer_folder(d))
        n_labels = session.get_outputs()[0].shape[-1]
        if not isinstance(n_labels, int):
            raise _not_an_export(d, f"has a {ONNX_NAME} whose logits have no fixed number of labels")
        config_path = d / "config.json" if (d / "config.json").is_file() else d / "hf" / "config.json"
        try:
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        except (OSError, ValueError) as e:
            raise _not_an_export(d, f"has an unreadable {config_path.name} ({e})") from e
        report = _report(d)
        precision = report.get("precision")
        int8 = precision == "int8" if precision is not None else (d / "model-fp32.onnx").is_file()
        notes = []
        if int8 and report.get("int8_reduce_range") is False:
            from latency.onnx_export import int8_reduce_range

            if int8_reduce_range():
                notes.append("this int8 model was quantized on a CPU with VNNI (8-bit weights); this CPU has none, "
                             "where such weights can saturate and move its predictions: export it again here")
        return cls(d, session, tokenizer, _labels(d, n_labels), _max_length(report, config, tokenizer),
                   int8_batch=_deployed_batch(report) if int8 else None, is_pair=bool(report.get("is_pair")),
                   notes=tuple(notes))

    def logits(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """(N, labels) logits, ``batch_size`` texts per call (each padded to its longest; an
        int8 export's own batch instead, ``int8_batch``)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a whole number of texts, at least 1, got {batch_size!r}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        pairs = split_pairs(texts) if self.is_pair else None
        names = {i.name for i in self.session.get_inputs()}
        batch_size = self.int8_batch or batch_size
        out = []
        for start in range(0, len(texts), batch_size):
            part = slice(start, start + batch_size)
            args = (pairs[0][part], pairs[1][part]) if pairs else (texts[part],)
            enc = self.tokenizer(*args, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
            feed = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in names}
            if "token_type_ids" in names and "token_type_ids" not in feed:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            out.append(self.session.run(None, feed)[0])
        return np.concatenate(out)

    def predict(self, texts: Sequence[str], *, batch_size: int = 32) -> list[dict[str, Any]]:
        """One record per text: ``text``, ``label`` (the most probable), ``score`` (its
        softmax probability) and ``scores`` (every label's)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        logits = self.logits(texts, batch_size=batch_size)
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        return [{"text": t, "label": self.labels[int(p.argmax())], "score": float(p.max()),
                 "scores": {lab: float(v) for lab, v in zip(self.labels, p, strict=True)}}
                for t, p in zip(texts, probs, strict=True)]
