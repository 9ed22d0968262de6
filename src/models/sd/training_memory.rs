//! What a LoRA distillation step of a Stable Diffusion UNet holds in memory at its peak,
//! estimated before the run starts: the frozen UNet in its precision (and the text encoders a
//! run keeps to encode its captions); the adapters as the
//! trainer keeps them (f32 weights, gradients, AdamW's two moments, an EMA and the gradient sum
//! of `--grad-accum` when asked, the cast copy the UNet computes with); the maps the student's
//! forward pass keeps for the backward pass, per sample (`saved_maps`, plain or checkpointed);
//! and on the CPU the process's own memory. The teacher's and target network's passes keep no
//! graph, so their maps are transient.

use super::saved_maps::{Kernels, SavedMaps};
use super::student::LoraUnet;
use crate::nets::lora::LoraConfig;
use crate::runtime::device::Runtime;
use crate::runtime::memory::{ensure_fits, human};
use crate::train::distill::DistillConfig;
use anyhow::{anyhow, Result};
use candle_core::DType;
use std::collections::HashSet;

/// What a CPU run holds beyond the weights, the adapters' state and the saved maps at the
/// step's peak: the binary and its threads, and the working memory of the step as the
/// allocator keeps it (the teacher's and target's passes, the backward pass's per-op buffers,
/// the optimizer's update; `src/main.rs` keeps freed memory for reuse). Measured on the SD 1.5
/// UNet in f32 at 16×16 and 32×32 latents, batch 1 and 2, with and without checkpointing
/// (docs/PERFORMANCE.md): the peak minus the counted parts was 531–722 MiB, one constant
/// for every size and batch rather than a part of the activations.
const CPU_PROCESS: f64 = 600.0 * 1024.0 * 1024.0;

#[derive(Clone, Copy, Debug)]
pub struct TrainingMemory {
    pub weights: f64,
    /// The text encoders a run keeps loaded to encode each batch's captions (0 until
    /// `with_text_encoders`).
    pub text_encoders: f64,
    /// Adapters (f32 weights, gradients, AdamW moments, EMA, the cast copy).
    pub adapters: f64,
    pub activations_per_sample: f64,
    /// The process's own memory (CPU runs; 0 on a GPU, where it is host memory).
    pub process: f64,
    /// Rows per micro-batch.
    pub batch: usize,
    /// What sets each part, for a refusal that names the flag to change.
    pub rank: usize,
    pub latent: (usize, usize),
    pub gradient_checkpointing: bool,
}

