//! Fixture access shared by the SD tests (`tests/fixtures/sd/`).

use crate::diffusion::condition::TextEmbedding;
use crate::nets::layers::Params;
use crate::nets::sd::unet_config::UNetConfig;
use crate::nets::sd::weights::load_safetensors;
use candle_core::{DType, Tensor};
use std::path::PathBuf;

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sd")
        .join(rel)
}

/// `<model>/golden.safetensors`, or another file under the fixtures.
pub fn golden(rel: &str) -> Params {
    load_safetensors(&fixture(rel)).unwrap()
}

pub fn unet_fixture(model: &str) -> (UNetConfig, Params) {
    let cfg = UNetConfig::from_file(&fixture(&format!("{model}/unet/config.json"))).unwrap();
    let params = load_safetensors(&fixture(&format!("{model}/unet/diffusion_pytorch_model.safetensors"))).unwrap();
    (cfg, params)
}

/// `unet.timestep` (int64) as diffusers timesteps.
pub fn timesteps(g: &Params) -> Vec<f64> {
    g["unet.timestep"]
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// The UNet's text inputs of a golden file (`encoder_hidden_states`, SDXL's `text_embeds`, `time_ids`).
pub fn text(g: &Params) -> TextEmbedding {
    TextEmbedding {
        tokens: g["unet.encoder_hidden_states"].clone(),
        pooled: g.get("unet.text_embeds").cloned(),
        time_ids: g.get("unet.time_ids").cloned(),
    }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
    d.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

pub fn max_abs(a: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    a.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

/// Every tensor converted to `dtype`.
pub fn converted(params: &Params, dtype: DType) -> Params {
    params
        .iter()
        .map(|(k, t)| (k.clone(), t.to_dtype(dtype).unwrap()))
        .collect()
}
