#!/usr/bin/env python3
"""Write the goldens that check dcm's FID Inception-v3 (src/nets/inception.rs) against
pytorch-fid's `InceptionV3([3])`, without committing its 91 MB of weights.

Developer-run only (never by CI), no network:

    /tmp/sdvenv/bin/pip install -r scripts/requirements-fixtures.txt pytorch-fid==0.3.0
    /tmp/sdvenv/bin/python scripts/make_inception_fixture.py [--out tests/fixtures/inception]

Every weight is a formula of its tensor's name and element index (`formula` below; the Rust
test computes the same values bit for bit), so only small files are committed:

- keys.json: every tensor of pytorch-fid's FID Inception state dict, in its order, with shape
  and dtype: the names dcm must request from `pt_inception-2015-12-05-6726825d.pth`;
- goldens.safetensors: two seeded images [2, 3, 40, 56] in [0, 1], their 2048-d pool3
  features, per-channel means of the first three blocks' outputs, the resized and normalised
  input on a coarse grid, and two bilinear resizes (up and down) of a small map;
- stem_zip.pth / stem_legacy.pth: the five tensors of `Conv2d_1a_3x3` plus its integer
  `num_batches_tracked`, saved with torch.save in the zip format and in the legacy format
  (the released weights predate the zip format), to test the file reader.

The reference runs in float64 (formula weights are float32 values, widened exactly), so the
goldens are the exact result of the network up to f64 rounding.
"""
import argparse
import collections
import json
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import pytorch_fid.inception as fid

torch.set_num_threads(1)
M64 = (1 << 64) - 1


def name_hash(name):
    """FNV-1a (64-bit) of the name's UTF-8 bytes."""
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def uniform(name, n):
    """n values in [-1, 1) from splitmix64's finaliser of (name hash ^ index·golden ratio)."""
    z = np.uint64(name_hash(name)) ^ (np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / 16777216.0 * 2.0 - 1.0


def formula(name, shape):
    """The float32 value of every element of tensor `name` (see the Rust twin in
    src/nets/inception_tests.rs): He-uniform convolutions, BatchNorm statistics near 1 and 0."""
    n = int(np.prod(shape))
    u = uniform(name, n)
    if name.endswith("conv.weight"):
        v = u * np.sqrt(6.0 / float(np.prod(shape[1:])))
    elif name.endswith("bn.weight"):
        v = 1.0 + 0.25 * u
    elif name.endswith("bn.running_var"):
        v = 1.0 + 0.5 * u
    else:  # bn.bias, bn.running_mean, fc.*
        v = 0.1 * u
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def fid_state_dict_layout():
    """pytorch-fid's FID Inception (fid_inception_v3) with its weight download stubbed out."""
    captured = {}
    real_url, real_load = fid.load_state_dict_from_url, torch.nn.Module.load_state_dict
    fid.load_state_dict_from_url = lambda *a, **k: {}

    def capture(self, state_dict, *a, **k):
        captured["model"] = self

    torch.nn.Module.load_state_dict = capture
    try:
        fid.fid_inception_v3()
    finally:
        fid.load_state_dict_from_url, torch.nn.Module.load_state_dict = real_url, real_load
    return captured["model"].state_dict()


def formula_state_dict(layout):
    out = collections.OrderedDict()
    for name, t in layout.items():
        out[name] = t.clone() if t.dtype == torch.int64 else formula(name, tuple(t.shape))
    return out


def load_network(pth):
    """pytorch-fid's InceptionV3([3]) exactly as FID uses it, its weights read from `pth`."""
    real_url = fid.load_state_dict_from_url
    fid.load_state_dict_from_url = lambda *a, **k: torch.load(pth)
    try:
        net = fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    finally:
        fid.load_state_dict_from_url = real_url
    return net.eval().double()


def goldens(net, images):
    means = []
    hooks = [b.register_forward_hook(lambda m, i, o: means.append(o.mean(dim=(2, 3)))) for b in net.blocks[:3]]
    with torch.no_grad():
        x = images.double()
        features = net(x)[0].flatten(1)
        resized = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
        small = torch.rand(1, 2, 20, 17, generator=torch.Generator().manual_seed(7))
        down = F.interpolate(small.double(), size=(11, 13), mode="bilinear", align_corners=False)
        up = F.interpolate(small.double(), size=(33, 41), mode="bilinear", align_corners=False)
    for h in hooks:
        h.remove()
    out = {
        "images": images,
        "features": features,
        "block0_mean": means[0],
        "block1_mean": means[1],
        "block2_mean": means[2],
        "resized_every_23": resized[:, :, ::23, ::23],
        "resize_in": small,
        "resize_down_11x13": down,
        "resize_up_33x41": up,
    }
    return {k: v.float().contiguous() for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/inception")
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    layout = fid_state_dict_layout()
    keys = [{"name": k, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for k, t in layout.items()]
    with open(os.path.join(out, "keys.json"), "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(k) for k in keys) + "\n]\n")
    state = formula_state_dict(layout)
    with tempfile.TemporaryDirectory() as tmp:
        pth = os.path.join(tmp, "pt_inception-formula.pth")
        torch.save(state, pth)
        net = load_network(pth)
    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(2015))
    g = goldens(net, images)
    save_file(g, os.path.join(out, "goldens.safetensors"))
    stem = collections.OrderedDict((k, v) for k, v in state.items() if k.startswith("Conv2d_1a_3x3."))
    torch.save(stem, os.path.join(out, "stem_zip.pth"))
    torch.save(stem, os.path.join(out, "stem_legacy.pth"), _use_new_zipfile_serialization=False)
    f = g["features"]
    print(f"{len(keys)} tensors; features mean {f.mean():.4f} std {f.std():.4f} min {f.min():.4f} max {f.max():.4f}")
    for k in ("block0_mean", "block1_mean", "block2_mean"):
        print(f"{k}: mean {g[k].mean():.4f} max {g[k].max():.4f}")


if __name__ == "__main__":
    main()
