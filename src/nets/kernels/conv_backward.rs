//! The backward pass of `conv`'s convolution on the same im2col and matrix products:
//! - the input gradient of frozen weights, `col2im(Wᵀ · g)`: the transposed im2col product
//!   (the adjoint of im2col followed by the forward product), for every stride and padding,
//!   instead of candle's `conv_transpose2d`, a loop over output pixels;
//! - the weight gradient of trainable (LoRA) factors, `g · im2col(x)ᵀ`.
//!
//! Both take the images in groups of at least `COLUMNS` output positions, as the forward does,
//! so that small feature maps still make products wide enough to run at full speed.

use super::conv::{scatter, Conv, Geometry, COLUMNS};
use super::gemm::{gemm, product, View};
use super::storage::Values;
use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

/// Floats of one thread's block of the transposed product, at most (4 MiB: stays near L2).
const BLOCK: usize = 1 << 20;

/// One gradient flowing back through a convolution: its weights `[outputs, depth]` and the
/// gradient of its output `[images, outputs, positions]`.
#[derive(Clone, Copy)]
pub(super) struct Term<'a> {
    pub weights: &'a [f32],
    pub grad: &'a [f32],
}

/// `∂L/∂x` of `y = conv2d(x, w)` (stride, padding; `x` of shape `x_dims`) from `∂L/∂y`,
/// f32 on the CPU.
pub fn conv_input_gradient(
    grad: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    x_dims: &[usize],
) -> Result<Tensor> {
    let conv = Conv {
        stride,
        padding,
        silu: false,
    };
    let g = conv.geometry(x_dims, w.dims())?;
    let (grad, w) = (grad.contiguous()?, w.contiguous()?);
    let (gv, wv) = (Values::of(&grad), Values::of(&w));
    let (gs, ws) = (gv.get()?, wv.get()?);
    if gs.len() != x_dims[0] * g.o * g.positions() {
        candle_core::bail!(
            "conv input gradient: gradient {:?} does not fit the output of {x_dims:?}",
            grad.dims()
        )
    }
    let terms = [Term { weights: ws, grad: gs }];
    Tensor::from_vec(input_gradient(conv, g, x_dims[0], &terms), x_dims, &Device::Cpu)
}

/// Images per group: at least `COLUMNS` output positions, at most the batch.
fn group_size(g: Geometry, n: usize) -> usize {
    COLUMNS.div_ceil(g.positions()).min(n).max(1)
}

/// `∂L/∂x` `[n, C, H, W]` of the convolution with geometry `g` (its `o` ignored) from the sum
/// of `terms`: `col2im(Σ Wᵢᵀ · gᵢ)`. Each thread takes a block of input channels: it multiplies
/// its rows of every `Wᵢᵀ` with the group's gradients and folds the result into its channels.
pub(super) fn input_gradient(conv: Conv, g: Geometry, n: usize, terms: &[Term]) -> Vec<f32> {
    let (hw, plane, kk) = (g.positions(), g.h * g.w, g.k * g.k);
    let group = group_size(g, n);
    let mut gx = vec![0f32; n * g.image()];
    let mut gathered: Vec<Vec<f32>> = vec![Vec::new(); terms.len()];
    let mut staged = Vec::new();
    for (gi, out) in gx.chunks_mut(group * g.image()).enumerate() {
        let images = out.len() / g.image();
        let width = images * hw;
        for (t, buf) in terms.iter().zip(&mut gathered) {
            let o = t.weights.len() / g.depth();
            if images > 1 {
                buf.resize(o * width, 0.0);
                gather(&t.grad[gi * group * o * hw..][..images * o * hw], o, hw, buf);
            }
        }
        let rhs: Vec<View> = terms
            .iter()
            .zip(&gathered)
            .map(|(t, buf)| {
                let o = t.weights.len() / g.depth();
                match images {
                    1 => View::row_major(&t.grad[gi * group * o * hw..], o, hw),
                    _ => View::row_major(buf, o, width),
                }
            })
            .collect();
        // Channel-major `[C, images·H·W]`: one image writes in place, a group is scattered.
        let dst: &mut [f32] = if images == 1 {
            out
        } else {
            staged.resize(g.c * images * plane, 0.0);
            &mut staged
        };
        let blocks = rayon::current_num_threads().max((g.depth() * width).div_ceil(BLOCK));
        let channels = g.c.div_ceil(blocks.min(g.c));
        dst.par_chunks_mut(channels * images * plane)
            .enumerate()
            .for_each(|(bi, d)| {
                let (c0, cn) = (bi * channels, d.len() / (images * plane));
                let mut col = vec![0f32; cn * kk * width];
                for (i, (t, rhs)) in terms.iter().zip(&rhs).enumerate() {
                    let lhs = View::row_major(t.weights, rhs.rows, g.depth())
                        .t()
                        .rows(c0 * kk, cn * kk);
                    product(lhs, *rhs, &mut col, None, i > 0);
                }
                d.fill(0.0);
                for (c, planes) in d.chunks_exact_mut(images * plane).enumerate() {
                    for (j, p) in planes.chunks_exact_mut(plane).enumerate() {
                        for row in 0..kk {
                            let line = &col[(c * kk + row) * width + j * hw..][..hw];
                            col2im_row(p, g, conv, row, line);
                        }
                    }
                }
            });
        if images > 1 {
            scatter(&staged, out, plane, images * plane);
        }
    }
    gx
}

