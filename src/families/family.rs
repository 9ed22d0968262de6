//! A model family: the teachers of one kind (the small models — analytic teachers, MLPs, the
//! MNIST autoencoder's latents — or Stable Diffusion pipelines) and everything the commands
//! need of them, behind one trait. `dcm distill`, `sample` and `eval` run one path over it;
//! a new family is a new folder under `families/` implementing `ModelFamily` (README,
//! "Adding a model family").

use crate::consistency::sampler::{multistep_sample_with, picked_timesteps, Picking};
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::solver::Solver;
use crate::eval::metric_nets::MetricFiles;
use crate::nets::layers::Params;
use crate::nets::lora::LoraConfig;
use crate::nets::network::Architecture;
use crate::nets::sd::lora_files::TextEncoderParts;
use crate::runtime::device::Runtime;
use crate::runtime::fingerprint::Fingerprints;
use crate::runtime::noise::{standard_normal, Rng};
use crate::train::distill::{DistillConfig, Distilled, TrainingData};
use anyhow::{bail, Result};
use candle_core::{Shape, Tensor};
use std::path::{Path, PathBuf};

/// The distillation settings a family starts from; each is overridden by its flag.
#[derive(Clone, Debug, PartialEq)]
pub struct DistillDefaults {
    pub intervals: usize,
    pub guidance: f64,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub cosine_decay: bool,
    /// LoRA rank of a student when none is asked for (`None`: full fine-tuning).
    pub lora_rank: Option<usize>,
}

/// The flags only some families take, as given (`None`: not given).
#[derive(Clone, Debug, Default)]
pub struct FamilyFlags {
    /// Hidden width of a fresh student MLP.
    pub hidden: Option<usize>,
    /// Hidden layers of a fresh student MLP.
    pub depth: Option<usize>,
    /// Distill the unconditional ODE (ignore class labels).
    pub unconditional: bool,
    /// Image size of a Stable Diffusion student's training images.
    pub resolution: Option<usize>,
    /// The unconditional input of a text teacher's guidance: zeros or empty.
    pub uncond: Option<String>,
    /// Module-path suffixes of the UNet layers that get adapters.
    pub lora_targets: Option<Vec<String>>,
    /// The metadata column holding a Stable Diffusion data folder's captions.
    pub caption_column: Option<String>,
    /// Pass over files of the data folder that are neither images nor captions.
    pub skip_unknown_files: bool,
    /// Module names of the kohya LoRA file: diffusers or ldm.
    pub lora_format: Option<String>,
    /// A LoRA file the student's adapters start from.
    pub init_lora: Option<String>,
    /// What to do with text-encoder parts of that file: ignore or refuse.
    pub lora_text_encoder: Option<String>,
    /// Recompute the student's blocks in the backward pass instead of keeping their activations.
    pub gradient_checkpointing: bool,
}

/// Per flag, what it is for: the one message every family-only flag is refused with.
const FLAG_PURPOSE: [(&str, &str); 12] = [
    ("--hidden", "sizes a fresh MLP student of an analytic teacher"),
    ("--depth", "sizes a fresh MLP student of an analytic teacher"),
    (
        "--unconditional",
        "distills a class-conditional teacher's unconditional ODE",
    ),
    (
        "--resolution",
        "sizes the training images of a Stable Diffusion (sd:DIR) student",
    ),
    (
        "--uncond",
        "sets the unconditional input of a Stable Diffusion (sd:DIR) teacher's guidance",
    ),
    (
        "--lora-targets",
        "chooses the adapted layers of a Stable Diffusion (sd:DIR) UNet",
    ),
    (
        "--caption-column",
        "names the caption column of a Stable Diffusion (sd:DIR) student's metadata file",
    ),
    (
        "--skip-unknown-files",
        "passes over other files in a Stable Diffusion (sd:DIR) student's data folder",
    ),
    (
        "--lora-format",
        "names the modules of a Stable Diffusion (sd:DIR) student's kohya LoRA file",
    ),
    (
        "--init-lora",
        "starts a Stable Diffusion (sd:DIR) student's adapters from a LoRA file",
    ),
    (
        "--lora-text-encoder",
        "says what to do with the text-encoder part of an --init-lora file",
    ),
    (
        "--gradient-checkpointing",
        "recomputes a Stable Diffusion (sd:DIR) student UNet's blocks in the backward pass",
    ),
];

