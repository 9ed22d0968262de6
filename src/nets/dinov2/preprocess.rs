//! dgm-eval's DINOv2 input transform (its default, without `--clean_resize`): the 8-bit RGB
//! image is resized to exactly 224×224 by PIL's antialiased bicubic filter (torchvision's
//! `Resize((224, 224), BICUBIC)` on a PIL image calls PIL itself; aspect ratio not kept, no
//! crop), scaled to [0, 1] by `/255` and normalised with the ImageNet mean and std, all in f32.
//!
//! dgm-eval reads 8-bit files; images arriving here as floats in [0, 1] are first quantised
//! as dcm writes its PNGs (`round(255·clamp(v, 0, 1))`), so a tensor and the file saved from
//! it give the same features.

use crate::nets::sd::clip_preprocess::resize_bicubic;
use anyhow::{anyhow, ensure, Result};
use candle_core::{DType, Device, Tensor};

/// The side of the square network input.
pub const SIZE: usize = 224;

/// torchvision's ImageNet statistics, as dgm-eval passes them (f32 once in the tensor).
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `pixel_values` `[B, 3, 224, 224]` f32 on `device` of RGB images `[B, 3, H, W]` in [0, 1].
pub fn pixel_values(images: &Tensor, device: &Device) -> Result<Tensor> {
    let (b, c, h, w) = images
        .dims4()
        .map_err(|_| anyhow!("images must be [B, 3, H, W], got {:?}", images.dims()))?;
    ensure!(c == 3, "images must have 3 (RGB) channels, got {c}");
    ensure!(
        images.dtype().is_float(),
        "images must be floating point in [0, 1], got {:?}",
        images.dtype()
    );
    ensure!(
        b >= 1 && h >= 1 && w >= 1,
        "images must not be empty, got {:?}",
        images.dims()
    );
    let values: Vec<f32> = images.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    ensure!(
        values.iter().all(|v| v.is_finite()),
        "images hold a non-finite value (NaN or infinity)"
    );
    let mut out = Vec::with_capacity(b * 3 * SIZE * SIZE);
    for image in values.chunks_exact(3 * h * w) {
        let resized = resize_bicubic(&interleaved_u8(image, h * w), (h, w), (SIZE, SIZE));
        out.extend(normalised(&resized));
    }
    Ok(Tensor::from_vec(out, (b, 3, SIZE, SIZE), device)?)
}

/// `[3, H, W]` floats → interleaved `[H, W, 3]` 8-bit, as a PNG written by dcm holds them.
fn interleaved_u8(planar: &[f32], pixels: usize) -> Vec<u8> {
    let mut rgb = vec![0u8; pixels * 3];
    for (ch, plane) in planar.chunks_exact(pixels).enumerate() {
        for (i, v) in plane.iter().enumerate() {
            rgb[i * 3 + ch] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    rgb
}

/// Interleaved 224×224 8-bit → planar `(v/255 − mean)/std` (`ToTensor` then `Normalize`).
fn normalised(rgb: &[u8]) -> Vec<f32> {
    let pixels = SIZE * SIZE;
    let mut out = vec![0f32; 3 * pixels];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for ch in 0..3 {
            out[ch * pixels + i] = (px[ch] as f32 / 255.0 - MEAN[ch]) / STD[ch];
        }
    }
    out
}
