//! CLIP text encoders (Radford et al. 2021) as transformers' `CLIPTextModel` and
//! `CLIPTextModelWithProjection`, the frozen text side of Stable Diffusion teachers.
//!
//! Pre-LN transformer with causal self-attention:
//! `h₀ = tok[ids] + pos[0..L]`, `h ← h + attn(LN₁ h)`, `h ← h + fc₂ act(fc₁ LN₂ h)` per layer,
//! `last = LN_final(h)`; `pooled` = `last` at the eos position, `text_embeds = pooled Wₚᵀ`.
//! The encoder computes in its weights' dtype; softmax, LayerNorm and the activation run in
//! f32 and round back once (as torch does for half precision), so f16/bf16 loads work.
//! `Norm`, `EncoderLayer` and `Weights` are shared (`pub(super)`) with the vision tower
//! (`clip_vision.rs`), which runs the same layers without a mask.
//!
//! Files: `config.json` and safetensors keys with or without the `text_model.` prefix
//! (transformers 5 writes `CLIPTextModel` without it, `CLIPTextModelWithProjection` and
//! transformers 4 with it); `text_projection.weight` is never prefixed. Every tensor must be
//! used: an unknown or missing tensor is an error naming it.

use crate::nets::layers::{param, Params};
use crate::nets::sd::config_keys::in_range;
use anyhow::{anyhow, bail, ensure, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::Linear;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;

/// The MLP activation (`hidden_act`): the only two CLIP text encoders use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x·σ(1.702x)` (OpenAI CLIP, SD 1.x).
    QuickGelu,
    /// Exact `x·Φ(x)` with erf (OpenCLIP, SD 2.x, SDXL's second encoder).
    Gelu,
}

/// The fields of a `CLIPTextConfig` the encoder uses (others, like `_name_or_path`, are ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct ClipTextConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    /// Pooling position: the first `eos_token_id` in a row, or the row's largest id for the
    /// legacy value 2 (configs written before transformers PR #24773, e.g. SD 1.5's).
    pub eos_token_id: u32,
    /// Width of `text_projection` (required when the weights have one).
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

impl ClipTextConfig {
    /// Reads a component's `config.json`; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            crate::runtime::files::read_regular_text(path).map_err(|e| anyhow!("reading {}: {e}", path.display()))?;
        let parse = || -> Result<Self> { super::config_keys::from_object(serde_json::from_str(&text)?) };
        let cfg = parse().map_err(|e| anyhow!("{}: {e}", path.display()))?;
        cfg.validate().map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("vocab_size", self.vocab_size),
        ];
        for (name, v) in sizes {
            ensure!(v >= 1, "{name} must be at least 1");
        }
        ensure!(
            self.hidden_size.is_multiple_of(self.num_attention_heads),
            "hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        in_range("layer_norm_eps", self.layer_norm_eps, 1e-12, 1.0)
    }

    /// The model's parameter count: token and position embeddings, per layer four attention
    /// projections, two LayerNorms and the MLP's two linears (all with biases), the final
    /// LayerNorm, and with `projection` (CLIPTextModelWithProjection) `text_projection`, no bias.
    pub fn parameters(&self, projection: bool) -> usize {
        let (d, ff) = (self.hidden_size, self.intermediate_size);
        let embeddings = (self.vocab_size + self.max_position_embeddings) * d;
        let layer = 4 * (d * d + d) + 2 * (2 * d) + (d * ff + ff) + (ff * d + d);
        let projection = match projection {
            true => d * self.projection_dim.unwrap_or(d),
            false => 0,
        };
        embeddings + self.num_hidden_layers * layer + 2 * d + projection
    }

    fn layer_dims(&self) -> LayerDims {
        LayerDims {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            eps: self.layer_norm_eps,
            act: self.hidden_act,
        }
    }
}

