#!/usr/bin/env bash
# The one script for the first session with a GPU (issue: training at real scale, item 4):
# builds nothing, runs every GPU check in one device call (≤ 10 minutes) and prints a short
# table last.
#   1. CUDA against CPU on the tiny pipelines (tests/fixtures/sd: SD 1, SD 2, SDXL): the
#      teacher's guided DDIM solve and a LoRA student's 2-step sample, f32 (must agree to
#      1e-4 relative) and bf16 (error stated, no bound).
#   2. The SD 1.5 UNet forward at 64×64 f16 against diffusers, and SDXL at 128×128 bf16
#      (scripts/gpu-unet-bench.sh: alternating rounds, peak GPU memory).
#   3. One CM and one Direct LoRA step of the SD 1.5 UNet on the GPU, with dcm distill's memory
#      estimate beside the measured peak (dcm bench --workload unet-lora).
#
# Prepare on the CPU machine:
#   scripts/build-cuda.sh && scripts/gpu-unet-bench.sh --prepare
# then one device call carrying target-cuda/carry:
#   run(command="scripts/gpu-check.sh", carry=["target-cuda/carry"], timeout_s=600)
# GPU_CHECK_DEVICE=cpu DCM_BIN=target/release/dcm scripts/gpu-check.sh --parity-only runs
# part 1 with the CPU build on both sides: a check of this script, not of a GPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
device=${GPU_CHECK_DEVICE:-cuda}
venv=${TORCH_VENV:-/opt/torch/.venv}
python=${PYTHON:-$venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
summary=$work/summary.txt

if [[ -n "${DCM_BIN:-}" ]]; then
  dcm=("$DCM_BIN")
else
  carry=target-cuda/carry
  [[ -f "$carry/dcm.xz" ]] || { echo "error: $carry/dcm.xz missing: run scripts/gpu-unet-bench.sh --prepare and carry $carry" >&2; exit 2; }
  "$python" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$carry/dcm.xz" "$work/dcm"
  chmod +x "$work/dcm"
  recipe=${CUDA_RECIPE:-$root/../shared/cuda}
  [[ -x "$recipe/run_on_gpu.sh" ]] || recipe=$root/shared/cuda
  dcm=("$recipe/run_on_gpu.sh" "$work/dcm")
fi

# Noise [2, 4, 8, 8] and two prompts, shared by every run.
"$python" - "$work" <<'PY'
import sys, numpy as np
work = sys.argv[1]
np.save(f"{work}/noise.npy", np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32))
open(f"{work}/prompts.txt", "w").write("a red cat\nblue sky over a field\n")
PY

# Relative max-norm difference of two .npy files: max |a - b| / max |a|.
rel_diff() {
  "$python" -c "import sys, numpy as np; a, b = np.load(sys.argv[1]), np.load(sys.argv[2]); print(f'{float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)):.2e}')" "$1" "$2"
}

# One sample on the CPU (f32) and on $device (f32, bf16); a row per precision in the summary.
parity() {
  local name=$1
  shift
  "${dcm[@]}" sample "$@" --device cpu --out "$work/$name-cpu.npy" >/dev/null
  for dtype in f32 bf16; do
    local out=$work/$name-$device-$dtype.npy verdict
    if ! "${dcm[@]}" sample "$@" --device "$device" --dtype "$dtype" --out "$out" >"$work/log" 2>&1; then
      echo "| $name | $dtype | failed: $(tail -n1 "$work/log") | FAIL |" >>"$summary"
      continue
    fi
    local d
    d=$(rel_diff "$work/$name-cpu.npy" "$out")
    verdict=stated
    if [[ $dtype == f32 ]]; then
      verdict=$("$python" -c "import sys; print('ok' if float(sys.argv[1]) <= 1e-4 else 'FAIL')" "$d")
    fi
    echo "| $name | $dtype | $d | $verdict |" >>"$summary"
  done
}

echo "| check | precision | max rel. difference to the CPU | verdict |" >"$summary"
echo "|---|---|---|---|" >>"$summary"
common=(--prompts "$work/prompts.txt" --noise "$work/noise.npy")
for fixture in sd1 sd2 sdxl; do
  teacher=sd:tests/fixtures/sd/$fixture
  echo "== $fixture: teacher's 10-interval DDIM solve, $device against cpu"
  parity "$fixture-teacher" --teacher "$teacher" --solver ddim --intervals 10 --guidance 3 "${common[@]}"
done
echo "== sd1: LoRA student, 2 steps, $device against cpu"
parity sd1-lora --teacher sd:tests/fixtures/sd/sd1 --lora tests/fixtures/sd/lora/lora_kohya.safetensors \
  --steps 2 --intervals 10 "${common[@]}"

if [[ "${1:-}" != --parity-only ]]; then
  echo "== UNet forward and LoRA steps against diffusers (scripts/gpu-unet-bench.sh)"
  scripts/gpu-unet-bench.sh 2>&1 | tee "$work/unet.txt" || echo "| unet bench | – | failed | FAIL |" >>"$summary"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

echo
echo "GPU check ($device):"
cat "$summary"
