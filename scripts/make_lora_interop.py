#!/usr/bin/env python3
"""Write tests/fixtures/sd/lora_interop/: ldm (CompVis/sgm) module names of the tiny
fixtures' UNets, and kohya-layout LoRAs of the sd1 and sdxl UNets with ldm names beside
their diffusers-named twins, with diffusers' UNet outputs when each file is loaded.

Developer-run only (never by CI), after scripts/make_tiny_sd.py, with the same venv:

    HF_HUB_OFFLINE=1 /tmp/sdvenv/bin/python scripts/make_lora_interop.py

How independent the ldm names are: they are computed here from the diffusers model's own
module structure (this file's code, not dcm's), then checked against diffusers' own
converters, which go the other way (ldm -> diffusers):
- every parameter: `convert_ldm_unet_checkpoint` (single-file loading) must turn the renamed
  state dict back into the original one, key for key and tensor for tensor;
- the LoRAs: `load_lora_weights` must load the ldm-named file into the same modules with the
  same output as the diffusers-named twin.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import diffusers  # noqa: E402
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "sd")
OUT = os.path.join(ROOT, "lora_interop")
SEED = 20261206
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
# Mixed ranks: 3x3 convs rank 1 (alpha 1.5), every other layer rank 2 (alpha 3); factors in
# f16 to keep the files small.
RANKS = {"conv3x3": (1, 1.5), "other": (2, 3.0)}


def blocks(unet):
    """(diffusers prefix, ldm prefix, kind) for every block, from the model's modules."""
    rows = [("time_embedding.linear_1", "time_embed.0", "same"), ("time_embedding.linear_2", "time_embed.2", "same"),
            ("conv_in", "input_blocks.0.0", "same"), ("conv_norm_out", "out.0", "same"), ("conv_out", "out.2", "same"),
            ("mid_block.resnets.0", "middle_block.0", "resnet"), ("mid_block.attentions.0", "middle_block.1", "same"),
            ("mid_block.resnets.1", "middle_block.2", "resnet")]
    if getattr(unet, "add_embedding", None) is not None:
        rows += [("add_embedding.linear_1", "label_emb.0.0", "same"), ("add_embedding.linear_2", "label_emb.0.2", "same")]
    k = 1
    for i, b in enumerate(unet.down_blocks):
        attn = getattr(b, "attentions", None)
        for j in range(len(b.resnets)):
            rows.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{k}.0", "resnet"))
            if attn is not None:
                rows.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{k}.1", "same"))
            k += 1
        if b.downsamplers is not None:
            rows.append((f"down_blocks.{i}.downsamplers.0", f"input_blocks.{k}.0", "down"))
            k += 1
    k = 0
    for i, b in enumerate(unet.up_blocks):
        attn = getattr(b, "attentions", None)
        for j in range(len(b.resnets)):
            rows.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{k}.0", "resnet"))
            if attn is not None:
                rows.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{k}.1", "same"))
            if b.upsamplers is not None and j == len(b.resnets) - 1:
                rows.append((f"up_blocks.{i}.upsamplers.0", f"output_blocks.{k}.{2 if attn is not None else 1}", "same"))
            k += 1
    return rows


def to_ldm(name, rows):
    best = max((r for r in rows if name == r[0] or name.startswith(r[0] + ".")), key=lambda r: len(r[0]))
    prefix, ldm, kind = best
    rest = name[len(prefix) + 1:].split(".") if name != prefix else []
    if rest and kind == "resnet":
        rest[0] = RESNET[rest[0]]
    if rest and kind == "down":
        assert rest[0] == "conv", name
        rest[0] = "op"
    return ".".join([ldm] + rest)


def check_names(model):
    """The ldm name of every UNet parameter, checked by diffusers' single-file converter."""
    unet = UNet2DConditionModel.from_pretrained(os.path.join(ROOT, model, "unet"))
    rows = blocks(unet)
    sd = unet.state_dict()
    names = {k: to_ldm(k, rows) for k in sd}
    assert len(set(names.values())) == len(names), model
    ldm_sd = {"model.diffusion_model." + v: sd[k] for k, v in names.items()}
    back = convert_ldm_unet_checkpoint(ldm_sd, dict(unet.config))
    assert sorted(back) == sorted(sd), (model, sorted(set(sd) ^ set(back))[:5])
    assert all(torch.equal(back[k], sd[k]) for k in sd), model
    return names, rows


# diffusers 0.42's kohya converter drops diffusers-named `lora_unet_add_embedding_*` keys
# (SDXL), so the twins leave that layer out (ldm_names.json still covers label_emb).
SKIPPED = ("add_embedding.",)


def random_lora(unet, gen):
    """A LoRA on every linear and conv layer but SKIPPED: (module path, down, up, alpha)."""
    out = []
    for path, m in sorted(unet.named_modules()):
        if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) or path.startswith(SKIPPED):
            continue
        big = isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)
        rank, alpha = RANKS["conv3x3" if big else "other"]
        w = m.weight
        down = torch.randn((rank,) + tuple(w.shape[1:]), generator=gen) / w[0].numel() ** 0.5
        up = torch.randn((w.shape[0], rank) + (1,) * (w.dim() - 2), generator=gen) * 0.2
        out.append((path, down.half().contiguous(), up.half().contiguous(), alpha))
    return out


