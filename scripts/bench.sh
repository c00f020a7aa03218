#!/usr/bin/env bash
# Reproduce results/BENCHMARKS.md: train, measure, fit and benchmark on rt (short
# sentences) and r8 (longer news texts), seeded; every step resumes when re-run.
#   bash scripts/bench.sh           # full version (about 90 minutes on 2 cores)
#   bash scripts/bench.sh --quick   # reduced version (minutes): small subsets, fewer samples
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
H=.venv/bin/hwnas
if [ "${1:-}" = "--quick" ]; then
    RT=(--max-train 1000 --teacher-epochs 1 --supernet-epochs 1); R8=(--max-train 500 --max-length 128 --teacher-epochs 1 --supernet-epochs 1)
    N_MEASURE=40; BENCH=(--quick); OUT=runs/bench-quick
else
    RT=(); R8=(--max-train 1500 --max-length 128); N_MEASURE=300; BENCH=(); OUT=runs/bench
fi
for task in rt r8; do
    run=$OUT/$task
    if [ "$task" = rt ]; then args=("${RT[@]}"); else args=("${R8[@]}"); fi
    if [ -f "$run/run.json" ]; then $H train --out "$run" --resume; else $H train --task "$task" --out "$run" "${args[@]}"; fi
    $H measure --run "$run" --device cpu,cpu-1t --n "$N_MEASURE"
    $H fit --run "$run" --device cpu,cpu-1t
    $H bench --run "$run" --device cpu --out results "${BENCH[@]}"
done
