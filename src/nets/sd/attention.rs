//! Multi-head attention as diffusers' `Attention` computes it (`AttnProcessor2_0`, no mask),
//! and the GEGLU feed-forward of its transformer blocks (`FeedForward`, `activation_fn="geglu"`).
//!
//! f32 attention on the CPU takes the fused kernel `kernels::attention`, whose backward
//! recomputes the probabilities block by block (nothing of size `[B·heads, L, S]` is kept).
//! Elsewhere attention is the plain formula, all heads in one batched matmul, its scores kept
//! for the backward; the probabilities come from `softmax_last_dim` on detached scores (it has
//! no backward of its own, which would silently cut the gradient to `to_q`, `to_k`), joined to
//! the graph with softmax's own backward (`nets::input_gradient`), so only they are kept for it.
//!
//! Token inputs are made contiguous before the linear layers: candle 0.11.1's CPU matmul folds
//! the batches of a non-contiguous (transposed) `[B, L, C]` input times a broadcast weight —
//! what `candle_nn::Linear::forward` does — into one matrix as if it were row-major, and
//! returns wrong values for B ≥ 2, without error.

use crate::nets::input_gradient::with_input_gradient;
use crate::nets::kernels::{self, attention::Sdpa, geglu::Geglu};
use crate::nets::lora::LoraLinear;
use crate::nets::sd::weights::Weights;
use anyhow::{ensure, Result};
use candle_core::{DType, Tensor, D};

/// Shape of one attention layer.
#[derive(Clone, Copy, Debug)]
pub struct AttentionSpec {
    pub query_dim: usize,
    /// Width of the cross-attention context (`None`: self-attention).
    pub context_dim: Option<usize>,
    pub heads: usize,
    pub head_dim: usize,
    /// Biases on `to_q`, `to_k`, `to_v` (the VAE's attention has them, the UNet's does not);
    /// `to_out.0` always has one.
    pub qkv_bias: bool,
    /// `upcast_attention`: scores from f32 queries and keys when the model runs in f16/bf16.
    pub upcast: bool,
}

/// `to_out.0(softmax(q kᵀ/√d) v)` with `q = to_q(x)`, `k = to_k(c)`, `v = to_v(c)`, per head,
/// `c` = the context (cross-attention) or `x` (self-attention).
pub struct Attention {
    to_q: LoraLinear,
    to_k: LoraLinear,
    to_v: LoraLinear,
    to_out: LoraLinear,
    heads: usize,
    upcast: bool,
}

impl Attention {
    pub fn load(w: &mut Weights, path: &str, s: AttentionSpec) -> Result<Self> {
        ensure!(
            s.heads > 0 && s.head_dim > 0,
            "'{path}': attention needs heads and a head width"
        );
        let inner = s.heads * s.head_dim;
        let ctx = s.context_dim.unwrap_or(s.query_dim);
        let p = |name: &str| format!("{path}.{name}");
        Ok(Self {
            to_q: w.linear(&p("to_q"), inner, s.query_dim, s.qkv_bias)?,
            to_k: w.linear(&p("to_k"), inner, ctx, s.qkv_bias)?,
            to_v: w.linear(&p("to_v"), inner, ctx, s.qkv_bias)?,
            to_out: w.linear(&p("to_out.0"), s.query_dim, inner, true)?,
            heads: s.heads,
            upcast: s.upcast,
        })
    }

    /// `x` `[B, L, query_dim]`, `context` `[B, S, context_dim]` (`None`: self-attention).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let x = &x.contiguous()?;
        let c = &context.unwrap_or(x).contiguous()?;
        let (q, k, v) = (self.to_q.forward(x)?, self.to_k.forward(c)?, self.to_v.forward(c)?);
        // f32 on the CPU takes the fused kernel (with its own backward under a graph).
        if kernels::serve(&q) {
            let heads = self.heads;
            return self.to_out.forward(&Sdpa { heads }.forward(&q, &k, &v)?);
        }
        let (q, k, v) = (
            split_heads(&q, self.heads)?,
            split_heads(&k, self.heads)?,
            split_heads(&v, self.heads)?,
        );
        let o = scaled_dot_product(&q, &k, &v, self.upcast)?;
        self.to_out.forward(&merge_heads(&o, self.heads)?)
    }
}

/// `[B, L, H·d]` → `[B·H, L, d]`.
fn split_heads(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, l, hd) = t.dims3()?;
    ensure!(
        hd % heads == 0,
        "attention width {hd} does not split into {heads} heads"
    );
    Ok(t.reshape((b, l, heads, hd / heads))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * heads, l, hd / heads))?)
}

/// `[B·H, L, d]` → `[B, L, H·d]`.
fn merge_heads(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (bh, l, d) = t.dims3()?;
    Ok(t.reshape((bh / heads, heads, l, d))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((bh / heads, l, heads * d))?)
}

/// `softmax(q kᵀ / √d) v` over batched heads: q `[N, L, d]`, k, v `[N, S, d]`. In f16/bf16 the
/// softmax runs in f32 (as fused attention kernels accumulate it), and with `upcast` the
/// scores too.
pub fn scaled_dot_product(q: &Tensor, k: &Tensor, v: &Tensor, upcast: bool) -> Result<Tensor> {
    let dtype = q.dtype();
    let half = matches!(dtype, DType::F16 | DType::BF16);
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let (q, k) = match upcast && half {
        true => (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?),
        false => (q.clone(), k.clone()),
    };
    let scores = (q * scale)?.matmul(&k.t()?)?;
    Ok(softmax(&scores, dtype)?.matmul(v)?)
}