def kohya(lora, name_of):
    out = {}
    for path, down, up, alpha in lora:
        key = "lora_unet_" + name_of(path).replace(".", "_")
        out[f"{key}.lora_down.weight"] = down
        out[f"{key}.lora_up.weight"] = up
        out[f"{key}.alpha"] = torch.tensor(alpha)
    return out


def inputs(model, unet, gen):
    ctx = unet.config.cross_attention_dim
    x = {"sample": torch.randn(2, 4, 8, 8, generator=gen), "timestep": torch.tensor([999, 250]),
         "encoder_hidden_states": torch.randn(2, 5, ctx, generator=gen)}
    if model == "sdxl":
        x["text_embeds"] = torch.randn(2, 32, generator=gen)
        x["time_ids"] = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0], [32.0, 48.0, 4.0, 2.0, 64.0, 64.0]])
    return x


def unet_out(pipe, x):
    extra = {}
    if "text_embeds" in x:
        extra["added_cond_kwargs"] = {"text_embeds": x["text_embeds"], "time_ids": x["time_ids"]}
    with torch.no_grad():
        return pipe.unet(x["sample"], x["timestep"], encoder_hidden_states=x["encoder_hidden_states"], **extra).sample


def lora_fixture(model, names, golden, checks):
    cls = StableDiffusionXLPipeline if model == "sdxl" else StableDiffusionPipeline
    load = lambda: cls.from_pretrained(os.path.join(ROOT, model))  # noqa: E731
    gen = torch.Generator().manual_seed(SEED + len(model))
    pipe = load()
    lora = random_lora(pipe.unet, gen)
    x = inputs(model, pipe.unet, gen)
    base = unet_out(pipe, x)
    files = {"diffusers": kohya(lora, lambda p: p), "ldm": kohya(lora, lambda p: names[p + ".weight"][: -len(".weight")])}
    outs = {}
    for kind, tensors in files.items():
        file = f"{model}_{kind}.safetensors"
        save_file(tensors, os.path.join(OUT, file), metadata={"format": "pt"})
        p = load()
        # SD 1.x's loader maps ldm (sgm) block names only when given the UNet config (SDXL's does it itself).
        extra = {} if model == "sdxl" else {"unet_config": p.unet.config}
        p.load_lora_weights(OUT, weight_name=file, **extra)
        loaded = sum(1 for k, _ in p.unet.named_parameters() if ".lora_A." in k)
        got = {k.split(".lora_A.")[0] for k, _ in p.unet.named_parameters() if ".lora_A." in k}
        assert loaded == len(lora), (file, loaded, len(lora), sorted({m for m, *_ in lora} - got))
        outs[kind] = unet_out(p, x)
        checks[file] = {"modules": len(lora), "loaded_by_load_lora_weights": loaded,
                        "max_abs_change_vs_base": (outs[kind] - base).abs().max().item()}
    diff = (outs["ldm"] - outs["diffusers"]).abs().max().item()
    assert diff == 0.0, (model, diff)
    assert (outs["ldm"] - base).abs().max().item() > 1e-2, model
    for k, v in x.items():
        golden[f"{model}.{k}"] = v.contiguous()
    golden[f"{model}.out"] = outs["ldm"].contiguous()
    golden[f"{model}.out_without_lora"] = base.contiguous()


def main():
    os.makedirs(OUT, exist_ok=True)
    names_json, golden, checks = {}, {}, {}
    for model in ("sd1", "sd2", "sdxl"):
        names, _ = check_names(model)
        names_json[model] = names
    for model in ("sd1", "sdxl"):
        lora_fixture(model, names_json[model], golden, checks)
    with open(os.path.join(OUT, "ldm_names.json"), "w") as f:
        json.dump(names_json, f, indent=0, sort_keys=True)
        f.write("\n")
    save_file(golden, os.path.join(OUT, "golden.safetensors"))
    info = {
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "diffusers": diffusers.__version__},
        "ldm_names.json": "per fixture UNet: diffusers parameter name -> ldm name (without 'model.diffusion_model.'); "
        "convert_ldm_unet_checkpoint maps every renamed tensor back to its diffusers name",
        "MODEL_diffusers.safetensors": "kohya layout, diffusers module names, every linear and conv layer but "
        "SDXL's add_embedding (which diffusers' kohya converter drops from diffusers-named files); "
        "3x3 convs rank 1 alpha 1.5, the rest rank 2 alpha 3; factors f16, alphas 0-d f32",
        "MODEL_ldm.safetensors": "the same tensors under ldm module names (lora_unet_input_blocks_...)",
        "golden.safetensors": "MODEL.{sample,timestep,encoder_hidden_states[,text_embeds,time_ids]} inputs; MODEL.out: "
        "the UNet with either file loaded by pipe.load_lora_weights (identical); MODEL.out_without_lora",
        "lora": "down ~ randn / sqrt(fan_in), up ~ 0.2 randn, modules in sorted path order, "
        f"torch.Generator().manual_seed({SEED} + len(model name))",
        "load_checks": checks,
    }
    with open(os.path.join(OUT, "golden.json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
