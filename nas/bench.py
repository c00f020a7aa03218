"""Benchmarks: our searched front against the baselines, from one trained run.

Everything is measured on the same machine, in the same process, as ratios to the full
model timed in turn with the candidates:

1. accuracy vs latency on a device for four methods, all from the same supernet, with the
   same number of accuracy evaluations where a method searches:
   ``ours`` (evolution over width, depth and retention), ``dynabert`` (the uniform grid of
   width x depth multipliers, no retention), ``retention`` (full width and depth, searched
   retention: PoWER-BERT / LAT style) and ``random`` (random search); each front's points
   are re-measured and scored on test;
   Each searched method runs again with ``seeds - 1`` more search seeds: the spread of its
   hypervolume over seeds (``seed_spread``) says when one method really beats another;
2. the largest measured speed-up whose test accuracy is within 1.0 (2.0) points of the
   fine-tuned full model, also after fine-tuning at 3x (``ours+ft``: the fine-tuned export
   at a budget of the full model's latency / 3, which fine-tunes the search's pick, the
   deepest depth seed and the best of the deepest other depths and keeps the best on dev; ``dynabert+ft``: the grid's
   best point at that speed-up; the same distillation for both); each point with its paired
   interval against the teacher (``loss_intervals``), the 1-point points timed again in fresh
   timers (``retimed``), the targets judged on the median of those timings;
3. predictor quality per device (from ``hwnas fit``);
4. budget compliance over a sweep of budgets (20% to 90% of the full model's latency):
   the first pick's re-measured latency and the exported one after step-downs;
5. realized vs ideal: measured speed-up / FLOPs ratio of the exported sub-networks;
7. wall time of each stage and peak memory.
"""

from __future__ import annotations

import functools
import json
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from latency.baselines import FP32_STOCK, time_beside_stock
from latency.measure import DeviceTimer
from latency.onnx_export import cpu_has_vnni
from latency.target import PredictedLatency, Target, target_timer
from nas.export import ExportConfig, ImpossibleBudget, choose_and_export
from nas.objectives import DevAccuracy
from nas.pareto import compare_fronts, normalized_hypervolume, pareto_front
from nas.search import Candidate, SearchResult, evolution_settings, make_searcher
from nas.stats import spread
from supernet.cost import subnet_flops
from supernet.evaluate import cpu_model
from supernet.io import atomic_write, write_csv, write_json, write_text, write_together
from supernet.space import SearchSpace, SubnetConfig
from supernet.workflow import (
    LoadedRun,
    check_unlabeled,
    distill_teacher,
    with_augmented,
    with_unlabeled,
)

METHODS = ("ours", "dynabert", "retention", "random")


@dataclass(frozen=True)
class BenchConfig:
    device: str = "cpu"
    n_evaluations: int = 150
    budget_fractions: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    front_points: int = 10
    rounds: int = 3  # interleaved re-measurement rounds
    finalists: int = 5  # the budget sweep's exports: candidates re-ranked on dev and re-measured
    # None: the searches score the whole dev split. On the main job's run a 500-sentence subset let the
    # evolution's fronts chase the subset's noise (scripts/dev_subset_check.py; README, "Searching on the whole dev split").
    dev_subset: int | None = None
    search_precision: str = "auto"
    seed: int = 0
    # Each of these methods' most accurate point at each of these speed-ups is fine-tuned
    # (distilled from the teacher, as `hwnas export --finetune-epochs` does) and scored again.
    finetune_methods: tuple[str, ...] = ("ours", "dynabert")
    finetune_speedups: tuple[float, ...] = (3.0,)
    finetune_epochs: float = 3.0
    finetune_lr: float = 2e-4
    finetune_candidates: int = 3  # ours: sub-networks fine-tuned per export (``choose_and_export``)
    finetune_best_epoch: bool = False  # each fine-tuning keeps its epoch with the lowest dev loss
    finetune_choose: str = "dev-score"  # how ours+ft ranks its fine-tuned candidates (``finetuned_order``)
    # What the fine-tunings distil on besides the train split: this many of the task's unlabeled
    # texts (None: as the run was trained) and word-replaced copies of each train example.
    finetune_unlabeled: int | None = None
    finetune_augment: int = 0
    finetune_attention: float = 0.0  # weight of attention distillation in every fine-tuning (0: off)
    seeds: int = 3  # search seeds per method for the hypervolume spread (``seed_spread``)
    # The 1-point points are timed again this many times, each in a fresh timer (new sessions),
    # so the page's verdict says how far one measurement's speed-up moves (``retimed``).
    retimes: int = 5
    train_device: str = "cpu"  # where the fine-tunings run: cpu or cuda (``resolve_train_device``)
    # The evolutions' (ours, retention-only) children per evaluation (None: ``EvolutionSearch``'s
    # default, 4; 1: unscreened, as the pages committed before 2026-12-07 were made).
    screen: int | None = None

    @classmethod
    def quick(cls, *, device: str = "cpu", seed: int = 0, search_precision: str = "auto",
              train_device: str = "cpu", screen: int | None = None) -> BenchConfig:
        """A reduced benchmark that runs in minutes (``hwnas bench --quick``): fewer evaluations,
        one budget (half the full model's latency) with two finalists, fewer front points, one
        re-measurement round, and only ours fine-tuned, at 2x, one candidate."""
        return cls(device=device, n_evaluations=16, budget_fractions=(0.5,), front_points=4, rounds=1,
                   finalists=2, dev_subset=150, seed=seed, finetune_speedups=(2.0,), finetune_epochs=0.5, finetune_methods=("ours",),
                   finetune_candidates=1, search_precision=search_precision, seeds=1, train_device=train_device,
                   retimes=2, screen=screen)


def retention_only_space(space: SearchSpace) -> SearchSpace:
    """Full width and depth; only token retention is searched."""
    return SearchSpace(num_layers=space.num_layers, max_heads=space.max_heads, max_ffn=space.max_ffn,
                       head_choices=(space.max_heads,), ffn_choices=(space.max_ffn,),
                       retention_choices=space.retention_choices, min_layers=space.num_layers, allow_skip=False)


def dynabert_grid(space: SearchSpace) -> list[SubnetConfig]:
    """DynaBERT's width multipliers x depth multipliers, no retention."""
    out: dict[str, SubnetConfig] = {}
    for w in (0.25, 0.5, 0.75, 1.0):
        for d in (0.5, 0.75, 1.0):
            c = space.uniform(width=w, depth=d)
            out.setdefault(c.key(), c)
    return list(out.values())


