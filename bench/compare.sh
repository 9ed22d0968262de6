#!/usr/bin/env bash
# Runs `dcm bench` and the PyTorch-eager reference on this machine with the same
# thread count and sizes, alternating ROUNDS times (default 3) so that a burst of load
# from other tenants hits both, and prints the ratio table from the median round of each.
# The last line is
#   min speedup vs PyTorch: X.XX
# (dcm throughput / PyTorch throughput on the worst workload).
# Usage: bench/compare.sh [extra flags for both, e.g. --batch 128 or --device cuda];
# THREADS=2, ROUNDS=3 by default. DCM="cmd…" runs that instead of building target/release/dcm
# (on a GPU machine: DCM="$CUDA_RECIPE/run_on_gpu.sh target-cuda/release/dcm", CUDA_RECIPE as in
# scripts/build-cuda.sh).
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
for r in $(seq "$ROUNDS"); do
  # shellcheck disable=SC2086 # DCM may be a command with arguments
  RAYON_NUM_THREADS=$THREADS $DCM bench --json "$@" > "$out/dcm.$r.json"
  "$PYTHON" bench/torch_reference.py --threads "$THREADS" "$@" > "$out/torch.$r.json"
done
python3 - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def report(path):
    text = open(path).read()
    return json.loads(text[text.index("{"):])  # a GPU wrapper may print a line first


load = lambda who: [report(f"{out}/{who}.{r}.json") for r in range(1, rounds + 1)]
d, t = load("dcm"), load("torch")
for key in ("parameters", "conv_parameters"):
    assert d[0][key] == t[0][key], f"{key} differ: dcm {d[0][key]} vs torch {t[0][key]}"
print(f"{d[0]['parameters']} parameters, batch {d[0]['batch']}, N = {d[0]['intervals']}, torch {t[0]['torch']}, {t[0]['threads']} threads, device {d[0]['device']} / {t[0]['device']}, {rounds} alternating rounds")
print("| workload | dcm ms | PyTorch ms | dcm / PyTorch throughput |")
print("|---|---|---|---|")
ratios = []
for i, w in enumerate(d[0]["workloads"]):
    assert w["name"] == t[0]["workloads"][i]["name"], (w["name"], t[0]["workloads"][i]["name"])
    ds = statistics.median(run["workloads"][i]["seconds"] for run in d)
    ts = statistics.median(run["workloads"][i]["seconds"] for run in t)
    ratios.append(ts / ds)
    print(f"| {w['name']} | {1e3 * ds:.2f} | {1e3 * ts:.2f} | {ts / ds:.2f}x |")
print(f"Direct targets: {d[0]['direct_evaluation_ratio']:.2f}x fewer teacher evaluations than the whole batch; dcm peak memory {max(r['peak_memory_mib'] for r in d):.0f} MiB")
print(f"min speedup vs PyTorch: {min(ratios):.2f}")
PY
