#!/usr/bin/env python3
"""Write tiny RANDOM DINOv2 fixtures (transformers `Dinov2Model` folders), test images and
golden features computed the way dgm-eval computes FD-DINOv2, for src/nets/dinov2.

Developer-run only (never by CI); needs no network. It runs dgm-eval's own code (its image
loader, its DINOv2 transform and its feature loop) around Meta's own DINOv2 network class
(the torch-hub model dgm-eval loads), with the random weights of the transformers folder
copied in. Both projects are read from local checkouts, because dgm-eval's encoder would
otherwise download the network and its pretrained weights:

    git clone https://github.com/layer6ai-labs/dgm-eval /tmp/dgm-eval-src
    git clone https://github.com/facebookresearch/dinov2 /tmp/dinov2-src
    /tmp/sdvenv/bin/pip install -r scripts/requirements-fixtures.txt
    /tmp/sdvenv/bin/python scripts/make_dinov2_fixture.py \
        --dgm-eval /tmp/dgm-eval-src --dinov2 /tmp/dinov2-src [--out tests/fixtures/dinov2]

Only the modules dgm-eval's DINOv2 path needs are imported (dgm_eval/models/dinov2.py,
encoder.py, resizer.py, dataloaders.py, representations.py): its package __init__ files
import every other encoder's dependencies.

Outputs (all f32, CPU, one thread; what each tensor is: tests/fixtures/dinov2/README.md):
  model/          MLP feed-forward, 280-pixel pretraining grid (20×20): interpolated to 16×16
  model_swiglu/   SwiGLU feed-forward (ViT-g's), 224-pixel grid: used as is
  images/         three PNGs of different sizes (dgm-eval reads a folder in sorted order)
  golden.safetensors, golden.json
"""
import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import types
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("XFORMERS_DISABLED", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import Dinov2Config, Dinov2Model  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "dinov2")

HIDDEN, HEADS = 16, 2


def import_dgm_eval(root):
    """dgm-eval's DINOv2 modules without running its package __init__ files."""
    for name, sub in [("dgm_eval", "dgm_eval"), ("dgm_eval.models", "dgm_eval/models")]:
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(root, sub)]
        sys.modules[name] = pkg
    return (
        importlib.import_module("dgm_eval.models.dinov2"),
        importlib.import_module("dgm_eval.dataloaders"),
        importlib.import_module("dgm_eval.representations"),
    )


