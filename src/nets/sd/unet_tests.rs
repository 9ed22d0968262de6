//! Parity of the UNet with diffusers' goldens (`tests/fixtures/sd/{sd1,sd2,sdxl,lcm,lora}`),
//! LoRA attachment and the loader's errors.

use crate::diffusion::condition::TextEmbedding;
use crate::nets::layers::Params;
use crate::nets::lora::LoraConfig;
use crate::nets::sd::embeddings::Sinusoid;
use crate::nets::sd::lora_files::{import, TextEncoderParts};
use crate::nets::sd::test_util::*;
use crate::nets::sd::unet::{UNet, UNetLora, DEFAULT_LORA_TARGETS};
use crate::nets::sd::unet_config::UNetConfig;
use candle_core::{DType, Device, Tensor};

const TOL: f64 = 1e-4;

/// The UNet of `model` on its golden inputs against `unet.out`; also `t_emb` and the time
/// embedding (`time_embedding` + SDXL's `aug_emb`).
fn check_model(model: &str) {
    let (cfg, params) = unet_fixture(model);
    let g = golden(&format!("{model}/golden.safetensors"));
    let unet = UNet::new(cfg.clone(), &params, None).unwrap();
    let t = timesteps(&g);
    let sinusoid = Sinusoid {
        dim: cfg.block_out_channels[0],
        flip_sin_to_cos: cfg.flip_sin_to_cos,
        freq_shift: cfg.freq_shift,
    };
    let t32: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    let t_err = max_abs_diff(&sinusoid.embed(&t32, &Device::Cpu).unwrap(), &g["unet.t_emb"]);
    let cond = g.get("unet.timestep_cond");
    let emb = unet.time_embedding(&t, &text(&g), cond).unwrap();
    let want_emb = match g.get("unet.aug_emb") {
        Some(aug) => (&g["unet.time_embedding"] + aug).unwrap(),
        None => g["unet.time_embedding"].clone(),
    };
    let emb_err = max_abs_diff(&emb, &want_emb);
    let out = unet.forward(&g["unet.sample"], &t, &text(&g), cond).unwrap();
    let err = max_abs_diff(&out, &g["unet.out"]);
    eprintln!(
        "{model}: t_emb {t_err:.2e}, emb {emb_err:.2e}, out {err:.2e} (|out| ≤ {:.2})",
        max_abs(&g["unet.out"])
    );
    assert!(
        t_err <= 1e-5 && emb_err <= TOL && err <= TOL,
        "{model}: {t_err} {emb_err} {err}"
    );
}

#[test]
fn sd1_unet_matches_diffusers() {
    check_model("sd1");
}

#[test]
fn sd2_unet_matches_diffusers() {
    check_model("sd2");
}

#[test]
fn sdxl_unet_matches_diffusers() {
    check_model("sdxl");
}

#[test]
fn lcm_unet_matches_diffusers() {
    check_model("lcm");
}

/// The PEFT-layout LoRA file imported into dcm naming, and its (rank, alpha) from the header
/// metadata.
fn peft_lora() -> (Params, LoraConfig) {
    let lora = import(
        &fixture("lora/lora_peft.safetensors"),
        &unet_fixture("sd1").0,
        TextEncoderParts::Refuse,
    )
    .unwrap();
    (lora.params, lora.cfg)
}

