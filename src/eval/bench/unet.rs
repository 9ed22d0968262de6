//! `dcm bench --workload unet`: one forward of a Stable Diffusion UNet of the released size
//! (SD 1.5 or SDXL base, fresh random weights: nothing to download) on random latents and
//! text context, timed as the other workloads; `bench/torch_unet.py` times diffusers' model of
//! the same configuration and `bench/compare_unet.sh` compares the two.

use super::timing::{median, peak_memory_mib, times, Workload};
use crate::diffusion::condition::TextEmbedding;
use crate::nets::sd::unet::UNet;
use crate::nets::sd::unet_config::UNetConfig;
use crate::nets::sd::unet_init::random_unet_params;
use crate::runtime::device::Runtime;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::{seeded, standard_normal};
use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::time::Instant;

/// Tokens of the CLIP text context.
pub const CONTEXT_TOKENS: usize = 77;

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
    pub fn config(self) -> UNetConfig {
        match self {
            Self::Sd15 => UNetConfig::sd15(),
            Self::Sdxl => UNetConfig::sdxl(),
        }
    }
}

/// A released UNet configuration and the sizes of the work, on a runtime.
pub struct UNetBench {
    pub preset: UNetPreset,
    pub batch: usize,
    /// Latent height and width.
    pub size: usize,
    /// Timed repeats per workload, after one warm-up.
    pub repeats: usize,
    /// Gradient checkpointing of the LoRA student (unet-lora).
    pub gradient_checkpointing: bool,
    pub runtime: Runtime,
}

/// What a UNet workload measured, with the settings it ran.
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

/// What a UNet workload measured, before the run's settings are attached.
pub struct Measured {
    /// Parameters of the UNet.
    pub parameters: usize,
    pub build_seconds: f64,
    pub workloads: Vec<Workload>,
    pub times: Vec<f64>,
    pub estimated_memory_mib: Option<f64>,
}

impl UNetBench {
    /// SD 1.5 at batch 2 on 32×32 latents, 5 repeats, on `runtime`.
    pub fn new(runtime: Runtime) -> Self {
        Self {
            preset: UNetPreset::Sd15,
            batch: 2,
            size: 32,
            repeats: 5,
            gradient_checkpointing: false,
            runtime,
        }
    }

    /// Times the UNet's forward on fresh random weights (seed 0) and inputs (seed 1).
    pub fn run(&self) -> Result<UNetBenchReport> {
        let cfg = self.preset.config();
        self.check(&cfg)?;
        let start = Instant::now();
        let params = random_unet_params(&cfg, &mut seeded(0))?;
        let parameters = params.values().map(|p| p.elem_count()).sum();
        let unet = UNet::new(cfg.clone(), &self.runtime.frozen(&params)?, None)?;
        drop(params);
        let build_seconds = start.elapsed().as_secs_f64();
        let (x, t, text) = self.inputs(&cfg)?;
        let times = times(&self.runtime.device, 1, self.repeats, || {
            unet.forward(&x, &t, &text, None).map(|_| ())
        })?;
        let seconds = median(times.clone());
        let measured = Measured {
            parameters,
            build_seconds,
            workloads: vec![Workload::timed("unet forward", seconds, self.batch)],
            times,
            estimated_memory_mib: None,
        };
        Ok(self.report("unet", measured))
    }

    /// Refuses, before any weights are drawn, sizes the UNet cannot run and sizes that
    /// cannot fit in memory.
    pub(super) fn check(&self, cfg: &UNetConfig) -> Result<()> {
        ensure!(
            self.repeats > 0 && self.batch > 0 && self.size > 0,
            "--repeats, --batch and --size must be positive"
        );
        ensure!(
            !(self.runtime.device.is_cpu() && self.runtime.dtype == DType::BF16),
            "--dtype bf16: candle's CPU matrix product has no bf16 (use f32 or f16 on the CPU, bf16 on CUDA)"
        );
        let factor = 1 << (cfg.block_out_channels.len() - 1);
        ensure!(
            self.size.is_multiple_of(factor),
            "--size {}: the UNet needs a multiple of {factor}",
            self.size
        );
        // The activations of the widest level: a rough floor on what the forward needs.
        let widest = f32_bytes(&[self.batch, 16 * cfg.block_out_channels[0], self.size, self.size]);
        ensure_fits(widest, &format!("--batch {} --size {}", self.batch, self.size))
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

    /// The report of `workload`: what was measured, the settings, and the peak memory now.
    pub fn report(&self, workload: &'static str, m: Measured) -> UNetBenchReport {
        UNetBenchReport {
            workload,
            model: self.preset,
            parameters: m.parameters,
            batch: self.batch,
            size: self.size,
            threads: rayon::current_num_threads(),
            device: format!("{:?}", self.runtime.device.location()),
            dtype: format!("{:?}", self.runtime.dtype).to_lowercase(),
            build_seconds: m.build_seconds,
            workloads: m.workloads,
            times: m.times,
            peak_memory_mib: peak_memory_mib(),
            estimated_memory_mib: m.estimated_memory_mib,
        }
    }
}

impl UNetBenchReport {
    /// The report as a Markdown table with the spread of each workload's repeats.
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
