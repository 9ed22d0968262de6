//! A folder of images with captions, the data people have for text-to-image models:
//! `name.png|jpg|jpeg` beside `name.txt`, or a `metadata.jsonl` of `{"file_name", "text"}`
//! lines (Hugging Face's imagefolder layout). Images are resized so the shorter side is R
//! (bilinear) and centre-cropped to R×R, as diffusers' training scripts do, and scaled to
//! [-1, 1] RGB. Every file that cannot be read is an error naming it: nothing is skipped.

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use std::path::{Path, PathBuf};

/// Images `[n, 3, R, R]` in [-1, 1] and one caption per image, in file-name order.
#[derive(Debug)]
pub struct Captioned {
    pub images: Tensor,
    pub captions: Vec<String>,
}

const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// (image path, caption) pairs from `metadata.jsonl`, or from `.txt` files beside the images.
pub fn pairs(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    ensure!(dir.is_dir(), "--data {}: not a folder", dir.display());
    let meta = dir.join("metadata.jsonl");
    let mut pairs = if meta.is_file() {
        from_metadata(dir, &meta)?
    } else {
        from_sidecars(dir)?
    };
    ensure!(
        !pairs.is_empty(),
        "--data {}: no images (expected name.png beside name.txt, or metadata.jsonl)",
        dir.display()
    );
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(pairs)
}

fn from_metadata(dir: &Path, meta: &Path) -> Result<Vec<(PathBuf, String)>> {
    let text = std::fs::read_to_string(meta).with_context(|| format!("{}: cannot read", meta.display()))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{} line {}", meta.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|f| f.as_str())
                .with_context(|| format!("{}: no string \"{k}\"", at()))
        };
        let file = dir.join(field("file_name")?);
        ensure!(file.is_file(), "{}: {} does not exist", at(), file.display());
        pairs.push((file, field("text")?.to_string()));
    }
    Ok(pairs)
}

fn from_sidecars(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut pairs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let path = entry.with_context(|| format!("{}: cannot list", dir.display()))?.path();
        if !is_image(&path) {
            continue;
        }
        let txt = path.with_extension("txt");
        ensure!(
            txt.is_file(),
            "{}: no caption ({} is missing)",
            path.display(),
            txt.display()
        );
        let caption = std::fs::read_to_string(&txt).with_context(|| format!("{}: cannot read", txt.display()))?;
        pairs.push((path, caption.trim().to_string()));
    }
    Ok(pairs)
}

/// One image as `[3, r, r]` in [-1, 1]: shorter side to `r`, centre crop.
pub fn load_image(path: &Path, r: usize) -> Result<Vec<f32>> {
    let img = image::open(path).with_context(|| format!("{}: cannot decode image", path.display()))?;
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

/// Every captioned image of `dir` at resolution `r`.
pub fn read(dir: &Path, r: usize) -> Result<Captioned> {
    if r == 0 || r > 4096 {
        bail!("--resolution {r}: must be between 1 and 4096");
    }
    let pairs = pairs(dir)?;
    let mut pixels = Vec::with_capacity(pairs.len() * 3 * r * r);
    let mut captions = Vec::with_capacity(pairs.len());
    for (path, caption) in pairs {
        crate::runtime::signals::check()?;
        pixels.extend(load_image(&path, r)?);
        captions.push(caption);
    }
    let images = Tensor::from_vec(pixels, (captions.len(), 3, r, r), &Device::Cpu)?;
    Ok(Captioned { images, captions })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dcm-captioned-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A 6×4 image whose left half is black and right half white.
    fn save(path: &Path) {
        let img = image::RgbImage::from_fn(6, 4, |x, _| {
            if x < 3 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        img.save(path).unwrap();
    }

    /// Sidecar captions and metadata.jsonl give the same pairs; resizing keeps the shorter
    /// side and the centre, values in [-1, 1].
    #[test]
    fn both_layouts_read_the_same_and_crop_the_centre() {
        let a = folder("sidecar");
        save(&a.join("b.png"));
        save(&a.join("a.png"));
        std::fs::write(a.join("a.txt"), "a cat\n").unwrap();
        std::fs::write(a.join("b.txt"), "two dogs").unwrap();
        let got = read(&a, 4).unwrap();
        assert_eq!(got.captions, vec!["a cat", "two dogs"]);
        assert_eq!(got.images.dims(), &[2, 3, 4, 4]);
        let m = folder("meta");
        save(&m.join("x.png"));
        std::fs::write(
            m.join("metadata.jsonl"),
            "{\"file_name\": \"x.png\", \"text\": \"a cat\"}\n",
        )
        .unwrap();
        let meta = read(&m, 4).unwrap();
        assert_eq!(meta.captions, vec!["a cat"]);
        assert_eq!(
            meta.images.get(0).unwrap().to_vec3::<f32>().unwrap(),
            got.images.get(0).unwrap().to_vec3::<f32>().unwrap()
        );
        // 6×4 → 6×4 at r = 4, crop columns 1..5: black, black, white, white.
        let row = got
            .images
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(row, vec![-1.0, -1.0, 1.0, 1.0]);
    }

    /// Nothing is skipped silently: a missing caption, a broken image, a bad metadata line
    /// and an empty folder are errors naming the file.
    #[test]
    fn unreadable_inputs_are_named() {
        let d = folder("bad");
        assert!(read(&d, 4).unwrap_err().to_string().contains("no images"));
        save(&d.join("a.png"));
        let e = read(&d, 4).unwrap_err().to_string();
        assert!(e.contains("a.png: no caption"), "{e}");
        std::fs::write(d.join("a.txt"), "x").unwrap();
        std::fs::write(d.join("c.jpg"), b"not a jpeg").unwrap();
        std::fs::write(d.join("c.txt"), "y").unwrap();
        let e = read(&d, 4).unwrap_err().to_string();
        assert!(e.contains("c.jpg: cannot decode image"), "{e}");
        std::fs::write(d.join("metadata.jsonl"), "{\"file_name\": \"a.png\"}\n").unwrap();
        let e = read(&d, 4).unwrap_err().to_string();
        assert!(e.contains("metadata.jsonl line 1: no string \"text\""), "{e}");
        assert!(read(&d, 0).unwrap_err().to_string().starts_with("--resolution 0"));
    }
}
