"""The command line shared by the checks that compare searches over search seeds
(``dev_subset_check.py``, ``screen_check.py``): the run, the device whose predictor gives the
latencies, how many seeds from which, evaluations per search, front points scored on test,
and the CSV to write; and the one-line complaint when a number is out of range."""

from __future__ import annotations

import argparse

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
