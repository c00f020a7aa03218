#!/usr/bin/env bash
# The early-exit figures of README.md ("Early exit"): exit heads of two kinds trained on a
# run's frozen supernet, then the largest sub-network's trade-off, export and timing on test.
#   bash scripts/early_exit_figures.sh [RUN] [SUBNET_JSON]
# RUN defaults to runs/main (trained by scripts/run.sh), SUBNET_JSON to the largest sub-network.
# Writes RUN/exits/{mean,attn}/ and RUN/early_exit/{KIND}_{NAME}_1t/ (policies.csv, report.json,
# runner/); then the search under a budget (BUDGET ms p50 on DEVICE, default 3 on cpu; the run
# must have searched that device) into RUN/early_exit/search_{DEVICE}_{BUDGET}ms/.
# Resumable: finished exit heads are loaded, cached exit logits reused.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/main}
BUDGET=${BUDGET:-3}
DEVICE=${DEVICE:-cpu}
HWNAS=(nice -n 10 .venv/bin/python -m nas.cli)
[ -x .venv/bin/python ] || HWNAS=(nice -n 10 python -m nas.cli)
if [ ! -f "$RUN/run.json" ]; then
  echo "early_exit_figures.sh: $RUN is not a run folder (no run.json): run bash scripts/run.sh first, or name a run" >&2
  exit 2
fi
SUBNET=${2:-largest}  # the run's own largest sub-network, whatever its model
NAME=$(basename "$SUBNET" .json)
for kind in mean attn; do  # each: 2 epochs on the frozen supernet (24 min each on 2 busy cores)
  "${HWNAS[@]}" exits --run "$RUN" --kind "$kind" --quiet
  # One ONNX Runtime thread: on a shared 2-core machine, all-core timings swing with the load.
  "${HWNAS[@]}" early-exit --run "$RUN" --kind "$kind" --subnet "$SUBNET" --threads 1 \
    --out "$RUN/early_exit/${kind}_${NAME}_1t"
done
"${HWNAS[@]}" early-exit --run "$RUN" --kind attn --budget-ms "$BUDGET" --device "$DEVICE" \
  --out "$RUN/early_exit/search_${DEVICE}_${BUDGET}ms"
