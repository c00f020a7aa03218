#!/usr/bin/env bash
# Open an export folder with Optimum's ORTModelForSequenceClassification and compare its logits
# with the folder's Hugging Face model (hf/, run by PyTorch).
#
# By default it runs with the Optimum of the dev extra in .venv (optimum-onnx-naf, a fork of
# optimum-onnx that runs on transformers 5; see pyproject.toml). With OPTIMUM_TRANSFORMERS4=1, or
# where .venv has no Optimum, it installs the official optimum-onnx 0.1.0 (which requires
# transformers < 4.58) with transformers 4.57 into a folder of its own (not .venv; torch,
# onnxruntime and numpy come from .venv, unchanged) and runs there: that also shows that hf/'s
# modeling code runs on transformers 4.
#
# Usage: bash scripts/optimum_check.sh EXPORT_DIR   (e.g. runs/main/export/cpu_3.956ms)
set -euo pipefail
cd "$(dirname "$0")/.."
export_dir=${1:?usage: bash scripts/optimum_check.sh EXPORT_DIR}
py=${HWNAS_PYTHON:-.venv/bin/python}
target=""
if [ -n "${OPTIMUM_TRANSFORMERS4:-}" ] || ! "$py" -c "import optimum.onnxruntime" 2>/dev/null; then
    target=${OPTIMUM_TARGET:-${TMPDIR:-/tmp}/hwnas-optimum-check}
    if [ ! -d "$target/optimum/onnxruntime" ]; then
        "$py" -m pip install -q --target "$target" --no-deps \
            optimum-onnx==0.1.0 optimum==2.1.0 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2
    fi
fi
PYTHONPATH="$target" HF_HUB_OFFLINE=1 "$py" - "$export_dir" <<'EOF'
import json
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import transformers
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoModelForSequenceClassification, AutoTokenizer



def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


origin = ", ".join(f"{d} {v}" for d in ("optimum-onnx", "optimum-onnx-naf", "optimum") if (v := _version(d)))
folder = Path(sys.argv[1])
remote = (folder / "hf" / "modeling_hwnas_bert.py").is_file()
texts = ["a fine film", "not a good movie at all, sadly, and far too long for what it has to say", "dull"]
tok = AutoTokenizer.from_pretrained(folder / "hf", trust_remote_code=remote)  # else it asks (config's auto_map)
enc = tok(texts, padding=True, return_tensors="pt")
ort_model = ORTModelForSequenceClassification.from_pretrained(folder, trust_remote_code=remote)
got = ort_model(**enc).logits.numpy()
hf = AutoModelForSequenceClassification.from_pretrained(folder / "hf", trust_remote_code=remote).eval()
with torch.no_grad():
    ref = hf(**enc).logits.numpy()
diff = float(np.abs(got - ref).max())
labels = json.loads((folder / "config.json").read_text())["id2label"]
against = f"max |logit difference| against hf/ in PyTorch: {diff:.2e}"
if (folder / "model-fp32.onnx").is_file():  # an int8 export: model.onnx is quantized, hf/ is not
    import onnxruntime as ort

    feed = {k: v.numpy() for k, v in enc.items()}
    direct = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    against = (f"int8 graph: max |logit difference| against model.onnx run by ONNX Runtime directly: "
               f"{float(np.abs(got - direct).max()):.2e} (against hf/'s fp32 weights in PyTorch: {diff:.2e})")
    diff = float(np.abs(got - direct).max())
print(f"transformers {transformers.__version__}, {origin}: Optimum's ORTModelForSequenceClassification opened {folder} "
      f"(trust_remote_code={remote}); {against}; labels {[labels[str(i)] for i in got.argmax(1)]}")
sys.exit(0 if diff < 1e-4 else 1)
EOF