/// `∂L/∂W` `[r, depth]` of a convolution of the images `x` `[n, C, H, W]` whose output
/// gradient is `grad` `[n, r, positions]`: `Σ_groups grad · im2col(x)ᵀ`, the columns of the
/// result split across threads.
pub(super) fn weight_gradient(conv: Conv, g: Geometry, n: usize, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let (hw, depth) = (g.positions(), g.depth());
    let r = grad.len() / (n * hw).max(1);
    let group = group_size(g, n);
    let mut gw = vec![0f32; r * depth];
    let (mut cols, mut gathered) = (Vec::new(), Vec::new());
    for (gi, xs) in x.chunks(group * g.image()).enumerate() {
        let images = xs.len() / g.image();
        let width = images * hw;
        let gs = &grad[gi * group * r * hw..][..images * r * hw];
        let lhs = match images {
            1 => gs,
            _ => {
                gathered.resize(r * width, 0.0);
                gather(gs, r, hw, &mut gathered);
                &gathered
            }
        };
        let rhs: &[f32] = match conv.pointwise(g) && images == 1 {
            true => xs,
            false => {
                conv.im2col_images(xs, g, &mut cols);
                &cols
            }
        };
        gemm(
            View::row_major(lhs, r, width),
            View::row_major(rhs, depth, width).t(),
            &mut gw,
            None,
            gi > 0,
        );
    }
    gw
}

/// `src` `[images, o, hw]` into `dst` `[o, images·hw]` (image `j` in columns `j·hw..`).
fn gather(src: &[f32], o: usize, hw: usize, dst: &mut [f32]) {
    let width = src.len() / o;
    for (j, image) in src.chunks_exact(o * hw).enumerate() {
        for (channel, values) in image.chunks_exact(hw).enumerate() {
            dst[channel * width + j * hw..][..hw].copy_from_slice(values);
        }
    }
}

