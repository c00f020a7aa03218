#!/usr/bin/env bash
# The main job on the bundled defaults (see README): installs what it needs, then `hwnas run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/hwnas run "$@"
