#!/usr/bin/env bash
# Runs `dcm bench --workload unet` and diffusers' UNet2DConditionModel (bench/torch_unet.py)
# with the same configuration, batch, latent size, context and thread count, alternating
# ROUNDS times (default 3) so that a burst of load from other tenants hits both, and prints
# each side's median round, the spread over rounds and the throughput ratio. The last line is
#   dcm / diffusers throughput: X.XX
# Usage: bench/compare_unet.sh [flags for both: --unet sd15|sdxl, --batch N, --size N,
# --repeats N, --device cuda, --dtype f16|bf16]; THREADS=2, ROUNDS=3 by default;
# PYTHON=/path/to/python with torch and diffusers (default python3). DCM="cmd…" runs that
# instead of building target/release/dcm (on a GPU machine:
# DCM="$CUDA_RECIPE/run_on_gpu.sh target-cuda/release/dcm", CUDA_RECIPE as in scripts/build-cuda.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-python3}
ROUNDS=${ROUNDS:-3}
if [[ -z "${DCM:-}" ]]; then
  cargo build --release --quiet
  DCM=./target/release/dcm
fi
out=$(mktemp -d)
# On a GPU, each run's peak of the device's used memory as nvidia-smi samples it (CUDA
# context included, the same way for both sides) goes to OUT.gpu.
cuda=0
[[ " $* " == *" --device cuda"* ]] && command -v nvidia-smi > /dev/null && cuda=1
run() {
  local dst=$1
  shift
  if [[ $cuda == 1 ]]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$dst.gpu" &
    local sampler=$!
    "$@" > "$dst"
    kill "$sampler"
  else
    "$@" > "$dst"
  fi
}
for r in $(seq "$ROUNDS"); do
  # shellcheck disable=SC2086 # DCM may be a command with arguments
  run "$out/dcm.$r.json" env RAYON_NUM_THREADS="$THREADS" $DCM bench --workload unet --json "$@"
  run "$out/torch.$r.json" "$PYTHON" bench/torch_unet.py --threads "$THREADS" "$@"
done
python3 - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def report(path):
    text = open(path).read()
    return json.loads(text[text.index("{"):])  # a GPU wrapper may print a line first


load = lambda who: [report(f"{out}/{who}.{r}.json") for r in range(1, rounds + 1)]
d, t = load("dcm"), load("torch")
assert d[0]["parameters"] == t[0]["parameters"], f"parameters differ: dcm {d[0]['parameters']} vs diffusers {t[0]['parameters']}"
for key in ("batch", "size"):
    assert d[0][key] == t[0][key], (key, d[0][key], t[0][key])
ds = [run["workloads"][0]["seconds"] for run in d]
ts = [run["workloads"][0]["seconds"] for run in t]
ratios = [b / a for a, b in zip(ds, ts)]  # per round: diffusers time / dcm time
ms = lambda v: f"{1e3 * statistics.median(v):.0f} ({1e3 * min(v):.0f}–{1e3 * max(v):.0f})"
print(f"UNet {d[0]['model']}, {d[0]['parameters']} parameters, batch {d[0]['batch']}, {d[0]['size']}x{d[0]['size']} latents, "
      f"{d[0]['dtype']}, torch {t[0]['torch']} ({t[0]['attention']}), {t[0]['threads']} threads, "
      f"device {d[0]['device']} / {t[0]['device']}, {rounds} alternating rounds of {len(d[0]['times'])} repeats")
print("| workload | dcm ms, median round (range) | diffusers ms | dcm / diffusers throughput (range over rounds) |")
print("|---|---|---|---|")
print(f"| unet forward | {ms(ds)} | {ms(ts)} | {statistics.median(ts) / statistics.median(ds):.2f}x ({min(ratios):.2f}–{max(ratios):.2f}) |")
print(f"peak resident memory (host): dcm {max(r['peak_memory_mib'] for r in d):.0f} MiB, diffusers {max(r['peak_memory_mib'] for r in t):.0f} MiB")
def gpu_peak(who):
    try:
        return max(int(v) for r in range(1, rounds + 1) for v in open(f"{out}/{who}.{r}.json.gpu").read().split())
    except (OSError, ValueError):
        return None
if gpu_peak("dcm") is not None:
    print(f"peak GPU memory (nvidia-smi, whole device): dcm {gpu_peak('dcm')} MiB, diffusers {gpu_peak('torch')} MiB; "
          f"diffusers' own max_memory_allocated {max(r['gpu_memory_allocated_mib'] for r in t):.0f} MiB")
print(f"dcm / diffusers throughput: {statistics.median(ts) / statistics.median(ds):.2f}")
PY
