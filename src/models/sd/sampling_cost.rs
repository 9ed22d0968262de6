//! What sampling with a Stable Diffusion UNet costs, estimated before the first call: the
//! memory one call holds (the frozen weights, the skip connections the up path reads, one
//! level's working maps and its self-attention scores, `heads · S²` per row — the part that
//! explodes with the latent size, unless the fused attention kernel serves it) and the work of every call: each convolution and linear
//! layer's FLOPs at its level's size, and each attention layer's score count. A run that
//! cannot fit is refused naming the flag that sets the size; a long one prints how long it may
//! take at the rates this device measures for a matrix product and for attention itself (at
//! narrow heads attention is bound by its `S²` scores, not by FLOPs).

use crate::nets::kernels::{self, attention::Sdpa};
use crate::nets::sd::attention::scaled_dot_product;
use crate::nets::sd::unet_config::{BlockSpec, Layout, UNetConfig};
use crate::runtime::device::Runtime;
use crate::runtime::memory::{ensure_fits, human};
use anyhow::{anyhow, Result};
use candle_core::{DType, Tensor};
use std::time::{Duration, Instant};

/// Tokens of the text context the cross-attention layers attend to (CLIP's 77).
const CONTEXT_TOKENS: f64 = 77.0;

/// Maps of a level's widest width one resnet holds at once (input, norm, activation,
/// convolution, time-embedding sum, residual).
const WORKING_MAPS: f64 = 6.0;

/// Estimates longer than this are printed.
const LONG: Duration = Duration::from_secs(60);

/// Work below this many FLOPs and attention scores is not timed (seconds at most).
const CHEAP_FLOPS: f64 = 1e10;
const CHEAP_SCORES: f64 = 1e8;

/// The cost of `calls` UNet calls on `rows` rows each of latents `[C, h, w]`.
#[derive(Clone, Debug)]
pub struct SamplingCost {
    pub weights: f64,
    /// Peak bytes of one row's activations in one call.
    pub per_row: f64,
    /// FLOPs of the convolutions and linear layers per row and call.
    pub dense_per_row: f64,
    /// Attention scores (self and cross) per row and call, by head width.
    pub scores_per_row: Vec<(usize, f64)>,
    pub rows: usize,
    pub calls: usize,
    pub latent: [usize; 3],
}

impl SamplingCost {
    pub fn estimate(unet: &UNetConfig, dtype: DType, latent: [usize; 3], rows: usize, calls: usize) -> Result<Self> {
        let size = dtype.size_in_bytes() as f64;
        let layout = unet.layout().map_err(|e| anyhow!("UNet config: {e}"))?;
        let weights: f64 = unet
            .tensor_shapes()?
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as f64)
            .sum();
        let levels = Levels::new(&layout, (latent[1] * latent[2]) as f64);
        let dense: f64 = unet
            .adaptable_layers()?
            .iter()
            .map(|(path, shape)| layer_flops(path, shape, &levels))
            .sum();
        let fused = kernels::serve(&Tensor::zeros(1, dtype, &candle_core::Device::Cpu)?);
        Ok(Self {
            weights: weights * size,
            per_row: levels.peak_bytes(&layout, size, fused),
            dense_per_row: dense,
            scores_per_row: levels.scores(&layout),
            rows,
            calls,
            latent,
        })
    }

    pub fn memory(&self) -> f64 {
        self.weights + self.per_row * self.rows as f64
    }

    /// Row-calls: every call's rows.
    fn row_calls(&self) -> f64 {
        self.rows as f64 * self.calls as f64
    }

    /// FLOPs of the whole run: the dense layers and attention's two products.
    pub fn flops(&self) -> f64 {
        let attention: f64 = self.scores_per_row.iter().map(|&(d, n)| 4.0 * d as f64 * n).sum();
        (self.dense_per_row + attention) * self.row_calls()
    }

    fn scores(&self) -> f64 {
        self.scores_per_row.iter().map(|(_, n)| n).sum::<f64>() * self.row_calls()
    }

    /// Refuses, naming `what` (the flag that sets the size) and the limit, what cannot fit in
    /// memory (CPU runs; on a GPU the device's allocator has the last word); prints the
    /// estimate when the work would take longer than a minute on `rt`'s device.
    pub fn check(&self, rt: &Runtime, what: &str) -> Result<()> {
        if rt.device.is_cpu() {
            ensure_fits(self.memory(), &format!("{what} ({})", self.shape()))?;
        }
        if self.dense_per_row * self.row_calls() < CHEAP_FLOPS && self.scores() < CHEAP_SCORES {
            return Ok(());
        }
        let seconds = self.seconds(rt)?;
        if seconds > LONG.as_secs_f64() {
            eprintln!(
                "sampling estimate: {}, {} at most in memory, {:.2e} FLOP and {:.2e} attention scores: \
                 about {} at the rates this device measures for them (a stop signal is honoured between UNet calls)",
                self.shape(),
                human(self.memory()),
                self.flops(),
                self.scores(),
                duration(seconds),
            );
        }
        Ok(())
    }

    /// The dense layers at a matrix product's rate, attention at its own rate per head width.
    fn seconds(&self, rt: &Runtime) -> Result<f64> {
        let mut seconds = self.dense_per_row * self.row_calls() / matmul_rate(rt)?;
        for &(d, n) in &self.scores_per_row {
            seconds += n * self.row_calls() / attention_rate(rt, d)?;
        }
        Ok(seconds)
    }

    fn shape(&self) -> String {
        let [c, h, w] = self.latent;
        format!("{} UNet calls of {} rows of {c}×{h}×{w} latents", self.calls, self.rows)
    }
}

