"""Early exit on a device: the exported runtime that stops early, its per-layer cost, and the
latency a policy is predicted to have.

- ``export_early_exit``: a standalone sub-network and its exit heads as ONNX *segments*, one per
  layer (segment 0 also holds the embeddings; each segment ends with its exit's logits, the
  last with the final classifier), with ``manifest.json``, the tokenizer and the runner
  ``exit_runner.py`` (numpy + onnxruntime only) beside them. Segments rather than one graph
  with control flow: the runner can drop the rows that are done between layers.
- ``segment_times``: each segment's time on real inputs served one by one, all layers run
  (never exiting); its mean over the inputs is the per-layer cost table.
- ``estimate_latency``: a policy's latency from that table (or from each input's own segment
  times) and the exits its inputs take on dev: each input costs the segments up to its exit;
  mean / p50 / p90 over the inputs.
- ``time_early_exit``: the runner serving real inputs one by one, timed per call.
- ``predicted_segment_ms``: a per-layer cost table without timing the sub-network (for the
  search over sub-networks, nas/exit_search.py): the device's latency predictor applied to
  the sub-network's depth-k prefixes (``prefix``), plus the exit head's cost timed once on the
  device (``head_cost_ms``).
- ``LengthSpread``: the per-input spread that such a table lacks. One reference runner's segment
  times on dev say how an input's cost at each exit grows with its length; a predicted table
  (one figure per exit, the statistic over the device's traffic) becomes each input's own
  costs (``spread_table``), so that a policy's p50 / p90 / mean is taken over inputs that differ
  in length as real ones do, not over copies of one typical input.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from latency.onnx_export import quiet_exporter
from supernet.data import Encoded
from supernet.exits import ExitHeads, check_heads_fit, exit_histogram, exit_layers, exit_predictions
from supernet.io import atomic_write, write_json
from supernet.model import ElasticBert
from supernet.space import SubnetConfig

RUNNER = Path(__file__).with_name("exit_runner.py")
FIRST_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
NEXT_INPUTS = ("hidden_in", "mask_in", "lengths", "total")
OUTPUTS = ("hidden", "mask", "logits")


class _Segment(nn.Module):
    """Layer ``j`` of a standalone model and its exit (the final classifier for the last layer);
    segment 0 starts from the token ids."""

    def __init__(self, model: ElasticBert, heads: ExitHeads, j: int) -> None:
        super().__init__()
        self.model, self.heads, self.j = model, heads, j
        self.last = j == model.shape.num_layers - 1

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        if self.j == 0:
            input_ids, attention_mask, token_type_ids = inputs  # (B, T) each
            mask = attention_mask.bool()
            lengths = mask.sum(1)  # (B,)
            total = lengths.new_full((), input_ids.shape[1])  # () from the shape: T stays dynamic
            x = m.embeddings(input_ids, mask, token_type_ids)  # (B, T, H)
        else:
            x, mask, lengths, total1 = inputs  # (B, T, H), (B, T), (B,), (1,)
            total = total1[0]
        x, mask, _ = m.layer_step(m.own_config(), self.j, x, mask, lengths, total)  # (B, T', H)
        if self.last:
            logits = m.classify(x)
        else:
            logits = self.heads.head(m.shape.source_layers[self.j])(x, mask)  # (B, C)
        return x, mask, logits


def _segment_inputs(model: ElasticBert) -> tuple[tuple[torch.Tensor, ...], list[tuple[torch.Tensor, ...]]]:
    """Example inputs to trace every segment with: a padded batch of two, run through the
    model's layers (so each segment sees the shapes it will)."""
    from latency.onnx_export import _example_inputs

    ids, mask, *types = _example_inputs(model)  # no token types for a family without them (DistilBERT)
    tt = types[0] if types else torch.zeros_like(ids)  # unused there: the exporter leaves it out of the graph
    first: tuple[torch.Tensor, ...] = (ids, mask, tt)
    lengths = mask.bool().sum(1)
    total = torch.tensor([ids.shape[1]])
    nexts: list[tuple[torch.Tensor, ...]] = []
    with torch.no_grad():
        for _, x, m in model.layer_states(ids, mask, tt):
            nexts.append((x, m, lengths, total))
    return first, nexts


