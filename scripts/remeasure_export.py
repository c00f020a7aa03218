"""An independent re-measurement of an export's speed-ups, on sentences its report never saw.

The export's ``report.json`` times its model beside the stock deployments on the run's dev
traffic sample. This script takes the written ``model.onnx`` and the run's stock graphs
(``RUN/baselines/``) and times them again on **test** sentences (a seeded sample, their own
lengths, the report's batch size), each model serving the whole sample in turn, ``--rounds``
rounds in a different order each round; per model the median over rounds of the per-call
statistic the budget used. It prints both sets of speed-ups and their ratio: the issue's
target is that they agree within +-10%.

    .venv/bin/python scripts/remeasure_export.py runs/main/export/cpu_4.218ms [--calls 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from latency.baselines import FP32_STOCK, STOCK, stock_models
from latency.devices import get_device
from latency.measure import open_onnx_runner, summarize, time_calls, traffic_inputs
from supernet.workflow import open_run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export", help="an export folder (RUN/export/<device>_<budget>ms)")
    p.add_argument("--calls", type=int, default=64, help="test sentences (calls of the report's batch) per model")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    export = Path(a.export)
    report = json.loads((export / "report.json").read_text())
    run = open_run(export.parents[1])
    profile = get_device(report["device"])
    stat = report["budget_stat"]
    paths = {**{n: v["path"] for n, v in stock_models(run, batch=report["batch"]).items()},
             "ours": str(export / "model.onnx")}
    sessions = {n: open_onnx_runner(profile, path) for n, path in paths.items()}  # ONNX Runtime or OpenVINO
    work = traffic_inputs(run.splits["test"], report["batch"], a.calls, seed=a.seed)
    rng = np.random.default_rng(a.seed)
    per: dict[str, list[float]] = {n: [] for n in sessions}
    for _ in range(a.rounds):
        for name in rng.permutation(list(sessions)):
            t = time_calls(sessions[str(name)], work.feeds, profile.warmup)
            per[str(name)].append(t.stat(stat))
    ms = {n: float(np.median(v)) for n, v in per.items()}
    spread = {n: summarize(v, drop_outliers=False) for n, v in per.items()}
    fastest = min(FP32_STOCK, key=lambda n: ms[n])
    now = {"vs_fastest_stock_fp32": ms[fastest] / ms["ours"], "vs_stock_int8": ms["stock-int8"] / ms["ours"]}
    sp = report["speedup_vs_stock"] or {}
    then = {"vs_fastest_stock_fp32": sp.get("ours_vs_fastest_stock_fp32"), "vs_stock_int8": sp.get("ours_vs_stock_int8")}
    print(f"{export}: {report['arch']} ({report.get('precision', 'fp32')}), {stat} per call of batch {report['batch']}, "
          f"{a.calls} test sentences served in turn, {a.rounds} rounds ({profile.name}, "
          f"{profile.effective_threads} threads)")
    for n in [*STOCK, "ours"]:
        r = spread[n]
        print(f"  {n:<11} {ms[n]:7.3f} ms  (rounds {r.min_ms:.3f} .. {max(per[n]):.3f})")
    for k in now:
        agree = f"{now[k] / then[k]:.3f}" if then[k] else "n/a"
        print(f"  speed-up {k}: {now[k]:.2f}x now, {then[k] or float('nan'):.2f}x in report.json -> ratio {agree}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
