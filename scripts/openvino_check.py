"""OpenVINO against ONNX Runtime on the bundled all-MiniLM-L6-v2, the same ONNX graphs.

Two graphs of the bundled model (a new seeded two-label head): ``stock-fp32``, the standard
``torch.onnx.export`` of the transformers model (``latency.baselines.export_stock_onnx``), and
``ours-full``, our export of the same model (``latency.onnx_export.export_onnx``). Each is run
by ONNX Runtime (the ``cpu`` profile) and by OpenVINO (``cpu-openvino``: its CPU plugin in
fp32), both with all cores, serving the same real traffic (rt dev sentences at their own
lengths, batch 1), timed call by call in interleaved rounds (``DeviceTimer.compare``), then
one input of the traffic's median length repeated (``fixed``: every call the same shape, which
separates a runtime's cost of meeting new shapes from its arithmetic). Prints each runner's
p50 / p90 per call, OpenVINO's speed-up over ONNX Runtime per graph and workload, and the
largest logit difference between the two runtimes on the traffic. ``--pinned`` also
times OpenVINO with its threads pinned to cores (its own default; the profile does not pin).

    .venv/bin/python scripts/openvino_check.py [--calls 64] [--rounds 5] [--pinned]

On a shared machine the figures are rough: say so where you quote them.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=64, help="traffic calls (dev sentences, batch 1)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--pinned", action="store_true", help="also time OpenVINO with its threads pinned to cores")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger().setLevel(logging.ERROR)

    from latency.baselines import export_stock_onnx
    from latency.devices import get_device
    from latency.measure import (
        DeviceTimer,
        fixed_inputs,
        open_onnx_runner,
        runtime_version,
        traffic_inputs,
    )
    from latency.onnx_export import export_onnx, ov_compiled, ov_runner
    from supernet.checkpoint import load_pretrained
    from supernet.data import encode
    from supernet.tasks import load_task

    model, tok = load_pretrained(None, num_labels=2, seed=0)
    model.eval()
    dev = encode(tok, load_task("rt", seed=0).dev, max_length=128)
    work = traffic_inputs(dev, 1, a.calls, seed=0)
    fixed = fixed_inputs(dev, 1, work.length, seed=0)
    ort, ov = get_device("cpu"), get_device("cpu-openvino")
    with tempfile.TemporaryDirectory(prefix="hwnas-ovcheck-") as tmp:
        graphs = {"stock-fp32": export_stock_onnx(model, Path(tmp) / "stock-fp32.onnx"),
                  "ours-full": export_onnx(model, Path(tmp) / "ours-full.onnx")}
        runners = {(g, prof.runtime): open_onnx_runner(prof, path) for g, path in graphs.items() for prof in (ort, ov)}
        if a.pinned:
            for g, path in graphs.items():
                runners[(g, "openvino-pinned")] = ov_runner(ov_compiled(path, ov.effective_threads, pin_threads=True))
        worst = {g: max(float(np.abs(runners[(g, "openvino")](f)[0] - runners[(g, "onnxruntime")](f)[0]).max())
                        for f in work.feeds) for g in graphs}
        with DeviceTimer(ort, model, [work, fixed]) as timer:
            timed = {w.regime: timer.compare(runners, rounds=a.rounds, workload=w) for w in (work, fixed)}
    print(f"all-MiniLM-L6-v2, rt dev traffic: {a.calls} calls, batch 1, median length {work.length} tokens "
          f"(fixed: one input of {fixed.length} tokens, repeated {ort.repeats} times); {a.rounds} interleaved rounds; "
          f"{os.cpu_count()} cores; onnxruntime {runtime_version('onnxruntime')}, openvino {runtime_version('openvino')}")
    print(f"{'workload':<9} {'graph':<11} {'runtime':<16} {'p50 ms':>8} {'p90 ms':>8}")
    for regime, rows in timed.items():
        for (g, rt), t in rows.items():
            print(f"{regime:<9} {g:<11} {rt:<16} {t.median_ms:8.3f} {t.p90_ms:8.3f}")
    for regime, rows in timed.items():
        for g in graphs:
            x = rows[(g, "onnxruntime")].median_ms / rows[(g, "openvino")].median_ms
            print(f"{regime} {g}: OpenVINO {x:.2f}x ONNX Runtime's speed (p50)")
    for g in graphs:
        print(f"{g}: OpenVINO's logits differ from ONNX Runtime's by at most {worst[g]:.2g} on the traffic")


if __name__ == "__main__":
    main()