def export_early_exit(
    model: ElasticBert,
    heads: ExitHeads,
    folder: str | Path,
    *,
    criterion: str,
    threshold: float,
    tokenizer: Any = None,
    max_length: int = 512,
    opset: int = 18,
    timing_inputs: Sequence[Sequence[int]] | None = None,
    timing_types: Sequence[Sequence[int]] | None = None,
) -> Path:
    """Write ``model`` (a standalone sub-network, ``supernet.extract.extract``) with its exits
    as ONNX segments plus manifest, runner and tokenizer (module doc), and the segments joined
    into one graph with If nodes (``one_graph_with_exits``, served at batch 1), into ``folder``. Both
    are traced in eval mode and left in the modes they came in."""
    check_heads_fit(model, heads)
    modes = model.training, heads.training
    try:
        _write_segments(model.eval(), heads.eval(), Path(folder), opset)
    finally:
        model.train(modes[0])
        heads.train(modes[1])
    out = Path(folder)
    shutil.copy(RUNNER, out / RUNNER.name)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out / "tokenizer"))
    if timing_inputs:  # for `exit_runner.py FOLDER --time` on another device: token ids and types, plain arrays
        rows = [np.asarray(r, dtype=np.int64) for r in timing_inputs]
        types = [np.asarray(t, dtype=np.int64) for t in timing_types] if timing_types else [np.zeros_like(r) for r in rows]
        if [len(t) for t in types] != [len(r) for r in rows]:
            raise ValueError("timing_types must give one token type per token of timing_inputs")
        offsets = np.cumsum([0, *(len(r) for r in rows)]).astype(np.int64)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, ids=np.concatenate(rows), types=np.concatenate(types), offsets=offsets)

        atomic_write(out / "timing_inputs.npz", write)
    manifest = {
        "segments": [f"segment_{j:02d}.onnx" for j in range(model.shape.num_layers)],
        "num_labels": model.shape.num_labels, "criterion": criterion,
        "threshold": threshold, "max_length": max_length, "exit_kind": heads.kind,
        "source_layers": list(model.shape.source_layers)}
    write_json(out / "manifest.json", manifest)
    # Batch 1 with the entropy criterion: the same segments as one graph with If nodes, which
    # the runner serves single inputs with while the manifest lists it (listed here; the
    # study's timing then keeps it only where it served faster: nas.early_exit.pick_runtime).
    try:
        one_graph_with_exits(out)
    except ValueError:  # a segment the joining does not handle: the runner serves with segments alone
        (out / "one_graph.onnx").unlink(missing_ok=True)
        return out
    write_json(out / "manifest.json", {**manifest, "one_graph": "one_graph.onnx"})
    return out


def _write_segments(model: ElasticBert, heads: ExitHeads, out: Path, opset: int) -> None:
    """One ONNX graph per layer (``_Segment``), ``segment_NN.onnx`` in ``out``."""
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    first, nexts = _segment_inputs(model)
    for j in range(model.shape.num_layers):
        name = f"segment_{j:02d}.onnx"
        args, in_names = (first, FIRST_INPUTS) if j == 0 else (nexts[j - 1], NEXT_INPUTS)
        # The layer may drop tokens: its outputs' length is its own axis, not the input's.
        axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in (*FIRST_INPUTS, "hidden_in", "mask_in")}
        axes.update({"hidden": {0: "batch", 1: "kept"}, "mask": {0: "batch", 1: "kept"},
                     "lengths": {0: "batch"}, "logits": {0: "batch"}})
        axes = {k: v for k, v in axes.items() if k in (*in_names, *OUTPUTS)}
        path = out / name
        # An eval-mode wrapper: the exporter restores the wrapper's own mode afterwards, and
        # a wrapper left in training mode would put the model and heads in it too.
        with quiet_exporter(), torch.no_grad():
            torch.onnx.export(_Segment(model, heads, j).eval(), args, str(path), dynamo=False,
                              input_names=list(in_names), output_names=list(OUTPUTS), dynamic_axes=axes,
                              opset_version=opset)
        onnx.checker.check_model(str(path))


