//! The sample-quality columns of a Stable Diffusion evaluation, laid out as the paper's table
//! (docs/MATHEMATICS.md, "Metrics of sample quality"): for each metric network given, the
//! Fréchet distance and the kernel distance of a sample set's features to the teacher's samples
//! (and to real images) — FID on pytorch-fid's Inception-v3, FD-DINOv2, and dcm's own FD on
//! CLIP features —; the CLIP score as the paper reports it, the raw cosine between image and
//! prompt embeddings (`clip_cosine`, not torchmetrics' 100·cos); the LAION aesthetic score; and,
//! beyond the paper, a perceptual ODE error: the DINOv2-feature distance between each sample
//! and the teacher's sample from the same noise (paired; mean and a 95 % normal interval).

use super::image_files::files_features;
use super::metrics::fd::frechet_distance;
use super::metrics::kd::kernel_distance;
use super::metrics::to_matrix;
use crate::nets::aesthetic::AestheticPredictor;
use crate::nets::feature_net::FeatureNet;
use crate::nets::layers::map_chunks;
use crate::nets::sd::clip_model::{cosine_scores, ClipModel};
use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The paper's sample count per FD (about 10,000 captions, one sample each).
pub const PAPER_SAMPLES: usize = 10_000;

/// The networks an evaluation scores with; each absent one leaves its columns out.
#[derive(Default)]
pub struct MetricNets<'a> {
    pub clip: Option<&'a ClipModel>,
    pub inception: Option<&'a dyn FeatureNet>,
    pub dinov2: Option<&'a dyn FeatureNet>,
    pub aesthetic: Option<&'a AestheticPredictor>,
    /// Real images, scored by every feature network for the `_vs_real` columns.
    pub real: Option<&'a [PathBuf]>,
}

/// Scores sample sets against the teacher's samples, a block of rows at a time.
pub struct Scorer<'a> {
    /// Inception, DINOv2 and CLIP (those given), in that order.
    nets: Vec<&'a dyn FeatureNet>,
    /// Each network's features of the real images, when given.
    real: Vec<Option<DMatrix<f64>>>,
    clip: Option<&'a ClipModel>,
    aesthetic: Option<&'a AestheticPredictor>,
    batch: usize,
}

/// What one model's samples contribute to its row, gathered block by block: each network's
/// features (a few KB per sample, so paper-sized sets fit where their images would not), and
/// the per-sample CLIP cosine, aesthetic score and DINOv2 distance to the teacher's sample.
#[derive(Default)]
pub struct Tally {
    features: Vec<Vec<Tensor>>,
    cosines: Vec<f64>,
    aesthetic: Vec<f64>,
    dino_distances: Vec<f64>,
}

/// Each network's features `[r, D]` of one block of images, in the scorer's network order.
pub struct BlockFeatures(Vec<Tensor>);

/// A feature network's FD and KD column stems (`fid`, `kd_inception`; `fd_dinov2`, …).
fn stems(net: &dyn FeatureNet) -> (String, String) {
    match net.name() {
        "inception" => ("fid".into(), "kd_inception".into()),
        name => (format!("fd_{name}"), format!("kd_{name}")),
    }
}

impl<'a> Scorer<'a> {
    /// The networks of `nets`, with their features of the real images.
    pub fn new(nets: &MetricNets<'a>, batch: usize) -> Result<Self> {
        let clip_net = nets.clip.map(|c| c as &dyn FeatureNet);
        let feature_nets: Vec<&dyn FeatureNet> =
            [nets.inception, nets.dinov2, clip_net].into_iter().flatten().collect();
        let real = feature_nets
            .iter()
            .map(|net| match nets.real {
                Some(files) => Ok(Some(to_matrix(&files_features(*net, files, batch).context("--real")?)?)),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            nets: feature_nets,
            real,
            clip: nets.clip,
            aesthetic: nets.aesthetic,
            batch,
        })
    }

    /// Every network's features of images `[r, 3, H, W]` u8.
    pub fn features(&self, images: &Tensor) -> Result<BlockFeatures> {
        let features = self.nets.iter().map(|net| image_features(*net, images, self.batch));
        Ok(BlockFeatures(features.collect::<Result<Vec<_>>>()?))
    }

    /// CLIP text features of a block's prompts, when CLIP is given.
    pub fn prompt_features(&self, prompts: &[String]) -> Result<Option<Tensor>> {
        self.clip
            .map(|clip| text_features(clip, prompts, self.batch))
            .transpose()
    }

