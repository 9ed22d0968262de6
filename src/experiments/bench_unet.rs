//! `dcm bench --workload unet`: one forward of a Stable Diffusion UNet of the released size
//! (SD 1.5 or SDXL base, fresh random weights: nothing to download) on random latents and
//! text context, timed as the other workloads; `bench/torch_unet.py` times diffusers' model of
//! the same configuration and `bench/compare_unet.sh` compares the two.

use super::bench::{median, peak_memory_mib, times, Workload};
use crate::consistency::objective::Method;
use crate::diffusion::condition::{Condition, TextEmbedding};
use crate::diffusion::prediction::Prediction;
use crate::diffusion::schedule::{Schedule, ScheduleKind};
use crate::models::sd::student::LoraUnet;
use crate::models::sd::training_memory::TrainingMemory;
use crate::nets::lora::LoraConfig;
use crate::nets::sd::unet::UNet;
use crate::nets::sd::unet::DEFAULT_LORA_TARGETS;
use crate::nets::sd::unet_config::UNetConfig;
use crate::nets::sd::unet_init::random_unet_params;
use crate::runtime::device::Runtime;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::{seeded, standard_normal, Rng};
use crate::train::distill::{distill, DistillConfig, TrainingData};
use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::time::Instant;

/// Tokens of the CLIP text context.
const CONTEXT_TOKENS: usize = 77;

/// The released UNet configurations `--unet` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UNetPreset {
    /// Stable Diffusion 1.5.
    Sd15,
    /// Stable Diffusion XL base 1.0.
    Sdxl,
}

impl UNetPreset {
    fn config(self) -> UNetConfig {
        match self {
            Self::Sd15 => UNetConfig::sd15(),
            Self::Sdxl => UNetConfig::sdxl(),
        }
    }
}

pub struct UNetBench {
    pub preset: UNetPreset,
    pub batch: usize,
    /// Latent height and width.
    pub size: usize,
    pub repeats: usize,
    pub runtime: Runtime,
}

#[derive(Clone, Debug, Serialize)]
pub struct UNetBenchReport {
    pub workload: &'static str,
    pub model: UNetPreset,
    pub parameters: usize,
    pub batch: usize,
    pub size: usize,
    pub threads: usize,
    pub device: String,
    pub dtype: String,
    /// Seconds to draw the random weights and build the UNet (not timed in the workload).
    pub build_seconds: f64,
    pub workloads: Vec<Workload>,
    /// Every timed repeat, in seconds (the spread behind the median).
    pub times: Vec<f64>,
    pub peak_memory_mib: f64,
    /// `dcm distill`'s estimate of a LoRA step's memory (unet-lora), to set beside the peak.
    pub estimated_memory_mib: Option<f64>,
}

impl UNetBench {
    pub fn run(&self) -> Result<UNetBenchReport> {
        ensure!(
            self.repeats > 0 && self.batch > 0 && self.size > 0,
            "--repeats, --batch and --size must be positive"
        );
        ensure!(
            !(self.runtime.device.is_cpu() && self.runtime.dtype == DType::BF16),
            "--dtype bf16: candle's CPU matrix product has no bf16 (use f32 or f16 on the CPU, bf16 on CUDA)"
        );
        let cfg = self.preset.config();
        let factor = 1 << (cfg.block_out_channels.len() - 1);
        ensure!(
            self.size.is_multiple_of(factor),
            "--size {}: the UNet needs a multiple of {factor}",
            self.size
        );
        // The activations of the widest level: a rough floor on what the forward needs.
        let widest = f32_bytes(&[self.batch, 16 * cfg.block_out_channels[0], self.size, self.size]);
        ensure_fits(widest, &format!("--batch {} --size {}", self.batch, self.size))?;
        let start = Instant::now();
        let params = random_unet_params(&cfg, &mut seeded(0))?;
        let parameters = params.values().map(|p| p.elem_count()).sum();
        let unet = UNet::new(cfg.clone(), &self.runtime.frozen(&params)?, None)?;
        drop(params);
        let build_seconds = start.elapsed().as_secs_f64();
        let (x, t, text) = self.inputs(&cfg)?;
        let dev = &self.runtime.device;
        let times = times(dev, 1, self.repeats, || unet.forward(&x, &t, &text, None).map(|_| ()))?;
        let seconds = median(times.clone());
        Ok(UNetBenchReport {
            workload: "unet",
            model: self.preset,
            parameters,
            batch: self.batch,
            size: self.size,
            threads: rayon::current_num_threads(),
            device: format!("{:?}", dev.location()),
            dtype: format!("{:?}", self.runtime.dtype).to_lowercase(),
            build_seconds,
            workloads: vec![Workload {
                name: "unet forward".into(),
                seconds,
                samples_per_second: self.batch as f64 / seconds,
                teacher_evaluations: None,
            }],
            times,
            peak_memory_mib: peak_memory_mib(),
            estimated_memory_mib: None,
        })
    }

