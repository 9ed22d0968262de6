//! PNG sample grids: one row per class, images side by side with a 2-pixel gutter.

use anyhow::{ensure, Result};
use candle_core::Tensor;
use std::path::Path;

/// Writes images `[rows·cols, 1, h, w]` (values in [0, 1], row-major) as one PNG.
pub fn write_grid(path: &Path, images: &Tensor, rows: usize, cols: usize) -> Result<()> {
    let (n, _, h, w) = images.dims4()?;
    ensure!(
        n == rows * cols,
        "grid of {rows}×{cols} needs {} images, got {n}",
        rows * cols
    );
    let px = images.flatten_all()?.to_vec1::<f32>()?;
    let gap = 2;
    let (width, height) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
    let mut img = image::GrayImage::from_pixel(width as u32, height as u32, image::Luma([128]));
    for (i, tile) in px.chunks(h * w).enumerate() {
        let (r, c) = (i / cols, i % cols);
        for (j, v) in tile.iter().enumerate() {
            let (x, y) = (gap + c * (w + gap) + j % w, gap + r * (h + gap) + j / w);
            img.put_pixel(
                x as u32,
                y as u32,
                image::Luma([(v.clamp(0.0, 1.0) * 255.0).round() as u8]),
            );
        }
    }
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    crate::runtime::files::write_atomic(path, &bytes)
}
