"""The command line shared by the checks that compare searches over search seeds
(``dev_subset_check.py``, ``screen_check.py``): the run, the device whose predictor gives the
latencies, how many seeds from which, evaluations per search, front points scored on test,
the CSV to write, and one list of integers of the script's own; one line and exit status 2
when a number is out of range or the folder is not a fitted run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import pandas as pd

from supernet.errors import HwnasError
from supernet.io import write_csv

RULE = "--seeds >= 1, --n and --front-points >= 2, --seed >= 0"


def seed_check_parser(description: str, *, seeds: int, out_help: str) -> argparse.ArgumentParser:
    """A parser with the shared arguments; the caller adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("run", help="a trained, measured and fitted run folder")
    p.add_argument("--device", default="cpu", help="whose predictor gives the latencies (default %(default)s)")
    p.add_argument("--seeds", type=int, default=seeds, help="search seeds per method (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the first search seed (default %(default)s)")
    p.add_argument("--n", type=int, default=150, help="accuracy evaluations per search (default %(default)s)")
    p.add_argument("--front-points", type=int, default=10, help="front points scored on test (default %(default)s)")
    p.add_argument("--out", help=out_help)
    return p


def int_list(text: str, *, least: int) -> list[int]:
    """Comma-separated integers, each at least ``least`` (ValueError otherwise, or when empty)."""
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < least:
        raise ValueError(text)
    return values


def seeds_ok(a: argparse.Namespace) -> bool:
    return a.seeds >= 1 and a.n >= 2 and a.front_points >= 2 and a.seed >= 0


def given(a: argparse.Namespace) -> str:
    """The shared numbers as given, for the complaint."""
    return f"--seeds {a.seeds}, --n {a.n}, --front-points {a.front_points}, --seed {a.seed}"


def seed_check_main(argv: list[str] | None, *, script: str, description: str, seeds: int, out_help: str,
                    option: str, default: str, option_help: str, least: int, takes: str,
                    body: Callable[[argparse.Namespace, list[int]], pd.DataFrame]) -> int:
    """Parse, check, run ``body(args, the option's integers)`` and write its frame to ``--out``.
    ``takes``: what the option takes, for the complaint (e.g. "sizes >= 0 separated by commas")."""
    p = seed_check_parser(description, seeds=seeds, out_help=out_help)
    p.add_argument(f"--{option}", default=default, help=option_help)
    a = p.parse_args(argv)
    raw = getattr(a, option)
    try:
        values = int_list(raw, least=least)
        if not seeds_ok(a):
            raise ValueError
    except ValueError:
        print(f"{script}: --{option} takes {takes}; {RULE}; got --{option} {raw!r}, {given(a)}", file=sys.stderr)
        return 2
    try:
        frame = body(a, values)
    except HwnasError as e:  # not a run, not measured or fitted on the device: one line
        print(f"{script}: {e}", file=sys.stderr)
        return 2
    if a.out:
        write_csv(a.out, frame)
        print(f"wrote {a.out}")
    return 0
