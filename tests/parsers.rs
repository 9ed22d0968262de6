//! Property-based robustness of every parser of user files: arbitrary corruptions
//! (truncation, byte flips, random bytes) of valid `.npy`, IDX, safetensors,
//! PNG and config files give `Err`, or a value that passed validation — never a panic.
//! Each property runs `CASES` cases (2,000 by default; `PROPTEST_CASES` overrides).

use candle_core::{Device, Tensor};
use dcm::data::{idx, npy};
use dcm::nets::mlp::{Mlp, MlpConfig};
use proptest::prelude::*;
use std::io::Write;

const CASES: u32 = 2000;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A corruption of `good`: truncate, flip bytes, or replace a slice with random bytes.
fn corrupt(good: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = good.len();
    prop_oneof![
        (0..n).prop_map({
            let g = good.clone();
            move |cut| g[..cut].to_vec()
        }),
        proptest::collection::vec((0..n, any::<u8>()), 1..8).prop_map({
            let g = good.clone();
            move |flips| {
                let mut b = g.clone();
                for (i, v) in flips {
                    b[i] = v;
                }
                b
            }
        }),
        proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

fn tmp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("dcm-prop-{}-{name}", std::process::id()));
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

fn npy_bytes() -> Vec<u8> {
    npy::encode(
        &Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap(),
    )
    .unwrap()
}

fn idx_bytes() -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3];
    b.extend(0..18u8);
    b
}

fn mlp_config() -> MlpConfig {
    MlpConfig {
        sample_shape: vec![2],
        hidden: 4,
        depth: 1,
        time_dim: 4,
        num_classes: 2,
        schedule: Default::default(),
    }
}

fn safetensors_bytes() -> Vec<u8> {
    let params = mlp_config().init(&mut dcm::runtime::noise::seeded(0)).unwrap();
    safetensors::serialize(params, None).unwrap()
}

fn png_bytes() -> Vec<u8> {
    let img = image::GrayImage::from_fn(4, 4, |x, y| image::Luma([(x * 40 + y) as u8]));
    let mut b = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png)
        .unwrap();
    b
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn npy_never_panics(bytes in corrupt(npy_bytes())) {
        if let Ok(t) = npy::decode(&bytes) {
            // Whatever decodes must be backed by the file's bytes (float32 or float64 payload).
            let n = t.elem_count();
            prop_assert!(bytes.len() >= 10 + 4 * n);
        }
    }

    #[test]
    fn idx_never_panics(bytes in corrupt(idx_bytes())) {
        let p = tmp_file("idx", &bytes);
        if let Ok(t) = idx::read_images(&p) {
            prop_assert!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| (0.0..=1.0).contains(v)));
        }
        let _ = idx::read_labels(&p);
    }

    #[test]
    fn gzip_idx_never_panics(bytes in corrupt({
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&idx_bytes()).unwrap();
        e.finish().unwrap()
    })) {
        let _ = idx::read_images(&tmp_file("idxgz", &bytes));
    }

    #[test]
    fn safetensors_weights_never_panic(bytes in corrupt(safetensors_bytes())) {
        let dir = std::env::temp_dir().join(format!("dcm-prop-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
        if let Ok(params) = dcm::models::model_dir::load_params(&dir) {
            let _ = Mlp::new(mlp_config(), &params);
        }
    }

    #[test]
    fn png_folder_never_panics(bytes in corrupt(png_bytes())) {
        let dir = std::env::temp_dir().join(format!("dcm-prop-png-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("0")).unwrap();
        std::fs::write(dir.join("0").join("a.png"), &bytes).unwrap();
        let _ = dcm::data::image_folder::read(&dir);
    }

    #[test]
    fn configs_never_panic(bytes in corrupt(serde_json::to_vec(&serde_json::json!({"net": mlp_config(), "data": "toy:moons", "autoencoder": null, "steps": 5, "seed": 0})).unwrap())) {
        let dir = std::env::temp_dir().join(format!("dcm-prop-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), &bytes).unwrap();
        if let Ok(cfg) = dcm::models::model_dir::load_config::<dcm::models::teacher::NetworkTeacherConfig>(&dir, dcm::models::model_dir::Kind::Teacher) {
            let _ = cfg.net.validate();
        }
    }
}
