//! The flags of `dcm reproduce`, shared by its MNIST presets (the paper's comparison and
//! the study) and `--preset sd`.

use super::args::{LoraArgs, RuntimeArgs, SingleFileArgs};
use crate::consistency::distance::Distance;
use crate::diffusion::solver::Solver;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ReproduceArgs {
    /// smoke (≤ 60 s), default or ema (≤ 6 min on 2 cores), lora, large (the default at
    /// N = 100, batch 256, 6,000 steps, pseudo-Huber: for a GPU; `paper` is its old name),
    /// study (hours: docs/study/), study-smoke, or sd (a Stable Diffusion teacher's LoRA
    /// students: --teacher sd:DIR --data FOLDER --prompts FILE).
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// Repeat with this many seeds and report mean ± std.
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Run folder [default: runs/reproduce-PRESET].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Folder holding autoencoder/, teacher/ and featnet/ [default: the shipped models].
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Images the held-out split comes from [default: the shipped MNIST digits].
    #[arg(long, default_value = "mnist")]
    pub data: String,
    /// Override the preset's teacher solver (ddim, euler or heun).
    #[arg(long)]
    pub solver: Option<Solver>,
    /// Override the preset's number of teacher solver intervals N.
    #[arg(long)]
    pub intervals: Option<usize>,
    /// Override the preset's guidance scale w.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Override the preset's distillation steps (per student).
    #[arg(long)]
    pub distill_steps: Option<usize>,
    /// Override the preset's distillation batch size.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Override the preset's learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Override the preset's evaluation samples per class.
    #[arg(long)]
    pub per_class: Option<usize>,
    /// Override the preset's distance: l2, huber or huber:C.
    #[arg(long)]
    pub loss: Option<Distance>,
    /// Use an EMA target network with this decay (the presets `default` and `ema`: 0.95).
    #[arg(long)]
    pub ema_decay: Option<f64>,
    /// Decay the learning rate to 0 on a cosine instead of the presets' constant rate.
    #[arg(long)]
    pub cosine_decay: bool,
    #[command(flatten)]
    pub lora: LoraArgs,
    /// With `--preset study`: rewrite the report in --out (README.md, summary.md, the CSVs
    /// and charts) from its study.json — a finished or part-finished run — training nothing.
    #[arg(long)]
    pub rewrite_report: bool,
    /// With `--preset study`: continue the study in this folder where it stopped — its
    /// finished stages and training runs are kept — after a signal, a kill or a crash (its
    /// settings, models and data must be the study's own).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub sd: SdReproduceArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Flags of `--preset sd`.
#[derive(Args, Clone, Debug, Default)]
pub struct SdReproduceArgs {
    /// sd preset: the teacher, `sd:DIR` (a diffusers SD 1.x/2.x/SDXL pipeline folder).
    #[arg(long)]
    pub teacher: Option<String>,
    /// sd preset: evaluation prompts, one per line (each gets --per-prompt samples).
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// sd preset: samples per prompt [default: 4].
    #[arg(long)]
    pub per_prompt: Option<usize>,
    /// sd preset: a transformers CLIPModel folder (ViT-L/14) for CLIP score, aesthetic embeddings and FD-CLIP.
    #[arg(long, value_name = "CLIP_DIR")]
    pub clip: Option<PathBuf>,
    /// sd preset: pytorch-fid's Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth) for FID.
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// sd preset: a transformers Dinov2Model folder for FD-DINOv2 and the DINOv2 distance to the teacher.
    #[arg(long, value_name = "DIR")]
    pub dino: Option<PathBuf>,
    /// sd preset: the LAION aesthetic predictor (sac+logos+ava1-l14-linearMSE.pth; needs --clip).
    #[arg(long, value_name = "FILE")]
    pub aesthetic: Option<PathBuf>,
    /// sd preset: training image size [default: the pipeline's native size].
    #[arg(long)]
    pub resolution: Option<usize>,
    #[command(flatten)]
    pub single_file: SingleFileArgs,
    /// sd preset: caption column of --data's metadata.jsonl / metadata.csv [default: text].
    #[arg(long, value_name = "NAME")]
    pub caption_column: Option<String>,
    /// sd preset: pass over files in --data that are neither images nor captions.
    #[arg(long)]
    pub skip_unknown_files: bool,
}

impl SdReproduceArgs {
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("--teacher", self.teacher.is_some()),
            ("--prompts", self.prompts.is_some()),
            ("--per-prompt", self.per_prompt.is_some()),
            ("--clip", self.clip.is_some()),
            ("--inception", self.inception.is_some()),
            ("--dino", self.dino.is_some()),
            ("--aesthetic", self.aesthetic.is_some()),
            ("--resolution", self.resolution.is_some()),
            ("--config", self.single_file.config.is_some()),
            ("--prediction", self.single_file.prediction.is_some()),
            ("--caption-column", self.caption_column.is_some()),
            ("--skip-unknown-files", self.skip_unknown_files),
        ]
        .iter()
        .filter(|(_, g)| *g)
        .map(|(f, _)| *f)
        .collect()
    }
}
