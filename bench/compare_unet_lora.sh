#!/usr/bin/env bash
# Runs `dcm bench --workload unet-lora` (one CM and one Direct LoRA distillation step of the
# SD 1.5 UNet, random weights and data) and the same steps in diffusers + peft
# (bench/torch_unet_lora.py), alternating ROUNDS times (default 3) so that a burst of load from
# other tenants hits both. Each round runs dcm first; the PyTorch side then repeats, step for
# step, the grid indices dcm drew, so that the teacher does the same evaluations (checked).
# Settings: N = INTERVALS (default 10), w = GUIDANCE (default 9), rank 64 on LCM-LoRA's
# targets, THREADS threads each (default 2), REPEATS timed steps after one warm-up step
# (default 2), at each of CONFIGS (default "16:1 32:2": latent side:batch), on DEVICE (default
# cpu; cuda or cuda:N) in DTYPE (default f32; f16 or bf16: dcm's --dtype, and PyTorch's weight
# and autocast dtype with f32 adapters, see bench/torch_unet_lora.py), passed to both sides.
# Prints every round's times (with the 1-minute load average before it: other tenants' work
# slows both sides, PyTorch's OpenMP threads more than dcm's) and each side's peak resident host
# memory (on the CPU with dcm's estimate beside it); on CUDA each side's peak GPU memory as
# nvidia-smi samples the device every 100 ms (the same way for both; CUDA context and cached
# blocks included), PyTorch's own max_memory_allocated / max_memory_reserved, and dcm's estimate
# beside them (tensors only: it counts no CUDA context); and, LAST, the median round's
# throughput ratio dcm / diffusers+peft for each method and configuration:
#   dcm / diffusers+peft throughput, median round: CM 16x16 b1 X.XX, Direct 16x16 b1 X.XX, ...
# Usage: bench/compare_unet_lora.sh [more flags for dcm, e.g. --gradient-checkpointing];
# PYTHON=/path/to/python with torch, diffusers and peft (default python3; see
# scripts/requirements-fixtures.txt). DCM="cmd…" runs that instead of building target/release/dcm
# (on a GPU machine: DCM="$CUDA_RECIPE/run_on_gpu.sh target-cuda/release/dcm", as
# scripts/gpu-unet-bench.sh does; a line it prints before dcm's JSON is skipped).
# BASELINE="cmd…" (another dcm build, e.g. before a change) also runs in every round, after dcm
# and on the same grid indices; its times and dcm's speed-up over it are printed too.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-python3}
ROUNDS=${ROUNDS:-3}
INTERVALS=${INTERVALS:-10}
GUIDANCE=${GUIDANCE:-9}
REPEATS=${REPEATS:-2}
CONFIGS=${CONFIGS:-"16:1 32:2"}
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE:-f32}
if [[ -z "${DCM:-}" ]]; then
  cargo build --release --quiet
  DCM=${CARGO_TARGET_DIR:-target}/release/dcm