/// sd1 with the rank-4 LoRA attached on the default targets gives diffusers' output with the
/// LoRA loaded; with the adapters switched off it is the base UNet's output.
#[test]
fn sd1_unet_with_peft_lora_matches_diffusers() {
    let (cfg, mut params) = unet_fixture("sd1");
    let (adapters, lora_cfg) = peft_lora();
    assert_eq!(lora_cfg, LoraConfig { rank: 4, alpha: 8.0 });
    params.extend(adapters);
    let lora = UNetLora::with_default_targets(lora_cfg);
    let unet = UNet::new(cfg, &params, Some(&lora)).unwrap();
    assert_eq!(unet.adapted_layers().len(), 79);
    let g = golden("lora/lora_golden.safetensors");
    let (t, txt) = (timesteps(&g), text(&g));
    let out = unet.forward(&g["unet.sample"], &t, &txt, None).unwrap();
    let base = unet
        .adapters()
        .while_off(|| unet.forward(&g["unet.sample"], &t, &txt, None).unwrap());
    let (err, base_err) = (
        max_abs_diff(&out, &g["unet.out"]),
        max_abs_diff(&base, &g["unet.out_without_lora"]),
    );
    eprintln!(
        "lora: out {err:.2e}, adapters off {base_err:.2e} (LoRA moves the output by {:.2})",
        max_abs_diff(&g["unet.out"], &g["unet.out_without_lora"])
    );
    assert!(err <= TOL && base_err <= TOL, "{err} {base_err}");
}

/// `lora_layers` lists exactly the layers (and base shapes) of diffusers' 79-module LoRA on
/// sd1, without weights; targets match at dot boundaries only; a target matching nothing is
/// an error naming it.
#[test]
fn lora_layers_match_the_peft_file() {
    let (cfg, _) = unet_fixture("sd1");
    let layers = cfg.lora_layers(&DEFAULT_LORA_TARGETS).unwrap();
    let (adapters, _) = peft_lora();
    let mut want: Vec<(String, Vec<usize>)> = adapters
        .iter()
        .filter_map(|(k, a)| {
            let path = k.strip_suffix(".lora_A.weight")?;
            let b = &adapters[&format!("{path}.lora_B.weight")];
            let mut shape = vec![b.dims()[0]];
            shape.extend(&a.dims()[1..]);
            Some((path.to_string(), shape))
        })
        .collect();
    let mut got = layers.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let q = cfg.lora_layers(&["attn1.to_q"]).unwrap();
    assert!(
        q.len() == 4 && q.iter().all(|(p, _)| p.ends_with(".attn1.to_q")),
        "{q:?}"
    );
    let err = cfg.lora_layers(&["o_q"]).unwrap_err().to_string();
    assert!(err.contains("'o_q'") && err.contains("matches no layer"), "{err}");
    let time = cfg.lora_layers(&["time_embedding.linear_1"]).unwrap();
    assert_eq!(time, vec![("time_embedding.linear_1".to_string(), vec![64, 16])]);
}

/// f16 weights: the UNet computes in them, takes and returns f32, and stays close to the f32
/// golden (the timestep embedding is f32 whatever the dtype). bf16 only where the device has
/// a bf16 matmul (candle's CPU backend has none).
#[test]
fn half_precision_weights_run_close_to_f32() {
    let (cfg, params) = unet_fixture("sdxl");
    let g = golden("sdxl/golden.safetensors");
    let unet = UNet::new(cfg, &converted(&params, DType::F16), None).unwrap();
    assert_eq!(unet.dtype(), DType::F16);
    let out = unet
        .forward(&g["unet.sample"], &timesteps(&g), &text(&g), None)
        .unwrap();
    assert_eq!(out.dtype(), DType::F32);
    let err = max_abs_diff(&out, &g["unet.out"]) / max_abs(&g["unet.out"]);
    eprintln!("sdxl in f16: relative max error {err:.2e}");
    assert!(err < 1e-2, "{err}");
}