/// Rows (tokens) per level: each down block's input size, each up block's, the middle's.
struct Levels {
    down: Vec<f64>,
    mid: f64,
    up: Vec<f64>,
    top: f64,
}

impl Levels {
    fn new(layout: &Layout, pixels: f64) -> Self {
        let mut s = pixels;
        let down = layout
            .down
            .iter()
            .map(|b| {
                let here = s;
                if b.resample {
                    s /= 4.0;
                }
                here
            })
            .collect();
        let mid = s;
        let up = layout
            .up
            .iter()
            .map(|b| {
                let here = s;
                if b.resample {
                    s *= 4.0;
                }
                here
            })
            .collect();
        Self {
            down,
            mid,
            up,
            top: pixels,
        }
    }

    /// The positions a layer's weights are applied at, from its module path: a level's size,
    /// a resampler's output size, the text context for cross-attention's keys and values, one
    /// for the time embedding.
    fn positions(&self, path: &str) -> f64 {
        if path.contains("attn2.to_k") || path.contains("attn2.to_v") {
            return CONTEXT_TOKENS;
        }
        if path.starts_with("time_embedding") || path.starts_with("add_embedding") || path.ends_with("time_emb_proj") {
            return 1.0;
        }
        let block = |prefix: &str, sizes: &[f64]| -> Option<f64> {
            let rest = path.strip_prefix(prefix)?;
            let i: usize = rest.split('.').next()?.parse().ok()?;
            sizes.get(i).copied()
        };
        if let Some(s) = block("down_blocks.", &self.down) {
            return if path.contains(".downsamplers.") { s / 4.0 } else { s };
        }
        if let Some(s) = block("up_blocks.", &self.up) {
            return if path.contains(".upsamplers.") { s * 4.0 } else { s };
        }
        if path.starts_with("mid_block") {
            return self.mid;
        }
        self.top
    }

    /// Attention scores of every transformer layer, by head width: `heads · S²` for
    /// self-attention and `heads · S · 77` against the text.
    fn scores(&self, layout: &Layout) -> Vec<(usize, f64)> {
        let layer =
            |b: (usize, usize, usize), s: f64| (b.0 / b.1, b.2 as f64 * b.1 as f64 * (s * s + s * CONTEXT_TOKENS));
        let blocks = |blocks: &[BlockSpec], sizes: &[f64]| -> Vec<(usize, f64)> {
            blocks
                .iter()
                .zip(sizes)
                .filter(|(b, _)| b.cross_attention)
                .map(|(b, &s)| layer((b.out, b.heads, b.resnet_in.len() * b.transformer_layers), s))
                .collect()
        };
        let mid = &layout.mid;
        let mut all = blocks(&layout.down, &self.down);
        all.push(layer((mid.channels, mid.heads, mid.transformer_layers), self.mid));
        all.extend(blocks(&layout.up, &self.up));
        let mut by_width: Vec<(usize, f64)> = Vec::new();
        for (d, n) in all {
            match by_width.iter_mut().find(|(w, _)| *w == d) {
                Some((_, total)) => *total += n,
                None => by_width.push((d, n)),
            }
        }
        by_width
    }

    /// One row's peak: the skip connections held from the down path to the up path, plus the
    /// costliest level's working maps and attention (GEGLU's 8d-wide tokens; unless the fused
    /// kernel serves it, the scores in the dtype, the softmax in f32 and the probabilities in
    /// the dtype).
    fn peak_bytes(&self, layout: &Layout, size: f64, fused: bool) -> f64 {
        let skips: f64 = layout.time_input_dim as f64 * self.top
            + layout
                .down
                .iter()
                .zip(&self.down)
                .map(|(b, &s)| {
                    let resample = if b.resample { s / 4.0 } else { 0.0 };
                    b.out as f64 * (b.resnet_in.len() as f64 * s + resample)
                })
                .sum::<f64>();
        let level = |widest: f64, out: f64, heads: f64, attention: bool, s: f64| {
            let scores = if fused { 0.0 } else { heads * s * s * (2.0 * size + 4.0) };
            let attention = if attention { scores + 8.0 * out * s * size } else { 0.0 };
            WORKING_MAPS * widest * s * size + attention
        };
        let blocks = layout
            .down
            .iter()
            .zip(&self.down)
            .chain(layout.up.iter().zip(&self.up))
            .map(|(b, &s)| {
                let widest = b.resnet_in.iter().copied().max().unwrap_or(0).max(b.out) as f64;
                level(widest, b.out as f64, b.heads as f64, b.cross_attention, s)
            });
        let mid = &layout.mid;
        let mid = level(
            mid.channels as f64,
            mid.channels as f64,
            mid.heads as f64,
            true,
            self.mid,
        );
        skips * size + blocks.fold(mid, f64::max)
    }
}

