#!/usr/bin/env python3
"""Write tiny RANDOM Stable Diffusion fixtures (diffusers folder layout) and golden
outputs computed by diffusers / transformers, for parity tests of dcm's SD path.

Developer-run only (never by CI); needs no network at run time:

    python3 -m venv /tmp/sdvenv
    /tmp/sdvenv/bin/pip install -r scripts/requirements-fixtures.txt
    HF_HUB_OFFLINE=1 /tmp/sdvenv/bin/python scripts/make_tiny_sd.py [--out tests/fixtures/sd]

Everything is f32, seeded and computed on the CPU with one thread. What each folder
and each golden tensor is: tests/fixtures/sd/README.md and each folder's golden.json.
"""
import argparse
import contextlib
import json
import os
import shutil
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import diffusers  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
)
from transformers.utils import logging as transformers_logging  # noqa: E402

diffusers_logging.set_verbosity_error()
diffusers_logging.disable_progress_bar()
transformers_logging.set_verbosity_error()
transformers_logging.disable_progress_bar()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "sd")
COMMAND = "HF_HUB_OFFLINE=1 python3 scripts/make_tiny_sd.py"

# Inputs shared by every fixture.
PROMPTS = ["a photo of a cat", "", "two dogs playing in the snow, highly detailed"]
SOLVE_PROMPTS = ["a photo of a cat", "two dogs playing in the snow, highly detailed"]
UNET_TIMESTEPS = [999, 500, 1]
SDXL_UNET_TIME_IDS = [64.0, 64.0, 0.0, 0.0, 64.0, 64.0]
LCM_GUIDANCE_SCALE = 3.0  # LCM's w; diffusers embeds w - 1
SOLVE_STEPS = [4, 10]
SOLVE_GUIDANCE = 3.0
LCM_STEPS = [2, 4]
LCM_ORIGINAL_STEPS = 10
LORA_RANK = 4
LORA_ALPHA = 8
LORA_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
]
ATTENTION_LORA_SUFFIXES = (".to_q", ".to_k", ".to_v", ".to_out.0")

# Seeds: one per random thing, so adding a fixture never changes another's numbers.
# SEED_CLIP = 12 gives CLIP scores of both signs (the clamped score is then tested).
SEED_SD1, SEED_SD2, SEED_SDXL, SEED_LCM, SEED_CLIP = 1, 2, 3, 4, 12
SEED_UNET_LATENTS, SEED_VAE_IMAGE, SEED_VAE_LATENTS, SEED_SOLVE_LATENTS = 11, 12, 13, 14
SEED_LORA, SEED_LCM_NOISE = 21, 22


def versions():
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(shape, seed, scale=1.0):
    return torch.randn(shape, generator=gen(seed), dtype=torch.float32) * scale


def randomize_1d_(model, seed):
    """Default inits leave norm weights at 1 and many biases at 0, which would let a
    swapped weight/bias or a skipped bias pass a parity test. Perturb every 1-D
    parameter (norm weights and biases, CLIP's class embedding) with seeded noise."""
    g = gen(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim != 1:
                continue
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.add_(0.05 * noise)


class Golden:
    """Tensors for one golden.safetensors plus their descriptions for golden.json."""

    def __init__(self, what):
        self.what = what
        self.tensors = {}
        self.entries = []
        self.settings = {}

    def add(self, name, tensor, call, **extra):
        assert name not in self.tensors, name
        t = tensor.detach().cpu().contiguous()
        if t.dtype not in (torch.float32, torch.int64):
            raise TypeError(f"{name}: {t.dtype}")
        self.tensors[name] = t.clone()
        entry = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "call": call}
        entry.update(extra)
        self.entries.append(entry)

    def write(self, folder, file="golden.safetensors"):
        os.makedirs(folder, exist_ok=True)
        save_file(self.tensors, os.path.join(folder, file), metadata={"format": "pt"})
        doc = {
            "what": self.what,
            "file": file,
            "produced_by": COMMAND,
            "versions": versions(),
            "settings": self.settings,
            "tensors": self.entries,
        }
        write_json(os.path.join(folder, "golden.json"), doc)


def clean_config(config):
    """A scheduler config as JSON-able dict, without diffusers' private keys (their
    `_use_default_values` list is in set order, which changes from run to run)."""
    return {k: config[k] for k in sorted(config) if not k.startswith("_")}


def canonicalize_safetensors_header(path):
    """safetensors writes its __metadata__ map in hash order, so a file with two
    metadata entries (diffusers' LoRA files) differs between runs. Rewrite the header
    with the metadata keys sorted; tensors and offsets are untouched."""
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"), object_pairs_hook=lambda kv: dict(kv))
    meta = header.get("__metadata__")
    if not meta:
        return
    header["__metadata__"] = {k: meta[k] for k in sorted(meta)}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    load_file(path)  # still a valid file


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


# --------------------------------------------------------------------------- tokenizers


