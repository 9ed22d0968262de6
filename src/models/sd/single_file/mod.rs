//! Single-file checkpoints (`sd:FILE.safetensors`, `sd:FILE.ckpt`): a whole SD 1.x, 2.x or SDXL
//! pipeline in the original ldm/CompVis layout, as most fine-tunes are published and as
//! ComfyUI and A1111 keep them (docs/SD_FORMATS.md, "Single-file checkpoints").
//!
//! The text side's tensor names tell the family ([`ReleasedFamily`]); its released
//! configurations apply unless `--config` gives a diffusers folder (every config, tokenizer and
//! scheduler from there) or a UNet `config.json` (the rest released). Every UNet tensor is
//! checked against the configuration's shapes when the file is opened, so a file of another
//! architecture is refused by name before anything loads. Tensors are read one at a time,
//! renamed to diffusers' names and converted to the runtime's precision.

pub mod clip_names;
pub mod released;
pub mod vae_names;

use self::clip_names::{text_params, TextLayout};
use self::released::ReleasedFamily;
use self::vae_names::{diffusers_name, diffusers_tensor, VAE_PREFIX};
use super::checkpoint::Checkpoint;
use super::folder::{Family, Folder};
use super::scheduler::SchedulerConfig;
use crate::diffusion::prediction::Prediction;
use crate::nets::layers::Params;
use crate::nets::sd::clip_text::ClipTextConfig;
use crate::nets::sd::ldm_names::LdmUnetNames;
use crate::nets::sd::tokenizer::ClipTokenizer;
use crate::nets::sd::unet_config::UNetConfig;
use crate::nets::sd::vae::VaeConfig;
use anyhow::{anyhow, bail, ensure, Result};
use candle_core::{DType, Device};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a single file keeps the UNet.
const UNET_PREFIX: &str = "model.diffusion_model.";

/// How to read a single file: `--config` and `--prediction`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SingleFileOptions {
    /// A diffusers pipeline folder, or a UNet `config.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
    /// `epsilon` or `v`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<String>,
}

impl SingleFileOptions {
    pub fn is_empty(&self) -> bool {
        self.config.is_none() && self.prediction.is_none()
    }

    fn prediction(&self) -> Result<Option<Prediction>> {
        match self.prediction.as_deref() {
            None => Ok(None),
            Some("epsilon") => Ok(Some(Prediction::Epsilon)),
            Some("v") | Some("v_prediction") => Ok(Some(Prediction::V)),
            Some(other) => bail!("--prediction {other}: expected epsilon or v"),
        }
    }
}

/// One text encoder: where its tensors are, how they are named, its config and tokenizer.
struct TextPart {
    prefix: &'static str,
    layout: TextLayout,
    config: ClipTextConfig,
    tokenizer: TokenizerSource,
}

