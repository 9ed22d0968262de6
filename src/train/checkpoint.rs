//! A run's checkpoint: every tensor of its state plus a JSON record, in one
//! safetensors file written atomically.

use crate::runtime::files::write_atomic;
use crate::runtime::finite::ensure_finite_weights;
use anyhow::{Context, Result};
use std::path::Path;

/// File name of a run's checkpoint inside its output folder.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

/// Writes tensors plus a JSON state (in the safetensors metadata) as one file, atomically.
pub fn save_checkpoint(path: &Path, tensors: &crate::nets::layers::Params, state: &serde_json::Value) -> Result<()> {
    let meta = std::collections::HashMap::from([("dcm_state".to_string(), state.to_string())]);
    let on_cpu = |t: &candle_core::Tensor| t.to_device(&candle_core::Device::Cpu);
    let tensors = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), on_cpu(v)?)))
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(tensors, Some(meta)).context("cannot serialise checkpoint")?;
    write_atomic(path, &bytes)
}

pub fn load_checkpoint(path: &Path) -> Result<(crate::nets::layers::Params, serde_json::Value)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read checkpoint", path.display()))?;
    let bad = || format!("{}: malformed checkpoint", path.display());
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).with_context(bad)?;
    let state = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("dcm_state"))
        .with_context(bad)?;
    let state = serde_json::from_str(state).with_context(bad)?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).with_context(bad)?;
    let tensors = tensors.into_iter().collect();
    ensure_finite_weights(&tensors, &path.display().to_string())?;
    Ok((tensors, state))
}
