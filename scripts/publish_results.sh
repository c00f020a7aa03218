#!/usr/bin/env bash
# Copy a finished run's figures into results/ (what results/README.md documents).
#   bash scripts/publish_results.sh runs/rt-full rt
# Expects: hwnas train, hwnas measure + fit (cpu, cpu-1t), hwnas export and hwnas compare
# already done on RUN (see results/README.md for the exact commands used).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: publish_results.sh RUN TASK}
TASK=${2:?usage: publish_results.sh RUN TASK}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/hwnas eval --run "$RUN" --save "results/supernet_eval_${TASK}.csv"
for fit in "$RUN"/latency/*.fit.json; do
    [ -e "$fit" ] || continue
    dev=$(basename "$fit" .fit.json)
    cp "$fit" "results/latency_fit_${TASK}_${dev}.json"
    cp "$RUN/latency/${dev}.fit.png" "results/latency_fit_${TASK}_${dev}.png"
done
for rep in "$RUN"/export/*/report.json; do
    [ -e "$rep" ] || continue
    cp "$rep" "results/export_${TASK}_$(basename "$(dirname "$rep")").json"
done
if [ -d "$RUN/compare" ]; then
    for f in fronts.csv hypervolume.csv fronts.png; do
        cp "$RUN/compare/$f" "results/${TASK}_${f}"
    done
fi
if [ -d "$RUN/compare-methods" ]; then
    for f in fronts.csv hypervolume.csv fronts.png; do
        cp "$RUN/compare-methods/$f" "results/${TASK}_methods_${f}"
    done
fi
ls -la results/
