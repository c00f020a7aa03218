#!/usr/bin/env python3
"""hwnas measurement kit: times the ONNX models of this folder on the device it runs on.

Needs only Python 3.8+, numpy and the kit's runtime: onnxruntime, or openvino for a kit
written for an OpenVINO device (its CPU plugin, in fp32). Run it on the target device from
the kit folder (the one with manifest.json):

    python3 measure_kit.py                 # writes results.csv next to it
    python3 measure_kit.py --out my.csv --threads 4

It resumes: models already in the output CSV are skipped (a CSV of another kit, or timed with
other threads, is refused: move it aside). Bring the CSV back and run
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

FIELDS = [
    "device", "kind", "note", "arch_key", "arch_json", "batch", "regime", "length", "calls", "threads", "warmup",
    "repeats", "lat_median_ms", "lat_p90_ms", "lat_p99_ms", "lat_mean_ms", "lat_min_ms", "lat_iqr_ms", "lat_cv",
    "outliers",
    "runtime", "runtime_version", "host", "cpu", "timestamp", "error", "kit_id",
]


def refuse(message):
    """Bad input: one line, exit status 2."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def now():
    # timezone.utc, not datetime.UTC: the device may run Python older than 3.11.
    return datetime.now(timezone.utc).isoformat(timespec="seconds")  # noqa: UP017


def stats(samples, drop_outliers=True):
    # As latency/measure.py's summarize: outliers dropped for the median, minimum and spread
    # only; p90, p99 and the mean keep every call.
    x = np.asarray(samples, dtype=float)
    q1, q3 = np.percentile(x, [25, 75])
    k = x[x <= q3 + 3 * (q3 - q1)] if drop_outliers else x
    return {
        "lat_median_ms": float(np.median(k)), "lat_p90_ms": float(np.percentile(x, 90)),
        "lat_p99_ms": float(np.percentile(x, 99)),
        "lat_mean_ms": float(x.mean()), "lat_min_ms": float(k.min()),
        "lat_iqr_ms": float(np.subtract(*np.percentile(k, [75, 25]))),
        "lat_cv": float(k.std() / k.mean()), "outliers": int(x.size - k.size),
    }


