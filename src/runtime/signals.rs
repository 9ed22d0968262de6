//! Graceful stop: SIGINT / SIGTERM set a flag that training loops check after each step and
//! between the micro-batches of a step, so they can save the last completed step's checkpoint
//! and exit instead of dying mid-write; long work outside training (data encoding, sampling,
//! evaluation) checks between its steps and before every Stable Diffusion UNet call, so a stop
//! is honoured within one network call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

pub const SIGINT: usize = 2;
pub const SIGTERM: usize = 15;

/// The signal number received, or 0.
pub fn flag() -> &'static Arc<AtomicUsize> {
    static FLAG: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicUsize::new(0)))
}

/// Routes SIGINT and SIGTERM to the flag (called once by the binary).
pub fn install() -> std::io::Result<()> {
    signal_hook::flag::register_usize(signal_hook::consts::SIGINT, flag().clone(), SIGINT)?;
    signal_hook::flag::register_usize(signal_hook::consts::SIGTERM, flag().clone(), SIGTERM)?;
    Ok(())
}

pub fn requested() -> Option<usize> {
    match flag().load(Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// A run stopped by a signal after saving its checkpoint; the binary exits with 128 + signal.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: usize,
    /// The last completed step, the one saved.
    pub step: usize,
    pub dir: std::path::PathBuf,
    /// The stop came between the micro-batches of step `step + 1`, whose partial gradient was
    /// discarded.
    pub mid_step: bool,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let name = signal_name(self.signal);
        let (step, dir) = (self.step, self.dir.display());
        match self.mid_step {
            false => write!(
                f,
                "stopped by {name} after step {step}; checkpoint saved, continue with --resume {dir}"
            ),
            true => write!(
                f,
                "stopped by {name} during step {} (its partial gradient discarded); checkpoint of step \
                 {step} saved, continue with --resume {dir}",
                step + 1
            ),
        }
    }
}

impl std::error::Error for Interrupted {}

pub fn signal_name(signal: usize) -> &'static str {
    if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    }
}

/// Work stopped by a signal with nothing to save; the binary exits with 128 + signal.
#[derive(Debug)]
pub struct Stopped {
    pub signal: usize,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "stopped by {}", signal_name(self.signal))
    }
}

impl std::error::Error for Stopped {}

/// `Err(Stopped)` once SIGINT or SIGTERM has arrived: called between the steps of long work.
/// Data-parallel ranks stop only together, at the end of a training step (the flag travels
/// with the gradients' sum): one rank stopping alone would leave the others waiting for it.
pub fn check() -> anyhow::Result<()> {
    if crate::runtime::ranks::place().size > 1 {
        return Ok(());
    }
    match requested() {
        Some(signal) => Err(Stopped { signal }.into()),
        None => Ok(()),
    }
}
