"""Compare Pareto fronts across devices, methods and runs; write CSV and PNG.

Accuracy does not depend on the device, so every configuration any search of a run has
evaluated (``RUN/search/accuracy.csv``) is a candidate on every device: a device's front is
the Pareto front of those candidates under that device's predicted latency. Per method, the
front uses only the configurations that method's searches evaluated
(``RUN/search/<device>_<budget>_<method>.csv``). Front points get their test accuracy
(reporting only) and, when the device is on this machine, a re-measured latency.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from latency.target import PredictedLatency, Target, open_timer
from nas.objectives import DevAccuracy, dev_accuracies, searched_dev_subset
from nas.pareto import compare_fronts, pareto_front
from supernet.errors import ConfigError, HwnasError
from supernet.io import atomic_write, write_csv
from supernet.space import PRECISIONS, SubnetConfig
from supernet.workflow import LoadedRun


def evaluated(run: LoadedRun, method: str | None = None, device: str | None = None) -> list[SubnetConfig]:
    """Configurations the run's searches evaluated (all, or those of one method/device)."""
    keys: dict[str, SubnetConfig] = {}
    every_precision = run.space.with_precisions(PRECISIONS)  # a device's search may have run int8
    for f in run.paths.search_histories():
        try:
            frame = pd.read_csv(f)
        except (ValueError, UnicodeDecodeError) as e:  # pandas' ParserError is a ValueError
            raise ConfigError(f"{f} (a search history) is unreadable ({str(e).strip()}): delete it, or search "
                              "again to rewrite it") from None
        if not {"arch_json", "method", "device"} <= set(frame.columns):
            continue
        if method is not None:
            frame = frame[frame["method"] == method]
        if device is not None:
            frame = frame[frame["device"] == device]
        for i, j in zip(frame.index, frame["arch_json"], strict=True):
            try:
                cfg = every_precision.validate(SubnetConfig.from_dict(json.loads(str(j))))
            except ValueError as e:  # ConfigError is a ValueError; so is a JSON error
                raise ConfigError(f"{f} line {i + 2}: arch_json is not a sub-network of this run ({e}): delete "
                                  "the file, or search again to rewrite it") from None
            keys.setdefault(cfg.key(), cfg)
    return list(keys.values())


def device_front(
    run: LoadedRun, target: Target, configs: Sequence[SubnetConfig], accuracy: DevAccuracy,
    *, remeasure_points: int = 12,
) -> pd.DataFrame:
    """Front of ``configs`` on ``target``: dev accuracy vs predicted latency, plus test accuracy and
    re-measured latency of (at most ``remeasure_points``, evenly spread) front points."""
    if not configs:
        return pd.DataFrame()
    model = PredictedLatency.of(run.folder, target)  # loads the predictor from disk: once
    lat = model.predict(list(configs))
    full_pred = model.predict([run.space.largest()])[0][0]
    frame = pd.DataFrame({
        "arch_key": [c.key() for c in configs],
        "arch": [c.describe() for c in configs],
        "arch_json": [c.to_json() for c in configs],
        "acc_dev": [accuracy(c) for c in configs],
        "lat_pred_ms": [p for p, _ in lat],
        "lat_upper_ms": [u for _, u in lat],
    })
    front = pareto_front(frame, acc_col="acc_dev", lat_col="lat_pred_ms").reset_index(drop=True)
    cfgs = [SubnetConfig.from_dict(json.loads(j)) for j in front["arch_json"]]
    front["acc_dev_full"] = [accuracy.full_dev(c) for c in cfgs]
    front["acc_test"] = [accuracy.test(c) for c in cfgs]
    front["lat_rel"] = front["lat_pred_ms"] / full_pred
    front["full_model_pred_ms"] = full_pred
    front["lat_measured_ms"] = np.nan
    front["full_model_measured_ms"] = np.nan
    if remeasure_points > 0:
        idx = np.unique(np.linspace(0, len(front) - 1, min(len(front), remeasure_points)).round().astype(int))
        timer = open_timer(run, target)  # None: the device is not on this machine
        if timer is not None:
            with timer:
                got = timer.measure([cfgs[i] for i in idx], rounds=1)
            front.loc[idx, "lat_measured_ms"] = got.ms
            front["full_model_measured_ms"] = got.full_ms
    front.insert(0, "length", target.length)
    front.insert(0, "device", target.profile.name)
    return front


