//! Resizing DINOv2's position embeddings from the pretraining grid (37×37 for the released
//! 518-pixel checkpoints) to the input's patch grid (16×16 at 224 pixels), as Meta's
//! torch-hub network does it, the one dgm-eval runs.
//!
//! That network calls torch's bicubic `interpolate` (Keys' kernel with a = −0.75,
//! `align_corners=False`, no antialiasing, edge samples repeated) with a *scale factor*
//! `(g + 0.1)/M` rather than an output size g. Torch then maps output index i to the source
//! coordinate `s·(i + ½) − ½` with `s = 1/scale_factor = M/(g + 0.1)` (rounded to f32), not
//! `M/g`: the historical 0.1 offset shifts every sample slightly. transformers 5's
//! `Dinov2Model` passes the output size instead, so its features at 224 pixels differ from
//! dgm-eval's; see the module docs of `dinov2` (`src/nets/dinov2/mod.rs`).

use anyhow::{ensure, Result};
use candle_core::Tensor;

/// The offset torch-hub DINOv2 adds to the target grid size in its scale factor.
const OFFSET: f64 = 0.1;

/// Keys' cubic convolution coefficient of torch's bicubic mode.
const A: f32 = -0.75;

/// The four taps of one output sample: source indices (edges repeated) and weights.
type Taps = [(usize, f32); 4];

/// torch's `get_cubic_upsample_coefficients` for the fractional offset `t` ∈ [0, 1).
fn cubic_weights(t: f32) -> [f32; 4] {
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Taps resizing an axis of `m` samples to `g`, with torch-hub's scale factor `(g + 0.1)/m`.
/// Errors when torch would produce another size than `g` (`⌊m·scale_factor⌋ ≠ g`).
fn axis_taps(m: usize, g: usize) -> Result<Vec<Taps>> {
    let scale_factor = (g as f64 + OFFSET) / m as f64;
    let produced = (m as f64 * scale_factor).floor() as usize;
    ensure!(
        produced == g,
        "resizing {m} position embeddings per side to {g}: the scale factor gives {produced}"
    );
    let scale = (1.0 / scale_factor) as f32;
    let taps = (0..g)
        .map(|i| {
            let real = scale * (i as f32 + 0.5) - 0.5;
            let first = real.floor();
            let weights = cubic_weights(real - first);
            std::array::from_fn(|k| {
                let index = (first as i64 - 1 + k as i64).clamp(0, m as i64 - 1) as usize;
                (index, weights[k])
            })
        })
        .collect();
    Ok(taps)
}

/// Resizes `grid` `[M, M, D]` (row-major patch positions) to `[rows, cols, D]`.
pub fn resize_grid(grid: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    let (m, m2, d) = grid.dims3()?;
    ensure!(m == m2, "position grid must be square, got {m}×{m2}");
    let (row_taps, col_taps) = (axis_taps(m, rows)?, axis_taps(m, cols)?);
    let src: Vec<f32> = grid.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; rows * cols * d];
    for (r, rt) in row_taps.iter().enumerate() {
        for (c, ct) in col_taps.iter().enumerate() {
            let dst = &mut out[(r * cols + c) * d..(r * cols + c + 1) * d];
            for &(ri, rw) in rt {
                for &(ci, cw) in ct {
                    let w = rw * cw;
                    let row = &src[(ri * m + ci) * d..(ri * m + ci + 1) * d];
                    for (o, s) in dst.iter_mut().zip(row) {
                        *o += w * s;
                    }
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, (rows, cols, d), grid.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The weights of every output sample sum to one (a constant grid stays constant).
    #[test]
    fn taps_are_a_partition_of_unity() {
        for (m, g) in [(37, 16), (8, 16), (20, 16), (5, 5)] {
            for taps in axis_taps(m, g).unwrap() {
                let total: f32 = taps.iter().map(|(_, w)| w).sum();
                assert!((total - 1.0).abs() < 1e-6, "{m}→{g}: {total}");
            }
        }
    }
}
