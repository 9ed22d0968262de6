//! What a LoRA student UNet's forward pass keeps for its backward pass, per sample, counted
//! map by map from the code that keeps it: every op of candle's graph keeps its inputs, so a
//! map stays until the step ends when an op allocated it (a view — reshape of a contiguous
//! tensor, permute, narrow, broadcast — allocates nothing), plus what our own ops keep inside
//! (a LoRA layer's `s·A(x)`, `nets::kernels::lora`).
//!
//! Two ways the layers run, counted separately: f32 on the CPU takes the fused kernels
//! (`nets::kernels`: one map per normalization, attention and GEGLU, the adapters inside one
//! op), elsewhere candle's generic ops (`nets::sd::group_norm`, `weights::LayerNorm`,
//! `attention`, `nets::lora`: normalizations as five to eight maps, in f32 for f16/bf16 inputs;
//! attention's scores and probabilities, `heads · L · S` each; an adapter as its own products).
//!
//! With gradient checkpointing (`nets::sd::segments`) a segment keeps only its output map, and
//! the backward pass holds one recomputed segment's maps at a time: the largest is counted.
//! Either way the backward pass also holds the gradients of the skip connections, each waiting
//! from the up block that reads it to the down block that wrote it.

use crate::nets::sd::unet_config::{BlockSpec, Layout, UNetConfig};
use anyhow::{anyhow, Result};
use candle_core::DType;
use std::collections::HashSet;

/// Tokens of the text context the cross-attention layers attend to (CLIP's 77).
const CONTEXT_TOKENS: f64 = 77.0;

/// How the student's layers compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// f32 on the CPU: the project's fused kernels.
    Fused,
    /// candle's generic ops in `dtype` (GPUs; f16 on the CPU).
    Generic(DType),
}

impl Kernels {
    /// The kernels `nets::kernels::serve` picks for a UNet computing in `dtype` on the CPU or not.
    pub fn of(dtype: DType, cpu: bool) -> Self {
        match (dtype, cpu) {
            (DType::F32, true) => Self::Fused,
            _ => Self::Generic(dtype),
        }
    }

    /// Bytes of one value of the maps the layers pass on.
    fn bytes(self) -> f64 {
        match self {
            Self::Fused => 4.0,
            Self::Generic(d) => d.size_in_bytes() as f64,
        }
    }

    /// Whether generic normalizations compute in f32 from a narrower input.
    fn upcasts(self) -> bool {
        matches!(self, Self::Generic(DType::F16 | DType::BF16))
    }
}

/// Per-sample bytes of the student's saved maps, as the backward pass holds them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SavedMaps {
    /// Everything the forward pass keeps without checkpointing.
    pub plain: f64,
    /// With checkpointing: each segment's output, and the maps of the glue between segments.
    pub boundaries: f64,
    /// With checkpointing: the largest segment's maps, held while it runs again.
    pub largest_segment: f64,
    /// Gradients of the skip connections, held during the backward pass.
    pub skip_gradients: f64,
}

impl SavedMaps {
    /// The bytes per sample the backward pass holds at its peak.
    pub fn per_sample(&self, checkpointing: bool) -> f64 {
        let kept = match checkpointing {
            true => self.boundaries + self.largest_segment,
            false => self.plain,
        };
        kept + self.skip_gradients
    }

    /// The UNet `cfg` with rank-`rank` adapters on `adapted` (module paths), on `h × w` latents.
    pub fn count(
        cfg: &UNetConfig,
        adapted: &HashSet<String>,
        rank: usize,
        (h, w): (usize, usize),
        kernels: Kernels,
    ) -> Result<Self> {
        let layout = cfg.layout().map_err(|e| anyhow!("UNet config: {e}"))?;
        let mut walk = Walk {
            ledger: Ledger {
                kernels,
                rank: rank as f64,
                adapted,
                upcast_attention: cfg.upcast_attention,
            },
            totals: SavedMaps {
                plain: 0.0,
                boundaries: 0.0,
                largest_segment: 0.0,
                skip_gradients: 0.0,
            },
        };
        walk.unet(cfg, &layout, (h * w) as f64);
        Ok(walk.totals)
    }
}

