//! `dcm bench`: the four workloads a user runs, timed as medians over repeats after
//! warm-up, with teacher-evaluation counts and peak memory — the figures compared
//! against PyTorch eager by `bench/compare.sh`. `--workload unet` and `unet-lora` time a
//! Stable Diffusion UNet instead. The workloads are `eval/bench/`'s; this file reads the flags.

use super::args::{refuse, RuntimeArgs};
use crate::eval::bench::mlp::{run, FreshMlp, MlpBench};
use crate::eval::bench::unet::{UNetBench, UNetPreset};
use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

/// What `dcm bench` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWorkload {
    /// The MLP teacher's forward, guided sampling, one CM and one Direct distillation step,
    /// and the shipped autoencoder and feature network.
    Mlp,
    /// One forward of a Stable Diffusion UNet of the released size (random weights).
    Unet,
    /// One LoRA distillation step, CM and Direct, of that UNet (random weights and data).
    UnetLora,
}

#[derive(Args)]
pub struct BenchArgs {
    /// What to time.
    #[arg(long, value_enum, default_value_t = BenchWorkload::Mlp)]
    pub workload: BenchWorkload,
    /// A network teacher folder to benchmark [default: a fresh MLP of the sizes below] (mlp).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Values per sample of the fresh MLP [default: 196].
    #[arg(long)]
    pub dim: Option<usize>,
    /// [default: 512]
    #[arg(long)]
    pub hidden: Option<usize>,
    /// [default: 4]
    #[arg(long)]
    pub depth: Option<usize>,
    /// [default: 64]
    #[arg(long)]
    pub time_dim: Option<usize>,
    /// [default: 10]
    #[arg(long)]
    pub classes: Option<usize>,
    /// Samples per forward [default: 256 (mlp), 2 (unet)].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Solver intervals N for the sampling and Direct workloads [default: 50].
    #[arg(long)]
    pub intervals: Option<usize>,
    /// [default: 2]
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Which UNet configuration (unet).
    #[arg(long, value_enum)]
    pub unet: Option<UNetPreset>,
    /// Latent height and width [default: 32] (unet).
    #[arg(long)]
    pub size: Option<usize>,
    /// Recompute the student's segments in the backward pass, as `dcm distill
    /// --gradient-checkpointing` (unet-lora).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Timed repeats per workload, after warm-up [default: 10 (mlp), 5 (unet)].
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl BenchArgs {
    /// The flags given that only one workload reads.
    fn given(&self, of: BenchWorkload) -> Vec<&'static str> {
        let flags = match of {
            BenchWorkload::Mlp => vec![
                ("--teacher", self.teacher.is_some()),
                ("--dim", self.dim.is_some()),
                ("--hidden", self.hidden.is_some()),
                ("--depth", self.depth.is_some()),
                ("--time-dim", self.time_dim.is_some()),
                ("--classes", self.classes.is_some()),
                ("--intervals", self.intervals.is_some()),
                ("--guidance", self.guidance.is_some()),
            ],
            BenchWorkload::Unet | BenchWorkload::UnetLora => vec![
                ("--unet", self.unet.is_some()),
                ("--size", self.size.is_some()),
                ("--gradient-checkpointing", self.gradient_checkpointing),
            ],
        };
        flags.into_iter().filter(|(_, g)| *g).map(|(f, _)| f).collect()
    }
}

pub fn command(a: BenchArgs) -> Result<()> {
    match a.workload {
        BenchWorkload::Mlp => {
            refuse(
                &a.given(BenchWorkload::Unet),
                "cannot be set for --workload mlp (UNet workload only)",
            )?;
            mlp_command(a)
        }
        BenchWorkload::Unet => {
            refuse(
                &a.given(BenchWorkload::Mlp),
                "cannot be set for --workload unet (MLP workloads only)",
            )?;
            if a.gradient_checkpointing {
                bail!("--gradient-checkpointing applies to --workload unet-lora (a training step)");
            }
            unet_command(a)
        }
        BenchWorkload::UnetLora => {
            let mlp_only: Vec<&str> = a
                .given(BenchWorkload::Mlp)
                .into_iter()
                .filter(|f| !matches!(*f, "--intervals" | "--guidance"))
                .collect();
            refuse(&mlp_only, "cannot be set for --workload unet-lora (MLP workloads only)")?;
            unet_command(a)
        }
    }
}

fn unet_command(a: BenchArgs) -> Result<()> {
    let d = UNetBench::new(a.runtime.runtime()?);
    let bench = UNetBench {
        preset: a.unet.unwrap_or(d.preset),
        batch: a.batch.unwrap_or(d.batch),
        size: a.size.unwrap_or(d.size),
        repeats: a.repeats.unwrap_or(d.repeats),
        gradient_checkpointing: a.gradient_checkpointing,
        ..d
    };
    let r = match a.workload {
        BenchWorkload::UnetLora => bench.lora_steps(a.intervals, a.guidance)?,
        _ => bench.run()?,
    };
    show(a.json, &r, |r| {
        r.print();
        Ok(())
    })
}

fn mlp_command(a: BenchArgs) -> Result<()> {
    let d = MlpBench::default();
    let bench = MlpBench {
        teacher: a.teacher,
        fresh: FreshMlp {
            dim: a.dim.unwrap_or(d.fresh.dim),
            hidden: a.hidden.unwrap_or(d.fresh.hidden),
            depth: a.depth.unwrap_or(d.fresh.depth),
            time_dim: a.time_dim.unwrap_or(d.fresh.time_dim),
            classes: a.classes.unwrap_or(d.fresh.classes),
        },
        batch: a.batch.unwrap_or(d.batch),
        intervals: a.intervals.unwrap_or(d.intervals),
        guidance: a.guidance.unwrap_or(d.guidance),
        repeats: a.repeats.unwrap_or(d.repeats),
    };
    let r = run(&bench.setup(|| a.runtime.runtime())?)?;
    show(a.json, &r, |r| r.print())
}

/// `report` as JSON with `--json`, otherwise as `table` prints it.
fn show<R: Serialize>(json: bool, report: &R, table: impl FnOnce(&R) -> Result<()>) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        Ok(())
    } else {
        table(report)
    }
}
