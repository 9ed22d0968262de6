//! CLIP's image preprocessing exactly as transformers' `CLIPImageProcessor`: RGB, resize the
//! shortest side to `size.shortest_edge` (the other side `⌊s·long/short⌋`) with PIL's
//! antialiased bicubic filter on 8-bit pixels, centre crop to `crop_size` (offset
//! `⌊(H − h)/2⌋`), then `(x·rescale_factor − mean)/std` per channel.
//!
//! The resize is PIL's `Image.resize(…, BICUBIC)` re-implemented: separable (horizontal pass,
//! then vertical), cubic kernel a = −0.5 with its support stretched by the downscale factor,
//! weights normalised then quantised to 22-bit fixed point, each pass rounded and clamped to
//! u8. transformers 5's torchvision backend gives the same pixels (fixture: 2.4e-7 apart).

use anyhow::{anyhow, bail, ensure, Result};
use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, RgbImage};
use serde::Deserialize;
use std::path::Path;

#[derive(Clone, Debug, Deserialize)]
struct ShortestEdge {
    shortest_edge: usize,
}

#[derive(Clone, Debug, Deserialize)]
struct CropSize {
    height: usize,
    width: usize,
}

fn yes() -> bool {
    true
}

/// The fields of `preprocessor_config.json` the processor uses.
#[derive(Clone, Debug, Deserialize)]
pub struct ClipImageProcessor {
    size: ShortestEdge,
    crop_size: CropSize,
    image_mean: [f64; 3],
    image_std: [f64; 3],
    rescale_factor: f64,
    /// PIL's resampling filter id; only 3 (BICUBIC) is implemented.
    resample: u32,
    #[serde(default = "yes")]
    do_resize: bool,
    #[serde(default = "yes")]
    do_center_crop: bool,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "yes")]
    do_normalize: bool,
}

impl ClipImageProcessor {
    /// Reads `preprocessor_config.json`; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            crate::runtime::files::read_regular_text(path).map_err(|e| anyhow!("reading {}: {e}", path.display()))?;
        let p: Self = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        p.validate().map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(p)
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.resample == 3,
            "resample {} is not 3 (BICUBIC), the only filter implemented",
            self.resample
        );
        ensure!(
            self.do_resize && self.do_center_crop,
            "do_resize and do_center_crop must be true"
        );
        ensure!(self.size.shortest_edge >= 1, "size.shortest_edge must be at least 1");
        ensure!(
            self.crop_size.height >= 1 && self.crop_size.width >= 1,
            "crop_size must be at least 1×1"
        );
        ensure!(self.image_std.iter().all(|s| *s > 0.0), "image_std must be positive");
        Ok(())
    }

    /// `(height, width)` of the processed image.
    pub fn crop_size(&self) -> (usize, usize) {
        (self.crop_size.height, self.crop_size.width)
    }

    /// `pixel_values` `[3, crop_h, crop_w]` f32 of an image (converted to RGB; alpha dropped).
    pub fn preprocess(&self, image: &DynamicImage, device: &Device) -> Result<Tensor> {
        self.preprocess_rgb(&image.to_rgb8(), device)
    }

    /// `pixel_values` of a `[3, H, W]` image tensor: u8 as is, floats in [0, 1] as
    /// `round(255·x)` clamped (diffusers' `numpy_to_pil`).
    pub fn preprocess_tensor(&self, image: &Tensor) -> Result<Tensor> {
        let (c, h, w) = image
            .dims3()
            .map_err(|_| anyhow!("image must be [3, H, W], got {:?}", image.dims()))?;
        ensure!(c == 3, "image must have 3 channels, got {c}");
        let u8s = if image.dtype() == DType::U8 {
            image.clone()
        } else {
            (image.to_dtype(DType::F32)? * 255.0)?
                .round()?
                .clamp(0f32, 255f32)?
                .to_dtype(DType::U8)?
        };
        let hwc: Vec<u8> = u8s.permute((1, 2, 0))?.flatten_all()?.to_vec1()?;
        let rgb = RgbImage::from_raw(w as u32, h as u32, hwc).ok_or_else(|| anyhow!("image buffer size mismatch"))?;
        self.preprocess_rgb(&rgb, image.device())
    }

    fn preprocess_rgb(&self, rgb: &RgbImage, device: &Device) -> Result<Tensor> {
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        ensure!(w >= 1 && h >= 1, "image is empty ({w}×{h})");
        let (new_h, new_w) = resized_size(h, w, self.size.shortest_edge);
        let resized = resize_bicubic(rgb.as_raw(), (h, w), (new_h, new_w));
        let (ch, cw) = self.crop_size();
        if new_h < ch || new_w < cw {
            bail!("resized image {new_w}×{new_h} is smaller than the crop {cw}×{ch}");
        }
        let (top, left) = ((new_h - ch) / 2, (new_w - cw) / 2);
        let mut out = vec![0f32; 3 * ch * cw];
        for c in 0..3 {
            let (mean, std) = (self.image_mean[c], self.image_std[c]);
            for y in 0..ch {
                for x in 0..cw {
                    let v = resized[((top + y) * new_w + left + x) * 3 + c] as f64;
                    let v = if self.do_rescale { v * self.rescale_factor } else { v };
                    let v = if self.do_normalize { (v - mean) / std } else { v };
                    out[(c * ch + y) * cw + x] = v as f32;
                }
            }
        }
        Ok(Tensor::from_vec(out, (3, ch, cw), device)?)
    }
}

