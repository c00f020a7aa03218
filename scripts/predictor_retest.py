"""How noisy a device's latency labels are, and what that leaves a predictor to get right.

Takes two measurement files of the same run and device, made by the same `hwnas measure`
command (the same seeded sub-networks) at different times: the run's own file, and that of a
copy of the run whose `latency/` folder was emptied first. Prints, over the sub-networks
in both (each sub-network's median over its passes, as `hwnas fit` fits it; the README's
figures of 2026-12-03 came from one pass of each, before this):

- test-retest: how far the second timing of each sub-network is from the first (median and
  mean |b / a - 1|, share within 10%): the noise in one label;
- the predictors' grouped 5-fold cross-validated MAPE and share within 10% when fitted on
  the first timings and scored against the first, against the second, and fitted and scored
  on the geometric mean of both (what timing each sub-network twice would give).

    cp -al runs/bench/r8 /tmp/r8b && rm -rf /tmp/r8b/latency /tmp/r8b/run.lock && mkdir /tmp/r8b/latency
    .venv/bin/hwnas measure --run /tmp/r8b --device cpu --n 200 --passes 3   # as bench.sh measured r8
    .venv/bin/python scripts/predictor_retest.py runs/bench/r8 /tmp/r8b --device cpu
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from latency.predictor import PREDICTORS, TARGET, _group_folds, make_predictor, per_configuration
from latency.workflow import measured_rows
from supernet.errors import HwnasError
from supernet.model import BertShape
from supernet.workflow import open_run


def samples(folder: str, device: str) -> pd.DataFrame:
    """One row per sub-network timed on real traffic: the median of its passes (``hwnas
    measure --passes``), what ``hwnas fit`` fits (``per_configuration``)."""
    rows = measured_rows(folder, device)
    ok = rows[(rows["kind"] == "sample") & (rows["error"].fillna("") == "") & (rows["regime"] == "traffic")]
    merged, _ = per_configuration(ok)
    return merged.drop_duplicates("arch_key").set_index("arch_key")


def cross_validated(shape: BertShape, rows: pd.DataFrame, fit_on: pd.Series, score_on: pd.Series, name: str) -> str:
    keys = rows.index.astype(str).to_numpy()
    folds = _group_folds(keys, 5, np.random.default_rng(0))
    train = rows.reset_index().assign(**{TARGET: fit_on.to_numpy()})
    pred = np.empty(len(rows))
    for f in range(5):
        held = folds == f
        pred[held] = make_predictor(name, shape).fit(train[~held]).predict(train[held])["pred_ms"].to_numpy()
    rel = np.abs(pred / score_on.to_numpy() - 1.0)
    return f"MAPE {rel.mean():.1%}, within 10% {np.mean(rel <= 0.10):.0%}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="the run measured first")
    p.add_argument("again", help="a copy of the run measured again with the same command")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    try:
        shape = open_run(a.run).supernet.shape
        first, second = samples(a.run, a.device), samples(a.again, a.device)
    except HwnasError as e:  # a missing run or measurement file: one line, exit 2
        print(f"predictor_retest.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    common = first.index.intersection(second.index)
    if len(common) < 10:
        print(f"predictor_retest.py: error: only {len(common)} sub-networks of device {a.device!r} were measured in "
              "both runs; measure the copy with the same `hwnas measure` command (at least 10 needed)", file=sys.stderr)
        raise SystemExit(2)
    first, second = first.loc[common], second.loc[common]
    x, y = first[TARGET], second[TARGET]
    rel = (y / x - 1.0).abs()
    print(f"{len(common)} sub-networks timed twice on {a.device} (p50 on real traffic): second vs first timing, "
          f"median |b/a - 1| {rel.median():.1%}, mean {rel.mean():.1%}, within 10% {np.mean(rel <= 0.10):.0%}")
    both = np.sqrt(x * y)
    for name in PREDICTORS:
        print(f"{name}: fitted on the first, scored on the first: {cross_validated(shape, first, x, x, name)}; "
              f"on the second: {cross_validated(shape, first, x, y, name)}; fitted and scored on the geometric mean "
              f"of both: {cross_validated(shape, first, both, both, name)}")


if __name__ == "__main__":
    main()