def bytes_to_unicode():
    """GPT-2 / CLIP byte -> printable unicode table, in the order CLIP's vocab uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def byte_vocab(merges=()):
    """CLIP's vocab layout: 256 byte symbols, the same with </w>, one token per merge
    (in merge order), then <|startoftext|> and <|endoftext|>."""
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


# A handful of real merges, enough that BPE ranks matter (e.g. "o t" vs "t o</w>" in
# "photo", "i n" vs "i n</w>", chains like d o g s</w> -> dogs</w>).
MERGES = [
    ("t", "h"), ("th", "e</w>"), ("i", "n"), ("in", "g</w>"), ("o", "g"), ("d", "og"),
    ("dog", "s</w>"), ("a", "t</w>"), ("i", "n</w>"), ("o", "w</w>"), ("s", "n"), ("sn", "ow</w>"),
    ("p", "h"), ("t", "o</w>"), ("o", "t"), ("ph", "ot"), ("e", "d</w>"), ("h", "i"),
    ("th", "e"), ("c", "at</w>"),
]


def save_tokenizer(folder, vocab, merges, pad_token="<|endoftext|>"):
    """Save a CLIPTokenizer as transformers writes it (tokenizer.json,
    tokenizer_config.json) plus the files SD repositories ship (vocab.json,
    merges.txt, special_tokens_map.json), and check both load paths agree."""
    tok = CLIPTokenizer(vocab=vocab, merges=list(merges), pad_token=pad_token, model_max_length=77)
    tok.save_pretrained(folder)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": pad_token,
        "unk_token": "<|endoftext|>",
    }
    write_json(os.path.join(folder, "special_tokens_map.json"), special)
    check_tokenizer_files(folder)
    return tok


def check_tokenizer_files(folder):
    """tokenizer.json and vocab.json + merges.txt must tokenize identically."""
    tmp = folder.rstrip("/") + ".vocab_only"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(folder, name), tmp)
    a = CLIPTokenizer.from_pretrained(folder)
    b = CLIPTokenizer.from_pretrained(tmp)
    shutil.rmtree(tmp)
    for p in PROMPTS + TOKENIZER_EXTRA_PROMPTS:
        ia = a(p, padding="max_length", max_length=77, truncation=True).input_ids
        ib = b(p, padding="max_length", max_length=77, truncation=True).input_ids
        assert ia == ib, (folder, p, ia, ib)


def pipeline_input_ids(tokenizer, prompts):
    """Exactly the call encode_prompt makes."""
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


# --------------------------------------------------------------------------- components


def text_config(hidden_act="quick_gelu", pad_token_id=513, vocab_size=514, projection_dim=32):
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        projection_dim=projection_dim,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=pad_token_id,
    )


def unet_config(kind):
    cfg = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        use_linear_projection=False,
    )
    if kind == "sd2":
        cfg.update(attention_head_dim=(2, 4), use_linear_projection=True)
    elif kind == "sdxl":
        cfg.update(
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,
            cross_attention_dim=64,
        )
    elif kind == "lcm":
        cfg.update(time_cond_proj_dim=32)
    return cfg


def make_vae(scaling_factor):
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=scaling_factor,
    )


BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def seeded_module(seed, build):
    torch.manual_seed(seed)
    m = build()
    randomize_1d_(m, seed + 1000)
    return m.eval()


def build_sd1(folder):
    """SD-1.x: CLIP-L style text encoder (quick_gelu), conv proj_in/out, PNDM config as SD 1.5."""
    unet = seeded_module(SEED_SD1 * 100 + 1, lambda: UNet2DConditionModel(**unet_config("sd1")))
    vae = seeded_module(SEED_SD1 * 100 + 2, lambda: make_vae(0.18215))
    te = seeded_module(SEED_SD1 * 100 + 3, lambda: CLIPTextModel(text_config("quick_gelu")))
    tok = save_tokenizer(os.path.join(folder, "tokenizer"), byte_vocab(), [])
    sched = PNDMScheduler(**BETAS, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return save_and_reload(pipe, folder, StableDiffusionPipeline)


def build_sd2(folder):
    """SD-2.x: OpenCLIP-H style text encoder (gelu; the pipeline uses the final-LN last
    hidden state of a text encoder whose last layer is already cut off), linear
    proj_in/out, per-block heads, DDIM config with v_prediction as SD 2.1."""
    unet = seeded_module(SEED_SD2 * 100 + 1, lambda: UNet2DConditionModel(**unet_config("sd2")))
    vae = seeded_module(SEED_SD2 * 100 + 2, lambda: make_vae(0.18215))
    te = seeded_module(SEED_SD2 * 100 + 3, lambda: CLIPTextModel(text_config("gelu")))
    tok = save_tokenizer(os.path.join(folder, "tokenizer"), byte_vocab(), [])
    sched = DDIMScheduler(
        **BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction"
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return save_and_reload(pipe, folder, StableDiffusionPipeline)


def build_sdxl(folder):
    """SDXL: CLIP-L style encoder + OpenCLIP-bigG style encoder with projection (gelu,
    tokenizer_2 pads with "!" as SDXL's does), text_time added conditioning, Euler config."""
    unet = seeded_module(SEED_SDXL * 100 + 1, lambda: UNet2DConditionModel(**unet_config("sdxl")))
    vae = seeded_module(SEED_SDXL * 100 + 2, lambda: make_vae(0.13025))
    te = seeded_module(SEED_SDXL * 100 + 3, lambda: CLIPTextModel(text_config("quick_gelu")))
    te2 = seeded_module(
        SEED_SDXL * 100 + 4, lambda: CLIPTextModelWithProjection(text_config("gelu", pad_token_id=0))
    )
    tok = save_tokenizer(os.path.join(folder, "tokenizer"), byte_vocab(), [])
    tok2 = save_tokenizer(os.path.join(folder, "tokenizer_2"), byte_vocab(), [], pad_token="!")
    sched = EulerDiscreteScheduler(
        **BETAS, steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
        prediction_type="epsilon", use_karras_sigmas=False,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2, unet=unet,
        scheduler=sched, force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    return save_and_reload(pipe, folder, StableDiffusionXLPipeline)


def save_and_reload(pipe, folder, cls):
    """Save in diffusers layout and compute every golden from what is on disk."""
    pipe.save_pretrained(folder, safe_serialization=True)
    for sub in ("tokenizer", "tokenizer_2"):
        if os.path.isdir(os.path.join(folder, sub)):
            check_tokenizer_files(os.path.join(folder, sub))
    kwargs = {"add_watermarker": False} if cls is StableDiffusionXLPipeline else {}
    loaded = cls.from_pretrained(folder, **kwargs)
    loaded.set_progress_bar_config(disable=True)
    return loaded


# --------------------------------------------------------------------------- golden pieces


@contextlib.contextmanager
def capture_unet_embeddings(unet, store):
    """Record the sinusoidal timestep embedding (time_embedding's input), the time
    embedding MLP's output, and for SDXL the add_embedding's input and output."""
    hooks = []

    def time_hook(_m, args, out):
        store["t_emb"] = args[0]
        if len(args) > 1 and args[1] is not None:
            store["timestep_cond"] = args[1]
        store["time_embedding"] = out

    def add_hook(_m, args, out):
        store["add_embeds"] = args[0]
        store["aug_emb"] = out

    hooks.append(unet.time_embedding.register_forward_hook(time_hook))
    if getattr(unet, "add_embedding", None) is not None:
        hooks.append(unet.add_embedding.register_forward_hook(add_hook))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def unet_inputs():
    latents = randn((3, 4, 8, 8), SEED_UNET_LATENTS)
    timesteps = torch.tensor(UNET_TIMESTEPS, dtype=torch.int64)
    return latents, timesteps


def golden_unet(g, unet, encoder_hidden_states, added_cond_kwargs=None, timestep_cond=None, prefix="unet"):
    latents, timesteps = unet_inputs()
    call = "unet(sample, timestep, encoder_hidden_states"
    g.add(f"{prefix}.sample", latents, f"torch.randn([3,4,8,8], Generator().manual_seed({SEED_UNET_LATENTS}))")
    g.add(f"{prefix}.timestep", timesteps, "1-D int64 diffusers timesteps, one per row")
    g.add(f"{prefix}.encoder_hidden_states", encoder_hidden_states, "prompt_embeds of PROMPTS (see encode_prompt.*)")
    if added_cond_kwargs is not None:
        g.add(f"{prefix}.text_embeds", added_cond_kwargs["text_embeds"], "pooled_prompt_embeds of PROMPTS")
        g.add(f"{prefix}.time_ids", added_cond_kwargs["time_ids"], f"float time ids {SDXL_UNET_TIME_IDS} per row")
        call += ", added_cond_kwargs={text_embeds, time_ids}"
    if timestep_cond is not None:
        g.add(
            f"{prefix}.timestep_cond", timestep_cond,
            f"pipe.get_guidance_scale_embedding(torch.tensor([w - 1] * 3), embedding_dim=32), w = {LCM_GUIDANCE_SCALE}",
        )
        call += ", timestep_cond=timestep_cond"
    call += ").sample"
    store = {}
    with torch.no_grad(), capture_unet_embeddings(unet, store):
        out = unet(
            latents, timesteps, encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs=added_cond_kwargs, timestep_cond=timestep_cond,
        ).sample
    g.add(f"{prefix}.t_emb", store["t_emb"], "unet.time_proj(timestep): sinusoidal, flip_sin_to_cos=True (cos first), freq_shift 0, f32")
    g.add(f"{prefix}.time_embedding", store["time_embedding"], "unet.time_embedding(t_emb[, timestep_cond]) (before add_embedding is added)")
    if "add_embeds" in store:
        g.add(f"{prefix}.add_embeds", store["add_embeds"], "cat([text_embeds, add_time_proj(time_ids.flatten()).reshape(B, -1)], -1): text first")
        g.add(f"{prefix}.aug_emb", store["aug_emb"], "unet.add_embedding(add_embeds); emb = time_embedding + aug_emb")
    g.add(f"{prefix}.out", out, call)
    return out


def golden_vae(g, vae):
    image = torch.rand((2, 3, 32, 32), generator=gen(SEED_VAE_IMAGE), dtype=torch.float32) * 2 - 1
    latents = randn((2, 4, 16, 16), SEED_VAE_LATENTS)
    with torch.no_grad():
        dist = vae.encode(image).latent_dist
        decoded = vae.decode(latents).sample
    g.add("vae.image", image, f"torch.rand([2,3,32,32], Generator().manual_seed({SEED_VAE_IMAGE})) * 2 - 1")
    g.add("vae.latent_mean", dist.mean, "vae.encode(image).latent_dist.mean (unscaled: no scaling_factor)")
    g.add("vae.latent_std", dist.std, "vae.encode(image).latent_dist.std = exp(0.5 * clamp(logvar, -30, 20))")
    g.add("vae.decode_latents", latents, f"torch.randn([2,4,16,16], Generator().manual_seed({SEED_VAE_LATENTS}))")
    g.add("vae.decoded", decoded, "vae.decode(decode_latents).sample (raw decode: the caller divides by scaling_factor first)")


def ddim_for_solve(pipe):
    return DDIMScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=0, clip_sample=False
    )


def golden_solves(g, pipe):
    """Whole guided DDIM solves through the pipeline, latent output."""
    latents = randn((2, 4, 8, 8), SEED_SOLVE_LATENTS)
    g.add("solve.latents", latents, f"torch.randn([2,4,8,8], Generator().manual_seed({SEED_SOLVE_LATENTS})): initial x_T")
    original = pipe.scheduler
    runs = [(n, SOLVE_GUIDANCE) for n in SOLVE_STEPS] + [(4, 1.0)]
    for n, w in runs:
        pipe.scheduler = ddim_for_solve(pipe)
        traj, seen = [], {}
        is_xl = isinstance(pipe, StableDiffusionXLPipeline)
        inputs = ["latents", "add_time_ids", "add_text_embeds"] if is_xl else ["latents"]

        def on_step(_pipe, _i, _t, kw):
            traj.append(kw["latents"].clone())
            for k in inputs[1:]:
                seen.setdefault(k, kw[k].clone())
            return {}

        with torch.no_grad():
            out = pipe(
                SOLVE_PROMPTS, num_inference_steps=n, guidance_scale=w, latents=latents.clone(),
                output_type="latent", callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=inputs,
            ).images
        name = f"solve.ddim_n{n}_cfg{int(w)}"
        call = (
            f"pipe(SOLVE_PROMPTS, num_inference_steps={n}, guidance_scale={w}, latents=solve.latents, "
            "output_type='latent') with pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, "
            "timestep_spacing='trailing', set_alpha_to_one=True, steps_offset=0, clip_sample=False)"
        )
        g.add(f"{name}.timesteps", pipe.scheduler.timesteps.to(torch.int64), "pipe.scheduler.timesteps after the call")
        g.add(f"{name}.trajectory", torch.stack(traj), "latents after each scheduler step ([steps, 2, 4, 8, 8]); last = out")
        if is_xl:
            rows = "cat([negative, positive])" if w > 1.0 else "positive only"
            g.add(f"{name}.add_time_ids", seen["add_time_ids"], f"the pipeline's add_time_ids as passed to the UNet ({rows})")
            g.add(f"{name}.add_text_embeds", seen["add_text_embeds"], f"the pipeline's text_embeds as passed to the UNet ({rows}; negative = zeros)")
        g.add(f"{name}.out", out, call, guidance_scale=w, num_inference_steps=n, cfg=w > 1.0)
    pipe.scheduler = original
    g.settings["solve"] = {
        "prompts": SOLVE_PROMPTS,
        "negative_prompt": None,
        "scheduler": "DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing='trailing', "
        "set_alpha_to_one=True, steps_offset=0, clip_sample=False)",
        "scheduler_config": clean_config(ddim_for_solve(pipe).config),
        "eta": 0.0,
        "guidance": "noise = eps_u + w * (eps_c - eps_u); batch is cat([uncond, cond]); no CFG when w <= 1",
        "height_width": [pipe.unet.config.sample_size * pipe.vae_scale_factor] * 2,
    }


def describe_text_settings(g, pipe):
    te = pipe.text_encoder
    g.settings["text_encoder"] = {
        "hidden_act": te.config.hidden_act,
        "bos_eos_pad_ids": [te.config.bos_token_id, te.config.eos_token_id, te.config.pad_token_id],
        "tokenizer_pad_token_id": pipe.tokenizer.pad_token_id,
        "model_max_length": pipe.tokenizer.model_max_length,
    }


# --------------------------------------------------------------------------- fixtures


def fixture_sd(out, name, build, prediction_note):
    folder = os.path.join(out, name)
    pipe = build(folder)
    g = Golden(f"{name}: tiny random SD pipeline ({prediction_note}) and diffusers goldens")
    ids = pipeline_input_ids(pipe.tokenizer, PROMPTS)
    g.add("tokenizer.input_ids", ids,
          "tokenizer(PROMPTS, padding='max_length', max_length=77, truncation=True).input_ids")
    with torch.no_grad():
        pe, ne = pipe.encode_prompt(PROMPTS, "cpu", 1, True, negative_prompt=None)
        last = pipe.text_encoder(ids).last_hidden_state
    assert torch.equal(pe, last)
    g.add("encode_prompt.prompt_embeds", pe,
          "pipe.encode_prompt(PROMPTS, 'cpu', 1, True)[0] = text_encoder(input_ids).last_hidden_state "
          "(after final_layer_norm; clip_skip=None)")
    g.add("encode_prompt.negative_prompt_embeds", ne,
          "pipe.encode_prompt(PROMPTS, 'cpu', 1, True)[1]: the encoding of '' once per prompt")
    describe_text_settings(g, pipe)
    golden_unet(g, pipe.unet, pe)
    golden_vae(g, pipe.vae)
    golden_solves(g, pipe)
    g.settings.update(common_settings(pipe))
    g.write(folder)
    return pipe


def fixture_sd1(out):
    return fixture_sd(out, "sd1", build_sd1, "SD-1.x style, epsilon")


def fixture_sd2(out):
    return fixture_sd(out, "sd2", build_sd2, "SD-2.x style, v_prediction")


def common_settings(pipe):
    return {
        "prompts": PROMPTS,
        "unet_timesteps": UNET_TIMESTEPS,
        "vae_scale_factor": pipe.vae_scale_factor,
        "vae_scaling_factor": pipe.vae.config.scaling_factor,
        "prediction_type": pipe.scheduler.config.prediction_type,
        "scheduler_class_on_disk": type(pipe.scheduler).__name__,
        "dtype": "float32",
        "device": "cpu",
    }


def fixture_sdxl(out):
    folder = os.path.join(out, "sdxl")
    pipe = build_sdxl(folder)
    g = Golden("sdxl: tiny random SDXL pipeline and diffusers goldens")
    ids1 = pipeline_input_ids(pipe.tokenizer, PROMPTS)
    ids2 = pipeline_input_ids(pipe.tokenizer_2, PROMPTS)
    tok_call = "(PROMPTS, padding='max_length', max_length=77, truncation=True).input_ids"
    g.add("tokenizer.input_ids", ids1, f"tokenizer{tok_call} (pad = eos = 513)")
    g.add("tokenizer_2.input_ids", ids2, f"tokenizer_2{tok_call} (pad = '!' = 0, as SDXL's tokenizer_2)")
    enc = "pipe.encode_prompt(PROMPTS, device='cpu', num_images_per_prompt=1, do_classifier_free_guidance=True"
    with torch.no_grad():
        pe, ne, pooled, npooled = pipe.encode_prompt(
            PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
        )
        _, ne_empty, _, npooled_empty = pipe.encode_prompt(
            PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=""
        )
        h1 = pipe.text_encoder(ids1, output_hidden_states=True).hidden_states
        o2 = pipe.text_encoder_2(ids2, output_hidden_states=True)
    assert torch.equal(pe, torch.cat([h1[-2], o2.hidden_states[-2]], -1))
    assert torch.equal(pooled, o2.text_embeds)
    assert torch.count_nonzero(ne) == 0 and torch.count_nonzero(npooled) == 0
    hs = "(tokenizer{}.input_ids, output_hidden_states=True).hidden_states[-2] (penultimate layer, no final LN)"
    g.add("text_encoder.penultimate", h1[-2], "text_encoder" + hs.format(""))
    g.add("text_encoder_2.penultimate", o2.hidden_states[-2], "text_encoder_2" + hs.format("_2"))
    g.add("encode_prompt.prompt_embeds", pe,
          f"{enc})[0] = cat([text_encoder.penultimate, text_encoder_2.penultimate], -1)")
    g.add("encode_prompt.pooled_prompt_embeds", pooled,
          f"{enc})[2] = text_encoder_2(...).text_embeds: final-LN state at the first eos (513) through "
          "text_projection (no bias)")
    g.add("encode_prompt.negative_prompt_embeds", ne,
          f"{enc})[1] (negative_prompt=None): zeros, force_zeros_for_empty_prompt=True")
    g.add("encode_prompt.negative_pooled_prompt_embeds", npooled, f"{enc})[3] (negative_prompt=None): zeros")
    g.add("encode_prompt_empty_negative.negative_prompt_embeds", ne_empty,
          f"{enc}, negative_prompt='')[1]: the real encoding of '' (what a pipeline without force_zeros uses)")
    g.add("encode_prompt_empty_negative.negative_pooled_prompt_embeds", npooled_empty,
          f"{enc}, negative_prompt='')[3]")
    g.settings["text_encoder"] = {
        "hidden_act": pipe.text_encoder.config.hidden_act,
        "pad_token_id": pipe.tokenizer.pad_token_id,
    }
    g.settings["text_encoder_2"] = {
        "hidden_act": pipe.text_encoder_2.config.hidden_act,
        "pad_token_id": pipe.tokenizer_2.pad_token_id,
        "projection_dim": pipe.text_encoder_2.config.projection_dim,
    }
    time_ids = torch.tensor([SDXL_UNET_TIME_IDS] * 3, dtype=torch.float32)
    golden_unet(g, pipe.unet, pe, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})
    golden_vae(g, pipe.vae)
    golden_solves(g, pipe)
    hw = g.settings["solve"]["height_width"]
    g.settings["solve"]["add_time_ids"] = [hw[0], hw[1], 0, 0, hw[0], hw[1]]
    g.settings["solve"]["add_time_ids_note"] = (
        "pipeline default: original_size = target_size = (height, width), crops (0, 0); the same ids for the "
        "negative half; negative text embeds and pooled embeds are zeros (force_zeros_for_empty_prompt)"
    )
    g.settings["unet_time_ids"] = SDXL_UNET_TIME_IDS
    g.settings["force_zeros_for_empty_prompt"] = bool(pipe.config.force_zeros_for_empty_prompt)
    g.settings.update(common_settings(pipe))
    g.write(folder)
    return pipe