def one_graph_with_exits(folder: str | Path, path: str | Path | None = None) -> Path:
    """The exported segments (``export_early_exit``) joined into one ONNX graph whose exits are
    ``If`` nodes, for batch 1 and the entropy criterion: inputs those of segment 0 plus
    ``threshold`` (a float scalar), outputs ``logits`` (1, C) and ``exit`` (0-based, int64).
    Segment j + 1 runs inside the else branch of exit j's ``If``, so an input that leaves at
    exit j runs nothing after it, as with the runner, in one session call instead of one per
    layer run (the single graph with control flow the issue asked to measure against the
    segments: ``scripts/control_flow_check.py``). Written to ``path`` (default
    ``folder/one_graph.onnx``)."""
    import math

    import onnx
    from onnx import TensorProto, helper

    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    graphs = [onnx.load(str(folder / name)).graph for name in manifest["segments"]]
    first = [i.name for i in graphs[0].input]
    initializers: list[Any] = []

    def nodes_of(j: int, feeds: dict[str, str]) -> list[Any]:
        """Segment j's nodes, every name prefixed ``sJ/`` except the inputs fed from outside."""
        g = graphs[j]
        for init in g.initializer:
            init = onnx.TensorProto.FromString(init.SerializeToString())
            init.name = f"s{j}/{init.name}"
            initializers.append(init)

        def name(x: str) -> str:
            return x if x == "" else feeds.get(x, f"s{j}/{x}")

        out = []
        for n in g.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
                raise ValueError(f"{manifest['segments'][j]} holds a sub-graph ({n.op_type}); it cannot be joined")
            m = onnx.NodeProto.FromString(n.SerializeToString())
            m.name = f"s{j}/{n.name}"
            m.input[:] = [name(x) for x in n.input]
            m.output[:] = [name(x) for x in n.output]
            out.append(m)
        return out

    def constant(value_name: str, value: int) -> Any:
        return helper.make_node("Constant", [], [value_name], value=helper.make_tensor(
            value_name + "_v", TensorProto.INT64, [], [value]))

    def level(j: int) -> tuple[list[Any], str, str]:
        """Segment j and everything after it: its nodes and the names of (logits, exit)."""
        feeds = {x: x for x in first} if j == 0 else {
            "hidden_in": f"s{j - 1}/hidden", "mask_in": f"s{j - 1}/mask", "lengths": "lengths", "total": "total"}
        nodes = nodes_of(j, feeds)
        logits = f"s{j}/logits"
        if j == len(graphs) - 1:
            nodes.append(constant(f"s{j}/exit", j))
            return nodes, logits, f"s{j}/exit"
        p = f"s{j}/p"
        nodes += [helper.make_node("Softmax", [logits], [p], axis=-1),
                  helper.make_node("Clip", [p, "tiny"], [p + "c"]),
                  helper.make_node("Log", [p + "c"], [p + "log"]),
                  helper.make_node("Mul", [p, p + "log"], [p + "plogp"]),
                  helper.make_node("ReduceSum", [p + "plogp", "last_axis"], [p + "sum"], keepdims=0),
                  helper.make_node("Div", [p + "sum", "minus_log_c"], [p + "entropy"]),
                  helper.make_node("Less", [p + "entropy", "threshold"], [p + "leave"])]
        then_nodes = [helper.make_node("Identity", [logits], [f"t{j}/logits"]), constant(f"t{j}/exit", j)]
        rest, rest_logits, rest_exit = level(j + 1)

        def branch(name: str, body: list[Any], lg: str, ex: str) -> Any:
            body = [*body, helper.make_node("Identity", [lg], [f"{name}/logits_out"]),
                    helper.make_node("Identity", [ex], [f"{name}/exit_out"])]
            return helper.make_graph(body, name, [], [
                helper.make_tensor_value_info(f"{name}/logits_out", TensorProto.FLOAT, None),
                helper.make_tensor_value_info(f"{name}/exit_out", TensorProto.INT64, None)])

        nodes.append(helper.make_node(
            "If", [p + "leave"], [f"if{j}/logits", f"if{j}/exit"], name=f"exit{j}",
            then_branch=branch(f"leave{j}", then_nodes, f"t{j}/logits", f"t{j}/exit"),
            else_branch=branch(f"go{j}", rest, rest_logits, rest_exit)))
        return nodes, f"if{j}/logits", f"if{j}/exit"

    num_labels = int(manifest["num_labels"])
    prelude = [
        helper.make_node("Cast", ["attention_mask"], ["mask_i64"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["mask_i64", "seq_axis"], ["lengths"], keepdims=0),
        helper.make_node("Shape", ["input_ids"], ["total"], start=1, end=2),
    ]
    body, logits, exit_ = level(0)
    body += [helper.make_node("Identity", [logits], ["logits"]), helper.make_node("Identity", [exit_], ["exit"])]
    consts = [helper.make_tensor("tiny", TensorProto.FLOAT, [], [1e-30]),
              helper.make_tensor("last_axis", TensorProto.INT64, [1], [-1]),
              helper.make_tensor("seq_axis", TensorProto.INT64, [1], [1]),
              helper.make_tensor("minus_log_c", TensorProto.FLOAT, [], [-math.log(num_labels)])]
    inputs = [*graphs[0].input]
    if "attention_mask" not in first:
        raise ValueError("segment 0 takes no attention_mask: the lengths cannot be computed")
    inputs.append(helper.make_tensor_value_info("threshold", TensorProto.FLOAT, []))
    graph = helper.make_graph(prelude + body, "one_graph_with_exits", inputs, [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, num_labels]),
        helper.make_tensor_value_info("exit", TensorProto.INT64, [])], initializer=[*consts, *initializers])
    base = onnx.load(str(folder / manifest["segments"][0]), load_external_data=False)
    model = helper.make_model(graph, opset_imports=list(base.opset_import), ir_version=base.ir_version)
    onnx.checker.check_model(model)
    target = Path(path) if path is not None else folder / "one_graph.onnx"
    onnx.save(model, str(target))
    return target


