//! 2-D convolution for frozen image networks (evaluation: decoding latents, the feature
//! network, Stable Diffusion's UNet and VAE): im2col then one matrix product with the bias and
//! optional SiLU fused. No backward of its own: `conv_backward` computes the input gradient
//! of frozen weights and the weight gradient of LoRA factors from the same im2col.
//!
//! Two ways to use the cores, chosen by shape alone so an image's values never depend on the
//! rest of its batch:
//! - narrow layers (≤ 64 output channels: the small image networks) split the images across
//!   threads, each thread one product per group of images;
//! - wide layers (the UNet's 320–1280 channels, often on a batch of 2) take the images a group
//!   at a time and split each product's output channels across threads: every thread packs
//!   only its rows of the weights, and a batch of two no longer leaves a core idle.

use super::gemm::{gemm, product, View};
use super::silu::silu;
use super::storage::contiguous_f32;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Output positions per matrix product, at least.
pub(super) const COLUMNS: usize = 512;
/// gemm sums in another order when both sides of a product are at most this wide, or when
/// their product is at most `SMALL²/16`: wide-layer products stay above both, whatever their
/// batch or thread split.
const SMALL: usize = 64;
/// Output channels per thread of a wide layer come in multiples of gemm's micro-panel.
const PANEL: usize = 16;

#[derive(Clone, Copy, Debug)]
pub struct Conv {
    pub stride: usize,
    pub padding: usize,
    /// Apply SiLU to the output.
    pub silu: bool,
}

