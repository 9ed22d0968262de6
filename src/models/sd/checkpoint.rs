//! One weights file, whatever its format: safetensors (memory-mapped) or a PyTorch zip
//! archive (`torch.save`'s format since 1.6: `.ckpt`, `.pt`, `.pth`, `.bin`). Tensors are listed
//! by name and read one at a time, floating-point ones checked finite and converted to the
//! precision asked for, integer ones kept as they are.
//!
//! A PyTorch archive is read by `torch_archive`, which checks its pickles first and never
//! executes anything in them. A Lightning training checkpoint (SD's original `.ckpt` files)
//! keeps its weights under the key `state_dict`; a plain state dict
//! (`torch.save(model.state_dict())`) has them at the top. Legacy non-zip pickles are refused.

use crate::runtime::finite::ensure_finite;
use crate::runtime::torch_archive::TorchArchive;
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

    /// A Lightning-style .ckpt (weights under `state_dict`, beside a step count and a numpy
    /// scalar) and a plain state-dict .pt hold exactly the tensors of the same safetensors file:
    /// same sorted names, shapes and values, int64 and int32 buffers kept, and a transposed
    /// view (saved with its strides) read in its logical order.
    #[test]
    fn ckpt_pt_and_safetensors_hold_the_same_tensors() {
        let a = all("tiny.safetensors");
        assert!(a.iter().any(|(n, t)| n == "position_ids" && t.dtype() == DType::I64));
        assert!(a.iter().any(|(n, t)| n == "num_updates" && t.dtype() == DType::I32));
        for file in ["tiny.ckpt", "tiny.pt"] {
            let c = Checkpoint::open(&formats(file)).unwrap();
            let b = all(file);
            assert_eq!(a.len(), b.len(), "{file}");
            for ((n, t), (m, u)) in a.iter().zip(&b) {
                assert_eq!(n, m, "{file}");
                assert_eq!((t.dtype(), t.dims()), (u.dtype(), u.dims()), "{file}: {n}");
                assert_eq!(c.shape(n).unwrap(), t.dims().to_vec());
                let d = (t.to_dtype(DType::F64).unwrap() - u.to_dtype(DType::F64).unwrap()).unwrap();
                assert_eq!(
                    d.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap(),
                    0.0,
                    "{file}: {n}"
                );
            }
        }
        let c = Checkpoint::open(&formats("tiny.ckpt")).unwrap();
        assert!(c.shape("global_step").is_none());
        let e = c.load("nope", &Device::Cpu, DType::F32).unwrap_err().to_string();
        assert!(e.ends_with("tiny.ckpt: tensor 'nope': not in the file"), "{e}");
    }

    /// A pickle naming os.system is refused by name without being unpickled; a legacy
    /// (non-zip) pickle and an unknown extension are refused with what to do.
    #[test]
    fn unsafe_and_unreadable_files_are_refused() {
        let e = Checkpoint::open(&formats("malicious.ckpt")).err().unwrap().to_string();
        assert!(
            e.contains("malicious.ckpt (malicious/data.pkl): refers to the Python global posix.system,"),
            "{e}"
        );
        let e = Checkpoint::open(&formats("legacy.pt")).err().unwrap().to_string();
        assert!(
            e.contains("legacy.pt: not a zip archive") && e.contains("convert it to safetensors"),
            "{e}"
        );
        let e = Checkpoint::open(&formats("vae/config.json")).err().unwrap().to_string();
        assert!(
            e.ends_with("config.json: unknown weights format (expected .safetensors, .ckpt, .pt, .pth or .bin)"),
            "{e}"
        );
    }
}
