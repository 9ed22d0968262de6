#!/usr/bin/env python3
"""The diffusers + peft reference for `dcm bench --workload unet-lora`: one LoRA distillation
step of an SD 1.5-shaped `UNet2DConditionModel` with random weights, as diffusers'
LCM-LoRA script takes it in its one-UNet form (examples/consistency_distillation/
train_lcm_distill_lora_sdxl.py; the SD 1.x script, train_lcm_distill_lora_sd_wds.py, keeps a
second, separate teacher UNet instead of disabling the adapters):

- adapters by `unet.add_adapter(LoraConfig(r, lora_alpha=r, target_modules=LCM-LoRA's))`,
  only they train (AdamW, weight decay 1e-2, gradient clipping at 1);
- student: `unet(x_t, t)` with adapters on, under autograd, consistency-parameterized
  (LCM's boundary scalings c_skip, c_out);
- teacher: `unet.disable_adapters()`, under no_grad, conditional and unconditional
  forwards one after the other, classifier-free guidance w, one DDIM step (CM) or the DDIM
  solve down to clean, each step on the rows still solving (Direct, dcm's "active set");
- target (CM): `unet(x_prev, t − k)` with adapters on, under no_grad;
- L2 loss, backward, clip, step, `zero_grad(set_to_none=True)`.

Each step draws fresh latents and text (the work does not depend on them); the rows' grid
indices n (start timestep T − n k) are given by --starts, one list per timed step, so that the
teacher does exactly the evaluations dcm's step did. Timed as dcm times it: seconds of each
step after warm-up, the device synchronized before and after each step.

--device cuda --dtype f16|bf16 mirrors that script's mixed precision (--mixed_precision
fp16|bf16): the frozen UNet is moved to the device in the weight dtype
before `add_adapter`; peft then creates the adapters in the base layers' dtype, and the script
casts every trainable parameter back to f32 (`param.data = param.to(torch.float32)`, as here;
diffusers' other LoRA scripts do it for fp16 only), so the adapters, their gradients and AdamW's
state are f32, as dcm keeps them. Every UNet call (student, teacher, target) runs under
`torch.autocast(device, dtype=weight dtype)`, as accelerate wraps the prepared model's forward;
latents and text come in the weight dtype, the schedule's coefficients and the loss in f32; with
f16, accelerate's GradScaler scales the loss, unscales before clipping and skips a step whose
gradients overflowed (its first steps may: the scale starts at 2^16). With f32 (the default),
no autocast and no scaler: the CPU comparison as before. The weights are drawn on the host in
f32 and moved over in the weight dtype, as `from_pretrained` then `.to(device, dtype)` does, so
no f32 copy sits in the GPU's caching allocator.

Prints JSON for bench/compare_unet_lora.sh. Memory fields: `peak_memory_mib` is the process's
peak resident host memory (ru_maxrss, as dcm's field of that name); on CUDA,
`gpu_max_memory_allocated_mib` is PyTorch's peak of live GPU tensors
(`torch.cuda.max_memory_allocated`, no CUDA context, no cached blocks) and
`gpu_max_memory_reserved_mib` its caching allocator's peak (`max_memory_reserved`), both over
the whole process (setup is smaller than a step); null on the CPU."""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from peft import LoraConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_unet import DTYPES, SD15, random_unet, sync  # noqa: E402

# LCM-LoRA's targets (the scripts' default), dcm's DEFAULT_LORA_TARGETS.
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
           "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]
T = 1000


