//! The text encoders of a single-file checkpoint in transformers' `CLIPTextModel` names
//! (docs/SD_FORMATS.md, "Single-file checkpoints"). OpenAI's CLIP is stored under its own
//! transformers names behind a prefix; OpenCLIP's towers (SD 2.x, SDXL's second encoder) in
//! OpenCLIP's layout: query, key and value fused into one `in_proj`, the projection stored
//! transposed, and SD 2.x's file holding one more block than the pipeline runs (it conditions
//! on the penultimate layer).

use crate::models::sd::checkpoint::Checkpoint;
use crate::nets::layers::Params;
use crate::nets::sd::clip_text::ClipTextConfig;
use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, Tensor};

/// How a text encoder is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextLayout {
    /// transformers' names (`text_model.…`) under the prefix.
    Transformers,
    /// OpenCLIP's names under the prefix.
    OpenClip,
}

/// The encoder under `prefix` of `file`, in transformers' names, on `device` in `dtype`.
pub fn text_params(
    file: &Checkpoint,
    prefix: &str,
    layout: TextLayout,
    cfg: &ClipTextConfig,
    device: &Device,
    dtype: DType,
) -> Result<Params> {
    let mut params = Params::new();
    let names: Vec<String> = file.names().into_iter().filter(|n| n.starts_with(prefix)).collect();
    if names.is_empty() {
        bail!("{}: no text encoder tensors under '{prefix}'", file.path().display());
    }
    for name in names {
        let rest = &name[prefix.len()..];
        let load = || file.load(&name, device, dtype);
        match layout {
            TextLayout::Transformers => transformers_tensor(rest, load, &mut params)?,
            TextLayout::OpenClip => open_clip_tensor(rest, cfg, load, &mut params)
                .map_err(|e| anyhow!("{}: tensor '{name}': {e}", file.path().display()))?,
        }
    }
    Ok(params)
}

/// Kept as it is, bar the position-id buffer (the encoder counts positions itself).
fn transformers_tensor(rest: &str, load: impl Fn() -> Result<Tensor>, params: &mut Params) -> Result<()> {
    if !rest.ends_with("position_ids") {
        params.insert(rest.to_string(), load()?);
    }
    Ok(())
}

/// One OpenCLIP tensor in transformers' names (fused projections split in three).
fn open_clip_tensor(
    rest: &str,
    cfg: &ClipTextConfig,
    load: impl Fn() -> Result<Tensor>,
    params: &mut Params,
) -> Result<()> {
    let direct = match rest {
        "token_embedding.weight" => Some("text_model.embeddings.token_embedding.weight"),
        "positional_embedding" => Some("text_model.embeddings.position_embedding.weight"),
        "ln_final.weight" => Some("text_model.final_layer_norm.weight"),
        "ln_final.bias" => Some("text_model.final_layer_norm.bias"),
        _ => None,
    };
    if let Some(name) = direct {
        params.insert(name.to_string(), load()?);
        return Ok(());
    }
    match rest {
        // OpenCLIP's temperature, and SD 2.x's unused projection.
        "logit_scale" => return Ok(()),
        "text_projection" if cfg.projection_dim.is_none() => return Ok(()),
        "text_projection" => {
            params.insert("text_projection.weight".into(), load()?.t()?.contiguous()?);
            return Ok(());
        }
        _ => {}
    }
    let block = rest
        .strip_prefix("transformer.resblocks.")
        .ok_or_else(|| anyhow!("not an OpenCLIP text-tower tensor"))?;
    let (index, param) = block
        .split_once('.')
        .ok_or_else(|| anyhow!("not an OpenCLIP block tensor"))?;
    let index: usize = index
        .parse()
        .map_err(|_| anyhow!("block index '{index}' is not a number"))?;
    let layers = cfg.num_hidden_layers;
    if index == layers {
        return Ok(()); // the block after the penultimate layer's output, which SD 2.x never runs
    }
    if index > layers {
        bail!("block {index}, but the encoder has {layers} layers (one more is the most a file may hold)");
    }
    block_tensor(&format!("text_model.encoder.layers.{index}"), param, cfg, load, params)
}

/// A block's tensor: `attn.in_proj_*` split into q, k and v; the rest renamed.
fn block_tensor(
    layer: &str,
    param: &str,
    cfg: &ClipTextConfig,
    load: impl Fn() -> Result<Tensor>,
    params: &mut Params,
) -> Result<()> {
    if let Some(kind) = param.strip_prefix("attn.in_proj_") {
        let fused = load()?;
        let width = cfg.hidden_size;
        if fused.dim(0)? != 3 * width {
            bail!("{} rows, expected 3 × {width}", fused.dim(0)?);
        }
        for (i, which) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            let part = fused.narrow(0, i * width, width)?.contiguous()?;
            params.insert(format!("{layer}.self_attn.{which}.{kind}"), part);
        }
        return Ok(());
    }
    let (module, kind) = param.rsplit_once('.').ok_or_else(|| anyhow!("not a parameter name"))?;
    let module = match module {
        "attn.out_proj" => "self_attn.out_proj",
        "ln_1" => "layer_norm1",
        "ln_2" => "layer_norm2",
        "mlp.c_fc" => "mlp.fc1",
        "mlp.c_proj" => "mlp.fc2",
        _ => bail!("not an OpenCLIP block parameter"),
    };
    params.insert(format!("{layer}.{module}.{kind}"), load()?);
    Ok(())
}
