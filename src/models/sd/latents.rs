//! The VAE latents of a captioned image folder, encoded once and cached in the run folder:
//! later runs on the same pipeline, images and resolution read them back instead of encoding.
//! The cache holds the latent distribution (mean and std, unscaled), so a training batch
//! can draw `scaling_factor · (mean + std ε)` with the run's own generator, as diffusers'
//! training scripts sample `latent_dist` each step.
//!
//! Images are decoded, resized and encoded a chunk at a time: memory holds the latents and
//! one chunk of pixels, never the whole folder's (docs/PERFORMANCE.md has the measurement).

use super::pipeline::Pipeline;
use crate::data::captioned::{load_chunk, Entry, Folder};
use crate::nets::sd::vae::AutoencoderKl;
use crate::runtime::device::Runtime;
use crate::runtime::files::write_atomic;
use crate::runtime::fingerprint::{HashCache, HASH_CACHE};
use crate::runtime::memory::{ensure_fits, f32_bytes};
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Image pixels decoded and encoded at a time: 8 images of 128², one image from 362² up. It
/// bounds the pixels held and the VAE's activations, and how long a stop signal waits (it is
/// checked between chunks, so at high resolution between images).
const CHUNK_PIXELS: usize = 8 * 128 * 128;

/// Images per chunk at resolution `r`: at least one, at most 8.
fn chunk_images(r: usize) -> usize {
    (CHUNK_PIXELS / (r * r).max(1)).clamp(1, 8)
}

/// The cache's files in `cache_dir`: its key, the latents, the image hashes.
pub fn cache_files(cache_dir: &Path) -> [PathBuf; 3] {
    ["latents.json", "latents.safetensors", HASH_CACHE].map(|f| cache_dir.join(f))
}

/// The latent distribution of every captioned image, unscaled, its caption and repeat count.
#[derive(Debug)]
pub struct LatentSet {
    pub mean: Tensor,
    pub std: Tensor,
    pub captions: Vec<String>,
    /// How many times each row counts in the draw (kohya's `N_concept` folders).
    pub repeats: Vec<u32>,
    pub scaling_factor: f64,
    /// Read from the cache rather than encoded now.
    pub from_cache: bool,
}

/// What a cached encoding depends on: the bytes of the pipeline's VAE files (a single file's
/// whole checkpoint), the resolution, and each image's bytes, in order (names, sizes and times
/// could match changed images, and a touched or moved folder need not re-encode). Captions
/// are not encoded. The hashes are reused while a file's identity holds (`HashCache`).
fn cache_key(pipeline: &Pipeline, folder: &Folder, r: usize, hashes: &HashCache) -> Result<Value> {
    let vae_files: Vec<_> = pipeline.vae_files()?.into_iter().filter(|p| p.is_file()).collect();
    let images: Vec<_> = folder.entries.iter().map(|e| e.image.clone()).collect();
    let named = |files: &[std::path::PathBuf], base: &Path| -> Result<Vec<Value>> {
        let prints = hashes.fingerprints(files)?;
        Ok(files
            .iter()
            .map(|p| {
                let name = p.strip_prefix(base).unwrap_or(p).to_string_lossy().into_owned();
                json!([name, prints[&p.display().to_string()]])
            })
            .collect())
    };
    let vae = named(&vae_files, pipeline.path())?;
    let images = named(&images, &folder.dir)?;
    Ok(json!({"vae": vae, "resolution": r, "images": images}))
}

