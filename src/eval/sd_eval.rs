//! The paper's table for a few-step student of a Stable Diffusion teacher: at each step
//! count K, the student's ODE-solving error (latent MSE against the teacher's N-interval
//! guided solve from the same noise, the mean over all latent elements as the paper's code
//! computes it) and the sample-quality columns of the metric networks given (`sd_metrics.rs`:
//! FID, FD-DINOv2, FD-CLIP with KD beside each, CLIP cosine, aesthetic score, the DINOv2
//! distance to the teacher's sample); beside the teacher's own row. The student is any `Denoiser` (a UNet with a LoRA file's
//! adapters, or one being distilled in memory), sampled by the multistep consistency sampler.

use super::ode_error::squared_error;
use super::sd_eval_blocks::{gather, MadeBlock, Sampled};
use super::sd_metrics::{BlockFeatures, MetricNets, Scorer, Tally, PAPER_SAMPLES};
use super::sd_reference::{quantize, ReferenceBlocks, ReferenceCache, ReferenceKey};
use crate::consistency::renoise_streams::RenoiseStreams;
use crate::consistency::sampler::{multistep_sample_with, picked_timesteps, Picking};
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::schedule::Schedule;
use crate::diffusion::teacher_ode::TeacherOde;
use crate::models::sd::images::decode_rows;
use crate::models::sd::teacher::TextConditioner;
use crate::models::sd::text::NullText;
use crate::models::sd::SdTeacher;
use crate::nets::sd::clip_model::ClipModel;
use crate::nets::sd::vae::AutoencoderKl;
use crate::runtime::device::Runtime;
use crate::runtime::{progress, ranks};
use anyhow::{bail, ensure, Context, Result};
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

/// Where an evaluation's samples go as each block of rows is made: images `[r, 3, H, W]` u8
/// and latents `[r, C, h, w]` f32 on the CPU, row `start` first. Nothing holds every sample.
pub trait SampleSink {
    fn teacher(&mut self, start: usize, images: &Tensor) -> Result<()>;
    fn student(&mut self, steps: usize, start: usize, latents: &Tensor, images: &Tensor) -> Result<()>;
}

#[derive(Serialize, Deserialize)]
pub struct SdEvaluation {
    /// The teacher's row first, then one per K.
    pub rows: Vec<SdEvalRow>,
    /// Why a column is absent.
    pub notes: Vec<String>,
    /// The teacher's samples were read from the cache rather than made now.
    pub reference_from_cache: bool,
}

