"""Early exit for one sub-network of a run: the trade-off over policies, the choice on dev, the
export, and its latency measured against its prediction (`hwnas early-exit`).

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

import json
import os
import time
from collections.abc import Sequence
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
    load_runner,
    policy_table,
    segment_times,
    single_inputs,
    static_graph_timing,
    time_early_exit,
    write_manifest_policy,
)
from supernet.errors import ConfigError
from supernet.exits import exit_histogram, exit_layers, exit_predictions, load_exits, predict_exits
from supernet.extract import extract
from supernet.io import atomic_write, write_csv, write_json
from supernet.space import SubnetConfig
from supernet.train import weights_sha1
from supernet.workflow import LoadedRun

TIMING_INPUTS = 300  # the first test inputs, written beside the runner for `exit_runner.py FOLDER --time`


@dataclass
class EarlyExitStudy:
    run: LoadedRun
    kind: str
    subnet: SubnetConfig
    out: Path
    threads: int | None = None
    stat: str = "p50"  # the latency statistic the runtime at batch 1 is picked by (``pick_runtime``)
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    dev_segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    runtime: dict[str, Any] | None = None  # what ``pick_runtime`` timed and chose

    def __post_init__(self) -> None:
        if self.subnet.precision != "fp32":
            raise ConfigError("early exit runs fp32 sub-networks; give one without \"precision\": \"int8\"")
        self.heads = load_exits(self.run.paths.exits(self.kind))
        self.heads_sha = weights_sha1(self.heads)
        self.model = extract(self.run.supernet, self.subnet).eval()

    @property
    def labels(self) -> dict[str, np.ndarray]:
        return {s: self.run.splits[s].labels for s in ("dev", "test")}

    def exit_logits(self) -> dict[str, np.ndarray]:
        """Every exit's logits on dev and test; kept in ``out/exit_logits.npz`` (plain arrays)
        and reused by the next call for the same sub-network and heads."""
        cache = self.out / "exit_logits.npz"
        key = np.array(f"{self.subnet.key()}-{self.kind}-{self.heads_sha}")
        if cache.exists():
            with np.load(cache, allow_pickle=False) as z:
                if str(z["key"]) == str(key):
                    self.logits = {s: z[s] for s in ("dev", "test")}
                    return self.logits
        self.logits = {s: predict_exits(self.run.supernet, self.heads, self.run.splits[s], self.subnet)
                       for s in ("dev", "test")}
        self.out.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
                np.savez(f, key=key, dev=self.logits["dev"], test=self.logits["test"])

        atomic_write(cache, write)
        return self.logits

    def export(self) -> Path:
        return export_early_exit(self.model, self.heads, self.out / "runner", criterion="entropy", threshold=0.0,
                                 tokenizer=self.run.tokenizer, max_length=self.run.spec.train.max_length,
                                 timing_inputs=self.run.splits["test"].input_ids[:TIMING_INPUTS])

    def segment_times(self, n: int) -> np.ndarray:
        """Each of the first ``n`` dev inputs' segment times (n, exits), all layers run."""
        runner = load_runner(self.out / "runner", threads=self.threads)
        return segment_times(runner, single_inputs(self.run.splits["dev"], n))

    def policy_table(self, segment_ms: np.ndarray) -> pd.DataFrame:
        return policy_table(self.logits, self.labels, segment_ms, default_policies(len(segment_ms)),
                            self.run.task.metric)

    def choose(self, table: pd.DataFrame, max_loss: float) -> pd.Series:
        col = f"{self.run.task.metric}_dev"
        static = table[(table.criterion == "entropy") & (table.threshold == 0.0)].iloc[0]
        ok = table[table[col] >= static[col] - max_loss]
        return ok.sort_values(["est_mean_ms_dev", col], ascending=[True, False]).iloc[0]

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
                policy: tuple[str, float] | None = None) -> tuple[pd.DataFrame, dict]:
        """Every step; returns the policy table and the report (both also written to ``out``).
        ``policy``: export and measure this one (one of ``default_policies``) instead of
        choosing within ``max_loss``; exit logits already in ``self.logits`` are used."""
        t0 = time.time()
        if not self.logits:
            self.exit_logits()
        self.export()
        self.dev_segments = self.segment_times(n_cost)  # (n_cost, exits)
        seg = self.dev_segments.mean(0)  # the per-layer cost table
        table = self.policy_table(seg)
        if policy is None:
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
            "subnet": self.subnet.to_dict(), "exit_kind": self.kind, "max_loss": max_loss if policy is None else None,
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
            "layers_saved_mean_test": len(seg) / float(test_exits.mean() + 1),
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
        write_csv(self.out / "policies.csv", table)
        write_json(self.out / "report.json", report)
        return table, report
