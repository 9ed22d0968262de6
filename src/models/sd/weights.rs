//! A component's frozen weights, in any layout diffusers and transformers save: one
//! safetensors file, its fp16 variant, either sharded behind an index, or PyTorch pickles
//! (`.bin`, one or sharded). Tensors are read one at a time straight into the device and
//! precision the model runs in, so no full-precision copy of the whole model is ever held
//! (SDXL's UNet is 10 GB in f32). Layouts and their order: `docs/SD_FORMATS.md`,
//! "Pipeline folder".

use super::checkpoint::Checkpoint;
use super::json::JsonFile;
use crate::nets::layers::Params;
use anyhow::{anyhow, bail, ensure, Result};
use candle_core::{DType, Device};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Who saved the component, which decides its file names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsKind {
    /// diffusers models (UNet, VAE): `diffusion_pytorch_model.*`.
    Diffusers,
    /// transformers models (text encoders): `model.safetensors`, `pytorch_model.bin`.
    Transformers,
}

impl WeightsKind {
    /// The file-name stems of its safetensors and of its pickle files.
    fn stems(self) -> (&'static str, &'static str) {
        match self {
            Self::Diffusers => ("diffusion_pytorch_model", "diffusion_pytorch_model"),
            Self::Transformers => ("model", "pytorch_model"),
        }
    }

    /// The files that hold the weights, in the order they are looked for: safetensors before
    /// pickles, full precision before the fp16 variant, one file before shards. A name ending
    /// in `.json` is a shard index (the variant goes before `.json`, as diffusers names it).
    fn candidates(self) -> Vec<String> {
        let (safe, pickle) = self.stems();
        vec![
            format!("{safe}.safetensors"),
            format!("{safe}.fp16.safetensors"),
            format!("{safe}.safetensors.index.json"),
            format!("{safe}.safetensors.index.fp16.json"),
            format!("{pickle}.bin"),
            format!("{pickle}.fp16.bin"),
            format!("{pickle}.bin.index.json"),
            format!("{pickle}.bin.index.fp16.json"),
        ]
    }
}

/// The weights of the component folder `dir` on `device`, floating-point ones in `dtype`
/// (integer buffers such as CLIP's `position_ids` keep theirs), each checked finite; and the
/// file they came from (the index for shards), for error messages.
pub fn load_component(dir: &Path, kind: WeightsKind, device: &Device, dtype: DType) -> Result<(Params, PathBuf)> {
    let candidates = kind.candidates();
    let Some(path) = candidates.iter().map(|f| dir.join(f)).find(|p| p.is_file()) else {
        bail!(
            "{}: no weights file; looked for {}",
            dir.display(),
            candidates.join(", ")
        )
    };
    let params = if path.extension().is_some_and(|e| e == "json") {
        load_sharded(&path, device, dtype)?
    } else {
        load(&path, device, dtype)?
    };
    Ok((params, path))
}

/// Extensions of files that hold weights (and `.json` shard indexes, by name): the files a
/// component folder may hold in several variants, of which `load_component` reads one.
const WEIGHTS_EXTENSIONS: [&str; 8] = ["safetensors", "bin", "ckpt", "pt", "pth", "msgpack", "onnx", "h5"];

/// Whether `p` holds weights or indexes them, rather than configuring the component.
pub fn is_weights_file(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    WEIGHTS_EXTENSIONS.contains(&ext.as_str()) || name.contains(".index.") && name.ends_with(".json")
}

/// The files `load_component` reads for the component folder `dir`: its configuration files,
/// the weights file it picks and the shards that file indexes (not the variants it passes over).
pub fn component_files(dir: &Path, kind: WeightsKind) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow!("{}: cannot list: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && !is_weights_file(p))
        .collect();
    let candidates = kind.candidates();
    let Some(path) = candidates.iter().map(|f| dir.join(f)).find(|p| p.is_file()) else {
        bail!(
            "{}: no weights file; looked for {}",
            dir.display(),
            candidates.join(", ")
        )
    };
    if path.extension().is_some_and(|e| e == "json") {
        let shards: std::collections::BTreeSet<String> = weight_map(&path)?.into_values().collect();
        files.extend(shards.into_iter().map(|s| dir.join(s)));
    }
    files.push(path);
    files.sort();
    Ok(files)
}

/// Every tensor of one weights file (any format `Checkpoint` reads), as `load_component`.
pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Params> {
    let file = Checkpoint::open(path)?;
    let mut params = Params::new();
    for name in file.names() {
        let t = file.load(&name, device, dtype)?;
        params.insert(name, t);
    }
    Ok(params)
}

