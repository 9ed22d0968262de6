//! The paper's table for a few-step student of a Stable Diffusion teacher: at each step
//! count K, the student's ODE-solving error (latent MSE against the teacher's N-interval
//! guided solve from the same noise, the mean over all latent elements as the paper's code
//! computes it), the Fréchet distance of CLIP image features to the teacher's samples (and
//! optionally to real images), and the CLIP score of its images against their prompts;
//! beside the teacher's own row. The student is any `Denoiser` (a UNet with a LoRA file's
//! adapters, or one being distilled in memory), sampled by the multistep consistency sampler.

use super::metrics::fd::frechet_distance;
use super::metrics::to_matrix;
use super::ode_error::ode_error;
use super::sd_reference::{quantize, reference_samples, teacher_solve, Reference, ReferenceCache, ReferenceKey};
use crate::consistency::sampler::{multistep_sample_with, picked_timesteps, Picking};
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::schedule::Schedule;
use crate::diffusion::teacher_ode::TeacherOde;
use crate::models::sd::images::decode_with;
use crate::models::sd::text::NullText;
use crate::models::sd::SdTeacher;
use crate::nets::layers::map_chunks;
use crate::nets::sd::clip_model::{clip_score_of, cosine_scores, ClipModel};
use crate::runtime::device::Runtime;
use crate::runtime::noise::{renoise_rng, standard_normal};
use crate::runtime::progress;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::ProgressBar;
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// What to evaluate and how; `run` evaluates one student with it.
pub struct SdEvalSetup<'a> {
    pub teacher: &'a SdTeacher,
    pub rt: &'a Runtime,
    /// The teacher's solve the students are measured against (and the student's grid N).
    pub ode: TeacherOde,
    /// The unconditional input of the teacher's guidance.
    pub null: NullText,
    /// One prompt per noise row.
    pub prompts: &'a [String],
    /// Initial latents x_T `[B, C, h, w]`, shared by the teacher and every student.
    pub noise: &'a Tensor,
    /// Student step counts K.
    pub steps: Vec<usize>,
    /// How the K sampler timesteps are picked from the N-interval grid (LoRA students of SD
    /// teachers: `Floor`, as diffusers' LCMScheduler).
    pub picking: Picking,
    /// The re-noise stream between sampler steps is `renoise_rng(seed)`.
    pub seed: u64,
    /// Rows per UNet, VAE and CLIP call.
    pub batch: usize,
    /// Without it, the CLIP columns are absent.
    pub clip: Option<&'a ClipModel>,
    /// CLIP image features of real images (`real_image_features`), for FD against them.
    pub real: Option<&'a DMatrix<f64>>,
    pub reference: ReferenceCache,
}

/// One row of the table; a metric that could not be computed is `None` (the notes say why).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SdEvalRow {
    /// "teacher" or "student".
    pub model: String,
    /// Student: sampler steps K; teacher: solver intervals N.
    pub steps: usize,
    pub unet_evals_per_sample: usize,
    pub ode_error: f64,
    pub fd_clip_vs_teacher: Option<f64>,
    pub fd_clip_vs_real: Option<f64>,
    pub clip_score: Option<f64>,
    /// Wall time of sampling and decoding (teacher: 0 when its samples came from the cache).
    pub seconds: f64,
}

/// A student's samples at K steps: latents `[B, C, h, w]` f32 and images `[B, 3, H, W]` u8.
pub struct StudentSamples {
    pub steps: usize,
    pub latents: Tensor,
    pub images: Tensor,
}

pub struct SdEvaluation {
    /// The teacher's row first, then one per K.
    pub rows: Vec<SdEvalRow>,
    /// Why a column is absent.
    pub notes: Vec<String>,
    pub reference: Reference,
    pub samples: Vec<StudentSamples>,
}

/// The metrics every sample set is scored with: text features of the prompts and image
/// features of the teacher's samples (and real images).
struct ClipMetrics<'a> {
    clip: &'a ClipModel,
    text: Tensor,
    teacher_features: Tensor,
    teacher: DMatrix<f64>,
    real: Option<&'a DMatrix<f64>>,
}

/// (FD to the teacher's samples, FD to real images, CLIP score) of one sample set.
type Scores = (Option<f64>, Option<f64>, Option<f64>);

