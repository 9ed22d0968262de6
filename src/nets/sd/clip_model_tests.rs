//! `CLIPModel` parity against transformers' goldens in `tests/fixtures/sd/clip/`.

use super::clip_model::{ClipModel, ClipModelConfig};
use super::clip_preprocess::ClipImageProcessor;
use super::test_util::{fixture, golden, max_abs_diff};
use super::tokenizer::ClipTokenizer;
use crate::nets::layers::Params;
use crate::nets::sd::weights::load_safetensors;
use candle_core::{DType, Device, Tensor};

const TOL: f64 = 1e-4;

fn model() -> ClipModel {
    ClipModel::from_dir(&fixture("clip"), &Device::Cpu, None).unwrap()
}

fn prompts() -> Vec<String> {
    let text = std::fs::read_to_string(fixture("clip/golden.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(json["settings"]["prompts"].clone()).unwrap()
}

fn check(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let err = max_abs_diff(got, want);
    eprintln!("{what}: max |Δ| = {err:.3e}");
    assert!(err <= tol, "{what}: max |Δ| = {err:e} > {tol:e}");
}

/// `image_u8` `[H, W, 3]` as a `[3, H, W]` u8 tensor.
fn image_chw(g: &Params) -> Tensor {
    g["image_u8"].to_dtype(DType::U8).unwrap().permute((2, 0, 1)).unwrap()
}

#[test]
fn preprocessing_matches_clip_image_processor() {
    let g = golden("clip/golden.safetensors");
    let proc = ClipImageProcessor::from_file(&fixture("clip/preprocessor_config.json")).unwrap();
    let png = image::open(fixture("clip/image.png")).unwrap();
    let from_png = proc.preprocess(&png, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    check("pixel_values (png)", &from_png, &g["pixel_values"], TOL);
    check("pixel_values_pil (png)", &from_png, &g["pixel_values_pil"], TOL);
    let from_u8 = proc.preprocess_tensor(&image_chw(&g)).unwrap().unsqueeze(0).unwrap();
    assert_eq!(max_abs_diff(&from_u8, &from_png), 0.0);
    let floats = (image_chw(&g).to_dtype(DType::F32).unwrap() / 255.0).unwrap();
    let from_f32 = proc.preprocess_tensor(&floats).unwrap().unsqueeze(0).unwrap();
    assert_eq!(max_abs_diff(&from_f32, &from_png), 0.0);
}

#[test]
fn features_match_transformers() {
    let g = golden("clip/golden.safetensors");
    let m = model();
    check(
        "image_features",
        &m.image_embeds(&g["pixel_values"]).unwrap(),
        &g["image_features"],
        TOL,
    );
    check(
        "image_features_pil",
        &m.image_embeds(&g["pixel_values_pil"]).unwrap(),
        &g["image_features_pil"],
        TOL,
    );
    let ours = m.preprocess(&image_chw(&g)).unwrap().unsqueeze(0).unwrap();
    check(
        "image_features (our preprocessing)",
        &m.image_embeds(&ours).unwrap(),
        &g["image_features"],
        TOL,
    );
    let ids = m.tokenizer().encode_batch(&prompts()).unwrap();
    let want_ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    assert_eq!(ids.to_vec2::<u32>().unwrap(), want_ids.to_vec2::<u32>().unwrap());
    check("text_features", &m.text_embeds(&ids).unwrap(), &g["text_features"], TOL);
}

#[test]
fn clip_scores_match_transformers() {
    let g = golden("clip/golden.safetensors");
    let m = model();
    let p = prompts();
    let images = Tensor::stack(&vec![image_chw(&g); p.len()], 0).unwrap();
    let raw = m.clip_scores_raw(&images, &p).unwrap();
    let want_raw: Vec<f32> = g["clip_score_raw"].flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f32> = g["clip_score"].flatten_all().unwrap().to_vec1().unwrap();
    assert!(want_raw.iter().any(|s| *s < 0.0) && want_raw.iter().any(|s| *s > 0.0));
    for i in 0..p.len() {
        let err = (raw[i] - want_raw[i] as f64).abs();
        eprintln!("clip_score_raw[{i}] = {:.6}: |Δ| = {err:.3e}", raw[i]);
        assert!(err <= TOL, "clip_score_raw[{i}]");
        let one = m.clip_score(&images.narrow(0, i, 1).unwrap(), &p[i..=i]).unwrap();
        let err = (one - want[i] as f64).abs();
        eprintln!("clip_score[{i}] = {one:.6}: |Δ| = {err:.3e}");
        assert!(err <= TOL, "clip_score[{i}]");
    }
    let mean = want_raw.iter().map(|s| *s as f64).sum::<f64>() / p.len() as f64;
    let score = m.clip_score(&images, &p).unwrap();
    eprintln!(
        "clip_score(3 pairs) = {score:.6}, golden max(mean raw, 0) = {:.6}",
        mean.max(0.0)
    );
    assert!((score - mean.max(0.0)).abs() <= TOL);
    assert!(m.clip_score(&images, &p[..2]).is_err());
}

/// f16/bf16 loads compute in their dtype and stay near the f32 features.
#[test]
fn half_precision_stays_close() {
    let g = golden("clip/golden.safetensors");
    let ids = Tensor::new(
        g["input_ids"].to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    for (dtype, tol) in [(DType::F16, 0.02), (DType::BF16, 0.1)] {
        let m = ClipModel::from_dir(&fixture("clip"), &Device::Cpu, Some(dtype)).unwrap();
        let img = m.image_embeds(&g["pixel_values"]).unwrap();
        assert_eq!(img.dtype(), dtype);
        check(&format!("{dtype:?} image_features"), &img, &g["image_features"], tol);
        let txt = m.text_embeds(&ids).unwrap();
        check(&format!("{dtype:?} text_features"), &txt, &g["text_features"], tol);
    }
}

fn one_line(err: anyhow::Error) -> String {
    let s = format!("{err:#}");
    assert!(!s.contains('\n'), "one-line error: {s}");
    s
}

fn build(params: Params) -> anyhow::Result<ClipModel> {
    let dir = fixture("clip");
    let cfg = ClipModelConfig::from_file(&dir.join("config.json")).unwrap();
    let tok = ClipTokenizer::from_dir(&dir).unwrap();
    let proc = ClipImageProcessor::from_file(&dir.join("preprocessor_config.json")).unwrap();
    ClipModel::new(&cfg, params, tok, proc)
}

#[test]
fn wrong_folders_and_tensors_are_named() {
    let err = one_line(
        ClipModel::from_dir(&fixture("sd1/text_encoder"), &Device::Cpu, None)
            .err()
            .unwrap(),
    );
    assert!(err.contains("not a CLIPModel") && err.contains("config.json"), "{err}");

    let params = load_safetensors(&fixture("clip/model.safetensors")).unwrap();
    assert!(build(params.clone()).is_ok());
    let cases: [(&str, Vec<usize>); 4] = [
        ("vision_model.embeddings.patch_embedding.weight", vec![32, 3, 4, 4]),
        ("vision_model.post_layernorm.bias", vec![31]),
        ("visual_projection.weight", vec![15, 32]),
        ("logit_scale", vec![1]),
    ];
    for (key, shape) in cases {
        let mut bad = params.clone();
        bad.insert(key.into(), Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap());
        let err = one_line(build(bad).err().unwrap());
        assert!(err.contains(&format!("'{key}'")), "{err}");
    }
    let mut extra = params.clone();
    let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    extra.insert("vision_model.encoder.layers.2.mlp.fc1.bias".into(), t.clone());
    assert!(one_line(build(extra).err().unwrap()).contains("layers.2.mlp.fc1.bias"));
    let mut stray = params.clone();
    stray.insert("head.weight".into(), t);
    assert!(one_line(build(stray).err().unwrap()).contains("'head.weight'"));
    for key in [
        "vision_model.pre_layrnorm.weight",
        "text_projection.weight",
        "logit_scale",
    ] {
        let mut missing = params.clone();
        missing.remove(key);
        let err = one_line(build(missing).err().unwrap());
        assert!(err.contains(&format!("'{key}'")), "{err}");
    }
}
