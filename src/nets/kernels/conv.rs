//! 2-D convolution for frozen image networks (evaluation: decoding latents, the feature
//! network): per image, im2col then one matrix product with the bias and optional SiLU
//! fused, images split across threads. No backward: training keeps candle's convolution.

use super::gemm::{product, View};
use super::silu::silu;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Output positions per matrix product, at least.
const COLUMNS: usize = 512;

#[derive(Clone, Copy, Debug)]
pub struct Conv {
    pub stride: usize,
    pub padding: usize,
    /// Apply SiLU to the output.
    pub silu: bool,
}

impl Conv {
    /// `act(conv2d(x, w) + b)` for `x: [B, C, H, W]`, `w: [O, C, k, k]`, `b: [O]`.
    pub fn forward(self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        x.contiguous()?
            .apply_op3_no_bwd(&w.contiguous()?, &b.contiguous()?, &self)
    }

    fn out_size(self, size: usize, k: usize) -> Option<usize> {
        (size + 2 * self.padding).checked_sub(k).map(|d| d / self.stride + 1)
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<f32>()?[start..end]),
        None => candle_core::bail!("conv: expected a contiguous tensor"),
    }
}

/// `cols[(c·k + ky)·k + kx][oy·wo + ox] = x[c][oy·s + ky − p][ox·s + kx − p]`, zero outside;
/// rows of `cols` are `ld` apart.
fn im2col(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    k: usize,
    conv: Conv,
    (ho, wo): (usize, usize),
    cols: &mut [f32],
    ld: usize,
) {
    let (s, p) = (conv.stride, conv.padding as isize);
    for row in 0..c * k * k {
        let out = &mut cols[row * ld..row * ld + ho * wo];
        let (ci, ky, kx) = (row / (k * k), row / k % k, row % k);
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        // Output columns lo..hi read inside the input row (ox·s + kx − p in 0..w); the same
        // for every output row, so worked out once (feature maps here are 7–28 wide).
        let shift = kx as isize - p;
        let lo = ((-shift).max(0) as usize).div_ceil(s).min(wo);
        let hi = (((w as isize - 1 - shift) / s as isize + 1).max(0) as usize).clamp(lo, wo);
        let first = (lo * s) as isize + shift;
        for (oy, line) in out.chunks_exact_mut(wo).enumerate() {
            let iy = (oy * s) as isize + ky as isize - p;
            if iy < 0 || iy >= h as isize || lo == hi {
                line.fill(0.0);
                continue;
            }
            line[..lo].fill(0.0);
            line[hi..].fill(0.0);
            let src = &plane[iy as usize * w + first as usize..(iy as usize + 1) * w];
            if s == 1 {
                line[lo..hi].copy_from_slice(&src[..hi - lo]);
            } else {
                for (v, &x) in line[lo..hi].iter_mut().zip(src.iter().step_by(s)) {
                    *v = x;
                }
            }
        }
    }
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (contiguous(sx, lx)?, contiguous(sw, lw)?, contiguous(sb, lb)?);
        let (&[n, c, h, wd], &[o, wc, k, k2], &[bo]) = (lx.dims(), lw.dims(), lb.dims()) else {
            candle_core::bail!("conv: expected [B, C, H, W] input, [O, C, k, k] weight and [O] bias")
        };
        let (Some(ho), Some(wo)) = (self.out_size(h, k), self.out_size(wd, k)) else {
            candle_core::bail!("conv: a {k}×{k} kernel does not fit a {h}×{wd} input")
        };
        if wc != c || k2 != k || bo != o || self.stride == 0 {
            candle_core::bail!(
                "conv: input {:?}, weight {:?} and bias {:?} do not fit",
                lx.dims(),
                lw.dims(),
                lb.dims()
            )
        }
        let (ckk, hw) = (c * k * k, ho * wo);
        // Small feature maps: several images side by side in one product, wide enough to
        // run at full speed. Every product has the same width (a short last group is
        // zero-padded) because gemm blocks by width: so an image's values never depend on
        // which images share its batch.
        let group = (COLUMNS / hw).max(1);
        let width = group * hw;
        let mut out = vec![0f32; n * o * hw];
        out.par_chunks_mut(group * o * hw).enumerate().for_each(|(g, y)| {
            let mut cols = vec![0f32; ckk * width];
            for (j, image) in x[g * group * c * h * wd..]
                .chunks(c * h * wd)
                .take(y.len() / (o * hw))
                .enumerate()
            {
                im2col(image, (c, h, wd), k, *self, (ho, wo), &mut cols[j * hw..], width);
            }
            let mut prod = vec![0f32; o * width];
            for (row, &bias) in prod.chunks_exact_mut(width).zip(b) {
                row.fill(bias);
            }
            product(
                View::row_major(w, o, ckk),
                View::row_major(&cols, ckk, width),
                &mut prod,
                None,
                true,
            );
            for (j, image) in y.chunks_exact_mut(o * hw).enumerate() {
                for (channel, dst) in image.chunks_exact_mut(hw).enumerate() {
                    dst.copy_from_slice(&prod[channel * width + j * hw..][..hw]);
                }
                if self.silu {
                    silu(image);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, o, ho, wo))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};
    use candle_nn::{Conv2d, Conv2dConfig};

    /// Every kernel size, stride and padding the image networks use (and odd sizes,
    /// kernels wider than the image) matches candle's convolution, with and without SiLU,
    /// and an image's values do not depend on the rest of its batch.
    #[test]
    fn matches_candle_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        for (c, o, k, stride, size) in [
            (1, 8, 3, 2, 28),
            (8, 16, 3, 2, 14),
            (16, 16, 3, 1, 7),
            (16, 4, 1, 1, 7),
            (3, 5, 3, 1, 9),
            (2, 3, 5, 3, 11),
            (2, 2, 7, 1, 2),
            (1, 2, 5, 2, 3),
        ] {
            let x = Tensor::randn(0f32, 1.0, (3, c, size, size), &dev)?;
            let w = Tensor::randn(0f32, 0.3, (o, c, k, k), &dev)?;
            let b = Tensor::randn(0f32, 1.0, o, &dev)?;
            let cfg = Conv2dConfig {
                padding: k / 2,
                stride,
                ..Default::default()
            };
            let want = Conv2d::new(w.clone(), Some(b.clone()), cfg).forward(&x)?;
            for act in [false, true] {
                let got = Conv {
                    stride,
                    padding: k / 2,
                    silu: act,
                }
                .forward(&x, &w, &b)?;
                let want = if act { want.silu()? } else { want.clone() };
                assert_eq!(got.dims(), want.dims());
                let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-4, "c={c} o={o} k={k} s={stride}: differs by {diff}");
            }
            // The middle image alone gives bit-identical values (batching never changes them).
            let conv = Conv {
                stride,
                padding: k / 2,
                silu: true,
            };
            let batch = conv
                .forward(&x, &w, &b)?
                .narrow(0, 1, 1)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let alone = conv
                .forward(&x.narrow(0, 1, 1)?, &w, &b)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_eq!(batch, alone, "c={c} o={o} k={k} s={stride}: depends on the batch");
        }
        Ok(())
    }
}
