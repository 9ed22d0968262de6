//! LoRA files as other tools write them, against `tests/fixtures/sd/lora_interop/`
//! (scripts/make_lora_interop.py): ldm names as diffusers' single-file converter reads them,
//! ldm-named kohya LoRAs with mixed ranks equal to their diffusers-named twins and to
//! diffusers' UNet output, text-encoder parts, and the metadata clients classify files by.

use crate::diffusion::prediction::Prediction;
use crate::nets::layers::Params;
use crate::nets::lora::LoraConfig;
use crate::nets::sd::ldm_names::LdmUnetNames;
use crate::nets::sd::lora_files::{
    export_kohya, import, KohyaNames, KohyaOptions, LoraFile, LoraLayout, TextEncoderParts,
};
use crate::nets::sd::lora_metadata::LoraInfo;
use crate::nets::sd::test_util::*;
use crate::nets::sd::unet::UNet;
use crate::nets::sd::weights::load_safetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const TOL: f64 = 1e-4;

fn interop(file: &str) -> PathBuf {
    fixture(&format!("lora_interop/{file}"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dcm-lora-interop-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn import_of(model: &str, kind: &str) -> LoraFile {
    let cfg = unet_fixture(model).0;
    import(
        &interop(&format!("{model}_{kind}.safetensors")),
        &cfg,
        TextEncoderParts::Refuse,
    )
    .unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v = t
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

fn assert_same(a: &Params, b: &Params) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in a {
        assert_eq!((t.dims(), t.dtype()), (b[k].dims(), b[k].dtype()), "{k}");
        assert!(bits(t) == bits(&b[k]), "{k} differs");
    }
}

/// Every parameter's ldm name is the one diffusers' `convert_ldm_unet_checkpoint` maps back to
/// it (the script checked each renamed tensor round-trips), for all three fixtures.
#[test]
fn ldm_names_match_diffusers_single_file_converter() {
    let text = std::fs::read_to_string(interop("ldm_names.json")).unwrap();
    let golden: BTreeMap<String, BTreeMap<String, String>> = serde_json::from_str(&text).unwrap();
    for model in ["sd1", "sd2", "sdxl"] {
        let names = LdmUnetNames::new(&unet_fixture(model).0).unwrap();
        let ours: BTreeMap<String, String> = names.params().iter().cloned().collect();
        assert_eq!(ours, golden[model], "{model}");
    }
}

/// The ldm-named and the diffusers-named kohya file give the same adapters bit for bit
/// (layers of rank 1 zero-padded to rank 2), and the UNet with them gives
/// diffusers' output with either file loaded.
#[test]
fn ldm_named_twin_imports_to_the_same_adapters() {
    let g = golden("lora_interop/golden.safetensors");
    for model in ["sd1", "sdxl"] {
        let (ldm, diffusers) = (import_of(model, "ldm"), import_of(model, "diffusers"));
        assert_eq!(
            (ldm.layout, diffusers.layout),
            (LoraLayout::KohyaLdm, LoraLayout::Kohya)
        );
        assert_eq!(ldm.cfg, LoraConfig { rank: 2, alpha: 3.0 }, "{model}");
        assert_eq!(
            (ldm.cfg, &ldm.targets, &ldm.padded),
            (diffusers.cfg, &diffusers.targets, &diffusers.padded)
        );
        // Rank 1 at alpha 1.5 is the scale of rank 2 at alpha 3: padding alone, no folding.
        assert!(!ldm.padded.is_empty() && ldm.rescaled.is_empty(), "{model}");
        assert_same(&ldm.params, &diffusers.params);
        let (cfg, mut params) = unet_fixture(model);
        params.extend(converted(&ldm.params, DType::F32));
        let unet = UNet::new(cfg, &params, Some(&ldm.unet_lora())).unwrap();
        let at = |k: &str| g[&format!("{model}.{k}")].clone();
        let text = crate::diffusion::condition::TextEmbedding {
            tokens: at("encoder_hidden_states"),
            pooled: g.get(&format!("{model}.text_embeds")).cloned(),
            time_ids: g.get(&format!("{model}.time_ids")).cloned(),
        };
        let t: Vec<f64> = at("timestep").to_dtype(DType::F64).unwrap().to_vec1().unwrap();
        let out = unet.forward(&at("sample"), &t, &text, None).unwrap();
        let err = max_abs_diff(&out, &at("out"));
        eprintln!("{model}: UNet with the ldm-named LoRA vs diffusers {err:.2e}");
        assert!(err <= TOL, "{model}: {err}");
        assert!(
            max_abs_diff(&at("out"), &at("out_without_lora")) > 100.0 * TOL,
            "{model}"
        );
    }
}

/// `[out, in·k·k]` of a factor product, in f64.
fn product(up: &Tensor, down: &Tensor) -> Tensor {
    let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let r = down.dims()[0];
    let up = f(up).reshape((up.dims()[0], r)).unwrap();
    let down = f(down).reshape((r, ())).unwrap();
    up.matmul(&down).unwrap()
}

/// Each module's imported update (α/R)·B·A equals the file's own (alpha_m/r_m)·up·down,
/// whatever its rank: zero-padding changes no ΔW (exactly, in f64).
#[test]
fn mixed_rank_import_equals_the_files_delta_w() {
    let raw = load_safetensors(&interop("sd1_ldm.safetensors")).unwrap();
    let lora = import_of("sd1", "ldm");
    let names = LdmUnetNames::new(&unet_fixture("sd1").0).unwrap();
    let mut ranks = std::collections::BTreeSet::new();
    for module in &lora.targets {
        let key = format!("lora_unet_{}", names.to_ldm(module).unwrap().replace('.', "_"));
        let (down, up) = (
            &raw[&format!("{key}.lora_down.weight")],
            &raw[&format!("{key}.lora_up.weight")],
        );
        let alpha = raw[&format!("{key}.alpha")].to_scalar::<f32>().unwrap() as f64;
        ranks.insert(down.dims()[0]);
        let want = (product(up, down) * (alpha / down.dims()[0] as f64)).unwrap();
        let (a, b) = (
            &lora.params[&format!("{module}.lora_A.weight")],
            &lora.params[&format!("{module}.lora_B.weight")],
        );
        let got = (product(b, a) * lora.cfg.scale()).unwrap();
        let scale = max_abs(&want).max(1e-30);
        assert!(max_abs_diff(&got, &want) / scale <= 1e-12, "{module}");
    }
    assert_eq!(ranks.into_iter().collect::<Vec<_>>(), [1, 2]);
}

/// A file with text-encoder keys is refused by default, naming the key and the flag; with
/// `Ignore` its UNet part is imported as if the keys were absent.
#[test]
fn text_encoder_parts_are_refused_or_ignored() {
    let mut tensors = load_safetensors(&interop("sd1_ldm.safetensors")).unwrap();
    let te = "lora_te_text_model_encoder_layers_0_mlp_fc1";
    tensors.insert(
        format!("{te}.lora_down.weight"),
        Tensor::zeros((2, 32), DType::F16, &Device::Cpu).unwrap(),
    );
    tensors.insert(format!("{te}.alpha"), Tensor::new(2f32, &Device::Cpu).unwrap());
    let dir = scratch("te");
    let path = dir.join("with_te.safetensors");
    std::fs::write(&path, safetensors::serialize(tensors, None).unwrap()).unwrap();
    let cfg = unet_fixture("sd1").0;
    let err = import(&path, &cfg, TextEncoderParts::Refuse).unwrap_err().to_string();
    assert!(
        !err.contains('\n') && err.contains(te) && err.contains("--lora-text-encoder ignore"),
        "{err}"
    );
    let lora = import(&path, &cfg, TextEncoderParts::Ignore).unwrap();
    assert_eq!(lora.ignored, [format!("{te}.alpha"), format!("{te}.lora_down.weight")]);
    assert_same(&lora.params, &import_of("sd1", "ldm").params);
    assert!("keep"
        .parse::<TextEncoderParts>()
        .unwrap_err()
        .to_string()
        .contains("--lora-text-encoder keep"));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn header_metadata(path: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

/// The kohya file says which base model it is for, as kohya sd-scripts and ModelSpec spell it
/// (A1111 sorts LoRAs by `ss_base_model_version` / `ss_v2`): sd1, sd2 with v-prediction,
/// sdxl. The file still imports, and the same adapters give the same bytes.
#[test]
fn kohya_metadata_names_the_base_model() {
    let dir = scratch("meta");
    let cases = [
        (
            "sd1",
            Prediction::Epsilon,
            "sd_v1",
            "False",
            "stable-diffusion-v1/lora",
            "512x512",
        ),
        (
            "sd2",
            Prediction::V,
            "sd_v2_v",
            "True",
            "stable-diffusion-v2-768-v/lora",
            "768x768",
        ),
        (
            "sdxl",
            Prediction::Epsilon,
            "sdxl_base_v1-0",
            "False",
            "stable-diffusion-xl-v1-base/lora",
            "1024x1024",
        ),
    ];
    for (model, prediction, version, v2, arch, side) in cases {
        let cfg = unet_fixture(model).0;
        let layers = cfg.lora_layers(&["to_q"]).unwrap();
        let mut adapters = Params::new();
        let lora = LoraConfig { rank: 2, alpha: 3.0 };
        for (path, shape) in &layers {
            crate::nets::lora::init_adapters(&mut adapters, path, shape, lora, &mut crate::runtime::noise::seeded(1))
                .unwrap();
        }
        let info = LoraInfo {
            prediction,
            title: format!("dcm test {model}"),
            description: "a test LoRA of a tiny teacher".into(),
            resolution: None,
        };
        let opts = KohyaOptions {
            names: KohyaNames::Ldm,
            info: Some(info),
        };
        let path = dir.join(format!("{model}.safetensors"));
        export_kohya(&path, &cfg, &adapters, lora, &opts).unwrap();
        let meta = header_metadata(&path);
        let expect = [
            ("format", "pt"),
            ("ss_base_model_version", version),
            ("ss_v2", v2),
            ("ss_network_module", "networks.lora"),
            ("ss_network_dim", "2"),
            ("ss_network_alpha", "3.0"),
            ("modelspec.sai_model_spec", "1.0.0"),
            ("modelspec.architecture", arch),
            ("modelspec.resolution", side),
            ("modelspec.title", &format!("dcm test {model}")),
            ("modelspec.description", "a test LoRA of a tiny teacher"),
        ];
        for (k, v) in expect {
            assert_eq!(meta.get(k).map(String::as_str), Some(v), "{model}: {k}");
        }
        let back = import(&path, &cfg, TextEncoderParts::Refuse).unwrap();
        assert_eq!((back.layout, back.cfg), (LoraLayout::KohyaLdm, lora));
        let first = std::fs::read(&path).unwrap();
        export_kohya(&path, &cfg, &adapters, lora, &opts).unwrap();
        assert!(
            first == std::fs::read(&path).unwrap(),
            "{model}: not byte-deterministic"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
