//! A component's frozen weights, read from its memory-mapped safetensors file one tensor at a
//! time straight into the device and precision it runs in, so no full-precision copy of the
//! whole model is ever held (SDXL's UNet is 10 GB in f32).

use crate::nets::layers::Params;
use crate::runtime::finite::ensure_finite;
use anyhow::{anyhow, bail, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// The weights file of a component folder: `STEM.safetensors`, else the half-precision
/// variant `STEM.fp16.safetensors` (diffusers' `variant="fp16"`).
pub fn weights_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    let candidates = [format!("{stem}.safetensors"), format!("{stem}.fp16.safetensors")];
    match candidates.iter().map(|f| dir.join(f)).find(|p| p.is_file()) {
        Some(path) => Ok(path),
        None => bail!("{}: no {} nor {}", dir.display(), candidates[0], candidates[1]),
    }
}

/// Every tensor of a safetensors file on `device`, floating-point ones in `dtype` (integer
/// buffers such as CLIP's `position_ids` keep theirs). Each tensor is checked finite; errors
/// name the file and the tensor.
pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Params> {
    let at = path.display();
    // SAFETY: the map is read-only and dropped before returning; as with every memory-mapped
    // file, another process truncating it meanwhile is outside what dcm guards against.
    let file = unsafe { MmapedSafetensors::new(path) }.map_err(|e| anyhow!("{at}: not a safetensors file ({e})"))?;
    let mut params = Params::new();
    for (name, _) in file.tensors() {
        let t = file
            .load(&name, &Device::Cpu)
            .map_err(|e| anyhow!("{at}: tensor '{name}' cannot be read ({e})"))?;
        let t = if t.dtype().is_float() {
            ensure_finite(&t, &format!("{at}: tensor '{name}'"))?;
            t.to_dtype(dtype)?
        } else {
            t
        };
        params.insert(name, t.to_device(device)?);
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dcm-sdw-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// f16 files load in f32 and f32 files in f16; integer tensors keep their dtype; the plain
    /// file is preferred to the fp16 variant.
    #[test]
    fn converts_floats_and_prefers_the_plain_file() {
        let dir = scratch("convert");
        let half = Tensor::new(&[1.5f32, -2.0], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let ids = Tensor::new(&[[0i64, 1, 2]], &Device::Cpu).unwrap();
        let tensors = [("w", half), ("ids", ids)];
        candle_core::safetensors::save(&tensors.iter().cloned().collect(), dir.join("m.fp16.safetensors")).unwrap();
        let found = weights_file(&dir, "m").unwrap();
        assert!(found.ends_with("m.fp16.safetensors"));
        let p = load(&found, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(p["w"].dtype(), DType::F32);
        assert_eq!(p["w"].to_vec1::<f32>().unwrap(), vec![1.5, -2.0]);
        assert_eq!(p["ids"].dtype(), DType::I64);
        std::fs::copy(dir.join("m.fp16.safetensors"), dir.join("m.safetensors")).unwrap();
        assert!(weights_file(&dir, "m").unwrap().ends_with("m.safetensors"));
        let e = weights_file(&dir, "other").unwrap_err().to_string();
        assert!(e.ends_with("no other.safetensors nor other.fp16.safetensors"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_are_named() {
        let dir = scratch("bad");
        let path = dir.join("m.safetensors");
        std::fs::write(&path, b"\x08\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
        let e = load(&path, &Device::Cpu, DType::F32).unwrap_err().to_string();
        assert!(e.contains("m.safetensors: not a safetensors file"), "{e}");
        let nan = Tensor::new(&[1f32, f32::NAN], &Device::Cpu).unwrap();
        candle_core::safetensors::save(&[("w".to_string(), nan)].into_iter().collect(), &path).unwrap();
        let e = load(&path, &Device::Cpu, DType::F16).unwrap_err().to_string();
        assert!(e.contains("m.safetensors: tensor 'w': contains NaN"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
