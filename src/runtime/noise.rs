//! Seeded randomness: one portable generator (ChaCha8, stable across platforms
//! and crate versions) and Gaussian noise tensors drawn from it.

use anyhow::Result;
use candle_core::{Device, Shape, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

pub type Rng = rand_chacha::ChaCha8Rng;

pub fn seeded(seed: u64) -> Rng {
    Rng::seed_from_u64(seed)
}

/// The generator that draws a run's initial weights: the run's seed on stream 1
/// (stream 0 drives training), so initialisation and training never share draws.
pub fn init_rng(seed: u64) -> Rng {
    let mut rng = seeded(seed);
    rng.set_stream(1);
    rng
}

/// A tensor of i.i.d. standard normal float32 values.
pub fn standard_normal(rng: &mut Rng, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
    let shape = shape.into();
    crate::runtime::memory::ensure_fits(
        crate::runtime::memory::f32_bytes(shape.dims()),
        &format!("noise of shape {:?}", shape.dims()),
    )?;
    let v: Vec<f32> = (0..shape.elem_count()).map(|_| StandardNormal.sample(rng)).collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}
