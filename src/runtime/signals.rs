//! Graceful stop: SIGINT / SIGTERM set a flag that training loops check after each step and
//! between the micro-batches of a step, so they can save the last completed step's checkpoint
//! and exit instead of dying mid-write; long work outside training (data encoding, sampling,
//! evaluation) checks between its steps and before every Stable Diffusion UNet call, so a stop
//! is honoured within one network call. One network call can last minutes (a large UNet on
//! a CPU), so a watchdog ends the process `GRACE` after the signal if the work has not
//! stopped by then: every file dcm writes is written atomically (a write in progress is let
//! finish), and a training run whose steps outlast `GRACE` saves after every step, so the
//! forced stop still leaves the last completed step's checkpoint.

/// How long a stop waits for the work to reach a point where it stops cleanly.
pub const GRACE: Duration = Duration::from_secs(3);

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub const SIGINT: usize = 2;
pub const SIGTERM: usize = 15;

/// The signal number received, or 0.
pub fn flag() -> &'static Arc<AtomicUsize> {
    static FLAG: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicUsize::new(0)))
}

/// Routes SIGINT and SIGTERM to the flag and starts the watchdog (called once by the binary).
pub fn install() -> std::io::Result<()> {
    signal_hook::flag::register_usize(signal_hook::consts::SIGINT, flag().clone(), SIGINT)?;
    signal_hook::flag::register_usize(signal_hook::consts::SIGTERM, flag().clone(), SIGTERM)?;
    std::thread::Builder::new()
        .name("dcm-stop-watchdog".into())
        .spawn(watchdog)?;
    Ok(())
}

/// Waits for a signal, gives the work `GRACE` to stop cleanly, lets a file being written
/// finish, then ends the process with 128 + signal, saying what was kept.
fn watchdog() {
    let signal = loop {
        match requested() {
            Some(signal) => break signal,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    std::thread::sleep(GRACE);
    while WRITING.load(Ordering::SeqCst) > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let kept = saved().lock().map(|k| k.clone()).unwrap_or_default();
    let kept = kept.unwrap_or_else(|| "nothing was written".into());
    eprintln!(
        "stopped by {} during work that could not stop within {} s (one long network call); {kept}",
        signal_name(signal),
        GRACE.as_secs()
    );
    std::process::exit(128 + signal as i32);
}

/// Files being written now (`Writing` guards): the watchdog waits for them.
static WRITING: AtomicUsize = AtomicUsize::new(0);

/// Held while a file is written.
pub struct Writing(());

impl Writing {
    pub fn start() -> Self {
        WRITING.fetch_add(1, Ordering::SeqCst);
        Self(())
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        WRITING.fetch_sub(1, Ordering::SeqCst);
    }
}

fn saved() -> &'static Mutex<Option<String>> {
    static SAVED: OnceLock<Mutex<Option<String>>> = OnceLock::new();
    SAVED.get_or_init(|| Mutex::new(None))
}

/// Records what a forced stop leaves behind (a training run's latest checkpoint).
pub fn record_saved(what: String) {
    if let Ok(mut s) = saved().lock() {
        *s = Some(what);
    }
}

fn continuation() -> &'static Mutex<Option<String>> {
    static HOW: OnceLock<Mutex<Option<String>>> = OnceLock::new();
    HOW.get_or_init(|| Mutex::new(None))
}

/// How to continue work that a larger run holds (a study's training runs): the forced-stop
/// message then gives `how` instead of the training run's own `--resume DIR`.
pub fn continue_with(how: String) {
    if let Ok(mut s) = continuation().lock() {
        *s = Some(how);
    }
}

/// `--resume DIR` for a training run in `dir`, or what `continue_with` set.
pub fn continue_text(dir: &std::path::Path) -> String {
    let how = continuation().lock().ok().and_then(|s| s.clone());
    how.unwrap_or_else(|| format!("--resume {}", dir.display()))
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