def git_head(root):
    try:
        return subprocess.check_output(["git", "-C", root, "rev-parse", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def random_model(out_dir, seed, **cfg):
    """A Dinov2Model with every parameter random (layer scales and norms included), saved."""
    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=HIDDEN, num_attention_heads=HEADS, patch_size=14, mlp_ratio=4, **cfg)
    model = Dinov2Model(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lambda1") or (("norm" in name) and name.endswith("weight")):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif "embeddings" in name and "projection" not in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / max(p.shape[-1], 1) ** 0.5)
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    return model


def hub_state_dict(hf, depth, swiglu):
    """The transformers folder's tensors under Meta's DinoVisionTransformer names."""
    sd = {
        "cls_token": hf["embeddings.cls_token"],
        "mask_token": hf["embeddings.mask_token"],
        "pos_embed": hf["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf["layernorm.weight"],
        "norm.bias": hf["layernorm.bias"],
    }
    ffn = {"weights_in": "w12", "weights_out": "w3"} if swiglu else {"fc1": "fc1", "fc2": "fc2"}
    for i in range(depth):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        att = src + "attention.attention."
        for kind in ["weight", "bias"]:
            sd[dst + f"attn.qkv.{kind}"] = torch.cat([hf[att + f"{n}.{kind}"] for n in ["query", "key", "value"]])
            sd[dst + f"attn.proj.{kind}"] = hf[src + f"attention.output.dense.{kind}"]
            for n in ["norm1", "norm2"]:
                sd[dst + f"{n}.{kind}"] = hf[src + f"{n}.{kind}"]
            for a, b in ffn.items():
                sd[dst + f"mlp.{b}.{kind}"] = hf[src + f"mlp.{a}.{kind}"]
        sd[dst + "ls1.gamma"] = hf[src + "layer_scale1.lambda1"]
        sd[dst + "ls2.gamma"] = hf[src + "layer_scale2.lambda1"]
    return sd


def hub_model(dinov2_root, model_dir, config):
    """Meta's network with torch-hub's settings (layer scale, offset 0.1, no antialias)."""
    sys.path.insert(0, dinov2_root)
    from dinov2.models.vision_transformer import DinoVisionTransformer

    swiglu = config.use_swiglu_ffn
    net = DinoVisionTransformer(
        img_size=config.image_size,
        patch_size=14,
        embed_dim=HIDDEN,
        depth=config.num_hidden_layers,
        num_heads=HEADS,
        mlp_ratio=4,
        init_values=1.0,
        ffn_layer="swiglufused" if swiglu else "mlp",
        block_chunks=0,
        num_register_tokens=0,
        interpolate_antialias=False,
        interpolate_offset=0.1,
    ).eval()
    hf = load_file(os.path.join(model_dir, "model.safetensors"))
    net.load_state_dict(hub_state_dict(hf, config.num_hidden_layers, swiglu), strict=True)
    return net


def write_images(folder):
    """Three RGB images whose 224×224 resize enlarges (a), shrinks (b), keeps one side (c)."""
    os.makedirs(folder, exist_ok=True)
    # Smooth waves plus sharp-edged blocks: content at every frequency, yet small PNGs.
    for name, (w, h) in [("a.png", (40, 30)), ("b.png", (257, 231)), ("c.png", (224, 160))]:
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        blocks = 60.0 * (((x // 7) + (y // 5)) % 2) - 30.0
        base = [128 + 90 * np.sin(x / 9.0 + c) * np.cos(y / 13.0 - c) + blocks * (c - 1) for c in range(3)]
        # Multiples of 8: fewer distinct values, smaller files.
        pixels = (np.clip(np.stack(base, axis=-1), 0, 255) // 8 * 8).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(os.path.join(folder, name), optimize=True)


def dgm_eval_features(mods, net, images):
    """dgm-eval's pipeline: its folder loader, DINOv2Encoder.transform (torchvision resize
    on the PIL image, no clean_resize), get_representations; the network swapped in for the
    torch.hub download."""
    dino_mod, loaders, reps = mods
    encoder = dino_mod.DINOv2Encoder.__new__(dino_mod.DINOv2Encoder)
    torch.nn.Module.__init__(encoder)
    encoder.model, encoder.clean_resize, encoder.arch = net, False, "tiny"
    dl = loaders.get_dataloader(images, nsample=-1, batch_size=8, num_workers=0, transform=encoder.transform)
    feats = reps.get_representations(encoder, dl, torch.device("cpu"), normalized=False)
    pixels = torch.stack([dl.data_set[i] for i in range(len(dl.data_set))])
    return torch.from_numpy(feats).float(), pixels.float(), [str(f) for f in dl.files]


def interpolation_goldens():
    """The hub's position-embedding resize on its own: bicubic (a = −0.75), scale factor
    (g + 0.1)/M, no antialias; the real 37→16 case and an enlargement 8→16."""
    torch.manual_seed(3)
    out = {}
    for m, g, d in [(37, 16, 4), (8, 16, 3)]:
        grid = torch.randn(1, d, m, m)
        sf = float(g + 0.1) / m
        out[f"grid{m}"] = grid
        out[f"grid{m}_to{g}"] = torch.nn.functional.interpolate(
            grid, mode="bicubic", antialias=False, scale_factor=(sf, sf)
        )
    return out


def transformers_features(model_dir, pixels):
    """What the transformers class itself gives (size-based resize of the grid in 5.x)."""
    model = Dinov2Model.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(pixel_values=pixels).pooler_output


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dgm-eval", required=True, help="checkout of github.com/layer6ai-labs/dgm-eval")
    ap.add_argument("--dinov2", required=True, help="checkout of github.com/facebookresearch/dinov2")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    out = os.path.abspath(args.out)
    mods = import_dgm_eval(os.path.abspath(args.dgm_eval))
    images = os.path.join(out, "images")
    write_images(images)

    golden, meta = {}, {}
    specs = {
        "model": dict(seed=1, num_hidden_layers=2, image_size=280, use_swiglu_ffn=False),
        "model_swiglu": dict(seed=2, num_hidden_layers=1, image_size=224, use_swiglu_ffn=True),
    }
    for name, spec in specs.items():
        model_dir = os.path.join(out, name)
        hf = random_model(model_dir, **spec)
        net = hub_model(os.path.abspath(args.dinov2), model_dir, hf.config)
        feats, pixels, files = dgm_eval_features(mods, net, images)
        golden[f"{name}.features"] = feats
        golden[f"{name}.transformers_features"] = transformers_features(model_dir, pixels)
        golden["pixel_values_every_8th"] = pixels[:, :, ::8, ::8].contiguous()
        # The same weights agree with transformers wherever no grid resize is involved.
        with torch.no_grad():
            same = net(torch.nn.functional.interpolate(pixels, size=(hf.config.image_size,) * 2, mode="bilinear"))
            ref = hf(pixel_values=torch.nn.functional.interpolate(pixels, size=(hf.config.image_size,) * 2,
                                                                  mode="bilinear")).pooler_output
        mapping_err = float((same - ref).abs().max())
        assert mapping_err < 1e-4, f"{name}: hub and transformers disagree at the native size ({mapping_err})"
        diff = float((feats - golden[f"{name}.transformers_features"]).abs().max())
        meta[name] = dict(spec, native_size_agreement=mapping_err, dgm_eval_vs_transformers_at_224=diff)
        print(f"{name}: features {tuple(feats.shape)}, dgm-eval vs transformers at 224: max |Δ| {diff:.3g}")
    golden.update(interpolation_goldens())
    save_file({k: v.contiguous() for k, v in golden.items()}, os.path.join(out, "golden.safetensors"))
    meta.update(
        files=[os.path.relpath(f, out) for f in files],
        dgm_eval_commit=git_head(args.dgm_eval),
        dinov2_commit=git_head(args.dinov2),
        torch=torch.__version__,
        transformers=transformers.__version__,
        pillow=Image.__version__,
    )
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