impl TrainingMemory {
    /// For latents of per-sample shape `[C, h, w]` and the run's batch, on the CPU (the fused
    /// f32 kernels when the UNet computes in f32) or a GPU (candle's generic ops).
    pub fn estimate(
        arch: &LoraUnet,
        lora: LoraConfig,
        latent: &[usize],
        cfg: &DistillConfig,
        cpu: bool,
    ) -> Result<Self> {
        let size = arch.dtype.size_in_bytes() as f64;
        let weights = arch
            .unet
            .tensor_shapes()?
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>() as f64)
            .sum::<f64>()
            * size;
        let layers = arch.unet.lora_layers(&arch.targets)?;
        let adapter_elems: f64 = layers
            .iter()
            .map(|(_, shape)| lora.rank as f64 * (shape[1..].iter().product::<usize>() + shape[0]) as f64)
            .sum();
        // f32 weights, gradients, two AdamW moments, the backward pass's transient gradient
        // of each adapter (measured: a rank-10,000 sd1 run peaks 15% above four copies), EMA,
        // the gradient sum of --grad-accum; the copy cast to the UNet's dtype (none in f32).
        let optional = [cfg.ema_decay.is_some(), cfg.grad_accum > 1];
        let f32_copies = 5.0 + optional.iter().filter(|&&b| b).count() as f64;
        let cast = if arch.dtype == DType::F32 { 0.0 } else { size };
        let adapters = adapter_elems * (4.0 * f32_copies + cast);
        let (h, w) = match latent {
            [_, h, w] => (*h, *w),
            _ => return Err(anyhow!("latents of shape {latent:?}: expected [C, h, w]")),
        };
        let adapted: HashSet<String> = layers.into_iter().map(|(path, _)| path).collect();
        let kernels = Kernels::of(arch.dtype, cpu);
        let maps = SavedMaps::count(&arch.unet, &adapted, lora.rank, (h, w), kernels)?;
        Ok(Self {
            weights,
            text_encoders: 0.0,
            adapters,
            activations_per_sample: maps.per_sample(arch.gradient_checkpointing),
            process: if cpu { CPU_PROCESS } else { 0.0 },
            batch: cfg.batch,
            rank: lora.rank,
            latent: (h, w),
            gradient_checkpointing: arch.gradient_checkpointing,
        })
    }

    /// Adds text encoders of `parameters` in all, held in `dtype`.
    pub fn with_text_encoders(self, parameters: usize, dtype: DType) -> Self {
        Self {
            text_encoders: parameters as f64 * dtype.size_in_bytes() as f64,
            ..self
        }
    }

    /// Everything but the activations.
    fn fixed(&self) -> f64 {
        self.weights + self.text_encoders + self.adapters + self.process
    }

    pub fn total(&self) -> f64 {
        self.fixed() + self.activations_per_sample * self.batch as f64
    }

    /// Samples per micro-batch that fit in `bytes` (0 when not even the weights do).
    pub fn samples_in(&self, bytes: f64) -> usize {
        let room = bytes - self.fixed();
        (room / self.activations_per_sample).max(0.0).floor() as usize
    }

    /// Refuses a run whose estimate exceeds the memory available (CPU runs; on a GPU the
    /// estimate is printed and the device's allocator has the last word).
    pub fn check(&self, rt: &Runtime) -> Result<()> {
        self.check_as(rt, "--resolution")
    }

    /// `check`, naming `size_flag` as the flag that sets the latent size.
    pub fn check_as(&self, rt: &Runtime, size_flag: &str) -> Result<()> {
        match rt.device.is_cpu() {
            true => self.check_on_cpu(size_flag),
            false => Ok(()),
        }
    }

    /// Refuses the run naming the flag to change: the adapters' rank when they dominate, else
    /// the latent size (set by `size_flag`) when one sample alone cannot fit, else --batch
    /// (and --gradient-checkpointing when it is off).
    fn check_on_cpu(&self, size_flag: &str) -> Result<()> {
        let activations = self.activations_per_sample * self.batch as f64;
        if self.adapters >= activations && self.adapters >= self.weights {
            return ensure_fits(self.total(), &format!("--lora-rank {}", self.rank));
        }
        let (h, w) = self.latent;
        let one = self.fixed() + self.activations_per_sample;
        ensure_fits(
            one,
            &format!("{size_flag} ({h}×{w} latents) even at one sample per batch"),
        )?;
        let fits = ensure_fits(self.total(), &format!("--batch {} of {h}×{w} latents", self.batch));
        match self.gradient_checkpointing {
            true => fits,
            false => fits.map_err(|e| anyhow!("{e}; --gradient-checkpointing keeps less per sample")),
        }
    }
}

