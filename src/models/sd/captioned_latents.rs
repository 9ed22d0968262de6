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