def fixture_lcm(out, sd1):
    """A standalone LCM UNet (sd1's config + time_cond_proj_dim) with UNet goldens."""
    folder = os.path.join(out, "lcm")
    unet = seeded_module(SEED_LCM * 100 + 1, lambda: UNet2DConditionModel(**unet_config("lcm")))
    unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet")).eval()
    g = Golden("lcm: tiny random LCM-style UNet (sd1 config + time_cond_proj_dim=32) and its goldens")
    with torch.no_grad():
        pe, _ = sd1.encode_prompt(PROMPTS, "cpu", 1, False)
    w = torch.tensor([LCM_GUIDANCE_SCALE - 1.0] * 3)
    cond = sd1.get_guidance_scale_embedding(w, embedding_dim=unet.config.time_cond_proj_dim)
    golden_unet(g, unet, pe, timestep_cond=cond)
    g.settings = {
        "prompts": PROMPTS,
        "encoder_hidden_states_from": "sd1 pipeline's encode_prompt (same as sd1/golden encode_prompt.prompt_embeds)",
        "guidance_scale_w": LCM_GUIDANCE_SCALE,
        "guidance_embedding": "w' = (w - 1) * 1000; half = 16; f = exp(-ln(10000) * arange(half) / (half - 1)); "
        "cat([sin(w' f), cos(w' f)]) (sin first, divisor half - 1) -> unet.time_embedding.cond_proj (no bias), "
        "added to the sinusoidal timestep embedding before linear_1",
        "unet_timesteps": UNET_TIMESTEPS,
        "dtype": "float32",
    }
    g.write(folder)