def _candidates(run: LoadedRun, target: Target, acc: DevAccuracy, cfg: BenchConfig, progress: bool = True,
                methods: tuple[str, ...] = METHODS) -> dict[str, list[Candidate]]:
    lat = PredictedLatency.of(run.folder, target)

    def scored(configs: list[SubnetConfig]) -> list[Candidate]:
        return [Candidate(c, acc(c), p, u, True) for c, (p, u) in zip(configs, lat.predict(configs), strict=True)]

    def searched(space: SearchSpace, method: str) -> list[Candidate]:
        settings = evolution_settings(method, cfg.screen) if method == "evolution" else {}
        result: SearchResult = make_searcher(method, **settings).search(
            space, acc, lat, budget_ms=None, n_evaluations=cfg.n_evaluations, seed=cfg.seed)
        return result.history

    # Ours and random search what an export for this device searches (its precisions: an int8
    # profile's sub-networks may be quantized); the grid and retention-only stay the papers' fp32.
    space = target.search_space(run.space)
    jobs = {
        "ours": lambda: searched(space, "evolution"),
        "dynabert": lambda: scored(dynabert_grid(run.space)),
        "retention": lambda: searched(retention_only_space(run.space), "evolution"),
        "random": lambda: searched(space, "random"),
    }
    out = {}
    for method in tqdm(methods, desc=f"bench: search each method (seed {cfg.seed})", disable=not progress):
        out[method] = jobs[method]()
    return out


def thinned_front(cands: list[Candidate], method: str, points: int) -> pd.DataFrame:
    """A method's front on dev accuracy and predicted latency, thinned evenly to ``points``."""
    frame = pd.DataFrame([{**c.to_row(), "method": method} for c in cands])
    front = pareto_front(frame, acc_col="acc_dev", lat_col="lat_pred_ms").reset_index(drop=True)
    idx = np.unique(np.linspace(0, len(front) - 1, min(len(front), points)).round().astype(int))
    return front.iloc[idx]


SEARCHED = ("ours", "retention", "random")  # the methods whose front depends on a seed


def seed_spread(run: LoadedRun, target: Target, acc: DevAccuracy, cfg: BenchConfig, first: dict[str, list[Candidate]],
                progress: bool = True) -> pd.DataFrame:
    """Each method's test hypervolume for every search seed ``cfg.seed .. cfg.seed + seeds - 1``
    (``first``: the candidates of ``cfg.seed``, already searched): the front on dev accuracy
    and predicted latency, thinned to ``front_points``, scored on test. One row per (method,
    seed); the DynaBERT grid is one seed (it does not search). Latency is predicted (relative to
    the full model's prediction), so that seeds compare without re-measuring every front;
    the accuracy reference is the worst test accuracy of any point."""
    lat_full = PredictedLatency.of(run.folder, target).predict([run.space.largest()])[0][0]
    by_seed = {cfg.seed: first}
    for k in range(1, cfg.seeds):
        by_seed[cfg.seed + k] = _candidates(run, target, acc, replace(cfg, seed=cfg.seed + k), progress, SEARCHED)
    rows = [row for seed, cands in by_seed.items() for method, cs in cands.items()
            for row in scored_front(cs, method, seed, cfg.front_points, lat_full, acc)]
    return seed_hypervolumes(pd.DataFrame(rows), "acc_test")


def scored_front(cands: list[Candidate], method: str, seed: int, points: int, lat_full: float,
                 acc: DevAccuracy) -> list[dict[str, object]]:
    """One search's front (``thinned_front``) as rows for ``seed_hypervolumes``: method, seed,
    predicted latency relative to the full model's prediction ``lat_full``, dev and test
    accuracy, and the architecture."""
    rows: list[dict[str, object]] = []
    for r in thinned_front(cands, method, points).to_dict("records"):
        c = SubnetConfig.from_dict(json.loads(r["arch_json"]))
        rows.append({"method": method, "seed": seed, "lat_rel": r["lat_pred_ms"] / lat_full, "acc_dev": r["acc_dev"],
                     "acc_test": acc.test(c), "arch": c.describe()})
    return rows


def seed_hypervolumes(points: pd.DataFrame, col: str) -> pd.DataFrame:
    """One row per (method, seed) of ``points`` (columns method, seed, lat_rel and ``col``):
    its point count and the hypervolume of its points on ``col`` (named ``hypervolume_test``
    for ``acc_test``, else ``hypervolume_dev``), with one accuracy reference for every group
    (the worst ``col`` of any point) and latency relative to the full model (reference 1)."""
    ref = float(points[col].min())
    name = "hypervolume_test" if col == "acc_test" else "hypervolume_dev"
    return pd.DataFrame([{"method": method, "seed": int(seed), "points": len(g),
                          name: normalized_hypervolume(g[col].to_numpy(), g["lat_rel"].to_numpy(), ref_acc=ref,
                                                       ref_lat=1.0, max_acc=1.0)}
                         for (method, seed), g in points.groupby(["method", "seed"], sort=False)])


def spread_verdicts(spread_table: pd.DataFrame) -> pd.DataFrame:
    """Per method: the mean and spread of its hypervolume over seeds, and whether ours beats
    it: only when the difference of the means exceeds the two standard deviations summed.
    With ours on one seed its spread is unknown: no verdict (None), not a win by any margin.
    (A method on one seed that does not search, the grid, has none to know.)"""
    stats = {m: spread(g["hypervolume_test"]) for m, g in spread_table.groupby("method", sort=False)}
    ours = stats.get("ours")
    rows = []
    for m, s in stats.items():
        row = {"method": m, "seeds": s["n"], "hv_mean": s["mean"], "hv_std": s["std"], "hv_min": s["min"],
               "hv_max": s["max"]}
        if ours is not None and m != "ours":
            diff = ours["mean"] - s["mean"]
            row["ours_minus_this"] = diff
            row["ours_beats"] = bool(diff > ours["std"] + s["std"]) if ours["n"] > 1 else None
        rows.append(row)
    return pd.DataFrame(rows)


