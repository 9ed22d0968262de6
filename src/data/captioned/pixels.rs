//! Training images as pixels: each resized so its shorter side is R (bilinear) and
//! centre-cropped to R×R, as diffusers' training scripts do, then scaled to [-1, 1] RGB.
//! A chunk is decoded at a time, so memory holds only the images about to be encoded.

use super::entry::Entry;
use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use rayon::prelude::*;
use std::path::Path;

/// One image as `[3, r, r]` in [-1, 1]: shorter side to `r`, centre crop.
pub fn load_image(path: &Path, r: usize) -> Result<Vec<f32>> {
    let img = image::ImageReader::open(path)
        .and_then(|reader| reader.with_guessed_format())
        .with_context(|| format!("{}: cannot read", path.display()))?
        .decode()
        .with_context(|| format!("{}: cannot decode image", path.display()))?;
    let (w, h) = (img.width() as f64, img.height() as f64);
    ensure!(w >= 1.0 && h >= 1.0, "{}: empty image", path.display());
    let scale = r as f64 / w.min(h);
    let (nw, nh) = (
        ((w * scale).round() as u32).max(r as u32),
        ((h * scale).round() as u32).max(r as u32),
    );
    let resized = img.resize_exact(nw, nh, FilterType::Triangle).to_rgb8();
    let (left, top) = ((nw - r as u32) / 2, (nh - r as u32) / 2);
    let crop = image::imageops::crop_imm(&resized, left, top, r as u32, r as u32).to_image();
    let mut out = vec![0f32; 3 * r * r];
    for (x, y, p) in crop.enumerate_pixels() {
        for c in 0..3 {
            out[c * r * r + y as usize * r + x as usize] = p[c] as f32 / 127.5 - 1.0;
        }
    }
    Ok(out)
}

/// The images of `entries` as `[n, 3, r, r]`, decoded in parallel (the order is kept).
pub fn load_chunk(entries: &[Entry], r: usize) -> Result<Tensor> {
    ensure!((1..=4096).contains(&r), "--resolution {r}: must be between 1 and 4096");
    let images = entries
        .par_iter()
        .map(|e| load_image(&e.image, r))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::from_vec(
        images.concat(),
        (entries.len(), 3, r, r),
        &Device::Cpu,
    )?)
}