TOKENIZER_EXTRA_PROMPTS = [
    "the thing in the photo",
    "The Theatre:  THE THEME!!",
    "snowing\tdogs'\n 's don't they're",
    "café naïve 😀 1234 cats",
    " ".join(["the dogs are playing"] * 20),  # longer than 77 tokens: truncated to bos + 75 + eos
]


def fixture_tokenizer_merges(out):
    folder = os.path.join(out, "tokenizer_merges")
    vocab = byte_vocab(MERGES)
    tok = save_tokenizer(folder, vocab, MERGES)
    plain = CLIPTokenizer(vocab=byte_vocab(), merges=[], model_max_length=77)
    prompts = PROMPTS + TOKENIZER_EXTRA_PROMPTS
    g = Golden("tokenizer_merges: CLIP BPE tokenizer with a few real merges; input_ids as the SD pipelines compute them")
    g.add("input_ids", pipeline_input_ids(tok, prompts), "tokenizer(prompts, padding='max_length', max_length=77, truncation=True).input_ids")
    g.add("bytes_only.input_ids", pipeline_input_ids(plain, prompts), "the same prompts through the merge-free tokenizer of sd1/sd2/sdxl")
    g.settings = {
        "prompts": prompts,
        "tokens": [tok.convert_ids_to_tokens(tok(p, truncation=True, max_length=77).input_ids) for p in prompts],
        "merges": [f"{a} {b}" for a, b in MERGES],
        "vocab_size": len(vocab),
        "bos_eos_pad_ids": [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id],
        "normalizer": "NFC, collapse whitespace runs to ' ', lowercase (HF tokenizers CLIP; no ftfy / html unescape)",
        "pre_tokenizer": r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ then byte-level",
    }
    g.write(folder)