/// FLOPs of one layer per row: `2 · out · in · kh · kw` per output position (a linear layer's
/// kernel is 1×1).
fn layer_flops(path: &str, shape: &[usize], levels: &Levels) -> f64 {
    2.0 * shape.iter().map(|&d| d as f64).product::<f64>() * levels.positions(path)
}

/// The best of four timings of `f` (reading a value back waits for an asynchronous device).
fn best_seconds(f: impl Fn() -> Result<Tensor>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let started = Instant::now();
        f()?.flatten_all()?.get(0)?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(best.max(1e-9))
}

/// FLOP/s of a 512² matrix product on `rt`'s device in its precision.
fn matmul_rate(rt: &Runtime) -> Result<f64> {
    const N: usize = 512;
    let a = Tensor::ones((N, N), rt.dtype, &rt.device)?;
    Ok(2.0 * (N * N * N) as f64 / best_seconds(|| Ok(a.matmul(&a)?))?)
}

/// Scores per second of the UNet's own frozen attention at head width `d` (the fused kernel
/// where it serves, else the composed ops), for 8 heads of 512 tokens.
fn attention_rate(rt: &Runtime, d: usize) -> Result<f64> {
    const HEADS: usize = 8;
    const TOKENS: usize = 512;
    let d = d.max(1);
    let q = Tensor::ones((1, TOKENS, HEADS * d), rt.dtype, &rt.device)?;
    let seconds = match kernels::serve(&q) {
        true => best_seconds(|| Ok(Sdpa { heads: HEADS }.forward(&q, &q, &q)?))?,
        false => {
            let q = q.reshape((TOKENS, HEADS, d))?.transpose(0, 1)?.contiguous()?;
            best_seconds(|| scaled_dot_product(&q, &q, &q, false))?
        }
    };
    Ok((HEADS * TOKENS * TOKENS) as f64 / seconds)
}

/// `seconds` in the unit a person reads it in.
fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.0} days", s / 86_400.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> UNetConfig {
        UNetConfig {
            cross_attention_dim: crate::nets::sd::unet_config::PerBlock::One(768),
            ..Default::default()
        }
    }

    /// SD 1.5's UNet at 64×64 latents: its 859.5 M parameters, and about 0.8 TFLOP per row —
    /// by hand, the 4096-position level alone holds ≈ 100 GFLOP of convolutions, 107 of
    /// self-attention products and 100 of projections, and the convolutions cost the same at
    /// each of the four levels (channels double as positions quarter). In f16 its largest
    /// self-attention (8 heads, 4096 tokens) holds 8 · 4096² scores of 2 + 4 + 2 bytes.
    #[test]
    fn sd15_at_64_latents() {
        let cost = SamplingCost::estimate(&sd15(), DType::F32, [4, 64, 64], 2, 50).unwrap();
        let params = cost.weights / 4.0;
        assert!((8.5e8..8.7e8).contains(&params), "{params:e} parameters");
        let tflop = cost.flops() / 100.0 / 1e12;
        assert!((0.6..1.0).contains(&tflop), "{tflop} TFLOP per row");
        let half = SamplingCost::estimate(&sd15(), DType::F16, [4, 64, 64], 2, 50).unwrap();
        let scores = 8.0 * 4096f64.powi(2) * 8.0;
        assert!(
            half.per_row > scores && half.per_row < 2.0 * scores,
            "{}",
            human(half.per_row)
        );
        assert!(
            cost.per_row < scores / 4.0,
            "f32 on the CPU: the fused kernel keeps no scores"
        );
        let widths: Vec<usize> = cost.scores_per_row.iter().map(|(d, _)| *d).collect();
        assert_eq!(widths, [40, 80, 160], "head widths of SD 1.5's three attention levels");
    }

    /// 512×512 latents in f16 need terabytes of attention scores: refused naming the flag and
    /// the size.
    #[test]
    fn huge_latents_are_refused_naming_the_flag() {
        let cost = SamplingCost::estimate(&sd15(), DType::F16, [4, 512, 512], 2, 50).unwrap();
        let e = cost
            .check(&Runtime::default(), "--noise x.npy")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--noise x.npy (50 UNet calls of 2 rows of 4×512×512 latents): needs about"),
            "{e}"
        );
    }
}
