//! A LoRA student of a Stable Diffusion teacher: the teacher's own UNet with adapters on the
//! layers the targets name (LCM-LoRA's and the paper's list by default), trained while the
//! base weights stay frozen. With its adapters off it *is* the teacher, so distillation needs
//! one UNet in memory, not two.

use super::pipeline::Pipeline;
use super::single_file::SingleFileOptions;
use crate::diffusion::condition::{Condition, TextEmbedding};
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::prediction::{network_timesteps, Prediction};
use crate::diffusion::schedule::Schedule;
use crate::nets::layers::Params;
use crate::nets::lora::{init_adapters, LoraConfig, Switch};
use crate::nets::network::{Architecture, Network};
use crate::nets::sd::unet::{UNet, UNetLora};
use crate::nets::sd::unet_config::UNetConfig;
use crate::runtime::device::Runtime;
use crate::runtime::files::write_atomic;
use crate::runtime::fingerprint::Fingerprints;
use crate::runtime::noise::Rng;
use crate::train::distill::DistillConfig;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A UNet as an ε-prediction denoiser on dcm's timesteps: t ∈ 1..=T indexes ᾱ[t−1], so the
/// UNet, trained on 0..T−1, receives `t − 1`; a v-prediction output becomes `σ_t x_t + α_t v`.
pub struct UnetDenoiser {
    unet: UNet,
    schedule: Schedule,
    prediction: Prediction,
}

impl UnetDenoiser {
    pub fn new(unet: UNet, schedule: Schedule, prediction: Prediction) -> Self {
        Self {
            unet,
            schedule,
            prediction,
        }
    }

    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    pub fn prediction(&self) -> Prediction {
        self.prediction
    }

    /// The UNet's raw output (ε or v) at its own timesteps (`network_timesteps`). A stop signal
    /// is honoured before each call: one call is the longest uninterruptible work of sampling,
    /// evaluation and distillation.
    fn output(&self, x: &Tensor, t: &[usize], text: &TextEmbedding) -> Result<Tensor> {
        crate::runtime::signals::check()?;
        self.unet.forward(x, &network_timesteps(t), text, None)
    }

    fn to_eps(&self, x: &Tensor, out: Tensor, t: &[usize]) -> Result<Tensor> {
        self.prediction.to_eps(&self.schedule, x, out, t)
    }
}

fn text_of(cond: &Condition) -> Result<(&TextEmbedding, &TextEmbedding)> {
    match cond {
        Condition::Text { text, null } => Ok((text, null)),
        Condition::Labels(_) => bail!("a Stable Diffusion UNet is conditioned on text prompts, not class labels"),
    }
}

impl Denoiser for UnetDenoiser {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Text-conditioned: no class labels.
    fn num_classes(&self) -> usize {
        0
    }

    fn eps(&self, x: &Tensor, t: &[usize], cond: &Condition) -> Result<Tensor> {
        let (text, _) = text_of(cond)?;
        let out = self.output(x, t, text)?;
        self.to_eps(x, out, t)
    }

    /// `o_u + w (o_c − o_u)` on the UNet's outputs (ε or v, as diffusers), both halves in one
    /// call with rows `[null; text]`; for w ≤ 1 the conditional prediction alone (diffusers'
    /// `guidance_scale > 1`).
    fn eps_guided(&self, x: &Tensor, t: &[usize], cond: &Condition, w: f64) -> Result<Tensor> {
        if w <= 1.0 {
            return self.eps(x, t, cond);
        }
        text_of(cond)?;
        let b = x.dim(0)?;
        let both = Condition::cat(&[&cond.null(), cond])?;
        let (both, _) = text_of(&both)?;
        let out = self.output(&Tensor::cat(&[x, x], 0)?, &[t, t].concat(), both)?;
        let (u, c) = (out.narrow(0, 0, b)?, out.narrow(0, b, b)?);
        let guided = (&u + ((c - &u)? * w)?)?;
        self.to_eps(x, guided, t)
    }
}

impl Network for UnetDenoiser {
    fn adapters(&self) -> &Switch {
        self.unet.adapters()
    }
    fn merged_params(&self) -> Result<Params> {
        bail!("a Stable Diffusion student is kept as its LoRA adapters (lora.safetensors), not as merged UNet weights")
    }
}

/// The architecture of a LoRA student of one pipeline's UNet, computing in `dtype`.
pub struct LoraUnet {
    pub unet: UNetConfig,
    /// Module-path suffixes of the adapted layers.
    pub targets: Vec<String>,
    pub schedule: Schedule,
    pub prediction: Prediction,
    pub dtype: DType,
    /// Recompute the UNet's segments in the backward pass (`--gradient-checkpointing`).
    pub gradient_checkpointing: bool,
}

