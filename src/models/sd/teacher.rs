//! A Stable Diffusion teacher: a pipeline folder's UNet as a `Denoiser` (docs/MATHEMATICS.md,
//! "Pretrained diffusers UNets"; the timestep and prediction conventions are `UnetDenoiser`'s),
//! with the text encoders and the VAE on demand.

use super::pipeline::{Family, Pipeline};
use super::student::UnetDenoiser;
use super::text::{NullText, PromptEncoder};
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::prediction::Prediction;
use crate::diffusion::schedule::Schedule;
use crate::nets::sd::lora_files::TextEncoderParts;
use crate::nets::sd::unet::UNet;
use crate::nets::sd::vae::VaeConfig;
use crate::runtime::device::Runtime;
use anyhow::{anyhow, ensure, Result};
use candle_core::{DType, Tensor};

/// The teacher of an `sd:DIR` pipeline folder: its UNet and forward process; the text
/// encoders and the VAE load on demand (`condition`, `images::decode`).
pub struct SdTeacher {
    pipeline: Pipeline,
    denoiser: UnetDenoiser,
    vae: VaeConfig,
}

impl SdTeacher {
    /// Opens the folder or file and loads the UNet on `rt` (its precision); the scheduler, UNet
    /// and VAE configs are checked against each other.
    pub fn load(path: &std::path::Path, rt: &Runtime) -> Result<Self> {
        Self::load_with_lora(path, rt, None)
    }

    /// As `load`, with a LoRA file's adapters on the UNet (a LoRA student, e.g. LCM-LoRA).
    pub fn load_with_lora(path: &std::path::Path, rt: &Runtime, lora: Option<&std::path::Path>) -> Result<Self> {
        Self::from_pipeline(Pipeline::open(path)?, rt, lora)
    }

    /// The teacher of an opened pipeline, with a LoRA file's adapters on its UNet or without.
    pub fn from_pipeline(pipeline: Pipeline, rt: &Runtime, lora: Option<&std::path::Path>) -> Result<Self> {
        Self::from_pipeline_parts(pipeline, rt, lora, TextEncoderParts::Refuse)
    }

    /// As `from_pipeline`, saying what to do with text-encoder parts of the LoRA file
    /// (`--lora-text-encoder`).
    pub fn from_pipeline_parts(
        pipeline: Pipeline,
        rt: &Runtime,
        lora: Option<&std::path::Path>,
        te: TextEncoderParts,
    ) -> Result<Self> {
        ensure!(
            !(rt.device.is_cpu() && rt.dtype == DType::BF16),
            "--dtype bf16: candle's CPU convolutions have no bf16 kernel; use f32 or f16 on the CPU (bf16 on CUDA)"
        );
        let scheduler = pipeline.scheduler()?;
        let vae = pipeline.vae_config()?;
        let cfg = pipeline.unet_config()?;
        ensure!(
            cfg.in_channels == vae.latent_channels && cfg.out_channels == vae.latent_channels,
            "{}: a UNet of {} → {} channels does not denoise the VAE's {} latent channels (not a text-to-image UNet)",
            pipeline.path().display(),
            cfg.in_channels,
            cfg.out_channels,
            vae.latent_channels
        );
        let unet = pipeline.unet_with_lora_parts(rt, lora, te)?;
        Ok(Self {
            denoiser: UnetDenoiser::new(unet, scheduler.schedule, scheduler.prediction),
            vae,
            pipeline,
        })
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub fn unet(&self) -> &UNet {
        self.denoiser.unet()
    }

    pub fn prediction(&self) -> Prediction {
        self.denoiser.prediction()
    }

    /// The UNet as a denoiser (with the adapters of a LoRA file, if loaded with one).
    pub fn denoiser(&self) -> &UnetDenoiser {
        &self.denoiser
    }

    pub fn vae_config(&self) -> &VaeConfig {
        &self.vae
    }

    /// Image pixels per latent pixel, `2^(VAE levels − 1)` (diffusers' `vae_scale_factor`).
    pub fn vae_scale_factor(&self) -> usize {
        1 << self.vae.block_out_channels.len().saturating_sub(1).min(16)
    }

    /// The text condition of latents `[B, C, h, w]`, one prompt per row (`text_condition`).
    pub fn condition(&self, rt: &Runtime, prompts: &[String], null: &NullText, latents: &Tensor) -> Result<Condition> {
        text_condition(&self.pipeline, rt, prompts, null, latents)
    }
}

/// The text condition of latents `[B, C, h, w]`, one prompt per row: loads `pipeline`'s text
/// encoders on `rt`, encodes, and drops them.
pub fn text_condition(
    pipeline: &Pipeline,
    rt: &Runtime,
    prompts: &[String],
    null: &NullText,
    latents: &Tensor,
) -> Result<Condition> {
    TextConditioner::load(pipeline, rt)?.condition(prompts, null, latents)
}

/// A pipeline's text encoders, loaded once to condition block after block of latents.
pub struct TextConditioner {
    encoder: PromptEncoder,
    force_zeros: bool,
    /// Image pixels per latent (SDXL's size ids are those of the decoded image).
    scale: usize,
}

impl TextConditioner {
    pub fn load(pipeline: &Pipeline, rt: &Runtime) -> Result<Self> {
        let force_zeros = matches!(
            pipeline.family(),
            Family::Sdxl {
                force_zeros_for_empty_prompt: true
            }
        );
        let scale = 1
            << pipeline
                .vae_config()?
                .block_out_channels
                .len()
                .saturating_sub(1)
                .min(16);
        Ok(Self {
            encoder: PromptEncoder::load(pipeline, rt)?,
            force_zeros,
            scale,
        })
    }