/// Softmax over the last axis as `dtype`, accumulated in f32 for f16/bf16 scores. Under a
/// graph the probabilities are the only map kept: the backward is `p ⊙ (g − Σ_last g ⊙ p)`.
fn softmax(scores: &Tensor, dtype: DType) -> Result<Tensor> {
    let work = match scores.dtype() {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    };
    let p = candle_nn::ops::softmax_last_dim(&scores.detach().to_dtype(work)?)?.to_dtype(dtype)?;
    if !scores.track_op() {
        return Ok(p);
    }
    // The gradient goes to the scores, in their dtype (f32 when upcast, whatever `dtype` is).
    let scores_dtype = scores.dtype();
    let gradient = move |g: &Tensor, _: &Tensor, p: &Tensor| -> candle_core::Result<Tensor> {
        let (gw, pw) = (g.to_dtype(work)?, p.to_dtype(work)?);
        let dot = (&gw * &pw)?.sum_keepdim(D::Minus1)?;
        (pw * gw.broadcast_sub(&dot)?)?.to_dtype(scores_dtype)
    };
    with_input_gradient(scores, p, gradient)
}

/// `net.2(h ⊙ gelu(g))` with `[h, g] = net.0.proj(x)` split in halves (diffusers' GEGLU:
/// the first half is the value, the second the gate, exact erf GELU, see [`gelu`]).
pub struct FeedForward {
    proj: LoraLinear,
    out: LoraLinear,
    inner: usize,
}

impl FeedForward {
    /// `PATH.net.0.proj` `[2·inner, dim]`, `PATH.net.2` `[dim, inner]`.
    pub fn load(w: &mut Weights, path: &str, dim: usize, inner: usize) -> Result<Self> {
        Ok(Self {
            proj: w.linear(&format!("{path}.net.0.proj"), 2 * inner, dim, true)?,
            out: w.linear(&format!("{path}.net.2"), dim, inner, true)?,
            inner,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(&x.contiguous()?)?;
        if kernels::serve(&h) {
            let y = Geglu::forward(&h.detach())?;
            return match h.track_op() {
                true => self
                    .out
                    .forward(&with_input_gradient(&h, y, |g, h, _| Geglu::backward(h, g))?),
                false => self.out.forward(&y),
            };
        }
        let value = h.narrow(D::Minus1, 0, self.inner)?;
        let gate = h.narrow(D::Minus1, self.inner, self.inner)?;
        self.out.forward(&(value * gelu(&gate)?)?)
    }
}

/// `x Φ(x) = x · ½(1 + erf(x/√2))`, PyTorch's exact GELU.
///
/// candle's fused `gelu_erf` computes this forward with one rounding, but its backward
/// truncates 1/√(2π) to 0.398942 (relative error 7e-7 in that term; a finite-difference test
/// through the UNet sees 7.5e-6 on a small gradient). In f32/f64 the GELU is therefore
/// composed of `erf` and arithmetic (exact backward, three more stored activations of the
/// gate's size); in f16/bf16, whose rounding is 10³× coarser than that error, the fused op
/// keeps the forward accurate and the memory small.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if matches!(x.dtype(), DType::F16 | DType::BF16) {
        return Ok(x.gelu_erf()?);
    }
    let phi = (x * std::f64::consts::FRAC_1_SQRT_2)?.erf()?.affine(0.5, 0.5)?;
    Ok((x * phi)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nets::layers::Params;
    use crate::runtime::noise::{seeded, standard_normal};
    use candle_core::Device;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        standard_normal(&mut seeded(seed), shape, &Device::Cpu).unwrap()
    }

    /// A transposed (non-contiguous) batch of tokens and context gives the same attention as
    /// its contiguous copy: guards against candle's wrong folded matmul in `Linear::forward`.
    #[test]
    fn non_contiguous_inputs_give_the_same_output() {
        let mut p = Params::new();
        for (name, shape) in [
            ("a.to_q", [8, 6]),
            ("a.to_k", [8, 5]),
            ("a.to_v", [8, 5]),
            ("a.to_out.0", [6, 8]),
        ] {
            p.insert(format!("{name}.weight"), randn(&shape, p.len() as u64));
        }
        p.insert("a.to_out.0.bias".into(), randn(&[6], 9));
        let mut w = Weights::new(&p, None, "test").unwrap();
        let spec = AttentionSpec {
            query_dim: 6,
            context_dim: Some(5),
            heads: 2,
            head_dim: 4,
            qkv_bias: false,
            upcast: false,
        };
        let attn = Attention::load(&mut w, "a", spec).unwrap();
        w.finish("test").unwrap();
        let x = randn(&[3, 6, 7], 10).transpose(1, 2).unwrap();
        let c = randn(&[3, 5, 4], 11).transpose(1, 2).unwrap();
        assert!(!x.is_contiguous() && !c.is_contiguous());
        let y = attn.forward(&x, Some(&c)).unwrap();
        let want = attn
            .forward(&x.contiguous().unwrap(), Some(&c.contiguous().unwrap()))
            .unwrap();
        let diff = (y - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    /// The composed GELU is PyTorch's exact one: x·Φ(x), against reference values.
    #[test]
    fn gelu_matches_reference_values() {
        let x = Tensor::new(&[-3.0f64, -1.0, 0.0, 0.5, 2.0], &Device::Cpu).unwrap();
        let y = gelu(&x).unwrap().to_vec1::<f64>().unwrap();
        // torch.nn.functional.gelu(torch.tensor([...], dtype=torch.float64))
        let want = [
            -0.00404969409489031,
            -0.15865525393145702,
            0.0,
            0.34573123063700656,
            1.9544997361036416,
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }
}