/// Sizes of one convolution: input `c × h × w`, kernel `k × k`, output `o × ho × wo`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub o: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geometry {
    pub fn depth(&self) -> usize {
        self.c * self.k * self.k
    }

    pub fn positions(&self) -> usize {
        self.ho * self.wo
    }

    pub fn image(&self) -> usize {
        self.c * self.h * self.w
    }

    /// The same convolution with `o` output channels.
    pub fn with_outputs(self, o: usize) -> Self {
        Self { o, ..self }
    }
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

    /// The sizes of this convolution of an `x` `[B, C, H, W]` with a `w` `[O, C, k, k]`.
    pub(super) fn geometry(self, x: &[usize], w: &[usize]) -> Result<Geometry> {
        let (&[_, c, h, wd], &[o, wc, k, k2]) = (x, w) else {
            candle_core::bail!("conv: expected [B, C, H, W] input and [O, C, k, k] weight, got {x:?} and {w:?}")
        };
        let (Some(ho), Some(wo)) = (self.out_size(h, k), self.out_size(wd, k)) else {
            candle_core::bail!("conv: a {k}×{k} kernel does not fit a {h}×{wd} input")
        };
        if wc != c || k2 != k || self.stride == 0 {
            candle_core::bail!("conv: input {x:?} and weight {w:?} do not fit")
        }
        Ok(Geometry {
            c,
            h,
            w: wd,
            k,
            o,
            ho,
            wo,
        })
    }

    /// A 1×1 convolution at stride 1 without padding: the input already is its im2col matrix.
    pub(super) fn pointwise(self, g: Geometry) -> bool {
        g.k == 1 && self.stride == 1 && self.padding == 0
    }

    /// `act(conv2d(x, w) + b)` of `n` images on slices: `w` `[O, depth]`, `b` `[O]`.
    pub(super) fn run(self, x: &[f32], w: &[f32], b: &[f32], n: usize, g: Geometry) -> Vec<f32> {
        // Wide products must stay on gemm's general path for every batch: more than SMALL
        // channels, and at least 4 positions per image (o · width > SMALL²/16).
        match self.is_wide(g) {
            true => self.wide(x, w, b, n, g, None),
            false => self.narrow(x, w, b, n, g),
        }
    }

    fn is_wide(self, g: Geometry) -> bool {
        g.o > SMALL && g.positions() >= 4
    }

    /// `(conv2d(x, w) + b, conv2d(x, a))` for a LoRA layer's base weights `w` `[O, depth]`
    /// and down factor `a` `[r, depth]`: wide layers take both products from one im2col.
    pub(super) fn run_adapted(
        self,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        a: &[f32],
        n: usize,
        g: Geometry,
    ) -> (Vec<f32>, Vec<f32>) {
        let r = g.with_outputs(a.len() / g.depth().max(1));
        if !self.is_wide(g) {
            return (self.narrow(x, w, b, n, g), self.run(x, a, &vec![0.0; r.o], n, r));
        }
        let mut h = vec![0f32; n * r.o * g.positions()];
        let y = self.wide(x, w, b, n, g, Some((a, &mut h)));
        (y, h)
    }

    /// The im2col matrix `[depth, images·positions]` of the images `xs`, rows filled in
    /// parallel (image `j` in columns `j·positions..`).
    pub(super) fn im2col_images(self, xs: &[f32], g: Geometry, cols: &mut Vec<f32>) {
        let hw = g.positions();
        let width = xs.len() / g.image() * hw;
        cols.resize(g.depth() * width, 0.0);
        cols.par_chunks_mut(width)
            .enumerate()
            .with_min_len(16)
            .for_each(|(row, line)| {
                for (j, image) in xs.chunks_exact(g.image()).enumerate() {
                    im2col_row(image, g, self, row, &mut line[j * hw..(j + 1) * hw]);
                }
            });
    }

    /// Narrow layers: groups of images (one fixed-width product each, a short last group
    /// zero-padded, because gemm blocks small products by width) split across threads.
    fn narrow(self, x: &[f32], w: &[f32], b: &[f32], n: usize, g: Geometry) -> Vec<f32> {
        let (ckk, hw, o) = (g.depth(), g.positions(), g.o);
        let group = (COLUMNS / hw).max(1);
        let width = group * hw;
        let mut out = vec![0f32; n * o * hw];
        out.par_chunks_mut(group * o * hw).enumerate().for_each(|(gi, y)| {
            let mut cols = vec![0f32; ckk * width];
            for (j, image) in x[gi * group * g.image()..]
                .chunks(g.image())
                .take(y.len() / (o * hw))
                .enumerate()
            {
                im2col(image, g, self, &mut cols[j * hw..], width);
            }
            let mut prod = vec![0f32; o * width];
            biased_product(w, &cols, b, &mut prod, (0, ckk, width));
            scatter(&prod, y, hw, width);
            if self.silu {
                silu(y);
            }
        });
        out
    }

    /// Wide layers: groups of images of at least `COLUMNS` positions (not padded), one after
    /// the other, each product's output channels split across threads.
    /// With `adapter` = (A `[r, depth]`, h `[n, r, positions]`), also `h ← conv2d(x, A)` from
    /// the same im2col matrices.
    fn wide(
        self,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        n: usize,
        g: Geometry,
        mut adapter: Option<(&[f32], &mut [f32])>,
    ) -> Vec<f32> {
        let (ckk, hw, o) = (g.depth(), g.positions(), g.o);
        let group = COLUMNS.div_ceil(hw).min(n);
        let mut out = vec![0f32; n * o * hw];
        let (mut cols, mut prod, mut hidden) = (Vec::new(), Vec::new(), Vec::new());
        for (gi, y) in out.chunks_mut(group * o * hw).enumerate() {
            let images = y.len() / (o * hw);
            let width = images * hw;
            let xs = &x[gi * group * g.image()..][..images * g.image()];
            let rhs: &[f32] = if self.pointwise(g) && images == 1 {
                xs
            } else {
                self.im2col_images(xs, g, &mut cols);
                &cols
            };
            if let Some((a, h)) = adapter.as_mut() {
                let r = a.len() / ckk;
                let h = &mut h[gi * group * r * hw..][..images * r * hw];
                let (a, rhs) = (View::row_major(a, r, ckk), View::row_major(rhs, ckk, width));
                if images == 1 {
                    gemm(a, rhs, h, None, false);
                } else {
                    hidden.resize(r * width, 0.0);
                    gemm(a, rhs, &mut hidden, None, false);
                    scatter(&hidden, h, hw, width);
                }
            }
            // One image: the product's rows are its output channels, written in place.
            let dst: &mut [f32] = if images == 1 {
                y
            } else {
                prod.resize(o * width, 0.0);
                &mut prod
            };
            let rows = row_block(o, width);
            dst.par_chunks_mut(rows * width).enumerate().for_each(|(i, d)| {
                biased_product(w, rhs, b, d, (i * rows, ckk, width));
            });
            if images > 1 {
                scatter(&prod, y, hw, width);
            }
            if self.silu {
                y.par_chunks_mut(PANEL * hw).for_each(silu);
            }
        }
        out
    }
}

