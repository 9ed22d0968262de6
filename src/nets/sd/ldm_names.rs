//! The names of a UNet's parameters and modules in the original latent-diffusion code
//! (CompVis `ldm` / Stability `sgm`, which single-file checkpoints, kohya and A1111 use) next to
//! diffusers' names, computed from a [`UNetConfig`] (docs/SD_FORMATS.md, "ldm module names").
//!
//! Single-file checkpoints prefix these names with [`LDM_UNET_PREFIX`]; the names here are
//! without it. The ldm UNet is one flat list of input blocks, a middle block and one flat list
//! of output blocks, each entry a short sequence of modules:
//! - `input_blocks.0.0` is `conv_in`; then, level by level, one entry per resnet (`.0` the
//!   resnet, `.1` its transformer if the level has attention) and, except on the last level,
//!   one entry for the downsampler (`.0.op` its conv).
//! - `middle_block.0` / `.1` / `.2` are the mid block's resnet, transformer, resnet.
//! - output blocks: one entry per resnet of each up block (`.0` resnet, `.1` transformer);
//!   the last entry of every up block but the last also holds the upsampler, at `.2` after a
//!   transformer and at `.1` without one (so SDXL's first up block's is `output_blocks.2.2`).
//! - inside a resnet: `norm1` `in_layers.0`, `conv1` `in_layers.2`, `time_emb_proj`
//!   `emb_layers.1`, `norm2` `out_layers.0`, `conv2` `out_layers.3`, `conv_shortcut`
//!   `skip_connection`; transformers keep diffusers' inner names.
//! - `time_embedding.linear_1/2` `time_embed.0/2`, SDXL's `add_embedding.linear_1/2`
//!   `label_emb.0.0/0.2`, `conv_norm_out` `out.0`, `conv_out` `out.2`.
//!
//! Levels may have different numbers of resnets: the numbering follows the layout, not a
//! uniform `layers_per_block`. LCM's `time_embedding.cond_proj` has no ldm counterpart (see
//! [`LdmUnetNames::unmapped`]).

use crate::nets::sd::unet_config::UNetConfig;
use anyhow::{anyhow, bail, Result};
use std::collections::BTreeMap;

/// The prefix of the UNet's tensors in a single-file (ldm) checkpoint.
pub const LDM_UNET_PREFIX: &str = "model.diffusion_model.";

/// How the names below a block translate.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Inner {
    /// Unchanged (transformers, samplers' `conv` in up blocks, single layers).
    Same,
    /// A resnet's sublayers are renamed.
    Resnet,
    /// A downsampler's `conv` is ldm's `op`.
    Downsampler,
}

/// One module of the UNet in both namings.
struct Block {
    diffusers: String,
    ldm: String,
    inner: Inner,
}

/// Resnet sublayers: diffusers name, ldm name.
const RESNET: [(&str, &str); 6] = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
];

/// Both namings of every parameter and module of one UNet configuration.
#[derive(Clone, Debug)]
pub struct LdmUnetNames {
    to_ldm: BTreeMap<String, String>,
    to_diffusers: BTreeMap<String, String>,
    /// Every parameter (diffusers, ldm), in diffusers' construction order.
    params: Vec<(String, String)>,
    unmapped: Vec<String>,
}

impl LdmUnetNames {
    /// The names of `cfg`'s UNet; an error if the configuration is invalid.
    pub fn new(cfg: &UNetConfig) -> Result<Self> {
        let blocks = blocks(cfg)?;
        let by_path: BTreeMap<&str, &Block> = blocks.iter().map(|b| (b.diffusers.as_str(), b)).collect();
        let mut names = Self {
            to_ldm: BTreeMap::new(),
            to_diffusers: BTreeMap::new(),
            params: Vec::new(),
            unmapped: Vec::new(),
        };
        for (param, _) in cfg.tensor_shapes()? {
            match owning_block(&param, &by_path) {
                Some(block) => names.add_param(&param, block)?,
                None if param.starts_with("time_embedding.cond_proj.") => names.unmapped.push(param),
                None => bail!("UNet parameter '{param}' has no ldm name"),
            }
        }
        Ok(names)
    }

    /// The ldm name of a diffusers parameter (`….weight` / `….bias`) or module path.
    pub fn to_ldm(&self, diffusers: &str) -> Option<String> {
        self.to_ldm.get(diffusers).cloned()
    }

    /// The diffusers name of an ldm parameter or module path (without [`LDM_UNET_PREFIX`]).
    pub fn to_diffusers(&self, ldm: &str) -> Option<String> {
        self.to_diffusers.get(ldm).cloned()
    }

    /// Every parameter with an ldm name as (diffusers, ldm), in diffusers' construction order.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// The diffusers parameters without an ldm counterpart (LCM's `time_embedding.cond_proj`).
    pub fn unmapped(&self) -> &[String] {
        &self.unmapped
    }

