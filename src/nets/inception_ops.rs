//! The parameter-free operations of pytorch-fid's Inception-v3, on `[B, C, H, W]` tensors of
//! any float dtype and device: its bilinear resize, the 3×3 average pool that ignores the
//! padding (TensorFlow's, which the FID blocks keep) and the 3×3 max pools.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};

/// PyTorch's `interpolate(mode="bilinear", align_corners=False)` without antialiasing, given
/// an output size: output pixel `i` samples the input at `(i + ½)·in/out − ½` (at least 0),
/// blending its two neighbours, the upper one clamped to the last pixel. Separable, so it is
/// two matrix products with the interpolation matrices.
pub fn resize_bilinear(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, c, hi, wi) = x.dims4()?;
    let rows = interpolation(hi, h, x.dtype(), x.device())?;
    let cols = interpolation(wi, w, x.dtype(), x.device())?;
    // Along the width: [B·C·hi, wi] · [wi, w].
    let y = x.contiguous()?.reshape((b * c * hi, wi))?.matmul(&cols.t()?)?;
    // Along the height, on the transposed maps: [B·C·w, hi] · [hi, h].
    let y = y.reshape((b * c, hi, w))?.transpose(1, 2)?.contiguous()?;
    let y = y.reshape((b * c * w, hi))?.matmul(&rows.t()?)?;
    Ok(y.reshape((b, c, w, h))?.transpose(2, 3)?.contiguous()?)
}

/// `[out, in]` weights of a 1-D linear resize (see `resize_bilinear`), computed in f64.
fn interpolation(input: usize, output: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let scale = input as f64 / output as f64;
    let mut m = vec![0f64; output * input];
    for (i, row) in m.chunks_exact_mut(input).enumerate() {
        let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let t = src - i0 as f64;
        row[i0] += 1.0 - t;
        row[i1] += t;
    }
    Ok(Tensor::from_vec(m, (output, input), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?)
}

/// 3×3 average pool at stride 1 with padding 1 whose means count only the pixels inside the
/// image (`count_include_pad=False`): the sum pool divided by 9 at most, 4 in the corners.
pub fn avg_pool_3x3_inside(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let mean9 = x
        .pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .avg_pool2d_with_stride(3, 1)?;
    let inside = |i: usize, n: usize| (i + 2).min(n) - i.saturating_sub(1);
    let factor: Vec<f64> = (0..h * w)
        .map(|p| 9.0 / (inside(p / w, h) * inside(p % w, w)) as f64)
        .collect();
    let factor = Tensor::from_vec(factor, (1, 1, h, w), &Device::Cpu)?
        .to_dtype(x.dtype())?
        .to_device(x.device())?;
    Ok(mean9.broadcast_mul(&factor)?)
}

/// 3×3 max pool at `stride`, padded by `pad` pixels that never win (−∞).
pub fn max_pool_3x3(x: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let padded = if pad == 0 {
        x.clone()
    } else {
        pad_with(&pad_with(x, 2, pad)?, 3, pad)?
    };
    Ok(padded.max_pool2d_with_stride(3, stride)?)
}

fn pad_with(x: &Tensor, dim: usize, pad: usize) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    dims[dim] = pad;
    let edge = Tensor::full(f32::NEG_INFINITY, dims, x.device())?.to_dtype(x.dtype())?;
    Ok(Tensor::cat(&[&edge, x, &edge], dim)?)
}

/// The mean over each map: `[B, C, H, W]` → `[B, C]` (the adaptive average pool to 1×1).
pub fn global_mean(x: &Tensor) -> Result<Tensor> {
    Ok(x.flatten_from(2)?.mean(D::Minus1)?)
}
