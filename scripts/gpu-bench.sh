#!/usr/bin/env bash
# On a machine with an NVIDIA H100/H200 and no Rust toolchain: compares the CUDA build of
# dcm (scripts/build-cuda.sh, carried over as target-cuda/release/dcm) with PyTorch eager
# on the same GPU, and prints bench/compare.sh's table (last line: min speedup vs PyTorch).
# TORCH_VENV (default /opt/torch/.venv) provides PyTorch and the CUDA libraries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
recipe=${CUDA_RECIPE:-$root/../shared/cuda}
[[ -x "$recipe/run_on_gpu.sh" ]] || recipe=$root/shared/cuda
bin=${DCM_BIN:-target-cuda/release/dcm}
[[ -x "$bin" ]] || { echo "error: $bin not found: build it with scripts/build-cuda.sh and carry it" >&2; exit 2; }
venv=${TORCH_VENV:-/opt/torch/.venv}
DCM="$recipe/run_on_gpu.sh $bin" PYTHON="$venv/bin/python" bench/compare.sh --device cuda "$@"
