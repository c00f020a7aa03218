"""Early exit for one sub-network of a run: the trade-off over policies, the choice on dev, the
export, and its latency measured against its prediction (`hwnas early-exit`).

The sub-network runs on the supernet's weights, or is a standalone model of the run (``backbone``:
a fine-tuned export, with exit heads trained on it by `hwnas exits --model`): early exit on top
of fine-tuning, the two ways to speed up that compose.

The steps, each a method of ``EarlyExitStudy`` returning values (the command writes them):

1. ``exit_logits``: every exit's logits on dev and test, one pass each (supernet/exits.py);
2. ``export``: the sub-network and its exits as ONNX segments with the runner
   (latency/early_exit.py), into ``out/runner``;
3. ``segment_times``: the runner's per-layer cost, measured on dev inputs served one by one;
4. ``policy_table``: every policy's dev and test accuracy, exits and estimated latency;
5. ``choose``: on dev only, the policy with the lowest estimated mean latency whose dev score
   is within ``max_loss`` points of the static sub-network's (threshold 0, never early); or
   the policy a search chose (nas/exit_search.py);
6. ``measure``: the runner at the chosen policy and the static sub-network as one ONNX graph,
   serving test inputs one by one, in turn for a few rounds (medians of the rounds); the
   prediction is made in each round from the dev inputs' own segment times (all layers run)
   and the exits the policy takes on dev, so that prediction and measurement meet the same
   load on a shared machine. The runner also serves those dev inputs at the policy: against
   the prediction from their own segment times, that ratio is what timing every layer gets
   wrong about inputs that leave early (warm caches when most leave at the first exit), free
   of any difference between the dev and test samples.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latency.early_exit import (
    default_policies,
    estimate_latency,
    export_early_exit,
    export_static_graph,
    extend_segments,
    load_runner,
    policy_table,
    segment_times,
    single_inputs,
    static_graph_timing,
    time_early_exit,
    write_manifest_policy,
)
from nas.export import ImpossibleBudget
from supernet.errors import CheckpointError, ConfigError
from supernet.exits import (
    exit_histogram,
    exit_layers,
    exit_predictions,
    load_exits,
    model_exits_dir,
    predict_exits,
)
from supernet.extract import extract
from supernet.io import atomic_write, write_csv, write_json, write_together
from supernet.model import ElasticBert
from supernet.space import SubnetConfig
from supernet.train import weights_sha1
from supernet.workflow import LoadedRun

RESULT_FILES = ("report.json", "policies.csv")  # what a finished run leaves in --out beside runner/
TIMING_INPUTS = 300  # the first test inputs, written beside the runner for `exit_runner.py FOLDER --time`


@dataclass
class EarlyExitStudy:
    run: LoadedRun
    kind: str
    subnet: SubnetConfig
    out: Path
    threads: int | None = None
    stat: str = "p50"  # the latency statistic a budget applies to and the runtime at batch 1 is picked by
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    dev_segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    runtime: dict[str, Any] | None = None  # what ``pick_runtime`` timed and chose
    # A standalone model of the run (a fine-tuned export) instead of the supernet's weights for
    # ``subnet`` (then its configuration in the supernet, ``config_in_supernet``); its exit
    # heads are the ones `hwnas exits --model` trained on it.
    backbone: ElasticBert | None = None

    def __post_init__(self) -> None:
        if self.subnet.precision != "fp32":
            raise ConfigError("early exit runs fp32 sub-networks; give one without \"precision\": \"int8\"")
        if self.backbone is None:
            self.heads = load_exits(self.run.paths.exits(self.kind), backbone=self.run.supernet)
            self.model = extract(self.run.supernet, self.subnet).eval()
            self.backbone_sha = ""
        else:
            self.model = self.backbone.eval()
            self.backbone_sha = weights_sha1(self.model)
            folder = model_exits_dir(self.run.paths.exits(self.kind), self.backbone_sha)
            try:
                self.heads = load_exits(folder, backbone=self.model)
            except CheckpointError:
                raise CheckpointError(f"no {self.kind} exit heads for this model in {folder}: train them with "
                                      f"`hwnas exits --run {self.run.folder} --kind {self.kind} --model MODEL`") from None
        self.heads_sha = weights_sha1(self.heads)

    @property
    def labels(self) -> dict[str, np.ndarray]:
        return {s: self.run.splits[s].labels for s in ("dev", "test")}

    def exit_logits(self) -> dict[str, np.ndarray]:
        """Every exit's logits on dev and test; kept in ``out/exit_logits.npz`` (plain arrays)
        and reused by the next call for the same sub-network and heads."""
        cache = self.out / "exit_logits.npz"
        key = np.array(f"{self.subnet.key()}-{self.kind}-{self.heads_sha}-{self.backbone_sha}")
        if cache.exists():
            with np.load(cache, allow_pickle=False) as z:
                if str(z["key"]) == str(key):
                    self.logits = {s: z[s] for s in ("dev", "test")}
                    return self.logits
        if self.backbone is None:
            self.logits = {s: predict_exits(self.run.supernet, self.heads, self.run.splits[s], self.subnet)
                           for s in ("dev", "test")}
        else:
            self.logits = {s: predict_exits(self.model, self.heads, self.run.splits[s]) for s in ("dev", "test")}
        self.out.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
                np.savez(f, key=key, dev=self.logits["dev"], test=self.logits["test"])

        atomic_write(cache, write)
        return self.logits

    def export(self) -> Path:
        return export_early_exit(self.model, self.heads, self.out / "runner", criterion="entropy", threshold=0.0,
                                 tokenizer=self.run.tokenizer, max_length=self.run.spec.train.max_length,
                                 timing_inputs=self.run.splits["test"].input_ids[:TIMING_INPUTS],
                                 timing_types=self.run.splits["test"].token_type_ids[:TIMING_INPUTS])

    def segment_times(self, n: int) -> np.ndarray:
        """Each of the first ``n`` dev inputs' segment times (n, exits), all layers run."""
        runner = load_runner(self.out / "runner", threads=self.threads)
        return segment_times(runner, single_inputs(self.run.splits["dev"], n))

    def policy_table(self, segment_ms: np.ndarray) -> pd.DataFrame:
        """Every default policy scored on dev and test; latency estimated on dev from each dev
        input's own cost (``dev_segments``, the first inputs' timed, the others' from the runner's
        line in their length: ``extend_segments``), so that its p50 / p90 follow the spread of
        lengths (the mean is the per-layer table's); on test from the per-layer table ``segment_ms``."""
        tables: dict[str, np.ndarray] = {"dev": segment_ms, "test": segment_ms}
        if len(self.dev_segments):
            lengths = [len(x) for x in self.run.splits["dev"].input_ids]
            tables["dev"] = extend_segments(self.dev_segments, lengths, self.stat)
        return policy_table(self.logits, self.labels, tables, default_policies(len(segment_ms)),
                            self.run.task.metric)

    def choose(self, table: pd.DataFrame, max_loss: float) -> pd.Series:
        col = f"{self.run.task.metric}_dev"
        static = table[(table.criterion == "entropy") & (table.threshold == 0.0)].iloc[0]
        ok = table[table[col] >= static[col] - max_loss]
        return ok.sort_values(["est_mean_ms_dev", col], ascending=[True, False]).iloc[0]

    def choose_under(self, table: pd.DataFrame, budget_ms: float) -> pd.Series:
        """On dev only: the most accurate policy whose estimated ``stat`` meets ``budget_ms``
        (ties: the faster), as the search chooses (nas/exit_search.py). ImpossibleBudget when
        none does, naming the fastest."""
        col, est = f"{self.run.task.metric}_dev", f"est_{self.stat}_ms_dev"
        ok = table[table[est] <= budget_ms]
        if ok.empty:
            fastest = table.sort_values(est).iloc[0]
            raise ImpossibleBudget(
                f"no exit policy of this sub-network meets {budget_ms:.3f} ms ({self.stat}, estimated on dev): the "
                f"fastest, {fastest.criterion} {fastest.threshold:g}, is {fastest[est]:.3f} ms; give a larger budget")
        return ok.sort_values([col, est], ascending=[False, True]).iloc[0]

    def full_model_ms(self, n: int, rounds: int) -> float:
        """The supernet's largest sub-network as one graph (our full model) on the first ``n`` dev
        inputs: the median of ``stat`` over ``rounds`` rounds. What ``--speedup`` divides, as in
        the search."""
        graph = export_static_graph(extract(self.run.supernet, self.run.space.largest()).eval(), self.out / "full")
        inputs = single_inputs(self.run.splits["dev"], n)
        return float(np.median([static_graph_timing(graph, inputs, threads=self.threads)[f"{self.stat}_ms"]
                                for _ in range(rounds)]))

    def test_difference(self, criterion: str, threshold: float) -> dict[str, Any]:
        """The policy's test score minus the same sub-network's with every layer run (its last
        exit), on the same test inputs: points, paired-bootstrap 95% interval (``nas.stats``)."""
        from nas.stats import compare_with

        lg = self.logits["test"]
        early = exit_predictions(lg, exit_layers(lg, criterion, threshold))
        return compare_with(lg[-1], early, self.labels["test"], metric=self.run.task.metric)

    def measure(self, policy: pd.Series, n_cost: int, n_time: int | None, rounds: int) -> dict[str, Any]:
        """``rounds`` rounds, each: the static graph on test, the segment times on dev (the
        prediction's input, taken beside the measurement so that both meet the same load on a
        shared machine) and the runner at ``policy`` on test. Medians over the rounds."""
        inputs = single_inputs(self.run.splits["test"], n_time)
        dev_inputs = single_inputs(self.run.splits["dev"], n_cost)
        self.runtime = self.pick_runtime(policy, dev_inputs, rounds)
        runner = load_runner(self.out / "runner", threads=self.threads, criterion=str(policy.criterion),
                             threshold=float(policy.threshold))
        dev_layers = exit_layers(self.logits["dev"][:, :n_cost], str(policy.criterion), float(policy.threshold))
        graph = export_static_graph(self.model, self.out)
        static, early, predicted, table, early_dev = [], [], [], [], []
        for _ in range(rounds):
            static.append(static_graph_timing(graph, inputs, threads=self.threads))
            per_input = segment_times(runner, dev_inputs)
            table.append(estimate_latency(per_input.mean(0), dev_layers))
            predicted.append(estimate_latency(per_input, dev_layers))
            early_dev.append(time_early_exit(runner, dev_inputs))
            early.append(time_early_exit(runner, inputs))
        med = {name: {k: float(np.median([r[k] for r in rs])) for k in ("mean_ms", "p50_ms", "p90_ms")}
               for name, rs in (("static", static), ("early_exit", early), ("predicted", predicted),
                                ("predicted_table", table), ("early_exit_dev", early_dev))}
        med["early_exit_exits"] = early[-1]["exits"]
        return med

    def pick_runtime(self, policy: pd.Series, inputs: Sequence[tuple[np.ndarray, ...]],
                     rounds: int) -> dict[str, Any] | None:
        """At batch 1 with the entropy criterion, the runner can serve through its segments or
        through ``one_graph.onnx`` (the segments joined with ``If`` nodes): both serve ``inputs``
        at ``policy``, ``rounds`` rounds in turn, and the faster on ``stat`` (medians) is written
        into the runner's manifest, which the runner follows. Which one wins depends on the
        sub-network and policy (on rt the one graph was 11% faster at the p50 for a narrow
        sub-network, 4% slower for the largest with most inputs running deep: README). None
        where there is no choice (patience, or no one graph)."""
        folder = self.out / "runner"
        manifest_path = folder / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        if str(policy.criterion) != "entropy" or not (folder / "one_graph.onnx").is_file():
            return None
        write_json(manifest_path, {**manifest, "one_graph": "one_graph.onnx"})
        crit, thr = str(policy.criterion), float(policy.threshold)
        runners = {"segments": load_runner(folder, threads=self.threads, criterion=crit, threshold=thr, one_graph=False),
                   "one_graph": load_runner(folder, threads=self.threads, criterion=crit, threshold=thr)}
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(rounds):
            for name, runner in runners.items():
                times[name].append(time_early_exit(runner, inputs)[f"{self.stat}_ms"])
        med = {name: float(np.median(t)) for name, t in times.items()}
        chosen = min(med, key=lambda name: med[name])
        manifest = {k: v for k, v in manifest.items() if k != "one_graph"}
        write_json(manifest_path, {**manifest, "one_graph": "one_graph.onnx"} if chosen == "one_graph" else manifest)
        return {"stat": self.stat, "dev_inputs": len(inputs), "rounds": rounds, "segments_ms": med["segments"],
                "one_graph_ms": med["one_graph"], "chosen": chosen}

    def run_all(self, *, max_loss: float, n_cost: int, n_time: int | None, rounds: int,
                policy: tuple[str, float] | None = None, n_stock: int = 0, budget_ms: float | None = None,
                speedup: float | None = None, write_report: bool = True) -> tuple[pd.DataFrame, dict]:
        """Every step; returns the policy table and the report (both also written to ``out``, together
        at the end, a previous run's first removed; ``write_report`` False: the report is only
        returned, for a caller that writes its own, as the search does).
        ``policy``: export and measure this one (one of ``default_policies``) instead of
        choosing within ``max_loss``; exit logits already in ``self.logits`` are used.
        ``budget_ms`` (or ``speedup``: the budget is ``full_model_ms`` / it): choose the most
        accurate policy on dev under it (``choose_under``) instead of within ``max_loss``.
        ``n_stock`` > 0: the chosen runner is then timed beside the teacher's stock deployments
        and the static sub-network on the first ``n_stock`` test inputs (``beside_stock``;
        report ``beside_stock``)."""
        t0 = time.time()
        for stale in RESULT_FILES:  # a previous run's results here: gone before a new runner is made beside them
            (self.out / stale).unlink(missing_ok=True)
        if not self.logits:
            self.exit_logits()
        self.export()
        self.dev_segments = self.segment_times(n_cost)  # (n_cost, exits)
        seg = self.dev_segments.mean(0)  # the per-layer cost table
        table = self.policy_table(seg)
        budget: dict[str, Any] | None = None
        full_ms = 0.0
        if speedup is not None:
            full_ms = self.full_model_ms(n_cost, rounds)
            budget_ms = full_ms / speedup
            budget = {"speedup": speedup, "full_model_ms_dev": full_ms}
        if budget_ms is not None:
            budget = {"ms": budget_ms, "stat": self.stat, **(budget or {})}
        if policy is None and budget_ms is not None:
            try:
                chosen = self.choose_under(table, budget_ms)
            except ImpossibleBudget as e:  # no half-made export: the runner goes, the logits cache stays
                for folder in ("runner", "full"):
                    shutil.rmtree(self.out / folder, ignore_errors=True)
                (self.out / "static.onnx").unlink(missing_ok=True)
                base = "" if speedup is None else (f"; the budget was the largest sub-network's {self.stat} as one "
                                                   f"graph, {full_ms:.4g} ms, / {speedup:g}")
                raise ImpossibleBudget(f"{e}{base}") from None
        elif policy is None:
            chosen = self.choose(table, max_loss)
        else:
            match = table[(table.criterion == policy[0]) & np.isclose(table.threshold, policy[1])]
            if match.empty:
                raise ConfigError(f"policy {policy} is not one of the scored policies")
            chosen = match.iloc[0]
        write_manifest_policy(self.out / "runner", str(chosen.criterion), float(chosen.threshold))
        timed = self.measure(chosen, n_cost, n_time, rounds)
        metric = self.run.task.metric
        n_test = n_time or len(self.run.splits["test"])
        test_exits = exit_layers(self.logits["test"][:, :n_test], str(chosen.criterion), float(chosen.threshold))
        predicted = timed["predicted"]
        static_row = table[(table.criterion == "entropy") & (table.threshold == 0.0)].iloc[0]
        measured = timed["early_exit"]
        report = {
            "subnet": self.subnet.to_dict(), "exit_kind": self.kind,
            "max_loss": max_loss if policy is None and budget is None else None, "budget": budget,
            "policy": {"criterion": str(chosen.criterion), "threshold": float(chosen.threshold)},
            "static": {f"{metric}_dev": float(static_row[f"{metric}_dev"]),
                       f"{metric}_test": float(static_row[f"{metric}_test"]),
                       "measured_test": timed["static"]},
            "early_exit": {f"{metric}_dev": float(chosen[f"{metric}_dev"]), f"{metric}_test": float(chosen[f"{metric}_test"]),
                           "test_exit_histogram": exit_histogram(test_exits, len(seg)).round(4).tolist(),
                           "runner_exits_same_as_pytorch": float((timed["early_exit_exits"] == test_exits).mean()),
                           "predicted_from_dev": predicted, "predicted_from_dev_table": timed["predicted_table"],
                           # The same dev inputs served at the policy: what timing every layer
                           # (the prediction's input) misses, with no sample difference.
                           "measured_dev_at_policy": timed["early_exit_dev"],
                           "measured_dev_over_predicted_from_dev": {
                               k: timed["early_exit_dev"][k] / predicted[k] for k in ("mean_ms", "p50_ms", "p90_ms")},
                           "measured_test": measured},
            "test_loss_points": float(static_row[f"{metric}_test"] - chosen[f"{metric}_test"]),
            "test_difference": self.test_difference(str(chosen.criterion), float(chosen.threshold)),
            "speedup_mean_measured": timed["static"]["mean_ms"] / measured["mean_ms"],
            "speedup_p50_measured": timed["static"]["p50_ms"] / measured["p50_ms"],
            "layers_run_mean_test": float(test_exits.mean() + 1),  # of len(segment_ms_dev) layers
            "layers_fewer_factor_test": len(seg) / float(test_exits.mean() + 1),  # all layers / those run
            "p50_measured_over_predicted": measured["p50_ms"] / predicted["p50_ms"],
            "mean_measured_over_predicted": measured["mean_ms"] / predicted["mean_ms"],
            "segment_ms_dev": seg.round(4).tolist(),
            # Batch 1: the runner's segments or its one graph with If nodes, whichever served
            # the dev inputs faster at the policy (``pick_runtime``; None: no choice).
            "runtime_batch1": self.runtime,
            "timing": {"rounds": rounds, "test_inputs": n_test, "dev_inputs_for_cost": n_cost,
                       "threads": self.threads, "loadavg_at_end": list(os.getloadavg()),
                       "note": "batch 1, inputs one by one; this machine is shared (label figures as measured "
                               "under contention)"},
            "wall_s": round(time.time() - t0, 1),
        }
        if self.backbone is not None:
            report["model_weights"] = self.backbone_sha
        if n_stock:
            runner = load_runner(self.out / "runner", threads=self.threads, criterion=str(chosen.criterion),
                                 threshold=float(chosen.threshold))
            test = self.logits["test"]
            preds = exit_predictions(test, exit_layers(test, str(chosen.criterion), float(chosen.threshold)))
            report["beside_stock"] = beside_stock(self.run, {"ours-static": self.out / "static.onnx"}, runner, preds,
                                                  n=n_stock, rounds=rounds, threads=self.threads, stat=self.stat)
        files = {"policies.csv": functools.partial(write_csv, frame=table)}
        if write_report:
            files["report.json"] = functools.partial(write_json, obj=report)
        write_together(self.out, "early_exit", files)
        return table, report


