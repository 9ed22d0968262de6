//! A diffusers Stable Diffusion pipeline folder (`sd:DIR`): `model_index.json` names the
//! components, each in its own folder — `unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
//! `scheduler/`, and for SDXL `text_encoder_2/`, `tokenizer_2/`. Configurations are read here
//! and weights loaded on request, on a device in a precision; every error is one line naming
//! the file or key.

use super::json::JsonFile;
use super::scheduler::SchedulerConfig;
use super::weights::{component_files, is_weights_file, load_component, WeightsKind};
use crate::nets::layers::Params;
use crate::nets::sd::clip_text::ClipTextConfig;
use crate::nets::sd::tokenizer::ClipTokenizer;
use crate::nets::sd::unet_config::UNetConfig;
use crate::nets::sd::vae::VaeConfig;
use anyhow::{ensure, Result};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// Which text conditioning the pipeline computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x / 2.x: one CLIP text encoder's last hidden state.
    Sd,
    /// SDXL: two encoders' penultimate states, the second's pooled projection and size ids;
    /// `force_zeros_for_empty_prompt` zeroes the unconditional input when no negative prompt is given.
    Sdxl { force_zeros_for_empty_prompt: bool },
}

/// An opened pipeline folder whose components all exist.
#[derive(Clone, Debug)]
pub struct Folder {
    dir: PathBuf,
    family: Family,
}

const MODEL_INDEX: &str = "model_index.json";
const SD_COMPONENTS: [&str; 5] = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"];
const SDXL_COMPONENTS: [&str; 2] = ["text_encoder_2", "tokenizer_2"];
const TEXT_ENCODERS: [&str; 2] = ["text_encoder", "text_encoder_2"];
const TOKENIZERS: [&str; 2] = ["tokenizer", "tokenizer_2"];

