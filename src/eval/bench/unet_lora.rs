//! `dcm bench --workload unet-lora`: one LoRA distillation step, CM and Direct CM, of a
//! Stable Diffusion UNet of the released size (random weights and data), with `dcm distill`'s
//! memory estimate for the step beside the peak.

use super::timing::{median, times, Workload};
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
use std::time::Instant;

/// Solver intervals N of the timed step when `--intervals` is not given.
const INTERVALS: usize = 50;

/// Random clean latents and text contexts (zeros as the null context) for timing LoRA
/// distillation steps: the work of a step does not depend on what the data are.
struct RandomLatents {
    shape: Vec<usize>,
    context: (usize, usize),
    dtype: DType,
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
        Ok((x0, Condition::Text { text, null }))
    }
}

impl UNetBench {
    /// One LoRA distillation step (the paper's adapters on LCM-LoRA's targets, guidance `w`
    /// [default: the paper's], N intervals [default: 50]) of CM and of Direct CM, each timed
    /// over `repeats` steps after one warm-up step.
    pub fn lora_steps(&self, intervals: Option<usize>, guidance: Option<f64>) -> Result<UNetBenchReport> {
        let cfg = self.preset.config();
        ensure!(
            cfg.addition_embed_type.is_none(),
            "--workload unet-lora times SD 1.x/2.x-shaped UNets (--unet sd15); SDXL's added conditioning is not drawn here"
        );
        let start = Instant::now();
        let params = self.runtime.frozen(&random_unet_params(&cfg, &mut seeded(0))?)?;
        let arch = self.lora_student(&cfg);
        let data = RandomLatents {
            shape: vec![cfg.in_channels, self.size, self.size],
            context: (CONTEXT_TOKENS, cfg.layout()?.context_dim),
            dtype: self.runtime.dtype,
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
                intervals: intervals.unwrap_or(INTERVALS),
                guidance: guidance.unwrap_or(paper.guidance),
                steps: 1,
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

    /// Times `step` (one step from the frozen `params`) and adds it, its repeats and its
    /// memory estimate to `into` (the estimate of the last step timed is kept).
    fn time_lora_step(
        &self,
        arch: &LoraUnet,
        params: &Params,
        data: &RandomLatents,
        step: &DistillConfig,
        into: &mut Measured,
    ) -> Result<()> {
        let memory = TrainingMemory::estimate(arch, LoraConfig::PAPER, &data.shape, step)?;
        into.estimated_memory_mib = Some(memory.total() / (1024.0 * 1024.0));
        let mut evaluations = 0;
        let times = times(&self.runtime.device, 1, self.repeats, || {
            evaluations = distill(None, arch, params, data, step, Default::default())?.teacher_evaluations;
            Ok(())
        })?;
        let seconds = median(times.clone());
        into.workloads.push(Workload {
            teacher_evaluations: Some(evaluations),
            ..Workload::timed(format!("{} LoRA step", step.method.title()), seconds, self.batch)
        });
        into.times.extend(times);
        Ok(())
    }
}
