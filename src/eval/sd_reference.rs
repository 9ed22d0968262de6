//! The teacher's reference samples of a Stable Diffusion evaluation: its N-interval guided
//! solve from the evaluation noise, and those latents decoded. They cost N × 2 UNet
//! evaluations per sample, so they are made once and cached in a folder:
//!
//! - `latents.npy`: the solve's final latents, float32, unscaled (as `dcm sample` writes them);
//! - `images/00000.png`, …: the decoded images, as `dcm sample --decode DIR` writes them;
//! - `key.json`, written last: what made them (the teacher's files, solver, N, w, the
//!   unconditional input, precision, and fingerprints of the noise and the prompts).
//!
//! A cache whose key differs from the evaluation's is refused, naming the first difference:
//! reference samples of another teacher or noise would make every metric meaningless.

use crate::data::npy;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::teacher_ode::TeacherOde;
use crate::models::sd::images::{png_path, write_pngs};
use crate::models::sd::text::NullText;
use crate::models::sd::SdTeacher;
use crate::runtime::files::write_atomic;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Where the reference samples live, and whether they may be made there.
#[derive(Clone, Debug)]
pub struct ReferenceCache {
    pub dir: PathBuf,
    /// Make them when the folder has none (false: a given cache that must already exist).
    pub create: bool,
}

/// The teacher's samples: latents `[B, C, h, w]` f32 and images `[B, 3, H, W]` u8.
pub struct Reference {
    pub latents: Tensor,
    pub images: Tensor,
    /// Read from the cache rather than made now.
    pub from_cache: bool,
}

/// What a reference depends on, as written to `key.json`.
pub struct ReferenceKey<'a> {
    pub teacher: &'a SdTeacher,
    pub ode: &'a TeacherOde,
    /// The unconditional input of guidance.
    pub null: &'a NullText,
    pub dtype: DType,
    pub prompts: &'a [String],
    pub noise: &'a Tensor,
}

const KEY_FILE: &str = "key.json";
const LATENTS_FILE: &str = "latents.npy";
const IMAGES_DIR: &str = "images";

/// 64-bit FNV-1a: a fingerprint that tells two noise tensors or prompt lists apart (not a
/// security hash: the cache only guards against honest mistakes).
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> String {
    let hash = bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Every file under `dir` as `[relative path, size, modification time in ns]`, sorted: a
/// changed or replaced weight file changes the key.
fn file_stamps(dir: &Path) -> Result<Vec<Value>> {
    let (mut files, mut pending) = match dir.is_file() {
        true => (vec![dir.to_path_buf()], vec![]),
        false => (vec![], vec![dir.to_path_buf()]),
    };
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("{}: cannot list", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).with_context(|| format!("{}: cannot read", p.display()))?;
            let modified = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            let rel = p.strip_prefix(dir).unwrap_or(p);
            Ok(json!([
                rel.to_string_lossy(),
                m.len(),
                modified.map(|d| d.as_nanos().to_string())
            ]))
        })
        .collect()
}

fn null_text_name(null: &NullText) -> String {
    match null {
        NullText::Pipeline => "pipeline default".into(),
        NullText::Zeros => "zeros".into(),
        NullText::Prompt(p) => format!("negative prompt {p:?}"),
    }
}

impl ReferenceKey<'_> {
    /// The key as JSON; fields in the order a mismatch is reported.
    pub fn to_json(&self) -> Result<Value> {
        let dir = self.teacher.pipeline().path();
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let noise: Vec<u8> = self
            .noise
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let prompts = self.prompts.iter().flat_map(|p| p.bytes().chain([b'\n']));
        Ok(json!({
            "teacher": {
                "dir": canonical.to_string_lossy(),
                "files": file_stamps(dir)?,
                "options": serde_json::to_value(self.teacher.pipeline().options())?,
            },
            "solver": format!("{:?}", self.ode.solver).to_lowercase(),
            "intervals": self.ode.intervals(),
            "guidance": self.ode.guidance,
            "uncond": null_text_name(self.null),
            "dtype": format!("{:?}", self.dtype).to_lowercase(),
            "noise": {"shape": self.noise.dims(), "fnv1a64": fnv1a(noise)},
            "prompts": {"count": self.prompts.len(), "fnv1a64": fnv1a(prompts)},
        }))
    }
}

/// The first field of `want` that `have` differs in, as "field: have vs want".
fn first_difference(have: &Value, want: &Value) -> Option<String> {
    let fields = want.as_object()?;
    fields
        .iter()
        .find(|(k, v)| have.get(k.as_str()) != Some(v))
        .map(|(k, v)| {
            let shown = |v: Option<&Value>| match v {
                None => "nothing".to_string(),
                Some(v) if k == "teacher" => v["dir"].to_string() + " (its files as they were then)",
                Some(v) => v.to_string(),
            };
            format!("{k} {} there, {} here", shown(have.get(k.as_str())), shown(Some(v)))
        })
}