def load_runner(folder: str | Path, *, threads: int | None = None, criterion: str | None = None,
                threshold: float | None = None, one_graph: bool = True) -> Any:
    """The exported runner (``exit_runner.EarlyExitModel``), loaded from hwnas's copy of it
    (``one_graph=False``: single inputs through the segments too, as batches go)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hwnas_exit_runner", RUNNER)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.EarlyExitModel(folder, threads=threads, criterion=criterion, threshold=threshold, one_graph=one_graph)


def single_inputs(enc: Encoded, n: int | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The first ``n`` inputs of ``enc`` one by one, unpadded, as int64 (1, T) arrays, with their
    own token types (a sentence pair's second segment is type 1: it changes the logits, hence the exit)."""
    k = n if n is not None else len(enc)
    out = []
    for r, t in zip(enc.input_ids[:k], enc.token_type_ids[:k], strict=True):
        ids = np.asarray(r, dtype=np.int64)[None]
        out.append((ids, np.ones_like(ids), np.asarray(t, dtype=np.int64)[None]))
    return out


def segment_times(runner: Any, inputs: Sequence[tuple[np.ndarray, ...]], *, warmup: int = 10) -> np.ndarray:
    """Each segment's time in ms for each of ``inputs`` served one by one, every layer run
    (the runner's threshold is set so that nothing exits early, then restored): (N, exits).
    Its mean over the inputs is the per-layer cost table."""
    saved = runner.criterion, runner.threshold
    runner.criterion, runner.threshold = "entropy", 0.0  # never below 0: all layers run
    try:
        for feed in inputs[:warmup]:
            runner.run(*feed, segment_ms=[])  # the segments, as timed (without it batch 1 runs the one graph)
        per = np.zeros((len(inputs), runner.num_exits))
        for k, feed in enumerate(inputs):
            ms: list[float] = []
            runner.run(*feed, segment_ms=ms)
            per[k] = ms
    finally:
        runner.criterion, runner.threshold = saved
    return per


