//! Fixture folders and goldens of `tests/fixtures/sd/` for the unit tests.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sd")
        .join(model)
}

pub fn golden(model: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(model).join("golden.safetensors"), &Device::Cpu).unwrap()
}

/// `settings.prompts` (the prompts of the `encode_prompt.*` goldens) of a fixture's golden.json.
pub fn prompts(model: &str) -> Vec<String> {
    let text = std::fs::read_to_string(fixture(model).join("golden.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(json["settings"]["prompts"].clone()).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
    d.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

/// A scratch copy of a fixture pipeline (without goldens) to break.
pub fn copy_pipeline(model: &str, name: &str) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &target);
            } else if !path.to_string_lossy().contains("golden") {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("dcm-sdunit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy(&fixture(model), &dir);
    dir
}
