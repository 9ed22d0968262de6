#!/usr/bin/env python3
"""Write the weight-file layout fixtures of tests/fixtures/sd/formats/: one component's
weights in each layout diffusers, transformers and torch.save write, so dcm's loaders can be
checked to read every layout to the same tensors.

Developer-run only (never by CI), no network, a few seconds on one CPU thread:

    HF_HUB_OFFLINE=1 /tmp/sdvenv/bin/python scripts/make_weight_files.py [--out tests/fixtures/sd/formats]

The text-encoder layouts are written from tests/fixtures/sd/sd1/text_encoder (run
scripts/make_tiny_sd.py first); the VAE layouts from a tiny seeded AutoencoderKL made here.
What each file is: tests/fixtures/sd/formats/README.md.
"""
import argparse
import json
import os
import pickle
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextModel  # noqa: E402

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_vae():
    """A seeded AutoencoderKL of a few thousand weights (one block each side)."""
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    with torch.no_grad():
        for p in vae.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return vae.eval()


def vae_layouts(out):
    """The tiny VAE saved plain, sharded, as the sharded fp16 variant, and as pickles (one
    file and sharded), each by diffusers' save_pretrained."""
    vae = tiny_vae()
    vae.save_pretrained(os.path.join(out, "vae"))
    vae.save_pretrained(os.path.join(out, "vae_sharded"), max_shard_size="6KB")
    vae.save_pretrained(os.path.join(out, "vae_bin"), safe_serialization=False)
    vae.save_pretrained(os.path.join(out, "vae_bin_sharded"), safe_serialization=False, max_shard_size="6KB")
    vae.to(torch.float16).save_pretrained(os.path.join(out, "vae_fp16_sharded"), variant="fp16", max_shard_size="3KB")
    return vae


def text_encoder_layouts(out):
    """sd1's text encoder re-saved sharded by transformers, and its tensors as a
    pytorch_model.bin written by torch.save (transformers 5 no longer writes .bin itself)."""
    src = os.path.join(ROOT, "tests", "fixtures", "sd", "sd1", "text_encoder")
    model = CLIPTextModel.from_pretrained(src)
    model.save_pretrained(os.path.join(out, "text_encoder_sharded"), max_shard_size="40KB")
    bin_dir = os.path.join(out, "text_encoder_bin")
    os.makedirs(bin_dir)
    shutil.copy(os.path.join(src, "config.json"), bin_dir)
    torch.save(load_file(os.path.join(src, "model.safetensors")), os.path.join(bin_dir, "pytorch_model.bin"))


class RunsACommand:
    """Pickles as a call of os.system: what a malicious checkpoint carries. Pickling only
    records the call (nothing runs); dcm must refuse the file without unpickling it."""

    def __reduce__(self):
        return (os.system, ("true",))


def single_files(out, vae):
    """Single-file checkpoints: a Lightning-style .ckpt (weights under `state_dict`, beside a
    step count and a numpy scalar as training checkpoints hold), a plain state dict .pt, a
    legacy non-zip pickle, a malicious one, and the same tensors as safetensors; int64 and int32
    buffers and a transposed view among them."""
    sd = {k: v.clone() for k, v in vae.state_dict().items()}
    sd["position_ids"] = torch.arange(5, dtype=torch.int64).unsqueeze(0)
    sd["num_updates"] = torch.tensor([1234], dtype=torch.int32)
    torch.manual_seed(1)
    # A transposed view, saved as is by torch.save (strides (1, 3)); safetensors stores it contiguous.
    sd["transposed"] = torch.randn(3, 4).t()
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out, "tiny.safetensors"))
    step = np.float64(0.25)
    torch.save({"state_dict": sd, "global_step": 7, "best_score": step}, os.path.join(out, "tiny.ckpt"))
    torch.save(sd, os.path.join(out, "tiny.pt"))
    small = {"w": sd["encoder.conv_in.bias"]}
    torch.save(small, os.path.join(out, "legacy.pt"), _use_new_zipfile_serialization=False)
    torch.save({"state_dict": small, "hook": RunsACommand()}, os.path.join(out, "malicious.ckpt"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "sd", "formats"))
    args = parser.parse_args()
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    vae = vae_layouts(args.out)
    text_encoder_layouts(args.out)
    single_files(args.out, vae)
    for root, _, files in sorted(os.walk(args.out)):
        for f in sorted(files):
            path = os.path.join(root, f)
            print(f"{os.path.getsize(path):8d}  {os.path.relpath(path, args.out)}")
    with open(os.path.join(args.out, "versions.json"), "w") as f:
        import diffusers
        import transformers

        json.dump({"torch": torch.__version__, "diffusers": diffusers.__version__,
                   "transformers": transformers.__version__, "pickle_protocol": pickle.DEFAULT_PROTOCOL}, f, indent=1)


if __name__ == "__main__":
    main()