def estimate_latency(segment_ms: np.ndarray, layers: np.ndarray) -> dict[str, float]:
    """A policy's latency: input k costs the segments up to its exit ``layers[k]`` (0-based);
    mean, p50 and p90 over the inputs, in ms. ``segment_ms``: a per-layer cost table (exits,),
    the same for every input, or each input's own segment times (N, exits), measured with
    every layer run (``segment_times``), which carries its length and the timing's spread."""
    table = np.asarray(segment_ms, dtype=float)
    layers = np.asarray(layers)
    if table.ndim == 1:
        cost = np.cumsum(table)[layers]
    else:
        cost = np.cumsum(table, axis=1)[np.arange(len(layers)), layers]
    return {"mean_ms": float(cost.mean()), "p50_ms": float(np.percentile(cost, 50)),
            "p90_ms": float(np.percentile(cost, 90))}


def estimate_interval(segment_ms: np.ndarray, layers: np.ndarray, stat: str, *, n_resamples: int = 2000,
                      level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """How far ``estimate_latency``'s ``stat`` could move with another sample of inputs like
    these: its ``level`` percentile interval over ``n_resamples`` resamples of the inputs (with
    replacement; each keeps its own exit and costs). A policy whose exits split the inputs
    near the statistic (a p50 where half leave at the first exit) has a wide one: the dev set
    cannot promise that figure closer than this on other traffic."""
    if stat not in STAT_FUNCS:
        raise ValueError(f"stat must be one of {', '.join(STAT_FUNCS)}, got {stat!r}")
    table, layers = np.asarray(segment_ms, dtype=float), np.asarray(layers)
    cum = np.cumsum(table, axis=-1)
    cost = cum[layers] if table.ndim == 1 else cum[np.arange(len(layers)), layers]
    rng = np.random.default_rng(seed)
    stats = STAT_FUNCS[stat](cost[rng.integers(0, cost.size, size=(cost.size, n_resamples))])
    tail = (1 - level) / 2
    lo, hi = np.quantile(stats, [tail, 1 - tail])
    return float(lo), float(hi)


def time_early_exit(runner: Any, inputs: Sequence[tuple[np.ndarray, ...]], *, warmup: int = 10) -> dict[str, Any]:
    """The runner serving ``inputs`` one by one (batch 1) at its own policy: per-call ms
    (mean, p50, p90) and the exit each input took (the runner's own loop, ``EarlyExitModel.serve``,
    which ``exit_runner.py --time`` uses on another device)."""
    x, exits = runner.serve(inputs, warmup=warmup)
    return {"mean_ms": float(x.mean()), "p50_ms": float(np.percentile(x, 50)), "p90_ms": float(np.percentile(x, 90)),
            "exits": exits}


def write_manifest_policy(folder: str | Path, criterion: str, threshold: float) -> None:
    """Set the policy an exported runner uses by default."""
    path = Path(folder) / "manifest.json"
    manifest = json.loads(path.read_text())
    write_json(path, {**manifest, "criterion": criterion, "threshold": threshold})


def policy_table(
    logits: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    segment_ms: np.ndarray | dict[str, np.ndarray],
    policies: Sequence[tuple[str, float]],
    metric: str = "accuracy",
) -> pd.DataFrame:
    """Every policy (criterion, threshold) scored from one pass per split, without running
    the model again: per split its metric (in points), the mean number of layers run, the
    exit histogram, and the latency estimated from the per-layer costs. ``logits``: every
    exit's logits per split (exits, N, C); ``labels`` per split; ``segment_ms``: one per-layer
    cost table (exits,) for every split, or per split each input's own costs (N, exits)."""
    from supernet.evaluate import scores

    rows = []
    tables = segment_ms if isinstance(segment_ms, dict) else {split: segment_ms for split in logits}
    n_exits = next(iter(logits.values())).shape[0]
    for criterion, threshold in policies:
        row: dict[str, Any] = {"criterion": criterion, "threshold": threshold}
        for split, lg in logits.items():
            layers = exit_layers(lg, criterion, threshold)
            row[f"{metric}_{split}"] = 100 * scores(exit_predictions(lg, layers), labels[split])[metric]
            row[f"layers_{split}"] = float(layers.mean() + 1)
            row[f"hist_{split}"] = "/".join(f"{h:.2f}" for h in exit_histogram(layers, n_exits))
            est = estimate_latency(tables[split], layers)
            row.update({f"est_{k}_{split}": v for k, v in est.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def default_policies(n_exits: int) -> list[tuple[str, float]]:
    """Entropy thresholds from 0 (never early) to 0.9 and every useful patience."""
    # Fine near 1: heads distilled from soft final logits are rarely very sure (two classes:
    # a normalized entropy of 0.9 is still p = 0.68 for the top class).
    entropy = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97,
               0.98, 0.985, 0.99, 0.995, 1.0]
    return [("entropy", t) for t in entropy] + [("patience", float(p)) for p in range(n_exits - 1, 0, -1)]


def export_static_graph(model: ElasticBert, workdir: Path) -> Path:
    """The static sub-network as one ONNX graph (what it is deployed as without exits),
    ``workdir/static.onnx``: exported once, timed in every round (``static_graph_timing``)."""
    from latency.onnx_export import export_onnx

    return export_onnx(model, workdir / "static.onnx")


def static_graph_timing(graph: Path, inputs: Sequence[tuple[np.ndarray, ...]], *,
                        threads: int | None = None, warmup: int = 10) -> dict[str, float]:
    """The one-graph ONNX ``graph`` (``export_static_graph``) serving ``inputs`` one by one:
    mean / p50 / p90 per call in ms."""
    from latency.onnx_export import ort_session

    session = ort_session(graph, threads=threads)
    for feed in inputs[:warmup]:
        session.run(None, dict(zip(FIRST_INPUTS, feed, strict=True)))
    ms = []
    for feed in inputs:
        t0 = time.perf_counter()
        session.run(None, dict(zip(FIRST_INPUTS, feed, strict=True)))
        ms.append((time.perf_counter() - t0) * 1e3)
    x = np.asarray(ms)
    return {"mean_ms": float(x.mean()), "p50_ms": float(np.percentile(x, 50)), "p90_ms": float(np.percentile(x, 90))}


# ---- per-layer cost without timing every sub-network ----------------------------------------

def prefix(cfg: SubnetConfig, k: int) -> SubnetConfig:
    """The sub-network that stops after ``cfg``'s first ``k`` kept layers (the rest skipped):
    what an input that leaves at exit ``k`` has run, as a static model."""
    kept = cfg.kept_layers
    if not 1 <= k <= len(kept):
        raise ValueError(f"a prefix keeps 1..{len(kept)} layers, got {k}")
    last = kept[k - 1]
    keep = tuple(i <= last and cfg.keep[i] for i in range(cfg.num_layers))
    # A skipped layer drops no tokens: after the prefix, retention stays where it was.
    retention = tuple(cfg.retention[i] if i <= last else cfg.retention[last] for i in range(cfg.num_layers))
    return SubnetConfig(tuple(h if k_ else 0 for h, k_ in zip(cfg.heads, keep, strict=True)),
                        tuple(f if k_ else 0 for f, k_ in zip(cfg.ffn, keep, strict=True)),
                        keep, retention, cfg.precision)


class LatencyModel(Protocol):
    """What the prefix estimate needs of a device's latency model (``PredictedLatency``)."""

    def predict(self, configs: list[SubnetConfig]) -> list[tuple[float, float]]: ...


def predicted_segment_ms(latency: LatencyModel, cfg: SubnetConfig, head_ms: float) -> np.ndarray:
    """A per-layer cost table (exits,) for ``cfg`` on a device, from its latency predictor
    rather than from timing: the cost of leaving at exit ``k`` (1-based) is the predicted
    latency of the depth-``k`` prefix (embeddings, ``k`` layers, a classifier) plus ``k - 1``
    exit heads (``head_ms`` each: a head and one more runtime call, ``head_cost_ms``); the
    table holds the differences, so that ``estimate_latency`` sums them back. A predictor
    that calls a longer prefix cheaper is held level (costs never fall with depth)."""
    n = len(cfg.kept_layers)
    pred = np.array([p for p, _ in latency.predict([prefix(cfg, k) for k in range(1, n + 1)])], dtype=float)
    cum = np.maximum.accumulate(pred) + head_ms * np.arange(n)
    return np.diff(cum, prepend=0.0)


def head_cost_ms(heads: ExitHeads, lengths: Sequence[int], *, threads: int | None = None, warmup: int = 10,
                 workdir: Path | None = None) -> float:
    """The median time in ms of one exit head run as its own ONNX Runtime call on hidden
    states of each of ``lengths`` tokens (batch 1): what a segment adds to its layer. One head
    stands for all (every head of a kind has the same shape; the hidden size is shared)."""
    import tempfile

    from latency.onnx_export import ort_session

    head = heads.head(0).eval()
    hidden = heads.hidden
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "head.onnx"
        x, m = torch.zeros(2, 5, hidden), torch.ones(2, 5, dtype=torch.bool)
        with quiet_exporter(), torch.no_grad():
            torch.onnx.export(head, (x, m), str(path), dynamo=False, input_names=["hidden", "mask"],
                              output_names=["logits"], dynamic_axes={"hidden": {0: "batch", 1: "sequence"},
                                                                    "mask": {0: "batch", 1: "sequence"},
                                                                    "logits": {0: "batch"}}, opset_version=18)
        session = ort_session(path, threads=threads)
        rng = np.random.default_rng(0)
        feeds = [{k: v for k, v in (("hidden", rng.normal(size=(1, t, hidden)).astype(np.float32)),
                                    ("mask", np.ones((1, t), dtype=bool)))
                  if k in {i.name for i in session.get_inputs()}} for t in lengths]
        for feed in feeds[:warmup]:
            session.run(None, feed)
        ms = []
        for feed in feeds:
            t0 = time.perf_counter()
            session.run(None, feed)
            ms.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ms))


