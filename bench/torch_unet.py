#!/usr/bin/env python3
"""The diffusers reference for `dcm bench --workload unet`: `UNet2DConditionModel` at the
SD 1.5 configuration (or SDXL's with --model sdxl) with random weights, eager, timed as dcm
times it (median over repeats after warm-up). diffusers' default attention processor
(PyTorch's fused scaled_dot_product_attention) stays on: that is the competitor.
Prints JSON for bench/compare_unet.sh (the same fields as `dcm bench --workload unet --json`)."""
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


def peak_host_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def random_unet(cfg, device, dtype):
    """The model built without initialising it (diffusers' own init takes ~40 s at SD 1.5's
    size), then drawn as dcm draws it: weights of rank >= 2 and their biases uniform(+-1/sqrt(fan_in)),
    norm scales 1 and shifts 0."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
    unet = unet.to_empty(device=device).requires_grad_(False)
    for m in unet.modules():
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        if isinstance(w, torch.Tensor) and w.dim() >= 2:
            bound = w[0].numel() ** -0.5
            for t in (w, b):
                if isinstance(t, torch.Tensor):
                    t.uniform_(-bound, bound)
        elif isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
    assert not any(t.is_meta for t in unet.state_dict().values())
    return unet.to(dtype).eval()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--unet", choices=["sd15", "sdxl"], default="sd15")
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
    cfg = SD15 if a.unet == "sd15" else SDXL
    unet = random_unet(cfg, a.device, dtype)
    params = sum(t.numel() for t in unet.parameters())
    b = a.batch
    x = torch.randn(b, 4, a.size, a.size, device=a.device, dtype=dtype)
    t = torch.tensor([1 + (i * 997) % 1000 for i in range(b)], device=a.device)
    ctx = torch.randn(b, 77, cfg["cross_attention_dim"], device=a.device, dtype=dtype)
    extra = {}
    if a.unet == "sdxl":
        px = 8.0 * a.size  # the image size in pixels, as dcm's size ids
        ids = torch.tensor([[px, px, 0.0, 0.0, px, px]] * b, device=a.device, dtype=dtype)
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(b, 1280, device=a.device, dtype=dtype), "time_ids": ids}

    def forward():
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=ctx, **extra)

    seconds, times = timed(a.warmup, a.repeats, forward)
    print(json.dumps({
        "workload": "unet",
        "model": a.unet,
        "parameters": params,
        "batch": b,
        "size": a.size,
        "threads": a.threads,
        "device": a.device,
        "dtype": a.dtype,
        "torch": torch.__version__,
        "attention": type(unet.attn_processors[next(iter(unet.attn_processors))]).__name__,
        "workloads": [{"name": "unet forward", "seconds": seconds, "samples_per_second": b / seconds}],
        "times": times,
        "peak_memory_mib": peak_host_mib(),
        "gpu_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if a.device.startswith("cuda") else None,
    }, indent=2))


if __name__ == "__main__":
    main()
