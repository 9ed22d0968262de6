//! The VAE of a single-file checkpoint (`first_stage_model.…`, the original ldm layout) in
//! diffusers' `AutoencoderKL` names (docs/SD_FORMATS.md, "Single-file checkpoints"): the
//! decoder's levels are numbered from the bottom in ldm and from the top in diffusers, and the
//! mid-block attention's projections are 1×1 convolutions in ldm and linear layers in diffusers.

use anyhow::Result;
use candle_core::Tensor;

/// Where a single file keeps the VAE.
pub const VAE_PREFIX: &str = "first_stage_model.";

/// The diffusers name of the ldm VAE parameter `ldm` (without [`VAE_PREFIX`]) of a VAE with
/// `levels` resolution levels; `None` for a name no `AutoencoderKL` parameter has.
pub fn diffusers_name(ldm: &str, levels: usize) -> Option<String> {
    let (side, rest) = ldm.split_once('.')?;
    if !["encoder", "decoder"].contains(&side) {
        return ["quant_conv.", "post_quant_conv."]
            .iter()
            .any(|p| ldm.starts_with(p))
            .then(|| ldm.to_string());
    }
    let rest = match rest.split_once('.')? {
        ("conv_in" | "conv_out", _) => rest.to_string(),
        ("norm_out", param) => format!("conv_norm_out.{param}"),
        ("mid", inner) => mid(inner)?,
        ("down", inner) if side == "encoder" => level(inner, "down_blocks", "downsample", "downsamplers", Some)?,
        ("up", inner) if side == "decoder" => level(inner, "up_blocks", "upsample", "upsamplers", |i| {
            (i < levels).then(|| levels - 1 - i)
        })?,
        _ => return None,
    };
    Some(format!("{side}.{rest}"))
}

/// `block_1.…`, `block_2.…`, `attn_1.{norm,q,k,v,proj_out}.…` of a mid block.
fn mid(inner: &str) -> Option<String> {
    let (part, rest) = inner.split_once('.')?;
    match part {
        "block_1" => Some(format!("mid_block.resnets.0.{}", resnet(rest)?)),
        "block_2" => Some(format!("mid_block.resnets.1.{}", resnet(rest)?)),
        "attn_1" => {
            let (layer, param) = rest.split_once('.')?;
            let layer = match layer {
                "norm" => "group_norm",
                "q" => "to_q",
                "k" => "to_k",
                "v" => "to_v",
                "proj_out" => "to_out.0",
                _ => return None,
            };
            Some(format!("mid_block.attentions.0.{layer}.{param}"))
        }
        _ => None,
    }
}

/// `I.block.J.…` or `I.{sample}.conv.…` of level `I` (renumbered by `index`).
fn level(
    inner: &str,
    blocks: &str,
    sample: &str,
    samplers: &str,
    index: impl Fn(usize) -> Option<usize>,
) -> Option<String> {
    let (i, rest) = inner.split_once('.')?;
    let i = index(i.parse().ok()?)?;
    let (part, rest) = rest.split_once('.')?;
    if part == "block" {
        let (j, rest) = rest.split_once('.')?;
        let j: usize = j.parse().ok()?;
        return Some(format!("{blocks}.{i}.resnets.{j}.{}", resnet(rest)?));
    }
    let param = rest.strip_prefix("conv.")?;
    (part == sample).then(|| format!("{blocks}.{i}.{samplers}.0.conv.{param}"))
}

/// A resnet's parameter: the same names but the 1×1 shortcut.
fn resnet(rest: &str) -> Option<String> {
    let (layer, param) = rest.split_once('.')?;
    let layer = match layer {
        "norm1" | "conv1" | "norm2" | "conv2" => layer,
        "nin_shortcut" => "conv_shortcut",
        _ => return None,
    };
    Some(format!("{layer}.{param}"))
}

/// The tensor in diffusers' shape: the attention projections' `[C, C, 1, 1]` kernels as `[C, C]`.
pub fn diffusers_tensor(name: &str, t: Tensor) -> Result<Tensor> {
    let projection = name.contains(".attentions.0.to_") && name.ends_with(".weight");
    if projection && t.rank() == 4 {
        let (out, inp) = (t.dim(0)?, t.dim(1)?);
        return Ok(t.reshape((out, inp))?);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names as diffusers' single-file reader maps them (its `convert_ldm_vae_checkpoint`).
    #[test]
    fn names_follow_diffusers_reader() {
        let cases = [
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.down.0.downsample.conv.bias",
                "encoder.down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "decoder.up.3.block.2.conv1.weight",
                "decoder.up_blocks.0.resnets.2.conv1.weight",
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
            ),
            (
                "decoder.mid.attn_1.proj_out.weight",
                "decoder.mid_block.attentions.0.to_out.0.weight",
            ),
            (
                "encoder.mid.block_2.norm2.bias",
                "encoder.mid_block.resnets.1.norm2.bias",
            ),
            ("encoder.norm_out.weight", "encoder.conv_norm_out.weight"),
            ("post_quant_conv.bias", "post_quant_conv.bias"),
            ("decoder.conv_in.weight", "decoder.conv_in.weight"),
        ];
        for (ldm, want) in cases {
            assert_eq!(diffusers_name(ldm, 4).as_deref(), Some(want), "{ldm}");
        }
        for junk in [
            "decoder.up.4.block.0.conv1.weight",
            "encoder.up.0.block.0.conv1.weight",
            "encoder.mid.attn_1.x.weight",
            "model_ema.decay",
        ] {
            assert_eq!(diffusers_name(junk, 4), None, "{junk}");
        }
    }
}
