//! Distilling a Stable Diffusion teacher: a LoRA student of its UNet, trained on a folder of
//! captioned images (their VAE latents cached in the run folder), written as the LoRA files
//! diffusers, ComfyUI and A1111 load, with `student.json` and `train_log.csv`.

use crate::data::captioned::{Folder, FolderOptions};
use crate::families::family::{DistillJob, DistillPlan, DistillRequest, FamilyFlags};
use crate::models::model_dir::save_loss_log;
use crate::models::sd::captioned_latents::CaptionedLatents;
use crate::models::sd::latents::encode_folder;
use crate::models::sd::pipeline::Pipeline;
use crate::models::sd::student::{LoraUnet, SdStudentConfig};
use crate::models::sd::text::NullText;
use crate::models::sd::training_memory::TrainingMemory;
use crate::models::spec::TeacherSpec;
use crate::nets::lora::LoraConfig;
use crate::nets::sd::lora_files::{export, KOHYA_FILE, PEFT_FILE};
use crate::nets::sd::unet::DEFAULT_LORA_TARGETS;
use crate::runtime::device::Runtime;
use crate::train::distill::{DistillConfig, Distilled};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// The unconditional input of the teacher's guidance in training: zero embeddings, as the
/// paper's and LCM's training code.
pub const TRAINING_UNCOND: &str = "zeros";

/// One LoRA student's training: teacher, data and every setting.
pub struct SdRun<'a> {
    pub pipeline: &'a Pipeline,
    pub rt: &'a Runtime,
    pub data: PathBuf,
    /// How the data folder is read: caption column, unknown files.
    pub folder: FolderOptions,
    pub resolution: usize,
    /// zeros or empty.
    pub uncond: String,
    pub targets: Vec<String>,
    pub lora: LoraConfig,
    pub distill: DistillConfig,
}

impl<'a> SdRun<'a> {
    /// The run the flags ask for, checked before anything heavy loads.
    pub fn plan(pipeline: &'a Pipeline, req: &DistillRequest<'a>) -> Result<Self> {
        let data = req
            .data
            .context("--data FOLDER: a Stable Diffusion student trains on a folder of captioned images")?;
        let resolution = match req.flags.resolution {
            Some(r) => r,
            None => default_resolution(pipeline)?,
        };
        ensure!(
            (8..=4096).contains(&resolution),
            "--resolution {resolution}: expected 8 to 4096 pixels"
        );
        let uncond = req.flags.uncond.clone().unwrap_or_else(|| TRAINING_UNCOND.into());
        NullText::from_flags(None, Some(&uncond))?;
        let lora = req
            .config
            .lora
            .context("a Stable Diffusion student is a LoRA student")?;
        Ok(Self {
            pipeline,
            rt: req.rt,
            data: data.into(),
            folder: folder_options(req.flags),
            resolution,
            uncond,
            targets: lora_targets(req.flags)?,
            lora,
            distill: req.config.clone(),
        })
    }

    fn teacher_spec(&self) -> String {
        TeacherSpec::portable(&TeacherSpec::sd(self.pipeline.path()))
    }
}

/// `--caption-column` and `--skip-unknown-files`.
pub fn folder_options(flags: &FamilyFlags) -> FolderOptions {
    let default = FolderOptions::default();
    FolderOptions {
        caption_column: flags.caption_column.clone().unwrap_or(default.caption_column),
        skip_unknown: flags.skip_unknown_files,
    }
}

/// `--lora-targets`, or LCM-LoRA's list.
fn lora_targets(flags: &FamilyFlags) -> Result<Vec<String>> {
    match &flags.lora_targets {
        Some(t) if t.is_empty() || t.iter().any(String::is_empty) => {
            bail!("--lora-targets: give comma-separated module names, e.g. to_q,to_k")
        }
        Some(t) => Ok(t.clone()),
        None => Ok(DEFAULT_LORA_TARGETS.iter().map(|s| s.to_string()).collect()),
    }
}

impl DistillPlan for SdRun<'_> {
    fn context(&self) -> serde_json::Value {
        serde_json::json!({
            "teacher": self.teacher_spec(),
            "teacher_options": self.pipeline.options(),
            "data": TeacherSpec::portable(&self.data.to_string_lossy()),
            "resolution": self.resolution, "uncond": self.uncond,
            "caption_column": self.folder.caption_column,
        })
    }

    /// Checks the memory the step needs, then encodes (or reads the cached) latents into
    /// `out/latents`.
    fn prepare(&self, out: &Path) -> Result<DistillJob<'_>> {
        let null = NullText::from_flags(None, Some(&self.uncond))?;
        // Uncaptioned, unlisted or unknown files are named before anything loads.
        let folder = Folder::read(&self.data, &self.folder)?;
        for note in &folder.notes {
            eprintln!("{note}");
        }
        let (arch, start) = LoraUnet::of_pipeline(self.pipeline, self.rt, self.targets.clone())?;
        let side = self.resolution / vae_factor(self.pipeline)?;
        let latent = [arch.unet.in_channels, side, side];
        let memory = TrainingMemory::estimate(&arch, self.lora, &latent, &self.distill)?;
        eprintln!("{memory}");
        memory.check(self.rt)?;
        let latents = encode_folder(self.pipeline, self.rt, &folder, self.resolution, &out.join("latents"))?;
        let source = if latents.from_cache {
            "latents from the cache"
        } else {
            "encoded"
        };
        eprintln!(
            "{} captioned images at {}² ({source})",
            latents.captions.len(),
            self.resolution
        );
        let data = CaptionedLatents::new(self.pipeline, self.rt, latents, null, self.resolution)?;
        Ok(DistillJob {
            architecture: Box::new(arch),
            start,
            data: Box::new(data),
            target_source: None,
        })
    }

    fn save(&self, out: &Path, distilled: &Distilled, train_seconds: f64) -> Result<String> {
        let adapters = distilled.adapters.as_ref().context("a LoRA run returns its adapters")?;
        let unet = self.pipeline.unet_config()?;
        export(out, &unet, adapters, self.lora)?;
        let config = SdStudentConfig {
            teacher: self.teacher_spec(),
            teacher_options: self.pipeline.options().clone(),
            data: TeacherSpec::portable(&self.data.to_string_lossy()),
            resolution: self.resolution,
            uncond: self.uncond.clone(),
            lora_targets: self.targets.clone(),
            distill: self.distill.clone(),
            teacher_evaluations: distilled.teacher_evaluations,
            train_seconds,
            final_loss: distilled.losses.last().copied().unwrap_or(f32::NAN),
        };
        config.save(out)?;
        save_loss_log(out, &distilled.losses)?;
        Ok(format!("{KOHYA_FILE} and {PEFT_FILE} in {}", out.display()))
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