/// `(H', W')` with the shorter side `s` and the longer `⌊s·long/short⌋` (transformers'
/// `get_resize_output_image_size`, `default_to_square=False`).
fn resized_size(h: usize, w: usize, s: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = ((s * long) as f64 / short as f64) as usize;
    if w <= h {
        (new_long, s)
    } else {
        (s, new_long)
    }
}

/// Fixed-point precision of PIL's 8-bit resampling weights.
const PRECISION_BITS: u32 = 22;

/// Keys' cubic convolution kernel with a = −0.5 (PIL's `bicubic_filter`), support 2.
fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// One output sample's taps: first input index and fixed-point weights.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for resizing `n_in` samples to `n_out`.
fn taps(n_in: usize, n_out: usize) -> Vec<Taps> {
    let scale = n_in as f64 / n_out as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    let one = (1u32 << PRECISION_BITS) as f64;
    (0..n_out)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(n_in as i64) as usize;
            let k: Vec<f64> = (start..end)
                .map(|x| bicubic((x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = k.iter().sum();
            let weights = k
                .iter()
                .map(|&w| if total != 0.0 { w / total } else { w })
                .map(|w| {
                    if w < 0.0 {
                        (-0.5 + w * one) as i32
                    } else {
                        (0.5 + w * one) as i32
                    }
                })
                .collect();
            Taps { start, weights }
        })
        .collect()
}

/// Rounds a fixed-point sum (with the ½ already added) to u8, clamping (PIL's `clip8`).
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resamples interleaved RGB along one axis: `lines` lines starting `line_step` bytes apart,
/// samples within a line `tap_step` bytes apart; the output is `[lines, taps, 3]`.
fn pass(src: &[u8], taps: &[Taps], lines: usize, line_step: usize, tap_step: usize) -> Vec<u8> {
    let n = taps.len();
    let mut out = vec![0u8; lines * n * 3];
    for line in 0..lines {
        for (i, t) in taps.iter().enumerate() {
            for c in 0..3 {
                let mut sum: i64 = 1 << (PRECISION_BITS - 1);
                for (j, &w) in t.weights.iter().enumerate() {
                    sum += src[line * line_step + (t.start + j) * tap_step + c] as i64 * w as i64;
                }
                out[(line * n + i) * 3 + c] = clip8(sum);
            }
        }
    }
    out
}

/// PIL's `Image.resize((W', H'), BICUBIC)` of interleaved RGB `[H, W, 3]` u8: horizontal pass
/// first, each pass skipped when its size is unchanged. Also dgm-eval's DINOv2 resize
/// (`src/nets/dinov2/preprocess.rs`).
pub(crate) fn resize_bicubic(rgb: &[u8], (h, w): (usize, usize), (new_h, new_w): (usize, usize)) -> Vec<u8> {
    let horizontal = if new_w != w {
        pass(rgb, &taps(w, new_w), h, w * 3, 3)
    } else {
        rgb.to_vec()
    };
    if new_h == h {
        return horizontal;
    }
    // Vertical: lines are columns, taps step by a row; the result comes out [W', H', 3].
    let columns = pass(&horizontal, &taps(h, new_h), new_w, 3, new_w * 3);
    let mut out = vec![0u8; new_h * new_w * 3];
    for x in 0..new_w {
        for y in 0..new_h {
            let (from, to) = ((x * new_h + y) * 3, (y * new_w + x) * 3);
            out[to..to + 3].copy_from_slice(&columns[from..from + 3]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_sizes_follow_transformers() {
        assert_eq!(resized_size(50, 40, 32), (40, 32));
        assert_eq!(resized_size(40, 50, 32), (32, 40));
        assert_eq!(resized_size(333, 500, 224), (224, 336));
    }

    /// Same-size resampling is the identity; a constant image stays constant.
    #[test]
    fn resampling_is_exact_where_it_must_be() {
        let rgb: Vec<u8> = (0..7 * 5 * 3).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(resize_bicubic(&rgb, (7, 5), (7, 5)), rgb);
        assert_eq!(pass(&rgb, &taps(5, 5), 7, 15, 3), rgb);
        let flat = vec![200u8; 50 * 40 * 3];
        assert!(resize_bicubic(&flat, (50, 40), (17, 13)).iter().all(|&v| v == 200));
    }

    /// The `image` crate's CatmullRom (also a = −0.5) is not PIL's resize: it works in f32
    /// without PIL's 8-bit intermediate rounding; report how far apart they are.
    #[test]
    fn image_crate_catmull_rom_differs_from_pil() {
        let png = image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/clip/image.png"))
            .unwrap()
            .to_rgb8();
        let ours = resize_bicubic(png.as_raw(), (50, 40), (40, 32));
        let theirs = image::imageops::resize(&png, 32, 40, image::imageops::FilterType::CatmullRom);
        let worst = ours
            .iter()
            .zip(theirs.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        let differing = ours.iter().zip(theirs.as_raw()).filter(|(a, b)| a != b).count();
        eprintln!(
            "image crate CatmullRom vs PIL bicubic: {differing}/{} values differ, max {worst} levels",
            ours.len()
        );
        assert!(worst > 0);
    }
}
