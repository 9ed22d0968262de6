//! Latents to pictures: the VAE's decode as diffusers' pipelines postprocess it, and one PNG
//! file per row.

use super::pipeline::Pipeline;
use crate::nets::layers::map_chunks;
use crate::nets::sd::vae::AutoencoderKl;
use crate::runtime::device::Runtime;
use crate::runtime::files::{ensure_replaceable, write_atomic};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use std::path::{Path, PathBuf};

/// Images `[B, 3, H, W]` in [0, 1] from UNet latents `[B, C, h, w]`:
/// `clamp(vae.decode(z / scaling_factor)/2 + ½, 0, 1)` (`output_type="pil"` before rounding),
/// one row at a time (the VAE's decoder is the memory-hungriest network of a pipeline).
pub fn decode(pipeline: &Pipeline, rt: &Runtime, latents: &Tensor) -> Result<Tensor> {
    decode_with(pipeline, rt, latents, &|| ())
}

/// `decode`, calling `tick` after each row (progress of a long decode).
pub fn decode_with(pipeline: &Pipeline, rt: &Runtime, latents: &Tensor, tick: &dyn Fn()) -> Result<Tensor> {
    decode_rows(&pipeline.vae(rt)?, latents, tick)
}

/// `decode` with a VAE already loaded (an evaluation decodes block after block).
pub fn decode_rows(vae: &AutoencoderKl, latents: &Tensor, tick: &dyn Fn()) -> Result<Tensor> {
    let scale = vae.scaling_factor();
    map_chunks(latents, 1, |z| {
        let x = vae.decode(&(z / scale)?)?;
        tick();
        Ok(((x / 2.0)? + 0.5)?.clamp(0f32, 1f32)?)
    })
}

/// The file of row `i` in `dir`: `00000.png`, `00001.png`, ….
pub fn png_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("{i:05}.png"))
}

/// Refuses, before work, a PNG file of rows `0..rows` in `dir` that exists and is not a
/// regular file (a pipe, device, link or folder), naming `flag`.
pub fn check_png_paths(dir: &Path, rows: usize, flag: &str) -> Result<()> {
    (0..rows).try_for_each(|i| ensure_replaceable(&png_path(dir, i), flag))
}

/// One PNG per row of `images` `[B, C, H, W]` in [0, 1] (C = 1: grey, 3: RGB), values
/// `round(255 v)` as diffusers' `numpy_to_pil`, written atomically into `dir`.
pub fn write_pngs(dir: &Path, images: &Tensor) -> Result<()> {
    write_pngs_from(dir, images, 0)
}

/// `write_pngs` of a block of rows whose first is row `first` (its file `{first:05}.png`).
pub fn write_pngs_from(dir: &Path, images: &Tensor, first: usize) -> Result<()> {
    let (b, c, h, w) = images.dims4().context("images to write as PNG must be [B, C, H, W]")?;
    let bytes: Vec<u8> = images
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    let (width, height) = (w as u32, h as u32);
    for (i, chw) in bytes.chunks(c * h * w).enumerate().take(b) {
        // CHW planes to interleaved HWC pixels.
        let hwc: Vec<u8> = (0..h * w)
            .flat_map(|p| (0..c).map(move |ch| chw[ch * h * w + p]))
            .collect();
        let mut png = Vec::new();
        let cursor = &mut std::io::Cursor::new(&mut png);
        match c {
            1 => {
                image::GrayImage::from_raw(width, height, hwc).map(|img| img.write_to(cursor, image::ImageFormat::Png))
            }
            3 => image::RgbImage::from_raw(width, height, hwc).map(|img| img.write_to(cursor, image::ImageFormat::Png)),
            _ => bail!("images with {c} channels cannot be written as PNG (1 or 3)"),
        }
        .context("image buffer size")?
        .context("PNG encoding")?;
        write_atomic(&png_path(dir, first + i), &png)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rows_become_png_files() {
        let dir = std::env::temp_dir().join(format!("dcm-png-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Row 0: R = 0, G = ½, B = 1 everywhere; row 1: all 0.2.
        let mut v = vec![0f32; 2 * 3 * 2 * 4];
        v[8..16].fill(0.5);
        v[16..24].fill(1.0);
        v[24..].fill(0.2);
        write_pngs(&dir, &Tensor::from_vec(v, (2, 3, 2, 4), &Device::Cpu).unwrap()).unwrap();
        let img = image::open(png_path(&dir, 0)).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (4, 2));
        assert_eq!(img.get_pixel(3, 1).0, [0, 128, 255]);
        assert_eq!(
            image::open(png_path(&dir, 1)).unwrap().to_rgb8().get_pixel(0, 0).0,
            [51; 3]
        );
        let grey = Tensor::full(0.25f32, (1, 1, 3, 3), &Device::Cpu).unwrap();
        write_pngs(&dir, &grey).unwrap();
        assert_eq!(
            image::open(png_path(&dir, 0)).unwrap().to_luma8().get_pixel(1, 1).0,
            [64]
        );
        let two = Tensor::zeros((1, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(write_pngs(&dir, &two).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