    /// Latents, one timestep per row (spread as in the MLP bench) and the text conditioning,
    /// on the device in the model's dtype (SDXL: pooled embedding and size ids for a
    /// `size·8`-pixel square image).
    fn inputs(&self, cfg: &UNetConfig) -> Result<(Tensor, Vec<f64>, TextEmbedding)> {
        let (b, rt) = (self.batch, &self.runtime);
        let mut rng = seeded(1);
        let mut normal = |shape: &[usize]| -> Result<Tensor> {
            Ok(standard_normal(&mut rng, shape, &Device::Cpu)?
                .to_device(&rt.device)?
                .to_dtype(rt.dtype)?)
        };
        let x = normal(&[b, cfg.in_channels, self.size, self.size])?;
        let context_dim = cfg.layout()?.context_dim;
        let tokens = normal(&[b, CONTEXT_TOKENS, context_dim])?;
        let (pooled, time_ids) = match cfg.addition_embed_type {
            Some(_) => {
                let pixels = (8 * self.size) as f32;
                let ids = [pixels, pixels, 0.0, 0.0, pixels, pixels].repeat(b);
                let ids = Tensor::from_vec(ids, (b, 6), &Device::Cpu)?;
                let pooled_dim = cfg.projection_class_embeddings_input_dim.unwrap_or(0)
                    - 6 * cfg.addition_time_embed_dim.unwrap_or(0);
                (
                    Some(normal(&[b, pooled_dim])?),
                    Some(ids.to_device(&rt.device)?.to_dtype(rt.dtype)?),
                )
            }
            None => (None, None),
        };
        let t = (0..b).map(|i| (1 + (i * 997) % 1000) as f64).collect();
        Ok((
            x,
            t,
            TextEmbedding {
                tokens,
                pooled,
                time_ids,
            },
        ))
    }
}

impl UNetBenchReport {
    pub fn print(&self) {
        println!(
            "UNet {:?}, {} parameters, batch {}, {}×{} latents, {} threads, device {}, {}",
            self.model, self.parameters, self.batch, self.size, self.size, self.threads, self.device, self.dtype
        );
        println!("| workload | median ms | min–max ms | samples/s |\n|---|---|---|---|");
        let per = self.times.len() / self.workloads.len();
        for (w, times) in self.workloads.iter().zip(self.times.chunks(per)) {
            let spread = |f: fn(f64, f64) -> f64| times.iter().copied().fold(times[0], f);
            println!(
                "| {} | {:.1} | {:.1}–{:.1} | {:.3} |",
                w.name,
                1e3 * w.seconds,
                1e3 * spread(f64::min),
                1e3 * spread(f64::max),
                w.samples_per_second
            );
        }
        println!(
            "built in {:.1} s; peak memory {:.0} MiB",
            self.build_seconds, self.peak_memory_mib
        );
        if let Some(e) = self.estimated_memory_mib {
            println!("dcm distill's memory estimate for this step: {e:.0} MiB");
        }
    }
}

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
    /// One LoRA distillation step (rank 64 on LCM-LoRA's targets, guidance `w`, N intervals)
    /// of CM and of Direct CM, each timed over `repeats` steps after one warm-up step.
    pub fn lora_steps(&self, intervals: usize, guidance: f64) -> Result<UNetBenchReport> {
        let cfg = self.preset.config();
        ensure!(
            cfg.addition_embed_type.is_none(),
            "--workload unet-lora times SD 1.x/2.x-shaped UNets (--unet sd15); SDXL's added conditioning is not drawn here"
        );
        let rt = &self.runtime;
        let start = Instant::now();
        let params = rt.frozen(&random_unet_params(&cfg, &mut seeded(0))?)?;
        let parameters = params.values().map(|p| p.elem_count()).sum();
        let lora = LoraConfig { rank: 64, alpha: 64.0 };
        let arch = LoraUnet {
            targets: DEFAULT_LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
            schedule: Schedule::new(ScheduleKind::ScaledLinear),
            prediction: Prediction::Epsilon,
            dtype: rt.dtype,
            unet: cfg.clone(),
        };
        let data = RandomLatents {
            shape: vec![cfg.in_channels, self.size, self.size],
            context: (CONTEXT_TOKENS, cfg.layout()?.context_dim),
            dtype: rt.dtype,
        };
        let build_seconds = start.elapsed().as_secs_f64();
        let mut workloads = Vec::new();
        let mut all_times = Vec::new();
        let mut estimate = None;
        for method in Method::compared() {
            let distill_cfg = DistillConfig {
                intervals,
                guidance,
                steps: 1,
                batch: self.batch,
                ..DistillConfig::paper_lora(method, lora)
            };
            let memory = TrainingMemory::estimate(&arch, lora, &data.shape, &distill_cfg)?;
            estimate = Some(memory.total() / (1024.0 * 1024.0));
            let mut evaluations = 0;
            let step = || {
                distill(None, &arch, &params, &data, &distill_cfg, Default::default()).map(|d| d.teacher_evaluations)
            };
            let times = times(&rt.device, 1, self.repeats, || {
                evaluations = step()?;
                Ok(())
            })?;
            let seconds = median(times.clone());
            workloads.push(Workload {
                name: format!("{} LoRA step", method.title()),
                seconds,
                samples_per_second: self.batch as f64 / seconds,
                teacher_evaluations: Some(evaluations),
            });
            all_times.extend(times);
        }
        Ok(UNetBenchReport {
            workload: "unet-lora",
            model: self.preset,
            parameters,
            batch: self.batch,
            size: self.size,
            threads: rayon::current_num_threads(),
            device: format!("{:?}", rt.device.location()),
            dtype: format!("{:?}", rt.dtype).to_lowercase(),
            build_seconds,
            workloads,
            times: all_times,
            peak_memory_mib: peak_memory_mib(),
            estimated_memory_mib: estimate,
        })
    }
}
