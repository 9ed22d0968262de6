#!/usr/bin/env python3
"""The diffusers reference for `dcm bench --workload unet`: `UNet2DConditionModel` at the
SD 1.5 configuration (or SDXL's with --model sdxl) with random weights, eager, timed as dcm
times it (median over repeats after warm-up). diffusers' default attention processor
(PyTorch's fused scaled_dot_product_attention) stays on: that is the competitor.
Prints JSON for bench/compare_unet.sh."""
import argparse
import json
import resource
import statistics
import time

import torch
from diffusers import UNet2DConditionModel

# SD 1.5's unet/config.json (runwayml/stable-diffusion-v1-5); everything else is diffusers' default.
SD15 = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[320, 640, 1280, 1280],
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
)
# SDXL base's unet/config.json (stabilityai/stable-diffusion-xl-base-1.0).
SDXL = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[320, 640, 1280],
    layers_per_block=2,
    attention_head_dim=[5, 10, 20],
    cross_attention_dim=2048,
    transformer_layers_per_block=[1, 2, 10],
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
    flip_sin_to_cos=True,
    freq_shift=0,
)
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(warmup, repeats, f):
    for _ in range(warmup):
        f()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def peak_mib(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["sd15", "sdxl"], default="sd15")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=32, help="latent height and width")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="f32")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dtype = DTYPES[a.dtype]
    torch.manual_seed(0)
    cfg = SD15 if a.model == "sd15" else SDXL
    unet = UNet2DConditionModel(**cfg).to(a.device, dtype).eval().requires_grad_(False)
    params = sum(t.numel() for t in unet.parameters())
    b = a.batch
    x = torch.randn(b, 4, a.size, a.size, device=a.device, dtype=dtype)
    t = torch.tensor([1 + (i * 997) % 1000 for i in range(b)], device=a.device)
    ctx = torch.randn(b, 77, cfg["cross_attention_dim"], device=a.device, dtype=dtype)
    extra = {}
    if a.model == "sdxl":
        ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * b, device=a.device, dtype=dtype)
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(b, 1280, device=a.device, dtype=dtype), "time_ids": ids}

    def forward():
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=ctx, **extra)

    seconds, times = timed(a.warmup, a.repeats, forward)
    print(json.dumps({
        "model": a.model,
        "parameters": params,
        "batch": b,
        "size": a.size,
        "threads": a.threads,
        "device": a.device,
        "dtype": a.dtype,
        "torch": torch.__version__,
        "attention": type(unet.attn_processors[next(iter(unet.attn_processors))]).__name__,
        "workloads": [{"name": "unet forward", "seconds": seconds, "samples_per_second": b / seconds, "times": times}],
        "peak_memory_mib": peak_mib(a.device),
    }, indent=2))


if __name__ == "__main__":
    main()
