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

use crate::data::npy_rows::{RowReader, RowWriter};
use crate::diffusion::teacher_ode::TeacherOde;
use crate::models::sd::images::{check_png_paths, png_path, write_pngs_from};
use crate::models::sd::text::NullText;
use crate::models::sd::SdTeacher;
use crate::runtime::files::{ensure_replaceable, write_atomic};
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

/// The teacher's samples, a block of rows at a time: read from a complete cache, or made now
/// and written there (the key last, once every row is in).
pub enum ReferenceBlocks {
    Cached {
        latents: RowReader,
        images: PathBuf,
    },
    Making {
        latents: RowWriter,
        images: PathBuf,
        key: Value,
        dir: PathBuf,
    },
}

/// One block of the teacher's samples: latents `[r, C, h, w]` f32 and images `[r, 3, H, W]` u8,
/// both on the CPU.
pub struct ReferenceBlock {
    pub latents: Tensor,
    pub images: Tensor,
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

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// 64-bit FNV-1a from `hash` on: a fingerprint that tells two noise tensors or prompt lists
/// apart (not a security hash: the cache only guards against honest mistakes).
fn fnv1a_from(hash: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes
        .into_iter()
        .fold(hash, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> String {
    format!("{:016x}", fnv1a_from(FNV_OFFSET, bytes))
}

/// FNV-1a of the noise's float32 bytes, a block of rows at a time (no copy of the whole).
fn noise_fingerprint(noise: &Tensor) -> Result<String> {
    let rows = noise.dim(0)?;
    let mut hash = FNV_OFFSET;
    for start in (0..rows).step_by(FINGERPRINT_ROWS) {
        let block = noise.narrow(0, start, FINGERPRINT_ROWS.min(rows - start))?;
        let values = block.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        hash = fnv1a_from(hash, values.iter().flat_map(|v| v.to_le_bytes()));
    }
    Ok(format!("{hash:016x}"))
}

/// Rows of noise per block of the fingerprint.
const FINGERPRINT_ROWS: usize = 64;

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
        let noise = noise_fingerprint(self.noise)?;
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
            "noise": {"shape": self.noise.dims(), "fnv1a64": noise},
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

impl ReferenceBlocks {
    /// The reference of `key`: the cache in `cache.dir` when it holds one made with `key`, else
    /// (where `cache.create`) one to make; an error for a cache of something else.
    pub fn open(key: &ReferenceKey, cache: &ReferenceCache) -> Result<Self> {
        let json = key.to_json()?;
        let rows = key.noise.dim(0)?;
        let images = cache.dir.join(IMAGES_DIR);
        if cached_key(cache, &json)? {
            let latents = RowReader::open(&cache.dir.join(LATENTS_FILE))?;
            ensure!(
                latents.shape() == key.noise.dims(),
                "{}: latents of shape {:?} for noise of shape {:?} (delete the folder to regenerate)",
                cache.dir.display(),
                latents.shape(),
                key.noise.dims()
            );
            return Ok(Self::Cached { latents, images });
        }
        std::fs::create_dir_all(&images).with_context(|| format!("{}: cannot create folder", images.display()))?;
        ensure_replaceable(&cache.dir.join(KEY_FILE), "output")?;
        check_png_paths(&images, rows, "output")?;
        let mut shape = key.noise.dims().to_vec();
        shape[0] = rows;
        Ok(Self::Making {
            latents: RowWriter::create(&cache.dir.join(LATENTS_FILE), &shape)?,
            images,
            key: json,
            dir: cache.dir.clone(),
        })
    }

    pub fn from_cache(&self) -> bool {
        matches!(self, Self::Cached { .. })
    }

    /// Rows `start .. start + len`: read from the cache, or made by `make` (the teacher's solve
    /// of those rows of the noise and its images u8) and written to it.
    pub fn block(
        &mut self,
        start: usize,
        len: usize,
        make: impl FnOnce() -> Result<(Tensor, Tensor)>,
    ) -> Result<ReferenceBlock> {
        match self {
            Self::Cached { latents, images } => Ok(ReferenceBlock {
                latents: latents.rows(start, len)?,
                images: read_pngs(images, start, len)?,
            }),
            Self::Making { latents, images, .. } => {
                let (made, pictures) = make()?;
                let made = made.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
                let pictures = pictures.to_device(&Device::Cpu)?;
                latents.append(&made)?;
                write_pngs_from(images, &(pictures.to_dtype(DType::F32)? / 255.0)?, start)?;
                Ok(ReferenceBlock {
                    latents: made,
                    images: pictures,
                })
            }
        }
    }

    /// Every row done: a made reference gets its key, which marks the folder complete.
    pub fn finish(self) -> Result<()> {
        match self {
            Self::Cached { .. } => Ok(()),
            Self::Making { latents, key, dir, .. } => {
                latents.finish()?;
                write_atomic(&dir.join(KEY_FILE), serde_json::to_string_pretty(&key)?.as_bytes())
            }
        }
    }
}

/// Whether `cache.dir` holds a reference made with `key`; false when it holds none and may
/// make one; an error for a cache of something else.
fn cached_key(cache: &ReferenceCache, key: &Value) -> Result<bool> {
    let key_file = cache.dir.join(KEY_FILE);
    if !key_file.is_file() {
        ensure!(
            cache.create,
            "{}: no {KEY_FILE}, so not a folder of reference samples written by dcm eval",
            cache.dir.display()
        );
        return Ok(false);
    }
    let text = crate::runtime::files::read_regular_text(&key_file)
        .with_context(|| format!("{}: cannot read", key_file.display()))?;
    let have: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", key_file.display()))?;
    if let Some(diff) = first_difference(&have, key) {
        bail!(
            "{}: reference samples of another setting ({diff}); give another --out or --reference, or delete {} to regenerate",
            key_file.display(),
            cache.dir.display()
        );
    }
    Ok(true)
}

/// Images `[len, 3, H, W]` u8 from `dir/{start:05}.png`, ….
pub fn read_pngs(dir: &Path, start: usize, len: usize) -> Result<Tensor> {
    let images = (start..start + len)
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