    /// The condition of latents `[B, C, h, w]`, one prompt per row; SDXL's size ids are
    /// `(8h, 8w)` for SDXL's VAE (the pipeline's default for its default latent size).
    pub fn condition(&self, prompts: &[String], null: &NullText, latents: &Tensor) -> Result<Condition> {
        let (b, _, h, w) = latents.dims4().map_err(|_| {
            anyhow!(
                "latents of shape {:?}: a Stable Diffusion teacher needs [B, C, h, w]",
                latents.dims()
            )
        })?;
        ensure!(prompts.len() == b, "{} prompts for {b} rows of latents", prompts.len());
        self.encoder
            .condition(prompts, null, self.force_zeros, (h * self.scale, w * self.scale))
    }
}

impl Denoiser for SdTeacher {
    fn schedule(&self) -> &Schedule {
        self.denoiser.schedule()
    }
    fn num_classes(&self) -> usize {
        0
    }
    fn eps(&self, x: &Tensor, t: &[usize], cond: &Condition) -> Result<Tensor> {
        self.denoiser.eps(x, t, cond)
    }
    fn eps_guided(&self, x: &Tensor, t: &[usize], cond: &Condition, w: f64) -> Result<Tensor> {
        self.denoiser.eps_guided(x, t, cond, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::condition::TextEmbedding;
    use crate::diffusion::denoiser::per_row_of;
    use crate::models::sd::test_util::{fixture, golden, max_abs_diff};

    fn unet_inputs(model: &str) -> (Tensor, Vec<usize>, Condition) {
        let g = golden(model);
        let steps: Vec<i64> = g["unet.timestep"].to_vec1().unwrap();
        let text = TextEmbedding {
            tokens: g["unet.encoder_hidden_states"].clone(),
            pooled: g.get("unet.text_embeds").cloned(),
            time_ids: g.get("unet.time_ids").cloned(),
        };
        let cond = Condition::Text {
            text: text.clone(),
            null: text,
        };
        // diffusers timestep s is our t = s + 1.
        (
            g["unet.sample"].clone(),
            steps.iter().map(|&s| s as usize + 1).collect(),
            cond,
        )
    }

    /// ε̂ at diffusers timesteps [999, 500, 1] (our 1000, 501, 2): the UNet's output for ε
    /// models, `σ_t x + α_t v` for SD 2's v-prediction.
    #[test]
    fn eps_is_the_unet_output_at_t_minus_one() {
        let rt = Runtime::default();
        for model in ["sd1", "sd2", "sdxl"] {
            let teacher = SdTeacher::load(&fixture(model), &rt).unwrap();
            let (x, t, cond) = unet_inputs(model);
            let out = golden(model)["unet.out"].clone();
            let want = match teacher.prediction() {
                Prediction::Epsilon => out,
                Prediction::V => {
                    let s = teacher.schedule();
                    let sigma = per_row_of(&t, |t| s.sigma(t), &x).unwrap();
                    let alpha = per_row_of(&t, |t| s.alpha(t), &x).unwrap();
                    (x.broadcast_mul(&sigma).unwrap() + out.broadcast_mul(&alpha).unwrap()).unwrap()
                }
            };
            let err = max_abs_diff(&teacher.eps(&x, &t, &cond).unwrap(), &want);
            eprintln!("{model} eps: max |Δ| = {err:.2e}");
            assert!(err <= 1e-4, "{model}: {err:e}");
        }
    }

    /// One batched call gives `ε_u + w (ε_c − ε_u)` of two separate calls; w ≤ 1 is no guidance
    /// (diffusers' `guidance_scale > 1`); class labels are refused.
    #[test]
    fn guidance_batches_halves_and_needs_w_above_one() {
        let rt = Runtime::default();
        let teacher = SdTeacher::load(&fixture("sd2"), &rt).unwrap();
        let (x, t, cond) = unet_inputs("sd2");
        let Condition::Text { text, .. } = &cond else {
            unreachable!()
        };
        let null = TextEmbedding {
            tokens: text.tokens.zeros_like().unwrap(),
            pooled: None,
            time_ids: None,
        };
        let cond = Condition::Text {
            text: text.clone(),
            null,
        };
        let ec = teacher.eps(&x, &t, &cond).unwrap();
        let eu = teacher.eps(&x, &t, &cond.null()).unwrap();
        let want = (&eu + ((&ec - &eu).unwrap() * 2.5).unwrap()).unwrap();
        let err = max_abs_diff(&teacher.eps_guided(&x, &t, &cond, 2.5).unwrap(), &want);
        assert!(err <= 1e-5, "batched guidance: {err:e}");
        for w in [1.0, 0.5, 0.0, -1.0] {
            assert_eq!(
                max_abs_diff(&teacher.eps_guided(&x, &t, &cond, w).unwrap(), &ec),
                0.0,
                "w = {w}"
            );
        }
        let labels = Condition::Labels(vec![None; 3]);
        let e = teacher.eps(&x, &t, &labels).unwrap_err().to_string();
        assert!(e.contains("conditioned on text prompts"), "{e}");
        assert_eq!(teacher.num_classes(), 0);
    }

    /// An f16 runtime loads the f32 files converted tensor by tensor and stays near f32; bf16
    /// is refused on the CPU (candle has no bf16 convolution there).
    #[test]
    fn half_precision_runtimes() {
        let (x, t, cond) = unet_inputs("sd1");
        let want = golden("sd1")["unet.out"].clone();
        let rt = |dtype| Runtime {
            device: candle_core::Device::Cpu,
            dtype,
        };
        let e = SdTeacher::load(&fixture("sd1"), &rt(DType::BF16))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("--dtype bf16:"), "{e}");
        let teacher = SdTeacher::load(&fixture("sd1"), &rt(DType::F16)).unwrap();
        assert_eq!(teacher.unet().dtype(), DType::F16);
        let got = teacher.eps(&x, &t, &cond).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        let err = max_abs_diff(&got, &want);
        eprintln!("sd1 eps in f16: max |Δ| = {err:.2e}");
        assert!(err <= 2e-2, "f16: {err:e}");
    }
}
