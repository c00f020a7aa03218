"""A benchmark page for early exit searched under a budget (issue 17), beside the `hwnas bench` pages.

Reads the folders written by ``hwnas early-exit --budget-ms B --device D --out DIR`` (their
``report.json``, ``front.png``, ``exit_histogram.png``) and writes
``OUT/bench_<task>_early_exit.md`` with one table row per folder (the best static sub-network
under the same budget, the chosen sub-network and exit policy, accuracies on dev and test,
layers run, the estimated and measured latency statistic, speed-ups measured against the
chosen sub-network as one graph) and the folders' front and exit-histogram figures copied
beside it (named after the folder); then re-assembles ``OUT/BENCHMARKS.md`` (``nas.bench.assemble``) so the page is in it.

    .venv/bin/python scripts/early_exit_page.py runs/main/early_exit/search_cpu-1t_3ms \
        runs/main/early_exit/search_cpu_3ms --task rt --out results
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python scripts/...`
sys.path.insert(0, str(Path(__file__).resolve().parent))  # early_exit_table beside it
from nas.bench import assemble  # noqa: E402
from supernet.io import write_text  # noqa: E402


def _diff(d: dict[str, Any] | None) -> str:
    """A paired difference in points with its interval; older reports have none."""
    if not d:
        return "not computed"
    return f"{d['diff_points']:+.1f} ({d['ci95_low']:+.1f}, {d['ci95_high']:+.1f})"


def _interval(ci: list[float] | None, within: bool | None) -> str:
    if not ci:
        return "not computed"
    return f"{ci[0]:.2f}-{ci[1]:.2f} ms, measured {'inside' if within else 'outside'}"


def _stock(search: dict[str, Any]) -> str:
    """The chosen one timed beside the stock deployments (``search.beside_stock``)."""
    b = search.get("beside_stock")
    if not b:
        return "not timed"
    stat = search["budget_stat"]
    return (f"{b[f'speedup_{stat}_vs_fastest_stock_fp32']:.2f}x / {b['speedup_mean_vs_fastest_stock_fp32']:.2f}x "
            f"({b['fastest_stock_fp32']} {b['deployments'][b['fastest_stock_fp32']][f'{stat}_ms']:.2f} ms); "
            f"{b[f'speedup_{stat}_vs_stock_int8']:.2f}x; {_diff(b['ours_minus_teacher_test'])}")


def row(folder: Path, report: dict[str, Any]) -> dict[str, str]:
    """One table row (formatted cells) from a search folder's report."""
    s = report["search"]
    stat, ch, best = s["budget_stat"], s["chosen"], s["best_static_under_budget"]
    metric = next(k.removesuffix("_dev") for k in ch if k.endswith("_dev") and k != "layers_dev")
    static = report["static"]["measured_test"]
    ee = report["early_exit"]["measured_test"]
    own = report["early_exit"]["predicted_from_dev"]  # = search.chosen.predicted_STAT_ms_own_runner
    hist = "/".join(f"{x:.2f}" for x in report["early_exit"]["test_exit_histogram"])
    return {
        "folder": f"`{folder}`",
        "device, budget": f"{s['device']}, {stat} <= {s['budget_ms']:.3g} ms" + (
            "" if s.get("budget_speedup") is None else
            f" (the largest as one graph on dev, {s['full_model_ms_dev']:.2f} ms, / {s['budget_speedup']:g})"),
        "best static (dev / test, est.)": ("none fits" if best is None else
                                           f"{best['arch']}: {best[f'{metric}_dev']:.1f} / {best[f'{metric}_test']:.1f}, "
                                           f"{best[f'predicted_{stat}_ms']:.2f} ms"),
        "chosen": f"{ch['arch']}, {ch['criterion']} {'' if ch['threshold'] is None else format(ch['threshold'], 'g')}",
        "dev / test": f"{metric} {ch[f'{metric}_dev']:.1f} / {ch[f'{metric}_test']:.1f} (static {report['static'][f'{metric}_test']:.1f})",
        "layers (dev mean); test exits": f"{ch['layers_dev']:.2f}; {hist}",
        f"{stat} est. / measured": (f"{ch[f'predicted_{stat}_ms']:.2f} / {ch[f'measured_{stat}_ms_test']:.2f} ms: "
                                    f"{ch['measured_over_predicted']:.2f} (drift-corrected "
                                    f"{ch['measured_over_predicted_drift_corrected']:.2f}"
                                    + ("" if ch.get("measured_over_predicted_same_speed") is None else
                                       f"; at the search's speed {ch['measured_over_predicted_same_speed']:.2f}")
                                    + ")"),
        "test vs best static; vs all layers (95% CI)": f"{_diff(best and best.get('chosen_minus_this_test'))}; "
                                                        f"{_diff(report.get('test_difference'))}",
        f"{stat} from its runner's dev timing / measured": (
            "static: none" if ch["criterion"] == "static" else
            f"{own[f'{stat}_ms']:.2f} / {ee[f'{stat}_ms']:.2f} ms: {ee[f'{stat}_ms'] / own[f'{stat}_ms']:.2f}"),
        f"{stat} est. 95% interval (dev sample)": _interval(ch.get(f"predicted_{stat}_ms_ci95_dev_sample"),
                                                            ch.get("measured_within_dev_sample_interval")),
        "same dev inputs: at the policy / all layers timed": (
            "not computed" if "measured_dev_over_predicted_from_dev" not in report["early_exit"] else
            f"{report['early_exit']['measured_dev_over_predicted_from_dev'][f'{stat}_ms']:.2f}"),
        "speed-up vs static graph, p50 / mean": (f"{static['p50_ms'] / ee['p50_ms']:.2f}x / "
                                                 f"{static['mean_ms'] / ee['mean_ms']:.2f}x"),
        f"beside stock: speed-up {stat} / mean vs fastest fp32; {stat} vs INT8; test vs teacher (95% CI)": _stock(s),
        "measured candidates": str(len(s.get("steps", [])) or 1),
        "load average at end": f"{report['timing']['loadavg_at_end'][0]:.1f}",
    }


