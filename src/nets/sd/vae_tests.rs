//! Parity of the VAE with diffusers' goldens (`tests/fixtures/sd/{sd1,sdxl}`) and its loader's errors.

use crate::nets::layers::Params;
use crate::nets::sd::test_util::*;
use crate::nets::sd::vae::{AutoencoderKl, VaeConfig};
use crate::nets::sd::weights::load_safetensors;
use candle_core::{DType, Device, Tensor};

const TOL: f64 = 1e-4;

fn vae_fixture(model: &str) -> (VaeConfig, Params) {
    let cfg = VaeConfig::from_file(&fixture(&format!("{model}/vae/config.json"))).unwrap();
    let params = load_safetensors(&fixture(&format!("{model}/vae/diffusion_pytorch_model.safetensors"))).unwrap();
    (cfg, params)
}

/// Max errors of (mean, std, decoded) against the golden of `model`.
fn errors(vae: &AutoencoderKl, model: &str) -> [f64; 3] {
    let g = golden(&format!("{model}/golden.safetensors"));
    let (mean, std) = vae.encode(&g["vae.image"]).unwrap();
    let decoded = vae.decode(&g["vae.decode_latents"]).unwrap();
    [
        max_abs_diff(&mean, &g["vae.latent_mean"]),
        max_abs_diff(&std, &g["vae.latent_std"]),
        max_abs_diff(&decoded, &g["vae.decoded"]),
    ]
}

fn check_model(model: &str, scaling: f64) {
    let (cfg, params) = vae_fixture(model);
    let vae = AutoencoderKl::new(cfg, &params).unwrap();
    assert_eq!(vae.scaling_factor(), scaling);
    let [mean, std, dec] = errors(&vae, model);
    eprintln!("{model} vae: mean {mean:.2e}, std {std:.2e}, decoded {dec:.2e}");
    assert!(mean <= TOL && std <= TOL && dec <= TOL, "{model}: {mean} {std} {dec}");
}

#[test]
fn sd1_vae_matches_diffusers() {
    check_model("sd1", 0.18215);
}

#[test]
fn sdxl_vae_matches_diffusers() {
    check_model("sdxl", 0.13025);
}

/// f16 weights: encode and decode compute in f16 and return the caller's f32, close to the golden.
#[test]
fn half_precision_vae_runs_close_to_f32() {
    let (cfg, params) = vae_fixture("sd1");
    let vae = AutoencoderKl::new(cfg, &converted(&params, DType::F16)).unwrap();
    let g = golden("sd1/golden.safetensors");
    let [mean, std, dec] = errors(&vae, "sd1");
    let decoded = vae.decode(&g["vae.decode_latents"]).unwrap();
    assert_eq!(decoded.dtype(), DType::F32);
    eprintln!("sd1 vae in f16: mean {mean:.2e}, std {std:.2e}, decoded {dec:.2e}");
    assert!(mean < 1e-2 && std < 1e-2 && dec < 2e-2, "{mean} {std} {dec}");
}

/// Older diffusers checkpoints name the mid-block attention `query`, `key`, `value`,
/// `proj_attn`: read as `to_q`, `to_k`, `to_v`, `to_out.0`, same outputs.
#[test]
fn deprecated_attention_names_load() {
    let (cfg, params) = vae_fixture("sd1");
    let renamed: Params = params
        .into_iter()
        .map(|(k, t)| {
            let k = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (k, t)
        })
        .collect();
    assert!(renamed.contains_key("encoder.mid_block.attentions.0.proj_attn.weight"));
    let vae = AutoencoderKl::new(cfg, &renamed).unwrap();
    assert!(errors(&vae, "sd1").iter().all(|&e| e <= TOL));
}

/// An unused or missing tensor names it; unsupported configurations name the key.
#[test]
fn loading_rejects_mismatched_weights_and_configs() {
    let (cfg, params) = vae_fixture("sd1");
    let mut p = params.clone();
    p.insert(
        "decoder.extra".into(),
        Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = AutoencoderKl::new(cfg.clone(), &p).err().unwrap().to_string();
    assert!(err.contains("'decoder.extra' is not used"), "{err}");
    let mut p = params.clone();
    p.remove("quant_conv.weight");
    let err = AutoencoderKl::new(cfg.clone(), &p).err().unwrap().to_string();
    assert!(err.contains("quant_conv.weight"), "{err}");
    let no_quant = VaeConfig {
        use_quant_conv: false,
        ..cfg.clone()
    };
    let err = AutoencoderKl::new(no_quant, &params).err().unwrap().to_string();
    assert!(err.contains("'quant_conv.bias' is not used"), "{err}");
    let text = std::fs::read_to_string(fixture("sd1/vae/config.json")).unwrap();
    for (key, value) in [
        ("shift_factor", "0.1159"),
        (
            "down_block_types",
            r#"["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]"#,
        ),
        ("latents_mean", "[0.0, 0.0, 0.0, 0.0]"),
        ("unknown_key", "1"),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v[key] = serde_json::from_str(value).unwrap();
        let err = VaeConfig::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(
            err.contains(key) || err.contains("AttnDownEncoderBlock2D"),
            "{key}: {err}"
        );
    }
}
