#!/usr/bin/env python3
"""The PyTorch-eager reference for `dcm bench`: the same residual ε-MLP, the same
consistency parameterization, DDIM solver, classifier-free guidance, CM and Direct
(active-set) distillation steps, timed the same way (median over repeats after
warm-up). Prints JSON for bench/compare.sh."""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

T = 1000


class Mlp(nn.Module):
    def __init__(self, dim, hidden, depth, time_dim, classes):
        super().__init__()
        self.time_dim = time_dim
        self.null = classes
        self.inp = nn.Linear(dim, hidden)
        self.emb = nn.Linear(2 * time_dim, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        self.class_emb = nn.Parameter(torch.randn(classes + 1, time_dim))

    def forward(self, x, t, labels):
        half = self.time_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
        ang = t.to(torch.float64)[:, None] * freqs[None]
        temb = torch.cat([ang.sin(), ang.cos()], 1).float()
        h = self.inp(x) + self.emb(torch.cat([temb, self.class_emb[labels]], 1))
        for b in self.blocks:
            h = h + b(F.silu(h))
        return self.out(F.silu(h))


class Decoder(nn.Module):
    """The autoencoder's decoder at the shipped sizes (dec.0-3 of src/autoencoder.rs)."""

    def __init__(self, latent=4, w=16):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(latent, 2 * w, 3, padding=1), nn.Conv2d(2 * w, 2 * w, 3, padding=1),
                                    nn.Conv2d(2 * w, w, 3, padding=1), nn.Conv2d(w, 1, 3, padding=1)])

    def forward(self, z):
        c = self.convs
        h = F.silu(c[1](F.silu(c[0](z))))
        h = F.silu(c[2](F.interpolate(h, scale_factor=2, mode="nearest")))
        return torch.sigmoid(c[3](F.interpolate(h, scale_factor=2, mode="nearest")))


class Featnet(nn.Module):
    """The feature network at the shipped sizes (src/featnet.rs), up to the 128-d features."""

    def __init__(self, w=32, features=128, classes=10):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(1, w, 3, 2, 1), nn.Conv2d(w, 2 * w, 3, 2, 1), nn.Conv2d(2 * w, 2 * w, 3, 1, 1)])
        self.fc = nn.Linear(2 * w * 49, features)
        self.head = nn.Linear(features, classes)

    def forward(self, x):
        h = 2 * x - 1
        for c in self.convs:
            h = F.silu(c(h))
        return F.silu(self.fc(h.flatten(1)))


def schedule():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2
    ab = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
    return ab.sqrt().float(), (1 - ab).sqrt().float()  # index t = 0..T


ALPHA, SIGMA = schedule()


def guided(net, x, t, labels, w):
    e = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, net.null)]))
    ec, eu = e.chunk(2)
    return eu + w * (ec - eu)


def ddim_step(net, x, t, k, labels, w):
    eps = guided(net, x, t, labels, w)
    a, s = ALPHA[t][:, None], SIGMA[t][:, None]
    an, sn = ALPHA[t - k][:, None], SIGMA[t - k][:, None]
    return an * (x - s * eps) / a + sn * eps


def consistency(net, x, t, labels):
    st = 10.0 * t.float()[:, None]
    c_skip, c_out = 0.25 / (st ** 2 + 0.25), st / (st ** 2 + 0.25).sqrt()
    eps = net(x, t, labels)
    x0 = (x - SIGMA[t][:, None] * eps) / ALPHA[t][:, None]
    return c_skip * x + c_out * x0


def direct_targets(teacher, x, t, k, labels, w):
    order = torch.argsort(t, descending=True)
    xs, ts, ls = x[order].clone(), t[order], labels[order]
    for tau in range(int(ts[0]), 0, -k):
        m = int((ts >= tau).sum())
        xs[:m] = ddim_step(teacher, xs[:m], torch.full((m,), tau), k, ls[:m], w)
    out = torch.empty_like(xs)
    out[order] = xs
    return out


def distill_step(method, teacher, student, opt, x0, labels, n_intervals, w):
    k = T // n_intervals
    t = T - k * torch.randint(0, n_intervals, (x0.shape[0],))
    xt = ALPHA[t][:, None] * x0 + SIGMA[t][:, None] * torch.randn_like(x0)
    with torch.no_grad():
        if method == "cm":
            target = consistency(student, ddim_step(teacher, xt, t, k, labels, w), t - k, labels)
        else:
            target = direct_targets(teacher, xt, t, k, labels, w)
    loss = F.mse_loss(consistency(student, xt, t, labels), target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()


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
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dim", type=int, default=196)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--time-dim", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--intervals", type=int, default=50)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N], as dcm bench --device")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    # Every tensor and module below is created on the device; the schedule moves there too.
    torch.set_default_device(a.device)
    global ALPHA, SIGMA
    ALPHA, SIGMA = ALPHA.to(a.device), SIGMA.to(a.device)
    torch.manual_seed(0)
    teacher = Mlp(a.dim, a.hidden, a.depth, a.time_dim, a.classes).requires_grad_(False)
    student = Mlp(a.dim, a.hidden, a.depth, a.time_dim, a.classes)
    student.load_state_dict(teacher.state_dict())
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=1e-2)
    x = torch.randn(a.batch, a.dim)
    labels = torch.arange(a.batch) % a.classes
    t = 1 + (torch.arange(a.batch) * 997) % T
    k = T // a.intervals

    def sample():
        with torch.no_grad():
            y = x
            for tau in range(T, 0, -k):
                y = ddim_step(teacher, y, torch.full((a.batch,), tau), k, labels, a.guidance)

    def forward():
        with torch.no_grad():
            teacher(x, t, labels)

    decoder, featnet = Decoder().requires_grad_(False), Featnet().requires_grad_(False)
    z, images = torch.randn(a.batch, 4, 7, 7), torch.rand(a.batch, 1, 28, 28)

    def decode():
        with torch.no_grad():
            decoder(z)

    def features():
        with torch.no_grad():
            featnet(images)

    b = a.batch
    work = []
    for name, warm, reps, f in [
        ("teacher forward", 3, a.repeats, forward),
        (f"teacher {a.intervals}-interval guided DDIM sampling", 1, -(-a.repeats // 4), sample),
        ("one CM distillation step", 2, a.repeats, lambda: distill_step("cm", teacher, student, opt, x, labels, a.intervals, a.guidance)),
        ("one Direct distillation step", 2, a.repeats, lambda: distill_step("direct", teacher, student, opt, x, labels, a.intervals, a.guidance)),
        ("autoencoder decode", 3, a.repeats, decode),
        ("feature network forward", 3, a.repeats, features),
    ]:
        s = timed(warm, reps, f)
        work.append({"name": name, "seconds": s, "samples_per_second": b / s})
    params = sum(p.numel() for p in teacher.parameters())
    conv_params = [sum(p.numel() for p in m.parameters()) for m in (decoder, featnet)]
    print(json.dumps({"parameters": params, "conv_parameters": conv_params, "threads": a.threads, "device": a.device, "torch": torch.__version__, "workloads": work}, indent=2))


if __name__ == "__main__":
    main()
