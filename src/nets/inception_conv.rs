//! The convolution + bias + ReLU of Inception-v3's layers (BatchNorm folded into weight and
//! bias), with the rectangular kernels (1×7, 7×1, 1×3, 3×1) and per-axis padding that the
//! square-kernel `kernels::conv` does not take.
//!
//! On the CPU in f32 (`kernels::serve`) it is im2col and one matrix product per image, the
//! product's columns split across threads by `kernels::gemm`: an image's values never depend
//! on the rest of its batch. Elsewhere candle's `conv2d` runs on the zero-padded input.

use crate::nets::kernels::storage::contiguous_f32;
use crate::nets::kernels::{
    self,
    gemm::{gemm, View},
};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvRelu {
    pub stride: usize,
    /// Zero padding (rows, columns) on each side.
    pub pad: (usize, usize),
}

/// Sizes of one convolution: input `c × h × w`, kernel `kh × kw`, output `o × ho × wo`.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    o: usize,
    ho: usize,
    wo: usize,
}

impl ConvRelu {
    /// `relu(conv2d(x, w) + b)` for `x: [B, C, H, W]`, `w: [O, C, kh, kw]`, `b: [O]`.
    pub fn forward(self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        if kernels::serve(x) {
            return x
                .contiguous()?
                .apply_op3_no_bwd(&w.contiguous()?, &b.contiguous()?, &self);
        }
        let (ph, pw) = self.pad;
        let padded = x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?;
        let y = padded.conv2d(w, 0, self.stride, 1, 1)?;
        y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?.relu()
    }

    fn geometry(self, x: &[usize], w: &[usize], b: &[usize]) -> Result<Geometry> {
        let (&[_, c, h, wd], &[o, wc, kh, kw], &[bo]) = (x, w, b) else {
            candle_core::bail!("conv: expected [B, C, H, W] input, [O, C, kh, kw] weight and [O] bias")
        };
        let out = |size: usize, pad: usize, k: usize| (size + 2 * pad).checked_sub(k).map(|d| d / self.stride + 1);
        let (Some(ho), Some(wo)) = (out(h, self.pad.0, kh), out(wd, self.pad.1, kw)) else {
            candle_core::bail!("conv: a {kh}×{kw} kernel does not fit a {h}×{wd} input")
        };
        if wc != c || bo != o || self.stride == 0 {
            candle_core::bail!("conv: input {x:?}, weight {w:?} and bias {b:?} do not fit")
        }
        Ok(Geometry {
            c,
            h,
            w: wd,
            kh,
            kw,
            o,
            ho,
            wo,
        })
    }

    /// A 1×1 kernel at stride 1 without padding: the image already is its im2col matrix.
    fn pointwise(self, g: Geometry) -> bool {
        g.kh == 1 && g.kw == 1 && self.stride == 1 && self.pad == (0, 0)
    }

    /// Row `(ci·kh + ky)·kw + kx` of one image's im2col matrix into `out` (`ho·wo` values):
    /// `x[ci][oy·s + ky − ph][ox·s + kx − pw]`, zero outside the image.
    fn im2col_row(self, x: &[f32], g: Geometry, row: usize, out: &mut [f32]) {
        let (ci, ky, kx) = (row / (g.kh * g.kw), row / g.kw % g.kh, row % g.kw);
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        let s = self.stride;
        // The output columns whose input column lies inside the image, the same on every row.
        let shift = kx as isize - self.pad.1 as isize;
        let inside = |ox: usize| (0..g.w as isize).contains(&((ox * s) as isize + shift));
        let lo = (0..g.wo).find(|&ox| inside(ox)).unwrap_or(g.wo);
        let hi = (lo..g.wo).find(|&ox| !inside(ox)).unwrap_or(g.wo);
        for (oy, line) in out.chunks_exact_mut(g.wo).enumerate() {
            let iy = (oy * s + ky) as isize - self.pad.0 as isize;
            if iy < 0 || iy >= g.h as isize || lo == hi {
                line.fill(0.0);
                continue;
            }
            line[..lo].fill(0.0);
            line[hi..].fill(0.0);
            let start = iy as usize * g.w + ((lo * s) as isize + shift) as usize;
            let src = plane[start..].iter().step_by(s);
            line[lo..hi].iter_mut().zip(src).for_each(|(v, &x)| *v = x);
        }
    }

