"""How the size of the dev subset the searches score on changes the benchmark's test
hypervolume over search seeds (``hwnas bench``'s ``seed_spread``): no timing, only scoring.

For each size in ``--subsets`` (0: the whole dev split), each method of the benchmark (ours:
evolution over width, depth and retention; the DynaBERT grid; retention only; random search)
searches the whole front ``--seeds`` times (search seeds ``--seed`` ..; the subset itself is always drawn
with seed 0, so replicates differ only in their searches), its front on dev
accuracy and *predicted* latency is thinned to ``--front-points`` and scored on test, and the
hypervolume of each front is computed as the benchmark does (``nas.bench.seed_spread``;
reference: the worst test accuracy of any front within the same size). Printed per size: each
method's mean and spread over seeds and whether ours beats it (the difference of the means
beyond the two spreads summed, ``nas.bench.spread_verdicts``).

    .venv/bin/python scripts/dev_subset_check.py runs/main --subsets 500,0 --out runs/main/dev_subset.csv

Scores land in the run's accuracy cache, as a benchmark's would. Exit status 2 with one line for
a folder that is not a trained, measured and fitted run, or malformed numbers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python scripts/...`
sys.path.insert(0, str(Path(__file__).resolve().parent))  # seed_check_args beside it
from seed_check_args import seed_check_main  # noqa: E402

from nas.bench import METHODS, BenchConfig, _candidates, seed_spread, spread_verdicts  # noqa: E402
from nas.objectives import DevAccuracy  # noqa: E402
from supernet.workflow import open_run  # noqa: E402


def subset_spread(run_folder: str, subsets: list[int], *, device: str, seeds: int, seed: int, n: int,
                  front_points: int, progress: bool = True) -> pd.DataFrame:
    """One row per (dev subset, method, search seed): ``hypervolume_test`` and ``points``."""
    from latency.target import Target
    from latency.workflow import resolve_device

    run = open_run(run_folder)
    target = Target.of(run, resolve_device(run.folder, device), None)
    tables = []
    for size in subsets:
        t0 = time.time()
        cfg = BenchConfig(device=device, n_evaluations=n, seeds=seeds, seed=seed, front_points=front_points,
                          dev_subset=size or None)
        acc = DevAccuracy(run, subset_size=size or None, seed=0, batch=target.batch)
        table = seed_spread(run, target, acc, cfg, _candidates(run, target, acc, cfg, False, METHODS), False)
        table.insert(0, "dev_subset", size or "all")
        if progress:
            print(f"dev subset {size or 'all'} ({time.time() - t0:.0f} s):\n"
                  f"{spread_verdicts(table).to_string(index=False)}", flush=True)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    return seed_check_main(
        argv, script="dev_subset_check", description=__doc__.split("\n\n")[0], seeds=3,
        out_help="CSV to write (default: print only)", option="subsets", default="500,0",
        option_help="dev subset sizes, comma-separated; 0: the whole dev split (default %(default)s)", least=0,
        takes="sizes >= 0 separated by commas (0: the whole dev split), e.g. 500,0",
        body=lambda a, subsets: subset_spread(a.run, subsets, device=a.device, seeds=a.seeds, seed=a.seed, n=a.n,
                                              front_points=a.front_points))


if __name__ == "__main__":
    sys.exit(main())
