"""Supernet training recipes, compared on one trained run (issue 15's ablation table).

Every recipe trains the supernet again from the run's own rewired teacher (``RUN/rewired``),
distilling from the run's teacher (``RUN/teacher``), with the run's settings except the ones
the recipe changes; so the teacher, the data and the rewiring are shared and only the
supernet stage differs. Each supernet then scores one fixed, seeded set of sub-networks
(a DynaBERT-style uniform grid plus random samples) on dev and test with its own weights (no
fine-tuning), and the table says, per recipe:

* the largest and the smallest sub-network's test accuracy, and the mean dev accuracy of the set;
* the fastest sub-network of the set whose **dev** accuracy is within 1 point of the teacher's
  (chosen on dev, as a user would), its test accuracy and the paired-bootstrap 95% interval of
  its difference from the teacher, and its speed-up **predicted** by the run's latency predictor
  (``--device``, p50 on real traffic) against the largest sub-network: a comparison between
  recipes, not a measured deployment speed-up;
* the normalized dev hypervolume of the whole set (whole-dev accuracy against predicted
  latency; test is scored only for the chosen point and the largest and smallest, to keep the
  table affordable on 2 cores).

    .venv/bin/python scripts/recipe_ablation.py runs/main --out runs/ablation \\
        --recipe base: --recipe layers:layer_weight=1 --recipe inplace:distill_from=largest

A recipe is ``NAME:KEY=VALUE,...`` with keys of the run's training settings (``unlabeled``,
``augment`` (word-replaced copies of each train example, ``supernet.augment``), ``layer_weight``,
``schedule``, ``distill_from``, ``n_random``, ``hidden_weight``, ``temperature``, ``length_drop``) and
``epochs`` / ``lr`` for the supernet stage. Everything resumes: an interrupted training goes on
from its last checkpoint, finished supernets and scores are reused. The table is written to
``OUT/recipes.csv`` and each sub-network's scores to ``OUT/subnets.csv``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latency.target import PredictedLatency, Target
from latency.workflow import resolve_device
from nas.pareto import normalized_hypervolume
from nas.stats import compare_with
from supernet.checkpoint import load_model, load_pretrained, save_model
from supernet.evaluate import Evaluator, predict, scores
from supernet.io import write_json
from supernet.space import SearchSpace, SubnetConfig
from supernet.train import MetricsLog, StageRunner, TrainConfig, distill_split, train_supernet
from supernet.workflow import LoadedRun, load_data, open_run, with_supernet_augment

TRAIN_KEYS = {"schedule": str, "unlabeled": int, "augment": int, "layer_weight": float, "distill_from": str, "n_random": int, "hidden_weight": float,
              "temperature": float, "length_drop": lambda v: v.lower() in ("1", "true", "yes")}
STAGE_KEYS = {"epochs": float, "lr": float}


def parse_recipe(text: str, base: TrainConfig) -> tuple[str, TrainConfig]:
    name, _, body = text.partition(":")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise SystemExit(f"recipe {text!r}: expected NAME:KEY=VALUE,... with a name of letters, digits, - and _")
    train, stage = {}, {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key in TRAIN_KEYS:
            train[key] = TRAIN_KEYS[key](value)
        elif key in STAGE_KEYS:
            stage[key] = STAGE_KEYS[key](value)
        else:
            raise SystemExit(f"recipe {name}: unknown key {key!r}; known: {sorted([*TRAIN_KEYS, *STAGE_KEYS])}")
    cfg = dataclasses.replace(base, supernet=dataclasses.replace(base.supernet, **stage), **train)
    return name, cfg.validate()


def candidates(space: SearchSpace, n_random: int, seed: int = 0, *, widths: tuple[float, ...] = (0.25, 0.5, 1.0),
               depths: tuple[float, ...] = (0.5, 0.67, 1.0), retentions: tuple[float, ...] = (1.0, 0.6)
               ) -> list[SubnetConfig]:
    """A uniform grid (width x depth x retention) and ``n_random`` seeded samples, deduplicated."""
    grid = [space.uniform(width=w, depth=d, retention=r) for w in widths for d in depths for r in retentions]
    rng = np.random.default_rng(seed)
    out: dict[str, SubnetConfig] = {}
    for c in [*grid, *(space.sample(rng) for _ in range(n_random))]:
        out.setdefault(c.key(), c)
    return list(out.values())


def splits_of(run: LoadedRun, cfg: TrainConfig) -> dict[str, Any]:
    """The run's splits as ``cfg`` would load them for the supernet stage (its unlabeled texts
    and augmented copies included, as ``hwnas train`` makes them)."""
    spec = dataclasses.replace(run.spec, train=cfg)
    splits = run.splits if cfg.unlabeled == run.spec.train.unlabeled else load_data(spec, run.tokenizer)[1]
    if cfg.augment == 0:
        return splits
    pretrained = load_pretrained(run.spec.model, len(run.task.label_names), seed=run.spec.seed)[0]
    return with_supernet_augment(spec, splits, pretrained, run.tokenizer)


def train_recipe(run: LoadedRun, cfg: TrainConfig, folder: Path) -> tuple[Any, float]:
    """The recipe's supernet (trained now, or loaded when finished) and its training seconds."""
    done = folder / "done.json"
    if done.exists():
        return load_model(folder / "supernet"), float(json.loads(done.read_text())["train_s"])
    folder.mkdir(parents=True, exist_ok=True)
    teacher = load_model(run.paths.teacher)
    student = load_model(run.paths.rewired)
    log = MetricsLog(folder / "metrics.csv")
    t0 = time.time()
    runner = StageRunner("supernet", folder / "supernet", student, distill_split(splits_of(run, cfg)), cfg.supernet, cfg, log)
    train_supernet(student, teacher, run.space, runner)
    save_model(student.eval(), folder / "supernet", {"stage": "supernet", "space": run.space.to_dict()})
    shutil.rmtree(folder / "supernet" / "checkpoint", ignore_errors=True)
    seconds = time.time() - t0
    write_json(done, {"train_s": round(seconds, 1), "train": cfg.to_dict(), "steps": runner.total})
    return student, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--out", required=True)
    p.add_argument("--recipe", action="append", required=True, help="NAME:KEY=VALUE,... (repeatable)")
    p.add_argument("--device", default="cpu", help="the device whose predictor gives latencies (default cpu)")
    p.add_argument("--random", type=int, default=6, help="random sub-networks besides the grid (default 6)")
    a = p.parse_args()
    run = open_run(a.run)
    out = Path(a.out)
    recipes = [parse_recipe(r, run.spec.train) for r in a.recipe]
    metric = run.task.metric
    latency = PredictedLatency.of(run.folder, Target.of(run, resolve_device(run.folder, a.device)))
    subnets = candidates(run.space, a.random)
    lat = np.array([m for m, _ in latency.predict(subnets)])
    lat_full = latency.predict([run.space.largest()])[0][0]
    teacher = load_model(run.paths.teacher)
    splits = {s: run.splits[s] for s in ("dev", "test")}
    t_logits = {s: predict(teacher, splits[s]) for s in splits}
    t_score = {s: scores(t_logits[s], splits[s].labels)[metric] for s in splits}
    print(f"teacher dev {t_score['dev']:.4f} test {t_score['test']:.4f}; {len(subnets)} sub-networks, "
          f"predicted {a.device} p50 {lat.min():.2f}-{lat.max():.2f} ms", flush=True)
    rows, per_subnet = [], []
    for name, cfg in recipes:
        folder = out / name
        model, train_s = train_recipe(run, cfg, folder)
        ev = Evaluator(model, splits, metric=metric, log_path=folder / "scores.csv")
        dev = np.array([ev.score(c, "dev") for c in subnets])
        ok = np.flatnonzero(dev >= t_score["dev"] - 0.01)
        best = int(ok[np.argmin(lat[ok])]) if ok.size else int(np.argmax(dev))
        diff = compare_with(t_logits["test"], predict(model, splits["test"], subnets[best]), splits["test"].labels,
                            metric=metric)
        rows.append({
            "recipe": name, "changes": a.recipe[[n for n, _ in recipes].index(name)].partition(":")[2] or "(run's own)",
            "train_s": round(train_s, 1), "steps": int(json.loads((folder / "done.json").read_text())["steps"]),
            "largest_test": ev.score(run.space.largest(), "test"), "smallest_test": ev.score(run.space.smallest(), "test"),
            "mean_dev": float(dev.mean()), "within_1pt_on_dev": int(ok.size),
            "best_subnet": subnets[best].describe(), "best_pred_speedup": float(lat_full / lat[best]),
            "best_test": ev.score(subnets[best], "test"), "best_vs_teacher": diff["diff_points"],
            "best_ci95_low": diff["ci95_low"], "best_ci95_high": diff["ci95_high"],
            "dev_hypervolume": normalized_hypervolume(dev, lat, ref_acc=0.5, ref_lat=float(lat_full)),
        })
        per_subnet += [{"recipe": name, "arch_key": c.key(), "subnet": c.describe(), "pred_ms": lat[i],
                        "dev": dev[i]} for i, c in enumerate(subnets)]
        print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "recipes.csv", index=False)
    pd.DataFrame(per_subnet).to_csv(out / "subnets.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.drop(columns=["changes"]).round(4).to_string(index=False))
    print(f"teacher test {t_score['test']:.4f}; written {out / 'recipes.csv'}", file=sys.stderr)


if __name__ == "__main__":
    main()
