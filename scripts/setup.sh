#!/usr/bin/env bash
# Create .venv (if missing) and install llmrec-ray with the tested versions (constraints.txt).
# torch is pinned to 2.13.0: on these machines that is a CPU build on local disk; a looser spec
# would pull a multi-GB CUDA build. On a GPU machine install the CUDA torch you need first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
echo "llmrec-ray installed in $(pwd)/.venv"
