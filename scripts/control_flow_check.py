"""Early exit at batch 1: the exported segments and their runner against one ONNX graph whose
exits are ``If`` nodes (``latency.early_exit.one_graph_with_exits``), timed in turn.

For each folder written by ``hwnas early-exit --budget-ms B`` (or ``--speedup S``) inside a run
(``RUN/early_exit/NAME``), with the entropy criterion: the chosen runner's segments are joined
into ``FOLDER/runner/one_graph.onnx``; both serve the first ``--n`` test inputs of the run one by
one (batch 1) at the runner's policy, ``--rounds`` rounds in turn, with the threads the search
timed with. Checks that both give every input the same exit and logits (within 1e-4), then
prints and writes one row per folder (``--out``, CSV): p50 / mean / p90 per call of each and
one graph over segments.

    .venv/bin/python scripts/control_flow_check.py runs/bench/rt/early_exit/cpu_2x \\
        runs/bench/rt/early_exit/cpu_4x --out results/early_exit_control_flow.csv
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python scripts/...`
from latency.early_exit import (  # noqa: E402
    FIRST_INPUTS,
    load_runner,
    one_graph_with_exits,
    single_inputs,
    time_early_exit,
)
from latency.onnx_export import ort_session  # noqa: E402
from supernet.io import write_csv  # noqa: E402
from supernet.workflow import open_run  # noqa: E402


def time_one_graph(session: Any, inputs: list[tuple[np.ndarray, ...]], threshold: float,
                   warmup: int = 10) -> dict[str, Any]:
    """The one graph serving ``inputs`` one by one: per-call ms (mean, p50, p90), each input's
    exit and logits."""
    names = {i.name for i in session.get_inputs()}
    thr = np.array(threshold, dtype=np.float32)
    feeds = [{**{k: v for k, v in zip(FIRST_INPUTS, x, strict=True) if k in names}, "threshold": thr} for x in inputs]
    for f in feeds[:warmup]:
        session.run(None, f)
    ms, exits, logits = [], [], []
    for f in feeds:
        t0 = time.perf_counter()
        lg, ex = session.run(None, f)
        ms.append((time.perf_counter() - t0) * 1e3)
        exits.append(int(ex))
        logits.append(lg[0])
    x = np.asarray(ms)
    return {"mean_ms": float(x.mean()), "p50_ms": float(np.percentile(x, 50)), "p90_ms": float(np.percentile(x, 90)),
            "exits": np.asarray(exits), "logits": np.asarray(logits)}


def check(folder: Path, n: int, rounds: int) -> dict[str, Any]:
    report = json.loads((folder / "report.json").read_text())
    run = open_run(folder.parent.parent)
    runner_dir = folder / "runner"
    threads = report["timing"].get("threads")
    runner = load_runner(runner_dir, threads=threads, one_graph=False)  # the segments, whatever the batch
    if runner.criterion != "entropy":
        raise SystemExit(f"{folder}: the runner's criterion is {runner.criterion}; the one graph is for entropy")
    session = ort_session(one_graph_with_exits(runner_dir), threads=threads)
    inputs = single_inputs(run.splits["test"], n)
    expected = [runner.run(*x) for x in inputs]
    seg, one = [], []
    for _ in range(rounds):
        seg.append(time_early_exit(runner, inputs))
        one.append(time_one_graph(session, inputs, runner.threshold))
    same_exit = float(np.mean([int(e[0]) == x for (_, e), x in zip(expected, one[-1]["exits"], strict=True)]))
    diff = float(max(np.abs(lg[0] - x).max() for (lg, _), x in zip(expected, one[-1]["logits"], strict=True)))
    med = {name: {k: float(np.median([r[k] for r in rs])) for k in ("mean_ms", "p50_ms", "p90_ms")}
           for name, rs in (("segments", seg), ("one_graph", one))}
    row = {"folder": str(folder), "device": report["search"]["device"], "threads": threads,
           "policy": f"entropy {runner.threshold:g}", "test_inputs": len(inputs), "rounds": rounds,
           "same_exit": same_exit, "max_logit_diff": diff}
    for name, m in med.items():
        row.update({f"{name}_{k}": v for k, v in m.items()})
    for k in ("p50_ms", "mean_ms", "p90_ms"):
        row[f"one_graph_over_segments_{k.removesuffix('_ms')}"] = med["one_graph"][k] / med["segments"][k]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="`hwnas early-exit` search folders inside a run (RUN/early_exit/NAME)")
    p.add_argument("--n", type=int, default=300, help="test inputs served (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, segments and one graph in turn (default: %(default)s)")
    p.add_argument("--out", required=True, help="CSV file to write")
    a = p.parse_args(argv)
    if a.n < 1 or a.rounds < 1:
        print(f"--n and --rounds must be at least 1, got {a.n} and {a.rounds}", file=sys.stderr)
        return 2
    for f in map(Path, a.folders):
        if not (f / "report.json").is_file() or not (f / "runner" / "manifest.json").is_file() \
                or not (f.parent.parent / "run.json").is_file():
            print(f"{f}: not an `hwnas early-exit` search folder inside a run (RUN/early_exit/NAME with report.json "
                  "and runner/)", file=sys.stderr)
            return 2
    rows = [check(Path(f), a.n, a.rounds) for f in a.folders]
    table = pd.DataFrame(rows)
    write_csv(Path(a.out), table)
    cols = ["folder", "same_exit", "max_logit_diff", "segments_p50_ms", "one_graph_p50_ms", "one_graph_over_segments_p50",
            "segments_mean_ms", "one_graph_mean_ms", "one_graph_over_segments_mean"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