# --------------------------------------------------------------------------- LoRA


def lora_module_paths(state_dict):
    return sorted({k[: -len(".lora_A.weight")] for k in state_dict if k.endswith(".lora_A.weight")})


def kohya_layout(sd, paths):
    out = {}
    for p in paths:
        k = "lora_unet_" + p.replace(".", "_")
        out[f"{k}.lora_down.weight"] = sd[f"{p}.lora_A.weight"]
        out[f"{k}.lora_up.weight"] = sd[f"{p}.lora_B.weight"]
        out[f"{k}.alpha"] = torch.tensor(float(LORA_ALPHA))
    return out


def mixed_layout(sd, paths):
    out = {}
    for p in paths:
        if p.endswith(ATTENTION_LORA_SUFFIXES):
            out[f"{p}.lora.down.weight"] = sd[f"{p}.lora_A.weight"]
            out[f"{p}.lora.up.weight"] = sd[f"{p}.lora_B.weight"]
        else:
            out[f"{p}.lora_A.weight"] = sd[f"{p}.lora_A.weight"]
            out[f"{p}.lora_B.weight"] = sd[f"{p}.lora_B.weight"]
    return out


def fresh_sd1(sd1_folder):
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lora_unet_out(pipe, latents, timesteps, pe):
    n_lora = sum(1 for k, _ in pipe.unet.named_parameters() if ".lora_A." in k)
    with torch.no_grad():
        out = pipe.unet(latents, timesteps, encoder_hidden_states=pe).sample
    return out, n_lora


