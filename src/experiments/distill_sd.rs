//! `dcm distill --teacher sd:DIR`: a LoRA consistency student (CM or Direct CM) of a Stable
//! Diffusion teacher, trained on a folder of captioned images and written as LoRA files that
//! diffusers, ComfyUI and A1111 load.

use super::args::refuse;
use super::distill::DistillArgs;
use crate::data::captioned;
use crate::models::model_dir::save_loss_log;
use crate::models::sd::captioned_latents::CaptionedLatents;
use crate::models::sd::latents::encode_folder;
use crate::models::sd::pipeline::Pipeline;
use crate::models::sd::student::{LoraUnet, SdStudentConfig};
use crate::models::sd::text::NullText;
use crate::models::sd::training_memory::TrainingMemory;
use crate::models::student::portable_spec;
use crate::nets::lora::LoraConfig;
use crate::nets::sd::lora_files::{export, KOHYA_FILE, PEFT_FILE};
use crate::nets::sd::unet::DEFAULT_LORA_TARGETS;
use crate::runtime::device::Runtime;
use crate::train::distill::{distill, DistillConfig};
use crate::train::trainer::Checkpointing;
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// Flags that only Stable Diffusion teachers take.
#[derive(Args, Clone, Debug)]
pub struct SdDistillArgs {
    /// Image size R (sd:DIR): each image is resized and centre-cropped to R×R before the VAE
    /// [default: the UNet's sample_size × the VAE's scale factor, e.g. 512 for SD 1.5].
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Unconditional input of the teacher's guidance (sd:DIR): zeros (the paper's and LCM's
    /// training code) or empty (the empty prompt's encoding) [default: zeros].
    #[arg(long, value_name = "zeros|empty")]
    pub uncond: Option<String>,
    /// Comma-separated module-path suffixes of the UNet layers that get adapters (sd:DIR)
    /// [default: LCM-LoRA's list: to_q,to_k,to_v,to_out.0,proj_in,proj_out,ff.net.0.proj,ff.net.2,
    /// conv1,conv2,conv_shortcut,downsamplers.0.conv,upsamplers.0.conv,time_emb_proj].
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub lora_targets: Option<Vec<String>>,
}

impl SdDistillArgs {
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("--resolution", self.resolution.is_some()),
            ("--uncond", self.uncond.is_some()),
            ("--lora-targets", self.lora_targets.is_some()),
        ]
        .iter()
        .filter(|(_, given)| *given)
        .map(|(name, _)| *name)
        .collect()
    }
}

/// The paper's LoRA: rank 64, α = rank unless given.
const DEFAULT_RANK: usize = 64;

pub fn command(a: &DistillArgs, dir: &Path, rt: &Runtime) -> Result<()> {
    ensure!(
        !a.unconditional,
        "--unconditional: a Stable Diffusion student is conditioned on its captions"
    );
    let mlp_flags = [("--hidden", a.hidden.is_some()), ("--depth", a.depth.is_some())];
    let given: Vec<&str> = mlp_flags.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect();
    refuse(
        &given,
        "sizes a fresh MLP student; a Stable Diffusion student is the teacher's UNet with LoRA",
    )?;
    let data_dir = a
        .data
        .as_deref()
        .context("--data FOLDER: a Stable Diffusion student trains on a folder of captioned images")?;
    let pipeline = Pipeline::open(dir)?;
    let resolution = match a.sd.resolution {
        Some(r) => r,
        None => default_resolution(&pipeline)?,
    };
    ensure!(
        (8..=4096).contains(&resolution),
        "--resolution {resolution}: expected 8 to 4096 pixels"
    );
    let uncond = a.sd.uncond.clone().unwrap_or_else(|| "zeros".into());
    NullText::from_flags(None, Some(&uncond))?;
    let targets = match &a.sd.lora_targets {
        Some(t) if t.is_empty() || t.iter().any(String::is_empty) => {
            bail!("--lora-targets: give comma-separated module names, e.g. to_q,to_k")
        }
        Some(t) => t.clone(),
        None => DEFAULT_LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
    };
    let lora = a.lora.lora()?.unwrap_or(LoraConfig {
        rank: DEFAULT_RANK,
        alpha: DEFAULT_RANK as f64,
    });
    let cfg = a.config(a.batch.unwrap_or(16), 1e-4, Some(lora))?;
    cfg.validate()?;
    let run = SdRun {
        teacher: dir.to_path_buf(),
        data: data_dir.into(),
        resolution,
        uncond,
        targets,
        lora,
        distill: cfg,
    };
    let (out_dir, ckpt) = a.run.checkpointing(run.context())?;
    let config = run.train(&pipeline, rt, &out_dir, ckpt)?;
    eprintln!(
        "distilled in {:.1} s ({} per-sample teacher evaluations); final loss {:.3e}; wrote {KOHYA_FILE} and {PEFT_FILE} in {}",
        config.train_seconds,
        config.teacher_evaluations,
        config.final_loss,
        out_dir.display()
    );
    Ok(())
}