def largest_table(folders: list[Path]) -> list[str]:
    """The page's second table: one-sub-network folders (the largest with exits under a budget,
    ``scripts/early_exit_table.py``'s rows), formatted."""
    from early_exit_table import row as one_row

    lines = ["The largest sub-network with exits under the same kind of budget, no search "
             "(`hwnas early-exit --run RUN --kind attn --subnet largest --speedup S --out FOLDER`: its policy the "
             "most accurate on dev whose p50, estimated from its own runner's timing on dev, meets the budget); "
             "beside stock as above (its runner, its static graph and the stock deployments on the first "
             "`--n-stock` test inputs in turn):", "",
             "| folder | budget | policy | test, all layers - teacher | test with exits - teacher (95% CI) | "
             "p50 / mean / p90 ms | vs fastest stock fp32: p50 / mean; vs INT8 p50 | p50 measured / predicted |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for f in folders:
        r = one_row(f)
        lines.append(
            f"| {f} | {r['rule'].replace('most accurate on dev, ', '')} | {r['policy']} | "
            f"{r['static_minus_teacher']:+.2f} | {r['exit_minus_teacher']:+.2f} ({r['exit_minus_teacher_ci95_low']:+.2f}, "
            f"{r['exit_minus_teacher_ci95_high']:+.2f}) | {r['p50_ms']:.2f} / {r['mean_ms']:.2f} / {r['p90_ms']:.2f} | "
            f"{r['speedup_p50_vs_fastest_stock_fp32']:.2f}x / {r['speedup_mean_vs_fastest_stock_fp32']:.2f}x; "
            f"{r['speedup_p50_vs_stock_int8']:.2f}x | {r['p50_measured_over_predicted']:.2f} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="`hwnas early-exit --budget-ms` (or --speedup) output folders")
    p.add_argument("--task", required=True, help="the task's name, for the page's name (e.g. rt)")
    p.add_argument("--out", default="results")
    p.add_argument("--largest", nargs="+", default=[], metavar="FOLDER",
                   help="one-sub-network folders (`hwnas early-exit --subnet largest --speedup S`): a second table, "
                   "the largest sub-network with exits under the same budgets, no search")
    a = p.parse_args(argv)
    out = Path(a.out)
    reports, rows = [], []
    for f in map(Path, a.folders):
        path = f / "report.json"
        try:
            report = json.loads(path.read_text())
            report["search"]["chosen"]  # noqa: B018 (a search folder, not a one-sub-network one)
            rows.append(row(f, report))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"{path}: not the report of `hwnas early-exit --budget-ms` as this version writes it "
                  f"({type(e).__name__}: {e}); give folders that command wrote (rerun it on older ones)", file=sys.stderr)
            return 2
        reports.append((f, report))
    out.mkdir(parents=True, exist_ok=True)
    name = f"bench_{a.task}_early_exit"
    cols = list(rows[0])
    table = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    table += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    figures = []
    for f, _ in reports:
        tag = f.resolve().name
        for png in ("front", "exit_histogram"):
            if (f / f"{png}.png").exists():
                target = out / f"{name}_{tag}_{png}.png"
                shutil.copyfile(f / f"{png}.png", target)
                figures.append(f"![{tag} {png}]({target.name})")
    try:
        largest = largest_table([Path(f) for f in a.largest]) if a.largest else []
    except ValueError as e:  # early_exit_table.NotOneSubnetwork
        print(f"--largest: {e}", file=sys.stderr)
        return 2
    command = ("`.venv/bin/python scripts/early_exit_page.py " + " ".join(a.folders) + f" --task {a.task} --out {a.out}"
               + (" --largest " + " ".join(a.largest) if a.largest else "") + "`")
    text = "\n".join([
        f"# Benchmarks: {a.task} early exit",
        "",
        f"Generated by {command} on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC from the folders of "
        "`hwnas early-exit --run RUN --kind attn --budget-ms B (or --speedup S) --device D --out FOLDER` (each row one "
        "folder; with --speedup the budget is the largest sub-network's statistic, timed as one graph on dev inputs "
        "with the search, divided by S). "
        "A candidate is a sub-network and an exit policy; the chosen one is the most accurate on dev whose "
        "estimated statistic meets the budget; it is exported and measured serving the test inputs one by one "
        "(batch 1) beside the same sub-network as one graph, medians of the rounds. "
        "'est.': the search's estimate; 'drift-corrected': divided by the device's drift at measurement "
        "(that one graph measured / predicted); 'at the search's speed': divided instead by how much faster or "
        "slower the device ran the chosen runner when it was measured than when the search timed it as a finalist "
        "(every layer timed on the same dev inputs, summed to the policy's exits on them; report.json "
        "`search.chosen.device_speed_change`). Test exits: share of test inputs leaving at each exit. "
        "Test differences: the chosen candidate's test score minus the best static one's, and minus the same "
        "sub-network's with every layer run, in points on the same test inputs, with the paired-bootstrap 95% "
        "interval (`nas.stats`; macro F1 recomputed on each resample). From its runner's dev timing: the second prediction, made once the chosen runner exists: its own segment "
        "times on the first `--n-cost` dev inputs (every layer run) summed to each input's exit on dev, the statistic "
        "over them (report.json `early_exit.predicted_from_dev`). Est. interval: how far the estimate moves "
        "when the dev inputs are resampled (their exits and lengths kept), and whether the measurement on test "
        "fell inside it. Same dev inputs: the runner serving the first `--n-cost` dev inputs at the policy, over the "
        "statistic predicted from their own segment times with every layer run (below 1: inputs that leave early cost "
        "less than their share of an all-layers run, e.g. warm caches). "
        "Beside stock: the chosen one (its runner at its policy), the largest sub-network as one graph and the "
        "teacher's stock deployments (exported to ONNX, after ONNX Runtime's optimizer, dynamic INT8) serving the "
        "first `--n-stock` test inputs one by one, in turn, medians of the rounds (report.json "
        "`search.beside_stock`): the chosen one's speed-up on the budget's statistic and on the mean against the "
        "fastest stock fp32 deployment, on the statistic against stock INT8, and its test score minus the teacher's "
        "on the whole test split (paired bootstrap). "
        "Measured candidates: how many were exported and measured (more than 1: the first missed the budget "
        "and the search stepped down).",
        "",
        *table,
        "",
        *largest,
        *figures,
        "",
    ])
    write_text(out / f"{name}.md", text)
    assemble(out)
    print(f"wrote {out / (name + '.md')} and {out / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
