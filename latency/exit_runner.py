#!/usr/bin/env python3
"""hwnas early-exit runner: runs an exported early-exit model layer by layer, and stops early.

Needs only numpy and onnxruntime (and, to classify text from the command line, the
``tokenizers`` or ``transformers`` package for the tokenizer in ``tokenizer/``). The folder
holds ``manifest.json`` and one ONNX segment per layer: segment 0 is the embeddings, the first
layer and its exit; segment j the layer j and its exit; the last segment's exit is the model's
final classifier. Each input leaves at the first exit that is confident enough:

- ``entropy``: the exit's normalized entropy (entropy / log C, in [0, 1]) is below the
  threshold (FastBERT's "speed": 0 never exits early, above 1 always leaves at the first);
- ``patience``: the exit's prediction equals the previous ``threshold`` exits' (PABEE).

A batch of several inputs runs together until its inputs leave: after each segment the rows
that are done leave the batch, and the rest go on (their padding is kept, which does not
change their results). One input at a time with the ``entropy`` criterion, the runner uses
``one_graph.onnx`` instead when the manifest lists it: the same segments joined into one graph
whose exits are ``If`` nodes, one call per input instead of one per layer run, the same exits
and answers. hwnas lists it only when it served single inputs faster than the segments for
this model and policy (inputs that run deep can cost more through the nested ``If`` nodes);
``one_graph=False`` keeps the segments. From Python::

    from exit_runner import EarlyExitModel
    model = EarlyExitModel("export_folder")
    logits, exits = model.run(input_ids, attention_mask, token_type_ids)  # int64 (B, T) each

From the command line: ``python3 exit_runner.py FOLDER "a sentence" "another one"``.

This file is deliberately standalone (no hwnas import), so its few policy lines repeat
supernet/exits.py's on purpose; tests/test_early_exit.py holds them to the same answers.
"""

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

CRITERIA = ("entropy", "patience")


def normalized_entropy(logits):
    """Entropy of softmax(logits) over the last axis divided by log(C), as in supernet/exits.py."""
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(-1, keepdims=True)
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(-1) / math.log(logits.shape[-1])


class EarlyExitModel:
    """The segments of one exported early-exit model, open in ONNX Runtime."""

    def __init__(self, folder, threads=None, criterion=None, threshold=None, one_graph=True):
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / "manifest.json").read_text())
        self.criterion = criterion or self.manifest["criterion"]
        self.threshold = float(self.manifest["threshold"] if threshold is None else threshold)
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 0 if threads is None else int(threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = [ort.InferenceSession(str(self.folder / name), sess_options=opts,
                                              providers=["CPUExecutionProvider"])
                         for name in self.manifest["segments"]]
        # A segment whose layer drops no tokens has no use for the lengths: the exporter leaves
        # such inputs out of its graph, so each session is fed only the inputs it declares.
        self.inputs = [{i.name for i in s.get_inputs()} for s in self.sessions]
        self.one = None  # batch 1, entropy: the segments joined into one graph with If nodes
        name = self.manifest.get("one_graph")
        if one_graph and name and (self.folder / name).is_file():
            self.one = ort.InferenceSession(str(self.folder / name), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
            self.one_inputs = {i.name for i in self.one.get_inputs()}

    @property
    def num_exits(self):
        return len(self.sessions)

    def run(self, input_ids, attention_mask, token_type_ids, segment_ms=None):
        """Logits (B, C) of each input at its exit, and the exit (B,) it left at (0-based).

        ``segment_ms``: a list to which the wall time of each segment call is appended (ms)."""
        B, T = input_ids.shape
        if self.one is not None and B == 1 and self.criterion == "entropy" and segment_ms is None:
            feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                    "threshold": np.array(self.threshold, dtype=np.float32)}
            logits, exit_ = self.one.run(None, {k: v for k, v in feed.items() if k in self.one_inputs})
            return logits, np.asarray(exit_, dtype=np.int64).reshape(1)
        lengths = attention_mask.sum(1).astype(np.int64)  # (B,) tokens per input, at the input
        total = np.array([T], dtype=np.int64)  # the input's padded length (token retention is a share of it)
        out = np.zeros((B, self.manifest["num_labels"]), dtype=np.float32)
        exits = np.full(B, self.num_exits - 1, dtype=np.int64)
        rows = np.arange(B)  # the inputs still in the batch
        prev = np.full(B, -1, dtype=np.int64)  # patience: the previous exit's prediction
        same = np.zeros(B, dtype=np.int64)  # patience: exits in a row that agreed
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        for j, session in enumerate(self.sessions):
            t0 = time.perf_counter()
            hidden, mask, logits = session.run(None, {k: v for k, v in feed.items() if k in self.inputs[j]})
            if segment_ms is not None:
                segment_ms.append((time.perf_counter() - t0) * 1e3)
            if j == self.num_exits - 1:
                done = np.ones(len(rows), dtype=bool)
            elif self.criterion == "entropy":
                done = normalized_entropy(logits) < self.threshold
            else:
                pred = logits.argmax(-1)
                same = np.where(pred == prev, same + 1, 0) if j > 0 else same
                prev = pred
                done = same >= self.threshold
            out[rows[done]] = logits[done]
            exits[rows[done]] = j
            if done.all():
                break
            go = ~done
            rows, prev, same, lengths = rows[go], prev[go], same[go], lengths[go]
            feed = {"hidden_in": hidden[go], "mask_in": mask[go], "lengths": lengths, "total": total}
        return out, exits


def _tokenize(folder, texts):
    """int64 (B, T) input_ids, attention_mask, token_type_ids for ``texts`` with the folder's tokenizer."""
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(Path(folder) / "tokenizer"))
        enc = tok(texts, padding=True, truncation=True, max_length=manifest["max_length"], return_tensors="np")
        ids, mask = enc["input_ids"], enc["attention_mask"]
    except ImportError:
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(Path(folder) / "tokenizer" / "tokenizer.json"))
        fast.enable_truncation(manifest["max_length"])
        fast.enable_padding()
        encs = fast.encode_batch(texts)
        ids = np.array([e.ids for e in encs])
        mask = np.array([e.attention_mask for e in encs])
    ids, mask = ids.astype(np.int64), mask.astype(np.int64)
    return ids, mask, np.zeros_like(ids)


def main(argv):
    if len(argv) < 2:
        print('usage: python3 exit_runner.py FOLDER "text" ["text" ...]', file=sys.stderr)
        return 2
    model = EarlyExitModel(argv[0])
    logits, exits = model.run(*_tokenize(argv[0], argv[1:]))
    for text, row, j in zip(argv[1:], logits, exits):  # noqa: B905 (Python 3.8 on a device has no strict=)
        print(f"label {int(row.argmax())}  exit {int(j) + 1}/{model.num_exits}  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
