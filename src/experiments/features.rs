//! `dcm features` and `dcm fd`: any image folder's features under a metric network, and the
//! Fréchet and kernel distances between two sets of images or features, so that two sets can
//! be scored outside an evaluation and the numbers checked file by file against other tools.

use super::args::RuntimeArgs;
use crate::data::npy;
use crate::eval::image_files::{files_features, image_files};
use crate::eval::metric_nets::{load_feature_net, MODEL_HELP};
use crate::eval::metrics::fd::frechet_distance;
use crate::eval::metrics::kd::kernel_distance;
use crate::eval::metrics::to_matrix;
use crate::nets::feature_net::FeatureNet;
use crate::runtime::files::check_output_file;
use crate::runtime::memory::ensure_fits;
use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct FeaturesArgs {
    /// The network: clip:DIR, inception:FILE or dinov2:DIR.
    #[arg(long, value_name = "KIND:PATH")]
    pub model: String,
    /// A folder of PNG/JPEG/WebP images (not its sub-folders); rows in sorted file-name order.
    #[arg(long, value_name = "FOLDER")]
    pub images: PathBuf,
    /// Where to write the features, `[N, D]` f32 .npy.
    #[arg(long)]
    pub out: PathBuf,
    /// Images per network call.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args)]
pub struct FdArgs {
    /// The first set: an image folder, or a `[N, D]` .npy of features (as `dcm features` writes).
    pub a: PathBuf,
    /// The second set, likewise.
    pub b: PathBuf,
    /// The network, for sets that are image folders: clip:DIR, inception:FILE or dinov2:DIR.
    #[arg(long, value_name = "KIND:PATH")]
    pub model: Option<String>,
    /// Images per network call.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn features_command(a: FeaturesArgs) -> Result<()> {
    ensure!(a.batch > 0, "--batch must be positive");
    check_output_file(&a.out, "--out")?;
    let files = image_files(&a.images).with_context(|| format!("--images {}", a.images.display()))?;
    ensure!(!files.is_empty(), "--images {}: no images", a.images.display());
    let net = load_feature_net(&a.model, &a.runtime.runtime()?)?;
    let features = files_features(&*net, &files, a.batch)?;
    npy::write(&a.out, &features)?;
    eprintln!(
        "{} × {} {} features of {} written to {}",
        features.dim(0)?,
        features.dim(1)?,
        net.name(),
        a.images.display(),
        a.out.display()
    );
    Ok(())
}

pub fn fd_command(a: FdArgs) -> Result<()> {
    ensure!(a.batch > 0, "--batch must be positive");
    let needs_net = a.a.is_dir() || a.b.is_dir();
    let net = match (&a.model, needs_net) {
        (Some(spec), _) => Some(load_feature_net(spec, &a.runtime.runtime()?)?),
        (None, true) => anyhow::bail!("--model: an image folder needs a network ({MODEL_HELP})"),
        (None, false) => None,
    };
    let (fa, fb) = (
        set_features(&a.a, net.as_deref(), a.batch)?,
        set_features(&a.b, net.as_deref(), a.batch)?,
    );
    check_fd_memory(&a, &fa, &fb)?;
    let x = to_matrix(&fa)?;
    let y = to_matrix(&fb)?;
    ensure!(
        x.ncols() == y.ncols(),
        "{} has {}-wide features, {} {}-wide",
        a.a.display(),
        x.ncols(),
        a.b.display(),
        y.ncols()
    );
    let (fd, kd) = (frechet_distance(&x, &y)?, kernel_distance(&x, &y)?);
    println!(
        "fd {fd:.6}\nkd {kd:.6e}\nn_a {}\nn_b {}\ndim {}",
        x.nrows(),
        y.nrows(),
        x.ncols()
    );
    Ok(())
}

/// f64 matrices of D × D values FD holds at its peak (both covariances, the square root's
/// eigendecomposition and products, the cross term's).
const FD_SQUARE_MATRICES: f64 = 8.0;

/// Refuses, naming the sets, features whose FD cannot fit in memory: its D × D matrices and
/// both sets as f64 (twice while centred).
fn check_fd_memory(a: &FdArgs, x: &Tensor, y: &Tensor) -> Result<()> {
    let d = x.dim(1)? as f64;
    let rows = (x.dim(0)? + y.dim(0)?) as f64;
    let bytes = 8.0 * (FD_SQUARE_MATRICES * d * d + 2.0 * rows * d);
    ensure_fits(
        bytes,
        &format!("{} and {} ({d}-wide features)", a.a.display(), a.b.display()),
    )
}

/// An image folder's features under `net`, or a feature file's rows.
fn set_features(path: &Path, net: Option<&dyn FeatureNet>, batch: usize) -> Result<Tensor> {
    let t = match net.filter(|_| path.is_dir()) {
        Some(net) => files_features(net, &image_files(path)?, batch)?,
        None => npy::read(path)
            .with_context(|| format!("{}: neither an image folder nor a .npy feature file", path.display()))?,
    };
    ensure!(
        t.dims().len() == 2 && t.dim(0)? >= 2,
        "{}: {:?} features; FD and KD need [N ≥ 2, D]",
        path.display(),
        t.dims()
    );
    Ok(t)
}
