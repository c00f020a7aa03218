"""How `hwnas early-exit`'s two choice rules (``--choose``) fare on test, over many budgets,
from early-exit searches already run: no timing, no new scoring.

For each search folder (``hwnas early-exit --run RUN --device D --speedup S --out FOLDER``) and
each speed-up in ``--speedups``, the budget is the largest sub-network's statistic timed with
that search (report.json ``search.full_model_ms_dev``) divided by the speed-up; over the
folder's ``candidates.csv`` (its estimates as the search had them: its finalists' from their
own runners, the others' from the predictor's table), the candidate each rule picks:

* ``best-dev``: the most accurate on dev under the budget;
* ``largest-unless-beaten``: the largest sub-network's most accurate candidate under the
  budget unless the ``best-dev`` one beats it on dev beyond the noise (paired bootstrap).

and their test scores, with the paired-bootstrap 95% interval of the difference (largest-
unless-beaten minus best-dev) where they differ. Dev and test predictions come from the run's
exit-logit cache (``RUN/exits/KIND/logits``, written by the searches). A choice is made on dev
only; test is reported.

    .venv/bin/python scripts/exit_choice_check.py runs/main runs/main/ee_2x runs/main/ee_4x \\
        --speedups 1.5,2,2.5,3,3.5,4,5,6 --out results/early_exit_choice_rt.csv

Exit status 2 with one line when a folder is not an early-exit search of that run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python scripts/...`
from nas.exit_search import (  # noqa: E402
    candidate_difference,
    candidate_key,
    choose,
    choose_anchored,
)
from nas.export import ImpossibleBudget  # noqa: E402
from supernet.errors import ConfigError, HwnasError  # noqa: E402
from supernet.exits import load_exits  # noqa: E402
from supernet.io import write_csv  # noqa: E402
from supernet.workflow import LoadedRun, open_run  # noqa: E402


def folder_rows(run: LoadedRun, folder: Path, speedups: list[float], budgets_ms: list[float]) -> list[dict[str, Any]]:
    """One row per speed-up (then per budget in ms) for one search folder."""
    report_file, table_file = folder / "report.json", folder / "candidates.csv"
    if not report_file.is_file():
        raise ConfigError(f"{folder} has no report.json: give folders of `hwnas early-exit --run RUN --device D "
                          "--speedup S --out FOLDER` (the search)")
    try:
        search = json.loads(report_file.read_text()).get("search")
    except ValueError as e:  # a JSON error is a ValueError
        raise ConfigError(f"{report_file} is not readable JSON ({e}): give a folder that `hwnas early-exit` "
                          "wrote completely") from None
    if search is None or not table_file.is_file():
        raise ConfigError(f"{folder} is not a search (a one-sub-network early-exit folder, or no candidates.csv): "
                          "give folders of `hwnas early-exit --run RUN --device D --speedup S --out FOLDER`")
    try:
        table = pd.read_csv(table_file)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{table_file} is unreadable ({str(e).strip()}): run the search again to rewrite it") from None
    missing = {"arch_key", "arch", "arch_json", "criterion", "threshold", "lat_ms", f"{run.task.metric}_dev",
               f"{run.task.metric}_test"} - set(table.columns)
    if missing:
        raise ConfigError(f"{table_file} is not a candidate table of `hwnas early-exit` (no {', '.join(sorted(missing))}): "
                          "run the search again to rewrite it")
    metric, kind = run.task.metric, str(search["exit_kind"])
    heads = load_exits(run.paths.exits(kind), backbone=run.supernet)
    logits_dir = run.paths.exits(kind) / "logits"
    largest = run.space.largest().key()
    if largest not in set(table.arch_key):
        raise ConfigError(f"{folder}: its candidates do not include {run.folder}'s largest sub-network: is it a "
                          "search of that run?")

    rows = []
    full = float(search["full_model_ms_dev"])
    for s, budget in [(s, full / s) for s in speedups] + [(full / b, b) for b in budgets_ms]:
        row: dict[str, Any] = {"folder": str(folder), "device": search["device"], "stat": search["budget_stat"],
                               "speedup": s, "budget_ms": budget}
        try:
            best = choose(table, budget, metric)
        except ImpossibleBudget:
            rows.append(row | {"note": "no candidate estimated under the budget"})
            continue
        pick, decision = choose_anchored(table, budget, largest,
                                         lambda anchor, b: candidate_difference(run, heads, logits_dir, b, anchor, "dev"),
                                         metric)
        row |= {"best_dev": candidate_key(best), "best_dev_arch": best.arch, f"best_dev_{metric}_dev": best[f"{metric}_dev"],
                f"best_dev_{metric}_test": best[f"{metric}_test"], "best_dev_est_ms": best.lat_ms,
                "anchored": candidate_key(pick), "anchored_arch": pick.arch, f"anchored_{metric}_dev": pick[f"{metric}_dev"],
                f"anchored_{metric}_test": pick[f"{metric}_test"], "anchored_est_ms": pick.lat_ms,
                "compared": decision is not None, "anchor_beaten": None if decision is None else decision["anchor_beaten"],
                "dev_best_minus_anchor": None, "dev_ci95_low": None, "dev_ci95_high": None,
                "test_anchored_minus_best": 0.0, "test_ci95_low": 0.0, "test_ci95_high": 0.0}
        if decision is not None:
            d = decision["best_minus_anchor_dev"]
            row |= {"dev_best_minus_anchor": d["diff_points"], "dev_ci95_low": d["ci95_low"], "dev_ci95_high": d["ci95_high"]}
        if candidate_key(pick) != candidate_key(best):
            t = candidate_difference(run, heads, logits_dir, pick, best)
            row |= {"test_anchored_minus_best": t["diff_points"], "test_ci95_low": t["ci95_low"],
                    "test_ci95_high": t["ci95_high"]}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="the run folder the searches were made on")
    p.add_argument("folders", nargs="+", help="early-exit search folders of that run")
    p.add_argument("--speedups", default="1.5,2,2.5,3,4,5,6",
                   help="budgets as speed-ups over the largest sub-network (default %(default)s; '' for none)")
    p.add_argument("--budgets-ms", default="", help="budgets in ms too, e.g. 2.5,4 (default: none)")
    p.add_argument("--out", help="CSV to write (default: print only)")
    a = p.parse_args(argv)
    try:
        speedups = [float(x) for x in a.speedups.split(",") if x.strip()]
        budgets = [float(x) for x in a.budgets_ms.split(",") if x.strip()]
        if min(speedups, default=2) <= 1 or min(budgets, default=1) <= 0 or not (speedups or budgets):
            raise ValueError
    except ValueError:
        print(f"exit_choice_check: --speedups must be numbers > 1 and --budgets-ms numbers > 0, separated by commas, "
              f"at least one in all; got {a.speedups!r} and {a.budgets_ms!r}", file=sys.stderr)
        return 2
    try:
        run = open_run(a.run)
        rows = [r for f in a.folders for r in folder_rows(run, Path(f), speedups, budgets)]
    except (HwnasError, OSError) as e:  # a folder or run it cannot read: one line
        print(f"exit_choice_check: {e}", file=sys.stderr)
        return 2
    frame = pd.DataFrame(rows)
    for c in ("best_dev", "anchored", "note"):  # the same columns when no budget had a candidate
        if c not in frame:
            frame[c] = None
    pd.set_option("display.width", 250)
    cols = [c for c in ("folder", "speedup", "best_dev", "anchored", "anchor_beaten", "dev_best_minus_anchor",
                        "test_anchored_minus_best", "test_ci95_low", "test_ci95_high") if c in frame]
    print(frame[cols].to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    done = frame.dropna(subset=["anchored"])
    if len(done):
        differ = done[done.anchored != done.best_dev]
        print(f"\n{len(done)} budgets: the rules differ at {len(differ)}; test, largest-unless-beaten minus best-dev: "
              f"mean {done.test_anchored_minus_best.mean():+.2f} points over all budgets"
              + (f", {differ.test_anchored_minus_best.mean():+.2f} where they differ "
                 f"({(differ.test_anchored_minus_best > 0).sum()} higher, {(differ.test_anchored_minus_best < 0).sum()} lower)"
                 if len(differ) else ""))
    if a.out:
        write_csv(Path(a.out), frame)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
