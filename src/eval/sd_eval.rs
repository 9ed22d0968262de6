//! The paper's table for a few-step student of a Stable Diffusion teacher: at each step
//! count K, the student's ODE-solving error (latent MSE against the teacher's N-interval
//! guided solve from the same noise, the mean over all latent elements as the paper's code
//! computes it) and the sample-quality columns of the metric networks given (`sd_metrics.rs`:
//! FID, FD-DINOv2, FD-CLIP with KD beside each, CLIP cosine, aesthetic score, the DINOv2
//! distance to the teacher's sample); beside the teacher's own row. The student is any `Denoiser` (a UNet with a LoRA file's
//! adapters, or one being distilled in memory), sampled by the multistep consistency sampler.

use super::ode_error::ode_error;
use super::sd_metrics::{MetricNets, Scorer, PAPER_SAMPLES};
use super::sd_reference::{quantize, reference_samples, teacher_solve, Reference, ReferenceCache, ReferenceKey};
use crate::consistency::sampler::{multistep_sample_with, picked_timesteps, Picking};
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::schedule::Schedule;
use crate::diffusion::teacher_ode::TeacherOde;
use crate::models::sd::images::decode_with;
use crate::models::sd::text::NullText;
use crate::models::sd::SdTeacher;
use crate::nets::sd::clip_model::ClipModel;
use crate::runtime::device::Runtime;
use crate::runtime::noise::{renoise_rng, standard_normal};
use crate::runtime::progress;
use anyhow::{bail, ensure, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// The metric networks; each absent one leaves its columns out.
    pub nets: MetricNets<'a>,
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
    /// Samples behind every distance of the row.
    pub n: usize,
    pub ode_error: f64,
    /// The sample-quality columns (`sd_metrics.rs`) that could be computed.
    #[serde(flatten)]
    pub scores: BTreeMap<String, f64>,
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
        let scorer = Scorer::new(&self.nets, &reference.images, self.prompts, self.batch)?;
        let mut rows = vec![self.teacher_row(&reference, &scorer, teacher_seconds)?];
        let mut samples = Vec::new();
        for &k in &self.steps {
            let (row, sample) = self.student_row(student, k, &cond, &reference, &scorer)?;
            rows.push(row);
            samples.push(sample);
        }
        Ok(SdEvaluation {
            rows,
            notes: self.notes(&scorer)?,
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

    fn teacher_row(&self, reference: &Reference, scorer: &Scorer, seconds: f64) -> Result<SdEvalRow> {
        Ok(SdEvalRow {
            model: "teacher".into(),
            steps: self.ode.intervals(),
            unet_evals_per_sample: self.ode.network_evals_per_sample(),
            // Zero by construction (docs/MATHEMATICS.md, "ODE solving error"), computed rather than written in.
            n: reference.images.dim(0)?,
            ode_error: ode_error(&reference.latents, &reference.latents)?,
            scores: scorer.score(&reference.images)?,
            seconds,
        })
    }

    fn student_row(
        &self,
        student: &dyn Denoiser,
        k: usize,
        cond: &Condition,
        reference: &Reference,
        scorer: &Scorer,
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
        let row = SdEvalRow {
            model: "student".into(),
            steps: k,
            unet_evals_per_sample: k,
            n: images.dim(0)?,
            ode_error: ode_error(&latents, &reference.latents)?,
            scores: scorer.score(&images)?,
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

    /// Why columns are absent, and how far FD is biased at this sample count.
    fn notes(&self, scorer: &Scorer) -> Result<Vec<String>> {
        let n = self.noise.dim(0)?;
        let mut notes = Vec::new();
        let absent = [
            (self.nets.inception.is_none(), "fid and kd_inception absent: no --inception FILE (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)"),
            (self.nets.dinov2.is_none(), "fd_dinov2, kd_dinov2 and dino_ode_distance absent: no --dino DIR (a transformers Dinov2Model folder such as dinov2-large)"),
            (self.nets.clip.is_none(), "fd_clip, clip_cosine and aesthetic absent: no --clip CLIP_DIR (a transformers CLIPModel folder such as ViT-L/14)"),
            (self.nets.clip.is_some() && self.nets.aesthetic.is_none(), "aesthetic absent: no --aesthetic FILE (sac+logos+ava1-l14-linearMSE.pth)"),
            (scorer.has_networks() && self.nets.real.is_none(), "*_vs_real absent: no real images given (--real FOLDER)"),
            (scorer.has_networks() && n < 2, "FD and KD absent: a Gaussian fit needs at least 2 samples"),
        ];
        notes.extend(absent.iter().filter(|(yes, _)| *yes).map(|(_, note)| note.to_string()));
        if scorer.has_networks() && n < PAPER_SAMPLES {
            let floors = scorer.fd_floors()?;
            let floors: Vec<String> = floors
                .iter()
                .map(|(stem, half, fd)| format!("{stem} {fd:.4} (n = {half} each)"))
                .collect();
            notes.push(format!(
                "n = {n} samples per FD, below the paper's ~{PAPER_SAMPLES}: FD is biased upward at small n and the bias shrinks like 1/n. As a floor, the FD between the two halves of the teacher's own samples is {}; FD differences of that order are not resolved.",
                if floors.is_empty() { "not computable".to_string() } else { floors.join(", ") }
            ));
        }
        Ok(notes)
    }
}

/// The score columns in the paper's order (its table: FID, FD-DINOv2, CLIP score, aesthetic),
/// then KD, the real-image columns, dcm's FD-CLIP and the perceptual ODE error; with their
/// headings in eval.md.
pub const SCORE_COLUMNS: [(&str, &str); 16] = [
    ("fid_vs_teacher", "FID vs teacher"),
    ("fd_dinov2_vs_teacher", "FD-DINOv2 vs teacher"),
    ("clip_cosine", "CLIP score (cos)"),
    ("aesthetic", "aesthetic"),
    ("kd_inception_vs_teacher", "KD-Inception vs teacher"),
    ("kd_dinov2_vs_teacher", "KD-DINOv2 vs teacher"),
    ("fid_vs_real", "FID vs real"),
    ("kd_inception_vs_real", "KD-Inception vs real"),
    ("fd_dinov2_vs_real", "FD-DINOv2 vs real"),
    ("kd_dinov2_vs_real", "KD-DINOv2 vs real"),
    ("fd_clip_vs_teacher", "FD-CLIP vs teacher"),
    ("kd_clip_vs_teacher", "KD-CLIP vs teacher"),
    ("fd_clip_vs_real", "FD-CLIP vs real"),
    ("kd_clip_vs_real", "KD-CLIP vs real"),
    ("dino_ode_distance", "DINOv2 distance to teacher"),
    ("dino_ode_distance_ci95", "± 95 %"),
];

impl SdEvaluation {
    /// The score columns present in any row, in `SCORE_COLUMNS` order.
    fn columns(&self) -> Vec<(&'static str, &'static str)> {
        SCORE_COLUMNS
            .iter()
            .filter(|(key, _)| self.rows.iter().any(|r| r.scores.contains_key(*key)))
            .copied()
            .collect()
    }

    /// `eval.csv`: a header and one line per row; absent metrics are empty cells.
    pub fn to_csv(&self) -> String {
        let columns = self.columns();
        let mut out = String::from("model,steps,unet_evals_per_sample,n,ode_error");
        columns.iter().for_each(|(key, _)| out += &format!(",{key}"));
        out += ",seconds\n";
        for r in &self.rows {
            out += &format!(
                "{},{},{},{},{:e}",
                r.model, r.steps, r.unet_evals_per_sample, r.n, r.ode_error
            );
            for (key, _) in &columns {
                out += &format!(",{}", r.scores.get(*key).map(|v| format!("{v:e}")).unwrap_or_default());
            }
            out += &format!(",{:.3}\n", r.seconds);
        }
        out
    }

    /// `eval.md`: the table (n beside the distances), then the notes.
    pub fn to_markdown(&self) -> String {
        let columns = self.columns();
        let mut out = String::from("| model | steps | UNet evals / sample | n | ODE error |");
        columns.iter().for_each(|(_, heading)| out += &format!(" {heading} |"));
        out += " s |\n|---|---|---|---|---|";
        out += &"---|".repeat(columns.len() + 1);
        out += "\n";
        for r in &self.rows {
            out += &format!(
                "| {} | {} | {} | {} | {:.4e} |",
                r.model, r.steps, r.unet_evals_per_sample, r.n, r.ode_error
            );
            for (key, _) in &columns {
                out += &format!(
                    " {} |",
                    r.scores.get(*key).map(|v| format!("{v:.4}")).unwrap_or_default()
                );
            }
            out += &format!(" {:.1} |\n", r.seconds);
        }
        for n in &self.notes {
            out += &format!("\n{n}\n");
        }
        out
    }
}
