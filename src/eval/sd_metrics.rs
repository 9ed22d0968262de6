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
use anyhow::{Context, Result};
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

/// One feature network with the teacher's (and real images') features.
struct Reference<'a> {
    net: &'a dyn FeatureNet,
    teacher: Tensor,
    teacher_matrix: DMatrix<f64>,
    real: Option<DMatrix<f64>>,
}

/// Scores sample sets against the teacher's samples.
pub struct Scorer<'a> {
    references: Vec<Reference<'a>>,
    prompt_features: Option<Tensor>,
    aesthetic: Option<&'a AestheticPredictor>,
    batch: usize,
}

/// A feature network's FD and KD column stems (`fid`, `kd_inception`; `fd_dinov2`, …).
fn stems(net: &dyn FeatureNet) -> (String, String) {
    match net.name() {
        "inception" => ("fid".into(), "kd_inception".into()),
        name => (format!("fd_{name}"), format!("kd_{name}")),
    }
}

impl<'a> Scorer<'a> {
    /// Features of the teacher's images `[B, 3, H, W]` u8, of real images and of the prompts.
    pub fn new(nets: &MetricNets<'a>, teacher_images: &Tensor, prompts: &[String], batch: usize) -> Result<Self> {
        let clip_net = nets.clip.map(|c| c as &dyn FeatureNet);
        let mut references = Vec::new();
        for net in [nets.inception, nets.dinov2, clip_net].into_iter().flatten() {
            let teacher = image_features(net, teacher_images, batch)?;
            let real = match nets.real {
                Some(files) => Some(to_matrix(&files_features(net, files, batch).context("--real")?)?),
                None => None,
            };
            references.push(Reference {
                net,
                teacher_matrix: to_matrix(&teacher)?,
                teacher,
                real,
            });
        }
        let prompt_features = match nets.clip {
            Some(clip) => Some(text_features(clip, prompts, batch)?),
            None => None,
        };
        Ok(Self {
            references,
            prompt_features,
            aesthetic: nets.aesthetic,
            batch,
        })
    }

    /// Every column for images `[B, 3, H, W]` u8, one per prompt, row i from the teacher's noise i.
    pub fn score(&self, images: &Tensor) -> Result<BTreeMap<String, f64>> {
        let mut scores = BTreeMap::new();
        let mut clip_features = None;
        for r in &self.references {
            let features = image_features(r.net, images, self.batch)?;
            let matrix = to_matrix(&features)?;
            let (fd, kd) = stems(r.net);
            distances(&mut scores, &matrix, &r.teacher_matrix, &fd, &kd, "vs_teacher")?;
            if let Some(real) = &r.real {
                distances(&mut scores, &matrix, real, &fd, &kd, "vs_real")?;
            }
            if r.net.name() == "dinov2" {
                let (mean, half) = paired_distance(&features, &r.teacher)?;
                scores.insert("dino_ode_distance".into(), mean);
                scores.insert("dino_ode_distance_ci95".into(), half);
            }
            if r.net.name() == "clip" {
                clip_features = Some(features);
            }
        }
        if let (Some(features), Some(text)) = (&clip_features, &self.prompt_features) {
            let cos = cosine_scores(features, text)?;
            scores.insert("clip_cosine".into(), mean(&cos) / 100.0);
        }
        if let (Some(features), Some(aesthetic)) = (&clip_features, self.aesthetic) {
            scores.insert("aesthetic".into(), mean(&aesthetic.scores(features)?));
        }
        Ok(scores)
    }

    /// FD between the two halves of the teacher's own samples, per network: the floor below
    /// which a difference in FD at this sample count is estimator noise.
    pub fn fd_floors(&self) -> Result<Vec<(String, usize, f64)>> {
        let mut floors = Vec::new();
        for r in &self.references {
            let n = r.teacher_matrix.nrows() / 2;
            if n < 2 {
                continue;
            }
            let (a, b) = (
                r.teacher_matrix.rows(0, n).into_owned(),
                r.teacher_matrix.rows(n, n).into_owned(),
            );
            floors.push((stems(r.net).0, n, frechet_distance(&a, &b)?));
        }
        Ok(floors)
    }

    pub fn has_networks(&self) -> bool {
        !self.references.is_empty()
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

/// Mean and 95 % normal-approximation half-width of the per-row Euclidean distances.
fn paired_distance(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    let d: Vec<f32> = (a - b)?.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
    let d: Vec<f64> = d.into_iter().map(f64::from).collect();
    let m = mean(&d);
    let n = d.len() as f64;
    if d.len() < 2 {
        return Ok((m, f64::NAN));
    }
    let var = d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    Ok((m, 1.96 * (var / n).sqrt()))
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
