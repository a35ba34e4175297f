#!/usr/bin/env bash
# GPU checks in one go, on a CUDA machine with the project installed (bash scripts/setup.sh after
# installing a CUDA torch into .venv): the GPU tests, then the encode benchmark in bf16 on the GPU.
# Usage: benchmarks/gpu.sh OUT_DIR      (writes gpu-tests.txt, encode.json, nvidia-smi.txt there)
set -euo pipefail
out=${1:?usage: benchmarks/gpu.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
"$PY" -m pytest -q tests/test_gpu.py tests/test_encode.py tests/test_encode_families.py 2>&1 | tee "$out/gpu-tests.txt"
"$PY" benchmarks/encode.py --out "$out/encode.json" --device cuda --dtype bfloat16 --token-budget 65536
echo "results in $out"