impl std::fmt::Display for TrainingMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let process = match self.process > 0.0 {
            true => format!(" + process {}", human(self.process)),
            false => String::new(),
        };
        let checkpointing = match self.gradient_checkpointing {
            true => ", checkpointed",
            false => "",
        };
        let encoders = match self.text_encoders > 0.0 {
            true => format!(" + text encoders {}", human(self.text_encoders)),
            false => String::new(),
        };
        write!(
            f,
            "memory estimate: UNet {}{encoders} + adapters and optimizer {}{process} + activations {} per sample{checkpointing} × {} = {}",
            human(self.weights),
            human(self.adapters),
            human(self.activations_per_sample),
            self.batch,
            human(self.total())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::objective::Method;
    use crate::diffusion::prediction::Prediction;
    use crate::diffusion::schedule::{Schedule, ScheduleKind};
    use crate::nets::sd::unet::DEFAULT_LORA_TARGETS;
    use crate::nets::sd::unet_config::UNetConfig;

    fn arch(unet: UNetConfig, dtype: DType) -> LoraUnet {
        LoraUnet {
            unet,
            targets: DEFAULT_LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
            schedule: Schedule::new(ScheduleKind::ScaledLinear),
            prediction: Prediction::Epsilon,
            dtype,
            gradient_checkpointing: false,
        }
    }

    fn checkpointed(unet: UNetConfig, dtype: DType) -> LoraUnet {
        LoraUnet {
            gradient_checkpointing: true,
            ..arch(unet, dtype)
        }
    }

    fn cfg(batch: usize) -> DistillConfig {
        let lora = LoraConfig::PAPER;
        DistillConfig {
            batch,
            ..DistillConfig::paper_lora(Method::all().next().unwrap(), lora)
        }
    }

    /// The released SDXL UNet in bf16: 2.57 G parameters (5.1 GB), rank-64 adapters of LCM-LoRA's
    /// published size (197.8 M values... counted by `real_configs_give_the_published_lora_sizes`),
    /// and per-sample activations that grow with the square of the token count once attention
    /// dominates: quadrupling the latent area multiplies them by more than 4.
    #[test]
    fn sdxl_estimate_at_1024() {
        let a = arch(UNetConfig::sdxl(), DType::BF16);
        let lora = LoraConfig::PAPER;
        let at = |side: usize, batch: usize| {
            TrainingMemory::estimate(&a, lora, &[4, side, side], &cfg(batch), false).unwrap()
        };
        let (m64, m128) = (at(64, 1), at(128, 16));
        eprintln!("SDXL 64²: {m64}\nSDXL 128²: {m128}");
        assert!((m128.weights / 2.0 - 2.567e9).abs() < 0.01e9, "{}", m128.weights);
        assert!(m128.activations_per_sample > 4.0 * m64.activations_per_sample);
        assert_eq!(
            m128.total(),
            m128.weights + m128.adapters + 16.0 * m128.activations_per_sample
        );
    }

    /// A refusal names the part of the estimate that dominates: the adapters' rank, or the
    /// batch at this latent size (set by --resolution), never a flag that is not the cause;
    /// a batch refusal names --gradient-checkpointing while it is off.
    #[test]
    fn refusals_name_the_flag_that_sets_the_size() {
        let a = arch(UNetConfig::sdxl(), DType::BF16);
        let lora = |rank| LoraConfig { rank, alpha: 1.0 };
        let refusal = |rank, side, batch| {
            let m = TrainingMemory::estimate(&a, lora(rank), &[4, side, side], &cfg(batch), true).unwrap();
            m.check_on_cpu("--resolution").unwrap_err().to_string()
        };
        let e = refusal(60_000, 8, 1);
        assert!(e.starts_with("--lora-rank 60000: needs about"), "{e}");
        let e = refusal(4, 512, 16);
        assert!(
            e.starts_with("--resolution (512×512 latents) even at one sample per batch: needs"),
            "{e}"
        );
        let e = refusal(4, 8, 100_000_000);
        assert!(e.starts_with("--batch 100000000 of 8×8 latents: needs"), "{e}");
        assert!(e.ends_with("; --gradient-checkpointing keeps less per sample"), "{e}");
        let a = checkpointed(UNetConfig::sdxl(), DType::BF16);
        let m = TrainingMemory::estimate(&a, lora(4), &[4, 8, 8], &cfg(100_000_000), true).unwrap();
        let e = m.check_on_cpu("--resolution").unwrap_err().to_string();
        assert!(!e.contains("--gradient-checkpointing"), "{e}");
    }

    /// The mark for SDXL at 1024² (128×128 latents) in bf16 on a GPU: with gradient
    /// checkpointing at least 8 samples per micro-batch fit in 80 GB, and checkpointing keeps at
    /// least 3× less per sample than the plain path.
    #[test]
    fn sdxl_with_checkpointing_fits_eight_samples_in_80_gb() {
        let at = |a: &LoraUnet| TrainingMemory::estimate(a, LoraConfig::PAPER, &[4, 128, 128], &cfg(1), false).unwrap();
        let plain = at(&arch(UNetConfig::sdxl(), DType::BF16));
        let ckpt = at(&checkpointed(UNetConfig::sdxl(), DType::BF16));
        eprintln!("SDXL 128², plain: {plain}\nSDXL 128², checkpointed: {ckpt}");
        assert!(ckpt.samples_in(80e9) >= 8, "{ckpt}");
        assert!(plain.activations_per_sample >= 3.0 * ckpt.activations_per_sample);
    }

    /// The README's table of what fits where is this estimate's, for the released SD 1.5 at
    /// 512² and SDXL at 1024² in bf16 on a GPU with the paper's rank-64 adapters, the text
    /// encoders kept, 1 GiB of each card left to the CUDA context
    /// (`cargo test --release --lib readme_states_what_fits_where -- --nocapture` prints it).
    #[test]
    fn readme_states_what_fits_where() {
        use crate::models::sd::single_file::released::ReleasedFamily;
        let gib = 1024f64.powi(3);
        let mut table = String::from(
            "| model, resolution | UNet + text encoders + adapters | activations per sample, plain / checkpointed \
             | samples per micro-batch in 24 GiB | 48 GiB | 80 GiB |\n|---|---|---|---|---|---|\n",
        );
        for (family, pixels) in [(ReleasedFamily::Sd1, 512), (ReleasedFamily::Sdxl, 1024)] {
            let encoders: usize = family
                .text_encoders()
                .iter()
                .enumerate()
                .map(|(i, c)| c.parameters(i == 1))
                .sum();
            let at = |a: &LoraUnet| {
                TrainingMemory::estimate(a, LoraConfig::PAPER, &[4, pixels / 8, pixels / 8], &cfg(1), false)
                    .unwrap()
                    .with_text_encoders(encoders, DType::BF16)
            };
            let unet = family.unet(Prediction::Epsilon);
            let (plain, ckpt) = (
                at(&arch(unet.clone(), DType::BF16)),
                at(&checkpointed(unet, DType::BF16)),
            );
            let fits = |g: f64| {
                format!(
                    "{} / {}",
                    plain.samples_in((g - 1.0) * gib),
                    ckpt.samples_in((g - 1.0) * gib)
                )
            };
            table += &format!(
                "| {} at {pixels}² | {} | {} / {} | {} | {} | {} |\n",
                family.name(),
                human(plain.fixed()),
                human(plain.activations_per_sample),
                human(ckpt.activations_per_sample),
                fits(24.0),
                fits(48.0),
                fits(80.0)
            );
        }
        eprintln!("{table}");
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        assert!(
            readme.contains(&table),
            "README.md's table of what fits where is not the estimate's:\n{table}"
        );
    }

    /// On the CPU the fused kernels keep one map where the generic ops keep several: the f32
    /// estimate there is below the generic one, and the process's own memory is counted.
    #[test]
    fn cpu_estimates_count_the_fused_kernels_and_the_process() {
        let a = arch(UNetConfig::sd15(), DType::F32);
        let at = |cpu| TrainingMemory::estimate(&a, LoraConfig::PAPER, &[4, 32, 32], &cfg(2), cpu).unwrap();
        let (cpu, gpu) = (at(true), at(false));
        assert!(cpu.activations_per_sample < gpu.activations_per_sample);
        assert_eq!(
            cpu.total() - cpu.process,
            cpu.weights + cpu.adapters + 2.0 * cpu.activations_per_sample
        );
        assert_eq!(gpu.process, 0.0);
    }
}
