//! diffusers' `AutoencoderKL` (Stable Diffusion's VAE): images in [−1, 1] ↔ unscaled latents.
//!
//! Encoder: `conv_in`, `DownEncoderBlock2D`s (resnets, then a stride-2 convolution with one
//! zero row/column padded bottom-right, all but the last), mid block (resnet, single-head
//! self-attention with GroupNorm and residual, resnet), `silu(conv_norm_out)`, `conv_out` to
//! mean and log-variance, `quant_conv`. Decoder: `post_quant_conv`, `conv_in`, mid block,
//! `UpDecoderBlock2D`s (resnets, nearest 2× + convolution), `silu(conv_norm_out)`, `conv_out`.
//! Built from the UNet's resnet and attention layers, without time embedding and adapters.

use crate::nets::layers::Params;
use crate::nets::lora::{ConvSpec, LoraConv2d};
use crate::nets::sd::attention::{Attention, AttentionSpec};
use crate::nets::sd::config_keys::{check_sample_size, in_range};
use crate::nets::sd::group_norm::GroupNorm;
use crate::nets::sd::resnet::{same_conv, Downsample, NormActConv, ResnetBlock, ResnetSpec, Upsample};
use crate::nets::sd::weights::Weights;
use anyhow::{anyhow, bail, ensure, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::Path;

/// GroupNorm ε everywhere in the VAE (fixed in diffusers' Encoder and Decoder).
const EPS: f64 = 1e-6;

/// diffusers' `AutoencoderKL` configuration (`vae/config.json`), defaults as in diffusers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    /// Ignored (only diffusers' tiling uses it).
    pub sample_size: Option<serde_json::Value>,
    /// Latents for the UNet are `scaling_factor · z` (left to the caller).
    pub scaling_factor: f64,
    /// Must be null (SD 3 / Flux VAEs shift latents; not supported).
    pub shift_factor: Option<f64>,
    /// Must be null (per-channel latent statistics; not supported).
    pub latents_mean: Option<serde_json::Value>,
    pub latents_std: Option<serde_json::Value>,
    /// Ignored: whether pipelines run the VAE in f32 is the caller's choice.
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![DOWN.into()],
            up_block_types: vec![UP.into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: None,
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

const DOWN: &str = "DownEncoderBlock2D";
const UP: &str = "UpDecoderBlock2D";

impl VaeConfig {
    /// Reads `path` (diffusers' `vae/config.json`; keys starting with `_` ignored, unknown keys
    /// rejected); any error names the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::runtime::files::read_regular_text(path)
            .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        Self::from_json(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)?;
        map.retain(|k, _| !k.starts_with('_'));
        let cfg: Self = super::config_keys::from_object(map)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        ensure!(n > 0, "'block_out_channels' is empty");
        ensure!(
            self.down_block_types.len() == n && self.up_block_types.len() == n,
            "'down_block_types' and 'up_block_types' must have one entry per 'block_out_channels' ({n})"
        );
        for (types, want, key) in [
            (&self.down_block_types, DOWN, "down_block_types"),
            (&self.up_block_types, UP, "up_block_types"),
        ] {
            if let Some(t) = types.iter().find(|t| *t != want) {
                bail!("'{key}': block type '{t}' is not supported (only {want})");
            }
        }
        ensure!(
            self.shift_factor.is_none(),
            "'shift_factor' must be null (latent shifting is not supported)"
        );
        ensure!(
            self.latents_mean.is_none() && self.latents_std.is_none(),
            "'latents_mean' and 'latents_std' must be null (not supported)"
        );
        ensure!(
            ["silu", "swish"].contains(&self.act_fn.as_str()),
            "'act_fn' = \"{}\" is not supported (only silu)",
            self.act_fn
        );
        // Latents are multiplied by it in f32: released VAEs use 0.13 to 1.5.
        in_range("scaling_factor", self.scaling_factor, 1e-3, 1e3)?;
        check_sample_size(self.sample_size.as_ref(), 16384)?;
        ensure!(
            self.norm_num_groups > 0 && self.block_out_channels.iter().all(|c| c % self.norm_num_groups == 0),
            "'norm_num_groups' = {}: must divide every 'block_out_channels' entry",
            self.norm_num_groups
        );
        let sizes = [
            self.in_channels,
            self.out_channels,
            self.latent_channels,
            self.layers_per_block,
        ];
        ensure!(
            sizes.iter().chain(&self.block_out_channels).all(|&c| c > 0),
            "channel and layer counts must be positive"
        );
        Ok(())
    }
}

/// `x + to_out(attention(group_norm(x)))` over the spatial positions, one head, biased q/k/v.
struct SpatialAttention {
    norm: GroupNorm,
    attention: Attention,
}

impl SpatialAttention {
    fn load(w: &mut Weights, path: &str, channels: usize, groups: usize) -> Result<Self> {
        let spec = AttentionSpec {
            query_dim: channels,
            context_dim: None,
            heads: 1,
            head_dim: channels,
            qkv_bias: true,
            upcast: false,
        };
        Ok(Self {
            norm: w.group_norm(&format!("{path}.group_norm"), groups, channels, EPS)?,
            attention: Attention::load(w, path, spec)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, wd) = x.dims4()?;
        let tokens = self.norm.forward(x)?.reshape((b, c, h * wd))?.transpose(1, 2)?;
        let out = self.attention.forward(&tokens, None)?;
        Ok((out.transpose(1, 2)?.reshape((b, c, h, wd))? + x)?)
    }
}

/// resnet → attention (if configured) → resnet, without time embedding.
struct VaeMid {
    first: ResnetBlock,
    attention: Option<SpatialAttention>,
    second: ResnetBlock,
}

impl VaeMid {
    fn load(w: &mut Weights, path: &str, cfg: &VaeConfig) -> Result<Self> {
        let c = *cfg.block_out_channels.last().unwrap_or(&0);
        let spec = resnet_spec(cfg, c, c);
        Ok(Self {
            first: ResnetBlock::load(w, &format!("{path}.resnets.0"), spec)?,
            attention: cfg
                .mid_block_add_attention
                .then(|| SpatialAttention::load(w, &format!("{path}.attentions.0"), c, cfg.norm_num_groups))
                .transpose()?,
            second: ResnetBlock::load(w, &format!("{path}.resnets.1"), spec)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.first.forward(x, None)?;
        if let Some(attn) = &self.attention {
            x = attn.forward(&x)?;
        }
        self.second.forward(&x, None)
    }
}

fn resnet_spec(cfg: &VaeConfig, inp: usize, out: usize) -> ResnetSpec {
    ResnetSpec {
        inp,
        out,
        temb: None,
        groups: cfg.norm_num_groups,
        eps: EPS,
        output_scale: 1.0,
    }
}

/// Resnets, then a resampling convolution (down: stride 2, up: nearest 2×) if any.
struct Stage<R> {
    resnets: Vec<ResnetBlock>,
    resample: Option<R>,
}

impl<R> Stage<R> {
    fn forward(&self, x: &Tensor, resample: impl Fn(&R, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for r in &self.resnets {
            x = r.forward(&x, None)?;
        }
        match &self.resample {
            Some(s) => resample(s, &x),
            None => Ok(x),
        }
    }
}

fn load_resnets(
    w: &mut Weights,
    path: &str,
    cfg: &VaeConfig,
    inp: usize,
    out: usize,
    n: usize,
) -> Result<Vec<ResnetBlock>> {
    (0..n)
        .map(|j| {
            let spec = resnet_spec(cfg, if j == 0 { inp } else { out }, out);
            ResnetBlock::load(w, &format!("{path}.resnets.{j}"), spec)
        })
        .collect()
}

/// An optional 1×1 convolution `c → c` (`quant_conv`, `post_quant_conv`).
fn pointwise(w: &mut Weights, path: &str, c: usize, present: bool) -> Result<Option<LoraConv2d>> {
    present.then(|| w.conv(path, same_conv(c, c, 1))).transpose()
}

fn apply(conv: &Option<LoraConv2d>, x: Tensor) -> Result<Tensor> {
    match conv {
        Some(c) => c.forward(&x),
        None => Ok(x),
    }
}

/// diffusers' `AutoencoderKL`, frozen (no adapters).
pub struct AutoencoderKl {
    cfg: VaeConfig,
    enc_in: LoraConv2d,
    enc_stages: Vec<Stage<Downsample>>,
    enc_mid: VaeMid,
    enc_out: NormActConv,
    quant_conv: Option<LoraConv2d>,
    post_quant_conv: Option<LoraConv2d>,
    dec_in: LoraConv2d,
    dec_mid: VaeMid,
    dec_stages: Vec<Stage<Upsample>>,
    dec_out: NormActConv,
}

impl AutoencoderKl {
    /// Builds the VAE from diffusers' tensors (one float dtype; the VAE computes in it). The
    /// deprecated attention names (`query`, `key`, `value`, `proj_attn`) of older checkpoints
    /// are read as `to_q`, `to_k`, `to_v`, `to_out.0`. A missing, misshapen or unused tensor is
    /// an error naming it.
    pub fn new(cfg: VaeConfig, params: &Params) -> Result<Self> {
        cfg.validate().map_err(|e| anyhow!("VAE config: {e}"))?;
        let params = renamed_deprecated_attention(params);
        let mut w = Weights::new(&params, None, "VAE")?;
        let ch = &cfg.block_out_channels;
        let (n, c0, c_last, l) = (ch.len(), ch[0], ch[ch.len() - 1], cfg.latent_channels);
        let gn = (cfg.norm_num_groups, EPS);
        let enc_stages = (0..n)
            .map(|i| {
                let path = format!("encoder.down_blocks.{i}");
                let inp = if i == 0 { c0 } else { ch[i - 1] };
                Ok(Stage {
                    resnets: load_resnets(&mut w, &path, &cfg, inp, ch[i], cfg.layers_per_block)?,
                    resample: (i + 1 < n)
                        .then(|| Downsample::load(&mut w, &format!("{path}.downsamplers.0"), ch[i], 0))
                        .transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        let dec_stages = (0..n)
            .map(|i| {
                let path = format!("decoder.up_blocks.{i}");
                // The previous stage's output (the mid block's for the first).
                let (inp, out) = (ch[n - i.max(1)], ch[n - 1 - i]);
                Ok(Stage {
                    resnets: load_resnets(&mut w, &path, &cfg, inp, out, cfg.layers_per_block + 1)?,
                    resample: (i + 1 < n)
                        .then(|| Upsample::load(&mut w, &format!("{path}.upsamplers.0"), out))
                        .transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        let vae = Self {
            enc_in: w.conv("encoder.conv_in", same_conv(c0, cfg.in_channels, 3))?,
            enc_stages,
            enc_mid: VaeMid::load(&mut w, "encoder.mid_block", &cfg)?,
            enc_out: NormActConv::load(
                &mut w,
                "encoder.conv_norm_out",
                "encoder.conv_out",
                gn,
                same_conv(2 * l, c_last, 3),
            )?,
            quant_conv: pointwise(&mut w, "quant_conv", 2 * l, cfg.use_quant_conv)?,
            post_quant_conv: pointwise(&mut w, "post_quant_conv", l, cfg.use_post_quant_conv)?,
            dec_in: w.conv("decoder.conv_in", same_conv(c_last, l, 3))?,
            dec_mid: VaeMid::load(&mut w, "decoder.mid_block", &cfg)?,
            dec_stages,
            dec_out: NormActConv::load(
                &mut w,
                "decoder.conv_norm_out",
                "decoder.conv_out",
                gn,
                ConvSpec {
                    out: cfg.out_channels,
                    inp: c0,
                    k: 3,
                    stride: 1,
                    padding: 1,
                },
            )?,
            cfg,
        };
        w.finish("VAE")?;
        Ok(vae)
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// `scaling_factor`: the UNet's latents are `scaling_factor · z`.
    pub fn scaling_factor(&self) -> f64 {
        self.cfg.scaling_factor
    }

    /// The latent distribution of images `x` `[B, in, H, W]` in [−1, 1], before scaling:
    /// `(mean, std)`, `std = exp(½ clamp(logvar, −30, 20))` (diffusers' `latent_dist`), in x's dtype.
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        ensure!(
            x.rank() == 4 && x.dim(1)? == self.cfg.in_channels,
            "VAE: images {:?} must be [B, {}, H, W]",
            x.dims(),
            self.cfg.in_channels
        );
        let w = self.enc_in.weight();
        let mut h = self.enc_in.forward(&x.to_device(w.device())?.to_dtype(w.dtype())?)?;
        for stage in &self.enc_stages {
            h = stage.forward(&h, |d, t| d.forward(t))?;
        }
        let h = apply(&self.quant_conv, self.enc_out.forward(&self.enc_mid.forward(&h)?)?)?;
        let l = self.cfg.latent_channels;
        let mean = h.narrow(1, 0, l)?;
        let std = (h.narrow(1, l, l)?.clamp(-30f32, 20f32)? * 0.5)?.exp()?;
        let back = |t: Tensor| -> Result<Tensor> { Ok(t.to_device(x.device())?.to_dtype(x.dtype())?) };
        Ok((back(mean)?, back(std)?))
    }

    /// Images (roughly in [−1, 1]) `[B, out, H, W]` from unscaled latents `z` `[B, latent, h, w]`
    /// (diffusers' `vae.decode(z).sample`; divide UNet latents by `scaling_factor` first), in z's dtype.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        ensure!(
            z.rank() == 4 && z.dim(1)? == self.cfg.latent_channels,
            "VAE: latents {:?} must be [B, {}, h, w]",
            z.dims(),
            self.cfg.latent_channels
        );
        let w = self.dec_in.weight();
        let h = apply(&self.post_quant_conv, z.to_device(w.device())?.to_dtype(w.dtype())?)?;
        let mut h = self.dec_mid.forward(&self.dec_in.forward(&h)?)?;
        for stage in &self.dec_stages {
            h = stage.forward(&h, |u, t| u.forward(t))?;
        }
        Ok(self.dec_out.forward(&h)?.to_device(z.device())?.to_dtype(z.dtype())?)
    }
}

/// `params` with the deprecated attention names of older diffusers VAE checkpoints
/// (`…attentions.0.{query,key,value,proj_attn}.{weight,bias}`) renamed to the current ones.
fn renamed_deprecated_attention(params: &Params) -> Cow<'_, Params> {
    const OLD_NEW: [(&str, &str); 4] = [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ];
    let rename = |k: &str| -> Option<String> {
        let (head, tail) = k.split_once(".attentions.")?;
        let (old, new) = OLD_NEW.iter().find(|(old, _)| tail.contains(old))?;
        Some(format!("{head}.attentions.{}", tail.replacen(old, new, 1)))
    };
    if !params.keys().any(|k| rename(k).is_some()) {
        return Cow::Borrowed(params);
    }
    let renamed = params
        .iter()
        .map(|(k, t)| (rename(k).unwrap_or_else(|| k.clone()), t.clone()));
    Cow::Owned(renamed.collect())
}
