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

Timing on the device it runs on (the measurement kit's part for early exit): ``python3
exit_runner.py FOLDER --time`` serves the inputs of ``FOLDER/timing_inputs.npz`` (token ids
hwnas wrote there: the first test inputs of the run) one by one at the folder's policy,
``--rounds`` rounds after a warm-up, and writes ``timing.json`` (p50 / mean / p90 per call, the
medians over rounds, the exits taken, the host and runtime) to compare with ``report.json``'s
``early_exit.measured_test`` and the search's prediction.

This file is deliberately standalone (no hwnas import), so its few policy lines repeat
supernet/exits.py's on purpose (hwnas times its runners with ``EarlyExitModel.serve``, the
loop ``--time`` uses); tests/test_early_exit.py holds them to the same answers.
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

    def serve(self, feeds, warmup=10):
        """Each feed ``(input_ids, attention_mask, token_type_ids)`` alone, in order, after
        ``warmup`` untimed calls: the ms of each call and the exit each input took (arrays)."""
        for f in feeds[:warmup]:
            self.run(*f)
        ms, exits = [], []
        for f in feeds:
            t0 = time.perf_counter()
            _, e = self.run(*f)
            ms.append((time.perf_counter() - t0) * 1e3)
            exits.append(int(e[0]))
        return np.asarray(ms), np.asarray(exits, dtype=np.int64)

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
        ids, mask, types = enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")
    except ImportError:
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(Path(folder) / "tokenizer" / "tokenizer.json"))
        fast.enable_truncation(manifest["max_length"])
        fast.enable_padding()
        encs = fast.encode_batch(texts)
        ids = np.array([e.ids for e in encs])
        mask = np.array([e.attention_mask for e in encs])
        types = np.array([e.type_ids for e in encs])
    ids, mask = ids.astype(np.int64), mask.astype(np.int64)
    return ids, mask, np.zeros_like(ids) if types is None else np.asarray(types, dtype=np.int64)


def time_inputs(model, ids_list, rounds=3, warmup=10, types_list=None):
    """``model`` serving each token-id row of ``ids_list`` alone (batch 1; ``types_list``: their
    token types, zeros if None), ``rounds`` rounds after ``warmup`` calls: the medians over rounds
    of the per-call p50 / mean / p90 (ms), and the share of inputs leaving at each exit."""
    types_list = types_list if types_list is not None else [np.zeros_like(ids) for ids in ids_list]
    feeds = [(ids[None], np.ones_like(ids)[None], t[None]) for ids, t in zip(ids_list, types_list)]  # noqa: B905 (Python 3.8 on a device)
    per_round = []
    exits = np.zeros(0, dtype=np.int64)
    for r in range(rounds):
        x, exits = model.serve(feeds, warmup=warmup if r == 0 else 0)  # warmed up once, before the first
        per_round.append({"p50_ms": float(np.percentile(x, 50)), "mean_ms": float(x.mean()),
                          "p90_ms": float(np.percentile(x, 90))})
    hist = np.bincount(exits, minlength=model.num_exits) / max(len(exits), 1)
    out = {k: float(np.median([r[k] for r in per_round])) for k in ("p50_ms", "mean_ms", "p90_ms")}  # type: dict
    out.update({"rounds": per_round, "exit_histogram": [round(float(v), 4) for v in hist], "inputs": len(feeds)})
    return out


def _time_command(args):
    import argparse
    import platform
    import socket

    p = argparse.ArgumentParser(prog="exit_runner.py FOLDER --time")
    p.add_argument("--inputs", help="NPZ of token ids (default FOLDER/timing_inputs.npz)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: one per core)")
    p.add_argument("--out", help="JSON file to write (default FOLDER/timing.json)")
    a = p.parse_args(args[1:])
    folder = Path(args[0])
    path = Path(a.inputs) if a.inputs else folder / "timing_inputs.npz"
    if a.rounds < 1 or (a.threads is not None and a.threads < 0):
        print("--rounds must be at least 1 and --threads at least 0", file=sys.stderr)
        return 2
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, offsets = z["ids"].astype(np.int64), z["offsets"].astype(np.int64)
            types = z["types"].astype(np.int64) if "types" in z.files else np.zeros_like(ids)  # older kits: none
    except (OSError, KeyError, ValueError) as e:
        print(f"{path}: not a timing-inputs file ({type(e).__name__}: {e}); give one hwnas wrote "
              "(timing_inputs.npz in the runner folder) or --inputs FILE", file=sys.stderr)
        return 2
    try:
        model = EarlyExitModel(folder, threads=a.threads)
    except (OSError, ValueError, KeyError) as e:
        print(f"{folder}: not an exported early-exit runner ({type(e).__name__}: {e}); give the runner folder "
              "(the one with manifest.json)", file=sys.stderr)
        return 2
    spans = [slice(offsets[i], offsets[i + 1]) for i in range(len(offsets) - 1)]
    import onnxruntime as ort

    result = time_inputs(model, [ids[s] for s in spans], rounds=a.rounds, types_list=[types[s] for s in spans])
    result.update({
        "criterion": model.criterion, "threshold": model.threshold, "threads": a.threads,
        "batch1_runtime": "one_graph" if model.one is not None and model.criterion == "entropy" else "segments",
        "host": socket.gethostname(), "machine": platform.machine(), "processor": platform.processor(),
        "runtime": "onnxruntime " + ort.__version__, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    out = Path(a.out) if a.out else folder / "timing.json"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)  # written whole or not at all
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))
    print(f"wrote {out}")
    return 0


def main(argv):
    if len(argv) >= 2 and argv[1] == "--time":
        return _time_command([argv[0], *argv[2:]])
    if len(argv) < 2:
        print('usage: python3 exit_runner.py FOLDER "text" ["text" ...]  |  FOLDER --time [--rounds 3] '
              '[--threads N] [--inputs NPZ] [--out JSON]', file=sys.stderr)
        return 2
    model = EarlyExitModel(argv[0])
    logits, exits = model.run(*_tokenize(argv[0], argv[1:]))
    for text, row, j in zip(argv[1:], logits, exits):  # noqa: B905 (Python 3.8 on a device has no strict=)
        print(f"label {int(row.argmax())}  exit {int(j) + 1}/{model.num_exits}  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