def fronts(run: LoadedRun, target: Target, acc: DevAccuracy, cfg: BenchConfig,
           progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each method's front (dev accuracy vs predicted latency), evenly thinned to
    ``front_points``, re-measured together with the full model, scored on test; and the
    stock deployments a user could ship without us (``latency.baselines``), timed in the same
    run on the same workload and statistic (empty on a device that does not run ONNX)."""
    cands = _candidates(run, target, acc, cfg, progress)
    return _fronts(run, target, acc, cfg, cands, progress)


def _fronts(run: LoadedRun, target: Target, acc: DevAccuracy, cfg: BenchConfig, cands: dict[str, list[Candidate]],
            progress: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = pd.concat([thinned_front(cs, method, cfg.front_points) for method, cs in cands.items()],
                      ignore_index=True)
    configs = [SubnetConfig.from_dict(json.loads(j)) for j in table["arch_json"]]
    unique = {c.key(): c for c in configs}
    with target_timer(run, target) as timer:
        got = timer.measure(list(unique.values()), rounds=cfg.rounds)
        stock = stock_deployments(run, timer, acc.test(run.space.largest()), rounds=cfg.rounds)
    ms, full_ms = dict(zip(unique, got.ms, strict=True)), got.full_ms
    L = target.length
    full_flops = subnet_flops(run.supernet.shape, run.space.largest(), L)
    table["arch"] = [c.describe() for c in configs]
    table["lat_measured_ms"] = [ms[c.key()] for c in configs]
    table["full_model_ms"] = full_ms
    table["speedup"] = full_ms / table["lat_measured_ms"]
    table["flops_ratio"] = [full_flops / subnet_flops(run.supernet.shape, c, L) for c in configs]
    table["acc_dev_full"] = [acc.full_dev(c) for c in tqdm(configs, desc="bench: score fronts", disable=not progress)]
    table["acc_test"] = [acc.test(c) for c in configs]
    if len(stock):
        # Each ratio from one timing: the point against our full model in the fronts' timing, our
        # full model against the stock ones in the stock timing (a machine 1.2x slower in one of
        # them would otherwise move every point's speed-up by 1.2x).
        lat = stock.set_index("deployment")["lat_ms"]
        table["speedup_vs_stock"] = table["speedup"] * float(lat[list(FP32_STOCK)].min()) / float(lat["ours-full"])
        table["speedup_vs_stock_int8"] = table["speedup"] * float(lat["stock-int8"]) / float(lat["ours-full"])
    table.insert(0, "device", target.profile.name)
    table["length"] = L
    return table, stock


def stock_deployments(run: LoadedRun, timer: DeviceTimer, full_acc: float, *, rounds: int) -> pd.DataFrame:
    """The stock deployments and our full model (test accuracy ``full_acc``), timed in turn on
    the timer's workload: one row each with its latency (the timer's statistic) and test
    accuracy; empty off ONNX Runtime."""
    timed = time_beside_stock(run, timer, rounds=rounds)
    if timed is None:
        return pd.DataFrame()
    stat = f"{timer.stat}_ms"
    return pd.DataFrame([{"deployment": n, "lat_ms": t[stat], "p90_ms": t["p90_ms"], "p99_ms": t["p99_ms"],
                          "acc_test": full_acc if n == "ours-full" else t["acc_test"]}
                         for n, t in timed.items()])


def finetuned(run: LoadedRun, target: Target, table: pd.DataFrame, acc: DevAccuracy, cfg: BenchConfig, folder: Path,
              full_test: float, progress: bool = True) -> pd.DataFrame:
    """Fine-tuned points at each of ``cfg.finetune_speedups`` (distilled from the teacher for the
    same schedule), method ``<method>+ft``, with rows like ``table``'s and ``acc_test_before``.

    ``ours``: what a user gets from ``hwnas export --speedup s --finetune-epochs E``: the full
    model timed now, a search under its latency / s, finalists re-ranked on the whole dev split and re-measured, the
    chosen one, the deepest depth seed and the best of the deepest other depths fine-tuned, the best on dev kept (its
    speed-up measured in that export against the full model); its row's ``ft_candidates``
    lists every candidate fine-tuned (JSON).
    Other methods (the DynaBERT grid): the front's most accurate (whole dev) point with a
    measured speed-up of at least s. Finished fine-tunings under ``folder`` are reused."""
    from nas.stats import compare_with
    from supernet.evaluate import model_score, predict, scores
    from supernet.train import (
        StageConfig,
        distill_split,
        finetune_folder,
        finetune_subnet,
        teacher_logits,
    )

    if cfg.finetune_epochs <= 0:
        return pd.DataFrame(columns=[*table.columns, "acc_test_before"])
    stage = StageConfig(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr)
    # The train split, the unlabeled texts (as the run was trained, or cfg's) and augmented copies.
    ft_run = with_augmented(with_unlabeled(run, cfg.finetune_unlabeled), cfg.finetune_augment)
    train = distill_split(ft_run.splits)
    teacher = distill_teacher(run, cfg.finetune_attention).to(cfg.train_device)
    targets = functools.cache(lambda: teacher_logits(teacher, train))  # one pass for every fine-tuning, only if needed
    rows: list[dict[str, Any]] = []
    picks: list[pd.Series] = []
    for method in cfg.finetune_methods:
        if method == "ours":
            for s in cfg.finetune_speedups:
                # The budget comes from the full model timed in the export, as `hwnas export
                # --speedup` does: the fronts stage's timing may be tens of minutes old, and on a
                # drifting machine a stale full-model latency turns a 3x target into 4x.
                try:
                    export = ExportConfig(speedup=s, n_evaluations=cfg.n_evaluations, seed=cfg.seed, screen=cfg.screen,
                                          finetune=stage,
                                          finetune_candidates=cfg.finetune_candidates, progress=progress,
                                          train_device=cfg.train_device, finetune_best_epoch=cfg.finetune_best_epoch,
                                          finetune_unlabeled=cfg.finetune_unlabeled,
                                          finetune_augment=cfg.finetune_augment,
                                          finetune_attention=cfg.finetune_attention,
                                          finetune_choose=cfg.finetune_choose)
                    r = choose_and_export(run, target, folder / f"export_{s:g}x_ft", export, accuracy=acc,
                                          full_model_test=full_test, teacher_targets=targets)
                except ImpossibleBudget:
                    continue
                sub = SubnetConfig.from_dict(r["subnet"])
                rows.append({"device": target.profile.name, "arch_key": sub.key(), "arch_json": json.dumps(r["subnet"]),
                             "lat_pred_ms": r["predicted_latency_ms"], "method": "ours+ft", "arch": r["arch"],
                             "lat_measured_ms": r["measured_latency_ms"], "full_model_ms": r["full_model_latency_ms"],
                             "speedup": r["speedup"], "flops_ratio": r["full_model_flops"] / r["flops"],
                             "acc_test_before": r["test_accuracy"], "acc_dev_full": r["finetuned"]["dev_accuracy"],
                             "acc_test": r["finetuned"]["test_accuracy"], "length": r["length"],
                             "budget_ms": r["budget_ms"], "ft_candidates": json.dumps(r["finetune_candidates"]),
                             **vs_stock_columns(r), **vs_columns(r["vs_teacher"]["ours"])})
            continue
        front = table[table["method"] == method]
        seen: set[str] = set()
        for s in cfg.finetune_speedups:
            ok = front[front["speedup"] >= s]
            if len(ok):
                row = ok.loc[ok["acc_dev_full"].idxmax()]
                if row["arch_key"] not in seen:
                    seen.add(row["arch_key"])
                    picks.append(row)
    if picks:
        test = run.splits["test"]
        reference = predict(teacher, test)
        for row in tqdm(picks, desc="bench: fine-tune grid points", disable=not progress):
            sub = SubnetConfig.from_dict(json.loads(row["arch_json"]))
            model, _ = finetune_subnet(run.supernet, teacher, sub, train,
                                       finetune_folder(folder, sub, stage, best_epoch=cfg.finetune_best_epoch,
                                                       unlabeled=ft_run.spec.train.unlabeled,
                                                       augment=cfg.finetune_augment,
                                                       attention_weight=cfg.finetune_attention),
                                       run.spec.train, stage, targets=targets, progress=progress,
                                       device=cfg.train_device, attention_weight=cfg.finetune_attention,
                                       select=run.splits["dev"] if cfg.finetune_best_epoch else None)
            before = {k: v for k, v in row.to_dict().items() if k != "acc_dev"}  # acc_dev: the supernet's, on the subset
            logits = predict(model, test)  # once: its test score and the paired statistics
            rows.append({**before, "method": f"{row['method']}+ft", "acc_test_before": row["acc_test"],
                         "acc_dev_full": model_score(model, run.splits["dev"], run.task.metric),
                         "acc_test": scores(logits, test.labels)[run.task.metric],
                         **vs_columns(compare_with(reference, logits, test.labels, metric=run.task.metric))})
    if not rows:
        return pd.DataFrame(columns=[*table.columns, "acc_test_before"])
    return pd.DataFrame(rows)


def vs_stock_columns(report: dict[str, Any]) -> dict[str, float]:
    """An export's speed-ups against the stock deployments timed beside it (its report's
    ``speedup_vs_stock``: the fastest stock fp32 deployment and stock INT8), as the front
    table's columns; none when the export timed no stock model (off ONNX Runtime)."""
    vs = report.get("speedup_vs_stock") or {}
    names = {"speedup_vs_stock": "ours_vs_fastest_stock_fp32", "speedup_vs_stock_int8": "ours_vs_stock_int8"}
    return {col: float(vs[key]) for col, key in names.items() if key in vs}


