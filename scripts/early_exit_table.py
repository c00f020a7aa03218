"""One row per one-sub-network early-exit folder (``hwnas early-exit --out FOLDER`` without a
search: ``--subnet``, ``--model`` or the largest), read from its ``report.json``: how the
policy was chosen (within ``--max-loss`` of the static sub-network on dev, or under a budget),
the policy, test scores against the teacher with paired-bootstrap intervals (the static
sub-network and the policy), and the speed-ups timed beside the teacher's stock deployments
(``beside_stock``: p50 and mean per call, against the fastest stock fp32 deployment and stock
INT8; the static sub-network's too). Reads files only; times nothing.

    .venv/bin/python scripts/early_exit_table.py runs/bench/rt/early_exit/ft_L6h3_4x \\
        runs/bench/r8/early_exit/ft_L6h3_4x --out results/early_exit_one_subnetwork.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python scripts/...`
from supernet.io import write_csv  # noqa: E402
from supernet.space import SubnetConfig  # noqa: E402


class NotOneSubnetwork(ValueError):
    """A folder this table cannot read (not a one-sub-network early-exit folder)."""


def row(folder: Path) -> dict[str, Any]:
    """The table's row for one folder; NotOneSubnetwork when it is not one it can read."""
    f = folder / "report.json"
    if not f.is_file():
        raise NotOneSubnetwork(f"{folder} has no report.json: give folders written by `hwnas early-exit --out FOLDER`")
    r = json.loads(f.read_text())
    if "search" in r:
        raise NotOneSubnetwork(f"{folder} is an early-exit search (scripts/early_exit_page.py reads those)")
    stock = r.get("beside_stock")
    if stock is None:
        raise NotOneSubnetwork(f"{folder}: its report has no beside_stock (written with --n-stock 0 or before it existed)")
    metric, deps = stock["metric"], stock["deployments"]
    stat = (r.get("budget") or {}).get("stat", "p50")
    if stat != "p50":
        raise NotOneSubnetwork(f"{folder}: its budget is on the {stat}; this table reads p50 budgets")
    fastest = deps[stock["fastest_stock_fp32"]]
    static = deps.get("ours-static")
    teacher = deps["stock-fp32"]["score_test"]
    diff = stock["ours_minus_teacher_test"]
    budget = r.get("budget")
    if budget is None:
        rule = f"dev within {r['max_loss']:g} of the static" if r.get("max_loss") is not None else "given"
    else:
        rule = (f"most accurate on dev, est. {budget['stat']} <= {budget['ms']:.3f} ms"
                + (f" (full model / {budget['speedup']:g})" if "speedup" in budget else ""))
    return {
        "folder": str(folder), "model_weights": r.get("model_weights", "supernet"),
        "arch": SubnetConfig.from_dict(r["subnet"]).describe(), "exit_kind": r["exit_kind"], "rule": rule,
        "policy": f"{r['policy']['criterion']} {r['policy']['threshold']:g}",
        "teacher_test": teacher,
        "static_test": r["static"][f"{metric}_test"], "static_minus_teacher": r["static"][f"{metric}_test"] - teacher,
        "exit_test": r["early_exit"][f"{metric}_test"], "exit_minus_teacher": diff["diff_points"],
        "exit_minus_teacher_ci95_low": diff["ci95_low"], "exit_minus_teacher_ci95_high": diff["ci95_high"],
        "exit_minus_static": r["test_difference"]["diff_points"],
        "p50_ms": deps["ours"]["p50_ms"], "mean_ms": deps["ours"]["mean_ms"], "p90_ms": deps["ours"]["p90_ms"],
        "static_p50_ms": static["p50_ms"] if static else None,
        "stock_fp32_p50_ms": fastest["p50_ms"], "stock_int8_p50_ms": deps["stock-int8"]["p50_ms"],
        "speedup_p50_vs_fastest_stock_fp32": stock["speedup_p50_vs_fastest_stock_fp32"],
        "speedup_mean_vs_fastest_stock_fp32": stock["speedup_mean_vs_fastest_stock_fp32"],
        "speedup_p50_vs_stock_int8": stock["speedup_p50_vs_stock_int8"],
        "static_speedup_p50_vs_fastest_stock_fp32": fastest["p50_ms"] / static["p50_ms"] if static else None,
        "p50_measured_over_predicted": r["p50_measured_over_predicted"],
        "test_inputs_timed": stock["test_inputs"], "rounds": stock["rounds"],
        "runtime_batch1": (r.get("runtime_batch1") or {}).get("chosen", "segments"),
        "written": pd.Timestamp(f.stat().st_mtime, unit="s").strftime("%Y-%m-%d %H:%M UTC"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, help="CSV to write (default: print only)")
    a = ap.parse_args()
    try:
        table = pd.DataFrame([row(f) for f in a.folders])
    except NotOneSubnetwork as e:
        print(f"early_exit_table.py: {e}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(table.drop(columns=["folder", "model_weights"]).round(3).to_string(index=False))
    if a.out:
        write_csv(a.out, table)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