class OpenVinoSession:
    """What this script uses of an onnxruntime session (``run``, ``get_inputs``), on OpenVINO's
    CPU plugin: fp32 (not bf16 where the CPU has it), the latency hint, ``threads`` threads,
    not pinned to cores (as ONNX Runtime's are not)."""

    def __init__(self, path, threads):
        import openvino as ov

        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                  "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0", "ENABLE_CPU_PINNING": "NO",
                  "INFERENCE_NUM_THREADS": str(threads)}
        self.compiled = core.compile_model(core.read_model(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)

    def get_inputs(self):
        return [argparse.Namespace(name=p.get_any_name()) for p in self.compiled.inputs]

    def run(self, outputs, feeds):
        return [self.request.infer(feeds, share_inputs=True)[self.output]]


def runtime_module(runtime):
    if runtime not in ("onnxruntime", "openvino"):
        refuse(f"this kit's runtime {runtime!r} is not onnxruntime or openvino")
    try:
        return __import__(runtime)
    except ImportError:
        refuse(f"this kit is timed with {runtime}: pip install {runtime}")


def session(path, threads, runtime="onnxruntime"):
    if runtime == "openvino":
        return OpenVinoSession(path, threads)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning intra-op threads slow down the next session timed on the same device.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def inputs_of(sess, workload):
    """The workload's feeds cut to the inputs this graph takes (DistilBERT: no token types)."""
    names = [i.name for i in sess.get_inputs()]
    regime, length, data = workload
    if regime == "traffic":
        return regime, length, [{k: f[k] for k in names} for f in data]
    return regime, length, {k: data[k] for k in names}


def time_session(sess, feeds, warmup, repeats):
    for _ in range(warmup):
        sess.run(["logits"], feeds)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(["logits"], feeds)
        out.append((time.perf_counter() - t0) * 1000.0)
    return stats(out)


def time_traffic(sess, calls, warmup):
    """Real traffic: each call's inputs in order, after warm-up calls; every call kept."""
    for i in range(warmup):
        sess.run(["logits"], calls[i % len(calls)])
    out = []
    for feeds in calls:
        t0 = time.perf_counter()
        sess.run(["logits"], feeds)
        out.append((time.perf_counter() - t0) * 1000.0)
    return stats(out, drop_outliers=False)


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
    p.add_argument("--threads", type=int, default=None, help="intra-op threads, at least 1 (default: the manifest's)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first, at least 0 (default: the manifest's)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls, at least 3 (default: the manifest's)")
    a = p.parse_args(argv)
    for name, value, least in (("threads", a.threads, 1), ("warmup", a.warmup, 0), ("repeats", a.repeats, 3)):
        if value is not None and value < least:
            refuse(f"--{name} must be at least {least}, got {value}")
    with open(os.path.join(here, "manifest.json")) as f:
        man = json.load(f)
    threads = a.threads or man.get("threads") or os.cpu_count() or 1
    warmup = man["warmup"] if a.warmup is None else a.warmup
    repeats = man["repeats"] if a.repeats is None else a.repeats
    runtime = man.get("runtime", "onnxruntime")  # kits written before OpenVINO: onnxruntime
    runtime_module(runtime)  # a missing runtime is one line, before any row is written
    # What each model is timed on: ("fixed", length, inputs) repeated, or ("traffic", median
    # length, [inputs of each call]) replayed call by call.
    workloads: list = [("fixed", int(L), dict(np.load(os.path.join(here, f)))) for L, f in sorted(man["inputs"].items())]
    if man.get("traffic"):
        t = man["traffic"]
        arrays = np.load(os.path.join(here, t["file"]))
        calls = [{k: arrays[f"{k}_{i}"] for k in ("input_ids", "attention_mask", "token_type_ids")}
                 for i in range(t["calls"])]
        workloads.insert(0, ("traffic", int(t["length"]), calls))

    def timed(sess, workload):
        regime, _, data = inputs_of(sess, workload)
        if regime == "traffic":
            return {**time_traffic(sess, data, warmup), "calls": len(data)}
        return {**time_session(sess, data, warmup, repeats), "calls": repeats}

    done = set()
    if os.path.exists(a.out):
        _cut_torn_tail(a.out)
        with open(a.out) as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        if reader.fieldnames and list(reader.fieldnames) != FIELDS:
            refuse(f"{a.out} was written by another version of this script: move it aside (or give --out)")
        other = {r["kit_id"] for r in rows} - {man.get("kit_id", "")}
        if other:
            refuse(f"{a.out} holds timings of another kit ({sorted(other)}; this one is "
                   f"{man.get('kit_id')}): move it aside (or give --out) to time this kit")
        seen = {int(r["threads"]) for r in rows if r.get("kind") == "sample" and r.get("threads")}
        if seen - {int(threads)}:
            refuse(f"{a.out} holds timings with {sorted(seen)} thread(s), here {threads}: resume with "
                   f"--threads {sorted(seen)[0]}, or give --out to start another file")
        done = {(r["arch_key"], r.get("regime") or "fixed", r["length"]) for r in rows if r.get("kind") == "sample"}
    new = not os.path.exists(a.out) or os.path.getsize(a.out) == 0
    base = {"device": man["device"], "batch": man["batch"], "threads": threads, "warmup": warmup,
            "repeats": repeats, "runtime": runtime, "runtime_version": runtime_module(runtime).__version__,
            "host": socket.gethostname(), "cpu": platform.processor() or platform.machine(),
            "kit_id": man.get("kit_id", "")}
    ref = session(os.path.join(here, man["reference"]["file"]), threads, runtime)
    with open(a.out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        if new:
            w.writeheader()

        def write(model, kind, result, workload, error=""):
            row = {**base, **result, "kind": kind, "note": "", "arch_key": model["arch_key"],
                   "arch_json": model["arch_json"], "regime": workload[0], "length": workload[1], "error": error,
                   "timestamp": now()}
            w.writerow(row)
            f.flush()
            os.fsync(f.fileno())

        def reference():
            for wl in workloads:
                write(man["reference"], "reference", timed(ref, wl), wl)

        reference()
        todo = [m for m in man["models"] if any((m["arch_key"], wl[0], str(wl[1])) not in done for wl in workloads)]
        for j, model in enumerate(todo):
            if j and j % man.get("reference_every", 20) == 0:
                reference()
            try:
                sess = session(os.path.join(here, model["file"]), threads, runtime)
                results = [(wl, timed(sess, wl)) for wl in workloads]
                for wl, result in results:  # all workloads timed before any row is written
                    write(model, "sample", result, wl)
            except Exception as e:  # a failure is a row, not the end of the run
                for wl in workloads:
                    write(model, "sample", {}, wl, error=f"{type(e).__name__}: {e}"[:300])
            print(f"[{j + 1}/{len(todo)}] {model['arch_key']}", file=sys.stderr)
        reference()
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