/// Bytes each kind of layer keeps, per position (pixel or token) of its maps.
struct Ledger<'a> {
    kernels: Kernels,
    rank: f64,
    adapted: &'a HashSet<String>,
    upcast_attention: bool,
}

impl Ledger<'_> {
    /// `channels` values per position in the maps' dtype.
    fn map(&self, channels: f64) -> f64 {
        channels * self.kernels.bytes()
    }

    /// A GroupNorm over `c` channels, with SiLU after it when `silu`. Fused: its output (SiLU
    /// included). Generic (candle_nn's GroupNorm): the centred input, its square and the
    /// normalized map (in f32, after an f32 copy of a narrower input), the scaled and shifted
    /// maps, and SiLU's (its statistics, a few values per group, are left out).
    fn group_norm(&self, c: f64, silu: bool) -> f64 {
        let silu = if silu { self.map(c) } else { 0.0 };
        match self.kernels {
            Kernels::Fused => self.map(c),
            k if k.upcasts() => 4.0 * 4.0 * c + 3.0 * self.map(c) + silu,
            _ => 5.0 * self.map(c) + silu,
        }
    }

    /// A LayerNorm over `d` channels, per token: as a GroupNorm without SiLU, and generic
    /// (`layer_norm_slow`) its statistics too: six values per token (sum, mean, the variance's
    /// sum, the variance, + ε, its root), in the dtype it computes in.
    fn layer_norm(&self, d: f64) -> f64 {
        let stats = match self.kernels {
            Kernels::Fused => 0.0,
            k if k.upcasts() => 6.0 * 4.0,
            _ => self.map(6.0),
        };
        self.group_norm(d, false) + stats
    }

    /// A linear or convolution layer `path` with `out` output channels: its output, and with an
    /// adapter its `s·A(x)` (`rank` channels, f32 in the fused op; generic: also `B` of it,
    /// scaled, and the sum).
    fn product(&self, path: &str, out: f64) -> f64 {
        let y = self.map(out);
        match (self.adapted.contains(path), self.kernels) {
            (false, _) => y,
            (true, Kernels::Fused) => y + 4.0 * self.rank,
            (true, Kernels::Generic(_)) => y + self.map(self.rank) + 3.0 * self.map(out),
        }
    }

    /// `softmax(q kᵀ/√d) v` of `l` queries against `s` keys, `d` wide: bytes for all queries.
    /// Fused: the output (the backward recomputes the probabilities). Generic: the heads split
    /// (q, k, v), q scaled, scores and probabilities (`heads · l · s` each), the output and its
    /// heads merged; with `upcast_attention` in f16/bf16, q, k and the scores in f32.
    fn attention(&self, d: f64, heads: f64, l: f64, s: f64) -> f64 {
        let probabilities = self.map(heads * l * s);
        match self.kernels {
            Kernels::Fused => self.map(d) * l,
            k if self.upcast_attention && k.upcasts() => {
                let f32_maps = 4.0 * (2.0 * l * d + s * d + heads * l * s);
                self.map(d) * (3.0 * l + 2.0 * s) + f32_maps + probabilities
            }
            _ => self.map(d) * (4.0 * l + 2.0 * s) + 2.0 * probabilities,
        }
    }

    /// GEGLU on the `8d`-wide projection: fused, its `4d`-wide output; generic, the gate's GELU
    /// (f16/bf16: candle's fused `gelu_erf`; f32: composed of four maps, `attention::gelu`) and
    /// the product.
    fn geglu(&self, d: f64) -> f64 {
        match self.kernels {
            Kernels::Fused => self.map(4.0 * d),
            Kernels::Generic(DType::F32 | DType::F64) => 5.0 * self.map(4.0 * d),
            Kernels::Generic(_) => 2.0 * self.map(4.0 * d),
        }
    }
}