/// Output channels per thread of a wide layer: whole micro-panels, and more than `SMALL`
/// whenever the product is at most `SMALL` wide (so every block takes gemm's general path).
fn row_block(o: usize, width: usize) -> usize {
    let mut threads = rayon::current_num_threads().min(o / PANEL).max(1);
    loop {
        let rows = o.div_ceil(threads).next_multiple_of(PANEL).min(o);
        let last = o - (o.div_ceil(rows) - 1) * rows;
        if threads == 1 || width > SMALL || last > SMALL {
            return rows;
        }
        threads -= 1;
    }
}

/// `dst ← w[r0.., :] · rhs + b[r0..]` for the `dst.len() / width` output channels from `r0`,
/// `w` `[O, depth]`, `rhs` `[depth, width]`: the bias written first, gemm accumulating onto it.
fn biased_product(w: &[f32], rhs: &[f32], b: &[f32], dst: &mut [f32], (r0, depth, width): (usize, usize, usize)) {
    let rows = dst.len() / width;
    for (row, &bias) in dst.chunks_exact_mut(width).zip(&b[r0..]) {
        row.fill(bias);
    }
    product(
        View::row_major(&w[r0 * depth..], rows, depth),
        View::row_major(rhs, depth, width),
        dst,
        None,
        true,
    );
}

/// Image `j`'s channels from the product of a group (`prod` `[O, width]`, image `j` in
/// columns `j·hw..`) into `y` `[images, O, hw]`.
pub(super) fn scatter(prod: &[f32], y: &mut [f32], hw: usize, width: usize) {
    let o = prod.len() / width;
    for (j, image) in y.chunks_exact_mut(o * hw).enumerate() {
        for (channel, dst) in image.chunks_exact_mut(hw).enumerate() {
            dst.copy_from_slice(&prod[channel * width + j * hw..][..hw]);
        }
    }
}

/// `cols[(c·k + ky)·k + kx][oy·wo + ox] = x[c][oy·s + ky − p][ox·s + kx − p]`, zero outside;
/// rows of `cols` are `ld` apart.
fn im2col(x: &[f32], g: Geometry, conv: Conv, cols: &mut [f32], ld: usize) {
    let hw = g.positions();
    for row in 0..g.depth() {
        im2col_row(x, g, conv, row, &mut cols[row * ld..row * ld + hw]);
    }
}

/// Row `row` = `(c·k + ky)·k + kx` of one image's im2col matrix into `out` (`ho·wo` values).
pub(super) fn im2col_row(x: &[f32], g: Geometry, conv: Conv, row: usize, out: &mut [f32]) {
    let (h, w, k, wo) = (g.h, g.w, g.k, g.wo);
    let (s, p) = (conv.stride, conv.padding as isize);
    let (ci, ky, kx) = (row / (k * k), row / k % k, row % k);
    let plane = &x[ci * h * w..(ci + 1) * h * w];
    // Output columns lo..hi read inside the input row (ox·s + kx − p in 0..w); the same
    // for every output row, so worked out once.
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
        let (x, w, b) = (
            contiguous_f32(sx, lx, "conv")?,
            contiguous_f32(sw, lw, "conv")?,
            contiguous_f32(sb, lb, "conv")?,
        );
        let g = self.geometry(lx.dims(), lw.dims())?;
        let n = lx.dims()[0];
        if lb.dims() != [g.o] {
            candle_core::bail!("conv: bias {:?} does not fit weight {:?}", lb.dims(), lw.dims())
        }
        let out = self.run(x, w, b, n, g);
        Ok((CpuStorage::F32(out), Shape::from((n, g.o, g.ho, g.wo))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};
    use candle_nn::{Conv2d, Conv2dConfig};

    /// Every kernel size, stride and padding the image networks and the UNet use (and odd
    /// sizes, kernels wider than the image) matches candle's convolution, with and without
    /// SiLU, and an image's values depend neither on the rest of its batch nor on the threads.
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
            // Wide layers (> 64 output channels): 6×6, 1×1 pointwise, stride 2, a 2×2 map.
            (3, 96, 3, 1, 6),
            (5, 80, 1, 1, 5),
            (4, 130, 3, 2, 8),
            (2, 72, 3, 1, 2),
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
            // Nor on how many threads share the work.
            let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let one = single
                .install(|| conv.forward(&x, &w, &b))?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let many = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
            let three = many
                .install(|| conv.forward(&x, &w, &b))?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_eq!(one, three, "c={c} o={o} k={k} s={stride}: depends on the thread count");
        }
        Ok(())
    }
}
