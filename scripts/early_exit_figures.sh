#!/usr/bin/env bash
# The early-exit figures of README.md ("Early exit"): exit heads of two kinds trained on a
# run's frozen supernet, then each sub-network's trade-off, export and timing on test.
#   bash scripts/early_exit_figures.sh [RUN]      (default RUN: runs/main, trained by scripts/run.sh)
# Writes RUN/exits/{mean,attn}/ and RUN/early_exit/{KIND}_{SUBNET}/ (policies.csv, report.json,
# runner/). Resumable: finished exit heads are loaded, not trained again.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/main}
HWNAS=(nice -n 10 .venv/bin/python -m nas.cli)
[ -x .venv/bin/python ] || HWNAS=(nice -n 10 python -m nas.cli)
mkdir -p "$RUN/early_exit"
# The largest sub-network, and width 0.75 with token retention to 0.8 (eval.csv's second row).
echo '{"heads": [12,12,12,12,12,12], "ffn": [1536,1536,1536,1536,1536,1536], "keep": [true,true,true,true,true,true], "retention": [1,1,1,1,1,1]}' > "$RUN/early_exit/largest.json"
echo '{"heads": [9,9,9,9,9,9], "ffn": [1152,1152,1152,1152,1152,1152], "keep": [true,true,true,true,true,true], "retention": [1,0.9,0.9,0.9,0.8,0.8]}' > "$RUN/early_exit/w075.json"
for kind in mean attn; do  # each: 2 epochs on the frozen supernet (24 min each on 2 busy cores)
  "${HWNAS[@]}" exits --run "$RUN" --kind "$kind" --quiet
  for subnet in largest w075; do
    "${HWNAS[@]}" early-exit --run "$RUN" --kind "$kind" --subnet "$RUN/early_exit/$subnet.json" \
      --threads 1 --out "$RUN/early_exit/${kind}_${subnet}"
  done
done