/// Loading never yields a silently different model: an unused, missing or misshapen tensor,
/// mixed dtypes, or LoRA tensors without LoRA are errors naming the tensor.
#[test]
fn loading_rejects_mismatched_weights() {
    let (cfg, params) = unet_fixture("sd1");
    let build = |p: &Params| UNet::new(cfg.clone(), p, None).err().map(|e| e.to_string());
    let mut p = params.clone();
    p.insert(
        "extra.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(build(&p).unwrap().contains("'extra.weight' is not used"));
    let mut p = params.clone();
    p.remove("mid_block.attentions.0.proj_in.bias");
    assert!(build(&p).unwrap().contains("mid_block.attentions.0.proj_in.bias"));
    let mut p = params.clone();
    p.insert(
        "conv_in.bias".into(),
        Tensor::zeros(15, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = build(&p).unwrap();
    assert!(err.contains("conv_in.bias") && err.contains("shape"), "{err}");
    let mut p = params.clone();
    p.insert("conv_in.bias".into(), p["conv_in.bias"].to_dtype(DType::F16).unwrap());
    assert!(build(&p).unwrap().contains("conv_in.bias"));
    let (adapters, _) = peft_lora();
    let mut p = params.clone();
    p.extend(adapters);
    assert!(build(&p).unwrap().contains("lora_A.weight' is not used"));
}

/// Configuration errors name the key or block type and the file.
#[test]
fn config_rejects_what_is_not_implemented() {
    let path = fixture("sd1/unet/config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let with = |key: &str, value: &str| {
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v[key] = serde_json::from_str(value).unwrap();
        UNetConfig::from_json(&v.to_string()).unwrap_err().to_string()
    };
    let err = with("down_block_types", r#"["DownBlock2D", "AttnDownBlock2D"]"#);
    assert!(err.contains("'AttnDownBlock2D'"), "{err}");
    for (key, value) in [
        ("class_embed_type", r#""timestep""#),
        ("only_cross_attention", "true"),
        ("dual_cross_attention", "true"),
        ("addition_embed_type", r#""text""#),
        ("num_attention_heads", "8"),
        ("resnet_time_scale_shift", r#""scale_shift""#),
        ("mid_block_type", r#""UNetMidBlock2D""#),
        ("attention_head_dim", "[8, 8, 8]"),
        ("attention_head_dim", "5"),
        ("encoder_hid_dim", "32"),
    ] {
        let err = with(key, value);
        assert!(err.contains(key) || err.contains("heads"), "{key}: {err}");
    }
    let err = with("some_new_key", "1");
    assert!(err.contains("some_new_key"), "{err}");
    let dir = std::env::temp_dir().join(format!("dcm-unet-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.json");
    std::fs::write(&file, text.replace("\"UpBlock2D\"", "\"AttnUpBlock2D\"")).unwrap();
    let err = UNetConfig::from_file(&file).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains("config.json") && err.contains("'AttnUpBlock2D'"), "{err}");
}

/// Forward-time errors: SDXL without pooled text or time ids names what is missing; a
/// guidance embedding for a UNet without `time_cond_proj_dim`; wrong context width.
#[test]
fn forward_rejects_missing_conditioning() {
    let (cfg, params) = unet_fixture("sdxl");
    let g = golden("sdxl/golden.safetensors");
    let unet = UNet::new(cfg, &params, None).unwrap();
    let t = timesteps(&g);
    let no_pooled = TextEmbedding {
        pooled: None,
        ..text(&g)
    };
    let err = unet
        .forward(&g["unet.sample"], &t, &no_pooled, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("pooled"), "{err}");
    let no_ids = TextEmbedding {
        time_ids: None,
        ..text(&g)
    };
    let err = unet
        .forward(&g["unet.sample"], &t, &no_ids, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("time ids"), "{err}");
    let cond = Tensor::zeros((3, 32), DType::F32, &Device::Cpu).unwrap();
    let err = unet
        .forward(&g["unet.sample"], &t, &text(&g), Some(&cond))
        .unwrap_err()
        .to_string();
    assert!(err.contains("time_cond_proj_dim"), "{err}");
    let sd1 = golden("sd1/golden.safetensors");
    let narrow_tokens = TextEmbedding {
        tokens: sd1["unet.encoder_hidden_states"].clone(),
        ..text(&g)
    };
    let err = unet
        .forward(&g["unet.sample"], &t, &narrow_tokens, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokens"), "{err}");
    assert!(unet.forward(&g["unet.sample"], &t[..2], &text(&g), None).is_err());
}

/// SD 1.5's and SDXL's real UNet configurations (as on the Hub) resolve, and LoRA at rank 64
/// on the default targets has the parameter counts of the published LCM-LoRA files
/// (67.25 M and 196.75 M, docs/SD_FORMATS.md, "LoRA targets"), computed from the configurations alone.
#[test]
fn real_configs_give_the_published_lora_sizes() {
    let sd15 = r#"{"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false, "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
        "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}"#;
    let sdxl = r#"{"_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280], "center_input_sample": false, "class_embed_type": null,
        "class_embeddings_concat": false, "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 2048,
        "cross_attention_norm": null, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1, "dual_cross_attention": false, "encoder_hid_dim": null, "encoder_hid_dim_type": null,
        "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
        "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": null, "num_class_embeds": null,
        "only_cross_attention": false, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
        "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": false, "resnet_time_scale_shift": "default",
        "sample_size": 128, "time_cond_proj_dim": null, "time_embedding_act_fn": null, "time_embedding_dim": null,
        "time_embedding_type": "positional", "timestep_post_act": null, "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": null,
        "use_linear_projection": true}"#;
    let rank = 64;
    for (text, want) in [(sd15, 67_252_224usize), (sdxl, 196_751_360)] {
        let cfg = UNetConfig::from_json(text).unwrap();
        let adapted = cfg.lora_layers(&DEFAULT_LORA_TARGETS).unwrap();
        // A: r × (in·kh·kw), B: out × r.
        let count: usize = adapted
            .iter()
            .map(|(_, s)| rank * s[1..].iter().product::<usize>() + s[0] * rank)
            .sum();
        eprintln!(
            "{} adapted layers, {count} LoRA parameters at rank {rank}",
            adapted.len()
        );
        assert_eq!(count, want);
    }
}

/// CPU inference takes the fused kernels (convolutions on their wide path, attention, linear
/// layers, GEGLU, GroupNorm + SiLU); on a UNet whose layers are wide enough for every one of
/// them, its output is the generic ops' (what training and other devices run).
#[test]
fn fused_kernels_match_the_generic_ops() {
    use crate::nets::kernels::with_generic_ops;
    use crate::nets::sd::unet_init::random_unet_params;
    use crate::runtime::noise::{seeded, standard_normal};
    let cfg = UNetConfig {
        block_out_channels: vec![96, 192],
        down_block_types: vec!["CrossAttnDownBlock2D".into(), "DownBlock2D".into()],
        up_block_types: vec!["UpBlock2D".into(), "CrossAttnUpBlock2D".into()],
        layers_per_block: crate::nets::sd::unet_config::PerBlock::One(1),
        cross_attention_dim: crate::nets::sd::unet_config::PerBlock::One(32),
        ..UNetConfig::default()
    };
    let mut rng = seeded(3);
    let params = random_unet_params(&cfg, &mut rng).unwrap();
    let unet = UNet::new(cfg, &params, None).unwrap();
    let x = standard_normal(&mut rng, &[2, 4, 12, 12], &Device::Cpu).unwrap();
    let text = TextEmbedding {
        tokens: standard_normal(&mut rng, &[2, 7, 32], &Device::Cpu).unwrap(),
        pooled: None,
        time_ids: None,
    };
    let fused = unet.forward(&x, &[10.0, 700.0], &text, None).unwrap();
    let generic = with_generic_ops(|| unet.forward(&x, &[10.0, 700.0], &text, None).unwrap());
    let err = max_abs_diff(&fused, &generic);
    eprintln!("fused vs generic: {err:.2e} (|out| ≤ {:.2})", max_abs(&generic));
    assert!(err <= 1e-5 * max_abs(&generic).max(1.0), "{err}");
}
