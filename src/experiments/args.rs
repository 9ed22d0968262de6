//! Flags shared by several commands: the teacher's ODE, the run folder, and where to compute.

use crate::diffusion::solver::Solver;
use crate::models::sd::single_file::SingleFileOptions;
use crate::nets::lora::LoraConfig;
use crate::runtime::device::Runtime;
use crate::runtime::files::check_output_dir;
use crate::runtime::finite::finite_flag;
use crate::train::distill::MAX_GUIDANCE;
use crate::train::trainer::Checkpointing;
use anyhow::{bail, ensure, Result};
use clap::Args;
use std::path::PathBuf;

/// The teacher's probability-flow ODE: solver, grid and guidance. The flags stay unset
/// unless given, so a mode they mean nothing in can refuse them.
#[derive(Args)]
pub struct OdeArgs {
    /// Teacher ODE solver: ddim, euler or heun [default: ddim].
    #[arg(long)]
    pub solver: Option<Solver>,
    /// Number of solver intervals N (must divide T = 1000) [default: 50; distilling sd:DIR: 100].
    #[arg(long)]
    pub intervals: Option<usize>,
    /// Classifier-free guidance scale w of the teacher (1: none) [default: 1; distilling sd:DIR: 9].
    #[arg(long)]
    pub guidance: Option<f64>,
}

impl OdeArgs {
    pub fn solver(&self) -> Solver {
        self.solver.unwrap_or(Solver::Ddim)
    }

    pub fn intervals(&self) -> usize {
        self.intervals.unwrap_or(50)
    }

    /// The guidance scale, finite and within `MAX_GUIDANCE`.
    pub fn guidance(&self) -> Result<f64> {
        self.guidance_or(1.0)
    }

    /// The guidance scale given, else `default`; finite and within `MAX_GUIDANCE`.
    pub fn guidance_or(&self, default: f64) -> Result<f64> {
        finite_flag(self.guidance.unwrap_or(default), "--guidance", MAX_GUIDANCE)
    }

    /// The flags given, by name (for refusing them where they mean nothing).
    pub fn given(&self) -> Vec<&'static str> {
        let flags = [
            ("--solver", self.solver.is_some()),
            ("--intervals", self.intervals.is_some()),
            ("--guidance", self.guidance.is_some()),
        ];
        flags
            .iter()
            .filter(|(_, given)| *given)
            .map(|(name, _)| *name)
            .collect()
    }
}

/// Errors on the first size flag that is 0, naming it.
pub fn positive(sizes: &[(&str, usize)]) -> Result<()> {
    match sizes.iter().find(|(_, v)| *v == 0) {
        Some((flag, _)) => bail!("{flag} 0: must be at least 1"),
        None => Ok(()),
    }
}

/// Refuses `flags` (those given) with the reason they mean nothing here.
pub fn refuse(flags: &[&str], why: &str) -> Result<()> {
    match flags {
        [] => Ok(()),
        [one] => bail!("{one} {why}"),
        many => bail!("{} {why}", many.join(", ")),
    }
}

/// Output folder, checkpoints and resume: shared by every training command.
#[derive(Args)]
pub struct RunArgs {
    /// Output folder: config.json, model.safetensors, train_log.csv (and checkpoint.safetensors).
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Save the full training state to OUT/checkpoint.safetensors every K steps (0: only on SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Continue the run in this folder from its checkpoint (the other flags must match the original run).
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

impl RunArgs {
    /// The output folder and checkpoint settings; `context` records what else identifies the run.
    pub fn checkpointing(&self, context: serde_json::Value) -> Result<(PathBuf, Checkpointing)> {
        let dir = match (&self.out, &self.resume) {
            (Some(o), Some(r)) => {
                ensure!(
                    o == r,
                    "--out {} and --resume {} name different folders",
                    o.display(),
                    r.display()
                );
                o.clone()
            }
            (Some(d), None) | (None, Some(d)) => d.clone(),
            (None, None) => anyhow::bail!("give --out DIR or --resume DIR"),
        };
        check_output_dir(&dir, if self.resume.is_some() { "--resume" } else { "--out" })?;
        let ckpt = Checkpointing {
            dir: Some(dir.clone()),
            every: self.checkpoint_every,
            resume: self.resume.is_some(),
            context,
            ..Checkpointing::default()
        };
        Ok((dir, ckpt))
    }
}

/// LoRA students: `--lora-rank R [--lora-alpha A]` (none: full fine-tuning).
#[derive(Args, Clone, Debug)]
pub struct LoraArgs {
    /// Train rank-R LoRA adapters on every linear layer instead of every weight (the paper's
    /// reference uses 64) [default: full fine-tuning; sd:DIR: 64].
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA strength α (the update is scaled by α/R) [default: R].
    #[arg(long, requires = "lora_rank")]
    pub lora_alpha: Option<f64>,
}

impl LoraArgs {
    pub fn lora(&self) -> Result<Option<LoraConfig>> {
        let Some(rank) = self.lora_rank else {
            return Ok(None);
        };
        let cfg = LoraConfig {
            rank,
            alpha: self.lora_alpha.unwrap_or(rank as f64),
        };
        cfg.validate()?;
        Ok(Some(cfg))
    }
}

/// Where to compute and in which precision frozen networks run: every computing command takes these.
#[derive(Args, Clone, Debug)]
pub struct RuntimeArgs {
    /// Where to compute: cpu, cuda or cuda:N (CUDA needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Precision of frozen networks (teacher, autoencoder, feature network, sampled student): f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl RuntimeArgs {
    pub fn runtime(&self) -> Result<Runtime> {
        Runtime::parse(&self.device, &self.dtype)
    }
}

/// How to read a single-file Stable Diffusion checkpoint (`--teacher sd:FILE.safetensors|.ckpt`).
#[derive(Args, Clone, Debug, Default)]
pub struct SingleFileArgs {
    /// For sd:FILE: a diffusers pipeline folder whose configs, tokenizers and scheduler describe
    /// the file, or a UNet config.json (the rest as released); needed for architectures other than
    /// released SD 1.x, SD 2.x and SDXL base.
    #[arg(long, value_name = "DIR|FILE")]
    pub config: Option<PathBuf>,
    /// For sd:FILE: what the UNet predicts, epsilon or v (required for SD 2.x, whose files do not say).
    #[arg(long, value_name = "epsilon|v")]
    pub prediction: Option<String>,
}

impl SingleFileArgs {
    /// The options, `--config` made absolute so that a run folder recording them works anywhere.
    pub fn options(&self) -> Result<SingleFileOptions> {
        let config = match &self.config {
            Some(p) => Some(std::path::absolute(p).map_err(|e| anyhow::anyhow!("--config {}: {e}", p.display()))?),
            None => None,
        };
        Ok(SingleFileOptions {
            config,
            prediction: self.prediction.clone(),
        })
    }
}

/// A student's run folder records how its teacher is read: `--config` / `--prediction` would
/// contradict it.
pub fn refuse_recorded_options(args: &SingleFileArgs) -> Result<()> {
    ensure!(
        args.config.is_none() && args.prediction.is_none(),
        "--config and --prediction: a --student folder's student.json already records how its teacher is read"
    );
    Ok(())
}
