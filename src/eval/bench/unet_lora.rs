//! `dcm bench --workload unet-lora`: one LoRA distillation step, CM and Direct CM, of a
//! Stable Diffusion UNet of the released size (random weights and data), with `dcm distill`'s
//! memory estimate for the step beside the peak.
//!
//! The steps are timed inside one training run (warm-up step, then `repeats` steps), from one
//! micro-batch's draw to the next, as a training loop spends them: the run's setup (adapters,
//! optimizer state, networks) is not part of a step.
use super::timing::{median, Workload};
use super::unet::{Measured, UNetBench, UNetBenchReport, CONTEXT_TOKENS};
use crate::consistency::objective::Method;
use crate::diffusion::condition::{Condition, TextEmbedding};
use crate::diffusion::prediction::Prediction;
use crate::diffusion::schedule::{Schedule, ScheduleKind};
use crate::models::sd::student::LoraUnet;
use crate::models::sd::training_memory::TrainingMemory;
use crate::nets::layers::Params;
use crate::nets::lora::LoraConfig;
use crate::nets::sd::unet::DEFAULT_LORA_TARGETS;
use crate::nets::sd::unet_config::UNetConfig;
use crate::nets::sd::unet_init::random_unet_params;
use crate::runtime::noise::{seeded, standard_normal, Rng};
use crate::train::distill::{distill, DistillConfig, TrainingData};
use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use rand::Rng as _;
use std::sync::Mutex;
use std::time::Instant;

/// Solver intervals N of the timed step when `--intervals` is not given.
const INTERVALS: usize = 50;

/// Random clean latents and text contexts (zeros as the null context) for timing LoRA
/// distillation steps: the work of a step does not depend on what the data are. Each draw is
/// a step's start: it records when, and the grid indices the step draws next from the stream.
struct RandomLatents {
    shape: Vec<usize>,
    context: (usize, usize),
    dtype: DType,
    /// The grid's intervals N (each row's index n is drawn from `0..N` right after the data).
    intervals: usize,
    draws: Mutex<Vec<(Instant, Vec<usize>)>>,
}

impl RandomLatents {
    /// The draws recorded since the last call, and empties the record.
    fn take_draws(&self) -> Vec<(Instant, Vec<usize>)> {
        self.draws
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }
}

impl TrainingData for RandomLatents {
    fn sample_shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn batch(&self, rng: &mut Rng, size: usize, device: &Device) -> Result<(Tensor, Condition)> {
        let shape: Vec<usize> = std::iter::once(size).chain(self.shape.iter().copied()).collect();
        let x0 = standard_normal(rng, shape, device)?;
        let tokens = standard_normal(rng, (size, self.context.0, self.context.1), device)?.to_dtype(self.dtype)?;
        let null = TextEmbedding {
            tokens: tokens.zeros_like()?,
            pooled: None,
            time_ids: None,
        };
        let text = TextEmbedding {
            tokens,
            pooled: None,
            time_ids: None,
        };
        // `distill` draws each row's grid index next: the same draws from a copy of the stream.
        let mut next = rng.clone();
        let starts = (0..size).map(|_| next.random_range(0..self.intervals)).collect();
        if let Ok(mut d) = self.draws.lock() {
            d.push((Instant::now(), starts));
        }
        Ok((x0, Condition::Text { text, null }))
    }
}

