#!/usr/bin/env bash
# Builds dcm with the `cuda` feature on a machine without a GPU or CUDA toolkit, using the
# tested recipe in $CUDA_RECIPE, by default a `shared/cuda` folder beside the repository
# (nvcc and headers from PyPI wheels, link-time stubs; CUDA 13.0, sm_90: H100/H200). The
# binary lands in target-cuda/release/dcm (dcm-nccl for feature `nccl`); run it on the GPU machine through
# $CUDA_RECIPE/run_on_gpu.sh, which finds the CUDA libraries there.
#   scripts/build-cuda.sh          feature `cuda`
#   scripts/build-cuda.sh nccl     feature `nccl` (cuda + distributed + NCCL gradient sums): needs
#                                  the system's MPI here, and libnccl.so.2 (wheel nvidia-nccl-cu13,
#                                  NCCL ≥ 2.30) and MPI's libraries on the GPU machine
# A cold build takes 12–22 minutes on 2 cores; rebuilds of dcm itself are quick.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
recipe=${CUDA_RECIPE:-$root/../shared/cuda}
feature=${1:-cuda}
[[ $feature == cuda || $feature == nccl ]] || { echo "error: unknown feature '$feature' (cuda or nccl)" >&2; exit 2; }
[[ -x "$recipe/build.sh" ]] || { echo "error: $recipe/build.sh not found (set CUDA_RECIPE to the folder holding build.sh)" >&2; exit 2; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target-cuda}
work=${WORK:-/tmp/cudabuild}

# The recipe links against stubs carrying the real sonames; NCCL is not among its libraries, so
# a libnccl.so.2 stub joins them in the recipe's link folder: every function cudarc's NCCL
# bindings name, each returning ncclSystemError. The real library is found at run time.
nccl_stub() {
  local lib=$work/cuda-link/lib cudarc src
  cudarc=$(cd "$root" && cargo metadata --format-version 1 --features nccl | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "cudarc"))')
  mkdir -p "$lib"
  src=$(mktemp --suffix .c)
  grep -oP 'load::<_F>\("\K\w+(?="\))' "$cudarc/src/nccl/sys/mod.rs" | sort -u |
    awk '{print "int " $1 "(void) { return 2; }"}' >"$src"
  gcc -shared -fPIC -o "$lib/libnccl.so.2" -Wl,-soname,libnccl.so.2 "$src"
  ln -sf libnccl.so.2 "$lib/libnccl.so"
  echo "stub $lib/libnccl.so.2: $(wc -l <"$src") symbols"
  rm -f "$src"
}
[[ $feature == nccl ]] && nccl_stub

CRATE=$root WORK=$work "$recipe/build.sh" -- --features "$feature" --bin dcm
bin=$CARGO_TARGET_DIR/release/dcm
# Kept beside the `cuda` build's binary, which scripts/gpu-check.sh carries as well.
[[ $feature == nccl ]] && cp "$bin" "$bin-nccl" && bin=$bin-nccl
echo "built $bin"