/// One LoRA student's training: teacher, data and every setting.
pub struct SdRun {
    pub teacher: PathBuf,
    pub data: PathBuf,
    pub resolution: usize,
    /// zeros or empty.
    pub uncond: String,
    pub targets: Vec<String>,
    pub lora: LoraConfig,
    pub distill: DistillConfig,
}

impl SdRun {
    /// What a resumed run must share besides the distillation settings.
    pub fn context(&self) -> serde_json::Value {
        serde_json::json!({
            "teacher": self.teacher_spec(), "data": portable_spec(&self.data.to_string_lossy()),
            "resolution": self.resolution, "uncond": self.uncond,
        })
    }

    fn teacher_spec(&self) -> String {
        format!("sd:{}", portable_spec(&self.teacher.to_string_lossy()))
    }

    /// Encodes (or reads the cached) latents into `out_dir/latents`, trains, and writes the LoRA
    /// files, `student.json` and `train_log.csv` into `out_dir`.
    pub fn train(
        &self,
        pipeline: &Pipeline,
        rt: &Runtime,
        out_dir: &Path,
        ckpt: Checkpointing,
    ) -> Result<SdStudentConfig> {
        let null = NullText::from_flags(None, Some(&self.uncond))?;
        // Unreadable or missing images are named before anything loads.
        captioned::pairs(&self.data)?;
        let (arch, start) = LoraUnet::of_pipeline(pipeline, rt, self.targets.clone())?;
        let side = self.resolution / vae_factor(pipeline)?;
        let latent = [arch.unet.in_channels, side, side];
        let memory = TrainingMemory::estimate(&arch, self.lora, &latent, &self.distill)?;
        eprintln!("{memory}");
        memory.check(rt)?;
        let latents = encode_folder(pipeline, rt, &self.data, self.resolution, &out_dir.join("latents"))?;
        eprintln!(
            "{} captioned images at {}² ({})",
            latents.captions.len(),
            self.resolution,
            if latents.from_cache {
                "latents from the cache"
            } else {
                "encoded"
            }
        );
        let data = CaptionedLatents::new(pipeline, rt, latents, null, self.resolution)?;
        let started = std::time::Instant::now();
        let out = distill(None, &arch, &start, &data, &self.distill, ckpt)?;
        let adapters = out.adapters.context("a LoRA run returns its adapters")?;
        export(out_dir, &arch.unet, &adapters, self.lora)?;
        let config = SdStudentConfig {
            teacher: self.teacher_spec(),
            data: portable_spec(&self.data.to_string_lossy()),
            resolution: self.resolution,
            uncond: self.uncond.clone(),
            lora_targets: arch.targets.clone(),
            distill: self.distill.clone(),
            teacher_evaluations: out.teacher_evaluations,
            train_seconds: started.elapsed().as_secs_f64(),
            final_loss: out.losses.last().copied().unwrap_or(f32::NAN),
        };
        config.save(out_dir)?;
        save_loss_log(out_dir, &out.losses)?;
        Ok(config)
    }
}

/// The pipeline's native image size: the UNet's `sample_size` latents times the VAE's factor.
pub fn default_resolution(pipeline: &Pipeline) -> Result<usize> {
    let latent = pipeline
        .unet_config()?
        .sample_size
        .as_ref()
        .and_then(serde_json::Value::as_u64)
        .context("--resolution: the UNet config has no single sample_size to take it from; give it")?;
    Ok(latent as usize * vae_factor(pipeline)?)
}

/// Image pixels per latent pixel, `2^(VAE levels − 1)`.
fn vae_factor(pipeline: &Pipeline) -> Result<usize> {
    let levels = pipeline.vae_config()?.block_out_channels.len();
    Ok(1 << levels.saturating_sub(1).min(16))
}
