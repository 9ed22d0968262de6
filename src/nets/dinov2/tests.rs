//! Parity with dgm-eval on the random-weight fixtures of `tests/fixtures/dinov2/`
//! (scripts/make_dinov2_fixture.py: dgm-eval's loader and transform around Meta's torch-hub
//! network), and the errors of bad folders.

use super::config::Dinov2Config;
use super::pos_embed::resize_grid;
use super::preprocess::pixel_values;
use super::Dinov2;
use crate::nets::feature_net::FeatureNet;
use crate::nets::layers::Params;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const TOL: f64 = 1e-4;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dinov2")
        .join(rel)
}

fn golden() -> Params {
    candle_core::safetensors::load(fixture("golden.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

/// The fixture images in dgm-eval's (sorted) order, each `[1, 3, H, W]` in [0, 1].
fn images() -> Vec<Tensor> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixture("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert_eq!(paths.len(), 3);
    paths
        .iter()
        .map(|p| {
            let rgb = image::open(p).unwrap().to_rgb8();
            let (w, h) = (rgb.width() as usize, rgb.height() as usize);
            let t = Tensor::from_vec(rgb.into_raw(), (h, w, 3), &Device::Cpu).unwrap();
            (t.permute((2, 0, 1)).unwrap().to_dtype(DType::F32).unwrap() / 255.0)
                .unwrap()
                .unsqueeze(0)
                .unwrap()
        })
        .collect()
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// `max |a − b| / max |b|`.
fn relative(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap()) / max_abs(b)
}

fn features(model: &str) -> Tensor {
    let net = Dinov2::from_dir(&fixture(model), &Device::Cpu).unwrap();
    let rows: Vec<Tensor> = images().iter().map(|im| net.features(im).unwrap()).collect();
    Tensor::cat(&rows, 0).unwrap()
}

/// dgm-eval's 224×224 PIL-bicubic resize and ImageNet normalisation, pixel for pixel (every
/// 8th row and column of each image; images that shrink, grow and keep a side).
#[test]
fn pixel_values_match_dgm_eval() {
    let want = &golden()["pixel_values_every_8th"];
    for (i, image) in images().iter().enumerate() {
        let got = pixel_values(image, &Device::Cpu).unwrap();
        let sub = got
            .index_select(&Tensor::arange_step(0u32, 224, 8, &Device::Cpu).unwrap(), 2)
            .unwrap()
            .index_select(&Tensor::arange_step(0u32, 224, 8, &Device::Cpu).unwrap(), 3)
            .unwrap();
        let err = max_abs(&(sub - want.narrow(0, i, 1).unwrap()).unwrap());
        assert!(err < 1e-6, "image {i}: pixel values {err} apart");
    }
}

/// Features of a model whose 20×20 position grid is resized to 16×16 (the interpolation
/// path real checkpoints take), and of a SwiGLU (ViT-g style) model used at its own grid.
#[test]
fn features_match_dgm_eval() {
    let g = golden();
    for model in ["model", "model_swiglu"] {
        let got = features(model);
        let err = relative(&got, &g[&format!("{model}.features")]);
        eprintln!("{model}: relative error {err:.2e}");
        assert!(err <= TOL, "{model}: features {err:.2e} relative from dgm-eval's");
    }
}

/// The hub network's offset scale factor is what dgm-eval computes, and it matters:
/// transformers 5's own size-based resize gives features far outside the tolerance, while
/// without a resize (the SwiGLU model) both agree.
#[test]
fn grid_resize_follows_the_hub_not_transformers() {
    let g = golden();
    let gap = relative(&features("model"), &g["model.transformers_features"]);
    assert!(gap > 10.0 * TOL, "the resize rule made no difference ({gap:.2e})");
    let same = relative(&features("model_swiglu"), &g["model_swiglu.transformers_features"]);
    assert!(same <= TOL, "no resize, yet {same:.2e} from transformers");
}

/// torch's bicubic `interpolate` with the scale factor `(g + 0.1)/M`: 37→16 (the real
/// checkpoints at 224 pixels) and an enlargement 8→16 (edge taps clamped).
#[test]
fn position_resize_matches_torch() {
    let g = golden();
    for (m, to) in [(37, 16), (8, 16)] {
        let grid = g[&format!("grid{m}")].squeeze(0).unwrap().permute((1, 2, 0)).unwrap();
        let want = g[&format!("grid{m}_to{to}")]
            .squeeze(0)
            .unwrap()
            .permute((1, 2, 0))
            .unwrap();
        let got = resize_grid(&grid, to, to).unwrap();
        let err = max_abs(&(got - want).unwrap());
        assert!(err < 1e-5, "{m}→{to}: {err}");
    }
}

/// A batch gives the rows its images give one by one, and the sizes are the config's.
#[test]
fn batches_are_row_independent() {
    let net = Dinov2::from_dir(&fixture("model"), &Device::Cpu).unwrap();
    assert_eq!((net.name(), net.dim()), ("dinov2", 16));
    let one = images().remove(2);
    let flipped = one.flip(&[3]).unwrap();
    let batch = Tensor::cat(&[&one, &flipped, &one], 0).unwrap();
    let rows = net.features(&batch).unwrap();
    assert_eq!(rows.dims(), [3, 16]);
    let single = net.features(&one).unwrap();
    assert!(relative(&rows.narrow(0, 2, 1).unwrap(), &single) < 1e-6);
    assert!(relative(&rows.narrow(0, 1, 1).unwrap(), &single) > 1e-3);
}

/// A scratch copy of the `model` fixture, its tensors edited by `edit`, its config by `cfg`.
fn broken_folder(
    tag: &str,
    cfg: impl Fn(&mut serde_json::Value),
    edit: impl Fn(&mut HashMap<String, Tensor>),
) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dcm-dinov2-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(fixture("model/config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg(&mut json);
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let mut tensors = candle_core::safetensors::load(fixture("model/model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    let err = format!(
        "{:#}",
        Dinov2::from_dir(dir, &Device::Cpu).err().expect("loading must fail")
    );
    assert!(!err.contains('\n'), "one-line error: {err}");
    err
}

/// Missing files, configs dcm cannot run and tensors that do not fit are refused in one
/// line naming the file and the key or tensor.
#[test]
fn bad_folders_are_refused_by_name() {
    let keep = |_: &mut serde_json::Value| {};
    let untouched = |_: &mut HashMap<String, Tensor>| {};
    let cases: Vec<(PathBuf, &[&str])> = vec![
        (fixture("no-such-model"), &["config.json"]),
        (
            broken_folder(
                "registers",
                |c| c["model_type"] = "dinov2_with_registers".into(),
                untouched,
            ),
            &["config.json", "dinov2_with_registers"],
        ),
        (
            broken_folder("act", |c| c["hidden_act"] = "relu".into(), untouched),
            &["config.json", "hidden_act"],
        ),
        (
            broken_folder("missing", keep, |t| {
                t.remove("encoder.layer.1.layer_scale2.lambda1");
            }),
            &["model.safetensors", "encoder.layer.1.layer_scale2.lambda1"],
        ),
        (
            broken_folder("extra", keep, |t| {
                t.insert(
                    "encoder.layer.2.norm1.weight".into(),
                    Tensor::zeros(16, DType::F32, &Device::Cpu).unwrap(),
                );
            }),
            &["model.safetensors", "encoder.layer.2.norm1.weight"],
        ),
        (
            broken_folder("grid", |c| c["image_size"] = 224.into(), untouched),
            &["model.safetensors", "embeddings.position_embeddings"],
        ),
        (
            broken_folder("swiglu", |c| c["use_swiglu_ffn"] = true.into(), untouched),
            &["model.safetensors", "weights_in"],
        ),
    ];
    for (dir, needles) in cases {
        let err = load_error(&dir);
        for needle in needles {
            assert!(err.contains(needle), "'{needle}' not in: {err}");
        }
    }
}

/// Inputs that are not RGB images in [0, 1] as floats are refused, not quietly converted.
#[test]
fn bad_images_are_refused() {
    let net = Dinov2::from_dir(&fixture("model"), &Device::Cpu).unwrap();
    let cpu = &Device::Cpu;
    let cases = [
        (
            Tensor::zeros((1, 1, 8, 8), DType::F32, cpu).unwrap(),
            "3 (RGB) channels",
        ),
        (Tensor::zeros((1, 3, 8, 8), DType::U8, cpu).unwrap(), "floating point"),
        (Tensor::full(f32::NAN, (1, 3, 8, 8), cpu).unwrap(), "non-finite"),
        (Tensor::zeros((0, 3, 8, 8), DType::F32, cpu).unwrap(), "empty"),
    ];
    for (images, needle) in cases {
        let err = format!("{:#}", net.features(&images).expect_err("must fail"));
        assert!(err.contains(needle) && !err.contains('\n'), "'{needle}' not in: {err}");
    }
}

/// The shipped config parses to the sizes the fixture script used.
#[test]
fn fixture_config_is_read() {
    let cfg = Dinov2Config::from_file(&fixture("model_swiglu/config.json")).unwrap();
    assert!(cfg.use_swiglu_ffn);
    assert_eq!((cfg.grid(), cfg.ffn_width()), (16, 48));
}