/// The weights behind a shard index: each shard read once, every tensor in exactly the shard
/// the index names, and every tensor the index names present.
fn load_sharded(index: &Path, device: &Device, dtype: DType) -> Result<Params> {
    let at = index.display();
    let map = weight_map(index)?;
    let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, shard) in &map {
        shards.entry(shard.as_str()).or_default().push(name.as_str());
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut params = Params::new();
    for (shard, listed) in shards {
        let path = dir.join(shard);
        ensure!(path.is_file(), "{at}: names the shard {shard}, which is missing");
        let file = Checkpoint::open(&path)?;
        for name in file.names() {
            match map.get(&name) {
                None => bail!("{}: tensor '{name}' is not in the index {at}", path.display()),
                Some(s) if s != shard => bail!(
                    "{}: tensor '{name}' is also in {s}, where the index {at} puts it",
                    path.display()
                ),
                Some(_) => {}
            }
            let t = file.load(&name, device, dtype)?;
            params.insert(name, t);
        }
        if let Some(name) = listed.iter().find(|n| !params.contains_key(**n)) {
            bail!("{at}: puts tensor '{name}' in {shard}, which does not hold it");
        }
    }
    Ok(params)
}

/// An index's `weight_map`: tensor name → shard file name, each a plain file name of the
/// index's folder.
fn weight_map(index: &Path) -> Result<BTreeMap<String, String>> {
    let json = JsonFile::read(index)?;
    let Some(map) = json.get("weight_map").and_then(|v| v.as_object()) else {
        return Err(json.error("weight_map", "is missing or not an object of tensor → shard file"));
    };
    ensure!(!map.is_empty(), "{}: 'weight_map' is empty", index.display());
    map.iter()
        .map(|(name, shard)| {
            let shard = shard
                .as_str()
                .filter(|s| !s.is_empty() && !s.contains(['/', '\\']) && *s != "..")
                .ok_or_else(|| {
                    anyhow!(
                        "{}: 'weight_map' gives tensor '{name}' the shard {shard}, not a file name",
                        index.display()
                    )
                })?;
            Ok((name.clone(), shard.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::sd::test_util::fixture;
    use candle_core::Tensor;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dcm-sdw-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A copy of a `tests/fixtures/sd/formats/` folder to break.
    fn copy_formats(folder: &str, name: &str) -> PathBuf {
        let dir = scratch(name);
        for entry in std::fs::read_dir(fixture("formats").join(folder)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
        dir
    }

    fn component(dir: &Path, kind: WeightsKind, dtype: DType) -> (Params, String) {
        let (params, path) = load_component(dir, kind, &Device::Cpu, dtype).unwrap();
        (params, path.file_name().unwrap().to_string_lossy().into_owned())
    }

    fn bits(t: &Tensor) -> Vec<u64> {
        let flat = t.flatten_all().unwrap();
        if t.dtype().is_float() {
            let values = flat.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            values.into_iter().map(f64::to_bits).collect()
        } else {
            let values = flat.to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap();
            values.into_iter().map(|v| v as u64).collect()
        }
    }

    /// Same names, dtypes, shapes and bit patterns.
    fn assert_identical(a: &Params, b: &Params, what: &str) {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{what}");
        for (name, t) in a {
            let u = &b[name];
            assert_eq!((t.dtype(), t.dims()), (u.dtype(), u.dims()), "{what}: {name}");
            assert!(bits(t) == bits(u), "{what}: tensor {name} differs");
        }
    }

    /// diffusers' sharded safetensors, its single and sharded pickles, and transformers'
    /// sharded safetensors and pytorch_model.bin all load to exactly the tensors of the plain
    /// safetensors file, each from the file expected.
    #[test]
    fn every_layout_loads_the_same_tensors() {
        let formats = fixture("formats");
        let (plain, _) = component(&formats.join("vae"), WeightsKind::Diffusers, DType::F32);
        for (folder, file) in [
            ("vae_sharded", "diffusion_pytorch_model.safetensors.index.json"),
            ("vae_bin", "diffusion_pytorch_model.bin"),
            ("vae_bin_sharded", "diffusion_pytorch_model.bin.index.json"),
        ] {
            let (params, read) = component(&formats.join(folder), WeightsKind::Diffusers, DType::F32);
            assert_eq!(read, file);
            assert_identical(&plain, &params, folder);
        }
        let (plain, _) = component(
            &fixture("sd1").join("text_encoder"),
            WeightsKind::Transformers,
            DType::F32,
        );
        for (folder, file) in [
            ("text_encoder_sharded", "model.safetensors.index.json"),
            ("text_encoder_bin", "pytorch_model.bin"),
        ] {
            let (params, read) = component(&formats.join(folder), WeightsKind::Transformers, DType::F32);
            assert_eq!(read, file);
            assert_identical(&plain, &params, folder);
        }
    }

    /// The sharded fp16 variant holds the plain weights rounded to f16: loaded in f16 it is
    /// the plain file loaded in f16, bit for bit.
    #[test]
    fn the_sharded_fp16_variant_is_the_rounded_plain_file() {
        let formats = fixture("formats");
        let (plain, _) = component(&formats.join("vae"), WeightsKind::Diffusers, DType::F16);
        let (half, read) = component(&formats.join("vae_fp16_sharded"), WeightsKind::Diffusers, DType::F16);
        assert_eq!(read, "diffusion_pytorch_model.safetensors.index.fp16.json");
        assert_identical(&plain, &half, "fp16 variant");
        assert!(half.values().all(|t| t.dtype() == DType::F16));
    }

    /// f16 files load in f32 and f32 files in f16; integer tensors keep their dtype; the plain
    /// file is preferred to the fp16 variant, and safetensors to a pickle.
    #[test]
    fn converts_floats_and_prefers_the_plain_file() {
        let dir = scratch("convert");
        let half = Tensor::new(&[1.5f32, -2.0], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let ids = Tensor::new(&[[0i64, 1, 2]], &Device::Cpu).unwrap();
        let tensors = [("w", half), ("ids", ids)];
        candle_core::safetensors::save(&tensors.iter().cloned().collect(), dir.join("model.fp16.safetensors")).unwrap();
        std::fs::copy(
            fixture("formats").join("text_encoder_bin/pytorch_model.bin"),
            dir.join("pytorch_model.bin"),
        )
        .unwrap();
        let (p, read) = component(&dir, WeightsKind::Transformers, DType::F32);
        assert_eq!(read, "model.fp16.safetensors");
        assert_eq!(p["w"].dtype(), DType::F32);
        assert_eq!(p["w"].to_vec1::<f32>().unwrap(), vec![1.5, -2.0]);
        assert_eq!(p["ids"].dtype(), DType::I64);
        std::fs::copy(dir.join("model.fp16.safetensors"), dir.join("model.safetensors")).unwrap();
        assert_eq!(
            component(&dir, WeightsKind::Transformers, DType::F32).1,
            "model.safetensors"
        );
        let e = load_component(&dir, WeightsKind::Diffusers, &Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(": no weights file; looked for diffusion_pytorch_model.safetensors, "),
            "{e}"
        );
        assert!(e.ends_with("diffusion_pytorch_model.bin.index.fp16.json"), "{e}");
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

    fn error_of(dir: &Path) -> String {
        load_component(dir, WeightsKind::Diffusers, &Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string()
    }

    const INDEX: &str = "diffusion_pytorch_model.safetensors.index.json";

    /// Rewrites the fixture index's weight_map with `edit`.
    fn edit_index(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
        let text = std::fs::read_to_string(dir.join(INDEX)).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        edit(json["weight_map"].as_object_mut().unwrap());
        std::fs::write(dir.join(INDEX), json.to_string()).unwrap();
    }

    /// An index naming a missing shard, a shard tensor the index does not list, a listed
    /// tensor its shard lacks and a shard outside the folder are each one line naming the file.
    #[test]
    fn broken_indexes_are_named() {
        let shard = "diffusion_pytorch_model-00002-of-00008.safetensors";
        let dir = copy_formats("vae_sharded", "missing-shard");
        std::fs::remove_file(dir.join(shard)).unwrap();
        let e = error_of(&dir);
        assert!(
            e.ends_with(&format!("{INDEX}: names the shard {shard}, which is missing")),
            "{e}"
        );

        let dir = copy_formats("vae_sharded", "unlisted");
        edit_index(&dir, |map| {
            map.remove("decoder.conv_in.bias");
        });
        let e = error_of(&dir);
        assert!(
            e.contains(".safetensors: tensor 'decoder.conv_in.bias' is not in the index "),
            "{e}"
        );

        let dir = copy_formats("vae_sharded", "lacking");
        edit_index(&dir, |map| {
            map.insert("decoder.extra".into(), shard.into());
        });
        let e = error_of(&dir);
        assert!(
            e.ends_with(&format!(
                "{INDEX}: puts tensor 'decoder.extra' in {shard}, which does not hold it"
            )),
            "{e}"
        );

        let dir = copy_formats("vae_sharded", "outside");
        edit_index(&dir, |map| {
            map.insert("decoder.conv_in.bias".into(), "../vae/x.safetensors".into());
        });
        let e = error_of(&dir);
        assert!(
            e.contains(
                "'weight_map' gives tensor 'decoder.conv_in.bias' the shard \"../vae/x.safetensors\", not a file name"
            ),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    /// A tensor stored in two shards is refused, naming the shard the index does not put it in.
    #[test]
    fn a_tensor_in_two_shards_is_refused() {
        let dir = scratch("two-shards");
        let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let save = |names: &[&str], file: &str| {
            let map = names.iter().map(|n| (n.to_string(), t.clone())).collect();
            candle_core::safetensors::save(&map, dir.join(file)).unwrap();
        };
        save(&["x", "y"], "a.safetensors");
        save(&["y", "z"], "b.safetensors");
        let index = r#"{"weight_map": {"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}}"#;
        std::fs::write(dir.join(INDEX), index).unwrap();
        let e = error_of(&dir);
        assert!(
            e.ends_with(&format!(
                "b.safetensors: tensor 'y' is also in a.safetensors, where the index {} puts it",
                dir.join(INDEX).display()
            )),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
