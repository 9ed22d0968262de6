//! One rank and one alpha for the modules of a LoRA file, which dcm's adapters share (one
//! [`LoraConfig`] per UNet), without changing any module's update
//! `ΔW = (alpha_m / r_m) · B_m · A_m` (docs/SD_FORMATS.md, "LoRA import").
//!
//! - Rank: the largest of the file, R. A module of rank r < R gets R − r zero rows appended to
//!   A and R − r zero columns to B: `B·A` is the same matrix, exactly. Training keeps the
//!   padding at zero (the gradient of a zero row of A is a zero column of B times the output
//!   gradient, and vice versa), so such a module stays rank r.
//! - Alpha: a module's scale alpha_m / r_m equals e_m / R with e_m = alpha_m · R / r_m. The
//!   shared alpha is the most common e_m; a module with another e_m has e_m / alpha folded into
//!   its B (one rounding per element).

use crate::nets::layers::Params;
use crate::nets::lora::{adapter_names, LoraConfig};
use anyhow::{anyhow, Result};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;

/// A module's checked adapter: A `[r, …]`, B `[out, r, …]`, and its own alpha if the file has one.
pub struct Checked {
    pub a: Tensor,
    pub b: Tensor,
    pub alpha: Option<f64>,
}

impl Checked {
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }
}

/// The modules brought to one rank and alpha.
pub struct Unified {
    pub cfg: LoraConfig,
    /// `PATH.lora_A.weight` / `PATH.lora_B.weight` of every module, in the file's dtypes.
    pub params: Params,
    /// Modules whose B absorbed a scale ratio.
    pub rescaled: Vec<String>,
    /// Modules zero-padded to the shared rank.
    pub padded: Vec<String>,
}

/// Unifies `checked` whose alphas are `alphas` (one per module, already resolved).
pub fn unify(checked: BTreeMap<String, Checked>, alphas: &BTreeMap<String, f64>) -> Result<Unified> {
    let rank = checked
        .values()
        .map(Checked::rank)
        .max()
        .ok_or_else(|| anyhow!("no LoRA tensors"))?;
    let effective: BTreeMap<String, f64> = (checked.iter())
        .map(|(m, c)| (m.clone(), alphas[m] * rank as f64 / c.rank() as f64))
        .collect();
    let alpha = most_common(effective.values().copied()).ok_or_else(|| anyhow!("no LoRA tensors"))?;
    let cfg = LoraConfig { rank, alpha };
    cfg.validate()?;
    let mut out = Unified {
        cfg,
        params: Params::new(),
        rescaled: Vec::new(),
        padded: Vec::new(),
    };
    for (module, c) in checked {
        let (own, r) = (effective[&module], c.rank());
        let mut b = c.b;
        if own != alpha {
            out.rescaled.push(module.clone());
            b = (b.to_dtype(DType::F64)? * (own / alpha))?.to_dtype(b.dtype())?;
        }
        let mut a = c.a;
        if r < rank {
            out.padded.push(module.clone());
            a = pad(&a, 0, rank - r)?;
            b = pad(&b, 1, rank - r)?;
        }
        let (a_name, b_name) = adapter_names(&module);
        out.params.insert(a_name, a);
        out.params.insert(b_name, b);
    }
    Ok(out)
}

/// `t` with `extra` zero slices appended along `dim`.
fn pad(t: &Tensor, dim: usize, extra: usize) -> Result<Tensor> {
    let mut shape = t.dims().to_vec();
    shape[dim] = extra;
    let zeros = Tensor::zeros(shape, t.dtype(), t.device())?;
    Ok(Tensor::cat(&[t, &zeros], dim)?)
}

/// The value occurring most often (ties: the smallest).
fn most_common(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for v in values {
        *counts.entry(v.to_bits()).or_default() += 1;
    }
    let best = counts.values().copied().max()?;
    counts
        .into_iter()
        .find(|&(_, n)| n == best)
        .map(|(bits, _)| f64::from_bits(bits))
}
