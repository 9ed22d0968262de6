//! A single-file checkpoint's tensors by name (safetensors, memory-mapped), loaded one at a
//! time onto a device in a precision, each checked finite.

use crate::runtime::finite::ensure_finite;
use anyhow::{anyhow, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

pub struct Checkpoint {
    path: PathBuf,
    file: MmapedSafetensors,
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Self> {
        // SAFETY: read-only map; another process truncating the file is outside what dcm guards against.
        let file = unsafe { MmapedSafetensors::new(path) }
            .map_err(|e| anyhow!("{}: not a safetensors file ({e})", path.display()))?;
        Ok(Self {
            path: path.into(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.file.tensors().into_iter().map(|(n, _)| n).collect();
        names.sort();
        names
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.file.get(name).ok().map(|v| v.shape().to_vec())
    }

    /// One tensor on `device`, floating point in `dtype`.
    pub fn load(&self, name: &str, device: &Device, dtype: DType) -> Result<Tensor> {
        let at = self.path.display();
        let t = self
            .file
            .load(name, &Device::Cpu)
            .map_err(|e| anyhow!("{at}: tensor '{name}' cannot be read ({e})"))?;
        let t = if t.dtype().is_float() {
            ensure_finite(&t, &format!("{at}: tensor '{name}'"))?;
            t.to_dtype(dtype)?
        } else {
            t
        };
        Ok(t.to_device(device)?)
    }
}
