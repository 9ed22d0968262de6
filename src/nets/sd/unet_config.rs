//! `unet/config.json` of a diffusers `UNet2DConditionModel`, and the block layout it implies.
//!
//! Keys starting with `_` are bookkeeping and ignored; an unknown key is an error. Every key
//! that changes the architecture is either implemented or must hold diffusers' default value
//! (an error names the key otherwise). Missing keys take diffusers' defaults.

use super::config_keys::{check_sample_size, in_range};
use anyhow::{anyhow, bail, ensure, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A value for every block, or one per down block (up blocks take them reversed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The values of `n` blocks; a list must have exactly `n` entries.
    fn resolve(&self, n: usize, key: &str) -> Result<Vec<T>> {
        match self {
            Self::One(v) => Ok(vec![v.clone(); n]),
            Self::Each(v) if v.len() == n => Ok(v.clone()),
            Self::Each(v) => bail!("'{key}' has {} entries for {n} blocks", v.len()),
        }
    }
}

/// diffusers' `UNet2DConditionModel` configuration, key for key (defaults as in diffusers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNetConfig {
    /// Ignored (the UNet takes any size divisible by 2^(blocks − 1)).
    pub sample_size: Option<serde_json::Value>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub dropout: f64,
    pub act_fn: String,
    pub norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<usize>,
    pub transformer_layers_per_block: PerBlock<usize>,
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    pub encoder_hid_dim: Option<usize>,
    pub encoder_hid_dim_type: Option<String>,
    /// The number of attention heads per block (diffusers' historical misnomer).
    pub attention_head_dim: PerBlock<usize>,
    /// Must be null: diffusers itself rejects it for this model.
    pub num_attention_heads: Option<PerBlock<usize>>,
    pub dual_cross_attention: bool,
    pub use_linear_projection: bool,
    pub class_embed_type: Option<String>,
    pub addition_embed_type: Option<String>,
    pub addition_time_embed_dim: Option<usize>,
    pub num_class_embeds: Option<usize>,
    pub upcast_attention: bool,
    pub resnet_time_scale_shift: String,
    pub resnet_skip_time_act: bool,
    /// Ignored: diffusers passes it only to block types not supported here.
    pub resnet_out_scale_factor: f64,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub time_embedding_act_fn: Option<String>,
    pub timestep_post_act: Option<String>,
    pub time_cond_proj_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub projection_class_embeddings_input_dim: Option<usize>,
    pub attention_type: String,
    pub class_embeddings_concat: bool,
    pub mid_block_only_cross_attention: Option<bool>,
    pub cross_attention_norm: Option<String>,
    /// Ignored: used only by `addition_embed_type="text"`, which is not supported.
    pub addition_embed_type_num_heads: usize,
}

impl Default for UNetConfig {
    /// diffusers' defaults (`UNet2DConditionModel.__init__`).
    fn default() -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: strings(&[CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, DOWN]),
            mid_block_type: Some(MID.to_string()),
            up_block_types: strings(&[UP, CROSS_UP, CROSS_UP, CROSS_UP]),
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            dropout: 0.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            num_class_embeds: None,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            projection_class_embeddings_input_dim: None,
            attention_type: "default".into(),
            class_embeddings_concat: false,
            mid_block_only_cross_attention: None,
            cross_attention_norm: None,
            addition_embed_type_num_heads: 64,
        }
    }
}

/// Flags that diffusers only tests for truth, so `null` (SDXL's `upcast_attention`) is `false`.
const NULL_IS_FALSE: [&str; 6] = [
    "upcast_attention",
    "use_linear_projection",
    "dual_cross_attention",
    "center_input_sample",
    "resnet_skip_time_act",
    "class_embeddings_concat",
];

const DOWN: &str = "DownBlock2D";
const CROSS_DOWN: &str = "CrossAttnDownBlock2D";
const UP: &str = "UpBlock2D";
const CROSS_UP: &str = "CrossAttnUpBlock2D";
const MID: &str = "UNetMidBlock2DCrossAttn";

/// Shape of one down or up block.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSpec {
    /// Cross-attention block (`CrossAttn*Block2D`): a transformer after each resnet.
    pub cross_attention: bool,
    /// Input channels of each resnet (up blocks: with the skip connection concatenated).
    pub resnet_in: Vec<usize>,
    pub out: usize,
    pub heads: usize,
    pub transformer_layers: usize,
    /// A down block halves the size at its end, an up block doubles it.
    pub resample: bool,
}

