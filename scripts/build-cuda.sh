#!/usr/bin/env bash
# Builds dcm with the `cuda` feature on a machine without a GPU or CUDA toolkit, using the
# tested recipe in $CUDA_RECIPE, by default a `shared/cuda` folder beside the repository
# (nvcc and headers from PyPI wheels, link-time stubs; CUDA 13.0, sm_90: H100/H200). The
# binary lands in target-cuda/release/dcm; run it on the GPU machine through
# $CUDA_RECIPE/run_on_gpu.sh, which finds the CUDA libraries there.
# A cold build takes 12–22 minutes on 2 cores; rebuilds of dcm itself are quick.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
recipe=${CUDA_RECIPE:-$root/../shared/cuda}
[[ -x "$recipe/build.sh" ]] || { echo "error: $recipe/build.sh not found (set CUDA_RECIPE to the folder holding build.sh)" >&2; exit 2; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target-cuda}
CRATE=$root WORK=${WORK:-/tmp/cudabuild} "$recipe/build.sh" -- --features cuda --bin dcm
echo "built $CARGO_TARGET_DIR/release/dcm"