fi
out=$(mktemp -d)
# The grid indices of every timed step of dcm's workload number W (0: CM, 1: Direct), as
# torch_unet_lora.py's --starts reads them: rows by ',', steps by ';'.
starts() {
  python3 -c 'import json, sys
text = open(sys.argv[1]).read()
r = json.loads(text[text.index("{"):])
print(";".join(",".join(map(str, s)) for s in r["workloads"][int(sys.argv[2])]["starts"]))' "$1" "$2"
}
# On CUDA, the device's used memory as nvidia-smi samples it every 100 ms while a run lasts goes
# to OUT.gpu, and one reading just before the run to OUT.idle (what other processes hold).
cuda=0
[[ $DEVICE == cuda* ]] && command -v nvidia-smi > /dev/null && cuda=1
gpu=0
[[ $DEVICE == cuda:* ]] && gpu=${DEVICE#cuda:}
sampled() {
  local dst=$1
  shift
  if [[ $cuda == 0 ]]; then
    "$@" > "$dst"
    return
  fi
  local query=(nvidia-smi --query-gpu=memory.used "--format=csv,noheader,nounits" -i "$gpu")
  "${query[@]}" > "$dst.idle"
  "${query[@]}" -lms 100 > "$dst.gpu" &
  local sampler=$! status=0
  "$@" > "$dst" || status=$?
  kill "$sampler" 2> /dev/null || true
  wait "$sampler" 2> /dev/null || true
  return "$status"
}
for r in $(seq "$ROUNDS"); do
  for config in $CONFIGS; do
    size=${config%:*}
    batch=${config#*:}
    tag="$size.$batch.$r"
    cut -d' ' -f1 /proc/loadavg > "$out/load.$tag"
    # shellcheck disable=SC2086 # DCM may be a command with arguments
    sampled "$out/dcm.$tag.json" env RAYON_NUM_THREADS="$THREADS" $DCM bench --workload unet-lora --json \
      --size "$size" --batch "$batch" --intervals "$INTERVALS" --guidance "$GUIDANCE" --repeats "$REPEATS" \
      --device "$DEVICE" --dtype "$DTYPE" "$@"
    if [[ -n "${BASELINE:-}" ]]; then
      # shellcheck disable=SC2086 # BASELINE may be a command with arguments
      env RAYON_NUM_THREADS="$THREADS" $BASELINE bench --workload unet-lora --json --size "$size" --batch "$batch" \
        --intervals "$INTERVALS" --guidance "$GUIDANCE" --repeats "$REPEATS" --device "$DEVICE" --dtype "$DTYPE" \
        "$@" > "$out/base.$tag.json"
    fi
    for w in 0 1; do
      method=$([[ $w == 0 ]] && echo cm || echo direct)
      log=$out/torch.$method.$tag.log
      sampled "$out/torch.$method.$tag.json" "$PYTHON" bench/torch_unet_lora.py --method "$method" --size "$size" \
        --starts "$(starts "$out/dcm.$tag.json" $w)" --intervals "$INTERVALS" --guidance "$GUIDANCE" \
        --threads "$THREADS" --device "$DEVICE" --dtype "$DTYPE" 2> "$log" \
        || { echo "error: bench/torch_unet_lora.py --method $method failed; its last lines:" >&2; tail -n 5 "$log" >&2; exit 1; }
    done
  done
done
python3 - "$out" "$ROUNDS" "$CONFIGS" <<'PY'
import json, os, statistics, sys
out, rounds, configs = sys.argv[1], int(sys.argv[2]), [c.split(":") for c in sys.argv[3].split()]


def load(path):
    text = open(path).read()
    return json.loads(text[text.index("{"):])  # a GPU wrapper may print a line first


def gpu_peak(path):
    """The run's peak of the device's used memory (nvidia-smi) above the reading before it, MiB."""
    try:
        idle = int(open(f"{path}.idle").read().split()[0])
        return max(int(v) for v in open(f"{path}.gpu").read().split()) - idle
    except (OSError, ValueError, IndexError):
        return None


ratios = []
for size, batch in configs:
    d = [load(f"{out}/dcm.{size}.{batch}.{r}.json") for r in range(1, rounds + 1)]
    t = {m: [load(f"{out}/torch.{m}.{size}.{batch}.{r}.json") for r in range(1, rounds + 1)] for m in ("cm", "direct")}
    assert d[0]["parameters"] == t["cm"][0]["parameters"], (d[0]["parameters"], t["cm"][0]["parameters"])
    assert d[0]["dtype"] == t["cm"][0]["dtype"], f"dtype: dcm {d[0]['dtype']}, torch {t['cm'][0]['dtype']}"
    print(f"\nSD 1.5 UNet ({d[0]['parameters']} parameters), {size}x{size} latents, batch {batch}, {d[0]['dtype']}, "
          f"device {d[0]['device']} / {t['cm'][0]['device']}, "
          f"{d[0]['threads']} threads, torch {t['cm'][0]['torch']}, {rounds} alternating rounds of {len(d[0]['times']) // 2} timed steps")
    base = [load(f"{out}/base.{size}.{batch}.{r}.json") for r in range(1, rounds + 1) if os.path.exists(f"{out}/base.{size}.{batch}.{r}.json")]
    extra = ("", "") if not base else (" baseline dcm s |", "---|")
    speedups = []
    print(f"| step | round | load before | dcm s (median step) |{extra[0]} diffusers+peft s | dcm / diffusers+peft throughput |")
    print(f"|---|---|---|---|{extra[1]}---|---|")
    loads = [open(f"{out}/load.{size}.{batch}.{r}").read().strip() for r in range(1, rounds + 1)]
    for w, m in enumerate(("cm", "direct")):
        ds = [run["workloads"][w]["seconds"] for run in d]
        ts = [run["workloads"][0]["seconds"] for run in t[m]]
        bs = [run["workloads"][w]["seconds"] for run in base]
        cell = lambda v, r: f" {v[r]:.2f} |" if v else ""
        for r in range(rounds):
            de, te = d[r]["workloads"][w]["teacher_evaluations"], t[m][r]["workloads"][0]["teacher_evaluations"]
            assert de == te, f"round {r + 1} {m}: teacher evaluations dcm {de}, torch {te}"
            print(f"| {m} | {r + 1} | {loads[r]} | {ds[r]:.2f} |{cell(bs, r)} {ts[r]:.2f} | {ts[r] / ds[r]:.2f}x |")
        ratio = statistics.median(ts) / statistics.median(ds)
        median_base = f" {statistics.median(bs):.2f} |" if bs else ""
        print(f"| {m} | median | | {statistics.median(ds):.2f} |{median_base} {statistics.median(ts):.2f} | **{ratio:.2f}x** |")
        if bs:
            speedups.append(f"{'CM' if m == 'cm' else 'Direct'} {statistics.median(bs) / statistics.median(ds):.2f}")
        ratios.append(f"{'CM' if m == 'cm' else 'Direct'} {size}x{size} b{batch} {ratio:.2f}")
    peak_t = max(run["peak_memory_mib"] for m in t for run in t[m])
    peak_b = f", baseline dcm {max(run['peak_memory_mib'] for run in base):.0f} MiB" if base else ""
    estimate = d[0]["estimated_memory_mib"]
    gpu_d = [gpu_peak(f"{out}/dcm.{size}.{batch}.{r}.json") for r in range(1, rounds + 1)]
    gpu_t = [gpu_peak(f"{out}/torch.{m}.{size}.{batch}.{r}.json") for m in t for r in range(1, rounds + 1)]
    on_gpu = t["cm"][0]["gpu_max_memory_allocated_mib"] is not None
    beside = "" if on_gpu else f" (its estimate {estimate:.0f} MiB)"
    print(f"peak resident host memory: dcm {max(run['peak_memory_mib'] for run in d):.0f} MiB{beside}, "
          f"diffusers+peft {peak_t:.0f} MiB{peak_b}")
    if on_gpu:
        seen = lambda v: f"{max(v)} MiB" if None not in v else "not sampled (no nvidia-smi)"
        allocated = max(run["gpu_max_memory_allocated_mib"] for m in t for run in t[m])
        reserved = max(run["gpu_max_memory_reserved_mib"] for m in t for run in t[m])
        print(f"peak GPU memory, nvidia-smi (the device's used memory above the reading before each run, sampled "
              f"every 100 ms; CUDA context, library workspaces and cached blocks included): dcm {seen(gpu_d)}, "
              f"diffusers+peft {seen(gpu_t)}")
        print(f"peak GPU memory, tensors: dcm distill's estimate {estimate:.0f} MiB (weights, adapters and AdamW "
              f"state, saved maps; no CUDA context); diffusers+peft max_memory_allocated {allocated:.0f} MiB "
              f"(its caching allocator's max_memory_reserved {reserved:.0f} MiB); dcm reports no tensor peak of its own")
    if speedups:
        print("dcm / baseline dcm throughput, median round: " + ", ".join(speedups))
print("\ndcm / diffusers+peft throughput, median round: " + ", ".join(ratios))
PY
