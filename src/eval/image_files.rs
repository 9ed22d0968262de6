//! A folder of images for the metrics: its image files (anything else named), each read as RGB
//! in [0, 1], and their features under a metric network, streamed in batches.

use crate::nets::feature_net::FeatureNet;
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

/// The PNG, JPEG and WebP files directly in `dir`, sorted by name; anything else but hidden
/// files is an error naming it (a metric silently computed on part of a folder is wrong).
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        ensure!(
            path.is_file() && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg" | "webp")),
            "{}: not a PNG, JPEG or WebP image (an image folder holds nothing else)",
            path.display()
        );
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// One image as `[3, H, W]` f32 in [0, 1].
pub fn read_image(path: &Path) -> Result<Tensor> {
    let img = image::open(path)
        .with_context(|| format!("{}: cannot decode image", path.display()))?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let t = Tensor::from_vec(img.into_raw(), (h, w, 3), &Device::Cpu)?.permute((2, 0, 1))?;
    Ok((t.to_dtype(DType::F32)? / 255.0)?)
}

/// Features `[N, dim]` of the images in `files` (in that order), up to `batch` same-size
/// images per network call.
pub fn files_features(net: &dyn FeatureNet, files: &[PathBuf], batch: usize) -> Result<Tensor> {
    ensure!(!files.is_empty(), "no images");
    let mut parts = Vec::new();
    let mut pending: Vec<Tensor> = Vec::new();
    for file in files {
        crate::runtime::signals::check()?;
        let image = read_image(file)?;
        if pending.len() == batch.max(1) || pending.first().is_some_and(|p| p.dims() != image.dims()) {
            parts.push(net.features(&Tensor::stack(&pending, 0)?)?);
            pending.clear();
        }
        pending.push(image);
    }
    parts.push(net.features(&Tensor::stack(&pending, 0)?)?);
    Ok(Tensor::cat(&parts, 0)?)
}
