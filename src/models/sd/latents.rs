//! The VAE latents of a captioned image folder, encoded once and cached in the run folder:
//! later runs on the same pipeline, data and resolution read them back instead of encoding.
//! The cache holds the latent distribution (mean and std, unscaled), so a training batch
//! can draw `scaling_factor · (mean + std ε)` with the run's own generator, as diffusers'
//! training scripts sample `latent_dist` each step.

use super::pipeline::Pipeline;
use crate::data::captioned;
use crate::models::model_dir::save_tensors;
use crate::nets::layers::Params;
use crate::runtime::device::Runtime;
use crate::runtime::files::write_atomic;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::path::Path;

/// Images encoded at a time (bounds the VAE's activations).
const CHUNK: usize = 8;

/// The latent distribution of every captioned image, unscaled, and its captions.
#[derive(Debug)]
pub struct LatentSet {
    pub mean: Tensor,
    pub std: Tensor,
    pub captions: Vec<String>,
    pub scaling_factor: f64,
    /// Read from the cache rather than encoded now.
    pub from_cache: bool,
}

/// What a cached encoding depends on: the pipeline's VAE weights, the resolution, and every
/// image and caption (file names, sizes and modification times).
fn cache_key(pipeline: &Pipeline, data: &Path, r: usize) -> Result<Value> {
    let stamp = |p: &Path| -> Result<Value> {
        let m = std::fs::metadata(p).with_context(|| format!("{}: cannot read", p.display()))?;
        let modified = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        Ok(json!([
            p.to_string_lossy(),
            m.len(),
            modified.map(|d| d.as_nanos().to_string())
        ]))
    };
    let vae = pipeline.vae_files()?.iter().map(|p| stamp(p)).collect::<Result<Vec<_>>>()?;
    let files = captioned::pairs(data)?
        .iter()
        .map(|(p, caption)| Ok(json!([stamp(p)?, caption])))
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({"vae": vae, "resolution": r, "images": files}))
}

/// The latents of `data` at resolution `r` through `pipeline`'s VAE, from the cache in
/// `cache_dir` when it matches, else encoded and written there.
pub fn encode_folder(pipeline: &Pipeline, rt: &Runtime, data: &Path, r: usize, cache_dir: &Path) -> Result<LatentSet> {
    let key = cache_key(pipeline, data, r)?;
    let (key_file, tensors) = (cache_dir.join("latents.json"), cache_dir.join("latents.safetensors"));
    let scaling_factor = pipeline.vae_config()?.scaling_factor;
    let captions: Vec<String> = captioned::pairs(data)?.into_iter().map(|(_, c)| c).collect();
    if let Some(cached) = read_cache(&key_file, &tensors, &key)? {
        let (mean, std) = cached;
        return Ok(LatentSet {
            mean,
            std,
            captions,
            scaling_factor,
            from_cache: true,
        });
    }
    let images = captioned::read(data, r)?;
    ensure_fits(
        f32_bytes(images.images.dims()) * 4.0,
        &format!("--data {}", data.display()),
    )?;
    let vae = pipeline.vae(rt)?;
    let (mut means, mut stds) = (Vec::new(), Vec::new());
    let n = images.images.dim(0)?;
    let bar = crate::runtime::progress::bar(n, "encoding images");
    for start in (0..n).step_by(CHUNK) {
        crate::runtime::signals::check()?;
        bar.inc(CHUNK.min(n - start) as u64);
        let chunk = images
            .images
            .narrow(0, start, CHUNK.min(n - start))?
            .to_device(&rt.device)?;
        let (m, s) = vae.encode(&chunk)?;
        means.push(m.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
        stds.push(s.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
    }
    bar.finish_and_clear();
    let (mean, std) = (Tensor::cat(&means, 0)?, Tensor::cat(&stds, 0)?);
    std::fs::create_dir_all(cache_dir).with_context(|| format!("{}: cannot create folder", cache_dir.display()))?;
    save_tensors(
        &tensors,
        &Params::from([("mean".into(), mean.clone()), ("std".into(), std.clone())]),
    )?;
    write_atomic(&key_file, serde_json::to_string_pretty(&key)?.as_bytes())?;
    Ok(LatentSet {
        mean,
        std,
        captions,
        scaling_factor,
        from_cache: false,
    })
}

/// The cached (mean, std) when the cache's key equals `key`.
fn read_cache(key_file: &Path, tensors: &Path, key: &Value) -> Result<Option<(Tensor, Tensor)>> {
    let Ok(text) = std::fs::read_to_string(key_file) else {
        return Ok(None);
    };
    if serde_json::from_str::<Value>(&text).ok().as_ref() != Some(key) || !tensors.is_file() {
        return Ok(None);
    }
    let mut t = candle_core::safetensors::load(tensors, &Device::Cpu)
        .with_context(|| format!("{}: malformed latent cache (delete it to re-encode)", tensors.display()))?;
    let bad = || {
        format!(
            "{}: latent cache lacks mean or std (delete it to re-encode)",
            tensors.display()
        )
    };
    let (mean, std) = (t.remove("mean").with_context(bad)?, t.remove("std").with_context(bad)?);
    ensure!(mean.dims() == std.dims(), "{}", bad());
    crate::runtime::finite::ensure_finite(&mean, &tensors.display().to_string())?;
    Ok(Some((mean, std)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dcm-latents-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("data")).unwrap();
        for (name, shade) in [("a", 40u8), ("b", 200u8)] {
            let img = image::RgbImage::from_fn(20, 16, |x, y| image::Rgb([shade, (x * 10) as u8, (y * 12) as u8]));
            img.save(d.join("data").join(format!("{name}.png"))).unwrap();
            std::fs::write(d.join("data").join(format!("{name}.txt")), format!("image {name}")).unwrap();
        }
        d
    }

    /// The first run encodes (equal to the VAE applied to the read images), the second reads
    /// the cache and gets the same tensors, and changing an image invalidates it.
    #[test]
    fn latents_are_encoded_once_and_cached() -> Result<()> {
        let d = folder();
        let pipeline = Pipeline::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/sd1"))?;
        let rt = Runtime::default();
        let (data, cache) = (d.join("data"), d.join("run").join("latents"));
        let first = encode_folder(&pipeline, &rt, &data, 16, &cache)?;
        assert!(!first.from_cache);
        assert_eq!(first.mean.dims(), &[2, 4, 8, 8]);
        assert_eq!(first.captions, vec!["image a", "image b"]);
        let (want, _) = pipeline.vae(&rt)?.encode(&captioned::read(&data, 16)?.images)?;
        assert_eq!(
            first.mean.flatten_all()?.to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?
        );
        let second = encode_folder(&pipeline, &rt, &data, 16, &cache)?;
        assert!(second.from_cache);
        assert_eq!(
            second.mean.flatten_all()?.to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?
        );
        assert_eq!(
            second.std.flatten_all()?.to_vec1::<f32>()?,
            first.std.flatten_all()?.to_vec1::<f32>()?
        );
        assert!(
            !encode_folder(&pipeline, &rt, &data, 8, &cache)?.from_cache,
            "another resolution"
        );
        std::fs::write(data.join("b.txt"), "another caption")?;
        let changed = encode_folder(&pipeline, &rt, &data, 8, &cache)?;
        assert!(!changed.from_cache, "a changed caption re-encodes");
        assert_eq!(changed.captions[1], "another caption");
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }
}