/// The mid block `UNetMidBlock2DCrossAttn`: resnet, transformer, resnet.
#[derive(Clone, Debug, PartialEq)]
pub struct MidSpec {
    pub channels: usize,
    pub heads: usize,
    pub transformer_layers: usize,
    pub output_scale: f64,
}

/// SDXL's `text_time` added conditioning: each time id embedded with `time_dim` sinusoids,
/// `cat([text_embeds, ids])` (`input_dim` wide) through `add_embedding`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AddEmbedSpec {
    pub time_dim: usize,
    pub input_dim: usize,
}

/// Everything the UNet's construction needs, resolved from the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub down: Vec<BlockSpec>,
    pub mid: MidSpec,
    pub up: Vec<BlockSpec>,
    pub groups: usize,
    pub context_dim: usize,
    /// Width of the sinusoidal timestep embedding (`block_out_channels[0]`).
    pub time_input_dim: usize,
    /// Width of the time embedding every resnet receives.
    pub temb_dim: usize,
    pub add_embedding: Option<AddEmbedSpec>,
}

impl UNetConfig {
    /// Reads `path` (diffusers' `unet/config.json`); any error names the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::runtime::files::read_regular_text(path)
            .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        Self::from_json(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    /// Parses the JSON text of a `unet/config.json` and checks it (see [`UNetConfig::layout`]).
    pub fn from_json(text: &str) -> Result<Self> {
        let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)?;
        let ignored =
            |k: &str, v: &serde_json::Value| k.starts_with('_') || (v.is_null() && NULL_IS_FALSE.contains(&k));
        map.retain(|k, v| !ignored(k, v));
        let cfg: Self = super::config_keys::from_object(map)?;
        cfg.layout()?;
        Ok(cfg)
    }

    /// Checks every key against what is implemented and resolves the per-block values
    /// (`attention_head_dim` = number of heads; up blocks take the lists reversed).
    pub fn layout(&self) -> Result<Layout> {
        self.check_unsupported()?;
        self.check_numbers()?;
        let n = self.block_out_channels.len();
        ensure!(n > 0, "'block_out_channels' is empty");
        ensure!(
            self.down_block_types.len() == n && self.up_block_types.len() == n,
            "'down_block_types' and 'up_block_types' must have one entry per 'block_out_channels' ({n})"
        );
        ensure!(
            self.block_out_channels.iter().all(|&c| c > 0) && self.in_channels > 0 && self.out_channels > 0,
            "channel counts must be positive"
        );
        let groups = self
            .norm_num_groups
            .ok_or_else(|| anyhow!("'norm_num_groups' null is not supported"))?;
        let heads = self.attention_head_dim.resolve(n, "attention_head_dim")?;
        let layers = self.layers_per_block.resolve(n, "layers_per_block")?;
        let tlayers = self
            .transformer_layers_per_block
            .resolve(n, "transformer_layers_per_block")?;
        let context_dim = self.context_dim(n)?;
        let down = self.down_blocks(&layers, &heads, &tlayers)?;
        let up = self.up_blocks(&layers, &heads, &tlayers)?;
        check_skips(&self.block_out_channels, &down, &up)?;
        let c_last = self.block_out_channels[n - 1];
        let mid = MidSpec {
            channels: c_last,
            heads: heads[n - 1],
            transformer_layers: tlayers[n - 1],
            output_scale: self.mid_block_scale_factor,
        };
        check_heads(c_last, mid.heads, "mid block")?;
        ensure!(
            self.mid_block_scale_factor.is_finite() && self.mid_block_scale_factor > 0.0,
            "'mid_block_scale_factor' must be positive"
        );
        let c0 = self.block_out_channels[0];
        Ok(Layout {
            down,
            mid,
            up,
            groups,
            context_dim,
            time_input_dim: c0,
            temb_dim: self.time_embedding_dim.unwrap_or(4 * c0),
            add_embedding: self.add_embedding()?,
        })
    }

    /// Numbers in the ranges any UNet can use, so none reaches the network as a zero size,
    /// an overflow or a division by zero (the UNet's sample size is in latent pixels).
    fn check_numbers(&self) -> Result<()> {
        check_sample_size(self.sample_size.as_ref(), 512)?;
        in_range("norm_eps", self.norm_eps, 1e-12, 1.0)?;
        in_range("freq_shift", self.freq_shift, -1e3, 1e3)?;
        in_range("mid_block_scale_factor", self.mid_block_scale_factor, 1e-6, 1e6)?;
        if let Some(groups) = self.norm_num_groups {
            ensure!(
                groups > 0 && self.block_out_channels.iter().all(|c| c % groups == 0),
                "'norm_num_groups' = {groups}: must divide every 'block_out_channels' entry"
            );
        }
        Ok(())
    }

