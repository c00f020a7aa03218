"""How much faster bf16 autocast scores sub-networks than fp32, and how far the scores move.

For a trained run: the DynaBERT grid's sub-networks (and the full model) scored on the whole
dev split in fp32 and under bf16 autocast, each timed twice (the second timing counts).
Prints per sub-network the two timings, the two scores and how many predictions differ.

    .venv/bin/python scripts/precision_check.py runs/bench/rt
"""

from __future__ import annotations

import sys
import time

import numpy as np

from nas.bench import dynabert_grid
from supernet.evaluate import bf16_instructions, bf16_speedup, predict, scores
from supernet.workflow import open_run


def main(folder: str) -> None:
    run = open_run(folder)
    enc = run.splits["dev"]
    metric = run.task.metric
    print(f"{folder}: {len(enc)} dev examples, metric {metric}, CPU bf16 instructions: {bf16_instructions()}, "
          f"bf16 speed-up on the quick check that --search-precision auto runs: {bf16_speedup():.2f}x")
    ratios = []
    configs = {c.key(): c for c in [run.space.largest(), *dynabert_grid(run.space)]}
    for cfg in configs.values():
        out = {}
        for bf16 in (False, True):
            predict(run.supernet, enc, cfg, bf16=bf16)  # warm-up
            t0 = time.perf_counter()
            out[bf16] = (predict(run.supernet, enc, cfg, bf16=bf16), time.perf_counter() - t0)
        (l32, t32), (l16, t16) = out[False], out[True]
        s32, s16 = scores(l32, enc.labels)[metric], scores(l16, enc.labels)[metric]
        flips = int((l32.argmax(1) != l16.argmax(1)).sum())
        ratios.append(t32 / t16)
        print(f"{cfg.describe()[:60]:60s} fp32 {t32:5.2f} s {s32:.4f} | bf16 {t16:5.2f} s {s16:.4f} | "
              f"{flips} predictions differ")
    print(f"median speed-up of bf16 over fp32: {np.median(ratios):.2f}x over {len(ratios)} sub-networks")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/bench/rt")
