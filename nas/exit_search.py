"""Early exit as a searched dimension: the most accurate (sub-network, exit policy) under a
latency budget on a device (`hwnas early-exit --budget-ms B --device D`).

A candidate is a sub-network and an exit policy (criterion and threshold, or ``static``: no
exit heads, one graph). The steps, each a function returning values (``ExitSearch`` writes
them):

1. ``front_pool``: the sub-networks of the run's static search on the device (its search
   histories' dev scores and the device's predicted latency), on their Pareto front, thinned
   evenly to a few, and the largest sub-network (a budgeted search seldom reaches it, and its
   exits are the most accurate ones);
2. ``cached_exit_logits``: every exit's logits on dev and test for each of them, one pass per
   split, kept beside the heads (``RUN/exits/KIND/logits/``) by sub-network and heads' weights,
   so a second search of the same run (another budget or device) scores nothing again;
3. ``candidate_table``: every policy of every sub-network scored from those logits (dev for
   the choice, test for the report) and its latency statistic estimated without timing the
   sub-network: a per-layer cost table from the device's predictor applied to the depth-k
   prefixes of the sub-network plus the exit head's measured cost
   (``latency.early_exit.predicted_segment_ms``); then, from a reference (the largest
   sub-network's runner timed on dev inputs beside its one-graph form, ``ExitSearch.reference``),
   the runner's extra cost at each exit added (``runner_extra_ms``) and the table made per
   input by the reference's length spread (``LengthSpread``), summed to each input's exit;
   the static rows are the predictor's own figure for the whole sub-network;
4. ``finalist_archs`` / ``with_own_costs``: the few sub-networks whose best exit candidate
   is the most accurate among those estimated within 1.5x the budget get their own runner
   exported and timed on dev inputs (every layer run, ``--n-cost`` of them), and their exit
   candidates are estimated again from those per-input times, as the one-sub-network mode
   does (the table's estimate, from the largest sub-network's runner, can be off by tens of
   percent for a narrower one), each other dev input's from the runner's line in its length
   (``extend_segments``), so the statistic is over the whole dev split; then each runner, ``--rounds`` times, times every layer and
   serves the same inputs at its most accurate policy within the budget, in turn, and the
   median of served over estimated scales all of that sub-network's exit candidates
   (``ExitSearch.serve_at_policy``, ``scale_arch``); ``choose``: on dev only, the most
   accurate candidate whose estimated statistic meets the budget (the faster of equals);
5. ``exit_fronts``: the Pareto front of the static rows and of all rows (static + exit);
6. ``verify_choice``: the chosen one exported and measured by ``nas.early_exit.EarlyExitStudy``
   at its policy; when its measured statistic misses the budget (the device runs slower today
   than estimated), every estimate is scaled by that miss and the next most accurate candidate
   that would still fit is exported and measured (a "step down", as the static export does),
   a few times at most; the search's prediction set beside the measurement in ``report.json``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from latency.early_exit import (
    STAT_FUNCS,
    LatencyModel,
    LengthSpread,
    default_policies,
    estimate_interval,
    estimate_latency,
    export_static_graph,
    extend_segments,
    head_cost_ms,
    load_runner,
    policy_table,
    predicted_segment_ms,
    prefix,
    runner_extra_ms,
    segment_times,
    single_inputs,
    spread_table,
    static_graph_timing,
    time_early_exit,
    with_extra,
)
from latency.target import PredictedLatency, Target
from nas.export import ImpossibleBudget
from nas.pareto import pareto_front
from supernet.errors import ConfigError
from supernet.exits import (
    ExitHeads,
    exit_histogram,
    exit_layers,
    exit_predictions,
    load_exits,
    predict_exits,
)
from supernet.extract import extract
from supernet.io import atomic_write, write_csv, write_json
from supernet.space import SubnetConfig
from supernet.train import weights_sha1
from supernet.workflow import LoadedRun

if TYPE_CHECKING:
    from nas.early_exit import EarlyExitStudy

STATS = ("p50", "p90", "mean")
STATIC = "static"  # the criterion of a candidate without exits (one graph, no heads)


@dataclass(frozen=True)
class Reference:
    """What timing the largest sub-network's runner says about every candidate's table
    (``ExitSearch.reference``): its length spread, its extra cost at each exit over the
    predicted prefixes (ms, in the predictor's units), and for the report the drift of each
    round and prefix (rounds, exits) and its cumulative costs, measured (median over rounds)
    and predicted."""

    spread: LengthSpread
    extra_ms: np.ndarray
    drift: np.ndarray
    measured_cum: np.ndarray
    predicted_cum: np.ndarray
    full_ms: float  # the largest sub-network as one graph on those dev inputs: its statistic, median over rounds
    full_graph: Path  # that graph's ONNX file
    # The largest sub-network's own runner (its folder) and its segment times on those dev
    # inputs, every layer run, median over rounds (n, exits): that sub-network's candidates
    # are estimated from them as a finalist's are, with no timing of its own.
    runner: Path
    segments: np.ndarray


def front_pool(run: LoadedRun, target: Target, latency: LatencyModel, limit: int, *,
               include_largest: bool = True) -> list[SubnetConfig]:
    """The fp32 sub-networks the run's searches on ``target``'s device scored (their dev
    score as the search had it), on the front of dev score vs ``latency``'s prediction,
    thinned evenly to at most ``limit``, fastest first; then the largest sub-network."""
    device = target.profile.name
    seen: dict[str, tuple[SubnetConfig, float]] = {}
    for f in run.paths.search_histories():
        try:
            frame = pd.read_csv(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{f} (a search history) is unreadable ({str(e).strip()}): delete it, or search "
                              "again to rewrite it") from None
        if not {"arch_json", "acc_dev", "device"} <= set(frame.columns):
            continue
        for j, acc in zip(frame.loc[frame["device"] == device, "arch_json"],
                          frame.loc[frame["device"] == device, "acc_dev"], strict=True):
            try:
                cfg = SubnetConfig.from_dict(json.loads(str(j)))
                if cfg.int8:  # early exit runs fp32 sub-networks
                    continue
                run.space.validate(cfg)
            except ValueError as e:  # ConfigError is a ValueError; so is a JSON error
                raise ConfigError(f"{f}: arch_json {j} is not a sub-network of this run ({e}): delete the file, "
                                  "or search again to rewrite it") from None
            if np.isfinite(acc):
                seen.setdefault(cfg.key(), (cfg, float(acc)))
    if not seen:
        raise ConfigError(f"no search of {run.folder} on device {device!r} to take candidates from: search first "
                          f"(`hwnas search --run {run.folder} --device {device} --budget-ms B`)")
    cfgs = [c for c, _ in seen.values()]
    frame = pd.DataFrame({"i": range(len(cfgs)), "acc_dev": [a for _, a in seen.values()],
                          "lat_ms": [p for p, _ in latency.predict(cfgs)]})
    front = pareto_front(frame, acc_col="acc_dev", lat_col="lat_ms").reset_index(drop=True)
    idx = np.unique(np.linspace(0, len(front) - 1, min(len(front), limit)).round().astype(int))
    pool = [cfgs[int(i)] for i in front["i"].iloc[idx]]
    largest = run.space.largest()
    if include_largest and largest.key() not in {c.key() for c in pool}:
        pool.append(largest)  # the static front's far end, and the exits' best reach (a budgeted search rarely has it)
    return pool


def cached_exit_logits(run: LoadedRun, heads: ExitHeads, cfg: SubnetConfig, folder: Path) -> dict[str, np.ndarray]:
    """Every exit's logits of ``cfg`` on dev and test (exits, N, C), kept in
    ``folder/KEY-KIND-HEADS.npz`` (plain arrays) and read from there when present."""
    path = folder / f"{cfg.key()}-{heads.kind}-{weights_sha1(heads)[:12]}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {s: z[s] for s in ("dev", "test")}
    logits = {s: predict_exits(run.supernet, heads, run.splits[s], cfg) for s in ("dev", "test")}
    folder.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
            np.savez(f, dev=logits["dev"], test=logits["test"])

    atomic_write(path, write)
    return logits


def candidate_predictions(run: LoadedRun, heads: ExitHeads, logits_dir: Path, row: pd.Series,
                          split: str = "test") -> np.ndarray:
    """A candidate's (a table row's) logits on ``split``: of the exit each input takes at its
    policy, or the last exit (the sub-network's own classifier) for a static one; from the cache."""
    cfg = SubnetConfig.from_dict(json.loads(str(row.arch_json)))
    lg = cached_exit_logits(run, heads, cfg, logits_dir)[split]
    if row.criterion == STATIC:
        return lg[-1]
    return exit_predictions(lg, exit_layers(lg, str(row.criterion), float(row.threshold)))


def candidate_difference(run: LoadedRun, heads: ExitHeads, logits_dir: Path, chosen: pd.Series, other: pd.Series,
                         split: str = "test") -> dict[str, Any]:
    """``chosen``'s score minus ``other``'s (two table rows) on the same ``split`` inputs: points
    and paired-bootstrap 95% interval (``nas.stats.compare_with``), from the logit cache."""
    from nas.stats import compare_with

    return compare_with(candidate_predictions(run, heads, logits_dir, other, split),
                        candidate_predictions(run, heads, logits_dir, chosen, split),
                        run.splits[split].labels, metric=run.task.metric)


def candidate_table(
    cfg: SubnetConfig,
    logits: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    segment_ms: np.ndarray,
    static_ms: float,
    *,
    stat: str = "p50",
    metric: str = "accuracy",
    policies: Sequence[tuple[str, float]] | None = None,
    spread: LengthSpread | None = None,
    lengths: Mapping[str, Sequence[int]] | None = None,
) -> pd.DataFrame:
    """One sub-network's candidates: its static row (latency ``static_ms``, the predictor's
    figure for the whole sub-network as one graph) and a row per exit policy (latency: the
    ``stat`` over the dev inputs of the cost up to each one's exit, from the per-layer cost
    table ``segment_ms``, made per input by ``spread`` and the inputs' ``lengths`` per split
    when given). ``lat_ms`` is the column a budget applies to; scores in points."""
    if stat not in STATS:
        raise ConfigError(f"--budget-stat must be one of {', '.join(STATS)}, got {stat!r}")
    n = len(segment_ms)
    tables: np.ndarray | dict[str, np.ndarray] = segment_ms
    if spread is not None:
        if lengths is None:
            raise ValueError("a spread needs the inputs' lengths per split")
        tables = {split: spread_table(segment_ms, spread, lengths[split]) for split in logits}
    table = policy_table(logits, labels, tables, policies or default_policies(n), metric)
    table["lat_ms"] = table[f"est_{stat}_ms_dev"]
    never = table[(table.criterion == "entropy") & (table.threshold == 0.0)]
    static: dict[str, Any] = {"criterion": STATIC, "threshold": np.nan, "lat_ms": static_ms}
    for split in logits:
        static[f"{metric}_{split}"] = float(never[f"{metric}_{split}"].iloc[0]) if len(never) else np.nan
        static[f"layers_{split}"] = float(n)
    table = pd.concat([pd.DataFrame([static]), table], ignore_index=True)
    table.insert(0, "arch_key", cfg.key())
    table.insert(1, "arch", cfg.describe())
    table["arch_json"] = cfg.to_json()
    return table


def choose(table: pd.DataFrame, budget_ms: float, metric: str = "accuracy") -> pd.Series:
    """The most accurate candidate on dev whose ``lat_ms`` meets ``budget_ms``; among equals,
    the fastest. ``ImpossibleBudget`` when none does."""
    ok = table[table["lat_ms"] <= budget_ms]
    if ok.empty:
        raise ImpossibleBudget(f"no candidate meets {budget_ms:g} ms (the fastest is estimated at "
                               f"{table['lat_ms'].min():.3g} ms): give a larger --budget-ms (or a smaller --speedup)")
    return ok.sort_values([f"{metric}_dev", "lat_ms"], ascending=[False, True], kind="mergesort").iloc[0]


CHOICES = ("best-dev", "largest-unless-beaten")


def choose_anchored(table: pd.DataFrame, budget_ms: float, anchor_key: str,
                    dev_difference: Callable[[pd.Series, pd.Series], Mapping[str, Any]],
                    metric: str = "accuracy") -> tuple[pd.Series, dict[str, Any] | None]:
    """``--choose largest-unless-beaten``: the most accurate candidate on dev under the budget
    (``choose``) only when it beats the anchor's (the most accurate candidate of sub-network
    ``anchor_key`` under the budget, the largest in the search) beyond dev's noise:
    ``dev_difference(anchor, best)`` (best minus anchor on dev, paired bootstrap) has its 95%
    interval above 0. Otherwise the anchor's. Returns the choice and the comparison (None when
    there was none to make: the best is the anchor's sub-network, or nothing of it fits).

    Why: the search picks the best of a few hundred candidates on one dev split, so the
    winner's dev score is biased upward (the winner's curse); on the benchmark pages of
    2026-12-05 the largest sub-network's own best policy under the same budget scored higher
    on test than the search's pick in all four searches (README, "Early exit searched under a
    budget"). Not the default: checks on four fresh runs did not confirm it (README)."""
    best = choose(table, budget_ms, metric)
    mine = table[table.arch_key == anchor_key]
    if best.arch_key == anchor_key or not (mine.lat_ms <= budget_ms).any():
        return best, None
    anchor = choose(mine, budget_ms, metric)
    d = dict(dev_difference(anchor, best))
    beaten = d["ci95_low"] > 0
    return (best if beaten else anchor), {"best_dev": candidate_key(best), "anchor": candidate_key(anchor),
                                          "best_minus_anchor_dev": d, "anchor_beaten": bool(beaten)}


def finalist_archs(table: pd.DataFrame, budget_ms: float, metric: str = "accuracy", *, k: int = 3,
                   slack: float = 1.5) -> list[str]:
    """The ``k`` sub-networks (arch keys) whose best exit candidate estimated within ``slack``
    times the budget is the most accurate on dev, most accurate first: those worth timing on
    their own runner before choosing (the table's estimate is off by tens of percent for some)."""
    near = table[(table.criterion != STATIC) & (table.lat_ms <= budget_ms * slack)]
    best = near.groupby("arch_key", sort=False)[f"{metric}_dev"].max().sort_values(ascending=False, kind="mergesort")
    return [str(a) for a in best.index[:k]]


def with_own_costs(table: pd.DataFrame, arch_key: str, segment_ms: np.ndarray, dev_logits: np.ndarray,
                   stat: str, lengths: Sequence[int] | None = None) -> pd.DataFrame:
    """``table`` with the exit candidates of one sub-network estimated from its own runner:
    ``segment_ms`` (n, exits), its segment times on the first n dev inputs (every layer run),
    summed to the exit each policy takes on them (``dev_logits``: every exit's logits on dev),
    the ``stat`` over them; with ``lengths`` (every dev input's), over the whole dev split, the
    untimed inputs' costs from the runner's line in the length (``extend_segments``). The
    table's own estimate stays in ``lat_ms_table``; ``lat_from`` says which one ``lat_ms`` is."""
    out = table.copy()
    if "lat_ms_table" not in out:
        out["lat_ms_table"] = out["lat_ms"]
        out["lat_from"] = np.where(out.criterion == STATIC, "predictor", "table")
    if lengths is not None:
        segment_ms = extend_segments(segment_ms, lengths, stat)
    n = len(segment_ms)
    rows = out.index[(out.arch_key == arch_key) & (out.criterion != STATIC)]
    for i in rows:
        layers = exit_layers(dev_logits[:, :n], str(out.at[i, "criterion"]), float(out.at[i, "threshold"]))
        out.at[i, "lat_ms"] = estimate_latency(segment_ms, layers)[f"{stat}_ms"]
        out.at[i, "lat_from"] = "own runner"
    return out


def scale_arch(table: pd.DataFrame, arch_key: str, ratio: float) -> pd.DataFrame:
    """``table`` with one sub-network's exit candidates' ``lat_ms`` times ``ratio`` (what
    serving one of its policies measured over that policy's estimate), marked in ``lat_from``."""
    out = table.copy()
    rows = (out.arch_key == arch_key) & (out.criterion != STATIC)
    out.loc[rows, "lat_ms"] = out.loc[rows, "lat_ms"] * ratio
    if "lat_from" in out:
        out.loc[rows, "lat_from"] = "own runner, served"
    return out


def candidate_key(row: pd.Series) -> str:
    """One candidate of a table: its sub-network and policy."""
    return f"{row.arch_key}/{row.criterion}" + ("" if row.criterion == STATIC else f"/{float(row.threshold):g}")


def verify_choice(table: pd.DataFrame, budget_ms: float, measure: Callable[[pd.Series], float],
                  metric: str = "accuracy", max_steps: int = 3,
                  pick: Callable[[pd.DataFrame], pd.Series] | None = None) -> tuple[pd.Series, list[dict[str, Any]]]:
    """Measured, never predicted: ``measure(row)`` exports a candidate and returns its measured
    statistic. The choice (``pick(table)``, by default ``choose`` under the budget; it is
    handed the candidates not yet measured, their estimates scaled) is measured first; when it misses the budget, the device
    runs slower than estimated by measured / estimate, so every estimate is scaled by the
    largest such ratio so far and the most accurate candidate not yet measured that would
    still fit is measured next, ``max_steps`` candidates at most. Returns the first that meets
    the budget (its row, unscaled) and every step; ``ImpossibleBudget`` when none does."""
    steps: list[dict[str, Any]] = []
    scale, tried = 1.0, set[str]()
    chooser = pick or (lambda t: choose(t, budget_ms, metric))
    keys = table.apply(candidate_key, axis=1) if len(table) else pd.Series(dtype=str)
    for _ in range(max_steps):
        left = table[~keys.isin(tried)]
        fits = left.lat_ms * scale <= budget_ms
        if not fits.any():
            break
        row = table.loc[chooser(left.assign(lat_ms=left.lat_ms * scale)).name]
        ms = measure(row)
        steps.append({"candidate": candidate_key(row), "arch": str(row.get("arch", row.arch_key)),
                      "criterion": str(row.criterion),
                      "threshold": None if row.criterion == STATIC else float(row.threshold),
                      f"{metric}_dev": float(row[f"{metric}_dev"]), "estimated_ms": float(row.lat_ms),
                      "scale": scale, "measured_ms": ms, "meets_budget": bool(ms <= budget_ms)})
        if ms <= budget_ms:
            return row, steps
        scale = max(scale, ms / float(row.lat_ms))
        tried.add(candidate_key(row))
    if not steps:
        choose(table, budget_ms, metric)  # raises: nothing is estimated to fit
    raise ImpossibleBudget(
        f"none of the {len(steps)} candidates measured met {budget_ms:g} ms (measured "
        f"{', '.join(format(st['measured_ms'], '.3g') for st in steps)} ms, estimated "
        f"{', '.join(format(st['estimated_ms'], '.3g') for st in steps)} ms): the device runs slower than its "
        "predictor says; give a larger --budget-ms (a smaller --speedup), or re-measure with `hwnas measure` and refit")


def exit_fronts(table: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The dev-accuracy / estimated-latency fronts: ``static`` (static rows only) and
    ``static+exit`` (every row), stacked with a ``front`` column, fastest first."""
    static = table[table.criterion == STATIC]
    parts = [pareto_front(static, acc_col=f"{metric}_dev", lat_col="lat_ms").assign(front="static"),
             pareto_front(table, acc_col=f"{metric}_dev", lat_col="lat_ms").assign(front="static+exit")]
    return pd.concat(parts, ignore_index=True)


def plot_front(fronts: pd.DataFrame, chosen: pd.Series, budget_ms: float, stat: str, path: Path,
               metric: str = "accuracy") -> Path:
    """Both fronts on one pair of axes: dev score (filled, steps) and test score (hollow) vs
    the estimated latency statistic; the budget dotted, the choice starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    for name, g in fronts.groupby("front", sort=False):
        line = ax.plot(g["lat_ms"], g[f"{metric}_dev"], marker="o", ms=4, drawstyle="steps-post", label=f"{name} (dev)")
        ax.scatter(g["lat_ms"], g[f"{metric}_test"], facecolors="none", edgecolors=line[0].get_color(), s=24,
                   label=f"{name} (test)")
    ax.scatter([chosen["lat_ms"]], [chosen[f"{metric}_dev"]], marker="*", s=160, color="black", zorder=5,
               label="chosen (dev)")
    ax.axvline(budget_ms, color="grey", ls=":", lw=1)
    ax.set_xlabel(f"{stat} latency per input, ms (estimated from the predictor; dotted: budget)")
    ax.set_ylabel(f"{metric} (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return path


def plot_histogram(hist: dict[str, Sequence[float]], title: str, path: Path) -> Path:
    """Share of inputs leaving at each exit, one bar group per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    width = 0.8 / max(1, len(hist))
    for k, (split, h) in enumerate(hist.items()):
        x = np.arange(1, len(h) + 1) + (k - (len(hist) - 1) / 2) * width
        ax.bar(x, h, width=width, label=split)
    ax.set_xlabel("exit (layer of the sub-network)")
    ax.set_ylabel("share of inputs")
    ax.set_title(title, fontsize=7)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return path


# What a search writes into its ``out`` folder; removed when the budget proves impossible.
SEARCH_FILES = ("reference", "finalists", "candidates.csv", "front.csv", "front.png", "exit_histogram.png", "runner",
                "static.onnx", "report.json", "policies.csv", "exit_logits.npz")


@dataclass
class ExitSearch:
    """``hwnas early-exit --budget-ms``: the steps of the module doc on one run, device and
    kind of exit heads, writing into ``out``."""

    run: LoadedRun
    target: Target
    kind: str
    out: Path
    candidates: int = 12
    finalists: int = 3  # sub-networks timed on their own runner before choosing (``finalist_archs``)
    choice: str = CHOICES[0]  # the rule that picks among the candidates under the budget (``choose_anchored``)

    def __post_init__(self) -> None:
        if self.target.stat not in STATS:
            raise ConfigError(f"--budget-stat must be one of {', '.join(STATS)} for early exit, got {self.target.stat!r}")
        if self.choice not in CHOICES:
            raise ConfigError(f"--choose must be one of {', '.join(CHOICES)}, got {self.choice!r}")
        self.heads = load_exits(self.run.paths.exits(self.kind), backbone=self.run.supernet)
        self.latency = PredictedLatency.of(self.run.folder, self.target)

    @property
    def logits_dir(self) -> Path:
        """Where exit logits are cached: beside the heads, shared by every search of the run
        (the file names carry the sub-network and the heads' weights)."""
        return self.run.paths.exits(self.kind) / "logits"

    @property
    def labels(self) -> dict[str, np.ndarray]:
        return {s: self.run.splits[s].labels for s in ("dev", "test")}

    def head_ms(self, n: int = 200) -> float:
        """The exit head's cost on the device, timed on the first ``n`` dev inputs' lengths."""
        return head_cost_ms(self.heads, self.lengths("dev")[:n], threads=self.target.profile.threads)

    def lengths(self, split: str) -> list[int]:
        return [len(x) for x in self.run.splits[split].input_ids]

    def serve_at_policy(self, table: pd.DataFrame, key: str, budget_ms: float, runner_dir: Path,
                        dev_logits: np.ndarray, n: int, rounds: int) -> dict[str, Any] | None:
        """A finalist's runner (in ``runner_dir``; ``dev_logits``: its every exit's logits on
        dev) serving its first ``n`` dev inputs at one policy:
        its most accurate exit candidate estimated within the budget (None when there is none).
        ``rounds`` times in turn, the runner times every layer on those inputs (the estimate)
        and then serves them at the policy; ``ratio`` is the median over rounds of served /
        estimated, each pair timed a second apart, so that the device's speed moving between
        moments (+-15-25% on a shared machine) mostly cancels; ``scale_arch`` applies it to
        all of that sub-network's exit candidates: an input that leaves early can cost less
        than its share of an all-layers run (one thread keeps the first layers' weights in
        cache when most inputs stop there). ``segments``: the per-input segment times, the
        median over the rounds (what the candidates are then estimated from)."""
        stat = self.target.stat
        rows = table[(table.arch_key == key) & (table.criterion != STATIC)]
        if not (rows.lat_ms <= budget_ms).any():
            return None
        row = choose(rows, budget_ms, self.run.task.metric)
        runner = load_runner(runner_dir, threads=self.target.profile.threads, criterion=str(row.criterion),
                             threshold=float(row.threshold))
        inputs = single_inputs(self.run.splits["dev"], n)
        layers = exit_layers(dev_logits[:, :len(inputs)], str(row.criterion), float(row.threshold))
        segments, estimated, served = [], [], []
        for _ in range(rounds):
            segments.append(segment_times(runner, inputs))  # every layer run, the policy restored after
            estimated.append(estimate_latency(segments[-1], layers)[f"{stat}_ms"])
            served.append(time_early_exit(runner, inputs)[f"{stat}_ms"])
        ratios = np.array(served) / np.array(estimated)
        return {"criterion": str(row.criterion), "threshold": float(row.threshold), "rounds": rounds,
                "estimated_ms": float(np.median(estimated)), "served_ms": float(np.median(served)),
                "ratio": float(np.median(ratios)), "ratios": ratios.round(4).tolist(),
                "segments": np.median(segments, axis=0)}

    def difference(self, chosen: pd.Series, other: pd.Series, split: str = "test") -> dict[str, Any]:
        """``chosen``'s score minus ``other``'s on ``split`` (``candidate_difference``)."""
        return candidate_difference(self.run, self.heads, self.logits_dir, chosen, other, split)

    def choice_report(self, table: pd.DataFrame, decision: Mapping[str, Any] | None) -> dict[str, Any]:
        """How the handed-over candidate was picked (``--choose``), for report.json: with
        largest-unless-beaten and two candidates to pick between, the dev comparison that
        decided it and, reported only, the same comparison on test."""
        out: dict[str, Any] = {"rule": self.choice}
        if decision is None:
            return out | {"note": "the most accurate candidate on dev under the budget" + (
                "" if self.choice == "best-dev" else " (the largest sub-network's, or none of the largest fits)")}
        keys = table.apply(candidate_key, axis=1)
        best, anchor = (table[keys == decision[k]].iloc[0] for k in ("best_dev", "anchor"))
        return out | dict(decision) | {"best_minus_anchor_test": self.difference(best, anchor)}

    def pick(self, table: pd.DataFrame, budget_ms: float) -> tuple[pd.Series, dict[str, Any] | None]:
        """The candidate ``--choose`` hands over under ``budget_ms`` and, for
        largest-unless-beaten, the dev comparison that decided it (``choose_anchored``)."""
        metric = self.run.task.metric
        if self.choice == "best-dev":
            return choose(table, budget_ms, metric), None
        return choose_anchored(table, budget_ms, self.run.space.largest().key(),
                               lambda anchor, best: self.difference(best, anchor, "dev"), metric)

    def beside_stock(self, chosen: pd.Series, ref: Reference, n: int, rounds: int) -> dict[str, Any]:
        """What a user could deploy without us, timed beside the chosen candidate
        (``nas.early_exit.beside_stock``): the largest sub-network as one graph (``ours-full``)
        and the chosen runner at its policy (``ours``; a static choice: its one graph), on the
        first ``n`` test inputs; speed-ups on the budget's statistic and on the mean, and the
        chosen one's test score against the teacher's."""
        from nas.early_exit import beside_stock

        graphs = {"ours-full": ref.full_graph}
        if chosen.criterion == STATIC:
            graphs["ours"] = self.out / "static.onnx"
            runner = None
        else:
            runner = load_runner(self.out / "runner", threads=self.target.profile.threads,
                                 criterion=str(chosen.criterion), threshold=float(chosen.threshold))
        predictions = candidate_predictions(self.run, self.heads, self.logits_dir, chosen)
        return beside_stock(self.run, graphs, runner, predictions, n=n, rounds=rounds,
                            threads=self.target.profile.threads, stat=self.target.stat)

    def reference(self, n: int, rounds: int, head_ms: float) -> Reference:
        """The largest sub-network's runner, exported to ``out/reference/`` and timed on the
        first ``n`` dev inputs (all layers run) in ``rounds`` rounds, each beside its depth-k
        prefixes as one graph each (the last one: the whole sub-network): its length spread
        (``LengthSpread``, on the per-input medians over the rounds) and the runner's extra
        cost at each exit over the predicted prefixes, each prefix's drift divided out
        (``runner_extra_ms``)."""
        from nas.early_exit import EarlyExitStudy

        stat, threads = self.target.stat, self.target.profile.threads
        largest = self.run.space.largest()
        study = EarlyExitStudy(self.run, self.kind, largest, self.out / "reference", threads=threads)
        runner = load_runner(study.export(), threads=threads)
        inputs = single_inputs(self.run.splits["dev"], n)
        prefixes = [prefix(largest, k) for k in range(1, len(largest.kept_layers) + 1)]
        # The deepest prefix is the largest sub-network itself: the study already holds it.
        models = [extract(self.run.supernet, p).eval() for p in prefixes[:-1]] + [study.model]
        graphs = [export_static_graph(m, self.out / "reference" / f"prefix{k + 1}") for k, m in enumerate(models)]
        static, times = [], []
        for _ in range(rounds):
            static.append([static_graph_timing(g, inputs, threads=threads)[f"{stat}_ms"] for g in graphs])
            times.append(segment_times(runner, inputs))
        spread = LengthSpread.fit(np.median(times, axis=0), self.lengths("dev")[:len(inputs)], stat)
        measured_cum = np.array([STAT_FUNCS[stat](np.cumsum(t, axis=1)) for t in times])  # (rounds, exits)
        predicted_cum = np.cumsum(predicted_segment_ms(self.latency, largest, head_ms))
        prefix_pred = np.maximum.accumulate([p for p, _ in self.latency.predict(prefixes)])  # as the table holds them
        extra = runner_extra_ms(measured_cum, np.array(static), prefix_pred, predicted_cum)
        return Reference(spread, extra, np.array(static) / prefix_pred, np.median(measured_cum, axis=0), predicted_cum,
                         float(np.median(np.array(static)[:, -1])), graphs[-1], study.out / "runner",
                         np.median(times, axis=0))

    def table(self, pool: Sequence[SubnetConfig], head_ms: float, progress: bool = True,
              reference: Reference | None = None) -> pd.DataFrame:
        """Every candidate of every sub-network in ``pool`` (``candidate_table``), stacked;
        with a ``reference``, exit rows carry its runner's extra cost and are made per input
        by its length spread."""
        parts = []
        spread = reference.spread if reference is not None else None
        lengths = {s: self.lengths(s) for s in ("dev", "test")} if reference is not None else None
        static = [p for p, _ in self.latency.predict(list(pool))]
        for k, (cfg, static_ms) in enumerate(zip(pool, static, strict=True)):
            if progress:
                print(f"  [{k + 1}/{len(pool)}] {cfg.describe()}: exit logits on dev and test", flush=True)
            logits = cached_exit_logits(self.run, self.heads, cfg, self.logits_dir)
            seg = predicted_segment_ms(self.latency, cfg, head_ms)
            if reference is not None:
                seg = with_extra(seg, reference.extra_ms)
            t = candidate_table(cfg, logits, self.labels, seg, static_ms, stat=self.target.stat,
                                metric=self.run.task.metric, spread=spread, lengths=lengths)
            t["segment_ms_pred"] = "/".join(f"{x:.4f}" for x in seg)
            parts.append(t)
        return pd.concat(parts, ignore_index=True)

    def run_all(self, budget_ms: float | None = None, *, speedup: float | None = None, n_cost: int,
                n_time: int | None, rounds: int, n_stock: int = 300, progress: bool = True,
                max_steps: int = 3) -> dict[str, Any]:
        """Every step under ``budget_ms``, or under the largest sub-network's statistic divided
        by ``speedup`` (that sub-network as one graph, timed on the first ``n_cost`` dev inputs
        with the reference, so the budget follows the device's speed today; exactly one of the
        two); the chosen candidate exported and measured in ``out`` (``runner/``,
        ``report.json``), stepping down at most ``max_steps`` - 1 times when it misses the
        budget (``verify_choice``), then timed beside the stock deployments on the first
        ``n_stock`` test inputs (``beside_stock``; 0: not); ``candidates.csv``, ``front.csv``,
        ``front.png``, ``exit_histogram.png``. Returns the report. An impossible budget
        (``ImpossibleBudget``) leaves no half-made search behind: ``out`` is removed when this
        call made it, else what a search writes there (``SEARCH_FILES``); the exit logits stay
        cached with the run's heads."""
        made = not self.out.exists()
        try:
            return self._run_all(budget_ms, speedup=speedup, n_cost=n_cost, n_time=n_time, rounds=rounds,
                                 n_stock=n_stock, progress=progress, max_steps=max_steps)
        except ImpossibleBudget:
            if made:
                shutil.rmtree(self.out, ignore_errors=True)
            else:
                for name in SEARCH_FILES:
                    path = self.out / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            raise

    def _run_all(self, budget_ms: float | None, *, speedup: float | None, n_cost: int, n_time: int | None,
                 rounds: int, n_stock: int, progress: bool, max_steps: int) -> dict[str, Any]:
        from nas.early_exit import EarlyExitStudy

        if (budget_ms is None) == (speedup is None):
            raise ConfigError("give the budget in ms or as a speed-up over the largest sub-network, one of the two")
        if speedup is not None and not speedup > 1:
            raise ConfigError(f"the speed-up must be > 1, got {speedup:g}")
        metric, stat = self.run.task.metric, self.target.stat
        (self.out / "report.json").unlink(missing_ok=True)  # a previous search's: never beside this one's files
        pool = front_pool(self.run, self.target, self.latency, self.candidates)
        head_ms = self.head_ms()
        if progress:
            print(f"  reference: the largest sub-network's runner and graph timed on {n_cost} dev inputs, "
                  f"{rounds} rounds", flush=True)
        ref = self.reference(n_cost, rounds, head_ms)
        if speedup is not None:
            budget_ms = ref.full_ms / speedup
            if progress:
                print(f"  budget: {stat} {budget_ms:.3f} ms = the largest sub-network's {ref.full_ms:.3f} ms "
                      f"/ {speedup:g}", flush=True)
        assert budget_ms is not None
        table = self.table(pool, head_ms, progress, ref)
        own: dict[str, np.ndarray] = {}  # arch key -> its runner's segment times on dev (n_cost, exits)
        dev_lengths = self.lengths("dev")
        served_at: dict[str, dict[str, Any]] = {}  # arch key -> its runner served at one policy on dev
        # The largest sub-network is always a finalist: the reference is its own runner, timed.
        largest = self.run.space.largest().key()
        finalists = finalist_archs(table, budget_ms, metric, k=self.finalists)
        for key in [largest, *(k for k in finalists if k != largest)]:
            row = table[table.arch_key == key].iloc[0]
            cfg = SubnetConfig.from_dict(json.loads(str(row.arch_json)))
            logits = cached_exit_logits(self.run, self.heads, cfg, self.logits_dir)
            dev_logits = logits["dev"]
            if key == largest:
                runner_dir, own[key] = ref.runner, ref.segments
            else:
                if progress:
                    print(f"  finalist {cfg.describe()}: its own runner timed on {n_cost} dev inputs", flush=True)
                study = EarlyExitStudy(self.run, self.kind, cfg, self.out / "finalists" / key,
                                       threads=self.target.profile.threads)
                study.logits = logits
                runner_dir = study.export()
                own[key] = study.segment_times(n_cost)
            table = with_own_costs(table, key, own[key], dev_logits, stat, dev_lengths)
            served = self.serve_at_policy(table, key, budget_ms, runner_dir, dev_logits, n_cost, rounds)
            if served is not None:
                own[key] = served.pop("segments")
                table = scale_arch(with_own_costs(table, key, own[key], dev_logits, stat, dev_lengths), key,
                                   served["ratio"])
                served_at[key] = served
        try:
            choose(table, budget_ms, metric)  # nothing estimated to fit: say so before writing anything
        except ImpossibleBudget as e:
            if speedup is None:
                raise
            raise ImpossibleBudget(f"{e}; the budget was the largest sub-network's {stat} as one graph, "
                                   f"{ref.full_ms:.4g} ms, / {speedup:g}") from None
        static_rows = table[table.criterion == STATIC]
        best_static = choose(static_rows, budget_ms, metric) if (static_rows.lat_ms <= budget_ms).any() else None
        fronts = exit_fronts(table, metric)
        self.out.mkdir(parents=True, exist_ok=True)
        write_csv(self.out / "candidates.csv", table)
        write_csv(self.out / "front.csv", fronts)

        measured_runs: dict[str, tuple[EarlyExitStudy, dict[str, Any]]] = {}

        def export_and_measure(row: pd.Series) -> float:
            cfg = SubnetConfig.from_dict(json.loads(str(row.arch_json)))
            policy = ("entropy", 0.0) if row.criterion == STATIC else (str(row.criterion), float(row.threshold))
            if progress:
                print(f"  export and measure: {cfg.describe()}, {policy[0]} {policy[1]:g} "
                      f"(estimated {stat} {float(row.lat_ms):.3f} ms)", flush=True)
            study = EarlyExitStudy(self.run, self.kind, cfg, self.out, threads=self.target.profile.threads,
                                   stat=self.target.stat)
            study.logits = cached_exit_logits(self.run, self.heads, cfg, self.logits_dir)
            _, report = study.run_all(max_loss=0.0, n_cost=n_cost, n_time=n_time, rounds=rounds, policy=policy,
                                      write_report=False)  # the search's report.json, written once at the end
            measured_runs[candidate_key(row)] = (study, report)
            side = "static" if row.criterion == STATIC else "early_exit"
            return float(report[side]["measured_test"][f"{stat}_ms"])

        decisions: list[dict[str, Any] | None] = []

        def pick(t: pd.DataFrame) -> pd.Series:
            row, decision = self.pick(t, budget_ms)
            decisions.append(decision)
            return row

        chosen, steps = verify_choice(table, budget_ms, export_and_measure, metric, max_steps=max_steps, pick=pick)
        # The chosen one was measured last: ``out`` holds its runner and report.
        study, report = measured_runs[candidate_key(chosen)]
        cfg = study.subnet
        plot_front(fronts, chosen, budget_ms, stat, self.out / "front.png", metric)
        stock = None
        if n_stock:
            if progress:
                print(f"  beside the stock model: the chosen one, the largest as one graph and the stock "
                      f"deployments on {n_stock} test inputs, {rounds} rounds", flush=True)
            stock = self.beside_stock(chosen, ref, n_stock, rounds)
        policy = ("entropy", 0.0) if chosen.criterion == STATIC else (str(chosen.criterion), float(chosen.threshold))

        seg_pred = np.array([float(x) for x in str(chosen.segment_ms_pred).split("/")])
        dev_layers = exit_layers(study.logits["dev"], *policy)
        if chosen.criterion == STATIC:
            interval = None
        elif chosen.arch_key in own:  # estimated from its own runner, extended to the whole dev split
            segs = extend_segments(own[str(chosen.arch_key)], dev_lengths, stat)
            ratio = served_at[str(chosen.arch_key)]["ratio"] if chosen.arch_key in served_at else 1.0
            interval = tuple(ratio * x for x in estimate_interval(segs, dev_layers, stat))
        else:
            interval = estimate_interval(spread_table(seg_pred, ref.spread, self.lengths("dev")), dev_layers, stat)
        # The device's speed when the choice was measured over when it was timed as a finalist:
        # the same runner (every layer timed) on the same dev inputs, summed to the exits the
        # policy takes on them (1: unchanged). This machine's speed moves by 15-25% between
        # moments minutes apart, as much as the estimate's own error.
        speed = None
        if chosen.arch_key in own and chosen.criterion != STATIC:
            then = own[str(chosen.arch_key)]
            now = study.dev_segments[:len(then)]
            at = dev_layers[:len(then)]
            speed = estimate_latency(now, at)[f"{stat}_ms"] / estimate_latency(then, at)[f"{stat}_ms"]
        measured_cum = np.cumsum(study.dev_segments, axis=1)  # (N, exits): each dev input, all layers run
        measured_table = STAT_FUNCS[stat](measured_cum)
        measured = report["early_exit"]["measured_test"] if chosen.criterion != STATIC else report["static"]["measured_test"]
        own_runner = None if chosen.criterion == STATIC else report["early_exit"]["predicted_from_dev"][f"{stat}_ms"]
        static_pred = float(self.latency.predict([cfg])[0][0])
        drift = report["static"]["measured_test"][f"{stat}_ms"] / static_pred
        report["search"] = {
            "device": self.target.profile.name, "target": self.target.describe(), "budget_ms": budget_ms,
            "budget_stat": stat, "budget_speedup": speedup, "full_model_ms_dev": ref.full_ms,
            "exit_kind": self.kind, "candidates": len(table), "subnetworks": len(pool),
            "chosen": {"arch": cfg.describe(), "criterion": str(chosen.criterion),
                       "threshold": None if chosen.criterion == STATIC else float(chosen.threshold),
                       f"{metric}_dev": float(chosen[f"{metric}_dev"]), f"{metric}_test": float(chosen[f"{metric}_test"]),
                       "layers_dev": float(chosen.layers_dev), f"predicted_{stat}_ms": float(chosen.lat_ms),
                       "predicted_from": str(chosen.get("lat_from", "table")),
                       f"predicted_{stat}_ms_search_table": float(chosen.get("lat_ms_table", chosen.lat_ms)),
                       f"predicted_{stat}_ms_ci95_dev_sample": None if interval is None else list(interval),
                       f"measured_{stat}_ms_test": measured[f"{stat}_ms"],
                       "measured_within_dev_sample_interval": None if interval is None else bool(
                           interval[0] <= measured[f"{stat}_ms"] <= interval[1]),
                       "measured_over_predicted": measured[f"{stat}_ms"] / float(chosen.lat_ms),
                       "measured_over_predicted_drift_corrected": measured[f"{stat}_ms"] / (float(chosen.lat_ms) * drift),
                       "device_speed_change": speed,
                       "measured_over_predicted_same_speed": None if speed is None
                       else measured[f"{stat}_ms"] / (float(chosen.lat_ms) * speed),
                       # The second prediction: the chosen runner's own per-layer cost, timed on
                       # dev inputs (every layer run), at the exits the policy takes on them.
                       f"predicted_{stat}_ms_own_runner": own_runner,
                       "measured_over_own_runner_prediction": None if own_runner is None
                       else measured[f"{stat}_ms"] / own_runner,
                       f"predicted_{stat}_ms_prefixes_only": (
                           float(chosen.lat_ms) if chosen.criterion == STATIC else estimate_latency(
                               predicted_segment_ms(self.latency, cfg, head_ms), dev_layers)[f"{stat}_ms"])},
            "beside_stock": stock,
            "choice": self.choice_report(table, decisions[-1] if decisions else None),
            "best_static_under_budget": None if best_static is None else {
                "arch": str(best_static.arch), f"{metric}_dev": float(best_static[f"{metric}_dev"]),
                f"{metric}_test": float(best_static[f"{metric}_test"]), f"predicted_{stat}_ms": float(best_static.lat_ms),
                "chosen_minus_this_test": self.difference(chosen, best_static)},
            "steps": steps,
            "finalists": [{"arch": str(table[table.arch_key == k].arch.iloc[0]), "dev_inputs_timed": int(len(v)),
                           "served_at_policy": served_at.get(k)} for k, v in own.items()],
            "head_ms": head_ms,
            "reference": {
                "arch": self.run.space.largest().describe(), "dev_inputs": n_cost, "rounds": rounds,
                "length_spread": {"intercept_ms": ref.spread.intercept.round(4).tolist(),
                                  "ms_per_token": ref.spread.slope.round(5).tolist()},
                "predicted_cumulative_ms": ref.predicted_cum.round(4).tolist(),
                "measured_cumulative_ms": ref.measured_cum.round(4).tolist(),
                "extra_ms": ref.extra_ms.round(4).tolist(),
                "drift": ref.drift.round(3).tolist(),
                "note": f"the largest sub-network's runner timed on dev beside its depth-k prefixes as one graph "
                        f"each: each exit's cumulative cost as a line in the input's length over its {stat} (what "
                        "makes the per-layer table per input), and the runner's extra cost at each exit over the "
                        "predicted prefix, that prefix's drift (graph measured / predicted, per round: 'drift', "
                        "rounds x exits) divided out (added to every candidate's table)"},
            "device_drift": {"static_measured_over_predicted": drift, "note": "the chosen sub-network as one graph, "
                             "measured on test now / the device predictor's figure; > 1: the device runs slower today"},
            "per_layer_cost": {
                "note": f"cumulative cost of leaving at each exit (ms): predicted from the predictor's depth-k prefixes "
                        f"+ exit heads, vs the {stat} over {len(measured_cum)} dev inputs of the exported runner's "
                        "segment times (every layer run)",
                "predicted_cumulative_ms": np.cumsum(seg_pred).round(4).tolist(),
                "measured_cumulative_ms": measured_table.round(4).tolist(),
                "measured_over_predicted": (measured_table / np.cumsum(seg_pred)).round(3).tolist()},
            "dev_exit_histogram": exit_histogram(dev_layers, len(seg_pred)).round(4).tolist(),
        }
        write_json(self.out / "report.json", report)
        hist = {"dev": report["search"]["dev_exit_histogram"], "test": report["early_exit"]["test_exit_histogram"]}
        plot_histogram(hist, f"{cfg.describe()}\n{policy[0]} {policy[1]:g}", self.out / "exit_histogram.png")
        return report