/// The cached reference when `cache.dir` holds one made with `key`; `None` when it holds
/// none and may make one; an error for a cache of something else.
fn read_cache(cache: &ReferenceCache, key: &Value, rows: usize) -> Result<Option<Reference>> {
    let key_file = cache.dir.join(KEY_FILE);
    if !key_file.is_file() {
        ensure!(
            cache.create,
            "{}: no {KEY_FILE}, so not a folder of reference samples written by dcm eval",
            cache.dir.display()
        );
        return Ok(None);
    }
    let text = std::fs::read_to_string(&key_file).with_context(|| format!("{}: cannot read", key_file.display()))?;
    let have: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", key_file.display()))?;
    if let Some(diff) = first_difference(&have, key) {
        bail!(
            "{}: reference samples of another setting ({diff}); give another --out or --reference, or delete {} to regenerate",
            key_file.display(),
            cache.dir.display()
        );
    }
    let latents = npy::read(&cache.dir.join(LATENTS_FILE))?;
    ensure!(
        latents.dim(0)? == rows,
        "{}: {} rows of latents for {rows} noise rows (delete the folder to regenerate)",
        cache.dir.display(),
        latents.dim(0)?
    );
    let images = read_pngs(&cache.dir.join(IMAGES_DIR), rows)?;
    Ok(Some(Reference {
        latents,
        images,
        from_cache: true,
    }))
}

/// Images `[n, 3, H, W]` u8 from `dir/00000.png`, ….
pub fn read_pngs(dir: &Path, n: usize) -> Result<Tensor> {
    let images = (0..n)
        .map(|i| {
            let path = png_path(dir, i);
            let rgb = image::open(&path)
                .with_context(|| {
                    format!(
                        "{}: cannot read the image (delete the folder to regenerate)",
                        path.display()
                    )
                })?
                .to_rgb8();
            let (w, h) = (rgb.width() as usize, rgb.height() as usize);
            Ok(Tensor::from_vec(rgb.into_raw(), (h, w, 3), &Device::Cpu)?.permute((2, 0, 1))?)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&images, 0).with_context(|| format!("{}: images differ in size", dir.display()))
}

/// Images in [0, 1] as the u8 a PNG file holds, `round(255 v)` (diffusers' `numpy_to_pil`),
/// so samples decoded now and samples read back from files are scored alike.
pub fn quantize(images: &Tensor) -> Result<Tensor> {
    Ok((images.to_dtype(DType::F32)?.clamp(0f32, 1f32)? * 255.0)?
        .round()?
        .to_dtype(DType::U8)?
        .to_device(&Device::Cpu)?)
}

/// The teacher's guided N-interval solve of `noise`, `batch` rows at a time (rows are
/// independent, so chunking does not change them).
pub fn teacher_solve(
    teacher: &dyn Denoiser,
    ode: &TeacherOde,
    noise: &Tensor,
    cond: &Condition,
    batch: usize,
) -> Result<Tensor> {
    let n = noise.dim(0)?;
    let parts = (0..n)
        .step_by(batch.max(1))
        .map(|start| {
            let len = batch.max(1).min(n - start);
            ode.solve(teacher, &noise.narrow(0, start, len)?, &cond.narrow(start, len)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// The reference of `key` from `cache`, or made by `make` (the teacher's solve of the
/// evaluation noise and its images, u8) and written there.
pub fn reference_samples(
    key: &ReferenceKey,
    cache: &ReferenceCache,
    make: impl FnOnce() -> Result<(Tensor, Tensor)>,
) -> Result<Reference> {
    let json = key.to_json()?;
    let rows = key.noise.dim(0)?;
    if let Some(cached) = read_cache(cache, &json, rows)? {
        return Ok(cached);
    }
    let (latents, images) = make()?;
    let latents = latents.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let images = images.to_device(&Device::Cpu)?;
    std::fs::create_dir_all(&cache.dir).with_context(|| format!("{}: cannot create folder", cache.dir.display()))?;
    npy::write(&cache.dir.join(LATENTS_FILE), &latents)?;
    let images_dir = cache.dir.join(IMAGES_DIR);
    std::fs::create_dir_all(&images_dir).with_context(|| format!("{}: cannot create folder", images_dir.display()))?;
    write_pngs(&images_dir, &(images.to_dtype(DType::F32)? / 255.0)?)?;
    // The key goes last: a folder with a key holds complete samples.
    write_atomic(
        &cache.dir.join(KEY_FILE),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    Ok(Reference {
        latents,
        images,
        from_cache: false,
    })
}