impl ClipMetrics<'_> {
    fn score(&self, images: &Tensor, batch: usize) -> Result<Scores> {
        self.score_features(&image_features(self.clip, images, batch)?)
    }

    fn score_features(&self, features: &Tensor) -> Result<Scores> {
        let clip_score = clip_score_of(&cosine_scores(features, &self.text)?);
        let feats = to_matrix(features)?;
        // A Gaussian fit needs two samples; with one, FD is left out (see the notes).
        let fd = |other: &DMatrix<f64>| {
            (feats.nrows() >= 2)
                .then(|| frechet_distance(&feats, other))
                .transpose()
        };
        Ok((
            fd(&self.teacher)?,
            self.real.map(fd).transpose()?.flatten(),
            Some(clip_score),
        ))
    }
}

/// CLIP image features `[B, P]` f32 on the CPU, `batch` images at a time.
pub fn image_features(clip: &ClipModel, images: &Tensor, batch: usize) -> Result<Tensor> {
    map_chunks(images, batch.max(1), |x| {
        Ok(clip.image_features(x)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
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

/// A transformers `CLIPModel` folder in f32 on `rt`'s device (metrics keep full precision);
/// a folder of another kind is a one-line error saying what CLIP_DIR must hold.
pub fn load_clip(dir: &Path, rt: &Runtime) -> Result<ClipModel> {
    const EXPECTED: &str = "expected a transformers CLIPModel folder: config.json with text_config and vision_config, model.safetensors, vocab.json, merges.txt, preprocessor_config.json";
    ensure!(dir.is_dir(), "{}: not a folder ({EXPECTED})", dir.display());
    if dir.join("model_index.json").is_file() {
        bail!(
            "{}: a diffusers pipeline folder, not a CLIP model ({EXPECTED})",
            dir.display()
        );
    }
    ensure!(
        dir.join("config.json").is_file(),
        "{}: no config.json ({EXPECTED})",
        dir.display()
    );
    ClipModel::from_dir(dir, &rt.device, Some(DType::F32))
}

/// CLIP image features of every PNG/JPEG file in `dir` (not its sub-folders), sorted by name.
pub fn real_image_features(clip: &ClipModel, dir: &Path, batch: usize) -> Result<DMatrix<f64>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
            p.is_file() && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    ensure!(
        files.len() >= 2,
        "{}: {} PNG/JPEG images; FD needs at least 2",
        dir.display(),
        files.len()
    );
    let mut parts = Vec::new();
    for chunk in files.chunks(batch.max(1)) {
        crate::runtime::signals::check()?;
        let pixels = chunk
            .iter()
            .map(|f| {
                let img = image::open(f).with_context(|| format!("{}: cannot decode image", f.display()))?;
                clip.processor().preprocess(&img, clip.device())
            })
            .collect::<Result<Vec<_>>>()?;
        let embeds = clip.image_embeds(&Tensor::stack(&pixels, 0)?)?;
        parts.push(embeds.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
    }
    to_matrix(&Tensor::cat(&parts, 0)?)
}

/// A denoiser that advances a progress bar by the rows of every call.
struct Ticking<'a> {
    inner: &'a dyn Denoiser,
    bar: &'a ProgressBar,
}

impl Denoiser for Ticking<'_> {
    fn schedule(&self) -> &Schedule {
        self.inner.schedule()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn eps(&self, x: &Tensor, t: &[usize], cond: &Condition) -> Result<Tensor> {
        let out = self.inner.eps(x, t, cond)?;
        self.bar.inc(t.len() as u64);
        Ok(out)
    }
    /// Forwarded, so a network's own batching of the two halves is kept.
    fn eps_guided(&self, x: &Tensor, t: &[usize], cond: &Condition, w: f64) -> Result<Tensor> {
        let out = self.inner.eps_guided(x, t, cond, w)?;
        self.bar.inc(t.len() as u64);
        Ok(out)
    }
}

/// The K-step consistency sampler on every row, `batch` rows at a time. The re-noise of
/// step i is row-sliced from one `[B, …]` draw per step from `renoise_rng(seed)`, so the
/// samples equal one unchunked run's whatever the batch.
pub fn student_samples(
    student: &dyn Denoiser,
    noise: &Tensor,
    cond: &Condition,
    ts: &[usize],
    seed: u64,
    batch: usize,
) -> Result<Tensor> {
    let mut rng = renoise_rng(seed);
    let draws = (1..ts.len())
        .map(|_| standard_normal(&mut rng, noise.shape().clone(), noise.device()))
        .collect::<Result<Vec<_>>>()?;
    let n = noise.dim(0)?;
    let parts = (0..n)
        .step_by(batch.max(1))
        .map(|start| {
            let len = batch.max(1).min(n - start);
            let mut step = 0;
            let mut renoise = |_: &candle_core::Shape| {
                step += 1;
                Ok(draws[step - 1].narrow(0, start, len)?)
            };
            let x = noise.narrow(0, start, len)?;
            multistep_sample_with(student, &x, ts, &cond.narrow(start, len)?, &mut renoise, &mut |_| ())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

impl SdEvalSetup<'_> {
    /// Noise `[B, C, h, w]` with the UNet's C and a size its levels halve evenly, one prompt
    /// per row, and step counts within 1..=N; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        let cfg = self.teacher.pipeline().unet_config()?;
        let dims = self.noise.dims();
        let levels = 1usize << cfg.block_out_channels.len().saturating_sub(1).min(16);
        let fits = matches!(dims, [b, c, h, w] if *b >= 1 && *c == cfg.in_channels && h % levels == 0 && w % levels == 0 && *h > 0 && *w > 0);
        ensure!(
            fits,
            "--noise: shape {dims:?}, but the teacher's UNet takes latents [B, {}, h, w] with h and w multiples of {levels}",
            cfg.in_channels
        );
        ensure!(
            self.prompts.len() == dims[0],
            "--prompts: {} prompts for {} noise rows",
            self.prompts.len(),
            dims[0]
        );
        ensure!(!self.steps.is_empty(), "--steps: give at least one step count");
        for &k in &self.steps {
            picked_timesteps(self.ode.grid, k, self.picking)?;
        }
        Ok(())
    }

    /// The teacher's row and one row per K for `student`.
    pub fn run(&self, student: &dyn Denoiser) -> Result<SdEvaluation> {
        self.validate()?;
        let cond = self.teacher.condition(self.rt, self.prompts, &self.null, self.noise)?;
        let started = Instant::now();
        let reference = self.reference(&cond)?;
        let teacher_seconds = if reference.from_cache {
            0.0
        } else {
            started.elapsed().as_secs_f64()
        };
        self.say_reference(&reference, teacher_seconds)?;
        let metrics = self.clip_metrics(&reference)?;
        let mut rows = vec![self.teacher_row(&reference, metrics.as_ref(), teacher_seconds)?];
        let mut samples = Vec::new();
        for &k in &self.steps {
            let (row, sample) = self.student_row(student, k, &cond, &reference, metrics.as_ref())?;
            rows.push(row);
            samples.push(sample);
        }
        Ok(SdEvaluation {
            rows,
            notes: self.notes(),
            reference,
            samples,
        })
    }

    /// One line on where the teacher's samples came from.
    fn say_reference(&self, reference: &Reference, seconds: f64) -> Result<()> {
        let dir = self.reference.dir.display();
        if reference.from_cache {
            eprintln!("teacher reference: read from {dir}");
        } else {
            let (rows, evals) = (self.noise.dim(0)?, self.ode.network_evals_per_sample());
            eprintln!(
                "teacher reference: {rows} samples × {evals} UNet evaluations in {seconds:.1} s, cached in {dir}"
            );
        }
        Ok(())
    }

    fn reference(&self, cond: &Condition) -> Result<Reference> {
        let key = ReferenceKey {
            teacher: self.teacher,
            ode: &self.ode,
            null: &self.null,
            dtype: self.rt.dtype,
            prompts: self.prompts,
            noise: self.noise,
        };
        reference_samples(&key, &self.reference, || {
            let rows = self.noise.dim(0)?;
            let bar = progress::bar(rows * self.ode.teacher_calls_per_sample(), "teacher reference solve");
            let ticking = Ticking {
                inner: self.teacher,
                bar: &bar,
            };
            let latents = teacher_solve(&ticking, &self.ode, self.noise, cond, self.batch)?;
            bar.finish_and_clear();
            let images = self.decode(&latents, "teacher reference decode")?;
            Ok((latents, images))
        })
    }

    /// Images u8 of latents through the teacher's VAE, with a progress bar.
    fn decode(&self, latents: &Tensor, what: &str) -> Result<Tensor> {
        let bar = progress::bar(latents.dim(0)?, what);
        let images = decode_with(
            self.teacher.pipeline(),
            self.rt,
            &latents.to_device(&self.rt.device)?,
            &|| bar.inc(1),
        )?;
        bar.finish_and_clear();
        quantize(&images)
    }

    fn clip_metrics(&self, reference: &Reference) -> Result<Option<ClipMetrics<'_>>> {
        let Some(clip) = self.clip else {
            return Ok(None);
        };
        let teacher_features = image_features(clip, &reference.images, self.batch)?;
        Ok(Some(ClipMetrics {
            clip,
            text: text_features(clip, self.prompts, self.batch)?,
            teacher: to_matrix(&teacher_features)?,
            teacher_features,
            real: self.real,
        }))
    }

    fn teacher_row(&self, reference: &Reference, metrics: Option<&ClipMetrics>, seconds: f64) -> Result<SdEvalRow> {
        let (fd_teacher, fd_real, clip_score) = match metrics {
            Some(m) => m.score_features(&m.teacher_features)?,
            None => (None, None, None),
        };
        Ok(SdEvalRow {
            model: "teacher".into(),
            steps: self.ode.intervals(),
            unet_evals_per_sample: self.ode.network_evals_per_sample(),
            // Zero by construction (docs/MATHEMATICS.md, "ODE solving error"), computed rather than written in.
            ode_error: ode_error(&reference.latents, &reference.latents)?,
            fd_clip_vs_teacher: fd_teacher,
            fd_clip_vs_real: fd_real,
            clip_score,
            seconds,
        })
    }

    fn student_row(
        &self,
        student: &dyn Denoiser,
        k: usize,
        cond: &Condition,
        reference: &Reference,
        metrics: Option<&ClipMetrics>,
    ) -> Result<(SdEvalRow, StudentSamples)> {
        let started = Instant::now();
        let ts = picked_timesteps(self.ode.grid, k, self.picking)?;
        let bar = progress::bar(self.noise.dim(0)? * k, &format!("student, {k} steps"));
        let ticking = Ticking {
            inner: student,
            bar: &bar,
        };
        let latents = student_samples(&ticking, self.noise, cond, &ts, self.seed, self.batch)?;
        bar.finish_and_clear();
        let latents = latents.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let images = self.decode(&latents, &format!("student, {k} steps, decode"))?;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("student, {k} steps: sampled and decoded in {seconds:.1} s");
        let (fd_teacher, fd_real, clip_score) = match metrics {
            Some(m) => m.score(&images, self.batch)?,
            None => (None, None, None),
        };
        let row = SdEvalRow {
            model: "student".into(),
            steps: k,
            unet_evals_per_sample: k,
            ode_error: ode_error(&latents, &reference.latents)?,
            fd_clip_vs_teacher: fd_teacher,
            fd_clip_vs_real: fd_real,
            clip_score,
            seconds,
        };
        Ok((
            row,
            StudentSamples {
                steps: k,
                latents,
                images,
            },
        ))
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.clip.is_none() {
            notes.push("CLIP columns absent: no CLIP model given (--clip CLIP_DIR, a transformers CLIPModel folder such as ViT-L/14)".into());
        } else if self.noise.dim(0).unwrap_or(0) < 2 {
            notes.push("FD columns absent: a Gaussian fit needs at least 2 samples".into());
        }
        if self.clip.is_some() && self.real.is_none() {
            notes.push("fd_clip_vs_real absent: no real images given (--real FOLDER)".into());
        }
        notes
    }
}

/// A metric as a table cell: 4 significant digits, empty when absent.
fn cell(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4e}")).unwrap_or_default()
}

impl SdEvaluation {
    /// `eval.csv`: a header and one line per row; absent metrics are empty cells.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "model,steps,unet_evals_per_sample,ode_error,fd_clip_vs_teacher,fd_clip_vs_real,clip_score,seconds\n",
        );
        for r in &self.rows {
            out += &format!(
                "{},{},{},{:e},{},{},{},{:.3}\n",
                r.model,
                r.steps,
                r.unet_evals_per_sample,
                r.ode_error,
                r.fd_clip_vs_teacher.map(|v| format!("{v:e}")).unwrap_or_default(),
                r.fd_clip_vs_real.map(|v| format!("{v:e}")).unwrap_or_default(),
                r.clip_score.map(|v| format!("{v}")).unwrap_or_default(),
                r.seconds
            );
        }
        out
    }

    /// `eval.md`: the table, then the notes.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from(
            "| model | steps | UNet evals / sample | ODE error | FD-CLIP vs teacher | FD-CLIP vs real | CLIP score | s |\n|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            out += &format!(
                "| {} | {} | {} | {:.4e} | {} | {} | {} | {:.1} |\n",
                r.model,
                r.steps,
                r.unet_evals_per_sample,
                r.ode_error,
                cell(r.fd_clip_vs_teacher),
                cell(r.fd_clip_vs_real),
                r.clip_score.map(|v| format!("{v:.2}")).unwrap_or_default(),
                r.seconds
            );
        }
        for n in &self.notes {
            out += &format!("\n{n}\n");
        }
        out
    }
}
