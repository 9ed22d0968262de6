//! Medians over repeats after warm-up, and the process's peak memory: how every benchmark
//! workload is measured.

use anyhow::Result;
use candle_core::Device;
use serde::Serialize;
use std::time::Instant;

/// One timed workload.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    pub name: String,
    /// Median seconds per repeat.
    pub seconds: f64,
    /// Samples processed per second (per repeat: the batch).
    pub samples_per_second: f64,
    pub teacher_evaluations: Option<u64>,
    /// Distillation steps: the grid indices n (start timestep `T − n k`) of each timed step's
    /// rows, which decide a Direct step's work (a reference run repeats them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starts: Option<Vec<Vec<usize>>>,
}

impl Workload {
    /// `name` taking a median of `seconds` per batch of `batch` samples, no teacher counted.
    pub fn timed(name: impl Into<String>, seconds: f64, batch: usize) -> Self {
        Self {
            name: name.into(),
            seconds,
            samples_per_second: batch as f64 / seconds,
            teacher_evaluations: None,
            starts: None,
        }
    }
}

/// The upper median (the middle value; of two, the larger): `v` must not be empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds of each of `repeats` runs of `f` after `warmup` runs, each waiting for `device`
/// to finish (GPU work is queued asynchronously).
pub fn times(device: &Device, warmup: usize, repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    device.synchronize()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// Median seconds of `f` over `repeats` runs after `warmup` runs (see [`times`]).
pub fn time(device: &Device, warmup: usize, repeats: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    Ok(median(times(device, warmup, repeats, f)?))
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_memory_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