/// Everything one forward pass gives (transformers' names).
#[derive(Clone, Debug)]
pub struct ClipTextOutput {
    /// `[B, L, D]` after the final LayerNorm.
    pub last_hidden_state: Tensor,
    /// The embedding output and each layer's output (no final LN), `num_hidden_layers + 1`
    /// tensors `[B, L, D]`, as `output_hidden_states=True`.
    pub hidden_states: Vec<Tensor>,
    /// `[B, D]`: `last_hidden_state` at each row's eos position (`pooler_output`).
    pub pooled: Tensor,
    /// `[B, P]`: `pooled` through `text_projection` (WithProjection only).
    pub text_embeds: Option<Tensor>,
}

impl ClipTextOutput {
    /// `hidden_states[-2]`: the penultimate layer's output, no final LN (SDXL's conditioning).
    pub fn penultimate(&self) -> &Tensor {
        &self.hidden_states[self.hidden_states.len() - 2]
    }
}

/// LayerNorm over the last dim, computed in f32: `(x − μ)/√(σ² + ε)·w + b` (two-pass variance).
pub(super) struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    pub(super) fn load(w: &mut Weights, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.take(&format!("{name}.weight"), &[dim])?.to_dtype(DType::F32)?,
            bias: w.take(&format!("{name}.bias"), &[dim])?.to_dtype(DType::F32)?,
            eps,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let centered = x32.broadcast_sub(&x32.mean_keepdim(D::Minus1)?)?;
        let std = (centered.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?;
        let y = centered
            .broadcast_div(&std)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?;
        Ok(y.to_dtype(x.dtype())?)
    }
}

/// Multi-head causal self-attention: `softmax(q kᵀ/√d_h + M) v`, M = large negative above the diagonal.
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &mut Weights, name: &str, dims: &LayerDims) -> Result<Self> {
        let d = dims.hidden;
        Ok(Self {
            q: w.linear(&format!("{name}.q_proj"), d, d)?,
            k: w.linear(&format!("{name}.k_proj"), d, d)?,
            v: w.linear(&format!("{name}.v_proj"), d, d)?,
            out: w.linear(&format!("{name}.out_proj"), d, d)?,
            heads: dims.heads,
            head_dim: dims.hidden / dims.heads,
        })
    }

    /// `x` `[B, L, D]`, `mask` `[L, L]` f32 (added to the scores).
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (
            split(self.q.forward(x)?)?,
            split(self.k.forward(x)?)?,
            split(self.v.forward(x)?)?,
        );
        let scale = (self.head_dim as f64).powf(-0.5);
        let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(x.dtype())?;
        let heads = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        Ok(self.out.forward(&heads)?)
    }
}

/// The sizes of one encoder layer (the text and vision towers share the layer).
pub(super) struct LayerDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub eps: f64,
    pub act: Activation,
}

/// One pre-LN encoder layer (CLIP's text and vision towers; the text tower passes a causal mask).
pub(super) struct EncoderLayer {
    norm1: Norm,
    attn: Attention,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    pub(super) fn load(w: &mut Weights, name: &str, dims: &LayerDims) -> Result<Self> {
        let (d, m, eps) = (dims.hidden, dims.intermediate, dims.eps);
        Ok(Self {
            norm1: Norm::load(w, &format!("{name}.layer_norm1"), d, eps)?,
            attn: Attention::load(w, &format!("{name}.self_attn"), dims)?,
            norm2: Norm::load(w, &format!("{name}.layer_norm2"), d, eps)?,
            fc1: w.linear(&format!("{name}.mlp.fc1"), m, d)?,
            fc2: w.linear(&format!("{name}.mlp.fc2"), d, m)?,
            act: dims.act,
        })
    }

    /// `x` `[B, L, D]`, `mask` `[L, L]` f32 added to the attention scores.
    pub(super) fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?, mask)?)?;
        let hidden = activate(&self.fc1.forward(&self.norm2.forward(&x)?)?, self.act)?;
        Ok((&x + self.fc2.forward(&hidden)?)?)
    }
}

/// The activation in f32, rounded back to `x`'s dtype once.
fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    let x32 = x.to_dtype(DType::F32)?;
    let y = match act {
        Activation::QuickGelu => (&x32 * candle_nn::ops::sigmoid(&(&x32 * 1.702)?)?)?,
        Activation::Gelu => x32.gelu_erf()?,
    };
    Ok(y.to_dtype(x.dtype())?)
}

