"""Is our full-model ONNX export as fast as the stock model a user would deploy?

For a trained run: our export of the supernet's largest sub-network, the same graph after ONNX
Runtime's offline transformer optimizer, and the stock deployments (`latency/baselines.py`:
the teacher as a stock BERT in ONNX, ORT-optimized, INT8), timed in turn on the run's real
traffic (the device's p50 per call), `--repeats` times with 3 interleaved rounds each. Prints
each repeat and the median ratio of every deployment to the fastest stock fp32 one (above 1:
slower), so the noise between repeats is visible next to the difference.

    .venv/bin/python scripts/stock_check.py runs/main [--device cpu] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from latency.baselines import FP32_STOCK, compare_deployments, onnx_logits, stock_models
from latency.onnx_export import export_onnx
from latency.target import Target, target_timer
from latency.workflow import resolve_device
from supernet.errors import HwnasError
from supernet.extract import extract
from supernet.workflow import open_run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        run = open_run(a.run)
        profile = resolve_device(run.folder, a.device)
    except HwnasError as e:  # not a run folder, or an unknown device: one line, status 2
        print(f"stock_check: error: {e}", file=sys.stderr)
        return 2
    stock = stock_models(run, batch=profile.batch)
    with tempfile.TemporaryDirectory(prefix="hwnas-stock-check-") as tmp:
        ours = export_onnx(extract(run.supernet, run.space.largest()), Path(tmp) / "ours-full.onnx")
        opt = optimize_model(str(ours), model_type="bert", num_heads=0, hidden_size=0)
        print("offline optimizer on our graph fused:",
              {k: v for k, v in opt.get_fused_operator_statistics().items() if v})
        opt_path = Path(tmp) / "ours-full-opt.onnx"
        opt.save_model_to_file(str(opt_path))
        diff = np.abs(onnx_logits(ours, run.splits["dev"]) - onnx_logits(opt_path, run.splits["dev"])).max()
        print(f"optimized vs not: max logit difference on dev {diff:.2g}")
        paths = {**{n: v["path"] for n, v in stock.items()}, "ours-full": ours, "ours-full-opt": opt_path}
        target = Target.of(run, profile)
        ratios: dict[str, list[float]] = {n: [] for n in paths}
        with target_timer(run, target) as timer:
            for i in range(a.repeats):
                got = {n: t["p50_ms"] for n, t in compare_deployments(timer, paths, rounds=3).items()}
                fastest = min(got[n] for n in FP32_STOCK)
                for n in paths:
                    ratios[n].append(got[n] / fastest)
                print(f"repeat {i + 1}: " + ", ".join(f"{n} {ms:.3f}" for n, ms in got.items()) + " ms")
    print(f"{target.describe()} on {a.device}; median over {a.repeats} repeats of latency / fastest stock fp32 "
          "(min..max):")
    for n, r in ratios.items():
        print(f"  {n:<14} {np.median(r):.3f}  ({min(r):.3f}..{max(r):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
