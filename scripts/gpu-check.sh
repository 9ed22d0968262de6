#!/usr/bin/env bash
# The one script for the first session with a GPU (issue: training at real scale, item 4):
# builds nothing, runs every GPU check in one device call (≤ 10 minutes) and prints a short
# table last.
#   1. CUDA against CPU on the tiny pipelines (tests/fixtures/sd: SD 1, SD 2, SDXL): the
#      teacher's guided DDIM solve and a LoRA student's 2-step sample, f32 (must agree to
#      1e-4 relative) and bf16 (error stated, no bound).
#   2. The SD 1.5 UNet forward at 64×64 f16 against diffusers, and SDXL at 128×128 bf16
#      (scripts/gpu-unet-bench.sh: alternating rounds, peak GPU memory).
#   3. One CM and one Direct LoRA step of the SD 1.5 UNet on the GPU (64×64 latents, batch 4,
#      f16) against diffusers + peft's (bench/compare_unet_lora.sh through gpu-unet-bench.sh),
#      with both peaks (nvidia-smi, torch's max_memory_allocated) beside dcm distill's estimate.
#   4. Where target-cuda/carry/dcm-nccl.xz was carried: the NCCL gradient sum on one GPU. A tiny
#      SD LoRA distill under `mpirun -n 1` (K = 1, which joins a one-rank NCCL communicator
#      and sums every step's gradient bucket through it) must write the LoRA file a plain run
#      writes, to 1e-5 relative, and NCCL must report its communicator (NCCL_DEBUG=INFO).
#      Open MPI comes from the image or, where it has none, from the carried Debian packages.
#
# Prepare on the CPU machine:
#   scripts/build-cuda.sh && scripts/gpu-unet-bench.sh --prepare
#   scripts/build-cuda.sh nccl && scripts/gpu-check.sh --prepare-nccl     (for part 4)
# then one device call carrying target-cuda/carry:
#   run(command="scripts/gpu-check.sh", carry=["target-cuda/carry"], timeout_s=600)
# GPU_CHECK_DEVICE=cpu DCM_BIN=target/release/dcm scripts/gpu-check.sh --parity-only runs
# part 1 with the CPU build on both sides: a check of this script, not of a GPU.
# scripts/gpu-check.sh --nccl-only runs part 4 alone.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

