#!/usr/bin/env python3
"""Write single-file (original ldm / CompVis layout) checkpoints of the tiny pipelines in
tests/fixtures/sd/{sd1,sd2,sdxl}, check that diffusers' own `from_single_file` reads each back
to exactly the folder's weights, and write the released CLIP tokenizer's ids for a set of
prompts (from open_clip's tokenizer, the reference implementation of that vocabulary).

Developer-run only (never by CI), offline, like scripts/make_tiny_sd.py:

    /tmp/sdvenv/bin/pip install -r scripts/requirements-fixtures.txt open-clip-torch==3.3.0
    HF_HUB_OFFLINE=1 /tmp/sdvenv/bin/python scripts/make_single_file.py

Output (tests/fixtures/sd/single_file/, described in tests/fixtures/sd/README.md):
  sd1.safetensors, sd1.ckpt (torch.save zip with `state_dict` and `global_step`),
  sd2.safetensors (OpenCLIP text encoder layout), sdxl.safetensors, clip_bpe_golden.json.
The renaming below is this script's own statement of the ldm layout; diffusers' reader is the
independent check (an assertion failure means the file is not what diffusers expects).
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "sd")
OUT = os.path.join(FIXTURES, "single_file")

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def per_block(value, n):
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def unet_key(key, cfg):
    """A diffusers UNet parameter name in ldm's `model.diffusion_model.` layout."""
    n = len(cfg["block_out_channels"])
    layers = per_block(cfg["layers_per_block"], n)
    up_layers = list(reversed(layers))
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    parts = key.split(".")
    if parts[0] == "mid_block":
        index = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}[(parts[1], parts[2])]
        return ".".join(["middle_block", str(index)] + resnet_rest(parts[1], parts[3:]))
    block = int(parts[1])
    if parts[0] == "down_blocks":
        start = 1 + sum(l + 1 for l in layers[:block])
        if parts[2] == "downsamplers":
            return ".".join(["input_blocks", str(start + layers[block]), "0", "op"] + parts[5:])
        slot = "0" if parts[2] == "resnets" else "1"
        return ".".join(["input_blocks", str(start + int(parts[3])), slot] + resnet_rest(parts[2], parts[4:]))
    assert parts[0] == "up_blocks", key
    start = sum(l + 1 for l in up_layers[:block])
    if parts[2] == "upsamplers":
        has_attention = "CrossAttn" in cfg["up_block_types"][block]
        return ".".join(["output_blocks", str(start + up_layers[block]), "2" if has_attention else "1"] + parts[4:])
    slot = "0" if parts[2] == "resnets" else "1"
    return ".".join(["output_blocks", str(start + int(parts[3])), slot] + resnet_rest(parts[2], parts[4:]))


def resnet_rest(kind, rest):
    if kind != "resnets":
        return rest
    return RESNET[rest[0]].split(".") + rest[1:]


VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key(key, n_up):
    """A diffusers AutoencoderKL parameter name in ldm's `first_stage_model.` layout."""
    key = key.replace("conv_norm_out", "norm_out")
    for side in ("encoder", "decoder"):
        key = key.replace(f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1.")
        key = key.replace(f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2.")
        key = key.replace(f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.")
    for old, new in VAE_ATTENTION.items():
        key = key.replace(f"attn_1.{old}.", f"attn_1.{new}.")
    parts = key.split(".")
    if parts[1] == "down_blocks":
        parts[1] = "down"
    if parts[1] == "up_blocks":
        parts[1], parts[2] = "up", str(n_up - 1 - int(parts[2]))
    key = ".".join(parts)
    key = key.replace(".resnets.", ".block.").replace(".downsamplers.0.", ".downsample.")
    key = key.replace(".upsamplers.0.", ".upsample.").replace(".conv_shortcut.", ".nin_shortcut.")
    return key


def vae_tensor(key, tensor):
    """ldm's VAE attention projections are 1×1 convolutions."""
    if ".attn_1." in key and key.endswith("weight") and tensor.dim() == 2:
        return tensor[:, :, None, None]
    return tensor


def hf_clip(state, prefix):
    """An HF CLIPTextModel as ldm files hold it: its own names under `prefix`."""
    out = {}
    for key, tensor in state.items():
        key = key if key.startswith("text_model.") or key.startswith("text_projection") else "text_model." + key
        out[prefix + key] = tensor
    return out


OPEN_CLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def open_clip(state, prefix):
    """An HF CLIPTextModel(WithProjection) in OpenCLIP's layout: fused q/k/v, transposed projection."""
    state = {k if k.startswith("text_model.") or k.startswith("text_projection") else "text_model." + k: v
             for k, v in state.items()}
    out = {}
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")})
    for i in layers:
        src = f"text_model.encoder.layers.{i}."
        dst = f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [state[src + f"self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")], 0)
            for old, new in OPEN_CLIP_LAYER.items():
                out[dst + f"{new}.{kind}"] = state[src + f"{old}.{kind}"]
    out[prefix + "token_embedding.weight"] = state["text_model.embeddings.token_embedding.weight"]
    out[prefix + "positional_embedding"] = state["text_model.embeddings.position_embedding.weight"]
    for kind in ("weight", "bias"):
        out[prefix + f"ln_final.{kind}"] = state[f"text_model.final_layer_norm.{kind}"]
    if "text_projection.weight" in state:
        out[prefix + "text_projection"] = state["text_projection.weight"].T.contiguous()
    return out


def single_file(pipe, family):
    unet_cfg = dict(pipe.unet.config)
    state = {"model.diffusion_model." + unet_key(k, unet_cfg): v for k, v in pipe.unet.state_dict().items()}
    n_up = len(pipe.vae.config.up_block_types)
    for k, v in pipe.vae.state_dict().items():
        name = "first_stage_model." + vae_key(k, n_up)
        state[name] = vae_tensor(name, v)
    text = pipe.text_encoder.state_dict()
    if family == "sd1":
        state.update(hf_clip(text, "cond_stage_model.transformer."))
    elif family == "sd2":
        state.update(open_clip(text, "cond_stage_model.model."))
    else:
        state.update(hf_clip(text, "conditioner.embedders.0.transformer."))
        state.update(open_clip(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    return {k: v.contiguous() for k, v in state.items() if not k.endswith("position_ids")}


def same_weights(a, b, what):
    sa, sb = a.state_dict(), b.state_dict()
    sa = {k: v for k, v in sa.items() if not k.endswith("position_ids")}
    sb = {k: v for k, v in sb.items() if not k.endswith("position_ids")}
    assert sa.keys() == sb.keys(), (what, sorted(set(sa) ^ set(sb))[:8])
    for k in sa:
        assert torch.equal(sa[k], sb[k]), (what, k)


def check_open_clip_sdxl(encoder, path):
    """diffusers tells SDXL's two encoders apart by width, equal in the tiny fixture, so its
    pipeline reader loads CLIP-L's weights into both; its OpenCLIP converter is called directly."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from safetensors.torch import load_file

    converted = convert_open_clip_checkpoint(encoder, load_file(path), prefix="conditioner.embedders.1.model.")
    want = {k: v for k, v in encoder.state_dict().items() if not k.endswith("position_ids")}
    assert converted.keys() == want.keys(), sorted(set(converted) ^ set(want))[:8]
    for k in want:
        assert torch.equal(converted[k], want[k]), ("sdxl text_encoder_2", k)


def check_with_diffusers(cls, path, folder, family):
    original = cls.from_pretrained(folder, local_files_only=True)
    loaded = cls.from_single_file(path, config=folder, local_files_only=True)
    for part in ("unet", "vae", "text_encoder"):
        same_weights(getattr(original, part), getattr(loaded, part), f"{family} {part}")
    if family == "sdxl":
        check_open_clip_sdxl(original.text_encoder_2, path)
    print(f"{os.path.relpath(path, ROOT)}: diffusers' from_single_file reads the folder's weights exactly")


def transformers_ids(prompts, pad):
    """transformers' CLIPTokenizer on vocab.json / merges.txt built from the same file, as the
    SD repositories' tokenizer folders hold it (what diffusers' pipelines call)."""
    import gzip
    import tempfile

    import open_clip
    from transformers import CLIPTokenizer

    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "vocab.json"), "w") as f:
            json.dump({t: i for i, t in enumerate(vocab)}, f)
        with open(os.path.join(tmp, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"), pad_token=pad)
        return tok(prompts, padding="max_length", max_length=77, truncation=True).input_ids


def bytes_to_unicode():
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return dict(zip(printable + others, [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]))


def tokenizer_golden():
    from open_clip.tokenizer import SimpleTokenizer

    prompts = ["a photo of a cat", "An astronaut riding a horse, 4k, trending on artstation!",
               "  Mixed   CASE\twhitespace  and punctuation: (1girl), [masterpiece]; don't stop  ",
               "numbers 1234 and 3.14 and émigré café", "", " ".join(["long"] * 100)]
    return {"what": "ids of each prompt: open_clip's own tokenizer (pads with id 0), and transformers' "
                    "CLIPTokenizer with pad '!' (SD 2.x, SDXL's tokenizer_2: a literal '!' is then the "
                    "special token, id 0) and with pad '<|endoftext|>' (SD 1.x, SDXL's tokenizer)",
            "prompts": prompts,
            "open_clip": SimpleTokenizer()(prompts, context_length=77).tolist(),
            "transformers_pad_bang": transformers_ids(prompts, "!"),
            "transformers_pad_eot": transformers_ids(prompts, "<|endoftext|>")}


def main():
    os.makedirs(OUT, exist_ok=True)
    for family, cls in (("sd1", StableDiffusionPipeline), ("sd2", StableDiffusionPipeline),
                        ("sdxl", StableDiffusionXLPipeline)):
        folder = os.path.join(FIXTURES, family)
        pipe = cls.from_pretrained(folder, local_files_only=True)
        state = single_file(pipe, family)
        path = os.path.join(OUT, f"{family}.safetensors")
        save_file(state, path, metadata={"format": "pt"})
        check_with_diffusers(cls, path, folder, family)
        if family == "sd1":
            ckpt = os.path.join(OUT, "sd1.ckpt")
            torch.save({"state_dict": state, "global_step": 7}, ckpt)
            check_with_diffusers(cls, ckpt, folder, family)
    with open(os.path.join(OUT, "clip_bpe_golden.json"), "w") as f:
        json.dump(tokenizer_golden(), f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
