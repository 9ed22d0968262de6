//! The peak memory of encoding a data folder, measured (not timed): 200 and 2,000 images of
//! 512² on disk, encoded at 64² by the tiny SD 1 fixture's VAE, each in a fresh child process
//! that reports its peak resident size (`VmHWM`). The streamed encoding is compared with the
//! old way, every image decoded before the first encode. Run on demand (a few minutes):
//! `cargo test --release --lib -- --ignored stream_memory::peak`; docs/PERFORMANCE.md holds
//! the numbers.

use super::latents::encode_folder;
use super::pipeline::Pipeline;
use crate::data::captioned::{load_chunk, Folder, FolderOptions};
use crate::runtime::device::Runtime;
use anyhow::{Context, Result};
use candle_core::Tensor;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

const RESOLUTION: usize = 64;
const FILE_SIDE: u32 = 512;

fn fixture() -> Result<Pipeline> {
    Pipeline::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/sd1"))
}

/// `n` captioned 512² JPEG images with smooth, distinct colours.
fn make_folder(dir: &Path, n: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    (0..n).into_par_iter().try_for_each(|i| -> Result<()> {
        let img = image::RgbImage::from_fn(FILE_SIDE, FILE_SIDE, |x, y| {
            image::Rgb([(x / 2) as u8, (y / 2) as u8, (i * 37 % 256) as u8])
        });
        img.save(dir.join(format!("{i:05}.jpg")))?;
        std::fs::write(dir.join(format!("{i:05}.txt")), format!("image {i}"))?;
        Ok(())
    })
}

fn peak_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("VmHWM")?.parse()?)
}

/// The old way: every image decoded into one tensor, then encoded 8 at a time.
fn encode_all_at_once(pipeline: &Pipeline, rt: &Runtime, folder: &Folder) -> Result<(Tensor, Tensor)> {
    let images = load_chunk(&folder.entries, RESOLUTION)?;
    let vae = pipeline.vae(rt)?;
    let n = images.dim(0)?;
    let (mut means, mut stds) = (Vec::new(), Vec::new());
    for start in (0..n).step_by(8) {
        let (m, s) = vae.encode(&images.narrow(0, start, 8.min(n - start))?)?;
        means.push(m);
        stds.push(s);
    }
    Ok((Tensor::cat(&means, 0)?, Tensor::cat(&stds, 0)?))
}

/// The child: encodes DCM_MEMORY_DIR the DCM_MEMORY_MODE way and prints its peak.
#[test]
#[ignore = "a child of peak_memory_grows_by_the_latents_only"]
fn child_encodes_and_reports() -> Result<()> {
    let dir = PathBuf::from(std::env::var("DCM_MEMORY_DIR")?);
    let (pipeline, rt) = (fixture()?, Runtime::default());
    let folder = Folder::read(&dir, &FolderOptions::default())?;
    if std::env::var("DCM_MEMORY_MODE")? == "stream" {
        encode_folder(&pipeline, &rt, &folder, RESOLUTION, &dir.with_extension("cache"))?;
    } else {
        encode_all_at_once(&pipeline, &rt, &folder)?;
    }
    println!("peak_kib={}", peak_kib()?);
    Ok(())
}

fn child_peak(dir: &Path, mode: &str) -> Result<u64> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "--nocapture",
            "models::sd::stream_memory::child_encodes_and_reports",
        ])
        .env("DCM_MEMORY_DIR", dir)
        .env("DCM_MEMORY_MODE", mode)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let peak = text.lines().find_map(|l| l.strip_prefix("peak_kib="));
    peak.with_context(|| format!("child failed: {text}{}", String::from_utf8_lossy(&out.stderr)))?
        .trim()
        .parse()
        .context("peak")
}

/// Streaming: going from 200 to 2,000 images adds no more than the extra images' latents
/// (mean and std, f32) plus 64 MiB of slack, where decoding everything first adds their pixels too.
#[test]
#[ignore = "minutes of CPU: a measurement for docs/PERFORMANCE.md"]
fn peak_memory_grows_by_the_latents_only() -> Result<()> {
    let root = std::env::temp_dir().join(format!("dcm-stream-memory-{}", std::process::id()));
    let (small, large) = (root.join("n200"), root.join("n2000"));
    make_folder(&small, 200)?;
    make_folder(&large, 2000)?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut peaks = Vec::new();
    for mode in ["stream", "all"] {
        let (a, b) = (child_peak(&small, mode)?, child_peak(&large, mode)?);
        println!("{mode}: 200 images {:.0} MiB, 2000 images {:.0} MiB", mib(a), mib(b));
        peaks.push((a, b));
    }
    // 4 channels × (64/2)² per latent, mean and std, f32.
    let latents_kib = 1800.0 * (2 * 4 * 32 * 32 * 4) as f64 / 1024.0;
    let growth = peaks[0].1 as f64 - peaks[0].0 as f64;
    assert!(
        growth <= latents_kib + 64.0 * 1024.0,
        "streamed peak grew {:.0} MiB for {:.0} MiB of latents",
        growth / 1024.0,
        latents_kib / 1024.0
    );
    std::fs::remove_dir_all(&root)?;
    Ok(())
}