def fixture_lora(out, sd1_folder):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    folder = os.path.join(out, "lora")
    os.makedirs(folder, exist_ok=True)
    g = Golden("lora: a random rank-4 LoRA on sd1's UNet in three file layouts, and diffusers goldens with it loaded")
    pipe = StableDiffusionPipeline.from_pretrained(sd1_folder)
    pipe.set_progress_bar_config(disable=True)
    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGETS, init_lora_weights=True)
    pipe.unet.add_adapter(config)
    # peft zero-initializes lora_B (a no-op adapter): draw A and B from a seeded generator.
    g_lora = gen(SEED_LORA)
    with torch.no_grad():
        for name, p in sorted(pipe.unet.named_parameters()):
            if ".lora_A." in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g_lora) / fan_in**0.5)
            elif ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g_lora) * 0.2)
    sd = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(pipe.unet).items()}
    paths = lora_module_paths(sd)
    with torch.no_grad():
        pe, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
    latents, timesteps = unet_inputs()
    with torch.no_grad():
        reference = pipe.unet(latents, timesteps, encoder_hidden_states=pe).sample

    # (b) PEFT layout, exactly as diffusers writes it (alpha in the lora_adapter_metadata header).
    # diffusers turns sets (target_modules) into lists in hash order: sort them for byte-identical reruns.
    metadata = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=sd, weight_name="lora_peft.safetensors", safe_serialization=True,
        unet_lora_adapter_metadata=metadata,
    )
    # (a) kohya layout with diffusers module names (as the published LCM-LoRA sd-v1-5 file).
    save_file(kohya_layout(sd, paths), os.path.join(folder, "lora_kohya.safetensors"), metadata={"format": "pt"})
    # (c) diffusers' mixed layout (attention .lora.down/.lora.up, others lora_A/lora_B): what
    # convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)) gives, as diffusers'
    # LCM-LoRA SDXL training script saves it.
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers

    mixed = mixed_layout(sd, paths)
    reference_mixed = convert_state_dict_to_diffusers(sd)
    assert sorted(mixed) == sorted(reference_mixed), "mixed layout keys differ from diffusers' conversion"
    assert all(torch.equal(mixed[k], reference_mixed[k]) for k in mixed)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=mixed, weight_name="lora_mixed.safetensors",
        safe_serialization=True, unet_lora_adapter_metadata=metadata,
    )

    for file in ("lora_peft.safetensors", "lora_mixed.safetensors"):
        canonicalize_safetensors_header(os.path.join(folder, file))

    checks = {}
    loaded_pipe = None
    for file in ("lora_kohya.safetensors", "lora_peft.safetensors", "lora_mixed.safetensors"):
        p2 = fresh_sd1(sd1_folder)
        with warnings.catch_warnings():
            # peft warns that the mixed file's attention modules got no weights (see below).
            warnings.simplefilter("ignore", RuntimeWarning)
            p2.load_lora_weights(folder, weight_name=file, adapter_name="lcm")
        got, n_lora = lora_unet_out(p2, latents, timesteps, pe)
        diff = (got - reference).abs().max().item()
        checks[file] = {
            "loader": "pipe.load_lora_weights(folder, weight_name=file)",
            "max_abs_diff_vs_reference": diff,
            "lora_modules_loaded": n_lora,
            "lora_modules_in_file": len(paths),
        }
        if file != "lora_mixed.safetensors":
            assert n_lora == len(paths) and diff < 1e-6, (file, checks[file])
        if file == "lora_kohya.safetensors":
            loaded_pipe = p2
    # diffusers converts a non-PEFT UNet LoRA only when the state dict's FIRST key lacks
    # "lora_A" (loaders/peft.py). safetensors returns keys sorted, and the mixed file's
    # first key is "unet.down_blocks.0.downsamplers.0.conv.lora_A.weight", so
    # load_lora_weights silently skips its attention LoRA. Check the file through the
    # converter diffusers applies to this layout (convert_unet_state_dict_to_peft).
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    mixed_file = os.path.join(folder, "lora_mixed.safetensors")
    with safetensors.safe_open(mixed_file, "pt") as f:
        mixed_meta = json.loads(f.metadata()["lora_adapter_metadata"])
    p2 = fresh_sd1(sd1_folder)
    p2.unet.load_lora_adapter(
        convert_unet_state_dict_to_peft(load_file(mixed_file)), prefix="unet", adapter_name="lcm", metadata=mixed_meta
    )
    got, n_lora = lora_unet_out(p2, latents, timesteps, pe)
    diff = (got - reference).abs().max().item()
    checks["lora_mixed.safetensors (converted)"] = {
        "loader": "pipe.unet.load_lora_adapter(convert_unet_state_dict_to_peft(load_file(file)), prefix='unet', "
        "metadata=<the file's lora_adapter_metadata>)",
        "max_abs_diff_vs_reference": diff,
        "lora_modules_loaded": n_lora,
        "lora_modules_in_file": len(paths),
    }
    assert n_lora == len(paths) and diff < 1e-6, checks

    with torch.no_grad():
        base = StableDiffusionPipeline.from_pretrained(sd1_folder).unet(latents, timesteps, encoder_hidden_states=pe).sample
    g.add("unet.sample", latents, "same as sd1/golden unet.sample")
    g.add("unet.timestep", timesteps, "same as sd1/golden unet.timestep")
    g.add("unet.encoder_hidden_states", pe, "same as sd1/golden encode_prompt.prompt_embeds")
    g.add("unet.out", reference, "sd1 unet with the LoRA attached (scale alpha/rank = 2) at the sd1 UNet golden inputs; "
          "each of the three files loaded with pipe.load_lora_weights gives this output")
    g.add("unet.out_without_lora", base, "sd1 unet without the LoRA (= sd1/golden unet.out)")

    lcm_config = golden_lcm_lora_sampling(g, loaded_pipe)
    g.settings = {
        "rank": LORA_RANK,
        "alpha": LORA_ALPHA,
        "scale": LORA_ALPHA / LORA_RANK,
        "target_modules": LORA_TARGETS,
        "lora_modules": len(paths),
        "delta_w": "W + (alpha / rank) * up @ down (convs: lora_down has the layer's kernel, stride and padding; lora_up is 1x1)",
        "init": f"lora_A ~ randn / sqrt(fan_in), lora_B ~ 0.2 randn, Generator().manual_seed({SEED_LORA}) in sorted parameter-name order",
        "files": {
            "lora_kohya.safetensors": "lora_unet_<module path, '.' -> '_'>.lora_down.weight / .lora_up.weight / .alpha (0-d f32); no metadata",
            "lora_peft.safetensors": "unet.<module path>.lora_A.weight / .lora_B.weight; alpha only in the safetensors header "
            "'lora_adapter_metadata' (JSON of peft's LoraConfig, keys prefixed 'unet.') as StableDiffusionPipeline.save_lora_weights writes it",
            "lora_mixed.safetensors": "unet.<path>.to_{q,k,v,out.0}.lora.down.weight / .lora.up.weight for attention, "
            "unet.<path>.lora_A.weight / .lora_B.weight elsewhere; same header metadata as lora_peft",
        },
        "load_checks": checks,
        "lcm_sampling": {
            "pipeline": "StableDiffusionPipeline (sd1) with lora_kohya.safetensors loaded, guidance_scale=1.0 (no CFG, no timestep_cond)",
            "scheduler": f"LCMScheduler.from_config(pipe.scheduler.config, original_inference_steps={LCM_ORIGINAL_STEPS})",
            "scheduler_config": lcm_config,
            "steps": LCM_STEPS,
            "prompts": SOLVE_PROMPTS,
        },
        "unet_timesteps": UNET_TIMESTEPS,
        "prompts": PROMPTS,
    }
    g.write(folder, file="lora_golden.safetensors")


