//! A folder of PNG/JPEG images with one sub-folder per class (sorted names are
//! classes 0, 1, …), read as grayscale float32 `[n, 1, h, w]` in [0, 1].

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use std::path::Path;

pub fn read(dir: &Path) -> Result<(Tensor, Vec<u32>, usize)> {
    let mut classes: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    ensure!(
        !classes.is_empty(),
        "{}: no class sub-folders (and no IDX files)",
        dir.display()
    );
    let (mut pixels, mut labels, mut size) = (Vec::new(), Vec::new(), None);
    for (c, class_dir) in classes.iter().enumerate() {
        let mut files: Vec<_> = std::fs::read_dir(class_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_image(p))
            .collect();
        files.sort();
        for f in files {
            crate::runtime::signals::check()?;
            let img = image::open(&f)
                .with_context(|| format!("{}: cannot decode image", f.display()))?
                .to_luma8();
            let dims = (img.height() as usize, img.width() as usize);
            ensure!(
                *size.get_or_insert(dims) == dims,
                "{}: size {}x{} differs from the first image's {}x{}",
                f.display(),
                dims.1,
                dims.0,
                size.unwrap().1,
                size.unwrap().0
            );
            pixels.extend(img.as_raw().iter().map(|&b| b as f32 / 255.0));
            labels.push(c as u32);
        }
    }
    let (h, w) = size.with_context(|| format!("{}: no PNG or JPEG images in the class folders", dir.display()))?;
    Ok((
        Tensor::from_vec(pixels, (labels.len(), 1, h, w), &Device::Cpu)?,
        labels,
        classes.len(),
    ))
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}