impl UNetBench {
    /// One LoRA distillation step (the paper's adapters on LCM-LoRA's targets, guidance `w`
    /// [default: the paper's], N intervals [default: 50]) of CM and of Direct CM, each timed
    /// over `repeats` steps after one warm-up step of the same run.
    pub fn lora_steps(&self, intervals: Option<usize>, guidance: Option<f64>) -> Result<UNetBenchReport> {
        let cfg = self.preset.config();
        ensure!(
            cfg.addition_embed_type.is_none(),
            "--workload unet-lora times SD 1.x/2.x-shaped UNets (--unet sd15); SDXL's added conditioning is not drawn here"
        );
        self.check(&cfg)?;
        let arch = self.lora_student(&cfg);
        let intervals = intervals.unwrap_or(INTERVALS);
        // The training step's memory, as dcm distill estimates it, before any weights are drawn.
        let latent = [cfg.in_channels, self.size, self.size];
        let paper = DistillConfig::paper_lora(Method::compared()[0], LoraConfig::PAPER);
        let one = DistillConfig {
            batch: self.batch,
            ..paper
        };
        TrainingMemory::estimate(&arch, LoraConfig::PAPER, &latent, &one, self.runtime.device.is_cpu())?
            .check_as(&self.runtime, "--size")?;
        let start = Instant::now();
        let params = self.runtime.frozen(&random_unet_params(&cfg, &mut seeded(0))?)?;
        let data = RandomLatents {
            shape: vec![cfg.in_channels, self.size, self.size],
            context: (CONTEXT_TOKENS, cfg.layout()?.context_dim),
            dtype: self.runtime.dtype,
            intervals,
            draws: Mutex::new(Vec::new()),
        };
        let mut measured = Measured {
            parameters: params.values().map(|p| p.elem_count()).sum(),
            build_seconds: start.elapsed().as_secs_f64(),
            workloads: Vec::new(),
            times: Vec::new(),
            estimated_memory_mib: None,
        };
        for method in Method::compared() {
            let paper = DistillConfig::paper_lora(method, LoraConfig::PAPER);
            let step = DistillConfig {
                intervals,
                guidance: guidance.unwrap_or(paper.guidance),
                steps: 1 + self.repeats,
                batch: self.batch,
                ..paper
            };
            self.time_lora_step(&arch, &params, &data, &step, &mut measured)?;
        }
        Ok(self.report("unet-lora", measured))
    }

    /// The LoRA student of the bench's UNet: an ε-predicting SD 1.x UNet in the run's dtype.
    fn lora_student(&self, cfg: &UNetConfig) -> LoraUnet {
        LoraUnet {
            targets: DEFAULT_LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
            schedule: Schedule::new(ScheduleKind::ScaledLinear),
            prediction: Prediction::Epsilon,
            dtype: self.runtime.dtype,
            gradient_checkpointing: self.gradient_checkpointing,
            unet: cfg.clone(),
        }
    }

    /// Times the steps of one run of `step` from the frozen `params` (all but the first) and
    /// adds them, their median and the memory estimate to `into` (the estimate of the last
    /// method timed is kept).
    fn time_lora_step(
        &self,
        arch: &LoraUnet,
        params: &Params,
        data: &RandomLatents,
        step: &DistillConfig,
        into: &mut Measured,
    ) -> Result<()> {
        let memory =
            TrainingMemory::estimate(arch, LoraConfig::PAPER, &data.shape, step, self.runtime.device.is_cpu())?;
        into.estimated_memory_mib = Some(memory.total() / (1024.0 * 1024.0));
        data.take_draws();
        let run = distill(None, arch, params, data, step, Default::default())?;
        self.runtime.device.synchronize()?;
        let end = Instant::now();
        let draws = data.take_draws();
        ensure!(
            draws.len() == step.steps,
            "bench: {} draws for {} steps",
            draws.len(),
            step.steps
        );
        // Guided teacher evaluations of a step: one per row (CM), or one per grid step from
        // each row's start down to clean (Direct).
        let per_row = |starts: &[usize]| -> u64 {
            match step.method.name() {
                "direct" => starts.iter().map(|&n| (step.intervals - n) as u64).sum(),
                _ => starts.len() as u64,
            }
        };
        // Every step's teacher work follows from its rows' indices: a check that the indices
        // read from the stream are the ones the run drew.
        let evaluations: u64 = draws.iter().map(|(_, s)| per_row(s)).sum();
        ensure!(
            evaluations == run.teacher_evaluations,
            "bench: the steps' grid indices give {evaluations} teacher evaluations, the run counted {}",
            run.teacher_evaluations
        );
        let ends = draws.iter().skip(1).map(|(t, _)| *t).chain([end]);
        let times: Vec<f64> = draws
            .iter()
            .zip(ends)
            .map(|((t, _), e)| (e - *t).as_secs_f64())
            .skip(1)
            .collect();
        let timed = &draws[1..];
        into.workloads.push(Workload {
            teacher_evaluations: Some(timed.iter().map(|(_, s)| per_row(s)).sum()),
            starts: Some(timed.iter().map(|(_, s)| s.clone()).collect()),
            ..Workload::timed(
                format!("{} LoRA step", step.method.title()),
                median(times.clone()),
                self.batch,
            )
        });
        into.times.extend(times);
        Ok(())
    }
}