impl FamilyFlags {
    /// The flags given, by name.
    pub fn given(&self) -> Vec<&'static str> {
        let given = [
            self.hidden.is_some(),
            self.depth.is_some(),
            self.unconditional,
            self.resolution.is_some(),
            self.uncond.is_some(),
            self.lora_targets.is_some(),
            self.caption_column.is_some(),
            self.skip_unknown_files,
            self.lora_format.is_some(),
            self.init_lora.is_some(),
            self.lora_text_encoder.is_some(),
            self.gradient_checkpointing,
        ];
        FLAG_PURPOSE
            .iter()
            .zip(given)
            .filter(|(_, g)| *g)
            .map(|((flag, _), _)| *flag)
            .collect()
    }
}

/// Refuses the first flag of `given` that `family` does not take, saying what it is for.
pub fn refuse_other_flags(family: &dyn ModelFamily, given: &[&str]) -> Result<()> {
    let Some(flag) = given.iter().find(|f| !family.takes(f)) else {
        return Ok(());
    };
    let purpose = FLAG_PURPOSE
        .iter()
        .find(|(f, _)| f == flag)
        .map_or("applies to another model family", |(_, p)| *p);
    bail!("{flag} {purpose}; it does not apply to {}", family.name())
}

/// What a distillation run is asked for: the settings (family defaults already applied), the
/// data and the family-only flags.
pub struct DistillRequest<'a> {
    pub config: &'a DistillConfig,
    /// `--data` as given.
    pub data: Option<&'a str>,
    pub flags: &'a FamilyFlags,
    pub seed: u64,
    pub rt: &'a Runtime,
}

/// Everything `train::distill::distill` takes besides the settings.
pub struct DistillJob<'a> {
    pub architecture: Box<dyn Architecture + 'a>,
    /// Start weights (a LoRA student's frozen base).
    pub start: Params,
    pub data: Box<dyn TrainingData + 'a>,
    /// Where targets come from; `None`: the student with its adapters off (it *is* the teacher).
    pub target_source: Option<&'a dyn Denoiser>,
}

/// A distillation run of one family, checked and ready to start.
pub trait DistillPlan {
    /// What a resumed run must share besides the distillation settings.
    fn context(&self) -> serde_json::Value;
    /// Loads (or encodes into `out`) the training data and builds the student.
    fn prepare(&self, out: &Path) -> Result<DistillJob<'_>>;
    /// Writes the trained student into `out`; returns what was written, for the summary line.
    fn save(&self, out: &Path, distilled: &Distilled, run: &RunRecord) -> Result<String>;
    /// The files the run reads: the teacher's and the training data's, whose fingerprints a
    /// checkpoint records and `--resume` checks (none: nothing to check).
    fn inputs(&self) -> Result<RunInputs> {
        Ok(RunInputs::default())
    }
    /// The files the run writes in `out` (paths relative to it), checked writable before any
    /// work.
    fn outputs(&self) -> Vec<PathBuf>;
    /// The adapters' rank and alpha when the plan fixes them (a LoRA file to start from),
    /// overriding the flags'.
    fn lora(&self) -> Option<LoraConfig> {
        None
    }
}

/// The files a distillation reads, by role.
#[derive(Clone, Debug, Default)]
pub struct RunInputs {
    pub teacher: Vec<PathBuf>,
    pub data: Vec<PathBuf>,
}

/// What a finished run knows besides the trained weights, for the student's record.
#[derive(Clone, Debug, Default)]
pub struct RunRecord {
    pub train_seconds: f64,
    /// Content fingerprints of the teacher's files (absolute paths), as the run read them.
    pub teacher_files: Fingerprints,
}

/// A trained student ready to sample: its network, the grid it was distilled on, and how its
/// sampler picks timesteps from that grid.
pub struct StudentSampler {
    pub net: Box<dyn Denoiser>,
    pub grid: Discretization,
    pub picking: Picking,
}

impl StudentSampler {
    /// The K-step consistency sampler from `noise`, re-noising with draws from `rng`.
    pub fn sample(&self, noise: &Tensor, steps: usize, cond: &Condition, rng: &mut Rng) -> Result<Tensor> {
        let ts = picked_timesteps(self.grid, steps, self.picking)?;
        let device = noise.device().clone();
        let mut draw = |shape: &Shape| standard_normal(rng, shape.clone(), &device);
        multistep_sample_with(&*self.net, noise, &ts, cond, &mut draw, &mut |_| ())
    }
}

