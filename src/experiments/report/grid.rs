//! PNG sample grids: one row per class (or prompt), images side by side with a 2-pixel gutter.

use anyhow::{ensure, Result};
use candle_core::Tensor;
use std::path::Path;

/// Writes images `[rows·cols, C, h, w]` (C = 1 grey or 3 RGB, values in [0, 1], row-major) as one PNG.
pub fn write_grid(path: &Path, images: &Tensor, rows: usize, cols: usize) -> Result<()> {
    let (n, c, h, w) = images.dims4()?;
    ensure!(
        n == rows * cols,
        "grid of {rows}×{cols} needs {} images, got {n}",
        rows * cols
    );
    ensure!(c == 1 || c == 3, "grid images need 1 or 3 channels, got {c}");
    let px = images.flatten_all()?.to_vec1::<f32>()?;
    let gap = 2;
    let (width, height) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
    let mut img = image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb([128; 3]));
    let level = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    for (i, tile) in px.chunks(c * h * w).enumerate() {
        let (r, col) = (i / cols, i % cols);
        for j in 0..h * w {
            let (x, y) = (gap + col * (w + gap) + j % w, gap + r * (h + gap) + j / w);
            // Channel k of pixel j; a grey image repeats its one channel.
            let at = |k: usize| level(tile[(k % c) * h * w + j]);
            img.put_pixel(x as u32, y as u32, image::Rgb([at(0), at(1), at(2)]));
        }
    }
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    crate::runtime::files::write_atomic(path, &bytes)
}
