#!/usr/bin/env bash
# Reproduce results/BENCHMARKS.md: train, measure, fit and benchmark on rt (short
# sentences) and r8 (longer news texts), seeded; every step resumes when re-run
# (training and measurements continue where they stopped; finished fine-tunings are reused).
# An existing run folder resumes with the settings it was started with: delete runs/bench
# (runs/bench-quick) to start over.
#   bash scripts/bench.sh           # full version (about 2 hours on 2 cores from an empty runs/bench;
#                                   # the committed pages: code of a4b02f3, see results/README.md)
#   bash scripts/bench.sh --quick   # reduced version (minutes): small subsets, fewer samples
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
H=.venv/bin/hwnas
start=$(date +%s)
if [ "${1:-}" = "--quick" ]; then
    RT=(--max-train 1000 --max-eval 600 --teacher-epochs 1 --supernet-epochs 1)
    R8=(--max-train 500 --max-eval 600 --max-length 128 --teacher-epochs 1 --supernet-epochs 1)
    N_RT=40; N_R8=40; BENCH_RT=(--quick); BENCH_R8=(--quick); OUT=runs/bench-quick; RESULTS=$OUT/results
else
    # rt: the full training split with the default schedule; r8: the full training split at
    # 128 tokens, fewer measured configurations and evaluations (its inputs are 3x longer).
    RT=(); R8=(--max-length 128); N_RT=300; N_R8=150
    BENCH_RT=(); BENCH_R8=(--n 100); OUT=runs/bench; RESULTS=results
fi
for task in rt r8; do
    run=$OUT/$task
    if [ "$task" = rt ]; then args=("${RT[@]}"); n=$N_RT; bench=("${BENCH_RT[@]}")
    else args=("${R8[@]}"); n=$N_R8; bench=("${BENCH_R8[@]}"); fi
    if [ -f "$run/run.json" ]; then $H train --out "$run" --resume; else $H train --task "$task" --out "$run" "${args[@]}"; fi
    $H measure --run "$run" --device cpu,cpu-1t --n "$n"
    $H fit --run "$run" --device cpu,cpu-1t
    $H bench --run "$run" --device cpu --out "$RESULTS" "${bench[@]}"
    echo "[bench.sh] $task done after $(( ($(date +%s) - start) / 60 )) min"
done