def golden_lcm_lora_sampling(g, pipe):
    """LCM multistep sampling with the LoRA loaded, recording the re-noise draws."""
    import diffusers.schedulers.scheduling_lcm as lcm_mod

    latents = randn((2, 4, 8, 8), SEED_SOLVE_LATENTS)
    g.add("lcm.latents", latents, "same as sd1/golden solve.latents")
    original_randn = lcm_mod.randn_tensor
    original_sched = pipe.scheduler
    for n in LCM_STEPS:
        pipe.scheduler = LCMScheduler.from_config(original_sched.config, original_inference_steps=LCM_ORIGINAL_STEPS)
        noises, steps = [], []

        def recording_randn(*args, **kwargs):
            t = original_randn(*args, **kwargs)
            noises.append(t.clone())
            return t

        original_step = pipe.scheduler.step

        def recording_step(model_output, timestep, sample, *args, **kwargs):
            res = original_step(model_output, timestep, sample, *args, **kwargs)
            prev, denoised = (res.prev_sample, res.denoised) if hasattr(res, "denoised") else res
            steps.append((model_output.clone(), denoised.clone(), prev.clone()))
            return res

        pipe.scheduler.step = recording_step
        lcm_mod.randn_tensor = recording_randn
        try:
            with torch.no_grad():
                out = pipe(
                    SOLVE_PROMPTS, num_inference_steps=n, guidance_scale=1.0, latents=latents.clone(),
                    output_type="latent", generator=gen(SEED_LCM_NOISE),
                ).images
        finally:
            lcm_mod.randn_tensor = original_randn
        name = f"lcm.n{n}"
        g.add(f"{name}.timesteps", pipe.scheduler.timesteps.to(torch.int64), "LCMScheduler timesteps after set_timesteps")
        g.add(f"{name}.model_output", torch.stack([s[0] for s in steps]), "UNet epsilon at each step ([steps,2,4,8,8])")
        g.add(f"{name}.denoised", torch.stack([s[1] for s in steps]), "scheduler.step(...).denoised = c_out * x0 + c_skip * x_t")
        g.add(f"{name}.noise", torch.stack(noises), "the randn_tensor draws LCMScheduler.step made (one per step but the last)")
        g.add(f"{name}.out", out, f"pipe(SOLVE_PROMPTS, num_inference_steps={n}, guidance_scale=1.0, latents=lcm.latents, "
              f"output_type='latent', generator=Generator().manual_seed({SEED_LCM_NOISE})) with the LoRA loaded and "
              f"pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, original_inference_steps={LCM_ORIGINAL_STEPS})")
    config = clean_config(pipe.scheduler.config)
    pipe.scheduler = original_sched
    return config