def beside_stock(run: LoadedRun, graphs: Mapping[str, Path], runner: Any, test_predictions: np.ndarray, *, n: int,
                 rounds: int, threads: int | None, stat: str) -> dict[str, Any]:
    """What a user could deploy without us, timed beside ours: the stock deployments of the
    run's teacher (``latency.baselines.stock_models``: exported to ONNX, after ONNX Runtime's
    optimizer, dynamic INT8), ``graphs`` (name -> ONNX file: ours as static graphs; ``ours``
    among them when ``runner`` is None) and ``runner`` (an early-exit runner at its policy,
    timed as ``ours``), each serving the first ``n`` test inputs one by one (batch 1), in turn,
    ``rounds`` rounds (medians of each one's mean / p50 / p90 per call). Returns ``ours``'s
    speed-ups on ``stat`` and on the mean against the fastest stock fp32 deployment (chosen
    on ``stat``) and stock INT8, and its test score (``test_predictions``: logits (N, C) on
    the whole test split) against the teacher's, paired bootstrap (``nas.stats.compare_with``)."""
    from latency.baselines import STOCK_SCORE, speedups, stock_models
    from nas.stats import compare_with
    from supernet.checkpoint import load_model
    from supernet.evaluate import predict, scores

    metric, labels = run.task.metric, run.splits["test"].labels
    stock = stock_models(run, batch=1)
    inputs = single_inputs(run.splits["test"], n)
    paths = {**{name: Path(v["path"]) for name, v in stock.items()}, **graphs}
    times: dict[str, list[dict[str, Any]]] = {name: [] for name in [*paths, "ours"]}
    for _ in range(rounds):
        for name, graph in paths.items():
            times[name].append(static_graph_timing(graph, inputs, threads=threads))
        if runner is not None:
            times["ours"].append(time_early_exit(runner, inputs))
    keys = ("mean_ms", "p50_ms", "p90_ms")
    rows: dict[str, dict[str, Any]] = {
        name: {k: float(np.median([r[k] for r in rs])) for k in keys} for name, rs in times.items()}
    for name, v in stock.items():
        rows[name]["score_test"] = 100 * float(v[STOCK_SCORE[metric]])
    preds = np.asarray(test_predictions)
    rows["ours"]["score_test"] = 100 * scores(preds, labels)[metric]
    on_stat = speedups({name: r[f"{stat}_ms"] for name, r in rows.items()}, "ours")
    on_mean = speedups({name: r["mean_ms"] for name, r in rows.items()}, "ours")
    fastest = on_stat["fastest_stock_fp32"]  # by the statistic; the mean is read against it too
    teacher_test = predict(load_model(run.paths.teacher), run.splits["test"])
    return {
        "test_inputs": len(inputs), "rounds": rounds, "metric": metric, "deployments": rows,
        "fastest_stock_fp32": fastest,
        f"speedup_{stat}_vs_fastest_stock_fp32": on_stat["vs_fastest_stock_fp32"],
        "speedup_mean_vs_fastest_stock_fp32": rows[fastest]["mean_ms"] / rows["ours"]["mean_ms"],
        f"speedup_{stat}_vs_stock_int8": on_stat["vs_stock_int8"],
        "speedup_mean_vs_stock_int8": on_mean["vs_stock_int8"],
        "ours_minus_teacher_test": compare_with(teacher_test, preds, labels, metric=metric),
        "note": "each model serving the same test inputs one by one (batch 1), in turn, medians over rounds; "
                "the stock models' scores are the teacher's (fp32) and its dynamic INT8 graph's (batch 1)"}