def vs_columns(diff: dict[str, Any]) -> dict[str, float]:
    """A fine-tuned point's test score minus the teacher's on the same sentences, in points,
    with its paired-bootstrap 95% interval (``nas.stats.compare_with``): the page's columns."""
    return {"vs_teacher_points": diff["diff_points"], "vs_teacher_ci95_low": diff["ci95_low"],
            "vs_teacher_ci95_high": diff["ci95_high"]}


def hypervolumes(table: pd.DataFrame, full_test: float) -> pd.DataFrame:
    """Per method, on measured latency relative to the full model (reference 1.0) and on dev
    and test accuracy (reference: the worst accuracy of any method's front)."""
    groups = dict(tuple(table.groupby("method", sort=False)))
    out = []
    for acc_col in ("acc_dev_full", "acc_test"):
        hv = compare_fronts(groups, acc_col=acc_col, lat_col="lat_measured_ms", lat_scale="full_model_ms",
                            ref_acc=float(table[acc_col].min()), ref_lat=1.0).set_index("front")["hypervolume"]
        for method, g in groups.items():
            out.append({"method": method, "accuracy": acc_col, "hypervolume": float(hv[method]),
                        "points": len(g), "best_acc": float(g[acc_col].max()), "max_speedup": float(g["speedup"].max())})
    return pd.DataFrame(out)


def speedup_at_loss(table: pd.DataFrame, full_dev: float, losses: tuple[float, ...] = (1.0, 2.0)) -> pd.DataFrame:
    """Per method and loss: the point of ``table`` with the largest measured speed-up whose
    whole-dev score (``acc_dev_full``) is within ``loss`` points of the teacher's, ``full_dev``
    (NaN and an empty ``arch`` when none is); ``arch_json`` names its configuration. Chosen on
    dev only: its test score is reported, not used (the fastest point that happens to clear the
    line on test would be the luckiest on test, and one test score moves by about 2 points);
    ``loss_intervals`` adds its test loss against the teacher."""
    rows = []
    for method, g in table.groupby("method", sort=False):
        for loss in losses:
            ok = g[g["acc_dev_full"] >= full_dev - loss / 100]
            best = ok.loc[ok["speedup"].idxmax()] if len(ok) else None
            rows.append({"method": method, "max_loss_points": loss,
                         "speedup": float(best["speedup"]) if best is not None else float("nan"),
                         "acc_dev_full": float(best["acc_dev_full"]) if best is not None else float("nan"),
                         "acc_test": float(best["acc_test"]) if best is not None else float("nan"),
                         "arch": best["arch"] if best is not None else "",
                         "arch_json": best["arch_json"] if best is not None else ""})
    return pd.DataFrame(rows)


def loss_intervals(sp: pd.DataFrame, points: pd.DataFrame, logits: Callable[[SubnetConfig], np.ndarray],
                   reference: np.ndarray, labels: np.ndarray, metric: str) -> pd.DataFrame:
    """``sp`` (``speedup_at_loss``) with each point's test score minus the teacher's on the same
    examples, in points, and its paired-bootstrap 95% interval (``vs_teacher_*``). A point of
    ``points`` that already has them (a fine-tuned one, scored as deployed) keeps its own; the
    others are computed from ``logits(config)`` against ``reference``, the teacher's logits."""
    from nas.stats import compare_with

    scored = points.dropna(subset=["vs_teacher_points"]) if "vs_teacher_points" in points else points.iloc[:0]
    own = {(r["method"], r["arch_json"]): r for r in scored.to_dict("records")}
    cols: dict[str, list[float]] = {"vs_teacher_points": [], "vs_teacher_ci95_low": [], "vs_teacher_ci95_high": []}
    done: dict[str, dict[str, float]] = {}
    for r in sp.to_dict("records"):
        if not r["arch_json"]:
            got = dict.fromkeys(cols, float("nan"))
        elif (r["method"], r["arch_json"]) in own:
            got = {k: float(own[(r["method"], r["arch_json"])][k]) for k in cols}
        else:
            if r["arch_json"] not in done:
                cfg = SubnetConfig.from_dict(json.loads(r["arch_json"]))
                done[r["arch_json"]] = vs_columns(compare_with(reference, logits(cfg), labels, metric=metric))
            got = done[r["arch_json"]]
        for k in cols:
            cols[k].append(got[k])
    return sp.assign(**cols)


def retimed(run: LoadedRun, target: Target, sp: pd.DataFrame, *, repeats: int, rounds: int,
            loss: float = 1.0) -> pd.DataFrame:
    """``sp`` with the speed-up of each point at ``loss`` timed again ``repeats`` times, each in
    a fresh timer (new runtime sessions, the full model timed in turn as before): median, min
    and max of those speed-ups (``speedup_retimed_*``; NaN elsewhere). One measurement's
    speed-up moves by tens of percent between runs on a busy machine; a verdict should not
    rest on one."""
    rows = sp.index[(sp["max_loss_points"] == loss) & (sp["arch_json"] != "")]
    configs = {sp.at[i, "arch_json"]: SubnetConfig.from_dict(json.loads(sp.at[i, "arch_json"])) for i in rows}
    out = sp.assign(speedup_retimed_median=np.nan, speedup_retimed_min=np.nan, speedup_retimed_max=np.nan)
    if not configs or repeats < 1:
        return out
    got: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(repeats):
        with target_timer(run, target) as timer:
            m = timer.measure(list(configs.values()), rounds=rounds)
        for k, ms in zip(configs, m.ms, strict=True):
            got[k].append(m.full_ms / ms)
    for i in rows:
        x = got[sp.at[i, "arch_json"]]
        out.loc[i, ["speedup_retimed_median", "speedup_retimed_min", "speedup_retimed_max"]] = [
            float(np.median(x)), min(x), max(x)]
    return out