/// The adjoint of `im2col_row`: adds row `row` (`(ky·k + kx)` within its channel) of an
/// im2col-shaped gradient, `line` (`ho·wo` values), into its channel's `plane` (`h·w`).
fn col2im_row(plane: &mut [f32], g: Geometry, conv: Conv, row: usize, line: &[f32]) {
    let (h, w, k, wo) = (g.h, g.w, g.k, g.wo);
    let (s, p) = (conv.stride, conv.padding as isize);
    let (ky, kx) = (row / k % k, row % k);
    let shift = kx as isize - p;
    let lo = ((-shift).max(0) as usize).div_ceil(s).min(wo);
    let hi = (((w as isize - 1 - shift) / s as isize + 1).max(0) as usize).clamp(lo, wo);
    if lo == hi {
        return;
    }
    let first = (lo * s) as isize + shift;
    for (oy, values) in line.chunks_exact(wo).enumerate() {
        let iy = (oy * s) as isize + ky as isize - p;
        if iy < 0 || iy >= h as isize {
            continue;
        }
        let dst = &mut plane[iy as usize * w + first as usize..(iy as usize + 1) * w];
        if s == 1 {
            for (d, &v) in dst.iter_mut().zip(&values[lo..hi]) {
                *d += v;
            }
        } else {
            for (d, &v) in dst.iter_mut().step_by(s).zip(&values[lo..hi]) {
                *d += v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Result, Tensor, Var};

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Against candle's backward of `conv2d` (its `conv_transpose2d` for the input, a
    /// convolution for the weights): every kernel size, stride and padding the networks use,
    /// odd and even sizes (output padding), wide and narrow layers, one image and groups of
    /// images, 1×1 pointwise layers.
    #[test]
    fn matches_candle_conv2d_backward() -> Result<()> {
        let dev = Device::Cpu;
        for (n, c, o, k, stride, padding, size) in [
            (2, 3, 4, 3, 1, 1, 7),
            (3, 5, 6, 3, 2, 1, 8),
            (2, 4, 3, 3, 2, 1, 7),
            (1, 6, 80, 3, 1, 1, 5),
            (3, 16, 96, 1, 1, 0, 6),
            (1, 16, 96, 1, 1, 0, 30),
            (2, 8, 72, 3, 2, 0, 9),
            (2, 2, 5, 5, 3, 2, 11),
            (4, 3, 70, 3, 1, 1, 2),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, size, size), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (o, c, k, k), &dev)?)?;
            let y = x.as_tensor().conv2d(w.as_tensor(), padding, stride, 1, 1)?;
            let r = Tensor::randn(0f32, 1.0, y.dims(), &dev)?;
            let grads = (&y * &r)?.sum_all()?.backward()?;
            let conv = Conv {
                stride,
                padding,
                silu: false,
            };
            let g = conv.geometry(x.dims(), w.dims())?;
            let (wv, rv, xv) = (values(w.as_tensor()), values(&r), values(x.as_tensor()));
            let gx = input_gradient(
                conv,
                g,
                n,
                &[Term {
                    weights: &wv,
                    grad: &rv,
                }],
            );
            let gw = weight_gradient(conv, g, n, &xv, &rv);
            let case = format!("n={n} c={c} o={o} k={k} s={stride} p={padding} size={size}");
            for (got, want, what) in [
                (gx, values(grads.get(x.as_tensor()).unwrap()), "input"),
                (gw, values(grads.get(w.as_tensor()).unwrap()), "weight"),
            ] {
                assert_eq!(got.len(), want.len(), "{case}: {what} size");
                let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
                let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    err <= 1e-5 * scale,
                    "{case}: {what} gradient off by {err} (scale {scale})"
                );
            }
        }
        Ok(())
    }

    /// Two terms add up: `col2im(W₁ᵀ g₁ + W₂ᵀ g₂)` is the sum of the single-term gradients.
    #[test]
    fn terms_add_up() {
        let dev = Device::Cpu;
        let conv = Conv {
            stride: 2,
            padding: 1,
            silu: false,
        };
        let g = conv.geometry(&[3, 4, 9, 9], &[5, 4, 3, 3]).unwrap();
        let draw = |shape: &[usize]| values(&Tensor::randn(0f32, 1.0, shape, &dev).unwrap());
        let (w1, w2) = (draw(&[5, 36]), draw(&[2, 36]));
        let (g1, g2) = (draw(&[3, 5, 25]), draw(&[3, 2, 25]));
        let (t1, t2) = (
            Term {
                weights: &w1,
                grad: &g1,
            },
            Term {
                weights: &w2,
                grad: &g2,
            },
        );
        let both = input_gradient(conv, g, 3, &[t1, t2]);
        let (one, two) = (input_gradient(conv, g, 3, &[t1]), input_gradient(conv, g, 3, &[t2]));
        for ((a, b), c) in both.iter().zip(&one).zip(&two) {
            assert!((a - (b + c)).abs() <= 1e-5 * (1.0 + a.abs()), "{a} vs {b} + {c}");
        }
    }
}
