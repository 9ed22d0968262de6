//! Graceful stop: SIGINT / SIGTERM set a flag that training loops check after
//! each step, so they can save a checkpoint and exit instead of dying mid-write.

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
    pub step: usize,
    pub dir: std::path::PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let name = if self.signal == SIGINT { "SIGINT" } else { "SIGTERM" };
        write!(
            f,
            "stopped by {name} after step {}; checkpoint saved, continue with --resume {}",
            self.step,
            self.dir.display()
        )
    }
}

impl std::error::Error for Interrupted {}