carry=target-cuda/carry
recipe=${CUDA_RECIPE:-$root/../shared/cuda}
[[ -x "$recipe/run_on_gpu.sh" ]] || recipe=$root/shared/cuda
# Packs the NCCL build and Open MPI's runtime (Debian packages, unpacked on the GPU machine only
# where its image has no Open MPI) into the carried folder.
if [[ "${1:-}" == --prepare-nccl ]]; then
  bin=${NCCL_BIN:-target-cuda/release/dcm-nccl}
  [[ -x "$bin" ]] || { echo "error: $bin not found: run scripts/build-cuda.sh nccl" >&2; exit 2; }
  mkdir -p "$carry/openmpi"
  xz -T0 -6 -c "$bin" >"$carry/dcm-nccl.xz"
  (cd "$carry/openmpi" && rm -f ./*.deb && apt-get download -q openmpi-bin libopenmpi3 openmpi-common \
    libpmix2 libevent-core-2.1-7 libevent-pthreads-2.1-7 libhwloc15 libfabric1 libucx0 libibverbs1 \
    ibverbs-providers librdmacm1 libnl-3-200 libnl-route-3-200 libpsm2-2 libpsm-infinipath1 libnuma1 \
    libmunge2 libatomic1)
  du -ch "$carry"/* | tail -n1
  exit 0
fi
device=${GPU_CHECK_DEVICE:-cuda}
venv=${TORCH_VENV:-/opt/torch/.venv}
python=${PYTHON:-$venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
summary=$work/summary.txt

if [[ -n "${DCM_BIN:-}" ]]; then
  dcm=("$DCM_BIN")
elif [[ "${1:-}" != --nccl-only ]]; then
  [[ -f "$carry/dcm.xz" ]] || { echo "error: $carry/dcm.xz missing: run scripts/gpu-unet-bench.sh --prepare and carry $carry" >&2; exit 2; }
  "$python" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$carry/dcm.xz" "$work/dcm"
  chmod +x "$work/dcm"
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

echo "| check | precision | max rel. difference to the CPU (part 4: to the plain run) | verdict |" >"$summary"
echo "|---|---|---|---|" >>"$summary"
if [[ "${1:-}" != --nccl-only ]]; then
  common=(--prompts "$work/prompts.txt" --noise "$work/noise.npy")
  for fixture in sd1 sd2 sdxl; do
    teacher=sd:tests/fixtures/sd/$fixture
    echo "== $fixture: teacher's 10-interval DDIM solve, $device against cpu"
    parity "$fixture-teacher" --teacher "$teacher" --solver ddim --intervals 10 --guidance 3 "${common[@]}"
  done
  echo "== sd1: LoRA student, 2 steps, $device against cpu"
  parity sd1-lora --teacher sd:tests/fixtures/sd/sd1 --lora tests/fixtures/sd/lora/lora_kohya.safetensors \
    --steps 2 --intervals 10 "${common[@]}"
fi

# Open MPI for part 4 (dcm-nccl needs its libmpi.so.40): the image's, or the carried packages
# unpacked into a private prefix (Debian's build relocates through OPAL_PREFIX; its PMIx plugins
# need their own path).
mpi_runtime() {
  if command -v mpirun >/dev/null && [[ $(ldconfig -p) == *'libmpi.so.40 '* ]]; then
    mpirun=(mpirun)
    return
  fi
  local r=$work/openmpi deb
  compgen -G "$carry/openmpi/*.deb" >/dev/null || return 1
  for deb in "$carry"/openmpi/*.deb; do dpkg -x "$deb" "$r"; done
  export PATH=$r/usr/bin:$PATH OPAL_PREFIX=$r/usr
  export LD_LIBRARY_PATH=$r/usr/lib/x86_64-linux-gnu:$r/usr/lib/x86_64-linux-gnu/openmpi/lib:$r/usr/lib/x86_64-linux-gnu/pmix2/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export PMIX_MCA_mca_base_component_path=$r/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix
  mpirun=("$r/usr/bin/orterun")
}

# Six small captioned images for the tiny SD pipeline's LoRA student.
captioned_folder() {
  "$python" - "$1" <<'PY'
import os, sys, numpy as np
from PIL import Image
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
for i in range(6):
    y, x = np.mgrid[0:20, 0:24]
    on = ((x // 4 + y // 4 + i) % 2 == 0)[..., None]
    img = np.where(on, [40 * i, 200 - 30 * i, 90], [250 - 20 * i, 35 * i, 160]).astype(np.uint8)
    Image.fromarray(img).save(f"{d}/img{i}.png")
    open(f"{d}/img{i}.txt", "w").write(f"picture {i}")
PY
}

# Largest relative max-norm difference over the tensors of two safetensors files.
rel_diff_safetensors() {
  "$python" -c "
import sys
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
assert a.keys() == b.keys(), 'different tensors'
print(f'{max(float(abs(a[k] - b[k]).max() / max(abs(a[k]).max(), 1e-30)) for k in a):.2e}')" "$1" "$2"
}

# Part 4: K = 1 under mpirun (through NCCL) against a plain run, both on $device. Run in a
# subshell: the MPI and NCCL library paths stay out of the other parts.
# GPU_CHECK_DEVICE=cpu NCCL_DCM_BIN=<a --features distributed build> scripts/gpu-check.sh
# --nccl-only checks this part's plumbing on the CPU (no NCCL there).
nccl_row() {
  local name="sd1-lora distill: mpirun -n 1 (NCCL) vs plain" nccl_dcm d
  if [[ -n "${NCCL_DCM_BIN:-}" ]]; then
    nccl_dcm=("$NCCL_DCM_BIN")
  elif [[ -f "$carry/dcm-nccl.xz" ]]; then
    "$python" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$carry/dcm-nccl.xz" "$work/dcm-nccl"
    chmod +x "$work/dcm-nccl"
    nccl_dcm=("$recipe/run_on_gpu.sh" "$work/dcm-nccl")
  else
    echo "| $name | f32 | not carried (scripts/gpu-check.sh --prepare-nccl) | skipped |" >>"$summary"
    return
  fi
  echo "== $name"
  if ! mpi_runtime; then
    echo "| $name | f32 | no Open MPI here and none carried (--prepare-nccl) | FAIL |" >>"$summary"
    return
  fi
  local nccl
  nccl=$(find "$venv" -name libnccl.so.2 2>/dev/null | head -n1 || true)
  [[ -n "$nccl" ]] && export LD_LIBRARY_PATH=$(dirname "$nccl")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  captioned_folder "$work/captioned"
  local args=(distill --method cm --teacher sd:tests/fixtures/sd/sd1 --data "$work/captioned" --lora-rank 4
    --intervals 10 --guidance 3 --steps 4 --batch 4 --lr 1e-3 --device "$device")
  if ! "${nccl_dcm[@]}" "${args[@]}" --out "$work/nccl-plain" >"$work/log" 2>&1; then
    echo "| $name | f32 | plain run failed: $(tail -n1 "$work/log") | FAIL |" >>"$summary"
    return
  fi
  if ! NCCL_DEBUG=INFO "${mpirun[@]}" --allow-run-as-root -n 1 -x LD_LIBRARY_PATH -x NCCL_DEBUG \
    "${nccl_dcm[@]}" "${args[@]}" --out "$work/nccl-k1" >"$work/log" 2>&1; then
    echo "| $name | f32 | mpirun -n 1 failed: $(tail -n1 "$work/log") | FAIL |" >>"$summary"
    return
  fi
  if [[ $device == cuda ]] && ! grep -q 'Init COMPLETE' "$work/log"; then
    echo "| $name | f32 | NCCL reported no communicator | FAIL |" >>"$summary"
    return
  fi
  d=$(rel_diff_safetensors "$work/nccl-plain/lora.safetensors" "$work/nccl-k1/lora.safetensors")
  echo "| $name | f32 | $d | $("$python" -c "import sys; print('ok' if float(sys.argv[1]) <= 1e-5 else 'FAIL')" "$d") |" >>"$summary"
}

if [[ "${1:-}" == --nccl-only ]]; then
  (nccl_row)
elif [[ "${1:-}" != --parity-only ]]; then
  (nccl_row)
  echo "== UNet forward and LoRA steps against diffusers (scripts/gpu-unet-bench.sh)"
  scripts/gpu-unet-bench.sh 2>&1 | tee "$work/unet.txt" || echo "| unet bench | – | failed | FAIL |" >>"$summary"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

echo
echo "GPU check ($device):"
cat "$summary"
