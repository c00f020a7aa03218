#!/usr/bin/env python3
"""hwnas measurement kit: times the ONNX models of this folder on the device it runs on.

Needs only Python 3.8+, numpy and onnxruntime. Run it on the target device from the kit
folder (the one with manifest.json):

    python3 measure_kit.py                 # writes results.csv next to it
    python3 measure_kit.py --out my.csv --threads 4

It resumes: models already in the output CSV are skipped. Bring the CSV back and run
``hwnas measure --run RUN --device NAME --import results.csv``.

This file is deliberately standalone (no hwnas import), so its few statistics lines repeat
latency/measure.py's on purpose.
"""

import argparse
import csv
import json
import os
import platform
import socket
import sys
import time
from datetime import datetime, timezone

import numpy as np
import onnxruntime as ort

FIELDS = [
    "device", "kind", "note", "arch_key", "arch_json", "batch", "length", "threads", "warmup", "repeats",
    "lat_median_ms", "lat_p90_ms", "lat_mean_ms", "lat_min_ms", "lat_iqr_ms", "lat_cv", "outliers",
    "runtime", "runtime_version", "host", "cpu", "timestamp", "error",
]


def now():
    # timezone.utc, not datetime.UTC: the device may run Python older than 3.11.
    return datetime.now(timezone.utc).isoformat(timespec="seconds")  # noqa: UP017


def stats(samples):
    x = np.asarray(samples, dtype=float)
    q1, q3 = np.percentile(x, [25, 75])
    k = x[x <= q3 + 3 * (q3 - q1)]
    return {
        "lat_median_ms": float(np.median(k)), "lat_p90_ms": float(np.percentile(k, 90)),
        "lat_mean_ms": float(k.mean()), "lat_min_ms": float(k.min()),
        "lat_iqr_ms": float(np.subtract(*np.percentile(k, [75, 25]))),
        "lat_cv": float(k.std() / k.mean()), "outliers": int(x.size - k.size),
    }


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning intra-op threads slow down the next session timed on the same device.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def time_session(sess, feeds, warmup, repeats):
    for _ in range(warmup):
        sess.run(["logits"], feeds)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(["logits"], feeds)
        out.append((time.perf_counter() - t0) * 1000.0)
    return stats(out)


def _cut_torn_tail(path):
    """Drop a half-written last line (a crash mid-write) so that appends stay parseable."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description="Time this kit's ONNX models on this device.")
    p.add_argument("--out", default=os.path.join(here, "results.csv"))
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the manifest's)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    a = p.parse_args(argv)
    with open(os.path.join(here, "manifest.json")) as f:
        man = json.load(f)
    threads = a.threads or man.get("threads") or os.cpu_count() or 1
    warmup = man["warmup"] if a.warmup is None else a.warmup
    repeats = man["repeats"] if a.repeats is None else a.repeats
    inputs = {int(L): dict(np.load(os.path.join(here, f))) for L, f in man["inputs"].items()}
    done = set()
    if os.path.exists(a.out):
        _cut_torn_tail(a.out)
        with open(a.out) as f:
            done = {(r["arch_key"], r["length"]) for r in csv.DictReader(f) if r.get("kind") == "sample"}
    new = not os.path.exists(a.out) or os.path.getsize(a.out) == 0
    base = {"device": man["device"], "batch": man["batch"], "threads": threads, "warmup": warmup,
            "repeats": repeats, "runtime": "onnxruntime", "runtime_version": ort.__version__,
            "host": socket.gethostname(), "cpu": platform.processor() or platform.machine()}
    ref = session(os.path.join(here, man["reference"]["file"]), threads)
    with open(a.out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        if new:
            w.writeheader()

        def write(model, kind, result, length, error=""):
            row = {**base, **result, "kind": kind, "note": "", "arch_key": model["arch_key"],
                   "arch_json": model["arch_json"], "length": length, "error": error,
                   "timestamp": now()}
            w.writerow(row)
            f.flush()
            os.fsync(f.fileno())

        def reference():
            for L, feeds in sorted(inputs.items()):
                write(man["reference"], "reference", time_session(ref, feeds, warmup, repeats), L)

        reference()
        todo = [m for m in man["models"] if any((m["arch_key"], str(L)) not in done for L in inputs)]
        for j, model in enumerate(todo):
            if j and j % man.get("reference_every", 20) == 0:
                reference()
            try:
                sess = session(os.path.join(here, model["file"]), threads)
                results = {L: time_session(sess, feeds, warmup, repeats) for L, feeds in sorted(inputs.items())}
                for L, result in results.items():  # all lengths timed before any row is written
                    write(model, "sample", result, L)
            except Exception as e:  # a failure is a row, not the end of the run
                for L in sorted(inputs):
                    write(model, "sample", {}, L, error=f"{type(e).__name__}: {e}"[:300])
            print(f"[{j + 1}/{len(todo)}] {model['arch_key']}", file=sys.stderr)
        reference()
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
