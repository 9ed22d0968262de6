//! safetensors files written and read a tensor at a time: memory holds one tensor's bytes
//! beyond the tensors themselves, never a copy of the whole file (a checkpoint of large
//! adapters and their AdamW moments is as large as the training state, and a second copy of
//! it would break the memory estimate a run was admitted on).

use super::files::write_atomic_with;
use anyhow::{ensure, Context, Result};
use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use safetensors::tensor::{Metadata, TensorView};
use safetensors::View;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Largest header read (the format's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Writes `tensors` (any device) with `metadata` to `path` atomically, streamed. Tensors are
/// laid out as the safetensors library orders them (by dtype size, then name), so the bytes
/// equal `safetensors::serialize`'s.
pub fn write(path: &Path, mut tensors: Vec<(String, Tensor)>, metadata: &BTreeMap<String, String>) -> Result<()> {
    tensors.sort_by(|(ln, l), (rn, r)| View::dtype(r).cmp(&View::dtype(l)).then(ln.cmp(rn)));
    let mut header = match metadata.is_empty() {
        true => String::from("{"),
        false => format!("{{\"__metadata__\":{},", serde_json::to_string(metadata)?),
    };
    let mut offset = 0;
    for (name, t) in &tensors {
        let end = offset + View::data_len(t);
        header += &format!(
            "{}:{{\"dtype\":{},\"shape\":{},\"data_offsets\":[{offset},{end}]}},",
            serde_json::to_string(name)?,
            serde_json::to_string(&View::dtype(t))?,
            serde_json::to_string(t.dims())?
        );
        offset = end;
    }
    if header.ends_with(',') {
        header.pop();
    }
    header.push('}');
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    write_atomic_with(path, |f| {
        f.write_all(&(header.len() as u64).to_le_bytes())?;
        f.write_all(header.as_bytes())?;
        for (_, t) in &tensors {
            let cpu = t.to_device(&Device::Cpu).map_err(std::io::Error::other)?;
            f.write_all(View::data(&cpu).as_ref())?;
        }
        Ok(())
    })
}

/// The tensors (on the CPU) and header metadata of the safetensors file `path`, each tensor
/// read on its own from its offsets; a malformed file is an error naming it.
pub fn read(path: &Path) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bad = || format!("{}: not a safetensors file", path.display());
    let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let size = file.metadata().with_context(bad)?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).with_context(bad)?;
    let n = u64::from_le_bytes(len);
    ensure!(n <= MAX_HEADER && 8 + n <= size, "{}: header too large", bad());
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).with_context(bad)?;
    let meta: Metadata = serde_json::from_slice(&header).with_context(bad)?;
    let start = 8 + n;
    let mut tensors = HashMap::new();
    for (name, info) in meta.tensors() {
        let (from, to) = info.data_offsets;
        ensure!(
            from <= to && start + to as u64 <= size,
            "{}: tensor '{name}' lies beyond the end of the file",
            bad()
        );
        let mut bytes = vec![0u8; to - from];
        file.seek(SeekFrom::Start(start + from as u64)).with_context(bad)?;
        file.read_exact(&mut bytes).with_context(bad)?;
        let view = TensorView::new(info.dtype, info.shape.clone(), &bytes)
            .with_context(|| format!("{}: tensor '{name}'", bad()))?;
        let t = view
            .load(&Device::Cpu)
            .with_context(|| format!("{}: tensor '{name}'", bad()))?;
        tensors.insert(name, t);
    }
    Ok((tensors, meta.metadata().clone().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed file equals the library's serialisation byte for byte and reads back.
    #[test]
    fn streamed_file_equals_the_librarys_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("dcm-tensor-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let b = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
        let c = Tensor::new(&[0.5f64], &Device::Cpu).unwrap();
        let tensors = vec![("b".to_string(), b), ("a".to_string(), a), ("c".to_string(), c)];
        let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let path = dir.join("t.safetensors");
        write(&path, tensors.clone(), &meta).unwrap();
        let lib = safetensors::serialize(tensors.clone(), Some(meta.clone().into_iter().collect())).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), lib);
        let (back, m) = read(&path).unwrap();
        assert_eq!(m["k"], "v");
        for (name, t) in &tensors {
            let diff = (t.to_dtype(candle_core::DType::F64).unwrap()
                - back[name].to_dtype(candle_core::DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
            assert_eq!(diff, 0.0, "{name}");
        }
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("t.safetensors") && e.contains("beyond the end"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
