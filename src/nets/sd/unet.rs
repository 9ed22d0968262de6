//! diffusers' `UNet2DConditionModel` (SD 1.x / 2.x / SDXL, LCM's guidance embedding), built
//! from its weights by diffusers' module paths, every linear and conv layer able to carry a
//! LoRA adapter.
//!
//! `forward` follows `UNet2DConditionModel.forward`: sinusoidal timestep embedding (f32, one
//! timestep per row) → `time_embedding` (+ `cond_proj(timestep_cond)` before `linear_1`)
//! (+ SDXL's `add_embedding(cat([text_embeds, sinusoid(time_ids)]))`) = `emb`; `conv_in`,
//! down blocks (pushing skip connections), mid block, up blocks (popping them),
//! `silu(conv_norm_out)`, `conv_out`.

use crate::diffusion::condition::TextEmbedding;
use crate::nets::layers::Params;
use crate::nets::lora::{LoraConfig, LoraConv2d, Switch};
use crate::nets::sd::blocks::{BlockInput, DownBlock, MidBlock, Shared, UpBlock};
use crate::nets::sd::embeddings::{Sinusoid, TimestepEmbedding};
use crate::nets::sd::resnet::{same_conv, NormActConv};
use crate::nets::sd::segments::Segments;
use crate::nets::sd::unet_config::{AddEmbedSpec, Layout, UNetConfig};
use crate::nets::sd::weights::{AdaptedLayer, Weights};
use anyhow::{anyhow, ensure, Result};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// The LoRA targets of diffusers' LCM-LoRA script and the paper's code (docs/SD_FORMATS.md, "LoRA targets").
pub const DEFAULT_LORA_TARGETS: [&str; 14] = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
];

/// Adapters for every layer whose module path ends with one of `targets` at a dot boundary.
#[derive(Clone, Debug, PartialEq)]
pub struct UNetLora {
    pub cfg: LoraConfig,
    pub targets: Vec<String>,
}