def alphas_cumprod():
    """SD 1.5's scaled-linear schedule (beta 0.00085 to 0.012)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


class Step:
    def __init__(self, unet, a):
        self.unet, self.a = unet, a
        self.device = torch.device(a.device)
        self.dtype = DTYPES[a.dtype]
        self.k = T // a.intervals
        self.ac = alphas_cumprod().to(self.device)
        self.params = [p for p in unet.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=1e-2)
        # accelerate's loss scaling under --mixed_precision fp16 (none for bf16 and f32).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.ctx_dim = SD15["cross_attention_dim"]

    def net(self, x, t, ctx):
        """The UNet's ε under the autocast accelerate puts around a mixed-precision model."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.unet(x, t, encoder_hidden_states=ctx).sample

    def coef(self, t, shape):
        """sqrt(alpha_bar), sqrt(1 - alpha_bar) at timesteps t in 0..=T (0: clean), per row."""
        ac = torch.where(t >= 1, self.ac[(t - 1).clamp(min=0)], torch.ones_like(t, dtype=torch.float64))
        view = (-1,) + (1,) * (len(shape) - 1)
        return ac.sqrt().float().view(view), (1 - ac).sqrt().float().view(view)

    def scalings(self, t, shape):
        """LCM's boundary condition: c_skip, c_out with sigma_data 0.5, timestep scaling 10."""
        s = (t.double() * 10.0)
        c_skip = 0.25 / (s ** 2 + 0.25)
        c_out = s / (s ** 2 + 0.25) ** 0.5
        view = (-1,) + (1,) * (len(shape) - 1)
        return c_skip.float().view(view), c_out.float().view(view)

    def x0(self, x, eps, t):
        a, s = self.coef(t, x.shape)
        return (x - s * eps) / a

    def consistency(self, x, t, ctx):
        eps = self.net(x, t, ctx)
        c_skip, c_out = self.scalings(t, x.shape)
        return c_skip * x + c_out * self.x0(x, eps, t)

    def guided_ddim(self, x, t, ctx, null):
        """One guided DDIM step t → t − k with the adapters off (the teacher)."""
        cond = self.net(x, t, ctx)
        uncond = self.net(x, t, null)
        eps = uncond + self.a.guidance * (cond - uncond)
        a_prev, s_prev = self.coef(t - self.k, x.shape)
        return a_prev * self.x0(x, eps, t) + s_prev * eps

    def run(self, starts):
        a, b, dev = self.a, len(starts), self.device
        # Latents and text in the weight dtype, noised in it as the scheduler's add_noise does.
        x0 = torch.randn(b, 4, a.size, a.size, device=dev, dtype=self.dtype)
        ctx = torch.randn(b, 77, self.ctx_dim, device=dev, dtype=self.dtype)
        null = torch.zeros_like(ctx)
        t = torch.tensor([T - n * self.k for n in starts], device=dev)
        noise = torch.randn_like(x0)
        ca, cs = self.coef(t, x0.shape)
        xt = (ca * x0 + cs * noise).to(self.dtype)
        pred = self.consistency(xt, t, ctx)
        with torch.no_grad():
            self.unet.disable_adapters()
            if a.method == "cm":
                x_prev = self.guided_ddim(xt, t, ctx, null)
                self.unet.enable_adapters()
                target = self.consistency(x_prev, t - self.k, ctx)
            else:
                target = self.solve(xt, t, ctx, null)
                self.unet.enable_adapters()
        loss = F.mse_loss(pred.float(), target.float())
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        return int((t // self.k).sum()) if a.method == "direct" else b

    def solve(self, x, t, ctx, null):
        """DDIM down to clean, each step on the rows whose start has been reached (the state in
        f32, as the guided step returns it)."""
        x = x.to(torch.float32, copy=True)
        for tau in range(int(t.max()), 0, -self.k):
            rows = (t >= tau).nonzero().flatten()
            tt = torch.full((len(rows),), tau, device=self.device)
            x[rows] = self.guided_ddim(x[rows], tt, ctx[rows], null[rows])
        return x


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--method", choices=["cm", "direct"], required=True)
    p.add_argument("--size", type=int, default=16, help="latent height and width")
    p.add_argument("--starts", required=True,
                   help="grid indices n of each row, per timed step: '3,7;5,1' (batch = row count)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--intervals", type=int, default=10)
    p.add_argument("--guidance", type=float, default=9.0)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=list(DTYPES), default="f32",
                   help="the frozen UNet's weight dtype and autocast dtype (adapters stay f32)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    steps = [[int(n) for n in step.split(",")] for step in a.starts.split(";")]
    batch = len(steps[0])
    assert all(len(s) == batch for s in steps), "every step needs one start per row"
    cuda = torch.device(a.device).type == "cuda"
    unet = random_unet(SD15, "cpu", torch.float32).to(a.device, dtype=DTYPES[a.dtype])
    base_params = sum(t.numel() for t in unet.parameters())
    unet.add_adapter(LoraConfig(r=a.rank, lora_alpha=a.rank, target_modules=TARGETS))
    for param in unet.parameters():
        if param.requires_grad:
            param.data = param.to(torch.float32)
    unet.train()
    step = Step(unet, a)
    adapter_params = sum(t.numel() for t in step.params)
    for _ in range(a.warmup):
        step.run(steps[0])
    sync()
    times, evaluations = [], 0
    for starts in steps:
        start = time.perf_counter()
        evaluations += step.run(starts)
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    name = {"cm": "CM LoRA step", "direct": "Direct LoRA step"}[a.method]
    mib = lambda f: f() / 2**20 if cuda else None
    print(json.dumps({
        "workload": "unet-lora",
        "model": "sd15",
        "parameters": base_params,
        "adapter_parameters": adapter_params,
        "batch": batch,
        "size": a.size,
        "threads": a.threads,
        "device": a.device,
        "dtype": a.dtype,
        "torch": torch.__version__,
        "workloads": [{"name": name, "seconds": seconds, "samples_per_second": batch / seconds,
                       "teacher_evaluations": evaluations}],
        "times": times,
        "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gpu_max_memory_allocated_mib": mib(torch.cuda.max_memory_allocated),
        "gpu_max_memory_reserved_mib": mib(torch.cuda.max_memory_reserved),
    }, indent=2))


if __name__ == "__main__":
    main()
