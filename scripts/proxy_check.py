"""Does the supernet's own dev accuracy rank sub-networks the way fine-tuning will? (issue 15)

From a seeded pool of sub-networks (a uniform grid plus random samples), the ones on the
supernet-weight front (dev accuracy against the latency predicted by the run's ``--device``
predictor) are taken, ``--n`` of them spread evenly along the predicted latency (the next
non-dominated layers fill in when the front is shorter). Each is fine-tuned as ``hwnas export``
does (distilled from the teacher, ``--epochs`` at ``--lr``; ``--layer-weight`` adds layer-wise
distillation) and scored on the whole dev and test splits. Printed:

* Kendall's tau-b between the supernet-weight dev accuracy and the fine-tuned dev accuracy (the
  proxy's quality; the issue's target is >= 0.7);
* the same tau between the fine-tuned dev and the fine-tuned test accuracy: how well a
  perfect proxy could rank at all, given the noise of splits of this size (a ceiling);
* how an export's choice between fine-tuned candidates fares by dev score or by the
  fine-tuning's loss on dev (``--finetune-choose``): the tau of the dev loss (negated) with the
  fine-tuned test accuracy, and over the pairs within ``--close`` on fine-tuned dev (near-ties,
  where the choice is hard) the share each orders as test does (``nas.stats.close_pair_agreement``);
* the proxy's tau on test, and the tau of a proxy that only knows the predicted latency;
* with ``--short-epochs E``: the tau of a cheaper proxy than the full fine-tuning, each
  sub-network fine-tuned for only ``E`` epochs (what fine-tuning a search's finalists briefly
  would rank by), against the full fine-tuning's dev accuracy.

    .venv/bin/python scripts/proxy_check.py runs/main --out runs/proxy --n 16

Finished fine-tunings under ``--out`` are reused; the table goes to ``OUT/proxy_plain.csv``
(``OUT/proxy_lw<W>.csv`` with ``--layer-weight W``).
``--supernet DIR`` scores with another supernet of the same run (e.g. one trained by
``scripts/recipe_ablation.py``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from latency.target import PredictedLatency, Target
from latency.workflow import resolve_device
from nas.pareto import non_dominated_rank
from nas.stats import close_pair_agreement, kendall_tau
from supernet.checkpoint import load_model
from supernet.evaluate import Evaluator, model_score, predict, scores
from supernet.space import SearchSpace, SubnetConfig
from supernet.train import (
    StageConfig,
    distill_split,
    finetune_folder,
    finetune_subnet,
    held_out_loss,
    teacher_logits,
)
from supernet.workflow import open_run

sys.path.insert(0, str(Path(__file__).parent))  # the sibling script, run as `python scripts/...`
from recipe_ablation import candidates  # noqa: E402


def pool(space: SearchSpace, n_random: int, seed: int = 0) -> list[SubnetConfig]:
    """A wider uniform grid than the recipe ablation's (width x depth x retention) and
    ``n_random`` seeded samples, deduplicated (``recipe_ablation.candidates``)."""
    return candidates(space, n_random, seed, widths=(0.25, 0.5, 0.75, 1.0), depths=(0.34, 0.5, 0.67, 0.84, 1.0))


def spread_along_front(acc: np.ndarray, lat: np.ndarray, n: int) -> list[int]:
    """``n`` indices: the non-dominated points first (rank 0, then 1, ...), each rank's points
    taken evenly along latency until ``n`` are chosen."""
    ranks = non_dominated_rank(acc, lat)
    chosen: list[int] = []
    for r in range(int(ranks.max()) + 1):
        idx = np.flatnonzero(ranks == r)
        idx = idx[np.argsort(lat[idx])]
        need = n - len(chosen)
        if need <= 0:
            break
        if len(idx) > need:
            idx = idx[np.unique(np.round(np.linspace(0, len(idx) - 1, need)).astype(int))]
        chosen += idx.tolist()
    return chosen[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=16, help="sub-networks fine-tuned (default 16)")
    p.add_argument("--random", type=int, default=120, help="random sub-networks in the pool besides the grid")
    p.add_argument("--device", default="cpu")
    p.add_argument("--supernet", default=None, help="a supernet folder to score with (default: the run's)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--layer-weight", type=float, default=0.0)
    p.add_argument("--short-epochs", type=float, default=0.0,
                   help="also fine-tune each for this many epochs, a cheaper proxy (0: no)")
    p.add_argument("--close", type=float, default=0.01,
                   help="near-ties: pairs within this much fine-tuned dev score (default %(default)s, 1 point)")
    a = p.parse_args()
    if a.n < 3:
        raise SystemExit("--n must be at least 3 for a rank correlation")
    if not 0 <= a.short_epochs < a.epochs:
        raise SystemExit(f"--short-epochs must be at least 0 and below --epochs ({a.epochs:g}), got {a.short_epochs:g}")
    run = open_run(a.run)
    out = Path(a.out)
    supernet = load_model(a.supernet) if a.supernet else run.supernet
    metric = run.task.metric
    splits = {s: run.splits[s] for s in ("dev", "test")}
    ev = Evaluator(supernet, splits, metric=metric, log_path=out / "supernet_scores.csv")
    latency = PredictedLatency.of(run.folder, Target.of(run, resolve_device(run.folder, a.device)))
    configs = pool(run.space, a.random)
    lat = np.array([m for m, _ in latency.predict(configs)])
    t0 = time.time()
    dev = np.array([ev.score(c, "dev") for c in configs])
    print(f"{len(configs)} sub-networks scored with the supernet's weights in {time.time() - t0:.0f} s", flush=True)
    chosen = spread_along_front(dev, lat, a.n)
    teacher = load_model(run.paths.teacher)
    teacher_dev = predict(teacher, splits["dev"])
    targets = functools.cache(lambda: teacher_logits(teacher, distill_split(run.splits)))
    stage = StageConfig(epochs=a.epochs, lr=a.lr)
    short = StageConfig(epochs=a.short_epochs, lr=a.lr)
    sub = f"lw{a.layer_weight:g}" if a.layer_weight > 0 else "plain"
    rows = []
    for k, i in enumerate(chosen):
        cfg = configs[i]
        t0 = time.time()
        model, _ = finetune_subnet(supernet, teacher, cfg, distill_split(run.splits), finetune_folder(out / sub, cfg, stage, a.layer_weight),
                                   run.spec.train, stage, targets=targets, layer_weight=a.layer_weight, progress=False)
        dev_logits = predict(model, splits["dev"])
        rows.append({"arch_key": cfg.key(), "subnet": cfg.describe(), "pred_ms": lat[i],
                     "supernet_dev": dev[i], "supernet_test": ev.score(cfg, "test"),
                     "finetuned_dev": scores(dev_logits, splits["dev"].labels)[metric],
                     "finetuned_dev_loss": held_out_loss(dev_logits, teacher_dev, splits["dev"].labels,
                                                         run.spec.train.temperature),
                     "finetuned_test": model_score(model, splits["test"], metric)})
        if a.short_epochs > 0:
            brief, _ = finetune_subnet(supernet, teacher, cfg, distill_split(run.splits),
                                       finetune_folder(out / sub, cfg, short, a.layer_weight), run.spec.train, short,
                                       targets=targets, layer_weight=a.layer_weight, progress=False)
            rows[-1]["short_dev"] = model_score(brief, splits["dev"], metric)
        print(f"[{k + 1}/{len(chosen)}] {json.dumps(rows[-1])} ({time.time() - t0:.0f} s)", flush=True)
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"proxy_{sub}.csv", index=False)
    taus = {
        "proxy_dev": kendall_tau(table.supernet_dev, table.finetuned_dev),
        "proxy_test": kendall_tau(table.supernet_test, table.finetuned_test),
        "ceiling_dev_vs_test": kendall_tau(table.finetuned_dev, table.finetuned_test),
        "latency_only_dev": kendall_tau(table.pred_ms, table.finetuned_dev),
        "dev_loss_vs_test": kendall_tau(-table.finetuned_dev_loss, table.finetuned_test),
    }
    close = close_pair_agreement(table.finetuned_test, {"dev_score": table.finetuned_dev,
                                                         "dev_loss": -table.finetuned_dev_loss},
                                 close=table.finetuned_dev, within=a.close)
    taus |= {f"close_pairs_{k}": v for k, v in close.items()}
    if a.short_epochs > 0:
        taus[f"short_{a.short_epochs:g}ep_dev"] = kendall_tau(table.short_dev, table.finetuned_dev)
    print(json.dumps({"n": len(table), **{k: round(v, 3) for k, v in taus.items()}}))
    print(f"written {out / f'proxy_{sub}.csv'}", file=sys.stderr)


if __name__ == "__main__":
    main()
