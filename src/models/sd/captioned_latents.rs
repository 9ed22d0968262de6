//! Training batches of a captioned image folder for a Stable Diffusion student: each row a
//! draw `x₀ = scaling_factor · (μ + σ ε)` from its image's cached latent distribution (as
//! diffusers' training scripts sample `latent_dist` every step) and, as its condition, the
//! text encoding of its caption with the chosen unconditional input. An image of a kohya
//! `N_concept` folder counts N times in the draw.

use super::latents::LatentSet;
use super::pipeline::{Family, Pipeline};
use super::text::{NullText, PromptEncoder};
use crate::diffusion::condition::Condition;
use crate::runtime::device::Runtime;
use crate::runtime::noise::{standard_normal, Rng};
use crate::train::distill::TrainingData;
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use rand::Rng as _;

pub struct CaptionedLatents {
    latents: LatentSet,
    /// Each row index as many times as its image repeats: draws are uniform over this list.
    rows: Vec<u32>,
    encoder: PromptEncoder,
    null: NullText,
    force_zeros: bool,
    /// Pixel size `(H, W)` of the images (SDXL's size ids).
    image_hw: (usize, usize),
}

impl CaptionedLatents {
    /// Keeps `pipeline`'s text encoders loaded on `rt`, so each batch encodes its captions.
    pub fn new(
        pipeline: &Pipeline,
        rt: &Runtime,
        mut latents: LatentSet,
        null: NullText,
        resolution: usize,
    ) -> Result<Self> {
        // Rows are gathered with index_select, which needs contiguous storage.
        latents.mean = latents.mean.contiguous()?;
        latents.std = latents.std.contiguous()?;
        ensure!(
            latents.mean.dim(0)? == latents.captions.len() && !latents.captions.is_empty(),
            "{} latents for {} captions",
            latents.mean.dim(0)?,
            latents.captions.len()
        );
        ensure!(
            latents.repeats.len() == latents.captions.len(),
            "{} repeat counts for {} captions",
            latents.repeats.len(),
            latents.captions.len()
        );
        let rows = (0u32..)
            .zip(&latents.repeats)
            .flat_map(|(i, &n)| std::iter::repeat_n(i, n as usize))
            .collect::<Vec<u32>>();
        ensure!(
            rows.len() <= u32::MAX as usize,
            "the repeat counts add up to {} rows; at most {} are drawn from",
            rows.len(),
            u32::MAX
        );
        let force_zeros = matches!(
            pipeline.family(),
            Family::Sdxl {
                force_zeros_for_empty_prompt: true
            }
        );
        Ok(Self {
            encoder: PromptEncoder::load(pipeline, rt)?,
            latents,
            rows,
            null,
            force_zeros,
            image_hw: (resolution, resolution),
        })
    }
}

impl TrainingData for CaptionedLatents {
    fn sample_shape(&self) -> Vec<usize> {
        self.latents.mean.dims()[1..].to_vec()
    }

    /// Rows drawn uniformly with replacement (a repeated image as often as its repeat
    /// count), then one ε per latent element, both from `rng`.
    fn batch(&self, rng: &mut Rng, size: usize, device: &Device) -> Result<(Tensor, Condition)> {
        let idx: Vec<u32> = (0..size)
            // A u32 range draws as before repeats existed: seeded runs keep their batches.
            .map(|_| self.rows[rng.random_range(0..self.rows.len() as u32) as usize])
            .collect();
        let ids = Tensor::from_vec(idx.clone(), size, &Device::Cpu)?;
        let (mean, std) = (
            self.latents.mean.index_select(&ids, 0)?,
            self.latents.std.index_select(&ids, 0)?,
        );
        let eps = standard_normal(rng, mean.shape(), &Device::Cpu)?;
        let x0 = ((mean + (std * eps)?)? * self.latents.scaling_factor)?.to_device(device)?;
        let prompts: Vec<String> = idx.iter().map(|&i| self.latents.captions[i as usize].clone()).collect();
        let cond = self
            .encoder
            .condition(&prompts, &self.null, self.force_zeros, self.image_hw)?;
        Ok((x0, cond))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Rows whose mean is their index and whose std is 0, so a drawn x₀ names its row.
    fn latents(repeats: Vec<u32>) -> LatentSet {
        let n = repeats.len();
        let mean = Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .reshape((n, 1, 1, 1))
            .unwrap();
        LatentSet {
            std: mean.zeros_like().unwrap(),
            mean,
            captions: (0..n).map(|i| format!("row {i}")).collect(),
            repeats,
            scaling_factor: 1.0,
            from_cache: false,
        }
    }

    fn drawn_rows(repeats: Vec<u32>, seed: u64, size: usize) -> Vec<u32> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/sd1");
        let (pipeline, rt) = (Pipeline::open(&dir).unwrap(), Runtime::default());
        let null = NullText::from_flags(None, Some("zeros")).unwrap();
        let data = CaptionedLatents::new(&pipeline, &rt, latents(repeats), null, 16).unwrap();
        let mut rng = crate::runtime::noise::seeded(seed);
        let (x0, _) = data.batch(&mut rng, size, &Device::Cpu).unwrap();
        x0.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&v| v as u32)
            .collect()
    }

    /// An image repeated 3 times (a kohya `3_concept` folder) is drawn about 3 times as often
    /// as one of repeat 1; without repeats the rows are those of a uniform draw over 0..n.
    #[test]
    fn repeated_images_are_drawn_in_proportion() {
        let rows = drawn_rows(vec![1, 3], 7, 2000);
        let threes = rows.iter().filter(|&&r| r == 1).count() as f64;
        assert!((threes / 2000.0 - 0.75).abs() < 0.04, "{threes} of 2000 draws");
        let plain = drawn_rows(vec![1; 5], 3, 50);
        let mut rng = crate::runtime::noise::seeded(3);
        let want: Vec<u32> = (0..50).map(|_| rng.random_range(0..5u32)).collect();
        assert_eq!(plain, want);
    }
}