impl Folder {
    /// Reads `DIR/model_index.json` (SDXL when it lists `text_encoder_2`) and checks that every
    /// component it needs is listed and has its folder.
    pub fn open(dir: &Path) -> Result<Self> {
        ensure!(dir.is_dir(), "{}: not a folder", dir.display());
        let index = JsonFile::read(&dir.join(MODEL_INDEX))?;
        let listed = |name: &str| {
            index
                .get(name)
                .is_some_and(|v| v.as_array().is_some_and(|a| a.iter().all(|e| e.is_string())))
        };
        let sdxl = listed(SDXL_COMPONENTS[0]);
        let family = if sdxl {
            Family::Sdxl {
                force_zeros_for_empty_prompt: index.bool_or("force_zeros_for_empty_prompt", true)?,
            }
        } else {
            Family::Sd
        };
        let extra: &[&str] = if sdxl { &SDXL_COMPONENTS } else { &[] };
        for name in SD_COMPONENTS.iter().chain(extra) {
            ensure!(
                listed(name),
                index.error(name, "is missing or null: a text-to-image pipeline needs it")
            );
            let folder = dir.join(name);
            ensure!(
                folder.is_dir(),
                "{}: missing component folder (listed in {MODEL_INDEX})",
                folder.display()
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            family,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// The folder of one component, as `model_index.json` names it.
    pub fn component(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn scheduler(&self) -> Result<SchedulerConfig> {
        SchedulerConfig::from_file(&self.component("scheduler").join("scheduler_config.json"))
    }

    pub fn unet_config(&self) -> Result<UNetConfig> {
        UNetConfig::from_file(&self.component("unet").join("config.json"))
    }

    /// The UNet's weights and the file they came from.
    pub fn unet_params(&self, device: &Device, dtype: DType) -> Result<(Params, PathBuf)> {
        load_component(&self.component("unet"), WeightsKind::Diffusers, device, dtype)
    }

    pub fn vae_config(&self) -> Result<VaeConfig> {
        VaeConfig::from_file(&self.component("vae").join("config.json"))
    }

    /// The VAE's weights and the file they came from.
    pub fn vae_params(&self, device: &Device, dtype: DType) -> Result<(Params, PathBuf)> {
        load_component(&self.component("vae"), WeightsKind::Diffusers, device, dtype)
    }

    /// The number of text encoders (SDXL: 2).
    pub fn text_encoders(&self) -> usize {
        match self.family {
            Family::Sd => 1,
            Family::Sdxl { .. } => 2,
        }
    }

    /// Text encoder `i`'s configuration.
    pub fn text_encoder_config(&self, i: usize) -> Result<ClipTextConfig> {
        ClipTextConfig::from_file(&self.component(TEXT_ENCODERS[i]).join("config.json"))
    }

    /// Text encoder `i`'s configuration, weights and weights file.
    pub fn text_encoder(&self, i: usize, device: &Device, dtype: DType) -> Result<(ClipTextConfig, Params, PathBuf)> {
        let dir = self.component(TEXT_ENCODERS[i]);
        let cfg = self.text_encoder_config(i)?;
        let (params, path) = load_component(&dir, WeightsKind::Transformers, device, dtype)?;
        Ok((cfg, params, path))
    }

    /// Text encoder `i`'s tokenizer.
    pub fn tokenizer(&self, i: usize) -> Result<ClipTokenizer> {
        ClipTokenizer::from_dir(&self.component(TOKENIZERS[i]))
    }

    /// Every file the pipeline reads: `model_index.json`, each component's configuration and
    /// tokenizer files, and the weights files the loader picks (not the variants beside them).
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let mut files = vec![self.dir.join(MODEL_INDEX)];
        let extra: &[&str] = match self.family {
            Family::Sd => &[],
            Family::Sdxl { .. } => &SDXL_COMPONENTS,
        };
        for name in SD_COMPONENTS.iter().chain(extra) {
            let dir = self.component(name);
            files.extend(match *name {
                "unet" | "vae" => component_files(&dir, WeightsKind::Diffusers)?,
                n if TEXT_ENCODERS.contains(&n) => component_files(&dir, WeightsKind::Transformers)?,
                _ => config_files(&dir)?,
            });
        }
        Ok(files)
    }
}

/// The files of `dir` and its sub-folders that are not weights (configurations, tokenizers).
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(config_files(&path)?);
        } else if path.is_file() && !is_weights_file(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::sd::test_util::{copy_pipeline, fixture};

    #[test]
    fn families_from_model_index() {
        assert_eq!(Folder::open(&fixture("sd2")).unwrap().family(), Family::Sd);
        let sdxl = Folder::open(&fixture("sdxl")).unwrap();
        assert_eq!(
            sdxl.family(),
            Family::Sdxl {
                force_zeros_for_empty_prompt: true
            }
        );
    }

    /// Each broken model_index.json or missing folder is one line naming the file or key.
    #[test]
    fn broken_folders_are_named() {
        let dir = copy_pipeline("sdxl", "index");
        let index = dir.join(MODEL_INDEX);
        let text = std::fs::read_to_string(&index).unwrap();
        let cases = [
            (
                text.replace(
                    "\"force_zeros_for_empty_prompt\": true",
                    "\"force_zeros_for_empty_prompt\": 1",
                ),
                "'force_zeros_for_empty_prompt' is 1, expected true or false",
            ),
            (
                text.replacen("\"AutoencoderKL\"", "null", 1),
                "'vae' is missing or null",
            ),
            (
                text.replace("\"scheduler\": [", "\"schedulers\": ["),
                "'scheduler' is missing or null",
            ),
            (text[..40].to_string(), "model_index.json: not valid JSON"),
        ];
        for (json, needle) in cases {
            std::fs::write(&index, json).unwrap();
            let e = Folder::open(&dir).unwrap_err().to_string();
            assert!(e.contains(needle) && !e.contains('\n'), "{e}");
        }
        std::fs::write(&index, text.replace("\"force_zeros_for_empty_prompt\": true,", "")).unwrap();
        let absent = Folder::open(&dir).unwrap().family();
        assert_eq!(
            absent,
            Family::Sdxl {
                force_zeros_for_empty_prompt: true
            },
            "diffusers' default"
        );
        std::fs::remove_dir_all(dir.join("tokenizer_2")).unwrap();
        let e = Folder::open(&dir).unwrap_err().to_string();
        assert!(
            e.ends_with("tokenizer_2: missing component folder (listed in model_index.json)"),
            "{e}"
        );
        std::fs::remove_file(&index).unwrap();
        assert!(Folder::open(&dir)
            .unwrap_err()
            .to_string()
            .contains("model_index.json: cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