    /// Adds a block of samples (`features`), row i from the same noise as row i of the
    /// teacher's block (`teacher`), with one prompt per row (`prompts`), to `tally`.
    pub fn add(
        &self,
        tally: &mut Tally,
        features: &BlockFeatures,
        teacher: &BlockFeatures,
        prompts: Option<&Tensor>,
    ) -> Result<()> {
        tally.features.resize_with(self.nets.len(), Vec::new);
        for (i, net) in self.nets.iter().enumerate() {
            let f = &features.0[i];
            tally.features[i].push(f.clone());
            match net.name() {
                "dinov2" => tally.dino_distances.extend(paired_distances(f, &teacher.0[i])?),
                "clip" => {
                    if let Some(text) = prompts {
                        tally.cosines.extend(cosine_scores(f, text)?.iter().map(|c| c / 100.0));
                    }
                    if let Some(aesthetic) = self.aesthetic {
                        tally.aesthetic.extend(aesthetic.scores(f)?);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Every column of a model's `tally` against the teacher's.
    pub fn scores(&self, tally: &Tally, teacher: &Tally) -> Result<BTreeMap<String, f64>> {
        let mut scores = BTreeMap::new();
        for (i, net) in self.nets.iter().enumerate() {
            let matrix = tally.matrix(i)?;
            let (fd, kd) = stems(*net);
            distances(&mut scores, &matrix, &teacher.matrix(i)?, &fd, &kd, "vs_teacher")?;
            if let Some(real) = &self.real[i] {
                distances(&mut scores, &matrix, real, &fd, &kd, "vs_real")?;
            }
        }
        if !tally.dino_distances.is_empty() {
            let (mean, half) = mean_and_interval(&tally.dino_distances);
            scores.insert("dino_ode_distance".into(), mean);
            scores.insert("dino_ode_distance_ci95".into(), half);
        }
        if !tally.cosines.is_empty() {
            scores.insert("clip_cosine".into(), mean(&tally.cosines));
        }
        if !tally.aesthetic.is_empty() {
            scores.insert("aesthetic".into(), mean(&tally.aesthetic));
        }
        Ok(scores)
    }

    /// FD between the two halves of the teacher's own samples, per network: the floor below
    /// which a difference in FD at this sample count is estimator noise.
    pub fn fd_floors(&self, teacher: &Tally) -> Result<Vec<(String, usize, f64)>> {
        let mut floors = Vec::new();
        for (i, net) in self.nets.iter().enumerate() {
            let all = teacher.matrix(i)?;
            let n = all.nrows() / 2;
            if n < 2 {
                continue;
            }
            let (a, b) = (all.rows(0, n).into_owned(), all.rows(n, n).into_owned());
            floors.push((stems(*net).0, n, frechet_distance(&a, &b)?));
        }
        Ok(floors)
    }

    pub fn has_networks(&self) -> bool {
        !self.nets.is_empty()
    }
}

impl Tally {
    /// Network i's features of every sample so far, one row per sample.
    fn matrix(&self, i: usize) -> Result<DMatrix<f64>> {
        let blocks = self.features.get(i).map(Vec::as_slice).unwrap_or_default();
        ensure!(!blocks.is_empty(), "no samples were scored");
        to_matrix(&Tensor::cat(blocks, 0)?)
    }
}

/// FD and KD of `x` to `y` under `{stem}_{suffix}`; with fewer than 2 samples (no Gaussian
/// fit) both are left out and the notes say why.
fn distances(
    scores: &mut BTreeMap<String, f64>,
    x: &DMatrix<f64>,
    y: &DMatrix<f64>,
    fd: &str,
    kd: &str,
    suffix: &str,
) -> Result<()> {
    if x.nrows() >= 2 && y.nrows() >= 2 {
        scores.insert(format!("{fd}_{suffix}"), frechet_distance(x, y)?);
        scores.insert(format!("{kd}_{suffix}"), kernel_distance(x, y)?);
    }
    Ok(())
}

/// The Euclidean distance between row i of `a` and row i of `b`.
fn paired_distances(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
    let d: Vec<f32> = (a - b)?.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
    Ok(d.into_iter().map(f64::from).collect())
}

/// Mean and 95 % normal-approximation half-width (NaN for fewer than 2 values).
fn mean_and_interval(d: &[f64]) -> (f64, f64) {
    let m = mean(d);
    let n = d.len() as f64;
    if d.len() < 2 {
        return (m, f64::NAN);
    }
    let var = d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, 1.96 * (var / n).sqrt())
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// A network's features `[B, D]` f32 on the CPU of images `[B, 3, H, W]` u8.
pub fn image_features(net: &dyn FeatureNet, images: &Tensor, batch: usize) -> Result<Tensor> {
    map_chunks(images, batch.max(1), |x| {
        let unit = (x.to_dtype(DType::F32)? / 255.0)?;
        Ok(net.features(&unit)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    })
}

/// CLIP text features `[B, P]` f32 on the CPU, `batch` prompts at a time.
fn text_features(clip: &ClipModel, prompts: &[String], batch: usize) -> Result<Tensor> {
    let parts = prompts
        .chunks(batch.max(1))
        .map(|p| Ok(clip.text_features(p)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}
