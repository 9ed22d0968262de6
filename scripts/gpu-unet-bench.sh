#!/usr/bin/env bash
# The GPU measurements of the SD UNet still to do (docs/PERFORMANCE.md), as one device call:
# dcm's CUDA build against diffusers' UNet2DConditionModel on the same GPU, alternating rounds
# (bench/compare_unet.sh), throughput and peak GPU memory (nvidia-smi) for
#   1. SD 1.5, 64×64 latents (512×512 images), f16
#   2. SDXL base, 128×128 latents (1024×1024 images), bf16
# both at batch BATCH (default 2: one guided step's pair), random weights on both sides; then
#   3. one CM and one Direct LoRA distillation step of SD 1.5 (64×64 latents, batch 4, f16) against
#      diffusers + peft (bench/compare_unet_lora.sh), with peak GPU memory beside dcm's estimate.
#
# Prepare on the CPU machine (nothing can be fetched on the GPU machine):
#   scripts/build-cuda.sh                      # target-cuda/release/dcm (~57 MB)
#   scripts/gpu-unet-bench.sh --prepare        # packs it and diffusers into target-cuda/carry/
# then, in one device call carrying only that folder (the working tree and it must stay
# under the 64 MiB a call carries, hence the compression):
#   run(command="scripts/gpu-unet-bench.sh", carry=["target-cuda/carry"], timeout_s=600)
# dcm draws the weights on the host (SDXL: 2.6 G values, ~35 s a run), so parts 1 and 2 should
# take 4–5 minutes with ROUNDS=2, and part 3 1.5–3 minutes with ROUNDS_LORA=1 (estimates: none of
# it has run on a GPU yet; part 3 assumes a torch step of ~0.25 s (CM) and ~2.5 s (Direct, N = 50)
# and dcm up to 3× slower, plus ~25 s of setup per process), which keeps scripts/gpu-check.sh
# under its 10 minutes; part 3 is stopped after LORA_TIMEOUT_S (default 300) so that the rest of
# the check still prints. ROUNDS, REPEATS, BATCH, ROUNDS_LORA, REPEATS_LORA, INTERVALS and
# ONLY=sd15|sdxl|lora change that. The CPU binary packs to 3 MB; the CUDA one's size
# packed is not known yet (57 MB unpacked, 33 MB of it compiled kernels). TORCH_VENV (default /opt/torch/.venv) provides PyTorch and the CUDA libraries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
carry=target-cuda/carry

if [[ "${1:-}" == --prepare ]]; then
  # diffusers is pure Python; its dependencies are already in the GPU machine's image.
  python=${PYTHON:-python3}
  site=$("$python" -c 'import diffusers, os; print(os.path.dirname(os.path.dirname(diffusers.__file__)))')
  mkdir -p "$carry"
  tar czf "$carry/diffusers.tgz" -C "$site" --exclude=__pycache__ diffusers
  xz -T0 -6 -c target-cuda/release/dcm > "$carry/dcm.xz"
  du -ch "$carry"/* | tail -n1
  exit 0
fi

recipe=${CUDA_RECIPE:-$root/../shared/cuda}
[[ -x "$recipe/run_on_gpu.sh" ]] || recipe=$root/shared/cuda
venv=${TORCH_VENV:-/opt/torch/.venv}
[[ -f "$carry/dcm.xz" && -f "$carry/diffusers.tgz" ]] || {
  echo "error: $carry/dcm.xz or diffusers.tgz missing: run scripts/gpu-unet-bench.sh --prepare and carry $carry" >&2
  exit 2
}
work=$(mktemp -d)
# Unpacked with Python's lzma and tarfile: the GPU image is not known to have xz.
"$venv/bin/python" - "$carry" "$work" <<'PY'
import lzma, os, shutil, sys, tarfile
carry, work = sys.argv[1:]
with lzma.open(f"{carry}/dcm.xz") as src, open(f"{work}/dcm", "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(f"{work}/dcm", 0o755)
tarfile.open(f"{carry}/diffusers.tgz").extractall(work)
PY
export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"
"$venv/bin/python" -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__, torch.cuda.get_device_name())'
# peft (part 3) comes with the GPU image, not with the carry.
"$venv/bin/python" -c 'import peft; print("peft", peft.__version__)' || echo "peft missing: part 3 will fail"

batch=${BATCH:-2}
export DCM="$recipe/run_on_gpu.sh $work/dcm" PYTHON="$venv/bin/python"
export ROUNDS=${ROUNDS:-2}
common=(--device cuda --batch "$batch" --repeats "${REPEATS:-10}")
if [[ "${ONLY:-sd15}" == sd15 ]]; then
  echo "== SD 1.5, 64x64 latents, f16, batch $batch"
  bench/compare_unet.sh --unet sd15 --size 64 --dtype f16 "${common[@]}"
fi
if [[ "${ONLY:-sdxl}" == sdxl ]]; then
  echo "== SDXL base, 128x128 latents, bf16, batch $batch"
  bench/compare_unet.sh --unet sdxl --size 128 --dtype bf16 "${common[@]}"
fi
if [[ "${ONLY:-lora}" == lora ]]; then
  # One CM and one Direct LoRA distillation step (rank 64, LCM-LoRA's targets, w = 9), SD 1.5
  # shape, 64x64 latents, batch 4, f16, against diffusers + peft as diffusers' LCM-LoRA script
  # trains (f16 weights, f32 adapters, autocast). N = 50, the LCM-LoRA script's default
  # (--num_ddim_timesteps): the paper's 100 doubles a Direct step's teacher work.
  echo "== SD 1.5 LoRA distillation steps against diffusers + peft, 64x64 latents, f16, batch 4"
  lora_status=0
  DEVICE=cuda DTYPE=f16 CONFIGS=64:4 ROUNDS=${ROUNDS_LORA:-1} REPEATS=${REPEATS_LORA:-2} \
    INTERVALS=${INTERVALS:-50} GUIDANCE=9 THREADS=${THREADS_LORA:-8} \
    timeout "${LORA_TIMEOUT_S:-300}" bench/compare_unet_lora.sh || lora_status=$?
  if [[ $lora_status == 124 ]]; then
    echo "LoRA steps: stopped after LORA_TIMEOUT_S=${LORA_TIMEOUT_S:-300} s (not measured); rerun with ONLY=lora"
  fi
  exit "$lora_status"
fi
