"""Supernet training steps per second with 1 and with N data-parallel processes on this machine.

    python scripts/parallel_speed.py [--nproc 2] [--max-train 320] [--rounds 1] [--model minilm] [--out DIR]

Trains the same short run (teacher: one step; supernet: one epoch of ``--max-train``
examples, batch 32) with ``hwnas train --nproc 1`` and ``--nproc N`` and prints the
supernet stage's steps per second from each run's metrics.csv (its ``elapsed_s`` at the
last step). The global batch is the same, so the two runs take the same steps. Each round
runs them in the order 1, N, N, 1 (so a load that rises or falls through a round weighs on
both alike); the summary is the median per process count. On a shared machine the figures
move with the other load: quote them as measured under that load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def steps_per_s(run: Path) -> tuple[int, float]:
    m = pd.read_csv(run / "metrics.csv")
    last = m[m["stage"] == "supernet"].iloc[-1]
    return int(last["step"]), float(last["step"] / last["elapsed_s"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--max-train", type=int, default=320)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--model", default="minilm")
    p.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    a = p.parse_args()
    base = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="hwnas-parallel-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    rows = []
    order = [1, a.nproc, a.nproc, 1] * a.rounds
    for i, n in enumerate(order):
        out = base / f"run{i}_nproc{n}"
        cmd = [sys.executable, "-m", "nas.cli", "train", "--out", str(out), "--model", a.model, "--nproc", str(n),
               "--max-train", str(a.max_train), "--max-eval", "32", "--batch-size", "32", "--teacher-epochs", "0.01",
               "--supernet-epochs", "1", "--quiet"]
        t0 = time.time()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        steps, rate = steps_per_s(out)
        rows.append({"run": i, "nproc": n, "supernet_steps": steps, "steps_per_s": round(rate, 4),
                     "command_wall_s": round(time.time() - t0, 1), "load_avg_1min": round(os.getloadavg()[0], 1)})
    table = pd.DataFrame(rows)
    print(f"{os.cpu_count()} cores")
    print(table.to_string(index=False))
    med = table.groupby("nproc")["steps_per_s"].median()
    print(f"median steps/s: 1 process {med[1]:.4f}, {a.nproc} processes {med[a.nproc]:.4f} "
          f"(x{med[a.nproc] / med[1]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