def compare(
    runs: Sequence[LoadedRun],
    targets: dict[str, dict[str, Target]],
    methods: Sequence[str] | None,
    out_dir: str | Path,
    *,
    remeasure_points: int = 12,
    dev_subset: int | None | str = 500,
    precision: str = "auto",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fronts for every (run, device, method) and their hypervolumes; writes
    ``fronts.csv``, ``hypervolume.csv`` and ``fronts.png`` into ``out_dir``.

    ``targets[run_folder][device]``; ``methods=None`` pools all methods' candidates;
    ``dev_subset`` and ``precision`` must be the searches', so that their cached scores are reused
    (``dev_subset="searched"``: each run's, read from its accuracy cache, ``searched_dev_subset``).
    """
    fronts: list[pd.DataFrame] = []
    short = [r.folder.name for r in runs]
    for run in runs:
        # Runs are named by their folder's name, or its path where two share one (runs/bench/rt
        # and runs/bench-quick/rt), so that their fronts are never pooled.
        name = run.folder.name if short.count(run.folder.name) == 1 else str(run.folder)
        # The searches' subset: its scores are cached.
        subset = searched_dev_subset(run) if dev_subset == "searched" else dev_subset
        if isinstance(subset, str):
            raise ConfigError(f"dev_subset must be a number of dev examples, None or 'searched', got {subset!r}")
        accs = dev_accuracies(run, (t.batch for t in targets[str(run.folder)].values()), subset_size=subset,
                              precision=precision)
        for device, target in targets[str(run.folder)].items():
            acc = accs[target.batch]
            method_list: list[str | None] = list(methods) if methods else [None]
            for method in method_list:
                # A device's front holds the precisions it runs (another device's search may
                # have scored int8 sub-networks that this one cannot run).
                cfgs = [c for c in evaluated(run, method) if c.precision in target.profile.precisions]
                if not cfgs:
                    raise HwnasError(
                        f"{run.folder} has no search results{f' for method {method}' if method else ''}: "
                        f"run `hwnas search --run {run.folder} --device {device}` first"
                    )
                f = device_front(run, target, cfgs, acc, remeasure_points=remeasure_points)
                f.insert(0, "method", method or "all")
                f.insert(0, "run", name)
                fronts.append(f)
    table = pd.concat(fronts, ignore_index=True)
    names = {n: g for n, g in table.groupby(["run", "device", "method"])}
    # Latency relative to each device's full model, so fronts of different devices compare.
    hv = compare_fronts({"/".join(map(str, k)): g for k, g in names.items()}, acc_col="acc_dev", lat_col="lat_pred_ms",
                        lat_scale="full_model_pred_ms", ref_lat=1.0)
    out = Path(out_dir)
    write_csv(out / "fronts.csv", table)
    write_csv(out / "hypervolume.csv", hv)
    plot_fronts(table, out / "fronts.png")
    return table, hv


def plot_fronts(table: pd.DataFrame, path: str | Path) -> Path:
    """One panel per device: dev accuracy (filled) and test accuracy (hollow) vs latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = list(dict.fromkeys(table["device"]))
    fig, axes = plt.subplots(1, len(devices), figsize=(5.5 * len(devices), 4.2), squeeze=False)
    for ax, device in zip(axes[0], devices, strict=True):
        sub = table[table["device"] == device]
        for (run, method), g in sub.groupby(["run", "method"]):
            g = g.sort_values("lat_pred_ms")
            label = f"{run} / {method}"
            line = ax.plot(g["lat_pred_ms"], g["acc_dev"], marker="o", ms=4, drawstyle="steps-post", label=f"{label} (dev)")
            ax.scatter(g["lat_pred_ms"], g["acc_test"], facecolors="none", edgecolors=line[0].get_color(), s=24,
                       label=f"{label} (test)")
            m = g.dropna(subset=["lat_measured_ms"])
            if len(m):
                ax.scatter(m["lat_measured_ms"], m["acc_dev"], marker="x", color=line[0].get_color(), s=20,
                           label=f"{label} (re-measured)")
        full = sub["full_model_pred_ms"].iloc[0]
        ax.axvline(full, color="grey", ls=":", lw=1)
        ax.set_title(f"{device} (length {int(sub['length'].iloc[0])}); dotted: full model")
        ax.set_xlabel("latency per call, ms (predicted; x = re-measured)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()

    def write(p: Path) -> None:
        fig.savefig(p, dpi=120, format="png")

    atomic_write(path, write)
    plt.close(fig)
    return Path(path)
