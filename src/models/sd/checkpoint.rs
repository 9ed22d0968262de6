//! One weights file, whatever its format: safetensors (memory-mapped) or a PyTorch zip
//! archive (`torch.save`'s format since 1.6: `.ckpt`, `.pt`, `.pth`, `.bin`). Tensors are listed
//! by name and read one at a time, floating-point ones checked finite and converted to the
//! precision asked for, integer ones kept as they are.
//!
//! A PyTorch archive is read by `torch_archive`, which checks its pickles first and never
//! executes anything in them. A Lightning training checkpoint (SD's original `.ckpt` files)
//! keeps its weights under the key `state_dict`; a plain state dict
//! (`torch.save(model.state_dict())`) has them at the top. Legacy non-zip pickles are refused.

use super::torch_archive::TorchArchive;
use crate::runtime::finite::ensure_finite;
use anyhow::{anyhow, bail, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

/// An open weights file.
pub struct Checkpoint {
    path: PathBuf,
    source: Source,
}

enum Source {
    Safetensors(MmapedSafetensors),
    Pickle(TorchArchive),
}

const PICKLE_EXTENSIONS: &[&str] = &["ckpt", "pt", "pth", "bin"];

impl Checkpoint {
    /// Opens `path` by its extension: `.safetensors`, or `.ckpt` / `.pt` / `.pth` / `.bin`.
    pub fn open(path: &Path) -> Result<Self> {
        let at = path.display();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let source = if ext == "safetensors" {
            // SAFETY: the map is read-only; as with every memory-mapped file, another process
            // truncating it meanwhile is outside what dcm guards against.
            let file =
                unsafe { MmapedSafetensors::new(path) }.map_err(|e| anyhow!("{at}: not a safetensors file ({e})"))?;
            Source::Safetensors(file)
        } else if PICKLE_EXTENSIONS.contains(&ext) {
            Source::Pickle(TorchArchive::open(path)?)
        } else {
            bail!("{at}: unknown weights format (expected .safetensors, .ckpt, .pt, .pth or .bin)")
        };
        Ok(Self {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.source {
            Source::Safetensors(file) => file.tensors().into_iter().map(|(name, _)| name).collect(),
            Source::Pickle(file) => file.names(),
        };
        names.sort();
        names
    }

    /// The shape of tensor `name`, `None` if the file has no such tensor.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match &self.source {
            Source::Safetensors(file) => file.get(name).ok().map(|view| view.shape().to_vec()),
            Source::Pickle(file) => file.shape(name),
        }
    }

    /// Tensor `name` on `device`: floating-point values checked finite and converted to
    /// `dtype`, integer ones in their own type. Errors name the file and the tensor.
    pub fn load(&self, name: &str, device: &Device, dtype: DType) -> Result<Tensor> {
        let what = format!("{}: tensor '{name}'", self.path.display());
        let t = match &self.source {
            Source::Safetensors(file) => {
                if file.get(name).is_err() {
                    bail!("{what}: not in the file");
                }
                file.load(name, &Device::Cpu)
                    .map_err(|e| anyhow!("{what}: cannot be read ({e})"))?
            }
            Source::Pickle(file) => file
                .get(name)
                .map_err(|e| anyhow!("{what}: cannot be read ({e})"))?
                .ok_or_else(|| anyhow!("{what}: not in the file"))?,
        };
        let t = if t.dtype().is_float() {
            ensure_finite(&t, &what)?;
            t.to_dtype(dtype)?
        } else {
            t
        };
        Ok(t.to_device(device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formats(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/sd/formats")
            .join(file)
    }

    /// Every tensor of `file`, loaded in f32.
    fn all(file: &str) -> Vec<(String, Tensor)> {
        let c = Checkpoint::open(&formats(file)).unwrap();
        c.names()
            .into_iter()
            .map(|n| (n.clone(), c.load(&n, &Device::Cpu, DType::F32).unwrap()))
            .collect()
    }

    #[test]
    fn smoke() {
        let a = all("tiny.safetensors");
        let b = all("tiny.ckpt");
        let c = all("tiny.pt");
        assert_eq!(a.len(), b.len());
        assert_eq!(a.len(), c.len());
        println!("{:?}", Checkpoint::open(&formats("malicious.ckpt")).err());
        println!("{:?}", Checkpoint::open(&formats("legacy.pt")).err());
    }
}