/// The walk over the UNet's layers in forward order, adding up what each keeps.
struct Walk<'a> {
    ledger: Ledger<'a>,
    totals: SavedMaps,
}

impl Walk<'_> {
    /// A checkpointed segment keeping `saved` bytes plainly and handing on `output` bytes.
    fn segment(&mut self, saved: f64, output: f64) {
        self.totals.plain += saved;
        self.totals.boundaries += output;
        self.totals.largest_segment = self.totals.largest_segment.max(saved);
    }

    /// Maps outside every segment (kept either way).
    fn glue(&mut self, saved: f64) {
        self.totals.plain += saved;
        self.totals.boundaries += saved;
    }

    /// A map of `c` channels that a skip connection carries, at `s` positions.
    fn skip(&mut self, c: f64, s: f64) {
        self.totals.skip_gradients += self.ledger.map(c) * s;
    }

    fn unet(&mut self, cfg: &UNetConfig, layout: &Layout, mut s: f64) {
        let c0 = cfg.block_out_channels[0] as f64;
        // conv_in runs on the untracked latents: its output is kept as the first skip connection.
        self.glue(self.ledger.map(c0) * s);
        self.skip(c0, s);
        for (i, block) in layout.down.iter().enumerate() {
            let path = format!("down_blocks.{i}");
            self.block(&path, block, s, true);
            if block.resample {
                s /= 4.0;
                let down = self
                    .ledger
                    .product(&format!("{path}.downsamplers.0.conv"), block.out as f64);
                self.glue(down * s);
                self.skip(block.out as f64, s);
            }
        }
        let mid = &layout.mid;
        let c = mid.channels as f64;
        self.resnet("mid_block.resnets.0", c, c, s);
        self.transformer("mid_block.attentions.0", c, mid.heads as f64, mid.transformer_layers, s);
        self.resnet("mid_block.resnets.1", c, c, s);
        for (i, block) in layout.up.iter().enumerate() {
            let path = format!("up_blocks.{i}");
            self.block(&path, block, s, false);
            if block.resample {
                s *= 4.0;
                let out = block.out as f64;
                // nearest 2× (a broadcast copied by its reshape), then the convolution
                let conv = self.ledger.product(&format!("{path}.upsamplers.0.conv"), out);
                self.segment((self.ledger.map(out) + conv) * s, self.ledger.map(out) * s);
            }
        }
        let out = cfg.out_channels as f64;
        let head = self.ledger.group_norm(c0, true) + self.ledger.product("conv_out", out);
        self.segment(head * s, self.ledger.map(out) * s);
    }

    /// A down or up block's layers at `s` positions: resnet (after concatenating the skip
    /// connection, up blocks), then a transformer in cross-attention blocks.
    fn block(&mut self, path: &str, block: &BlockSpec, s: f64, down: bool) {
        let out = block.out as f64;
        for (j, &c_in) in block.resnet_in.iter().enumerate() {
            if !down {
                self.glue(self.ledger.map(c_in as f64) * s);
            }
            self.resnet(&format!("{path}.resnets.{j}"), c_in as f64, out, s);
            if block.cross_attention {
                let t = format!("{path}.attentions.{j}");
                self.transformer(&t, out, block.heads as f64, block.transformer_layers, s);
            }
            if down {
                self.skip(out, s);
            }
        }
    }

    /// `ResnetBlock`: silu(norm1) → conv1 → + time_emb_proj → silu(norm2) → conv2, the shortcut
    /// when the width changes, the sum.
    fn resnet(&mut self, path: &str, c_in: f64, out: f64, s: f64) {
        let l = &self.ledger;
        let p = |name: &str| format!("{path}.{name}");
        let mut maps = l.group_norm(c_in, true) + l.product(&p("conv1"), out) + l.map(out);
        maps += l.group_norm(out, true) + l.product(&p("conv2"), out) + l.map(out);
        if c_in != out {
            maps += l.product(&p("conv_shortcut"), out);
        }
        // time_emb_proj's output: one position, broadcast over the map by the sum
        let time = l.product(&p("time_emb_proj"), out);
        self.segment(maps * s + time, l.map(out) * s);
    }

    /// `Transformer2D`: the way into the tokens (GroupNorm, proj_in, the tokens' copy), each
    /// layer, the way out (the image's copy, proj_out, the residual), each a segment; proj_in and
    /// proj_out as 1×1 convolutions or linear layers (SD 2.x, SDXL) keep the same maps.
    fn transformer(&mut self, path: &str, c: f64, heads: f64, layers: usize, s: f64) {
        let l = &self.ledger;
        let tokens_in = l.group_norm(c, false) + l.product(&format!("{path}.proj_in"), c) + l.map(c);
        self.segment(tokens_in * s, l.map(c) * s);
        for k in 0..layers {
            let layer = self.transformer_layer(&format!("{path}.transformer_blocks.{k}"), c, heads, s);
            self.segment(layer, self.ledger.map(c) * s);
        }
        let l = &self.ledger;
        let tokens_out = l.map(c) + l.product(&format!("{path}.proj_out"), c) + l.map(c);
        self.segment(tokens_out * s, l.map(c) * s);
    }

    /// `BasicTransformerBlock` of width `d` on `s` tokens: self-attention, cross-attention
    /// against the text context and GEGLU feed-forward, each after a LayerNorm and with its
    /// residual sum; bytes for all tokens.
    fn transformer_layer(&self, path: &str, d: f64, heads: f64, s: f64) -> f64 {
        let l = &self.ledger;
        let p = |name: &str| format!("{path}.{name}");
        let qkv = ["to_q", "to_k", "to_v", "to_out.0"].map(|n| l.product(&p(&format!("attn1.{n}")), d));
        let self_attn = (l.layer_norm(d) + qkv.iter().sum::<f64>() + l.map(d)) * s + l.attention(d, heads, s, s);
        let cross_tokens =
            l.layer_norm(d) + l.product(&p("attn2.to_q"), d) + l.product(&p("attn2.to_out.0"), d) + l.map(d);
        let context = l.product(&p("attn2.to_k"), d) + l.product(&p("attn2.to_v"), d);
        let cross = cross_tokens * s + context * CONTEXT_TOKENS + l.attention(d, heads, s, CONTEXT_TOKENS);
        let ff = l.layer_norm(d)
            + l.product(&p("ff.net.0.proj"), 8.0 * d)
            + l.geglu(d)
            + l.product(&p("ff.net.2"), d)
            + l.map(d);
        self_attn + cross + ff * s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::condition::TextEmbedding;
    use crate::nets::kernels::with_generic_ops;
    use crate::nets::layers::Params;
    use crate::nets::lora::{init_adapters, LoraConfig};
    use crate::nets::sd::unet::{UNet, UNetLora, DEFAULT_LORA_TARGETS};
    use crate::nets::sd::unet_init::random_unet_params;
    use crate::runtime::noise::{seeded, standard_normal};
    use candle_core::{Device, Storage, Tensor, Var};
    use std::path::Path;

    /// Address of a tensor's storage: tensors sharing it (views, detached copies) count once.
    fn storage_id(t: &Tensor) -> usize {
        let (storage, _) = t.storage_and_layout();
        &*storage as *const Storage as usize
    }

    /// Bytes of the distinct storages `y`'s graph reaches, other than those of `params`.
    fn graph_bytes(y: &Tensor, params: &[Tensor]) -> f64 {
        let mut seen: HashSet<usize> = params.iter().map(storage_id).collect();
        let mut bytes = 0;
        for node in y.sorted_nodes() {
            if !node.is_variable() && seen.insert(storage_id(node)) {
                let (storage, _) = node.storage_and_layout();
                bytes += match &*storage {
                    Storage::Cpu(s) => s.as_slice::<f32>().map_or(0, |v| 4 * v.len()),
                    _ => 0,
                };
            }
        }
        bytes as f64
    }

    /// The tiny SD 1.x fixture's UNet layout, random weights, rank-4 adapters (B nonzero) on
    /// LCM-LoRA's targets, f32 on the CPU: the bytes its forward pass's graph holds on 16×16
    /// latents, and the adapted paths.
    fn graph_of_forward(checkpointing: bool) -> (f64, HashSet<String>, UNetConfig) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/sd1/unet/config.json");
        let cfg = UNetConfig::from_file(&dir).unwrap();
        let mut params = random_unet_params(&cfg, &mut seeded(0)).unwrap();
        let frozen: Vec<Tensor> = params.values().cloned().collect();
        let lora = LoraConfig { rank: 4, alpha: 4.0 };
        let targets: Vec<String> = DEFAULT_LORA_TARGETS.iter().map(|s| s.to_string()).collect();
        let adapted = cfg.lora_layers(&targets).unwrap();
        let mut adapters = Params::new();
        for (path, shape) in &adapted {
            init_adapters(&mut adapters, path, shape, lora, &mut seeded(1)).unwrap();
        }
        for (name, t) in adapters {
            let t = if name.contains("lora_B") {
                t.ones_like().unwrap()
            } else {
                t
            };
            params.insert(name, Var::from_tensor(&t).unwrap().as_tensor().clone());
        }
        let mut unet = UNet::new(cfg.clone(), &params, Some(&UNetLora { cfg: lora, targets })).unwrap();
        unet.set_gradient_checkpointing(checkpointing);
        // Tracked latents make every map a node of the graph (untracked ones are held too, as
        // inputs of tracked ops, but the walk over the graph would not see them).
        let x = standard_normal(&mut seeded(2), (1, 4, 16, 16), &Device::Cpu).unwrap();
        let x = Var::from_tensor(&x).unwrap().as_tensor().clone();
        let context = cfg.layout().unwrap().context_dim;
        let text = TextEmbedding {
            tokens: standard_normal(&mut seeded(3), (1, 77, context), &Device::Cpu).unwrap(),
            pooled: None,
            time_ids: None,
        };
        let y = unet.forward(&x, &[500.0], &text, None).unwrap();
        let paths = adapted.into_iter().map(|(p, _)| p).collect();
        (graph_bytes(&y, &frozen), paths, cfg)
    }

    /// The count is what the graph holds, on the fused kernels and on the generic ops, plain
    /// and checkpointed, within 0.5 % (left out: the generic GroupNorm's per-group statistics,
    /// the checkpoints' one-value taps). The fused LoRA op's `s·A(x)` lives inside the op, where
    /// the walk over the graph does not see it: the count at rank 0 leaves it out.
    #[test]
    fn the_count_is_what_the_graph_holds() {
        for checkpointing in [false, true] {
            for generic in [false, true] {
                let (walked, adapted, cfg) = match generic {
                    true => with_generic_ops(|| graph_of_forward(checkpointing)),
                    false => graph_of_forward(checkpointing),
                };
                let (rank, kernels) = match generic {
                    true => (4, Kernels::Generic(DType::F32)),
                    false => (0, Kernels::Fused),
                };
                let maps = SavedMaps::count(&cfg, &adapted, rank, (16, 16), kernels).unwrap();
                let counted = match checkpointing {
                    true => maps.boundaries,
                    false => maps.plain,
                };
                eprintln!("checkpointing {checkpointing}, generic {generic}: graph {walked} bytes, counted {counted}");
                assert!(
                    (counted - walked).abs() <= 5e-3 * walked,
                    "checkpointing {checkpointing}, generic {generic}: graph {walked} bytes, counted {counted}"
                );
            }
        }
    }
}
