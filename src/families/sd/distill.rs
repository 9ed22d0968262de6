//! Distilling a Stable Diffusion teacher: a LoRA student of its UNet, trained on a folder of
//! captioned images (their VAE latents cached in the run folder), written as the LoRA files
//! diffusers, ComfyUI and A1111 load, with `student.json` and `train_log.csv`.

use crate::data::captioned::{Folder, FolderOptions};
use crate::families::family::{DistillJob, DistillPlan, DistillRequest, FamilyFlags, RunInputs, RunRecord};
use crate::families::sd::init_lora::{FromFile, InitLora};
use crate::models::model_dir::{save_loss_log, LOSS_LOG};
use crate::models::sd::captioned_latents::CaptionedLatents;
use crate::models::sd::latents::{cache_files, encode_folder};
use crate::models::sd::pipeline::Pipeline;
use crate::models::sd::student::{LoraUnet, SdStudentConfig, SD_STUDENT};
use crate::models::sd::text::NullText;
use crate::models::sd::training_memory::TrainingMemory;
use crate::models::spec::TeacherSpec;
use crate::nets::lora::LoraConfig;
use crate::nets::network::Architecture;
use crate::nets::sd::lora_files::{export, KohyaNames, KohyaOptions, TextEncoderParts, KOHYA_FILE, PEFT_FILE};
use crate::nets::sd::lora_metadata::LoraInfo;
use crate::nets::sd::unet::DEFAULT_LORA_TARGETS;
use crate::runtime::device::Runtime;
use crate::runtime::fingerprint::relative_to;
use crate::train::distill::{DistillConfig, Distilled};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

/// The unconditional input of the teacher's guidance in training: zero embeddings, as the
/// paper's and LCM's training code.
pub const TRAINING_UNCOND: &str = "zeros";