/// The latents of `folder` at resolution `r` through `pipeline`'s VAE, from the cache in
/// `cache_dir` when it matches, else encoded and written there.
pub fn encode_folder(
    pipeline: &Pipeline,
    rt: &Runtime,
    folder: &Folder,
    r: usize,
    cache_dir: &Path,
) -> Result<LatentSet> {
    let [key_file, tensors, hash_file] = cache_files(cache_dir);
    let hashes = HashCache::open(Some(hash_file));
    let key = cache_key(pipeline, folder, r, &hashes)?;
    let cached = read_cache(&key_file, &tensors, &key)?;
    let from_cache = cached.is_some();
    let (mean, std) = match cached {
        Some(pair) => pair,
        None => {
            let vae = pipeline.vae(rt)?;
            let latents = encode_stream(&vae, rt, &folder.entries, r, chunk_images(r))?;
            std::fs::create_dir_all(cache_dir)
                .with_context(|| format!("{}: cannot create folder", cache_dir.display()))?;
            latents.write(&tensors)?;
            write_atomic(&key_file, serde_json::to_string_pretty(&key)?.as_bytes())?;
            latents.into_tensors()?
        }
    };
    hashes.save()?;
    ensure!(
        mean.dim(0)? == folder.entries.len(),
        "{}: {} latents for {} images (delete it to re-encode)",
        tensors.display(),
        mean.dim(0)?,
        folder.entries.len()
    );
    Ok(LatentSet {
        mean,
        std,
        captions: folder.captions(),
        repeats: folder.repeats(),
        scaling_factor: pipeline.vae_config()?.scaling_factor,
        from_cache,
    })
}

/// Latent means and stds, f32 values of `shape` `[n, C, h, w]`, as encoded.
struct Encoded {
    shape: Vec<usize>,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Encoded {
    /// Writes `path` straight from these values (a serialised copy would double the memory
    /// the latents take), to a temporary file renamed into place.
    fn write(&self, path: &Path) -> Result<()> {
        fn view<'a>(shape: &[usize], v: &'a [f32]) -> Result<safetensors::tensor::TensorView<'a>> {
            let bytes: &[u8] = bytemuck::cast_slice(v);
            Ok(safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                shape.to_vec(),
                bytes,
            )?)
        }
        let tmp = path.with_extension("safetensors.tmp");
        let tensors = [
            ("mean", view(&self.shape, &self.mean)?),
            ("std", view(&self.shape, &self.std)?),
        ];
        let what = || format!("{}: cannot write the latent cache", path.display());
        let _writing = crate::runtime::signals::Writing::start();
        safetensors::serialize_to_file(tensors, None, &tmp).with_context(what)?;
        std::fs::rename(&tmp, path).with_context(what)
    }

    fn into_tensors(self) -> Result<(Tensor, Tensor)> {
        Ok((
            Tensor::from_vec(self.mean, self.shape.as_slice(), &Device::Cpu)?,
            Tensor::from_vec(self.std, self.shape.as_slice(), &Device::Cpu)?,
        ))
    }
}