enum TokenizerSource {
    /// The shipped CLIP vocabulary with this pad token.
    Released(&'static str),
    /// A `tokenizer/` folder of the `--config` pipeline.
    Folder(PathBuf),
}

/// An opened single-file checkpoint with the configurations it is read with.
pub struct SingleFile {
    file: Checkpoint,
    family: Family,
    unet: UNetConfig,
    unet_names: LdmUnetNames,
    vae: VaeConfig,
    text: Vec<TextPart>,
    scheduler: SchedulerConfig,
}

impl SingleFile {
    /// Opens `path`, recognises its family, takes the configurations and checks the UNet's shapes.
    pub fn open(path: &Path, options: &SingleFileOptions) -> Result<Self> {
        let file = Checkpoint::open(path)?;
        let released = detect(&file)?;
        let prediction = options.prediction()?;
        let configs = match &options.config {
            Some(dir) if dir.is_dir() => folder_configs(dir, released, prediction)?,
            Some(unet) => {
                let prediction = resolve_prediction(released, prediction, path)?;
                Configs {
                    unet: UNetConfig::from_file(unet)?,
                    ..released_configs(released, prediction)
                }
            }
            None => released_configs(released, resolve_prediction(released, prediction, path)?),
        };
        let unet_names = LdmUnetNames::new(&configs.unet).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let single = Self {
            file,
            family: configs.family,
            unet: configs.unet,
            unet_names,
            vae: configs.vae,
            text: configs.text,
            scheduler: configs.scheduler,
        };
        single.check_unet_shapes(released, options.config.is_some())?;
        Ok(single)
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn unet_config(&self) -> &UNetConfig {
        &self.unet
    }

    pub fn vae_config(&self) -> &VaeConfig {
        &self.vae
    }

    pub fn scheduler(&self) -> SchedulerConfig {
        self.scheduler.clone()
    }

    /// The UNet's weights in diffusers' names; a tensor no UNet parameter has is an error.
    pub fn unet_params(&self, device: &Device, dtype: DType) -> Result<Params> {
        let mut params = Params::new();
        for name in self.file.names().into_iter().filter(|n| n.starts_with(UNET_PREFIX)) {
            let ldm = &name[UNET_PREFIX.len()..];
            let Some(diffusers) = self.unet_names.to_diffusers(ldm) else {
                bail!("{}: tensor '{name}' is no parameter of the UNet", self.path().display());
            };
            params.insert(diffusers, self.file.load(&name, device, dtype)?);
        }
        Ok(params)
    }

    /// The VAE's weights in diffusers' names and shapes.
    pub fn vae_params(&self, device: &Device, dtype: DType) -> Result<Params> {
        let levels = self.vae.block_out_channels.len();
        let mut params = Params::new();
        for name in self.file.names().into_iter().filter(|n| n.starts_with(VAE_PREFIX)) {
            let Some(diffusers) = diffusers_name(&name[VAE_PREFIX.len()..], levels) else {
                bail!("{}: tensor '{name}' is no parameter of the VAE", self.path().display());
            };
            let t = diffusers_tensor(&diffusers, self.file.load(&name, device, dtype)?)?;
            params.insert(diffusers, t);
        }
        ensure!(
            !params.is_empty(),
            "{}: holds no VAE ('{VAE_PREFIX}…')",
            self.path().display()
        );
        Ok(params)
    }

    /// The number of text encoders (SDXL: 2).
    pub fn text_encoders(&self) -> usize {
        self.text.len()
    }

    /// Text encoder `i`'s configuration.
    pub fn text_encoder_config(&self, i: usize) -> ClipTextConfig {
        self.text[i].config.clone()
    }

    /// Text encoder `i`'s configuration and weights in transformers' names.
    pub fn text_encoder(&self, i: usize, device: &Device, dtype: DType) -> Result<(ClipTextConfig, Params)> {
        let part = &self.text[i];
        let params = text_params(&self.file, part.prefix, part.layout, &part.config, device, dtype)?;
        Ok((part.config.clone(), params))
    }

    /// Text encoder `i`'s tokenizer.
    pub fn tokenizer(&self, i: usize) -> Result<ClipTokenizer> {
        match &self.text[i].tokenizer {
            TokenizerSource::Released(pad) => ClipTokenizer::released(pad),
            TokenizerSource::Folder(dir) => ClipTokenizer::from_dir(dir),
        }
    }

    /// Every UNet tensor of the configuration is in the file with its shape, and no other.
    fn check_unet_shapes(&self, released: ReleasedFamily, configured: bool) -> Result<()> {
        let at = self.path().display();
        let advice = if configured {
            "the --config does not describe this file".to_string()
        } else {
            format!("not a released {} base model; give --config", released.name())
        };
        let want: BTreeMap<String, Vec<usize>> = self.unet.tensor_shapes()?.into_iter().collect();
        for (diffusers, shape) in &want {
            let ldm = self.unet_names.to_ldm(diffusers).unwrap_or_default();
            match self.file.shape(&format!("{UNET_PREFIX}{ldm}")) {
                Some(found) if &found == shape => {}
                Some(found) => bail!(
                    "{at}: tensor '{UNET_PREFIX}{ldm}' is {found:?}, the UNet's {diffusers} is {shape:?}: {advice}"
                ),
                None => bail!("{at}: no tensor '{UNET_PREFIX}{ldm}' (the UNet's {diffusers}): {advice}"),
            }
        }
        Ok(())
    }
}

/// The family named by the text side's tensors.
fn detect(file: &Checkpoint) -> Result<ReleasedFamily> {
    let names = file.names();
    let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
    let at = file.path().display();
    ensure!(
        has(UNET_PREFIX),
        "{at}: no UNet ('{UNET_PREFIX}…'): not a Stable Diffusion checkpoint in the original layout"
    );
    if has("conditioner.embedders.0.transformer.") && has("conditioner.embedders.1.model.") {
        return Ok(ReleasedFamily::Sdxl);
    }
    if has("conditioner.embedders.0.model.") {
        bail!("{at}: an SDXL refiner (one OpenCLIP encoder, no CLIP-L): not a text-to-image base model dcm distills");
    }
    if has("cond_stage_model.model.") {
        return Ok(ReleasedFamily::Sd2);
    }
    if has("cond_stage_model.transformer.") {
        return Ok(ReleasedFamily::Sd1);
    }
    bail!(
        "{at}: no text encoder ('cond_stage_model.…' or 'conditioner.embedders.…'): give a checkpoint that includes it"
    )
}

/// `--prediction`, else what the family implies; SD 2.x files come in both kinds.
fn resolve_prediction(family: ReleasedFamily, given: Option<Prediction>, path: &Path) -> Result<Prediction> {
    given.or(family.default_prediction()).ok_or_else(|| {
        anyhow!(
            "{}: an SD 2.x checkpoint predicts ε (512-base) or v (768-v) and the file does not say which: give --prediction epsilon or --prediction v",
            path.display()
        )
    })
}

struct Configs {
    family: Family,
    unet: UNetConfig,
    vae: VaeConfig,
    text: Vec<TextPart>,
    scheduler: SchedulerConfig,
}

/// Where each family keeps its encoders.
fn text_slots(family: ReleasedFamily) -> Vec<(&'static str, TextLayout)> {
    match family {
        ReleasedFamily::Sd1 => vec![("cond_stage_model.transformer.", TextLayout::Transformers)],
        ReleasedFamily::Sd2 => vec![("cond_stage_model.model.", TextLayout::OpenClip)],
        ReleasedFamily::Sdxl => vec![
            ("conditioner.embedders.0.transformer.", TextLayout::Transformers),
            ("conditioner.embedders.1.model.", TextLayout::OpenClip),
        ],
    }
}

fn pipeline_family(family: ReleasedFamily) -> Family {
    match family {
        ReleasedFamily::Sdxl => Family::Sdxl {
            force_zeros_for_empty_prompt: true,
        },
        _ => Family::Sd,
    }
}

fn released_configs(family: ReleasedFamily, prediction: Prediction) -> Configs {
    let text = text_slots(family)
        .into_iter()
        .zip(family.text_encoders())
        .zip(family.pads())
        .map(|(((prefix, layout), config), pad)| TextPart {
            prefix,
            layout,
            config,
            tokenizer: TokenizerSource::Released(pad),
        })
        .collect();
    Configs {
        family: pipeline_family(family),
        unet: family.unet(prediction),
        vae: family.vae(),
        text,
        scheduler: family.scheduler(prediction),
    }
}

/// Every configuration from a diffusers folder of the same family; `--prediction` overrides
/// its scheduler's.
fn folder_configs(dir: &Path, family: ReleasedFamily, prediction: Option<Prediction>) -> Result<Configs> {
    let folder = Folder::open(dir)?;
    ensure!(
        matches!(folder.family(), Family::Sdxl { .. }) == (family == ReleasedFamily::Sdxl),
        "--config {}: a {} pipeline folder, but the checkpoint holds {}",
        dir.display(),
        if family == ReleasedFamily::Sdxl {
            "SD 1.x/2.x"
        } else {
            "SDXL"
        },
        family.name()
    );
    let mut scheduler = folder.scheduler()?;
    scheduler.prediction = prediction.unwrap_or(scheduler.prediction);
    let names = [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")];
    let text = text_slots(family)
        .into_iter()
        .zip(names)
        .map(|((prefix, layout), (encoder, tokenizer))| {
            Ok(TextPart {
                prefix,
                layout,
                config: ClipTextConfig::from_file(&folder.component(encoder).join("config.json"))?,
                tokenizer: TokenizerSource::Folder(folder.component(tokenizer)),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Configs {
        family: folder.family(),
        unet: folder.unet_config()?,
        vae: folder.vae_config()?,
        text,
        scheduler,
    })
}
