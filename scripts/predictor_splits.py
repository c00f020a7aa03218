"""Every latency predictor's held-out figures over several seeded splits, not one.

`hwnas fit` scores the predictors on one seeded split (a fifth of the sub-networks held
out) and keeps the best: with 40 to 80 held-out sub-networks, which predictor wins and by how
much moves from split to split. This fits the device's p50-on-real-traffic predictors as
`hwnas fit` does (`latency.predictor.fit_device`, each sub-network's median over its passes)
for split seeds 0 .. N-1, writes nothing, and prints per predictor the mean held-out MAPE,
share within 10%, Kendall tau and upper-bound coverage, then which one each split chose.

    .venv/bin/python scripts/predictor_splits.py runs/bench/rt --device cpu-1t --splits 5
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from latency.predictor import fit_device
from latency.workflow import measured_rows
from supernet.errors import HwnasError
from supernet.workflow import open_run


def split_figures(run: str, device: str, splits: int) -> tuple[pd.DataFrame, dict]:
    """One row per (split seed, predictor): its held-out metrics and whether it was chosen;
    and the last split's report."""
    shape = open_run(run).supernet.shape
    rows = measured_rows(run, device)
    rows = rows[rows["regime"] == "traffic"]
    out, report = [], {}
    for seed in range(splits):
        _, report = fit_device(shape, rows, device, seed=seed)
        out += [dict(split=seed, predictor=name, chosen=name == report["chosen"], **m)
                for name, m in report["metrics"].items()]
    return pd.DataFrame(out), report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a measured run folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--splits", type=int, default=5, help="held-out split seeds 0 .. N-1 (default 5)")
    a = p.parse_args()
    if a.splits < 1:
        print(f"predictor_splits.py: error: --splits must be at least 1, got {a.splits}", file=sys.stderr)
        raise SystemExit(2)
    try:
        df, report = split_figures(a.run, a.device, a.splits)
    except HwnasError as e:  # a missing run, measurement file or too few measurements: one line, exit 2
        print(f"predictor_splits.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{a.run}, {a.device}, p50 on real traffic: {report['n_configs']} sub-networks, {report['passes']} "
          f"pass(es), {report['n_holdout']} held out per split, {a.splits} split(s); means over the splits:")
    means = df.groupby("predictor")[["mape", "within_10pct", "kendall_tau", "coverage_upper"]].mean()
    for name, m in means.iterrows():
        print(f"  {name}: MAPE {m.mape:.2%}, within 10% {m.within_10pct:.1%}, Kendall tau {m.kendall_tau:.3f}, "
              f"upper bound covers {m.coverage_upper:.1%}")
    chosen = df[df.chosen]
    print(f"  chosen per split: {', '.join(chosen.predictor)}; its MAPE {chosen.mape.mean():.2%}, "
          f"within 10% {chosen.within_10pct.mean():.1%} on average")


if __name__ == "__main__":
    main()