    /// Keys whose non-default values select architectures not implemented here.
    fn check_unsupported(&self) -> Result<()> {
        let null = |v: bool, key: &str| -> Result<()> {
            ensure!(v, "'{key}' must be null (other values are not supported)");
            Ok(())
        };
        null(self.num_attention_heads.is_none(), "num_attention_heads")?;
        null(
            self.reverse_transformer_layers_per_block.is_none(),
            "reverse_transformer_layers_per_block",
        )?;
        null(self.encoder_hid_dim.is_none(), "encoder_hid_dim")?;
        null(self.encoder_hid_dim_type.is_none(), "encoder_hid_dim_type")?;
        null(self.class_embed_type.is_none(), "class_embed_type")?;
        null(self.num_class_embeds.is_none(), "num_class_embeds")?;
        null(self.time_embedding_act_fn.is_none(), "time_embedding_act_fn")?;
        null(self.timestep_post_act.is_none(), "timestep_post_act")?;
        null(self.cross_attention_norm.is_none(), "cross_attention_norm")?;
        let off = |v: bool, key: &str| -> Result<()> {
            ensure!(!v, "'{key}' must be false (other values are not supported)");
            Ok(())
        };
        off(self.center_input_sample, "center_input_sample")?;
        off(self.dual_cross_attention, "dual_cross_attention")?;
        off(self.resnet_skip_time_act, "resnet_skip_time_act")?;
        off(self.class_embeddings_concat, "class_embeddings_concat")?;
        off(
            self.mid_block_only_cross_attention == Some(true),
            "mid_block_only_cross_attention",
        )?;
        let only_cross = self
            .only_cross_attention
            .resolve(self.down_block_types.len(), "only_cross_attention")?;
        off(only_cross.contains(&true), "only_cross_attention")?;
        let is = |v: &str, want: &[&str], key: &str| -> Result<()> {
            ensure!(want.contains(&v), "'{key}' = \"{v}\" is not supported (only {want:?})");
            Ok(())
        };
        is(&self.act_fn, &["silu", "swish"], "act_fn")?;
        is(&self.resnet_time_scale_shift, &["default"], "resnet_time_scale_shift")?;
        is(&self.time_embedding_type, &["positional"], "time_embedding_type")?;
        is(&self.attention_type, &["default"], "attention_type")?;
        is(
            self.mid_block_type.as_deref().unwrap_or("null"),
            &[MID],
            "mid_block_type",
        )?;
        ensure!(
            self.dropout == 0.0,
            "'dropout' = {} is not supported (only 0)",
            self.dropout
        );
        ensure!(
            self.downsample_padding <= 1,
            "'downsample_padding' = {} is not supported (0 or 1)",
            self.downsample_padding
        );
        for (k, key) in [
            (self.conv_in_kernel, "conv_in_kernel"),
            (self.conv_out_kernel, "conv_out_kernel"),
        ] {
            ensure!(k % 2 == 1, "'{key}' = {k} must be odd");
        }
        Ok(())
    }

    /// The cross-attention context width (a list must repeat one value: the UNet takes one context).
    fn context_dim(&self, n: usize) -> Result<usize> {
        let dims = self.cross_attention_dim.resolve(n, "cross_attention_dim")?;
        ensure!(
            dims.iter().all(|&d| d == dims[0] && d > 0),
            "'cross_attention_dim' must be one positive width, got {dims:?}"
        );
        Ok(dims[0])
    }

    fn down_blocks(&self, layers: &[usize], heads: &[usize], tlayers: &[usize]) -> Result<Vec<BlockSpec>> {
        let ch = &self.block_out_channels;
        let n = ch.len();
        (0..n)
            .map(|i| {
                let kind = &self.down_block_types[i];
                let cross_attention = match kind.as_str() {
                    CROSS_DOWN => true,
                    DOWN => false,
                    _ => bail!("down block type '{kind}' is not supported (only {DOWN}, {CROSS_DOWN})"),
                };
                let inp = if i == 0 { ch[0] } else { ch[i - 1] };
                let spec = BlockSpec {
                    cross_attention,
                    resnet_in: (0..layers[i]).map(|j| if j == 0 { inp } else { ch[i] }).collect(),
                    out: ch[i],
                    heads: heads[i],
                    transformer_layers: tlayers[i],
                    resample: i + 1 < n,
                };
                check_block(&spec, &format!("down block {i}"))?;
                Ok(spec)
            })
            .collect()
    }

