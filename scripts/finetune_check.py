"""How much sub-networks recover when fine-tuned, under several fine-tuning schedules.

For a trained run: each sub-network is distilled from the teacher (as `hwnas export
--finetune-epochs` does) with each schedule, then scored on the whole dev and test splits.
Prints one row per (sub-network, schedule): dev and test scores, and each split's difference
from the teacher on the same examples in points with its paired-bootstrap 95% interval
(``nas.stats.compare_with``), and the dev distillation loss (the training loss on dev: what
--best-epoch selects on). With --best-epoch each fine-tuning keeps its epoch with the lowest dev
loss (``supernet.train.BestEpoch``) and the row says which. Finished fine-tunings under --out
are reused.

    .venv/bin/python scripts/finetune_check.py runs/bench/rt \
        --subnet runs/bench/rt/bench/export_3x_ft/subnet.json --recipe 2:5e-5 --recipe 3:2e-4

A recipe's third and fourth fields weigh the layer-wise hidden-state loss and the attention
loss (``supernet.train.layer_loss`` and ``attention_loss``, TinyBERT / DynaBERT); with an
attention loss the teacher is the run's rewired teacher (the same function, its heads in the
order the supernet keeps them).

--augment N adds N word-replaced copies of each train example to the distillation texts
(``supernet.augment``), as `hwnas export --finetune-augment` does.

--subnet takes a subnet.json file (from `hwnas export`) or `uniform:WIDTH,DEPTH` (a DynaBERT
grid point; default `uniform:0.25,1.0`, 6 layers of 3 heads and FFN 384 on MiniLM).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

from nas.stats import compare_with
from supernet.evaluate import predict, scores
from supernet.space import SubnetConfig
from supernet.train import (
    StageConfig,
    distill_split,
    finetune_folder,
    finetune_loss,
    finetune_subnet,
    selected_epoch,
    teacher_logits,
)
from supernet.workflow import LoadedRun, distill_teacher, open_run, with_augmented, with_unlabeled


def subnet(run: LoadedRun, spec: str) -> SubnetConfig:
    if spec.startswith("uniform:"):
        width, depth = (float(x) for x in spec.removeprefix("uniform:").split(","))
        return run.space.uniform(width=width, depth=depth)
    return run.space.validate(SubnetConfig.from_dict(json.loads(Path(spec).read_text())))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--subnet", action="append", help="subnet.json or uniform:WIDTH,DEPTH (repeatable)")
    p.add_argument("--recipe", action="append",
                   help="EPOCHS:LR[:LAYER_WEIGHT[:ATTENTION_WEIGHT]] (layer-wise hidden-state and attention "
                   "distillation; repeatable; default 2:5e-5 and 3:2e-4)")
    p.add_argument("--unlabeled", type=int, default=None,
                   help="distil on the train split plus this many of the task's unlabeled texts (default: as the run)")
    p.add_argument("--augment", type=int, default=0,
                   help="also distil on this many word-replaced copies of each train example (supernet.augment; "
                   "TinyBERT's p 0.4, 15 neighbours; default 0)")
    p.add_argument("--out", default=None, help="where the fine-tunings go (default RUN/finetune_check)")
    p.add_argument("--best-epoch", action="store_true",
                   help="keep each fine-tuning's epoch with the lowest dev distillation loss (as hwnas export "
                   "--finetune-best-epoch)")
    a = p.parse_args()
    run = open_run(a.run)
    run = with_augmented(with_unlabeled(run, a.unlabeled), a.augment)
    print(f"distilling on {len(distill_split(run.splits))} texts ({len(run.splits['train'])} labeled)")
    out = Path(a.out or run.folder / "finetune_check")
    teacher = distill_teacher(run)
    rewired = functools.cache(lambda: distill_teacher(run, attention=1.0))  # for the attention loss
    targets = functools.cache(lambda: teacher_logits(teacher, distill_split(run.splits)))
    metric = run.task.metric
    reference = {s: predict(teacher, run.splits[s]) for s in ("dev", "test")}
    print(f"{a.run}: teacher test {metric} {scores(reference['test'], run.splits['test'].labels)[metric]:.4f}")
    for spec in a.subnet or ["uniform:0.25,1.0"]:
        cfg = subnet(run, spec)
        before = {s: run.evaluator(cfg, s)[metric] for s in ("dev", "test")}
        print(f"{cfg.describe()}: supernet weights dev {before['dev']:.4f} test {before['test']:.4f}")
        for recipe in a.recipe or ["2:5e-5", "3:2e-4"]:
            epochs, lr, layer_weight, attention_weight = (float(x) for x in (recipe + ":0:0").split(":")[:4])
            stage = StageConfig(epochs=epochs, lr=lr)
            t0 = time.time()
            folder = finetune_folder(out, cfg, stage, layer_weight, unlabeled=run.spec.train.unlabeled,
                                     best_epoch=a.best_epoch, augment=a.augment, attention_weight=attention_weight)
            model, trained = finetune_subnet(run.supernet, rewired() if attention_weight > 0 else teacher, cfg,
                                             distill_split(run.splits), folder, run.spec.train, stage, targets=targets,
                                             layer_weight=layer_weight, attention_weight=attention_weight,
                                             progress=False, select=run.splits["dev"] if a.best_epoch else None)
            how = f"{time.time() - t0:.0f} s" if trained else "reused"
            kept = selected_epoch(folder)
            if kept:
                how += (f"; epoch {kept['best_epoch']} kept, dev loss by epoch "
                        + " ".join(f"{v:.4f}" for v in kept["dev_loss"].values()))
            logits = {s: predict(model, run.splits[s]) for s in ("dev", "test")}
            dev_loss = float(finetune_loss(torch.from_numpy(logits["dev"]), torch.from_numpy(reference["dev"]),
                                           torch.tensor(run.splits["dev"].labels, dtype=torch.long),
                                           run.spec.train.temperature))
            how = f"dev loss {dev_loss:.4f}; {how}"
            got = []
            for s in ("dev", "test"):
                labels = run.splits[s].labels
                c = compare_with(reference[s], logits[s], labels, metric=metric)
                got.append(f"{s} {scores(logits[s], labels)[metric]:.4f} ({c['diff_points']:+.2f} points, "
                           f"{c['ci95_low']:+.2f} to {c['ci95_high']:+.2f})")
            print(f"  {epochs:g} epochs, lr {lr:g}, layer weight {layer_weight:g}, attention weight "
                  f"{attention_weight:g}: {', '.join(got)} ({how})", flush=True)


if __name__ == "__main__":
    main()