/// Where a student comes from.
pub enum StudentSource<'a> {
    /// A run folder written by `dcm distill`.
    Folder(&'a Path),
    /// An adapter file (a LoRA student of a Stable Diffusion teacher), sampled on a grid of
    /// `intervals`; `text_encoder` says what to do with text-encoder parts of the file.
    Adapters {
        file: &'a Path,
        intervals: usize,
        text_encoder: TextEncoderParts,
    },
}

/// The per-row conditions `dcm sample` and `dcm eval` can be given.
#[derive(Clone, Debug, Default)]
pub struct ConditionFlags {
    pub class: Option<u32>,
    pub prompt: Option<String>,
    pub prompts: Option<PathBuf>,
    pub negative_prompt: Option<String>,
    pub uncond: Option<String>,
}

/// What `dcm eval` is asked for; each family reads the fields that apply to it and refuses
/// the others by name.
#[derive(Clone, Debug, Default)]
pub struct EvalRequest {
    /// A student run folder, or an adapter file.
    pub student: Option<PathBuf>,
    pub lora: Option<PathBuf>,
    /// `--lora-text-encoder` as given.
    pub lora_text_encoder: Option<String>,
    /// `--teacher` as given.
    pub teacher: Option<String>,
    pub prompts: Option<PathBuf>,
    pub noise: Option<PathBuf>,
    pub solver: Option<Solver>,
    pub intervals: Option<usize>,
    pub guidance: Option<f64>,
    pub negative_prompt: Option<String>,
    pub uncond: Option<String>,
    /// The metric networks and real images (`--clip`, `--inception`, `--dino`, `--aesthetic`, `--real`).
    pub metrics: MetricFiles,
    pub reference: Option<PathBuf>,
    pub batch: Option<usize>,
    pub out: Option<PathBuf>,
    pub samples: Option<usize>,
    pub steps: Vec<usize>,
    pub seed: u64,
    /// `--device` and `--dtype` as given (recorded in reports).
    pub device: String,
    pub dtype: String,
    /// Evaluate a student against a teacher whose files differ from the ones it was distilled
    /// from (`--allow-other-teacher`).
    pub allow_other_teacher: bool,
}

pub trait ModelFamily {
    /// The family's teachers, as messages name them.
    fn name(&self) -> &'static str;
    /// Whether the family takes the family-only flag `flag`.
    fn takes(&self, flag: &str) -> bool;
    /// The teacher, frozen (loaded on first use where it is large).
    fn teacher(&self) -> Result<&dyn Denoiser>;
    /// The teacher's spec, portable (folders absolute).
    fn spec(&self) -> Result<String>;
    fn distill_defaults(&self) -> DistillDefaults;
    /// A distillation run, its settings and inputs checked.
    fn plan_distillation<'a>(&'a self, req: &DistillRequest<'a>) -> Result<Box<dyn DistillPlan + 'a>>;
    /// A trained student of this teacher.
    fn student(&self, source: StudentSource, rt: &Runtime) -> Result<StudentSampler>;
    /// The condition of each row of `noise`.
    fn condition(&self, flags: &ConditionFlags, noise: &Tensor, rt: &Runtime) -> Result<Condition>;
    /// Images in [0, 1] of samples `latents`.
    fn decode(&self, latents: &Tensor, rt: &Runtime) -> Result<Tensor>;
    /// `dcm eval`: the student's ODE error, and the family's sample-quality metrics.
    fn evaluate(&self, req: &EvalRequest, rt: &Runtime) -> Result<()>;
    /// Refuses sampling work that cannot fit in memory and says how long it may take when
    /// long, before anything loads (the small models need no estimate).
    fn check_sampling(&self, _work: &SamplingWork, _rt: &Runtime) -> Result<()> {
        Ok(())
    }
}

/// The network calls a sampling run makes: `calls` of `rows` rows of per-row shape `sample`.
#[derive(Clone, Debug)]
pub struct SamplingWork {
    pub sample: Vec<usize>,
    /// Rows per call (a guided call holds both halves).
    pub rows: usize,
    pub calls: usize,
    /// The input that sets the size, as a refusal names it (`--noise FILE`).
    pub what: String,
}
