//! A Stable Diffusion pipeline as `sd:PATH` names it: a diffusers folder ([`Folder`]) or a
//! single-file checkpoint ([`SingleFile`], read with `--config` / `--prediction`). Both give
//! the same configurations and the same weights under diffusers' names; the networks are
//! built here, frozen, on the runtime's device in its precision (the text encoders in
//! `text.rs`). Every error is one line naming the file or key.

pub use super::folder::Family;
use super::folder::Folder;
use super::scheduler::SchedulerConfig;
use super::single_file::{SingleFile, SingleFileOptions};
use crate::nets::layers::Params;
use crate::nets::sd::clip_text::ClipTextConfig;
use crate::nets::sd::lora_files::{import, TextEncoderParts};
use crate::nets::sd::tokenizer::ClipTokenizer;
use crate::nets::sd::unet::UNet;
use crate::nets::sd::unet_config::UNetConfig;
use crate::nets::sd::vae::{AutoencoderKl, VaeConfig};
use crate::runtime::device::Runtime;
use anyhow::{anyhow, bail, ensure, Result};
use candle_core::DType;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone)]
enum Source {
    Folder(Folder),
    File(Arc<SingleFile>),
}

/// An opened pipeline whose configurations have been read.
#[derive(Clone)]
pub struct Pipeline {
    path: PathBuf,
    options: SingleFileOptions,
    source: Source,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pipeline({})", self.path.display())
    }
}

impl Pipeline {
    /// A pipeline folder or a single-file checkpoint, read as released.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, &SingleFileOptions::default())
    }

    /// A pipeline folder, or a single-file checkpoint read with `options`.
    pub fn open_with(path: &Path, options: &SingleFileOptions) -> Result<Self> {
        let source = if path.is_dir() {
            ensure!(
                options.is_empty(),
                "{}: a pipeline folder; --config and --prediction apply only to single-file checkpoints",
                path.display()
            );
            Source::Folder(Folder::open(path)?)
        } else if path.is_file() {
            Source::File(Arc::new(SingleFile::open(path, options)?))
        } else {
            bail!("{}: neither a pipeline folder nor a checkpoint file", path.display());
        };
        Ok(Self {
            path: path.to_path_buf(),
            options: options.clone(),
            source,
        })
    }

    /// The folder or file `sd:` named.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How a single file is read (empty for a folder).
    pub fn options(&self) -> &SingleFileOptions {
        &self.options
    }

    pub fn family(&self) -> Family {
        match &self.source {
            Source::Folder(f) => f.family(),
            Source::File(f) => f.family(),
        }
    }

    pub fn scheduler(&self) -> Result<SchedulerConfig> {
        match &self.source {
            Source::Folder(f) => f.scheduler(),
            Source::File(f) => Ok(f.scheduler()),
        }
    }

    /// The UNet's configuration; an LCM-distilled UNet is refused as a teacher.
    pub fn unet_config(&self) -> Result<UNetConfig> {
        let cfg = match &self.source {
            Source::Folder(f) => f.unet_config()?,
            Source::File(f) => f.unet_config().clone(),
        };
        ensure!(
            cfg.time_cond_proj_dim.is_none(),
            "{}: 'time_cond_proj_dim' is set: an LCM-distilled UNet is a student, not a teacher",
            self.path.display()
        );
        Ok(cfg)
    }

    /// The UNet's weights in the runtime's precision, and what they were read from.
    pub fn unet_params(&self, rt: &Runtime) -> Result<(Params, PathBuf)> {
        match &self.source {
            Source::Folder(f) => f.unet_params(&rt.device, rt.dtype),
            Source::File(f) => Ok((f.unet_params(&rt.device, rt.dtype)?, f.path().to_path_buf())),
        }
    }

    /// The UNet, in the runtime's precision.
    pub fn unet(&self, rt: &Runtime) -> Result<UNet> {
        self.unet_with_lora(rt, None)
    }

    /// The UNet with a LoRA file's adapters attached (on), or without with `None`; the LoRA
    /// computes in the runtime's precision too.
    pub fn unet_with_lora(&self, rt: &Runtime, lora: Option<&Path>) -> Result<UNet> {
        self.unet_with_lora_parts(rt, lora, TextEncoderParts::Refuse)
    }

    /// As `unet_with_lora`, saying what to do with text-encoder parts of the LoRA file.
    pub fn unet_with_lora_parts(&self, rt: &Runtime, lora: Option<&Path>, te: TextEncoderParts) -> Result<UNet> {
        let cfg = self.unet_config()?;
        let (mut params, path) = self.unet_params(rt)?;
        let Some(file) = lora else {
            return UNet::new(cfg, &params, None).map_err(|e| anyhow!("{}: {e}", path.display()));
        };
        let lora = import(file, &cfg, te)?;
        for (name, t) in &lora.params {
            params.insert(name.clone(), t.to_device(&rt.device)?.to_dtype(rt.dtype)?);
        }
        UNet::new(cfg, &params, Some(&lora.unet_lora())).map_err(|e| anyhow!("--lora {}: {e}", file.display()))
    }

    pub fn vae_config(&self) -> Result<VaeConfig> {
        match &self.source {
            Source::Folder(f) => f.vae_config(),
            Source::File(f) => Ok(f.vae_config().clone()),
        }
    }

    /// The VAE, in the runtime's precision, except f16 for a config with `force_upcast`
    /// (SDXL's VAE overflows in f16): then f32, as diffusers' pipelines do.
    pub fn vae(&self, rt: &Runtime) -> Result<AutoencoderKl> {
        let cfg = self.vae_config()?;
        let dtype = if cfg.force_upcast && rt.dtype == DType::F16 {
            DType::F32
        } else {
            rt.dtype
        };
        let (params, path) = match &self.source {
            Source::Folder(f) => f.vae_params(&rt.device, dtype)?,
            Source::File(f) => (f.vae_params(&rt.device, dtype)?, f.path().to_path_buf()),
        };
        AutoencoderKl::new(cfg, &params).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    /// The number of text encoders (SDXL: 2).
    pub fn text_encoders(&self) -> usize {
        match &self.source {
            Source::Folder(f) => f.text_encoders(),
            Source::File(f) => f.text_encoders(),
        }
    }

    /// Text encoder `i`'s configuration and weights (runtime precision), and their file.
    pub fn text_encoder(&self, i: usize, rt: &Runtime) -> Result<(ClipTextConfig, Params, PathBuf)> {
        match &self.source {
            Source::Folder(f) => f.text_encoder(i, &rt.device, rt.dtype),
            Source::File(f) => {
                let (cfg, params) = f.text_encoder(i, &rt.device, rt.dtype)?;
                Ok((cfg, params, f.path().to_path_buf()))
            }
        }
    }

    /// Text encoder `i`'s configuration alone (no weights read).
    pub fn text_encoder_config(&self, i: usize) -> Result<ClipTextConfig> {
        match &self.source {
            Source::Folder(f) => f.text_encoder_config(i),
            Source::File(f) => Ok(f.text_encoder_config(i)),
        }
    }

    /// Text encoder `i`'s tokenizer.
    pub fn tokenizer(&self, i: usize) -> Result<ClipTokenizer> {
        match &self.source {
            Source::Folder(f) => f.tokenizer(i),
            Source::File(f) => f.tokenizer(i),
        }
    }

    /// The files the VAE is read from (a cache of its latents is keyed on them).
    pub fn vae_files(&self) -> Result<Vec<PathBuf>> {
        let mut files = match &self.source {
            Source::Folder(f) => list_files(&f.component("vae"))?,
            Source::File(f) => vec![f.path().to_path_buf()],
        };
        if let Some(config) = &self.options.config {
            files.extend(if config.is_dir() {
                list_files(&config.join("vae"))?
            } else {
                vec![config.clone()]
            });
        }
        Ok(files)
    }

    /// Every file the pipeline is read from (a run's fingerprint of its teacher): a folder's
    /// configurations, tokenizers and picked weights files, or the single file and the
    /// configuration files `--config` names.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let mut files = match &self.source {
            Source::Folder(f) => f.files()?,
            Source::File(f) => vec![f.path().to_path_buf()],
        };
        match &self.options.config {
            Some(c) if c.is_dir() => files.extend(super::folder::config_files(c)?),
            Some(c) => files.push(c.clone()),
            None => {}
        }
        Ok(files)
    }
}

