//! Fresh random weights for a UNet configuration (benchmarks at the real size without a
//! download): every linear and conv weight and its bias uniform(±1/√fan_in) from the seeded
//! generator, as `Init` and PyTorch's defaults draw them; norm scales 1 and shifts 0.

use crate::nets::layers::{Init, Params};
use crate::nets::sd::unet_config::UNetConfig;
use crate::runtime::noise::Rng;
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;

/// Every tensor `cfg`'s UNet takes (`UNetConfig::tensor_shapes`), in f32 on the CPU.
pub fn random_unet_params(cfg: &UNetConfig, rng: &mut Rng) -> Result<Params> {
    let shapes = cfg.tensor_shapes()?;
    // A layer's fan-in from its weight of rank ≥ 2: [out, in] or [out, in, k, k].
    let fan_in: BTreeMap<&str, usize> = shapes
        .iter()
        .filter(|(_, s)| s.len() >= 2)
        .filter_map(|(name, s)| Some((name.strip_suffix(".weight")?, s[1..].iter().product())))
        .collect();
    let mut init = Init::new(rng);
    for (name, shape) in &shapes {
        let (layer, kind) = name.rsplit_once('.').unwrap_or((name, ""));
        match fan_in.get(layer) {
            Some(&f) => init.uniform(name, shape, 1.0 / (f as f64).sqrt())?,
            None => {
                // GroupNorm / LayerNorm: identity affine, as PyTorch initialises them.
                let value = if kind == "weight" { 1.0 } else { 0.0 };
                let t = Tensor::full(value as f32, shape.as_slice(), &Device::Cpu)?;
                init.params.insert(name.clone(), t);
            }
        }
    }
    Ok(init.params)
}