/// The run folder's sub-folder holding the latent cache.
const LATENT_CACHE: &str = "latents";

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
    /// Module names of the kohya file (`--lora-format`).
    pub kohya_names: KohyaNames,
    /// The adapters to start from (`--init-lora`), and the file's path.
    pub init: Option<(InitLora, PathBuf)>,
    /// `--gradient-checkpointing`: not part of what a resumed run must share.
    pub gradient_checkpointing: bool,
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
        let kohya_names = match &req.flags.lora_format {
            Some(f) => f.parse()?,
            None => KohyaNames::default(),
        };
        let init = init_lora(pipeline, req)?;
        let (lora, targets) = match &init {
            Some((i, _)) => (i.cfg, i.targets.clone()),
            None => (
                (req.config.lora).context("a Stable Diffusion student is a LoRA student")?,
                lora_targets(req.flags)?,
            ),
        };
        Ok(Self {
            pipeline,
            rt: req.rt,
            data: data.into(),
            folder: folder_options(req.flags),
            resolution,
            uncond,
            targets,
            lora,
            distill: DistillConfig {
                lora: Some(lora),
                ..req.config.clone()
            },
            kohya_names,
            init,
            gradient_checkpointing: req.flags.gradient_checkpointing,
        })
    }

    /// What the kohya file's metadata says: base model, title, and how it was made.
    fn info(&self) -> Result<LoraInfo> {
        let name = |p: &Path| {
            p.file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
        };
        let teacher = name(self.pipeline.path());
        let d = &self.distill;
        Ok(LoraInfo {
            prediction: self.pipeline.scheduler()?.prediction,
            title: format!("dcm {} LoRA of {teacher}", d.method.title()),
            description: format!(
                "{} consistency LoRA distilled by dcm from the Stable Diffusion teacher '{teacher}' \
                 (N = {} intervals, guidance w = {}, {} steps on '{}' at {}x{}). Sample with an LCM sampler at CFG 1.",
                d.method.title(),
                d.intervals,
                d.guidance,
                d.steps,
                name(&self.data),
                self.resolution,
                self.resolution
            ),
            resolution: Some(self.resolution),
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

/// `--init-lora FILE` read for the teacher's UNet (`None` without the flag); the flags that
/// only make sense with it, or that it replaces, are checked.
fn init_lora(pipeline: &Pipeline, req: &DistillRequest) -> Result<Option<(InitLora, PathBuf)>> {
    let flags = req.flags;
    let Some(path) = &flags.init_lora else {
        ensure!(
            flags.lora_text_encoder.is_none(),
            "--lora-text-encoder applies to the --init-lora file; give --init-lora FILE"
        );
        return Ok(None);
    };
    ensure!(
        flags.lora_targets.is_none(),
        "--lora-targets: with --init-lora the adapted layers are the file's; drop one of the two"
    );
    let te = match &flags.lora_text_encoder {
        Some(v) => v.parse()?,
        None => TextEncoderParts::default(),
    };
    let path = PathBuf::from(path);
    let init = InitLora::read(&path, &pipeline.unet_config()?, te, req.config.lora)?;
    Ok(Some((init, path)))
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
            "init_lora": self.init.as_ref().map(|(_, p)| TeacherSpec::portable(&p.to_string_lossy())),
        })
    }

    fn lora(&self) -> Option<LoraConfig> {
        Some(self.lora)
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
        let (mut arch, start) = LoraUnet::of_pipeline(self.pipeline, self.rt, self.targets.clone())?;
        arch.gradient_checkpointing = self.gradient_checkpointing;
        let side = self.resolution / vae_factor(self.pipeline)?;
        let latent = [arch.unet.in_channels, side, side];
        let encoders = (0..self.pipeline.text_encoders())
            // SDXL's second encoder is the one with a projection.
            .map(|i| Ok(self.pipeline.text_encoder_config(i)?.parameters(i == 1)))
            .sum::<Result<usize>>()?;
        let memory = TrainingMemory::estimate(&arch, self.lora, &latent, &self.distill, self.rt.device.is_cpu())?
            .with_text_encoders(encoders, self.rt.dtype);
        eprintln!("{memory}");
        memory.check(self.rt)?;
        let latents = encode_folder(
            self.pipeline,
            self.rt,
            &folder,
            self.resolution,
            &out.join(LATENT_CACHE),
        )?;
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
        let architecture: Box<dyn Architecture + '_> = match &self.init {
            Some((init, _)) => Box::new(FromFile {
                inner: arch,
                init: init.clone(),
            }),
            None => Box::new(arch),
        };
        Ok(DistillJob {
            architecture,
            start,
            data: Box::new(data),
            target_source: None,
        })
    }

    /// The LoRA files, student.json, the loss log and the latent cache.
    fn outputs(&self) -> Vec<PathBuf> {
        let files = [KOHYA_FILE, PEFT_FILE, SD_STUDENT, LOSS_LOG].map(PathBuf::from);
        files.into_iter().chain(cache_files(Path::new(LATENT_CACHE))).collect()
    }

    /// The pipeline's files (configurations, tokenizers, picked weights), the data folder's
    /// images and captions (side files or metadata), and an `--init-lora` file.
    fn inputs(&self) -> Result<RunInputs> {
        let mut data = Folder::read(&self.data, &self.folder)?.files;
        data.extend(self.init.as_ref().map(|(_, p)| p.clone()));
        Ok(RunInputs {
            teacher: self.pipeline.files()?,
            data,
        })
    }

    fn save(&self, out: &Path, distilled: &Distilled, run: &RunRecord) -> Result<String> {
        let adapters = distilled.adapters.as_ref().context("a LoRA run returns its adapters")?;
        let unet = self.pipeline.unet_config()?;
        let kohya = KohyaOptions {
            names: self.kohya_names,
            info: Some(self.info()?),
        };
        export(out, &unet, adapters, self.lora, &kohya)?;
        let config = SdStudentConfig {
            teacher: self.teacher_spec(),
            teacher_options: self.pipeline.options().clone(),
            data: TeacherSpec::portable(&self.data.to_string_lossy()),
            resolution: self.resolution,
            uncond: self.uncond.clone(),
            lora_targets: self.targets.clone(),
            gradient_checkpointing: self.gradient_checkpointing,
            distill: self.distill.clone(),
            teacher_evaluations: distilled.teacher_evaluations,
            train_seconds: run.train_seconds,
            teacher_files: Some(relative_to(self.pipeline.path(), &run.teacher_files)),
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