    /// One image `x` (`c·h·w`) into `y` (`o·ho·wo`), `cols` its scratch im2col matrix.
    fn image(self, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], cols: &mut Vec<f32>, g: Geometry) {
        let (depth, hw) = (g.c * g.kh * g.kw, g.ho * g.wo);
        let rhs: &[f32] = if self.pointwise(g) {
            x
        } else {
            cols.resize(depth * hw, 0.0);
            cols.par_chunks_mut(hw)
                .enumerate()
                .with_min_len(8)
                .for_each(|(row, line)| self.im2col_row(x, g, row, line));
            cols
        };
        for (row, &bias) in y.chunks_exact_mut(hw).zip(b) {
            row.fill(bias);
        }
        gemm(
            View::row_major(w, g.o, depth),
            View::row_major(rhs, depth, hw),
            y,
            None,
            true,
        );
        y.par_chunks_mut(hw)
            .for_each(|row| row.iter_mut().for_each(|v| *v = v.max(0.0)));
    }
}

impl CustomOp3 for ConvRelu {
    fn name(&self) -> &'static str {
        "inception-conv-relu"
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
        let (x, w, b) = (
            contiguous_f32(sx, lx, "conv")?,
            contiguous_f32(sw, lw, "conv")?,
            contiguous_f32(sb, lb, "conv")?,
        );
        let g = self.geometry(lx.dims(), lw.dims(), lb.dims())?;
        let n = lx.dims()[0];
        let mut out = vec![0f32; n * g.o * g.ho * g.wo];
        let mut cols = Vec::new();
        if !out.is_empty() {
            let images = x.chunks_exact(g.c * g.h * g.w);
            for (image, y) in images.zip(out.chunks_exact_mut(g.o * g.ho * g.wo)) {
                self.image(image, w, b, y, &mut cols, g);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, g.o, g.ho, g.wo))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Every kernel shape, stride and padding Inception-v3 uses (and a kernel as large as its
    /// input) gives candle's convolution + bias + ReLU, and an image's values do not depend
    /// on the rest of its batch.
    #[test]
    fn matches_candle_conv2d_relu() -> Result<()> {
        let dev = Device::Cpu;
        for (c, o, (kh, kw), stride, pad, (h, w)) in [
            (3, 32, (3, 3), 2, (0, 0), (19, 23)),
            (32, 64, (3, 3), 1, (1, 1), (9, 8)),
            (16, 24, (1, 1), 1, (0, 0), (7, 7)),
            (8, 12, (5, 5), 1, (2, 2), (6, 5)),
            (12, 10, (1, 7), 1, (0, 3), (9, 8)),
            (12, 10, (7, 1), 1, (3, 0), (9, 8)),
            (6, 8, (1, 3), 1, (0, 1), (4, 4)),
            (6, 8, (3, 1), 1, (1, 0), (4, 4)),
            (5, 96, (3, 3), 2, (0, 0), (17, 17)),
            (4, 6, (3, 3), 1, (0, 0), (3, 3)),
        ] {
            let x = Tensor::randn(0f32, 1.0, (3, c, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 0.3, (o, c, kh, kw), &dev)?;
            let b = Tensor::randn(0f32, 1.0, o, &dev)?;
            let conv = ConvRelu { stride, pad };
            let got = conv.forward(&x, &wt, &b)?;
            let want = kernels::with_generic_ops(|| conv.forward(&x, &wt, &b))?;
            assert_eq!(got.dims(), want.dims());
            let diff = (&got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "{kh}×{kw} s{stride} {pad:?}: differs by {diff}");
            let alone = conv.forward(&x.narrow(0, 1, 1)?, &wt, &b)?;
            let in_batch = got.narrow(0, 1, 1)?;
            assert_eq!(
                alone.flatten_all()?.to_vec1::<f32>()?,
                in_batch.flatten_all()?.to_vec1::<f32>()?,
                "{kh}×{kw}: depends on the batch"
            );
        }
        Ok(())
    }
}