    /// Up block `i` mirrors down block `n − 1 − i`: `layers + 1` resnets, each taking the
    /// previous output concatenated with one skip connection.
    fn up_blocks(&self, layers: &[usize], heads: &[usize], tlayers: &[usize]) -> Result<Vec<BlockSpec>> {
        let rev: Vec<usize> = self.block_out_channels.iter().rev().copied().collect();
        let n = rev.len();
        let mut prev = rev[0];
        (0..n)
            .map(|i| {
                let kind = &self.up_block_types[i];
                let cross_attention = match kind.as_str() {
                    CROSS_UP => true,
                    UP => false,
                    _ => bail!("up block type '{kind}' is not supported (only {UP}, {CROSS_UP})"),
                };
                let (out, skip_last) = (rev[i], rev[(i + 1).min(n - 1)]);
                let count = layers[n - 1 - i] + 1;
                let resnet_in = (0..count)
                    .map(|j| {
                        let from = if j == 0 { prev } else { out };
                        from + if j + 1 == count { skip_last } else { out }
                    })
                    .collect();
                prev = out;
                let spec = BlockSpec {
                    cross_attention,
                    resnet_in,
                    out,
                    heads: heads[n - 1 - i],
                    transformer_layers: tlayers[n - 1 - i],
                    resample: i + 1 < n,
                };
                check_block(&spec, &format!("up block {i}"))?;
                Ok(spec)
            })
            .collect()
    }

    fn add_embedding(&self) -> Result<Option<AddEmbedSpec>> {
        match self.addition_embed_type.as_deref() {
            None => Ok(None),
            Some("text_time") => {
                let time_dim = self
                    .addition_time_embed_dim
                    .ok_or_else(|| anyhow!("'addition_embed_type' \"text_time\" needs 'addition_time_embed_dim'"))?;
                let input_dim = self.projection_class_embeddings_input_dim.ok_or_else(|| {
                    anyhow!("'addition_embed_type' \"text_time\" needs 'projection_class_embeddings_input_dim'")
                })?;
                ensure!(time_dim > 0 && input_dim > 0, "added-embedding widths must be positive");
                Ok(Some(AddEmbedSpec { time_dim, input_dim }))
            }
            Some(other) => bail!("'addition_embed_type' = \"{other}\" is not supported (only null or \"text_time\")"),
        }
    }
}

fn check_heads(channels: usize, heads: usize, what: &str) -> Result<()> {
    ensure!(
        heads > 0 && channels.is_multiple_of(heads),
        "{what}: {channels} channels do not split into {heads} attention heads ('attention_head_dim' is the number of heads)"
    );
    Ok(())
}

fn check_block(spec: &BlockSpec, what: &str) -> Result<()> {
    ensure!(
        !spec.resnet_in.is_empty(),
        "{what}: 'layers_per_block' must be at least 1"
    );
    if spec.cross_attention {
        check_heads(spec.out, spec.heads, what)?;
        ensure!(
            spec.transformer_layers > 0,
            "{what}: 'transformer_layers_per_block' must be at least 1"
        );
    }
    Ok(())
}

/// Replays the skip connections: `conv_in`'s output, then every down resnet's and downsampler's
/// output, consumed last-first by the up resnets, must fit the channels each up resnet expects.
fn check_skips(ch: &[usize], down: &[BlockSpec], up: &[BlockSpec]) -> Result<()> {
    let mut stack = vec![ch[0]];
    for b in down {
        stack.extend(std::iter::repeat_n(b.out, b.resnet_in.len() + usize::from(b.resample)));
    }
    let mut x = down.last().map_or(ch[0], |b| b.out);
    for (i, b) in up.iter().enumerate() {
        for &inp in &b.resnet_in {
            let skip = stack
                .pop()
                .ok_or_else(|| anyhow!("up block {i} has more resnets than skip connections"))?;
            ensure!(
                x + skip == inp,
                "up block {i}: skip connections do not fit ({x} + {skip} channels, resnet takes {inp})"
            );
            x = b.out;
        }
    }
    ensure!(
        stack.is_empty(),
        "{} skip connections are left unused by the up blocks",
        stack.len()
    );
    Ok(())
}