/// Decodes and encodes `entries` `chunk` images at a time, keeping only the latents' mean
/// and std (f32, on the CPU); a stop signal is honoured between chunks.
fn encode_stream(vae: &AutoencoderKl, rt: &Runtime, entries: &[Entry], r: usize, chunk: usize) -> Result<Encoded> {
    let n = entries.len();
    let (mut mean, mut std, mut latent) = (Vec::new(), Vec::new(), Vec::new());
    let bar = crate::runtime::progress::bar(n, "encoding images");
    for part in entries.chunks(chunk) {
        crate::runtime::signals::check()?;
        let (m, s) = vae.encode(&load_chunk(part, r)?.to_device(&rt.device)?)?;
        if latent.is_empty() {
            // The first chunk tells the latent size: refuse before filling memory.
            latent = m.dims()[1..].to_vec();
            let all: Vec<usize> = [2 * n].iter().chain(&latent).copied().collect();
            ensure_fits(f32_bytes(&all), &format!("--data (the latents of {n} images)"))?;
            mean.reserve_exact(n * latent.iter().product::<usize>());
            std.reserve_exact(n * latent.iter().product::<usize>());
        }
        mean.extend(m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        std.extend(s.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        bar.inc(part.len() as u64);
    }
    bar.finish_and_clear();
    let shape = [n].iter().chain(&latent).copied().collect();
    Ok(Encoded { shape, mean, std })
}

/// The cached (mean, std) when the cache's key equals `key`.
fn read_cache(key_file: &Path, tensors: &Path, key: &Value) -> Result<Option<(Tensor, Tensor)>> {
    let Ok(text) = crate::runtime::files::read_regular_text(key_file) else {
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
    use crate::data::captioned::FolderOptions;

    /// Five 20×16 images with distinct colours and gradients, captioned "image N".
    fn folder(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dcm-latents-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("data")).unwrap();
        for i in 0..5u32 {
            let img = image::RgbImage::from_fn(20, 16, |x, y| {
                image::Rgb([(40 * i) as u8, (x * 10 + i) as u8, (y * 12) as u8])
            });
            img.save(d.join("data").join(format!("{i}.png"))).unwrap();
            std::fs::write(d.join("data").join(format!("{i}.txt")), format!("image {i}")).unwrap();
        }
        d
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn sd1() -> Result<Pipeline> {
        Pipeline::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/sd1"))
    }

    /// Encoding in chunks of 2 (so chunks split the folder unevenly) gives bit-identical
    /// latents to decoding every image first and encoding them in one batch.
    #[test]
    fn streamed_latents_equal_the_all_at_once_encoding() -> Result<()> {
        let d = folder("stream");
        let (pipeline, rt) = (sd1()?, Runtime::default());
        let vae = pipeline.vae(&rt)?;
        let data = Folder::read(&d.join("data"), &FolderOptions::default())?;
        let (mean, std) = encode_stream(&vae, &rt, &data.entries, 16, 2)?.into_tensors()?;
        let (want_mean, want_std) = vae.encode(&load_chunk(&data.entries, 16)?)?;
        assert_eq!(mean.dims(), &[5, 4, 8, 8]);
        assert_eq!(values(&mean), values(&want_mean));
        assert_eq!(values(&std), values(&want_std));
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }

    /// The first run encodes, the second reads the cache and gets the same tensors; another
    /// resolution or changed image bytes re-encode, while a new caption or a rewrite of the
    /// same bytes (a new modification time) reads the cache.
    #[test]
    fn latents_are_cached_by_content() -> Result<()> {
        let d = folder("cache");
        let (pipeline, rt) = (sd1()?, Runtime::default());
        let (dir, cache) = (d.join("data"), d.join("run").join("latents"));
        let read = || Folder::read(&dir, &FolderOptions::default());
        let first = encode_folder(&pipeline, &rt, &read()?, 16, &cache)?;
        assert!(!first.from_cache);
        assert_eq!(first.captions[0], "image 0");
        assert_eq!(first.repeats, vec![1; 5]);
        let second = encode_folder(&pipeline, &rt, &read()?, 16, &cache)?;
        assert!(second.from_cache);
        assert_eq!(values(&second.mean), values(&first.mean));
        assert_eq!(values(&second.std), values(&first.std));
        assert!(
            !encode_folder(&pipeline, &rt, &read()?, 8, &cache)?.from_cache,
            "another resolution"
        );
        std::fs::write(dir.join("1.txt"), "another caption")?;
        let bytes = std::fs::read(dir.join("2.png"))?;
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.join("2.png"), &bytes)?;
        let same = encode_folder(&pipeline, &rt, &read()?, 8, &cache)?;
        assert!(same.from_cache, "same bytes, new caption: the cache holds");
        assert_eq!(same.captions[1], "another caption");
        let img = image::RgbImage::from_fn(20, 16, |x, _| image::Rgb([x as u8, 1, 2]));
        img.save(dir.join("2.png"))?;
        assert!(
            !encode_folder(&pipeline, &rt, &read()?, 8, &cache)?.from_cache,
            "changed bytes"
        );
        std::fs::remove_dir_all(&d)?;
        Ok(())
    }
}
