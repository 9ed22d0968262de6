//! `dcm distill --init-lora FILE`: a Stable Diffusion student whose adapters start from an
//! existing LoRA instead of B = 0 (docs/SD_FORMATS.md, "LoRA import").
//!
//! The file decides the adapted modules and the rank (mixed ranks zero-padded to the largest,
//! which leaves every update unchanged). An explicit `--lora-rank` must agree with it; an
//! explicit `--lora-alpha` (or the alpha `--lora-rank` implies) becomes the training alpha and
//! the ratio is folded into B, so the start update `(α/r)·B·A` is the file's.

use crate::models::sd::student::LoraUnet;
use crate::nets::layers::Params;
use crate::nets::lora::LoraConfig;
use crate::nets::network::{Architecture, Network};
use crate::nets::sd::lora_files::{import, TextEncoderParts};
use crate::nets::sd::unet_config::UNetConfig;
use crate::runtime::noise::Rng;
use anyhow::{ensure, Result};
use candle_core::{DType, Device};
use std::path::Path;

/// The start adapters read from a LoRA file, in dcm naming (f32, CPU).
#[derive(Clone, Debug)]
pub struct InitLora {
    pub cfg: LoraConfig,
    /// The adapted modules' paths (the student's targets).
    pub targets: Vec<String>,
    pub params: Params,
}

impl InitLora {
    /// Reads `path` for `unet`'s UNet; `explicit`: the `--lora-rank` / `--lora-alpha` given.
    pub fn read(path: &Path, unet: &UNetConfig, te: TextEncoderParts, explicit: Option<LoraConfig>) -> Result<Self> {
        let file = import(path, unet, te)?;
        let cfg = match explicit {
            None => file.cfg,
            Some(c) => {
                ensure!(
                    c.rank == file.cfg.rank,
                    "--lora-rank {} disagrees with --init-lora {}, whose adapters have rank {}",
                    c.rank,
                    path.display(),
                    file.cfg.rank
                );
                c
            }
        };
        let ratio = file.cfg.alpha / cfg.alpha;
        let mut params = Params::new();
        for (name, t) in &file.params {
            let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
            let t = match name.ends_with(".lora_B.weight") && ratio != 1.0 {
                true => (t * ratio)?,
                false => t,
            };
            params.insert(name.clone(), t.to_dtype(DType::F32)?);
        }
        Ok(Self {
            cfg,
            targets: file.targets,
            params,
        })
    }
}

/// A LoRA UNet student whose fresh adapters are the file's.
pub struct FromFile {
    pub inner: LoraUnet,
    pub init: InitLora,
}

impl Architecture for FromFile {
    fn check_sample_shape(&self, shape: &[usize]) -> Result<()> {
        self.inner.check_sample_shape(shape)
    }

    fn build(&self, params: &Params, lora: Option<LoraConfig>) -> Result<Box<dyn Network>> {
        self.inner.build(params, lora)
    }

    /// The file's adapters (no random draw); `lora` must be the configuration they were read for.
    fn init_adapters(&self, lora: LoraConfig, _rng: &mut Rng) -> Result<Params> {
        ensure!(
            lora == self.init.cfg,
            "--init-lora: the run's LoRA configuration {lora:?} is not the file's {:?}",
            self.init.cfg
        );
        Ok(self.init.params.clone())
    }

    fn describe(&self) -> serde_json::Value {
        self.inner.describe()
    }

    fn merges_adapters(&self) -> bool {
        self.inner.merges_adapters()
    }
}