STAT_FUNCS = {"p50": lambda x: np.percentile(x, 50, axis=0), "p90": lambda x: np.percentile(x, 90, axis=0),
              "mean": lambda x: np.mean(x, axis=0)}


@dataclass(frozen=True)
class LengthSpread:
    """How one input's cost of leaving at each exit depends on its length, relative to the
    statistic of that cost over the reference inputs: a straight line in the length per exit,
    fitted to a reference runner's cumulative segment times (all layers run) on dev inputs.
    A predicted table times ``factors`` gives each input its own cost; the statistic over the
    reference inputs of those costs equals the table again (the factors' statistic is 1)."""

    intercept: np.ndarray  # (exits,) ms
    slope: np.ndarray  # (exits,) ms per token
    norm: np.ndarray  # (exits,) the statistic of the fitted costs over the reference inputs

    @classmethod
    def fit(cls, segment_ms: np.ndarray, lengths: Sequence[int], stat: str = "p50") -> LengthSpread:
        """From ``segment_times`` (N, exits) of the reference inputs and their ``lengths``."""
        if stat not in STAT_FUNCS:
            raise ValueError(f"stat must be one of {', '.join(STAT_FUNCS)}, got {stat!r}")
        cum = np.cumsum(np.asarray(segment_ms, dtype=float), axis=1)
        x = np.asarray(lengths, dtype=float)
        if cum.shape[0] != len(x) or len(x) < 2:
            raise ValueError(f"need the segment times and lengths of at least 2 inputs, got {cum.shape[0]} and {len(x)}")
        design = np.stack([np.ones_like(x), x], axis=1)
        (intercept, slope), *_ = np.linalg.lstsq(design, cum, rcond=None)
        if (slope < 0).any():  # longer inputs never cost less (noise can tilt a flat fit): level it
            slope = np.maximum(slope, 0.0)
            intercept = (cum - slope[None] * x[:, None]).mean(0)
        fitted = np.maximum(intercept[None] + slope[None] * x[:, None], 1e-9)
        return cls(intercept, slope, STAT_FUNCS[stat](fitted))

    def factors(self, lengths: Sequence[int], n_exits: int) -> np.ndarray:
        """(N, n_exits): each input's cost at exit k over the statistic's; a sub-network with more
        exits than the reference has uses the reference's last exit's line for the deeper ones."""
        k = np.minimum(np.arange(n_exits), len(self.norm) - 1)
        x = np.asarray(lengths, dtype=float)[:, None]
        return np.maximum(self.intercept[k][None] + self.slope[k][None] * x, 1e-9) / self.norm[k][None]


