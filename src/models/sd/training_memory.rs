//! What a LoRA distillation step of a Stable Diffusion UNet holds in memory, estimated before
//! the run starts: the frozen UNet in its precision, the adapters with their f32 gradients
//! and AdamW moments (and EMA), and the activations the student's forward pass keeps for
//! the backward pass — the part that grows with the batch. The teacher's and target
//! network's passes keep no graph, so their activations are transient.

use super::student::LoraUnet;
use crate::nets::lora::LoraConfig;
use crate::nets::sd::unet_config::{BlockSpec, Layout};
use crate::runtime::device::Runtime;
use crate::runtime::memory::{ensure_fits, human};
use crate::train::distill::DistillConfig;
use anyhow::{anyhow, Result};

/// Tokens of the text context the cross-attention layers attend to (CLIP's 77).
const CONTEXT_TOKENS: usize = 77;

#[derive(Clone, Copy, Debug)]
pub struct TrainingMemory {
    pub weights: f64,
    /// Adapters (f32 and the cast copy), their gradients, AdamW moments and EMA.
    pub adapters: f64,
    pub activations_per_sample: f64,
    /// Rows per micro-batch.
    pub batch: usize,
    /// What sets each part, for a refusal that names the flag to change.
    pub rank: usize,
    pub latent: (usize, usize),
}

impl TrainingMemory {
    /// For latents of per-sample shape `[C, h, w]` and the run's batch.
    pub fn estimate(arch: &LoraUnet, lora: LoraConfig, latent: &[usize], cfg: &DistillConfig) -> Result<Self> {
        let size = arch.dtype.size_in_bytes() as f64;
        let weights = arch
            .unet
            .tensor_shapes()?
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>() as f64)
            .sum::<f64>()
            * size;
        let adapter_elems: f64 = arch
            .unet
            .lora_layers(&arch.targets)?
            .iter()
            .map(|(_, shape)| lora.rank as f64 * (shape[1..].iter().product::<usize>() + shape[0]) as f64)
            .sum();
        // f32 weights, gradients, two AdamW moments, the backward pass's transient gradient
        // of each adapter (measured: a rank-10,000 sd1 run peaks 15% above four copies), EMA,
        // the gradient sum of --grad-accum; the cast copy the UNet computes with.
        let optional = [cfg.ema_decay.is_some(), cfg.grad_accum > 1];
        let f32_copies = 5.0 + optional.iter().filter(|&&b| b).count() as f64;
        let adapters = adapter_elems * (4.0 * f32_copies + size);
        let layout = arch.unet.layout().map_err(|e| anyhow!("UNet config: {e}"))?;
        let (h, w) = match latent {
            [_, h, w] => (*h, *w),
            _ => return Err(anyhow!("latents of shape {latent:?}: expected [C, h, w]")),
        };
        Ok(Self {
            weights,
            adapters,
            activations_per_sample: saved_elements(&layout, h * w) * size,
            batch: cfg.batch,
            rank: lora.rank,
            latent: (h, w),
        })
    }

    pub fn total(&self) -> f64 {
        self.weights + self.adapters + self.activations_per_sample * self.batch as f64
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
    /// the latent size (set by `size_flag`) when one sample alone cannot fit, else --batch.
    fn check_on_cpu(&self, size_flag: &str) -> Result<()> {
        let activations = self.activations_per_sample * self.batch as f64;
        if self.adapters >= activations && self.adapters >= self.weights {
            return ensure_fits(self.total(), &format!("--lora-rank {}", self.rank));
        }
        let (h, w) = self.latent;
        let one = self.weights + self.adapters + self.activations_per_sample;
        ensure_fits(
            one,
            &format!("{size_flag} ({h}×{w} latents) even at one sample per batch"),
        )?;
        ensure_fits(self.total(), &format!("--batch {} of {h}×{w} latents", self.batch))
    }
}

impl std::fmt::Display for TrainingMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory estimate: UNet {} + adapters and optimizer {} + activations {} per sample × {} = {}",
            human(self.weights),
            human(self.adapters),
            human(self.activations_per_sample),
            self.batch,
            human(self.total())
        )
    }
}

/// Elements the student's forward pass saves for its backward pass, per sample, for latents
/// of `pixels` = h·w: every resnet's normalised, activated and convolved maps, and every
/// transformer layer's token maps and attention probabilities (`heads · S²` for self-attention,
/// the term that dominates at high resolution).
fn saved_elements(layout: &Layout, pixels: usize) -> f64 {
    let mut total = 0.0;
    let mut s = pixels as f64;
    for block in &layout.down {
        total += block_elements(block, s);
        if block.resample {
            s /= 4.0;
        }
    }
    let mid = &layout.mid;
    total += 2.0 * resnet_elements(mid.channels as f64, mid.channels as f64, s)
        + mid.transformer_layers as f64 * transformer_elements(mid.channels as f64, mid.heads as f64, s);
    for block in &layout.up {
        total += block_elements(block, s);
        if block.resample {
            s *= 4.0;
        }
    }
    total
}

fn block_elements(block: &BlockSpec, s: f64) -> f64 {
    let out = block.out as f64;
    let per_resnet: f64 = block
        .resnet_in
        .iter()
        .map(|&c_in| {
            let attention = match block.cross_attention {
                true => block.transformer_layers as f64 * transformer_elements(out, block.heads as f64, s),
                false => 0.0,
            };
            resnet_elements(c_in as f64, out, s) + attention
        })
        .sum();
    per_resnet + if block.resample { out * s } else { 0.0 }
}

/// Maps of the width of the input (GroupNorm's intermediates, SiLU) and of the output
/// (convolutions, each adapter's three products, the time embedding's sum, the residual).
fn resnet_elements(c_in: f64, c_out: f64, s: f64) -> f64 {
    MEASURED * (3.0 * c_in * s + 4.0 * c_out * s)
}

/// One `BasicTransformerBlock` of width `d` on S tokens: token maps of width d (norms,
/// projections and their adapters, GEGLU's 8d-wide input and 4d-wide halves), and per head
/// the self-attention scores and probabilities `S²` (the only maps of attention's softmax
/// kept for the backward pass) and cross-attention's against the text context.
fn transformer_elements(d: f64, heads: f64, s: f64) -> f64 {
    MEASURED * 30.0 * d * s + 2.0 * heads * s * s + 2.0 * heads * s * CONTEXT_TOKENS as f64
}

/// What candle's graph keeps beyond the maps counted above (each op's own output, reshapes
/// made contiguous, the adapters' paths): measured on the CPU for the SD 1.5 UNet at 32×32
/// latents in f32, 3,069 MiB per sample (peak at batch 2 minus batch 1) against 810 MiB counted.
const MEASURED: f64 = 3.8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::objective::Method;
    use crate::diffusion::prediction::Prediction;
    use crate::diffusion::schedule::{Schedule, ScheduleKind};
    use crate::nets::sd::unet::DEFAULT_LORA_TARGETS;
    use crate::nets::sd::unet_config::UNetConfig;
    use candle_core::DType;

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
        let at = |side: usize, batch: usize| TrainingMemory::estimate(&a, lora, &[4, side, side], &cfg(batch)).unwrap();
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
    /// batch at this latent size (set by --resolution), never a flag that is not the cause.
    #[test]
    fn refusals_name_the_flag_that_sets_the_size() {
        let a = arch(UNetConfig::sdxl(), DType::BF16);
        let lora = |rank| LoraConfig { rank, alpha: 1.0 };
        let refusal = |rank, side, batch| {
            let m = TrainingMemory::estimate(&a, lora(rank), &[4, side, side], &cfg(batch)).unwrap();
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
    }
}
