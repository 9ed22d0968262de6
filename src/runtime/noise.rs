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

/// The initial noise x_T of an evaluation with `seed`.
pub fn eval_noise_rng(seed: u64) -> Rng {
    seeded(1000u64.wrapping_add(seed))
}

/// The fresh noise a multistep sampler injects between steps, for an evaluation with `seed`:
/// a stream apart from `eval_noise_rng`'s, so the first re-noise never repeats x_T.
pub fn renoise_rng(seed: u64) -> Rng {
    seeded(2000u64.wrapping_add(seed))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// x_T and the sampler's re-noise come from different streams (sharing one made the
    /// first "fresh" noise equal x_T).
    #[test]
    fn evaluation_streams_are_independent() {
        for seed in [0, 1, 7] {
            let x_t = standard_normal(&mut eval_noise_rng(seed), 64, &Device::Cpu).unwrap();
            let z = standard_normal(&mut renoise_rng(seed), 64, &Device::Cpu).unwrap();
            let (a, b) = (x_t.to_vec1::<f32>().unwrap(), z.to_vec1::<f32>().unwrap());
            assert!(a.iter().zip(&b).all(|(p, q)| p != q), "seed {seed}");
        }
        assert_ne!(
            standard_normal(&mut eval_noise_rng(1), 4, &Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            standard_normal(&mut eval_noise_rng(0), 4, &Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
    }
}
