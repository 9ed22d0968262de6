//! A run's checkpoint: every tensor of its state plus a JSON record, in one
//! safetensors file written atomically. The record includes the content fingerprints of the
//! run's input files (`inputs`), which a resume checks.

use crate::runtime::fingerprint::{changes, describe, Fingerprints};
use crate::runtime::finite::ensure_finite_weights;
use crate::runtime::tensor_file;
use anyhow::{bail, ensure, Context, Result};
use std::io::Read;
use std::path::Path;

/// File name of a run's checkpoint inside its output folder.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

/// Writes tensors plus a JSON state (in the safetensors metadata) as one file, atomically.
pub fn save_checkpoint(path: &Path, tensors: &crate::nets::layers::Params, state: &serde_json::Value) -> Result<()> {
    let meta = std::collections::BTreeMap::from([("dcm_state".to_string(), state.to_string())]);
    let tensors = tensors.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    tensor_file::write(path, tensors, &meta)
}

/// The checkpoint's tensors and its JSON record, read a tensor at a time (a resume holds the
/// training state once, not a second copy of the file).
pub fn load_checkpoint(path: &Path) -> Result<(crate::nets::layers::Params, serde_json::Value)> {
    let bad = || format!("{}: malformed checkpoint", path.display());
    let (tensors, meta) = tensor_file::read(path)?;
    let state = meta.get("dcm_state").with_context(bad)?;
    let state = serde_json::from_str(state).with_context(bad)?;
    let tensors = tensors.into_iter().collect();
    ensure_finite_weights(&tensors, &path.display().to_string())?;
    Ok((tensors, state))
}

/// The JSON record of the checkpoint at `path`, read from its header alone (the tensors can
/// be large).
pub fn read_state(path: &Path) -> Result<serde_json::Value> {
    let bad = || format!("{}: malformed checkpoint", path.display());
    let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot read checkpoint", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).with_context(bad)?;
    let len = u64::from_le_bytes(len);
    ensure!(len <= 100_000_000, "{}", bad());
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).with_context(bad)?;
    let header: serde_json::Value = serde_json::from_slice(&header).with_context(bad)?;
    let state = header["__metadata__"]["dcm_state"].as_str().with_context(bad)?;
    serde_json::from_str(state).with_context(bad)
}

/// What changed between the input fingerprints a checkpoint's record holds and `now`; `None`
/// for a checkpoint made before dcm recorded them.
pub fn input_changes(state: &serde_json::Value, now: &Fingerprints, path: &Path) -> Result<Option<Vec<String>>> {
    let Some(recorded) = state.get("inputs") else {
        return Ok(None);
    };
    let recorded: Fingerprints = serde_json::from_value(recorded.clone())
        .with_context(|| format!("{}: checkpoint has malformed input fingerprints", path.display()))?;
    Ok(Some(changes(&recorded, now)))
}

/// Refuses to resume the run in `dir` on inputs other than its checkpoint's, naming each file
/// that changed; a checkpoint without fingerprints passes (`Ok(false)`: not checked).
pub fn check_inputs(dir: &Path, state: &serde_json::Value, now: &Fingerprints) -> Result<bool> {
    match input_changes(state, now, &dir.join(CHECKPOINT))? {
        None => Ok(false),
        Some(c) if c.is_empty() => Ok(true),
        Some(c) => bail!(
            "--resume {}: the run's inputs changed since its checkpoint: {}; its steps so far were \
             trained on the old files — restore them, or start a new run with --out",
            dir.display(),
            describe(&c)
        ),
    }
}
