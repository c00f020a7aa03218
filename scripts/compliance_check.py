"""The benchmark's budget sweep alone (`hwnas bench`, part 4): budgets at shares of the full
model's latency, each searched and exported (step down, step up, confirm; no fine-tuning), then
what was exported timed again, fresh, beside the full model. Prints one row per budget and the
two targets of the honest-latency issue: compliance (the fresh timing within the budget) and the
median budget use (fresh timing / budget), in milliseconds and as a share of the full model
timed with it (what holds however fast the machine runs that minute).

For re-checking the export's budget handling on a run without the hours of a full benchmark:

    .venv/bin/python scripts/compliance_check.py runs/main --device cpu \\
        --budgets 0.2,0.35,0.5,0.7,0.9 --n 150 --out results/compliance_main_rt.csv

The exports go to ``--exports`` (default: the run's ``bench/`` folder, as the benchmark's).
Exit status 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python scripts/...`
from latency.target import Target  # noqa: E402
from latency.workflow import resolve_device  # noqa: E402
from nas.bench import BenchConfig, compliance  # noqa: E402
from nas.objectives import DevAccuracy  # noqa: E402
from supernet.checkpoint import load_model  # noqa: E402
from supernet.errors import HwnasError  # noqa: E402
from supernet.evaluate import predict, scores  # noqa: E402
from supernet.io import write_csv  # noqa: E402
from supernet.workflow import open_run  # noqa: E402


def summarize(table: pd.DataFrame) -> str:
    """The sweep's verdicts in one paragraph (budgets that errored are counted as missed)."""
    ok = table[table["error"] == ""]  # every row has ``error``: "" where the budget was exported
    n = len(table)
    if not len(ok):
        return f"{n} budgets, none exported"
    return (f"{n} budgets: compliance {int(ok['fresh_meets'].sum())}/{n} in ms, "
            f"{int(ok['share_meets'].sum())}/{n} as a share of the full model timed with it; "
            f"median budget use {ok['budget_use'].median():.2f} (range {ok['budget_use'].min():.2f}-"
            f"{ok['budget_use'].max():.2f}); machine drift over the sweep {ok['machine_drift'].min():.2f}x-"
            f"{ok['machine_drift'].max():.2f}x; step ups taken at {int((ok['step_ups'] > 0).sum())} budgets, "
            f"a second try at {int((ok['step_up_tries'] > 1).sum())}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder, trained, measured and fitted on --device")
    p.add_argument("--device", default="cpu", help="device profile (default %(default)s)")
    p.add_argument("--budgets", default="0.2,0.35,0.5,0.7,0.9",
                   help="budgets as shares of the full model's latency (default %(default)s; above 1: looser than the "
                   "full model)")
    p.add_argument("--n", type=int, default=150, help="accuracy evaluations per search (default %(default)s)")
    p.add_argument("--finalists", type=int, default=5, help="candidates re-ranked and measured per export "
                   "(default %(default)s)")
    p.add_argument("--dev-subset", type=int, default=0, help="score the searches on this many dev examples "
                   "(default 0: the whole dev split, as the benchmark)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exports", help="folder for the export folders (default: RUN/bench)")
    p.add_argument("--out", help="CSV to write (default: print only)")
    a = p.parse_args(argv)
    try:
        fractions = tuple(float(x) for x in a.budgets.split(","))
        if not fractions or not all(math.isfinite(f) and f > 0 for f in fractions) or a.n < 1 or a.finalists < 1 or a.dev_subset < 0:
            raise ValueError
    except ValueError:
        print(f"compliance_check: --budgets takes positive shares separated by commas (e.g. 0.2,0.5,0.9), --n and "
              f"--finalists positive counts, --dev-subset a count or 0; got {a.budgets!r}, {a.n}, {a.finalists}, "
              f"{a.dev_subset}", file=sys.stderr)
        return 2
    try:
        run = open_run(a.run)
        target = Target.of(run, resolve_device(run.folder, a.device))
        cfg = BenchConfig(device=a.device, n_evaluations=a.n, budget_fractions=fractions, finalists=a.finalists,
                          dev_subset=a.dev_subset or None, seed=a.seed)
        acc = DevAccuracy(run, subset_size=cfg.dev_subset, seed=cfg.seed, precision=cfg.search_precision,
                          batch=target.batch)
        t0 = time.time()
        teacher = load_model(run.paths.teacher)  # its test score once, as the benchmark does
        full_test = scores(predict(teacher, run.splits["test"]), run.splits["test"].labels)[run.task.metric]
        table = compliance(run, target, acc, cfg, Path(a.exports) if a.exports else run.paths.bench, full_test)
    except HwnasError as e:  # a run or device it cannot use: one line
        print(f"compliance_check: {e}", file=sys.stderr)
        return 2
    pd.set_option("display.width", 250)
    cols = [c for c in ("fraction", "budget_ms", "arch", "first_pick_measured_ms", "step_ups", "step_up_tries",
                        "exported_measured_ms", "fresh_measured_ms", "fresh_meets", "budget_use", "machine_drift",
                        "fresh_share", "share_meets", "acc_test", "error") if c in table]
    print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"\n{summarize(table)}; {(time.time() - t0) / 60:.1f} min")
    if a.out:
        write_csv(Path(a.out), table)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