/// `[L, L]` f32: 0 on and below the diagonal, f32::MIN above (torch's `finfo.min`, finite).
fn causal_mask(l: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..l * l).map(|i| if i % l > i / l { f32::MIN } else { 0.0 }).collect();
    Ok(Tensor::from_vec(mask, (l, l), device)?)
}

/// CLIP text encoder, with `text_projection` when its weights have one.
pub struct ClipTextModel {
    cfg: ClipTextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_norm: Norm,
    projection: Option<Tensor>,
}

impl ClipTextModel {
    /// Builds the encoder from its tensors (with or without the `text_model.` prefix), in their
    /// dtype and on their device. Every tensor must be used and have the expected shape.
    pub fn new(cfg: &ClipTextConfig, params: &Params) -> Result<Self> {
        cfg.validate()?;
        let mut w = Weights::new(params);
        let d = cfg.hidden_size;
        let token_embedding = w.take("embeddings.token_embedding.weight", &[cfg.vocab_size, d])?;
        let position_embedding = w.take(
            "embeddings.position_embedding.weight",
            &[cfg.max_position_embeddings, d],
        )?;
        w.skip_position_ids(cfg.max_position_embeddings)?;
        let dims = cfg.layer_dims();
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(&mut w, &format!("encoder.layers.{i}"), &dims))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = Norm::load(&mut w, "final_layer_norm", d, cfg.layer_norm_eps)?;
        let projection = w.projection(cfg)?;
        w.finish()?;
        Ok(Self {
            cfg: cfg.clone(),
            token_embedding,
            position_embedding,
            layers,
            final_norm,
            projection,
        })
    }

    /// Loads a diffusers component folder: `config.json` and `model.safetensors` (else
    /// `model.fp16.safetensors`), float tensors cast to `dtype` when given.
    pub fn from_dir(dir: &Path, device: &Device, dtype: Option<DType>) -> Result<Self> {
        let cfg = ClipTextConfig::from_file(&dir.join("config.json"))?;
        let file = ["model.safetensors", "model.fp16.safetensors"]
            .map(|f| dir.join(f))
            .into_iter()
            .find(|p| p.exists())
            .ok_or_else(|| anyhow!("{}: no model.safetensors or model.fp16.safetensors", dir.display()))?;
        let tensors = candle_core::safetensors::load(&file, device).map_err(|e| anyhow!("{}: {e}", file.display()))?;
        let mut params = Params::new();
        for (name, t) in tensors {
            let t = match dtype {
                Some(dt) if t.dtype().is_float() => t.to_dtype(dt)?,
                _ => t,
            };
            params.insert(name, t);
        }
        Self::new(&cfg, &params).map_err(|e| anyhow!("{}: {e}", file.display()))
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.token_embedding.dtype()
    }

    pub fn device(&self) -> &Device {
        self.token_embedding.device()
    }

    /// Whether `text_embeds` is computed (`CLIPTextModelWithProjection`).
    pub fn has_projection(&self) -> bool {
        self.projection.is_some()
    }

    /// Encodes token ids `[B, L]` (any integer dtype, L ≤ `max_position_embeddings`).
    pub fn forward(&self, ids: &Tensor) -> Result<ClipTextOutput> {
        let (rows, b, l) = self.read_ids(ids)?;
        let d = self.cfg.hidden_size;
        let pool_at = pool_positions(&rows, l, self.cfg.eos_token_id);
        let flat = Tensor::from_vec(rows, b * l, self.device())?;
        let positions = self.position_embedding.narrow(0, 0, l)?;
        let mut h = self
            .token_embedding
            .index_select(&flat, 0)?
            .reshape((b, l, d))?
            .broadcast_add(&positions)?;
        let mask = causal_mask(l, self.device())?;
        let mut hidden_states = vec![h.clone()];
        for layer in &self.layers {
            h = layer.forward(&h, &mask)?;
            hidden_states.push(h.clone());
        }
        let last_hidden_state = self.final_norm.forward(&h)?;
        let rows_at: Vec<u32> = (0..b).map(|r| (r * l) as u32 + pool_at[r]).collect();
        let index = Tensor::from_vec(rows_at, b, self.device())?;
        let pooled = last_hidden_state.reshape((b * l, d))?.index_select(&index, 0)?;
        let text_embeds = match &self.projection {
            Some(p) => Some(pooled.matmul(&p.t()?)?),
            None => None,
        };
        Ok(ClipTextOutput {
            last_hidden_state,
            hidden_states,
            pooled,
            text_embeds,
        })
    }

    /// Ids as u32 rows, checked: 2-D, integer, within the vocabulary and the position table.
    fn read_ids(&self, ids: &Tensor) -> Result<(Vec<u32>, usize, usize)> {
        let (b, l) = ids
            .dims2()
            .map_err(|_| anyhow!("token ids must be [batch, length], got {:?}", ids.dims()))?;
        ensure!(
            !ids.dtype().is_float(),
            "token ids must be integers, got {:?}",
            ids.dtype()
        );
        let max = self.cfg.max_position_embeddings;
        ensure!((1..=max).contains(&l), "token sequence length {l} is outside 1..={max}");
        let vocab = self.cfg.vocab_size as i64;
        let wide: Vec<i64> = ids.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
        if let Some(bad) = wide.iter().find(|&&i| !(0..vocab).contains(&i)) {
            bail!("token id {bad} is outside the vocabulary 0..{vocab}");
        }
        Ok((wide.into_iter().map(|i| i as u32).collect(), b, l))
    }
}