def compliance(run: LoadedRun, target: Target, acc: DevAccuracy, cfg: BenchConfig, out: Path,
               full_test: float | None = None, progress: bool = True) -> pd.DataFrame:
    """Budgets from 20% to 90% of the full model's measured latency: search, export, then a
    fresh re-measurement of what was exported (independent of the export's own check)."""
    with target_timer(run, target) as timer:
        return _compliance(run, target, acc, cfg, out, timer, full_test, progress)


def _compliance(run: LoadedRun, target: Target, acc: DevAccuracy, cfg: BenchConfig, out: Path, timer: DeviceTimer,
                full_test: float | None, progress: bool) -> pd.DataFrame:
    full_ms = timer.measure([], rounds=cfg.rounds).full_ms
    rows = []
    for f in tqdm(cfg.budget_fractions, desc="bench: budget sweep", disable=not progress):
        budget = round(f * full_ms, 3)
        try:
            # No stock timing in these exports: the sweep reads only budgets and latencies, and the
            # stock deployments were timed in this run already (the fronts, section 1).
            export = ExportConfig(budget_ms=budget, n_evaluations=cfg.n_evaluations, finalists=cfg.finalists, seed=cfg.seed,
                                  screen=cfg.screen, baselines=False, progress=progress)
            r = choose_and_export(run, target, out / f"export_{f:.2f}", export, accuracy=acc, full_model_test=full_test)
        except ImpossibleBudget as e:
            rows.append({"fraction": f, "budget_ms": budget, "error": str(e)[:200]})
            continue
        cfg_x = SubnetConfig.from_dict(r["subnet"])
        fresh = timer.measure([cfg_x], rounds=cfg.rounds)  # independent of the export's own check
        (again,), full_again = fresh.ms, fresh.full_ms
        first = r["step_downs"][0]
        last = [st for st in r["step_downs"] if st.get("step") == "confirm"]  # the timing just before writing
        rows.append({
            "fraction": f, "budget_ms": budget, "arch": r["arch"],
            "drift_scale": r["device_drift"]["scale_applied"] if r["device_drift"] else float("nan"),
            "predicted_ms": r["predicted_latency_ms"],
            "upper_ms": r["predicted_upper_ms"], "first_pick_measured_ms": first["measured_ms"],
            "first_pick_meets": bool(first["meets_budget"]),
            "step_downs": sum(st.get("step") == "down" for st in r["step_downs"]) - 1,
            "exported_measured_ms": r["measured_latency_ms"], "fresh_measured_ms": again,
            "fresh_meets": again <= budget, "budget_use": again / budget, "step_ups": sum(st.get("step") == "up" for st in r["step_downs"]),
            # Searches the step up made (each try searches under its own scale: ``nas.export.step_up``).
            "step_up_tries": len({st["scale"] for st in r["step_downs"] if st.get("step") == "up"}),
            # The export's last timing before writing: False, nothing met the budget then.
            "confirmed": bool(r.get("budget_confirmed", True)),
            "fallbacks": next((i for i, st in enumerate(last) if st.get("taken")), 0),
            # The full model now / at the sweep's start: how much the machine moved meanwhile.
            "machine_drift": full_again / full_ms,
            # The budget as the share of the full model it was set at, judged in the fresh
            # timing itself: what holds however fast the machine runs that minute.
            "fresh_share": again / full_again, "share_meets": again / full_again <= f,
            "speedup": full_again / again,
            "flops_ratio": r["full_model_flops"] / r["flops"], "realized_over_ideal": (full_again / again) / (r["full_model_flops"] / r["flops"]),
            "acc_test": r["test_accuracy"], "error": "",
        })
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, full_test: float, path: Path, ft: pd.DataFrame | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, col in zip(axes, ("acc_dev_full", "acc_test"), strict=True):
        for method, g in table.groupby("method", sort=False):
            g = g.sort_values("lat_measured_ms")
            ax.plot(g["lat_measured_ms"], g[col], marker="o", ms=4, label=method)
        if ft is not None and len(ft):
            for (method, g), mark in zip(ft.groupby("method", sort=False), "*Pxd", strict=False):
                # An export timed minutes later: placed by its speed-up over the full model timed
                # with it, in the fronts' ms (the machine's pace moves between timings).
                at = (table["full_model_ms"].iloc[0] * g["lat_measured_ms"] / g["full_model_ms"]).fillna(g["lat_measured_ms"])
                ax.scatter(at, g[col], marker=mark, s=70, color="black", label=method, zorder=3)
        ax.axvline(table["full_model_ms"].iloc[0], color="grey", ls=":", lw=1)
        if col == "acc_test":
            ax.axhline(full_test, color="grey", ls="--", lw=1)
            ax.axhline(full_test - 0.01, color="grey", ls=":", lw=1)
        ax.set_xlabel(f"measured latency on {table['device'].iloc[0]}, ms (length {int(table['length'].iloc[0])})")
        ax.set_ylabel("dev accuracy (whole split)" if col == "acc_dev_full" else "test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_title("dashed: full model, dotted: 1 point below")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)


def run_bench(run: LoadedRun, target: Target, cfg: BenchConfig, out_dir: str | Path, *, command: str,
              progress: bool = True) -> dict[str, Any]:
    """All benchmark parts for one run and device; writes CSVs, a PNG and BENCHMARKS.md."""
    from supernet.checkpoint import load_model
    from supernet.evaluate import predict, scores

    out = Path(out_dir)
    if cfg.finetune_epochs > 0:
        check_unlabeled(run.task, cfg.finetune_unlabeled)  # now, not after the searches
    times: dict[str, float] = {}
    acc = DevAccuracy(run, subset_size=cfg.dev_subset, seed=cfg.seed, precision=cfg.search_precision,
                      batch=target.batch)
    t0 = time.time()
    teacher = load_model(run.paths.teacher)
    test = run.splits["test"]
    teacher_test = predict(teacher, test)  # its score, and each 1-point point's paired interval
    full_test = scores(teacher_test, test.labels)[run.task.metric]
    dev = run.splits["dev"]
    full_dev = scores(predict(teacher, dev), dev.labels)[run.task.metric]  # the line points at a loss are chosen by
    cands = _candidates(run, target, acc, cfg, progress)
    table, stock = _fronts(run, target, acc, cfg, cands, progress)
    times["fronts (search + re-measure + score)"] = time.time() - t0
    hv = hypervolumes(table, full_test)
    t0 = time.time()
    seeds = seed_spread(run, target, acc, cfg, cands, progress)
    verdicts = spread_verdicts(seeds)
    times[f"hypervolume over {cfg.seeds} search seeds"] = time.time() - t0
    t0 = time.time()
    ft = finetuned(run, target, table, acc, cfg, run.paths.bench, full_test, progress)
    times["fine-tuned points (ours: export + fine-tune; grid: fine-tune)"] = time.time() - t0
    points = pd.concat([table, ft], ignore_index=True) if len(ft) else table
    sp = loss_intervals(speedup_at_loss(points, full_dev), points, acc.test_logits, teacher_test, test.labels,
                        run.task.metric)
    t0 = time.time()
    sp = retimed(run, target, sp, repeats=cfg.retimes, rounds=max(cfg.rounds, 3))
    times[f"1-point points timed {cfg.retimes} more times"] = time.time() - t0
    t0 = time.time()
    comp = compliance(run, target, acc, cfg, run.paths.bench, full_test, progress)
    times["budget sweep (search + export + re-measure)"] = time.time() - t0
    fits = {}  # each measured device's predictor for the benchmark's regime and statistic
    for f in sorted(run.paths.latency.glob("*.csv")):
        report = run.paths.fit_report(f.stem, target.regime, target.stat)
        if report.exists():
            fits[f.stem] = json.loads(report.read_text())
    prefix = f"bench_{run.spec.task}_{target.profile.name}"
    state = json.loads(run.paths.state.read_text())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {"full_test": full_test, "full_dev": full_dev, "times": times, "peak_rss_mb": peak_mb, "train_times": state["done"],
               "predictor": {d: str(run.paths.predictor(d)) for d in fits}}
    page = _page(run, target, cfg, table, hv, sp, ft, comp, fits, full_test, summary, command, prefix, stock, verdicts)
    tables = {"fronts": table, "hypervolume": hv, "hypervolume_seeds": seeds, "speedup": sp, "finetuned": ft,
              "compliance": comp, "deployments": stock}
    files: dict[str, Callable[[Path], Any]] = {f"{prefix}_{name}.csv": functools.partial(write_csv, frame=frame)
                                               for name, frame in tables.items()}
    files[f"{prefix}_fronts.png"] = lambda p: plot(table, full_test, p, ft)
    files[f"{prefix}_summary.json"] = lambda p: write_json(p, summary)
    files[f"{prefix}.md"] = lambda p: write_text(p, page)
    write_together(out, prefix, files)  # a crash while writing leaves the previous page whole
    assemble(out)
    return summary


def assemble(out_dir: str | Path) -> Path:
    """``BENCHMARKS.md``: every ``bench_<task>_<device>.md`` page in the folder, one after another."""
    out = Path(out_dir)
    pages = sorted(out.glob("bench_*.md"))
    head = ("# Benchmarks\n\nGenerated pages, one per task and device, each naming the command that produced "
            "it (`hwnas bench`; all of them: `bash scripts/bench.sh`). Pages: "
            + ", ".join(f"[{p.stem}]({p.name})" for p in pages) + ".\n\n")
    body = "\n\n".join(p.read_text().replace("# Benchmarks:", "## Benchmarks:", 1).replace("\n## ", "\n### ")
                        .replace("\n### Benchmarks:", "\n## Benchmarks:") for p in pages)
    return write_text(out / "BENCHMARKS.md", head + body)


def cpu_description() -> str:
    """This CPU for a page's header: its model name, architecture and, on x86, whether it has VNNI
    (what the INT8 figures depend on: without it ONNX Runtime's INT8 weights use 7 bits)."""
    vnni = cpu_has_vnni()
    isa = "" if vnni is None else ("; VNNI" if vnni else "; no VNNI: INT8 weights in 7 bits")
    return f"{cpu_model() or 'CPU model unknown'}, {platform.machine()}{isa}"


def _md(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for r in frame.itertuples(index=False):
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ft_candidates(ft: pd.DataFrame) -> pd.DataFrame:
    cols = ["export", "arch", "measured_ms", "dev_accuracy_before", "dev_accuracy", "dev_loss", "test_accuracy"]
    rows = [{"export": f"{r['speedup']:.2f}x", **c} for r in ft.to_dict("records")
            if isinstance(r.get("ft_candidates"), str) for c in json.loads(r["ft_candidates"])]
    return pd.DataFrame(rows, columns=cols)


def proxy_line(candidates: pd.DataFrame) -> str:
    """The proxy's quality on the page's own fine-tunings: Kendall's tau-b between the
    supernet-weight and the fine-tuned dev accuracy of every sub-network ``ours+ft`` fine-tuned
    (``_ft_candidates``), once each."""
    from nas.stats import kendall_tau

    once = candidates.drop_duplicates("arch")
    if len(once) < 3:
        return f"Proxy rank correlation: not computed ({len(once)} distinct sub-networks fine-tuned; it needs 3)."
    tau = kendall_tau(once["dev_accuracy_before"], once["dev_accuracy"])
    return (f"Proxy rank correlation over these {len(once)} distinct sub-networks: Kendall's tau-b between the "
            f"supernet-weight and the fine-tuned dev accuracy = {tau:.2f} (issue 15's target >= 0.7; over 16 "
            "sub-networks spread along the front: `scripts/proxy_check.py`).")


def one_point_target(row: pd.Series | None, what: str, goal: float) -> dict[str, Any]:
    """The targets table's row for "``goal``x at <= 1 point" from ``speedup_at_loss``'s row of
    ours (with ``loss_intervals`` and ``retimed``): the point chosen on dev, met when its speed-up
    (the median of the re-timings where there are any) reaches ``goal`` and its test score is
    within 1 point of the teacher's; shows the paired interval of that loss."""
    name = f">= {goal:g}x speed-up at <= 1.0 point test loss ({what}; chosen on dev; median of the re-timings)"
    if row is None or not row["arch"]:
        return {"target": name, "measured": "no point within 1.0 point on dev", "met": False,
                "gap": "no point within 1.0 point on dev"}
    retimed_median = row.get("speedup_retimed_median", float("nan"))
    v = float(retimed_median) if pd.notna(retimed_median) else float(row["speedup"])
    text = f"{row['speedup']:.2f}x"
    if pd.notna(retimed_median):
        text += (f" (re-timed: median {retimed_median:.2f}x, {row['speedup_retimed_min']:.2f}-"
                 f"{row['speedup_retimed_max']:.2f}x)")
    loss = float(row["vs_teacher_points"])
    text += (f"; {loss:+.2f} points on test (95% CI {row['vs_teacher_ci95_low']:+.2f} to "
             f"{row['vs_teacher_ci95_high']:+.2f})")
    gaps = [f"{goal - v:.2f}x short" if v < goal else "",
            f"{-loss - 1.0:.2f} points more than 1.0 lost on test" if loss < -1.0 else ""]
    return {"target": name, "measured": f"{text}, {row['arch']}", "met": v >= goal and loss >= -1.0,
            "gap": "; ".join(g for g in gaps if g)}


def _page(run: LoadedRun, target: Target, cfg: BenchConfig, table: pd.DataFrame, hv: pd.DataFrame, sp: pd.DataFrame,
          ft: pd.DataFrame, comp: pd.DataFrame, fits: dict[str, Any], full_test: float, summary: dict[str, Any], command: str,
          prefix: str, stock: pd.DataFrame, verdicts: pd.DataFrame) -> str:
    import onnxruntime
    import torch
    import transformers

    ok = comp[comp["error"] == ""] if "error" in comp else comp
    hv_test = hv[hv["accuracy"] == "acc_test"].set_index("method")["hypervolume"]
    ours_hv = hv_test.get("ours", float("nan"))
    beaten = all(ours_hv > v for m, v in hv_test.items() if m != "ours")
    beats = verdicts.dropna(subset=["ours_beats"]) if "ours_beats" in verdicts else verdicts.iloc[:0]
    beats_all = bool(len(beats)) and bool(beats["ours_beats"].all())
    at1 = sp[sp["max_loss_points"] == 1.0].set_index("method")
    fit_rows = pd.DataFrame([{
        "device": d, "chosen": r["chosen"], "within_10pct": r["metrics"][r["chosen"]]["within_10pct"],
        "mape": r["metrics"][r["chosen"]]["mape"], "kendall_tau": r["metrics"][r["chosen"]]["kendall_tau"],
        "noise_within_10pct": r["noise_floor"]["within_10pct"], "noise_median_dev": r["noise_floor"]["median_abs_rel"],
        "reference_within_10pct": r["noise_floor"].get("reference_within_10pct", float("nan")),
        "reference_median_dev": r["noise_floor"].get("reference_median_abs_rel", float("nan")),
        "n_configs": r["n_configs"], "passes": r.get("passes", 1)} for d, r in fits.items()])
    comp_share = float(ok["fresh_meets"].mean()) if len(ok) else float("nan")
    first_share = float(ok["first_pick_meets"].mean()) if len(ok) else float("nan")
    rel_share = float(ok["share_meets"].mean()) if len(ok) and "share_meets" in ok else float("nan")
    rio = float(ok["realized_over_ideal"].median()) if len(ok) else float("nan")
    use = float(ok["budget_use"].median()) if len(ok) and "budget_use" in ok else float("nan")
    best_other = max(((v, m) for m, v in hv_test.items() if m != "ours"), default=(float("nan"), ""))
    targets = pd.DataFrame([
        *[one_point_target(at1.loc[m] if m in at1.index else None, what, goal)
          for m, what, goal in (("ours", "supernet weights", 2.0), ("ours+ft", "fine-tuned", 4.0))
          if m == "ours" or m in at1.index],
        {"target": "our hypervolume above every baseline (test accuracy)", "measured": f"{ours_hv:.4f}", "met": beaten,
         "gap": "" if beaten else f"{best_other[0] - ours_hv:.4f} below {best_other[1]}"},
        {"target": f"... by more than the spread over {cfg.seeds} search seeds (predicted latency)",
         "measured": ", ".join(f"{r['method']} {r['ours_minus_this']:+.4f}" for r in beats.to_dict("records")),
         "met": beats_all, "gap": "" if beats_all else "not beyond the spread: " + ", ".join(
             r["method"] for r in beats.to_dict("records") if not r["ours_beats"]) if cfg.seeds > 1 else "one seed only"},
        *[{"target": f"predictor {d}: >= 95% within 10%, MAPE <= 5%",
           "measured": f"{r['within_10pct']:.1%}, {r['mape']:.1%} (the full model's own timings across the "
                       f"measurement: {r['reference_within_10pct']:.1%} within 10%)",
           "met": r["within_10pct"] >= 0.95 and r["mape"] <= 0.05,
           "gap": ", ".join(x for x in (f"{0.95 - r['within_10pct']:.1%} short" if r["within_10pct"] < 0.95 else "",
                                        f"MAPE {r['mape'] - 0.05:.1%} over" if r["mape"] > 0.05 else "") if x)}
          for r in fit_rows.to_dict("records") for d in [r["device"]]],
        {"target": "budget compliance >= 95% (fresh re-measurement)", "measured": f"{comp_share:.0%} of the "
         f"{len(ok)} exports of {len(comp)} budgets (first pick before any step-down: {first_share:.0%}; as a share "
         f"of the full model timed with it: {rel_share:.0%})", "met": comp_share >= 0.95,
         "gap": "" if comp_share >= 0.95 else f"{0.95 - comp_share:.0%} short"},
        {"target": "budget use >= 0.9 (median fresh measured / budget)", "measured": f"{use:.2f} over the {len(ok)} "
         "exports", "met": use >= 0.9,
         "gap": "" if use >= 0.9 else f"{0.9 - use:.2f} short"},
        {"target": "realized / ideal >= 0.85 (median)", "measured": f"{rio:.2f}", "met": rio >= 0.85,
         "gap": "" if rio >= 0.85 else f"{0.85 - rio:.2f} short"},
    ])
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    show = ["method", "arch", "lat_measured_ms", "speedup", *[c for c in ("speedup_vs_stock", "speedup_vs_stock_int8")
                                                               if c in table], "flops_ratio", "acc_dev_full", "acc_test"]
    dev_scored = ("the whole dev split" if cfg.dev_subset is None
                  else f"a fixed subset of {cfg.dev_subset} dev examples (`--dev-subset`)")
    what = "real traffic (dev inputs at their own lengths, served call by call; `length`: their median)" \
        if target.regime == "traffic" else "one real input of that length, repeated"
    stock_text = (f"""What a user could deploy without us, timed in the same run on the same inputs ({target.stat} ms per call):
the fine-tuned full model as a stock BERT exported to ONNX (`stock-fp32`), after ONNX Runtime's transformer optimizer
(`stock-ort`), and dynamically quantized to INT8 (`stock-int8`; its test score by running the quantized graph);
`ours-full` is our own export of the supernet's largest sub-network. `acc_test` here and below: test {run.task.metric}. `speedup_vs_stock` below is against the fastest
stock fp32 deployment, `speedup_vs_stock_int8` against stock INT8: for a front's point, its speed-up over `ours-full` in the fronts' timing
times `ours-full`'s over the stock model in this one (each ratio from one timing).
{_md(stock)}
""" if len(stock) else "")
    best_epoch_note = ("; each keeps its epoch with the lowest distillation loss on dev (early stopping, "
                       "`--finetune-best-epoch`; the epoch kept: `ft_candidates`' `epoch_kept`)"
                       if cfg.finetune_best_epoch else "")
    unlabeled = run.spec.train.unlabeled if cfg.finetune_unlabeled is None else cfg.finetune_unlabeled
    texts = "the train split" + (f" plus {unlabeled} unlabeled in-domain texts" if unlabeled else "") + (
        f" and {cfg.finetune_augment} word-replaced copies of each train example" if cfg.finetune_augment else "")
    text_flags = ((f" --finetune-unlabeled {cfg.finetune_unlabeled}" if cfg.finetune_unlabeled is not None else "")
                  + (f" --finetune-augment {cfg.finetune_augment}" if cfg.finetune_augment else "")
                  + (f" --finetune-attention {cfg.finetune_attention:g}" if cfg.finetune_attention else "")
                  + (f" --finetune-choose {cfg.finetune_choose}" if cfg.finetune_choose != "dev-score" else ""))
    ranked_by = ("dev score" if cfg.finetune_choose == "dev-score" else
                 "fine-tuning loss on dev (distillation from the teacher plus the labels; `dev_loss`)")
    if cfg.finetune_attention:
        texts += (f", with attention distillation (weight {cfg.finetune_attention:g}: each kept head's attention "
                  "scores learn the rewired teacher's same head)")
    return f"""# Benchmarks: {run.spec.task} on {target.profile.name}

Generated by `{command}` on {now}; host {platform.node()} ({cpu_description()}, {__import__('os').cpu_count()} cores),
Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__},
onnxruntime {onnxruntime.__version__}. Run folder `{run.folder}` (task {run.spec.task}, model {run.spec.model}).
Batch {target.batch}, timed on {what}, length {target.length}; latencies are the {target.stat} per call, medians of
{cfg.rounds} interleaved rounds, each model timed in turn with the full model in the same process; `speedup` is the
ratio to our full model. Test accuracy is reported only; every choice used dev.

{stock_text}

## Targets
{_md(targets)}

## 1. Accuracy vs latency: our front against the baselines (same supernet, {cfg.n_evaluations} evaluations where searched, each on {dev_scored})
![fronts]({prefix}_fronts.png)

Fronts at the latency measured in one timing (the full model timed with them: dotted line); fine-tuned points (black),
timed in their own exports, at their speed-up over the full model timed with them, in the fronts' ms.

Hypervolume (latency relative to the full model, reference 1.0; accuracy reference the worst point of any front):
{_md(hv)}

Over {cfg.seeds} search seeds (the front on dev accuracy and predicted latency relative to the full model, thinned to
{cfg.front_points} points, scored on test; the DynaBERT grid does not search): mean and spread of each method's test
hypervolume; ours beats a method only when the difference of the means exceeds the two standard deviations summed,
and on one seed of ours there is no verdict (`{prefix}_hypervolume_seeds.csv`: one row per method and seed):
{_md(verdicts)}

The teacher (the fine-tuned full model): test {run.task.metric} {full_test:.4f}, whole dev {summary['full_dev']:.4f}; our
full model (the supernet's largest sub-network) {table['full_model_ms'].iloc[0]:.2f} ms in the fronts' timing.

Front points:
{_md(table[show].sort_values(['method', 'lat_measured_ms']))}

## 2. Speed-up at fixed loss (per method, the largest measured speed-up whose whole-dev {run.task.metric} is within the loss of the teacher's, {summary['full_dev']:.4f}: chosen on dev, its test score reported)
`vs_teacher_points`: the point's test {run.task.metric} minus the teacher's on the same examples, with its 95% interval
(paired bootstrap): the loss the 1-point targets above are judged on; `speedup_retimed_*`: each 1-point point timed {cfg.retimes} more times, each in a fresh timer
({max(cfg.rounds, 3)} interleaved rounds with the full model): median, min and max of those speed-ups.
{_md(sp.drop(columns=["arch_json"]))}

`METHOD+ft`: fine-tuned points at {', '.join(f'{x:g}x' for x in cfg.finetune_speedups)}, each distilled from the
teacher for {'at most ' if cfg.finetune_best_epoch else ''}{cfg.finetune_epochs:g} epochs (learning rate {cfg.finetune_lr:g}) on {texts} (latency does not
change){best_epoch_note}, the same schedule for {', '.join(cfg.finetune_methods)}. `ours+ft` is what
`hwnas export --speedup s --finetune-epochs {cfg.finetune_epochs:g} --finetune-candidates {cfg.finetune_candidates}{' --finetune-best-epoch' if cfg.finetune_best_epoch else ''}{text_flags}`
hands a user: the full model timed just before the export (`budget_ms`: that latency divided by s), a search under
that budget, the finalists re-ranked on dev and re-measured; the chosen one, the widest uniform sub-network of the deepest depth that fits (by the predictor's bound or timed)
and the best candidates of the deepest other depths (up to {cfg.finetune_candidates} in all, each re-measured under the
budget) are fine-tuned, and the best by {ranked_by} is exported (its speed-up is the one
measured in that export); `dynabert+ft` is the grid's most accurate (whole dev) point with a measured speed-up of at
least s. `speedup_vs_stock` (fastest stock fp32) and `speedup_vs_stock_int8`: for `ours+ft` from the stock models
timed beside it in its export, for the grid's from the fronts' run. Before and after; `vs_teacher_points`: test {run.task.metric} minus the teacher's on the same sentences,
with its 95% interval (paired bootstrap; `ours+ft`: the exported model as deployed):
{_md(ft[[c for c in ("method", "arch", "budget_ms", "speedup", "speedup_vs_stock", "speedup_vs_stock_int8",
                     "acc_test_before", "acc_dev_full", "acc_test",
                     "vs_teacher_points", "vs_teacher_ci95_low", "vs_teacher_ci95_high") if c in ft]])
 if len(ft) else "(none)"}

Every sub-network `ours+ft` fine-tuned (the search's pick first; the exported one has the best fine-tuned {ranked_by}):
{_md(_ft_candidates(ft))}

{proxy_line(_ft_candidates(ft))}

## 3. Latency predictor quality (held-out configurations; `hwnas fit`)
{_md(fit_rows)}

`noise_*`: the full model timed twice in turn, 8 rounds back to back before the configurations (the harness
check); `reference_*`: the full model timed again every 20 configurations, from the first to the last: the
share within +-10% of their median and the median deviation. Every held-out configuration was timed once
in that stretch, so the reference figures are the noise in the values the predictor is scored against:
no predictor can be within 10% more often than about that share. `passes`: timings of each configuration
(`hwnas measure --passes`), the predictor fitted and scored on their median.

## 4. Budget compliance and 5. realized vs ideal (budgets as a share of the full model's latency)
`drift_scale`: the factor the export scaled its predictions by, after timing three reference
sub-networks against the predictor (1: within 10%); `first_pick_meets`: the search's choice met the
budget when re-measured; `fresh_meets`: the exported sub-network, re-measured again afterwards, met it; `budget_use`: that
fresh measurement / the budget; `step_ups`: the more accurate candidates measured when the pick left more than 10% of the
budget unused (the relaxed search's and the pick's one-step-larger neighbours'); `step_up_tries`: the tries those came
from (a second when every candidate of the first missed, under the scale they measured at, or from the new pick); `confirmed`: the export's last timing of its pick, just before writing, met the budget (`fallbacks`: how
many of its picks missed in that timing before one met it); `machine_drift`: the full model timed with the fresh
measurement / timed at the sweep's start (above 1: the machine got slower meanwhile); `fresh_share` / `share_meets`: the
fresh measurement / the full model's in the same timing, and whether that is within the budget's `fraction` (compliance
as a speed-up, whatever the machine's speed that minute). Realized / ideal = measured speed-up / FLOPs ratio.
{_md(comp.drop(columns=[c for c in ('error',) if c in comp and (comp[c] == '').all()]))}

## 7. Cost
Training (from the run): {', '.join(f"{k} {v['wall_s']:.0f} s" for k, v in summary['train_times'].items())}.
This benchmark: {', '.join(f"{k} {v:.0f} s" for k, v in summary['times'].items())}. Peak memory (this process): {summary['peak_rss_mb']:.0f} MB.
"""
