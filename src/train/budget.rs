//! The memory of a training run of a small network, estimated before its first step: the
//! weights with their gradients and two AdamW moments, and per row of the batch the maps the
//! forward pass keeps for the backward pass and their gradients. The counts are floors (each
//! network's own maps, none of candle's temporaries), so a refusal is certain to be right and a
//! batch the process's memory cannot hold is refused in one line instead of aborting mid-step.

use crate::nets::layers::Params;
use crate::runtime::memory::ensure_fits;
use anyhow::Result;

/// f32 copies of every weight a step holds: the weight, its gradient, AdamW's two moments.
const WEIGHT_COPIES: f64 = 4.0;

/// Refuses `batch` rows of `per_sample` kept f32 values each (plus `params` in training)
/// when they exceed the memory available; the message names `--batch`.
pub fn check_batch(params: &Params, per_sample: f64, batch: usize) -> Result<()> {
    let weights: f64 = params.values().map(|t| t.elem_count() as f64).sum();
    // Each kept map has a gradient of its size during the backward pass.
    let bytes = 4.0 * (WEIGHT_COPIES * weights + 2.0 * per_sample * batch as f64);
    ensure_fits(bytes, &format!("--batch {batch}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// A batch of a trillion rows is refused by name; a small one passes.
    #[test]
    fn absurd_batches_are_refused() {
        let params = Params::from([(
            "w".to_string(),
            Tensor::zeros(1000, candle_core::DType::F32, &Device::Cpu).unwrap(),
        )]);
        assert!(check_batch(&params, 1000.0, 64).is_ok());
        let e = check_batch(&params, 1000.0, 1_000_000_000_000).unwrap_err();
        assert!(e.to_string().starts_with("--batch 1000000000000: needs about"), "{e}");
    }
}