/// Per row: the first position of `eos`, or for the legacy `eos == 2` the first position of
/// the largest id (transformers; a row without eos pools position 0, as `argmax` of zeros).
fn pool_positions(rows: &[u32], l: usize, eos: u32) -> Vec<u32> {
    rows.chunks(l)
        .map(|row| {
            let target = if eos == 2 { *row.iter().max().unwrap_or(&0) } else { eos };
            row.iter().position(|&i| i == target).unwrap_or(0) as u32
        })
        .collect()
}

/// The tensors of one encoder, looked up by unprefixed name; remembers which were used.
pub(super) struct Weights<'a> {
    params: &'a Params,
    prefix: &'static str,
    /// What the tensors must belong to, for the unused-tensor error.
    kind: &'static str,
    dtype: Option<DType>,
    used: BTreeSet<String>,
}

impl<'a> Weights<'a> {
    fn new(params: &'a Params) -> Self {
        let prefixed = params.keys().any(|k| k.starts_with("text_model."));
        Self::with_prefix(params, if prefixed { "text_model." } else { "" }, "a CLIP text encoder")
    }

    /// Names are looked up as `prefix + name`; `kind` names the model in errors.
    pub(super) fn with_prefix(params: &'a Params, prefix: &'static str, kind: &'static str) -> Self {
        Self {
            params,
            prefix,
            kind,
            dtype: None,
            used: BTreeSet::new(),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A float tensor of the given shape, in the same dtype as every other.
    pub(super) fn take_key(&mut self, key: &str, shape: &[usize]) -> Result<Tensor> {
        let t = param(self.params, key, shape)?;
        let dtype = *self.dtype.get_or_insert(t.dtype());
        ensure!(
            t.dtype() == dtype,
            "tensor '{key}' has dtype {:?}, the others {dtype:?}",
            t.dtype()
        );
        self.used.insert(key.to_string());
        Ok(t)
    }

    pub(super) fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.take_key(&self.key(name), shape)
    }

    /// `name.weight` `[out, inp]` and `name.bias` `[out]` (every CLIP text linear has a bias).
    fn linear(&mut self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        let weight = self.take(&format!("{name}.weight"), &[out, inp])?;
        let bias = self.take(&format!("{name}.bias"), &[out])?;
        Ok(Linear::new(weight, Some(bias)))
    }

    /// `embeddings.position_ids`, the `arange` buffer older checkpoints stored: shape-checked,
    /// values ignored (transformers ≥ 4.31 recomputes it and drops the stored one).
    pub(super) fn skip_position_ids(&mut self, positions: usize) -> Result<()> {
        let key = self.key("embeddings.position_ids");
        if let Some(t) = self.params.get(&key) {
            ensure!(
                t.dims() == [1, positions],
                "tensor '{key}' has shape {:?}, expected [1, {positions}]",
                t.dims()
            );
            self.used.insert(key);
        }
        Ok(())
    }

    /// `text_projection.weight` `[projection_dim, hidden]` (never prefixed), if present.
    fn projection(&mut self, cfg: &ClipTextConfig) -> Result<Option<Tensor>> {
        let key = "text_projection.weight";
        if !self.params.contains_key(key) {
            return Ok(None);
        }
        let Some(p) = cfg.projection_dim else {
            bail!("tensor '{key}' is present but the config has no projection_dim");
        };
        Ok(Some(self.take_key(key, &[p, cfg.hidden_size])?))
    }

    /// Every tensor must have been used.
    pub(super) fn finish(self) -> Result<()> {
        let unused: Vec<&String> = self.params.keys().filter(|k| !self.used.contains(*k)).collect();
        match unused.as_slice() {
            [] => Ok(()),
            [one] => bail!("unexpected tensor '{one}' (not part of {})", self.kind),
            [first, rest @ ..] => bail!(
                "unexpected tensor '{first}' and {} more (not part of {})",
                rest.len(),
                self.kind
            ),
        }
    }
}

/// SD 1.x/2.x prompt embeddings `[B, L, D]`: `last_hidden_state` (final LN; diffusers'
/// `encode_prompt` with `clip_skip=None`).
pub fn sd_prompt_embeds(encoder: &ClipTextModel, ids: &Tensor) -> Result<Tensor> {
    Ok(encoder.forward(ids)?.last_hidden_state)
}

/// SDXL prompt embeddings: `cat(penultimate₁, penultimate₂)` on the last dim `[B, L, D₁+D₂]`
/// and the pooled embedding `text_embeds₂` `[B, P]` (diffusers' `StableDiffusionXLPipeline.encode_prompt`).
pub fn sdxl_prompt_embeds(
    enc1: &ClipTextModel,
    enc2: &ClipTextModel,
    ids1: &Tensor,
    ids2: &Tensor,
) -> Result<(Tensor, Tensor)> {
    ensure!(
        enc2.has_projection(),
        "SDXL's second text encoder needs text_projection.weight"
    );
    ensure!(
        enc1.dtype() == enc2.dtype() && enc1.device().same_device(enc2.device()),
        "SDXL's text encoders differ in dtype or device ({:?}, {:?})",
        enc1.dtype(),
        enc2.dtype()
    );
    let (out1, out2) = (enc1.forward(ids1)?, enc2.forward(ids2)?);
    let (h1, h2) = (out1.penultimate(), out2.penultimate());
    ensure!(
        h1.dims()[..2] == h2.dims()[..2],
        "SDXL token ids disagree in shape: {:?} vs {:?}",
        ids1.dims(),
        ids2.dims()
    );
    let tokens = Tensor::cat(&[h1, h2], D::Minus1)?;
    let pooled = out2
        .text_embeds
        .ok_or_else(|| anyhow!("SDXL's second text encoder gave no text_embeds"))?;
    Ok((tokens, pooled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::sd::tokenizer::ClipTokenizer;
    use std::collections::HashMap;
    use std::path::PathBuf;

    const TOL: f32 = 1e-4;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd")
    }

    fn golden(folder: &str) -> HashMap<String, Tensor> {
        candle_core::safetensors::load(fixtures().join(folder).join("golden.safetensors"), &Device::Cpu).unwrap()
    }

    fn prompts(folder: &str) -> Vec<String> {
        let text = std::fs::read_to_string(fixtures().join(folder).join("golden.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        serde_json::from_value(json["settings"]["prompts"].clone()).unwrap()
    }

    fn load(folder: &str, component: &str, dtype: DType) -> (ClipTextConfig, Params) {
        let dir = fixtures().join(folder).join(component);
        let cfg = ClipTextConfig::from_file(&dir.join("config.json")).unwrap();
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let params = tensors
            .into_iter()
            .map(|(k, t)| (k, t.to_dtype(dtype).unwrap()))
            .collect();
        (cfg, params)
    }

    fn encoder(folder: &str, component: &str) -> ClipTextModel {
        let (cfg, params) = load(folder, component, DType::F32);
        ClipTextModel::new(&cfg, &params).unwrap()
    }

    /// Ids from our tokenizer, checked against the golden ids when `golden_ids` names them.
    fn tokenize(folder: &str, tokenizer: &str, prompts: &[String], golden_ids: Option<&str>) -> Tensor {
        let tok = ClipTokenizer::from_dir(&fixtures().join(folder).join(tokenizer)).unwrap();
        let ids = tok.encode_batch(prompts).unwrap();
        if let Some(name) = golden_ids {
            let want = golden(folder)[name].to_dtype(DType::U32).unwrap();
            assert_eq!(
                ids.to_vec2::<u32>().unwrap(),
                want.to_vec2::<u32>().unwrap(),
                "{folder}: {name}"
            );
        }
        ids
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let a = a.to_dtype(DType::F32).unwrap();
        let b = b.to_dtype(DType::F32).unwrap();
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
        let err = max_diff(got, want);
        eprintln!("{what}: max |Δ| = {err:.3e}");
        assert!(err <= tol, "{what}: max |Δ| = {err:e} > {tol:e}");
    }

    fn empty_prompts(n: usize) -> Vec<String> {
        vec![String::new(); n]
    }

    #[test]
    fn sd1_sd2_prompt_embeds_match_diffusers() {
        for folder in ["sd1", "sd2"] {
            let g = golden(folder);
            let enc = encoder(folder, "text_encoder");
            let p = prompts(folder);
            let ids = tokenize(folder, "tokenizer", &p, Some("tokenizer.input_ids"));
            let embeds = sd_prompt_embeds(&enc, &ids).unwrap();
            assert_close(
                &format!("{folder} prompt_embeds"),
                &embeds,
                &g["encode_prompt.prompt_embeds"],
                TOL,
            );
            let empty = tokenize(folder, "tokenizer", &empty_prompts(p.len()), None);
            let negative = sd_prompt_embeds(&enc, &empty).unwrap();
            let want = &g["encode_prompt.negative_prompt_embeds"];
            assert_close(&format!("{folder} negative_prompt_embeds"), &negative, want, TOL);
        }
    }

    #[test]
    fn sdxl_prompt_embeds_match_diffusers() {
        let g = golden("sdxl");
        let (enc1, enc2) = (encoder("sdxl", "text_encoder"), encoder("sdxl", "text_encoder_2"));
        assert!(!enc1.has_projection() && enc2.has_projection());
        let p = prompts("sdxl");
        let ids1 = tokenize("sdxl", "tokenizer", &p, Some("tokenizer.input_ids"));
        let ids2 = tokenize("sdxl", "tokenizer_2", &p, Some("tokenizer_2.input_ids"));
        let out1 = enc1.forward(&ids1).unwrap();
        let out2 = enc2.forward(&ids2).unwrap();
        assert_close(
            "sdxl text_encoder.penultimate",
            out1.penultimate(),
            &g["text_encoder.penultimate"],
            TOL,
        );
        assert_close(
            "sdxl text_encoder_2.penultimate",
            out2.penultimate(),
            &g["text_encoder_2.penultimate"],
            TOL,
        );
        let (tokens, pooled) = sdxl_prompt_embeds(&enc1, &enc2, &ids1, &ids2).unwrap();
        assert_close("sdxl prompt_embeds", &tokens, &g["encode_prompt.prompt_embeds"], TOL);
        assert_close(
            "sdxl pooled_prompt_embeds",
            &pooled,
            &g["encode_prompt.pooled_prompt_embeds"],
            TOL,
        );
        let empty = empty_prompts(p.len());
        let (e1, e2) = (
            tokenize("sdxl", "tokenizer", &empty, None),
            tokenize("sdxl", "tokenizer_2", &empty, None),
        );
        let (tokens, pooled) = sdxl_prompt_embeds(&enc1, &enc2, &e1, &e2).unwrap();
        let want = &g["encode_prompt_empty_negative.negative_prompt_embeds"];
        assert_close("sdxl empty negative_prompt_embeds", &tokens, want, TOL);
        let want = &g["encode_prompt_empty_negative.negative_pooled_prompt_embeds"];
        assert_close("sdxl empty negative_pooled_prompt_embeds", &pooled, want, TOL);
    }

    /// hidden_states = embeddings + one per layer, the last before the final LN; pooling at the
    /// first eos equals the legacy argmax pooling (eos is the largest id).
    #[test]
    fn hidden_states_and_pooling() {
        let (mut cfg, params) = load("sd1", "text_encoder", DType::F32);
        let ids = tokenize("sd1", "tokenizer", &prompts("sd1"), None);
        let out = ClipTextModel::new(&cfg, &params).unwrap().forward(&ids).unwrap();
        assert_eq!(out.hidden_states.len(), cfg.num_hidden_layers + 1);
        let last = ClipTextModel::new(&cfg, &params)
            .unwrap()
            .final_norm
            .forward(&out.hidden_states[2])
            .unwrap();
        assert_eq!(max_diff(&last, &out.last_hidden_state), 0.0);
        let rows: Vec<Vec<u32>> = ids.to_vec2().unwrap();
        for (r, row) in rows.iter().enumerate() {
            let eos = row.iter().position(|&i| i == 513).unwrap();
            let want = out.last_hidden_state.get(r).unwrap().get(eos).unwrap();
            assert_eq!(max_diff(&out.pooled.get(r).unwrap(), &want), 0.0);
        }
        cfg.eos_token_id = 2;
        let legacy = ClipTextModel::new(&cfg, &params).unwrap().forward(&ids).unwrap();
        assert_eq!(max_diff(&legacy.pooled, &out.pooled), 0.0);
        assert_eq!(pool_positions(&[5, 7, 7, 1], 4, 2), vec![1]);
        assert_eq!(pool_positions(&[5, 9, 1, 9, 3, 3], 3, 9), vec![1, 0]);
    }

    /// transformers 5 writes CLIPTextModel keys without `text_model.`, WithProjection with it;
    /// both spellings give the same encoder.
    #[test]
    fn key_prefix_is_optional() {
        let ids = tokenize("sdxl", "tokenizer_2", &prompts("sdxl"), None);
        let (cfg, params) = load("sdxl", "text_encoder_2", DType::F32);
        assert!(params.contains_key("text_model.final_layer_norm.weight"));
        let bare: Params = params
            .iter()
            .map(|(k, t)| (k.strip_prefix("text_model.").unwrap_or(k).to_string(), t.clone()))
            .collect();
        let a = ClipTextModel::new(&cfg, &params).unwrap().forward(&ids).unwrap();
        let b = ClipTextModel::new(&cfg, &bare).unwrap().forward(&ids).unwrap();
        assert_eq!(
            max_diff(a.text_embeds.as_ref().unwrap(), b.text_embeds.as_ref().unwrap()),
            0.0
        );
        let (cfg, params) = load("sd1", "text_encoder", DType::F32);
        assert!(params.contains_key("final_layer_norm.weight"));
        let mut prefixed: Params = params
            .iter()
            .map(|(k, t)| (format!("text_model.{k}"), t.clone()))
            .collect();
        prefixed.insert(
            "text_model.embeddings.position_ids".into(),
            Tensor::arange(0i64, 77, &Device::Cpu)
                .unwrap()
                .reshape((1, 77))
                .unwrap(),
        );
        let ids = tokenize("sd1", "tokenizer", &prompts("sd1"), None);
        let a = ClipTextModel::new(&cfg, &params).unwrap().forward(&ids).unwrap();
        let b = ClipTextModel::new(&cfg, &prefixed).unwrap().forward(&ids).unwrap();
        assert_eq!(max_diff(&a.last_hidden_state, &b.last_hidden_state), 0.0);
    }

    /// bf16 and f16 weights compute in their dtype and stay near the f32 result.
    #[test]
    fn half_precision_stays_close() {
        let g = golden("sdxl");
        let ids2 = tokenize("sdxl", "tokenizer_2", &prompts("sdxl"), None);
        let dir = fixtures().join("sdxl/text_encoder_2");
        for (dtype, tol) in [(DType::BF16, 0.1), (DType::F16, 0.02)] {
            let enc = ClipTextModel::from_dir(&dir, &Device::Cpu, Some(dtype)).unwrap();
            let out = enc.forward(&ids2).unwrap();
            assert_eq!(out.last_hidden_state.dtype(), dtype);
            let name = format!("sdxl text_encoder_2 {dtype:?}");
            assert_close(
                &format!("{name} penultimate"),
                out.penultimate(),
                &g["text_encoder_2.penultimate"],
                tol,
            );
            let pooled = out.text_embeds.as_ref().unwrap();
            assert_close(
                &format!("{name} text_embeds"),
                pooled,
                &g["encode_prompt.pooled_prompt_embeds"],
                tol,
            );
        }
        let ids = tokenize("sd1", "tokenizer", &prompts("sd1"), None);
        let (cfg, params) = load("sd1", "text_encoder", DType::BF16);
        let embeds = sd_prompt_embeds(&ClipTextModel::new(&cfg, &params).unwrap(), &ids).unwrap();
        assert_close(
            "sd1 bf16 prompt_embeds",
            &embeds,
            &golden("sd1")["encode_prompt.prompt_embeds"],
            0.1,
        );
    }

    fn error_of(cfg: &ClipTextConfig, params: &Params) -> String {
        let err = format!(
            "{:#}",
            ClipTextModel::new(cfg, params).err().expect("loading must fail")
        );
        assert!(!err.contains('\n'), "one-line error: {err}");
        err
    }

    #[test]
    fn bad_config_and_weights_are_named() {
        let dir = std::env::temp_dir().join(format!("dcm-clip-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = std::fs::read_to_string(fixtures().join("sd1/text_encoder/config.json")).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, text.replace("quick_gelu", "relu6")).unwrap();
        let err = format!("{:#}", ClipTextConfig::from_file(&path).err().unwrap());
        std::fs::write(&path, text.replace("\"layer_norm_eps\"", "\"eps\"")).unwrap();
        let missing = format!("{:#}", ClipTextConfig::from_file(&path).err().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.contains("relu6") && err.contains("config.json") && !err.contains('\n'),
            "{err}"
        );
        assert!(
            missing.contains("layer_norm_eps") && missing.contains("config.json"),
            "{missing}"
        );

        let (cfg, params) = load("sd1", "text_encoder", DType::F32);
        let mut extra = params.clone();
        extra.insert(
            "encoder.layers.0.mlp.fc3.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = error_of(&cfg, &extra);
        assert!(err.contains("'encoder.layers.0.mlp.fc3.weight'"), "{err}");
        let mut shape = params.clone();
        shape.insert(
            "encoder.layers.1.mlp.fc1.bias".into(),
            Tensor::zeros(36, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = error_of(&cfg, &shape);
        assert!(
            err.contains("'encoder.layers.1.mlp.fc1.bias'") && err.contains("[36]"),
            "{err}"
        );
        let mut missing = params.clone();
        missing.remove("final_layer_norm.bias");
        assert!(error_of(&cfg, &missing).contains("'final_layer_norm.bias'"));
        let mut mixed = params.clone();
        let half = mixed["final_layer_norm.bias"].to_dtype(DType::F16).unwrap();
        mixed.insert("final_layer_norm.bias".into(), half);
        assert!(error_of(&cfg, &mixed).contains("'final_layer_norm.bias'"));

        let (mut cfg, params) = load("sdxl", "text_encoder_2", DType::F32);
        cfg.projection_dim = None;
        assert!(error_of(&cfg, &params).contains("projection_dim"));

        let enc = encoder("sd1", "text_encoder");
        let too_big = Tensor::new(&[[512u32, 514, 513]], &Device::Cpu).unwrap();
        let err = format!("{:#}", enc.forward(&too_big).err().unwrap());
        assert!(err.contains("514"), "{err}");
        let too_long = Tensor::zeros((1, 78), DType::U32, &Device::Cpu).unwrap();
        assert!(enc.forward(&too_long).is_err());
    }
}