/// One model's running totals: its scores' tally, its squared error to the teacher's latents,
/// and its wall time.
#[derive(Default)]
struct Running {
    tally: Tally,
    squared_error: f64,
    elements: usize,
    seconds: f64,
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

/// The K-step consistency sampler on every row, `batch` rows at a time, re-noised from
/// `renoise_rng(seed)` as one unchunked run would be (`RenoiseStreams`), so the samples do not
/// depend on the batch.
pub fn student_samples(
    student: &dyn Denoiser,
    noise: &Tensor,
    cond: &Condition,
    ts: &[usize],
    seed: u64,
    batch: usize,
) -> Result<Tensor> {
    let mut streams = RenoiseStreams::new(seed, ts.len(), noise.dims());
    let n = noise.dim(0)?;
    let parts = (0..n)
        .step_by(batch.max(1))
        .map(|start| {
            let len = batch.max(1).min(n - start);
            let x = noise.narrow(0, start, len)?;
            let draws = streams.block(len, &Device::Cpu)?;
            sample_block(student, &x, &cond.narrow(start, len)?, ts, draws)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// The sampler on one block of rows, taking the block's rows of each step's re-noise.
fn sample_block(
    student: &dyn Denoiser,
    x: &Tensor,
    cond: &Condition,
    ts: &[usize],
    draws: Vec<Tensor>,
) -> Result<Tensor> {
    let mut step = 0;
    let mut renoise = |_: &candle_core::Shape| {
        step += 1;
        Ok(draws[step - 1].to_device(x.device())?)
    };
    multistep_sample_with(student, x, ts, cond, &mut renoise, &mut |_| ())
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
        if let Some(k) = self
            .steps
            .iter()
            .enumerate()
            .find_map(|(i, k)| self.steps[..i].contains(k).then_some(k))
        {
            bail!("--steps: {k} is given twice");
        }
        for &k in &self.steps {
            picked_timesteps(self.ode.grid, k, self.picking)?;
        }
        Ok(())
    }

    /// The teacher's row and one row per K for `student`, a block of `batch` rows at a time:
    /// each block's prompts are encoded, the teacher's samples read from the cache or made, and
    /// every K's samples made, scored and handed to `sink` before the next block, so memory
    /// stays bounded by a block and the feature vectors whatever the number of prompts.
    ///
    /// Under several ranks each round gives every rank one block's UNet work; rank 0 takes the
    /// blocks in row order (scores, cache, `sink`), so the result equals one process's, and
    /// every rank returns rank 0's evaluation.
    pub fn run(&self, student: &dyn Denoiser, sink: &mut dyn SampleSink) -> Result<SdEvaluation> {
        self.validate()?;
        let mut pass = Pass::new(self)?;
        let (rows, batch) = (self.noise.dim(0)?, self.batch.max(1));
        let blocks: Vec<(usize, usize)> = (0..rows).step_by(batch).map(|s| (s, batch.min(rows - s))).collect();
        for round in blocks.chunks(ranks::place().size) {
            let mine = pass.make_round(student, round)?;
            for (i, made) in gather(mine)?.into_iter().enumerate() {
                if i > 0 {
                    pass.tick_for(&made);
                }
                pass.take(sink, made)?;
            }
        }
        if ranks::place().size == 1 {
            return pass.finish();
        }
        let json = match ranks::place().is_root() {
            true => serde_json::to_vec(&pass.finish()?)?,
            false => Vec::new(),
        };
        let json = ranks::from_root(&json)?;
        serde_json::from_slice(&json).context("rank 0's evaluation did not reach this rank intact")
    }

    /// One line on where the teacher's samples came from.
    fn say_reference(&self, from_cache: bool, seconds: f64) -> Result<()> {
        let dir = self.reference.dir.display();
        if from_cache {
            eprintln!("teacher reference: read from {dir}");
        } else {
            let (rows, evals) = (self.noise.dim(0)?, self.ode.network_evals_per_sample());
            eprintln!(
                "teacher reference: {rows} samples × {evals} UNet evaluations in {seconds:.1} s, cached in {dir}"
            );
        }
        Ok(())
    }

    fn reference_key(&self) -> ReferenceKey<'_> {
        ReferenceKey {
            teacher: self.teacher,
            ode: &self.ode,
            null: &self.null,
            dtype: self.rt.dtype,
            prompts: self.prompts,
            noise: self.noise,
        }
    }

    /// The teacher's guided N-interval solve of a block and its images u8.
    fn teacher_block(&self, block: &Block, vae: &AutoencoderKl, bar: &ProgressBar) -> Result<Sampled> {
        let started = Instant::now();
        let ticking = Ticking {
            inner: self.teacher,
            bar,
        };
        let latents = self.ode.solve(&ticking, &block.noise, &block.cond)?;
        let latents = latents.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let images = self.decode(vae, &latents)?;
        Ok(Sampled {
            latents,
            images,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Images u8 of latents through the teacher's VAE.
    fn decode(&self, vae: &AutoencoderKl, latents: &Tensor) -> Result<Tensor> {
        quantize(&decode_rows(vae, &latents.to_device(&self.rt.device)?, &|| ())?)
    }

    /// A table row from a model's running totals.
    fn row(
        &self,
        model: &str,
        steps: usize,
        evals: usize,
        running: &Running,
        teacher: &Running,
        scorer: &Scorer,
    ) -> Result<SdEvalRow> {
        Ok(SdEvalRow {
            model: model.into(),
            steps,
            unet_evals_per_sample: evals,
            n: self.noise.dim(0)?,
            // The teacher's is zero by construction (docs/MATHEMATICS.md, "ODE solving error"),
            // computed rather than written in.
            ode_error: running.squared_error / running.elements.max(1) as f64,
            scores: scorer.scores(&running.tally, &teacher.tally)?,
            seconds: running.seconds,
        })
    }

    /// Why columns are absent, and how far FD is biased at this sample count.
    fn notes(&self, scorer: &Scorer, teacher: &Tally) -> Result<Vec<String>> {
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
            let floors = scorer.fd_floors(teacher)?;
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

/// One block of the evaluation's rows: their noise (on the runtime's device) and condition.
struct Block {
    noise: Tensor,
    cond: Condition,
}

/// The frozen networks around the UNets, loaded once for every block.
struct Frozen {
    text: TextConditioner,
    vae: AutoencoderKl,
}

impl Block {
    fn new(setup: &SdEvalSetup, text: &TextConditioner, start: usize, len: usize) -> Result<Self> {
        let noise = setup.noise.narrow(0, start, len)?;
        let prompts = &setup.prompts[start..start + len];
        let cond = text.condition(prompts, &setup.null, &noise)?;
        Ok(Self { noise, cond })
    }
}

impl Running {
    /// Adds a block of samples (features and latents) from the same noise as the teacher's.
    fn add(
        &mut self,
        scorer: &Scorer,
        (features, latents): (&BlockFeatures, &Tensor),
        (teacher_features, teacher_latents): (&BlockFeatures, &Tensor),
        prompts: Option<&Tensor>,
    ) -> Result<()> {
        scorer.add(&mut self.tally, features, teacher_features, prompts)?;
        self.squared_error += squared_error(latents, teacher_latents)?;
        self.elements += latents.elem_count();
        Ok(())
    }
}

/// An evaluation under way: the networks loaded once, the teacher's reference, each K's
/// re-noise streams and every model's running totals.
struct Pass<'s> {
    setup: &'s SdEvalSetup<'s>,
    scorer: Scorer<'s>,
    frozen: Frozen,
    /// Rank 0's: the cache it reads or writes.
    reference: Option<ReferenceBlocks>,
    /// The teacher's samples come from the cache (known to every rank).
    from_cache: bool,
    bar: ProgressBar,
    streams: Vec<RenoiseStreams>,
    teacher: Running,
    students: Vec<Running>,
}

impl<'s> Pass<'s> {
    fn new(setup: &'s SdEvalSetup<'s>) -> Result<Self> {
        let scorer = Scorer::new(&setup.nets, setup.batch)?;
        let reference = match ranks::place().is_root() {
            true => Some(ReferenceBlocks::open(&setup.reference_key(), &setup.reference)?),
            false => None,
        };
        let from_cache = ranks::from_root(&[u8::from(reference.as_ref().is_some_and(|r| r.from_cache()))])? == [1];
        let frozen = Frozen {
            text: TextConditioner::load(setup.teacher.pipeline(), setup.rt)?,
            vae: setup.teacher.pipeline().vae(setup.rt)?,
        };
        let teacher_calls = if from_cache {
            0
        } else {
            setup.ode.teacher_calls_per_sample()
        };
        let calls = setup.noise.dim(0)? * (teacher_calls + setup.steps.iter().sum::<usize>());
        let streams = setup
            .steps
            .iter()
            .map(|&k| RenoiseStreams::new(setup.seed, k, setup.noise.dims()));
        Ok(Self {
            setup,
            scorer,
            frozen,
            reference,
            from_cache,
            bar: progress::bar(calls, "evaluation (UNet calls)"),
            streams: streams.collect(),
            teacher: Running::default(),
            students: setup.steps.iter().map(|_| Running::default()).collect(),
        })
    }

    /// This rank's block of a round (its `rank`-th, if the round has one): the teacher's
    /// samples unless cached, then each K's. Every rank draws every block's re-noise, so each
    /// block gets the rows one process would give it.
    fn make_round(&mut self, student: &dyn Denoiser, round: &[(usize, usize)]) -> Result<Option<MadeBlock>> {
        let rank = ranks::place().rank;
        let mut mine = None;
        for (i, &(start, len)) in round.iter().enumerate() {
            let draws = self.streams.iter_mut().map(|s| s.block(len, &Device::Cpu));
            let draws = draws.collect::<Result<Vec<_>>>()?;
            if i == rank {
                mine = Some(self.make(student, start, len, draws)?);
            }
        }
        Ok(mine)
    }

    /// Rows `start .. start + len`, given each K's re-noise draws of them.
    fn make(&self, student: &dyn Denoiser, start: usize, len: usize, draws: Vec<Vec<Tensor>>) -> Result<MadeBlock> {
        let setup = self.setup;
        let block = Block::new(setup, &self.frozen.text, start, len)?;
        let teacher = match self.from_cache {
            true => None,
            false => Some(setup.teacher_block(&block, &self.frozen.vae, &self.bar)?),
        };
        let mut students = Vec::new();
        for (&k, draws) in setup.steps.iter().zip(draws) {
            let started = Instant::now();
            let ts = picked_timesteps(setup.ode.grid, k, setup.picking)?;
            let ticking = Ticking {
                inner: student,
                bar: &self.bar,
            };
            let latents = sample_block(&ticking, &block.noise, &block.cond, &ts, draws)?;
            let latents = latents.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            let images = setup.decode(&self.frozen.vae, &latents)?;
            let seconds = started.elapsed().as_secs_f64();
            students.push(Sampled {
                latents,
                images,
                seconds,
            });
        }
        Ok(MadeBlock {
            start,
            len,
            teacher,
            students,
        })
    }

    /// Rank 0's progress bar advanced by the UNet calls another rank made for `made`.
    fn tick_for(&self, made: &MadeBlock) {
        let teacher = match made.teacher {
            Some(_) => self.setup.ode.teacher_calls_per_sample(),
            None => 0,
        };
        let calls = made.len * (teacher + self.setup.steps.iter().sum::<usize>());
        self.bar.inc(calls as u64);
    }

    /// Rank 0: a block's samples scored, the teacher's cached (or read from the cache), and
    /// every sample handed to `sink`.
    fn take(&mut self, sink: &mut dyn SampleSink, made: MadeBlock) -> Result<()> {
        let setup = self.setup;
        let (start, len) = (made.start, made.len);
        if made.teacher.is_some() {
            self.teacher.seconds += made.teacher.as_ref().map_or(0.0, |t| t.seconds);
        }
        let reference = self.reference.as_mut().context("only rank 0 takes blocks")?;
        let teacher_made = made.teacher.map(|t| (t.latents, t.images));
        let reference = reference.block(start, len, || {
            teacher_made.context("the teacher's samples of a block were not made")
        })?;
        sink.teacher(start, &reference.images)?;
        let prompts = self.scorer.prompt_features(&setup.prompts[start..start + len])?;
        let teacher_features = self.scorer.features(&reference.images)?;
        let teacher = (&teacher_features, &reference.latents);
        self.teacher.add(&self.scorer, teacher, teacher, prompts.as_ref())?;
        for ((&k, sampled), running) in setup.steps.iter().zip(made.students).zip(&mut self.students) {
            running.seconds += sampled.seconds;
            sink.student(k, start, &sampled.latents, &sampled.images)?;
            let features = self.scorer.features(&sampled.images)?;
            running.add(&self.scorer, (&features, &sampled.latents), teacher, prompts.as_ref())?;
        }
        Ok(())
    }

    /// The table, once every block is in; a made reference is completed on disk.
    fn finish(self) -> Result<SdEvaluation> {
        self.bar.finish_and_clear();
        let (setup, scorer, teacher) = (self.setup, &self.scorer, &self.teacher);
        let reference_from_cache = self.from_cache;
        if let Some(reference) = self.reference {
            reference.finish()?;
        }
        setup.say_reference(reference_from_cache, teacher.seconds)?;
        let (n, evals) = (setup.ode.intervals(), setup.ode.network_evals_per_sample());
        let mut rows = vec![setup.row("teacher", n, evals, teacher, teacher, scorer)?];
        for (&k, running) in setup.steps.iter().zip(&self.students) {
            eprintln!("student, {k} steps: sampled and decoded in {:.1} s", running.seconds);
            rows.push(setup.row("student", k, k, running, teacher, scorer)?);
        }
        Ok(SdEvaluation {
            rows,
            notes: setup.notes(scorer, &teacher.tally)?,
            reference_from_cache,
        })
    }
}

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
