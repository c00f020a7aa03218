"""Does screening an evolution's children with a surrogate (``EvolutionSearch(screen=k)``,
``nas.surrogate``) raise the benchmark's test hypervolume? No timing, only scoring.

For each search seed ``--seed`` .. ``--seed + --seeds - 1``, the evolution searches the whole
front once per screen in ``--screens`` (1: no screening; the default since 2026-12-07 is 4) and random search
once, every search scoring the whole dev split with ``--n`` evaluations; each front on dev
accuracy and *predicted* latency is thinned to ``--front-points`` and scored on test, as
``hwnas bench``'s ``seed_spread`` does. The hypervolumes use one reference for every front of
the call (the worst test accuracy of any point). Printed after each seed: the hypervolumes so
far on test and on dev, and the spread verdicts of the last screen (as ``ours``) against the
others (``nas.bench.spread_verdicts``: the difference of the means beyond the two standard
deviations summed).

    .venv/bin/python scripts/screen_check.py runs/main --screens 1,4 --seeds 5 --out runs/main/screen_points.csv

``--out``: every scored front point (method, seed, latency relative to the full model's
prediction, dev and test accuracy, architecture), written after each seed. Scores land in the
run's accuracy cache. Exit status 2 with one line for a folder that is not a trained, measured
and fitted run, or malformed numbers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python scripts/...`
sys.path.insert(0, str(Path(__file__).resolve().parent))  # seed_check_args beside it
from seed_check_args import seed_check_main  # noqa: E402

from nas.bench import scored_front, seed_hypervolumes, spread_verdicts  # noqa: E402
from nas.evolution import EvolutionSearch  # noqa: E402
from nas.objectives import DevAccuracy  # noqa: E402
from nas.search import RandomSearch, Searcher  # noqa: E402
from supernet.io import write_csv  # noqa: E402
from supernet.workflow import open_run  # noqa: E402


def screen_points(run_folder: str, screens: list[int], *, device: str, seeds: int, seed: int, n: int,
                  front_points: int, out: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Every scored front point of every search (module doc)."""
    from latency.target import PredictedLatency, Target
    from latency.workflow import resolve_device

    run = open_run(run_folder)
    target = Target.of(run, resolve_device(run.folder, device), None)
    acc = DevAccuracy(run, subset_size=None, batch=target.batch)  # the whole dev split, as the benchmark
    lat = PredictedLatency.of(run.folder, target)
    lat_full = lat.predict([run.space.largest()])[0][0]
    rows: list[dict[str, object]] = []
    for s in range(seed, seed + seeds):
        searchers: dict[str, Searcher] = {f"screen{k}": EvolutionSearch(screen=k) for k in screens}
        searchers["random"] = RandomSearch()
        for name, searcher in searchers.items():
            t0 = time.time()
            result = searcher.search(run.space, acc, lat, budget_ms=None, n_evaluations=n, seed=s)
            rows += scored_front(result.history, name, s, front_points, lat_full, acc)
            if progress:
                print(f"seed {s}, {name}: {time.time() - t0:.0f} s", flush=True)
        points = pd.DataFrame(rows)
        if out:
            write_csv(out, points)
        if progress:
            test, dev = seed_hypervolumes(points, "acc_test"), seed_hypervolumes(points, "acc_dev")
            print("test hypervolume:\n" + test.pivot(index="seed", columns="method", values="hypervolume_test")
                  .round(4).to_string(), flush=True)
            print("dev hypervolume:\n" + dev.pivot(index="seed", columns="method", values="hypervolume_dev")
                  .round(4).to_string(), flush=True)
            ours = test.assign(method=test["method"].replace({f"screen{screens[-1]}": "ours"}))
            print(spread_verdicts(ours).round(4).to_string(index=False), flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    return seed_check_main(
        argv, script="screen_check", description=__doc__.split("\n\n")[0], seeds=5,
        out_help="CSV of every scored front point (default: print only)", option="screens", default="1,4",
        option_help="children drawn per evaluation, comma-separated; the last is compared as ours "
                    "(default %(default)s)", least=1, takes="integers >= 1 separated by commas, e.g. 1,4",
        body=lambda a, screens: screen_points(a.run, screens, device=a.device, seeds=a.seeds, seed=a.seed, n=a.n,
                                              front_points=a.front_points, out=a.out))


if __name__ == "__main__":
    sys.exit(main())