def spread_table(segment_ms: np.ndarray, spread: LengthSpread, lengths: Sequence[int]) -> np.ndarray:
    """A per-layer cost table (exits,) made per input (N, exits) by ``spread``: input i's
    cumulative cost at exit k is the table's cumulative cost times its length factor (kept
    from falling with depth), returned as differences for ``estimate_latency``."""
    cum = np.cumsum(np.asarray(segment_ms, dtype=float))[None] * spread.factors(lengths, len(segment_ms))
    return np.diff(np.maximum.accumulate(cum, axis=1), axis=1, prepend=0.0)


def extend_segments(segment_ms: np.ndarray, lengths: Sequence[int], stat: str = "p50") -> np.ndarray:
    """A runner's segment times on the first n inputs of a split (n, exits), every layer run,
    extended to all of the split's inputs (``lengths``: N >= n): the timed inputs keep their
    own times; each other input's cumulative cost at each exit is that runner's line in the
    input's length (``LengthSpread`` fitted to the timed ones), kept from falling with depth.
    A statistic over the whole split then no longer rests on which n inputs were timed: a p50
    that falls where one exit's inputs give way to the next one's moves along the second
    group's lengths with a few more or fewer early leavers among the timed inputs (README,
    "Early exit searched under a budget")."""
    timed = np.asarray(segment_ms, dtype=float)
    n, x = len(timed), np.asarray(lengths, dtype=float)
    if len(x) < n:
        raise ValueError(f"need the lengths of at least the {n} timed inputs, got {len(x)}")
    if len(x) == n:
        return timed
    spread = LengthSpread.fit(timed, list(lengths)[:n], stat)
    cum = np.maximum(spread.intercept[None] + spread.slope[None] * x[n:, None], 1e-9)
    rest = np.diff(np.maximum.accumulate(cum, axis=1), axis=1, prepend=0.0)
    return np.concatenate([timed, rest])