impl LoraUnet {
    /// The LoRA student architecture of `pipeline`'s UNet on `targets`, and the UNet's frozen
    /// base weights on `rt` (in its precision).
    pub fn of_pipeline(pipeline: &Pipeline, rt: &Runtime, targets: Vec<String>) -> Result<(Self, Params)> {
        let scheduler = pipeline.scheduler()?;
        let unet = pipeline.unet_config()?;
        unet.lora_layers(&targets)
            .map_err(|e| anyhow::anyhow!("--lora-targets: {e}"))?;
        let (params, _) = pipeline.unet_params(rt)?;
        let arch = Self {
            unet,
            targets,
            schedule: scheduler.schedule,
            prediction: scheduler.prediction,
            dtype: rt.dtype,
            gradient_checkpointing: false,
        };
        Ok((arch, params))
    }
}

impl Architecture for LoraUnet {
    fn check_sample_shape(&self, shape: &[usize]) -> Result<()> {
        let factor = 1usize << self.unet.block_out_channels.len().saturating_sub(1).min(16);
        ensure!(
            matches!(shape, [c, h, w] if *c == self.unet.in_channels && h % factor == 0 && w % factor == 0 && *h > 0 && *w > 0),
            "latents of shape {shape:?}: the UNet takes [{}, h, w] with h and w divisible by {factor} (choose another --resolution)",
            self.unet.in_channels
        );
        Ok(())
    }

    /// The UNet on the frozen base weights (in `dtype`) and the f32 adapters, which are cast
    /// to `dtype` on the way in (a cast keeps their gradient).
    fn build(&self, params: &Params, lora: Option<LoraConfig>) -> Result<Box<dyn Network>> {
        let cfg = lora.context("a Stable Diffusion student is a LoRA student: set --lora-rank")?;
        let cast = params
            .iter()
            .map(|(name, t)| Ok((name.clone(), t.to_dtype(self.dtype)?)))
            .collect::<Result<Params>>()?;
        let lora = UNetLora {
            cfg,
            targets: self.targets.clone(),
        };
        let mut unet = UNet::new(self.unet.clone(), &cast, Some(&lora))?;
        unet.set_gradient_checkpointing(self.gradient_checkpointing);
        Ok(Box::new(UnetDenoiser::new(
            unet,
            self.schedule.clone(),
            self.prediction,
        )))
    }

    fn init_adapters(&self, lora: LoraConfig, rng: &mut Rng) -> Result<Params> {
        let mut params = Params::new();
        for (path, shape) in self.unet.lora_layers(&self.targets)? {
            init_adapters(&mut params, &path, &shape, lora, rng)?;
        }
        Ok(params)
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "unet_lora_targets": self.targets,
            "dtype": format!("{:?}", self.dtype).to_lowercase(),
        })
    }

    fn merges_adapters(&self) -> bool {
        false
    }
}

/// What `dcm distill --teacher sd:DIR` trained: `OUT/student.json` beside the LoRA files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SdStudentConfig {
    /// `sd:PATH` with an absolute PATH.
    pub teacher: String,
    /// How a single-file teacher is read (`--config`, `--prediction`).
    #[serde(default, skip_serializing_if = "SingleFileOptions::is_empty")]
    pub teacher_options: SingleFileOptions,
    pub data: String,
    pub resolution: usize,
    /// The unconditional input of the teacher's guidance: zeros or empty.
    pub uncond: String,
    pub lora_targets: Vec<String>,
    /// Whether the last run (or resumed part) recomputed the UNet's segments in the backward
    /// pass: memory and time, not the result, so a resume may change it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
    pub distill: DistillConfig,
    pub teacher_evaluations: u64,
    pub train_seconds: f64,
    pub final_loss: f32,
    /// Content hashes of the teacher's files, by path relative to the teacher (`dcm eval`
    /// refuses another teacher); absent in folders written before they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_files: Option<Fingerprints>,
}

/// The file name of [`SdStudentConfig`] in a run folder.
pub const SD_STUDENT: &str = "student.json";

impl SdStudentConfig {
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join(SD_STUDENT), serde_json::to_string_pretty(self)?.as_bytes())
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(SD_STUDENT);
        let text = crate::runtime::files::read_regular_text(&path).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot read ({e}); not a run folder of `dcm distill --teacher sd:DIR`",
                path.display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}