# --------------------------------------------------------------------------- CLIP


def clip_image():
    """A deterministic 40 (wide) x 50 (high) RGB test pattern."""
    h, w = 50, 40
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // (w - 1)).astype(np.uint8)
    gch = (y * 255 // (h - 1)).astype(np.uint8)
    b = ((((x // 5) + (y // 5)) % 2) * 200 + 30).astype(np.uint8)
    circle = (x - 20) ** 2 + (y - 22) ** 2 < 9**2
    b[circle] = 255
    r[circle] = 0
    return Image.fromarray(np.stack([r, gch, b], -1), mode="RGB")


def fixture_clip(out):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder = os.path.join(out, "clip")
    vision = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=2, projection_dim=16, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    text = text_config("quick_gelu", projection_dim=16)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    model = seeded_module(SEED_CLIP * 100 + 1, lambda: CLIPModel(config))
    model.save_pretrained(folder, safe_serialization=True)
    tok = save_tokenizer(folder, byte_vocab(), [])
    proc_args = dict(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_resize=True, do_center_crop=True,
        do_rescale=True, do_normalize=True, do_convert_rgb=True,
    )
    processor = CLIPImageProcessor(**proc_args)
    processor.save_pretrained(folder)
    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPImageProcessor.from_pretrained(folder)
    image = clip_image()
    image.save(os.path.join(folder, "image.png"))
    image = Image.open(os.path.join(folder, "image.png")).convert("RGB")
    pixels = processor(images=image, return_tensors="pt").pixel_values
    pixels_pil = CLIPImageProcessorPil(**proc_args)(images=image, return_tensors="pt").pixel_values
    ids = pipeline_input_ids(tok, PROMPTS)

    def feats(x):
        return x.pooler_output if hasattr(x, "pooler_output") else x

    with torch.no_grad():
        img = feats(model.get_image_features(pixel_values=pixels))
        img_pil = feats(model.get_image_features(pixel_values=pixels_pil))
        txt = feats(model.get_text_features(input_ids=ids))
    cos = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    g = Golden("clip: tiny random CLIPModel (HF folder) with processor, feature and CLIP-score goldens")
    g.add("image_u8", torch.from_numpy(np.asarray(image).astype(np.int64)), "image.png as [H=50, W=40, 3] RGB values")
    g.add("pixel_values", pixels, "CLIPImageProcessor.from_pretrained(clip/)(images=image).pixel_values "
          "(transformers 5 default: torchvision backend)")
    g.add("pixel_values_pil", pixels_pil, "CLIPImageProcessorPil(same settings)(images=image).pixel_values (PIL backend, "
          "the transformers 4.x 'slow' processor behaviour)")
    g.add("input_ids", ids, "tokenizer(PROMPTS, padding='max_length', max_length=77, truncation=True).input_ids")
    g.add("image_features", img, "model.get_image_features(pixel_values).pooler_output: visual_projection(post_layernorm(CLS))")
    g.add("image_features_pil", img_pil, "model.get_image_features(pixel_values_pil).pooler_output")
    g.add("text_features", txt, "model.get_text_features(input_ids).pooler_output: text_projection(final-LN state at first eos)")
    g.add("clip_score_raw", 100.0 * cos, "100 * cos(image_features, text_features) ([1 image, 3 prompts])")
    g.add("clip_score", torch.clamp(100.0 * cos, min=0.0), "max(100 * cos, 0) as torchmetrics' CLIPScore per pair")
    g.settings = {
        "prompts": PROMPTS,
        "processor": json.load(open(os.path.join(folder, "preprocessor_config.json"), encoding="utf-8")),
        "pixel_values_max_abs_diff_torchvision_vs_pil": (pixels - pixels_pil).abs().max().item(),
        "image": "image.png: 40 wide x 50 high RGB test pattern (gradients, checkerboard, disc)",
    }
    g.write(folder)


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="fixture folder (default: tests/fixtures/sd)")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    for name in ("sd1", "sd2", "sdxl", "lcm", "lora", "clip", "tokenizer_merges"):
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    os.makedirs(out, exist_ok=True)

    fixture_tokenizer_merges(out)
    print("tokenizer_merges done", flush=True)
    sd1 = fixture_sd1(out)
    print("sd1 done", flush=True)
    fixture_sd2(out)
    print("sd2 done", flush=True)
    fixture_sdxl(out)
    print("sdxl done", flush=True)
    fixture_lcm(out, sd1)
    print("lcm done", flush=True)
    fixture_lora(out, os.path.join(out, "sd1"))
    print("lora done", flush=True)
    fixture_clip(out)
    print("clip done", flush=True)
    write_json(os.path.join(out, "versions.json"), versions())
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