/// The files of a folder, sorted.
fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| anyhow!("{}: cannot list: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::sd::test_util::fixture;

    /// The VAE runs in f32 under an f16 runtime when its config asks (`force_upcast`).
    #[test]
    fn vae_upcasts_from_f16() {
        let rt = Runtime {
            device: candle_core::Device::Cpu,
            dtype: DType::F16,
        };
        let p = Pipeline::open(&fixture("sd1")).unwrap();
        assert!(p.vae_config().unwrap().force_upcast);
        let z = candle_core::Tensor::zeros((1, 4, 2, 2), DType::F32, &rt.device).unwrap();
        let decoded = p.vae(&rt).unwrap().decode(&z).unwrap();
        assert_eq!(decoded.dtype(), DType::F32);
    }

    /// A text encoder's parameter count from its configuration alone (the memory estimate's)
    /// equals the count of the weights it loads, for each encoder of each family.
    #[test]
    fn text_encoder_parameters_from_the_config_match_the_weights() {
        let rt = Runtime {
            device: candle_core::Device::Cpu,
            dtype: DType::F32,
        };
        for name in ["sd1", "sd2", "sdxl"] {
            let p = Pipeline::open(&fixture(name)).unwrap();
            for i in 0..p.text_encoders() {
                let (_, params, _) = p.text_encoder(i, &rt).unwrap();
                let loaded: usize = params.values().map(|t| t.elem_count()).sum();
                let counted = p.text_encoder_config(i).unwrap().parameters(i == 1);
                assert_eq!(counted, loaded, "{name} text encoder {i}");
            }
        }
    }
}