impl UNetLora {
    /// `cfg` on [`DEFAULT_LORA_TARGETS`].
    pub fn with_default_targets(cfg: LoraConfig) -> Self {
        Self {
            cfg,
            targets: DEFAULT_LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// SDXL's added conditioning: `add_embedding(cat([text_embeds, add_time_proj(time_ids)]))`.
struct AddEmbedding {
    time_proj: Sinusoid,
    embedding: TimestepEmbedding,
    spec: AddEmbedSpec,
}

impl AddEmbedding {
    /// `[B, temb]` from `text.pooled` `[B, P]` and `text.time_ids` `[B, n]`, P + n·time_dim =
    /// the configured input width; the ids are embedded in f32 (one sinusoid each).
    fn forward(&self, text: &TextEmbedding, b: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let missing = |what: &str| {
            anyhow!("UNet: 'addition_embed_type' \"text_time\" needs {what}, but the text embedding has none")
        };
        let pooled = text
            .pooled
            .as_ref()
            .ok_or_else(|| missing("pooled text embeddings (SDXL's text_embeds)"))?;
        let ids = text
            .time_ids
            .as_ref()
            .ok_or_else(|| missing("time ids (SDXL's time_ids)"))?;
        let (pb, p) = pooled.dims2()?;
        let (ib, n) = ids.dims2()?;
        ensure!(
            pb == b && ib == b && p + n * self.spec.time_dim == self.spec.input_dim,
            "UNet: pooled text {:?} and time ids {:?} do not fit batch {b} and 'projection_class_embeddings_input_dim' {} (= P + n·{})",
            pooled.dims(),
            ids.dims(),
            self.spec.input_dim,
            self.spec.time_dim
        );
        let flat = ids.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let time = self
            .time_proj
            .embed(&flat, device)?
            .reshape((b, n * self.spec.time_dim))?;
        let pooled = pooled.to_device(device)?.to_dtype(dtype)?;
        let input = Tensor::cat(&[&pooled, &time.to_dtype(dtype)?], 1)?;
        self.embedding.forward(&input, None)
    }
}

/// The layers of a UNet, before the weights are checked for unused tensors.
struct Parts {
    conv_in: LoraConv2d,
    time_proj: Sinusoid,
    time_embedding: TimestepEmbedding,
    add: Option<AddEmbedding>,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    out: Arc<NormActConv>,
}

impl Parts {
    fn load(cfg: &UNetConfig, l: &Layout, w: &mut Weights) -> Result<Self> {
        let c0 = cfg.block_out_channels[0];
        let sh = Shared {
            temb_dim: l.temb_dim,
            groups: l.groups,
            eps: cfg.norm_eps,
            context_dim: l.context_dim,
            linear_projection: cfg.use_linear_projection,
            upcast_attention: cfg.upcast_attention,
            downsample_padding: cfg.downsample_padding,
        };
        let sinusoid = |dim| Sinusoid {
            dim,
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
        };
        let add = match l.add_embedding {
            Some(spec) => Some(AddEmbedding {
                time_proj: sinusoid(spec.time_dim),
                embedding: TimestepEmbedding::load(w, "add_embedding", spec.input_dim, l.temb_dim, None)?,
                spec,
            }),
            None => None,
        };
        let time_embedding = TimestepEmbedding::load(
            w,
            "time_embedding",
            l.time_input_dim,
            l.temb_dim,
            cfg.time_cond_proj_dim,
        )?;
        Ok(Self {
            conv_in: w.conv("conv_in", same_conv(c0, cfg.in_channels, cfg.conv_in_kernel))?,
            time_proj: sinusoid(l.time_input_dim),
            time_embedding,
            add,
            down: (l.down.iter().enumerate())
                .map(|(i, s)| DownBlock::load(w, &format!("down_blocks.{i}"), s, &sh))
                .collect::<Result<_>>()?,
            mid: MidBlock::load(w, "mid_block", &l.mid, &sh)?,
            up: (l.up.iter().enumerate())
                .map(|(i, s)| UpBlock::load(w, &format!("up_blocks.{i}"), s, &sh))
                .collect::<Result<_>>()?,
            out: Arc::new(NormActConv::load(
                w,
                "conv_norm_out",
                "conv_out",
                (l.groups, cfg.norm_eps),
                same_conv(cfg.out_channels, c0, cfg.conv_out_kernel),
            )?),
        })
    }
}

/// A diffusers `UNet2DConditionModel`.
pub struct UNet {
    cfg: UNetConfig,
    parts: Parts,
    switch: Switch,
    segments: Segments,
    adapted: Vec<AdaptedLayer>,
    context_dim: usize,
    dtype: DType,
    device: Device,
}

impl UNetConfig {
    /// Module path and base weight shape of every layer that `targets` would adapt, in
    /// construction order (an error if a target matches no layer).
    pub fn lora_layers(&self, targets: &[impl AsRef<str>]) -> Result<Vec<AdaptedLayer>> {
        let targets: Vec<String> = targets.iter().map(|t| t.as_ref().to_string()).collect();
        let layout = self.layout().map_err(|e| anyhow!("UNet config: {e}"))?;
        let mut w = Weights::shapes_only(&targets);
        Parts::load(self, &layout, &mut w)?;
        Ok(w.finish("UNet")?.1)
    }

    /// Module path and base weight shape of every linear and conv layer, the layers a LoRA
    /// file may adapt, in construction order.
    pub fn adaptable_layers(&self) -> Result<Vec<AdaptedLayer>> {
        let layout = self.layout().map_err(|e| anyhow!("UNet config: {e}"))?;
        let mut w = Weights::shapes_of_every_layer();
        Parts::load(self, &layout, &mut w)?;
        Ok(w.finish("UNet")?.1)
    }

    /// The name and shape of every tensor the UNet takes (without adapters), in construction
    /// order: what a diffusers `diffusion_pytorch_model.safetensors` of this config holds.
    pub fn tensor_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let layout = self.layout().map_err(|e| anyhow!("UNet config: {e}"))?;
        let mut w = Weights::shapes_only(&[] as &[String]);
        Parts::load(self, &layout, &mut w)?;
        Ok(w.shapes().to_vec())
    }
}

impl UNet {
    /// Builds the UNet from diffusers' tensors (`params`, all one float dtype and device; the
    /// model computes in it). With `lora`, every targeted layer takes `PATH.lora_A.weight` /
    /// `PATH.lora_B.weight` from `params` (in the same dtype: cast f32 `Var`s with `to_dtype`,
    /// which keeps their gradient). A missing, misshapen or unused tensor, or a target that
    /// matches no layer, is an error naming it. Pass frozen weights as plain tensors.
    pub fn new(cfg: UNetConfig, params: &Params, lora: Option<&UNetLora>) -> Result<Self> {
        let layout = cfg.layout().map_err(|e| anyhow!("UNet config: {e}"))?;
        let mut w = Weights::new(params, lora.map(|l| (l.cfg, l.targets.as_slice())), "UNet")?;
        let (dtype, device) = (w.dtype(), w.device().clone());
        let parts = Parts::load(&cfg, &layout, &mut w)?;
        let (switch, adapted) = w.finish("UNet")?;
        let segments = Segments {
            checkpointing: false,
            switch: switch.clone(),
        };
        Ok(Self {
            cfg,
            parts,
            switch,
            segments,
            adapted,
            context_dim: layout.context_dim,
            dtype,
            device,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// The on/off switch shared by all adapters (off: the base model).
    pub fn adapters(&self) -> &Switch {
        &self.switch
    }

    /// Gradient checkpointing on or off (off when built): on, the forward pass of a student
    /// keeps only the inputs of its segments (`nets::sd::segments`) and the backward pass runs
    /// them again; the values and gradients are the plain path's.
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.segments.checkpointing = on;
    }

    /// The adapted layers (module path, base weight shape), in construction order.
    pub fn adapted_layers(&self) -> &[AdaptedLayer] {
        &self.adapted
    }

    /// The weights' dtype, in which the UNet computes.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The noise prediction (or whatever the UNet was trained on) `[B, out, h, w]` for latents
    /// `x` `[B, in, h, w]` (h, w divisible by 2^(blocks − 1)), one diffusers timestep per row
    /// `t`, the text conditioning (`tokens` `[B, L, cross_attention_dim]`; SDXL also `pooled`
    /// and `time_ids`) and LCM's guidance embedding `timestep_cond` `[B, time_cond_proj_dim]`.
    /// Inputs are converted to the weights' dtype and device; the output comes back in x's.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &[f64],
        text: &TextEmbedding,
        timestep_cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let factor = 1usize << (self.parts.down.len() - 1);
        ensure!(
            c == self.cfg.in_channels && h.is_multiple_of(factor) && w.is_multiple_of(factor),
            "UNet: latents {:?} must have {} channels and a size divisible by {factor}",
            x.dims(),
            self.cfg.in_channels
        );
        ensure!(
            t.len() == b,
            "UNet: {} timesteps for {b} latents (one per row)",
            t.len()
        );
        let emb = self.time_embedding(t, text, timestep_cond)?;
        let context = self.context(text, b)?;
        let temb_act = emb.silu()?;
        let inp = BlockInput {
            temb_act: &temb_act,
            context: &context,
            segments: &self.segments,
        };
        let mut h = self.parts.conv_in.forward(&self.cast(x)?)?;
        let mut skips = vec![h.clone()];
        for block in &self.parts.down {
            h = block.forward(&h, &inp, &mut skips)?;
        }
        h = self.parts.mid.forward(&h, &inp)?;
        for block in &self.parts.up {
            h = block.forward(&h, &inp, &mut skips)?;
        }
        let y = (self.segments).run(&self.parts.out, &h, &[], |out, h, _| out.forward(h))?;
        Ok(y.to_device(x.device())?.to_dtype(x.dtype())?)
    }

    /// `emb` `[B, temb]`: `time_embedding(sinusoid(t)[, timestep_cond])` plus SDXL's added
    /// embedding, in the weights' dtype (diffusers' `emb` before the blocks).
    pub fn time_embedding(&self, t: &[f64], text: &TextEmbedding, timestep_cond: Option<&Tensor>) -> Result<Tensor> {
        ensure!(!t.is_empty(), "UNet: no timesteps");
        let t32: Vec<f32> = t.iter().map(|&v| v as f32).collect();
        let e = self.parts.time_proj.embed(&t32, &self.device)?.to_dtype(self.dtype)?;
        let cond = match (timestep_cond, self.cfg.time_cond_proj_dim) {
            (Some(c), Some(dim)) => {
                ensure!(
                    c.dims() == [t.len(), dim],
                    "UNet: timestep_cond {:?} should be [{}, {dim}]",
                    c.dims(),
                    t.len()
                );
                Some(self.cast(c)?)
            }
            (Some(_), None) => anyhow::bail!("UNet: timestep_cond given, but the config has no 'time_cond_proj_dim'"),
            (None, _) => None,
        };
        let emb = self.parts.time_embedding.forward(&e, cond.as_ref())?;
        match &self.parts.add {
            Some(add) => Ok((emb + add.forward(text, t.len(), self.dtype, &self.device)?)?),
            None => Ok(emb),
        }
    }

    /// The cross-attention context `[B, L, cross_attention_dim]` in the weights' dtype.
    fn context(&self, text: &TextEmbedding, b: usize) -> Result<Tensor> {
        let (tb, _, d) = text.tokens.dims3()?;
        let want = self.context_dim;
        ensure!(
            tb == b && d == want,
            "UNet: text tokens {:?} should be [{b}, L, {want}]",
            text.tokens.dims()
        );
        self.cast(&text.tokens)
    }

    fn cast(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.to_device(&self.device)?.to_dtype(self.dtype)?)
    }
}