def runner_extra_ms(measured_cum: np.ndarray, static_measured: np.ndarray, static_predicted: np.ndarray | float,
                    predicted_cum: np.ndarray) -> np.ndarray:
    """What the exported runner costs at each exit beyond its predicted prefix, in the
    predictor's units (ms, the drift divided out): per round, the runner's measured cumulative
    statistic at each exit (``measured_cum``: rounds, exits) over that round's drift, minus the
    predicted cumulative cost (``predicted_cum``: exits); the median over the rounds. The drift
    is each depth-``k`` prefix as one graph measured in that round (``static_measured``:
    rounds, exits) over its prediction (``static_predicted``: exits), so that the predictor's
    own error on the reference's prefixes is divided out with the day's drift and does not
    pass for runner cost; a single graph (rounds,) over one prediction gives one drift per
    round for every exit. It holds what a prefix prediction leaves out: the segment calls, the
    heads inside them, and a one-layer prefix below the depths the predictor saw."""
    measured = np.asarray(static_measured, dtype=float)
    drift = measured / np.asarray(static_predicted, dtype=float)
    if drift.ndim == 1:  # one graph per round
        drift = drift[:, None]
    extra = np.asarray(measured_cum, dtype=float) / drift - np.asarray(predicted_cum, dtype=float)[None]
    return np.median(extra, axis=0)


def with_extra(segment_ms: np.ndarray, extra_ms: np.ndarray) -> np.ndarray:
    """A predicted per-layer table with ``runner_extra_ms`` added to its cumulative costs (a
    deeper sub-network than the reference takes the reference's last figure for its extra
    exits), kept from falling with depth and from going below zero."""
    seg = np.asarray(segment_ms, dtype=float)
    k = np.minimum(np.arange(len(seg)), len(extra_ms) - 1)
    cum = np.maximum.accumulate(np.maximum(np.cumsum(seg) + np.asarray(extra_ms, dtype=float)[k], 0.0))
    return np.diff(cum, prepend=0.0)
