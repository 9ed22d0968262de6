//! A diffusers Stable Diffusion pipeline folder (`sd:DIR`): `model_index.json` names the
//! components, each in its own folder — `unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
//! `scheduler/`, and for SDXL `text_encoder_2/`, `tokenizer_2/`. Each component loads frozen,
//! on the runtime's device in its precision (the text encoders in `text.rs`); every error is
//! one line naming the file or key.

use super::json::JsonFile;
use super::scheduler::SchedulerConfig;
use super::weights::{load, weights_file};
use crate::nets::sd::lora_files::{import, TextEncoderParts};
use crate::nets::sd::unet::UNet;
use crate::nets::sd::unet_config::UNetConfig;
use crate::nets::sd::vae::{AutoencoderKl, VaeConfig};
use crate::runtime::device::Runtime;
use anyhow::{anyhow, ensure, Result};
use candle_core::DType;
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
pub struct Pipeline {
    dir: PathBuf,
    family: Family,
}

const MODEL_INDEX: &str = "model_index.json";
const SD_COMPONENTS: [&str; 5] = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"];
const SDXL_COMPONENTS: [&str; 2] = ["text_encoder_2", "tokenizer_2"];

impl Pipeline {
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
        let path = self.component("unet").join("config.json");
        let cfg = UNetConfig::from_file(&path)?;
        ensure!(
            cfg.time_cond_proj_dim.is_none(),
            "{}: 'time_cond_proj_dim' is set: an LCM-distilled UNet is a student, not a teacher",
            path.display()
        );
        Ok(cfg)
    }

    /// The UNet, in the runtime's precision.
    pub fn unet(&self, rt: &Runtime) -> Result<UNet> {
        self.unet_with_lora(rt, None)
    }

    /// The UNet with a LoRA file's adapters attached (on), or without with `None`; the LoRA
    /// computes in the runtime's precision too.
    pub fn unet_with_lora(&self, rt: &Runtime, lora: Option<&Path>) -> Result<UNet> {
        let cfg = self.unet_config()?;
        let path = weights_file(&self.component("unet"), "diffusion_pytorch_model")?;
        let mut params = load(&path, &rt.device, rt.dtype)?;
        let Some(file) = lora else {
            return UNet::new(cfg, &params, None).map_err(|e| anyhow!("{}: {e}", path.display()));
        };
        let lora = import(file, &cfg, TextEncoderParts::Refuse)?;
        for (name, t) in &lora.params {
            params.insert(name.clone(), t.to_device(&rt.device)?.to_dtype(rt.dtype)?);
        }
        UNet::new(cfg, &params, Some(&lora.unet_lora())).map_err(|e| anyhow!("--lora {}: {e}", file.display()))
    }

    pub fn vae_config(&self) -> Result<VaeConfig> {
        VaeConfig::from_file(&self.component("vae").join("config.json"))
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
        let path = weights_file(&self.component("vae"), "diffusion_pytorch_model")?;
        let params = load(&path, &rt.device, dtype)?;
        AutoencoderKl::new(cfg, &params).map_err(|e| anyhow!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::sd::test_util::{copy_pipeline, fixture};

    #[test]
    fn families_from_model_index() {
        assert_eq!(Pipeline::open(&fixture("sd2")).unwrap().family(), Family::Sd);
        let sdxl = Pipeline::open(&fixture("sdxl")).unwrap();
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
            let e = Pipeline::open(&dir).unwrap_err().to_string();
            assert!(e.contains(needle) && !e.contains('\n'), "{e}");
        }
        std::fs::write(&index, text.replace("\"force_zeros_for_empty_prompt\": true,", "")).unwrap();
        let absent = Pipeline::open(&dir).unwrap().family();
        assert_eq!(
            absent,
            Family::Sdxl {
                force_zeros_for_empty_prompt: true
            },
            "diffusers' default"
        );
        std::fs::remove_dir_all(dir.join("tokenizer_2")).unwrap();
        let e = Pipeline::open(&dir).unwrap_err().to_string();
        assert!(
            e.ends_with("tokenizer_2: missing component folder (listed in model_index.json)"),
            "{e}"
        );
        std::fs::remove_file(&index).unwrap();
        assert!(Pipeline::open(&dir)
            .unwrap_err()
            .to_string()
            .contains("model_index.json: cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
}
