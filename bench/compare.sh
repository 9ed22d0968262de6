#!/usr/bin/env bash
# Runs `dcm bench` and the PyTorch-eager reference on this machine with the same
# thread count and sizes, and prints the ratio table. The last line is
#   min speedup vs PyTorch: X.XX
# (dcm throughput / PyTorch throughput on the worst workload).
# Usage: bench/compare.sh [extra flags for both, e.g. --batch 128]; THREADS=2 by default.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
cargo build --release --quiet
out=$(mktemp -d)
RAYON_NUM_THREADS=$THREADS ./target/release/dcm bench --json "$@" > "$out/dcm.json"
python3 bench/torch_reference.py --threads "$THREADS" "$@" > "$out/torch.json"
python3 - "$out/dcm.json" "$out/torch.json" <<'PY'
import json, sys
d, t = (json.load(open(p)) for p in sys.argv[1:3])
assert d["parameters"] == t["parameters"], f"parameter counts differ: dcm {d['parameters']} vs torch {t['parameters']}"
print(f"{d['parameters']} parameters, batch {d['batch']}, N = {d['intervals']}, torch {t['torch']}, {t['threads']} threads")
print("| workload | dcm ms | PyTorch ms | dcm / PyTorch throughput |")
print("|---|---|---|---|")
ratios = []
for a, b in zip(d["workloads"], t["workloads"]):
    assert a["name"] == b["name"], (a["name"], b["name"])
    r = a["samples_per_second"] / b["samples_per_second"]
    ratios.append(r)
    print(f"| {a['name']} | {1e3 * a['seconds']:.2f} | {1e3 * b['seconds']:.2f} | {r:.2f}x |")
print(f"Direct targets: {d['direct_evaluation_ratio']:.2f}x fewer teacher evaluations than the whole batch; dcm peak memory {d['peak_memory_mib']:.0f} MiB")
print(f"min speedup vs PyTorch: {min(ratios):.2f}")
PY