    /// Maps `param` and every module between it and its block.
    fn add_param(&mut self, param: &str, block: &Block) -> Result<()> {
        let ldm = translate(param, block).ok_or_else(|| anyhow!("UNet parameter '{param}' has no ldm name"))?;
        self.params.push((param.to_string(), ldm));
        let mut path = param;
        while path.len() >= block.diffusers.len() {
            let ldm = translate(path, block).ok_or_else(|| anyhow!("UNet module '{path}' has no ldm name"))?;
            self.insert(path, &ldm)?;
            match path.rfind('.') {
                Some(dot) => path = &path[..dot],
                None => break,
            }
        }
        Ok(())
    }

    /// Records one pair; the maps must stay one-to-one.
    fn insert(&mut self, diffusers: &str, ldm: &str) -> Result<()> {
        let clash = |other: &String, mine: &str| other != mine;
        if let Some(other) = self.to_ldm.get(diffusers).filter(|o| clash(o, ldm)) {
            bail!("'{diffusers}' would have two ldm names, '{other}' and '{ldm}'");
        }
        if let Some(other) = self.to_diffusers.get(ldm).filter(|o| clash(o, diffusers)) {
            bail!("ldm name '{ldm}' would stand for both '{other}' and '{diffusers}'");
        }
        self.to_ldm.insert(diffusers.to_string(), ldm.to_string());
        self.to_diffusers.insert(ldm.to_string(), diffusers.to_string());
        Ok(())
    }
}

/// The innermost block whose path is `param` or a dot-boundary prefix of it.
fn owning_block<'a>(param: &str, by_path: &BTreeMap<&str, &'a Block>) -> Option<&'a Block> {
    let mut path = param;
    loop {
        if let Some(b) = by_path.get(path) {
            return Some(b);
        }
        path = &path[..path.rfind('.')?];
    }
}

/// The ldm name of `path`, which is `block.diffusers` or below it.
fn translate(path: &str, block: &Block) -> Option<String> {
    let rest = path.strip_prefix(block.diffusers.as_str())?;
    if rest.is_empty() {
        return Some(block.ldm.clone());
    }
    let rest = rest.strip_prefix('.')?;
    let (first, tail) = rest.split_once('.').map_or((rest, ""), |(f, t)| (f, t));
    let first = match block.inner {
        Inner::Same => first,
        Inner::Resnet => RESNET.iter().find(|(d, _)| *d == first)?.1,
        Inner::Downsampler if first == "conv" => "op",
        Inner::Downsampler => return None,
    };
    let sep = if tail.is_empty() { "" } else { "." };
    Some(format!("{}.{first}{sep}{tail}", block.ldm))
}

/// Every block of `cfg`'s UNet in both namings, numbered as the ldm UNet numbers them.
fn blocks(cfg: &UNetConfig) -> Result<Vec<Block>> {
    let layout = cfg.layout().map_err(|e| anyhow!("UNet config: {e}"))?;
    let block = |d: String, l: String, inner| Block {
        diffusers: d,
        ldm: l,
        inner,
    };
    let same = |d: &str, l: &str| block(d.into(), l.into(), Inner::Same);
    let mut out = vec![
        same("time_embedding.linear_1", "time_embed.0"),
        same("time_embedding.linear_2", "time_embed.2"),
        same("conv_in", "input_blocks.0.0"),
        same("conv_norm_out", "out.0"),
        same("conv_out", "out.2"),
        same("mid_block.attentions.0", "middle_block.1"),
        block("mid_block.resnets.0".into(), "middle_block.0".into(), Inner::Resnet),
        block("mid_block.resnets.1".into(), "middle_block.2".into(), Inner::Resnet),
    ];
    if layout.add_embedding.is_some() {
        out.push(same("add_embedding.linear_1", "label_emb.0.0"));
        out.push(same("add_embedding.linear_2", "label_emb.0.2"));
    }
    let mut k = 1;
    for (i, b) in layout.down.iter().enumerate() {
        for j in 0..b.resnet_in.len() {
            out.push(block(
                format!("down_blocks.{i}.resnets.{j}"),
                format!("input_blocks.{k}.0"),
                Inner::Resnet,
            ));
            if b.cross_attention {
                out.push(same(
                    &format!("down_blocks.{i}.attentions.{j}"),
                    &format!("input_blocks.{k}.1"),
                ));
            }
            k += 1;
        }
        if b.resample {
            let (d, l) = (format!("down_blocks.{i}.downsamplers.0"), format!("input_blocks.{k}.0"));
            out.push(block(d, l, Inner::Downsampler));
            k += 1;
        }
    }
    let mut k = 0;
    for (i, b) in layout.up.iter().enumerate() {
        let count = b.resnet_in.len();
        for j in 0..count {
            out.push(block(
                format!("up_blocks.{i}.resnets.{j}"),
                format!("output_blocks.{k}.0"),
                Inner::Resnet,
            ));
            if b.cross_attention {
                out.push(same(
                    &format!("up_blocks.{i}.attentions.{j}"),
                    &format!("output_blocks.{k}.1"),
                ));
            }
            if b.resample && j + 1 == count {
                let at = 1 + usize::from(b.cross_attention);
                out.push(same(
                    &format!("up_blocks.{i}.upsamplers.0"),
                    &format!("output_blocks.{k}.{at}"),
                ));
            }
            k += 1;
        }
    }
    Ok(out)
}
