//! `dcm reproduce`: the paper's comparison end to end on the shipped MNIST latent
//! setting — teacher reference samples, CM and Direct CM distilled with identical
//! hyper-parameters, every model judged at 1, 2, 4, 8 steps on the same noise.

use super::args::{refuse, LoraArgs, RuntimeArgs};
use super::report::run::write_run;
use super::reproduce_sd::SdReproduceArgs;
use super::study::{self, StudyConfig};
use crate::consistency::distance::Distance;
use crate::consistency::objective::Method;
use crate::consistency::sampler::multistep_sample;
use crate::data::Dataset;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::guidance::Guided;
use crate::diffusion::schedule::T;
use crate::diffusion::solver::{solve, Solver};
use crate::eval::metrics::{fd::frechet_distance, kd::kernel_distance, prdc::prdc, to_matrix};
use crate::eval::ode_error::ode_error;
use crate::models::model_dir;
use crate::models::student::{portable_spec, StudentConfig};
use crate::models::teacher::Teacher;
use crate::nets::autoencoder::Autoencoder;
use crate::nets::autoencoder::{decode_all, encode_all};
use crate::nets::featnet::Featnet;
use crate::nets::layers::{map_chunks, Params};
use crate::nets::lora::LoraConfig;
use crate::nets::network::{NetConfig, Network};
use crate::runtime::assets;
use crate::runtime::device::Runtime;
use crate::runtime::files::check_output_dir;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::{eval_noise_rng, renoise_rng, standard_normal};
use crate::train::distill::{distill, DistillConfig};
use crate::train::optim::OptimConfig;
use crate::train::trainer::Checkpointing;
use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;
use clap::Args;
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything a run depends on; written beside the report as `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReproduceConfig {
    pub preset: String,
    /// Evaluation samples per class (the noise is shared by every model).
    pub per_class: usize,
    pub solver: Solver,
    pub intervals: usize,
    pub guidance: f64,
    pub distill_steps: usize,
    pub batch: usize,
    pub lr: f64,
    /// Cosine decay of the learning rate to 0 (otherwise constant).
    pub cosine_decay: bool,
    pub weight_decay: f64,
    pub loss: Distance,
    pub ema_decay: Option<f64>,
    /// LoRA students instead of full fine-tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    /// Sampler step counts evaluated.
    pub steps: Vec<usize>,
    pub seeds: usize,
    /// Images per class row in the PNG grids.
    pub grid_columns: usize,
}

impl ReproduceConfig {
    /// The named presets. Both faithful baselines keep the learning rate constant, as both
    /// references do; `default` is the one whose CM stays stable (docs/study/).
    pub fn preset(name: &str) -> Result<Self> {
        // diffusers' consistency distillation: full fine-tuning, EMA target of decay 0.95.
        let ema = Self {
            preset: name.to_string(),
            per_class: 100,
            solver: Solver::Ddim,
            intervals: 50,
            guidance: 2.0,
            distill_steps: 1000,
            batch: 64,
            lr: 1e-4,
            cosine_decay: false,
            weight_decay: 1e-2,
            loss: Distance::L2,
            ema_decay: Some(0.95),
            lora: None,
            steps: vec![1, 2, 4, 8],
            seeds: 1,
            grid_columns: 8,
        };
        Ok(match name {
            "default" | "ema" => ema,
            // The paper's code: LoRA students (rank 64, α 64), θ⁻ = θ under stop-gradient.
            "lora" => Self {
                ema_decay: None,
                lora: Some(LoraConfig { rank: 64, alpha: 64.0 }),
                ..ema
            },
            "smoke" => Self {
                per_class: 20,
                intervals: 10,
                distill_steps: 20,
                batch: 32,
                grid_columns: 4,
                ..ema
            },
            "paper" => Self {
                per_class: 500,
                intervals: 100,
                distill_steps: 6000,
                batch: 256,
                loss: Distance::PseudoHuber { c: 0.001 },
                ..ema
            },
            _ => bail!("unknown preset '{name}' (expected smoke, default, ema, lora, paper or study)"),
        })
    }

    pub fn validate(&self) -> Result<()> {
        let grid = Discretization::new(self.intervals)?;
        ensure!(
            self.per_class > 5,
            "--per-class must exceed 5 (precision/recall use k = 5)"
        );
        ensure!(
            self.seeds > 0 && self.distill_steps > 0 && self.batch > 0,
            "--seeds, --distill-steps and --batch must be positive"
        );
        ensure!(
            self.grid_columns > 0 && self.grid_columns <= self.per_class,
            "--grid-columns must be between 1 and --per-class"
        );
        for &k in &self.steps {
            ensure!(
                k >= 1 && k <= grid.intervals() && T.is_multiple_of(k),
                "--steps {k} must divide 1000 and be at most N = {}",
                self.intervals
            );
        }
        Ok(())
    }

    pub fn distill_config(&self, method: Method, seed: u64) -> DistillConfig {
        DistillConfig {
            method,
            solver: self.solver,
            intervals: self.intervals,
            guidance: self.guidance,
            steps: self.distill_steps,
            batch: self.batch,
            optim: OptimConfig {
                lr: self.lr,
                weight_decay: self.weight_decay,
                max_grad_norm: 1.0,
                cosine_decay: self.cosine_decay,
            },
            loss: self.loss,
            ema_decay: self.ema_decay,
            lora: self.lora,
            grad_accum: 1,
            seed,
        }
    }
}

/// The shipped networks and data a run uses.
pub struct Models {
    pub autoencoder: Autoencoder,
    pub teacher: Box<dyn Network>,
    /// The teacher's architecture, which the students share.
    pub teacher_net: NetConfig,
    /// The teacher's weights in f32 on the run's device: where both students start.
    pub teacher_params: Params,
    pub featnet: Featnet,
    pub data: Dataset,
    pub runtime: Runtime,
}

impl Models {
    /// `autoencoder/`, `teacher/` and `featnet/` of `dir`, frozen on `rt`.
    pub fn load(dir: &Path, data: Dataset, rt: &Runtime) -> Result<Self> {
        let teacher_dir = dir.join("teacher");
        let Teacher::Network {
            net: teacher,
            config: teacher_net,
            ..
        } = Teacher::parse(&teacher_dir.to_string_lossy(), rt)?
        else {
            bail!("{}: not a network teacher folder", teacher_dir.display());
        };
        Ok(Self {
            autoencoder: model_dir::load_autoencoder(&dir.join("autoencoder"), rt)?,
            teacher,
            teacher_net,
            teacher_params: rt.trainable(&model_dir::load_params(&teacher_dir)?)?,
            featnet: model_dir::load_featnet(&dir.join("featnet"), rt)?,
            data,
            runtime: rt.clone(),
        })
    }
}

/// Every number of one (model, steps, seed) row of the table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metrics {
    pub ode_error_latent: f64,
    pub ode_error_pixel: f64,
    pub fd_teacher: f64,
    pub fd_data: f64,
    pub kd_data: f64,
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
    pub class_accuracy: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub method: String,
    pub steps: usize,
    pub seed: u64,
    pub metrics: Metrics,
}

/// A distilled student's record: its loss curve and the work its targets cost.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub method: String,
    pub seed: u64,
    pub losses: Vec<f32>,
    pub teacher_evaluations: u64,
    pub seconds: f64,
}

/// A trained student, kept so that it can be sampled and evaluated again.
pub struct TrainedStudent {
    pub method: Method,
    pub seed: u64,
    pub distill: DistillConfig,
    pub params: Params,
    pub teacher_evaluations: u64,
    pub seconds: f64,
}

pub struct Outcome {
    pub classes: usize,
    pub rows: Vec<Row>,
    pub training: Vec<TrainingRecord>,
    pub students: Vec<TrainedStudent>,
    /// Decoded images per (method, steps) for seed 0, for the sample grids.
    pub grids: Vec<(String, usize, Tensor)>,
}

#[derive(Args)]
pub struct ReproduceArgs {
    /// smoke (≤ 60 s), default or ema (≤ 6 min on 2 cores), lora, paper (N = 100, for a GPU),
    /// study (≈ 1.5 h: docs/study/), study-smoke, or sd (a Stable Diffusion teacher's LoRA
    /// students: --teacher sd:DIR --data FOLDER --prompts FILE).
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// Repeat with this many seeds and report mean ± std.
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Run folder [default: runs/reproduce-PRESET].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Folder holding autoencoder/, teacher/ and featnet/ [default: the shipped models].
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Images the held-out split comes from [default: the shipped MNIST digits].
    #[arg(long, default_value = "mnist")]
    pub data: String,
    /// Override the preset's teacher solver (ddim, euler or heun).
    #[arg(long)]
    pub solver: Option<Solver>,
    /// Override the preset's number of teacher solver intervals N.
    #[arg(long)]
    pub intervals: Option<usize>,
    /// Override the preset's guidance scale w.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Override the preset's distillation steps (per student).
    #[arg(long)]
    pub distill_steps: Option<usize>,
    /// Override the preset's distillation batch size.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Override the preset's learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Override the preset's evaluation samples per class.
    #[arg(long)]
    pub per_class: Option<usize>,
    /// Override the preset's distance: l2, huber or huber:C.
    #[arg(long)]
    pub loss: Option<Distance>,
    /// Use an EMA target network with this decay (the presets `default` and `ema`: 0.95).
    #[arg(long)]
    pub ema_decay: Option<f64>,
    /// Decay the learning rate to 0 on a cosine instead of the presets' constant rate.
    #[arg(long)]
    pub cosine_decay: bool,
    #[command(flatten)]
    pub lora: LoraArgs,
    /// With `--preset study`: rewrite the report in --out from its study.json (a finished
    /// or part-finished run) instead of running the study.
    #[arg(long)]
    pub rewrite_report: bool,
    #[command(flatten)]
    pub sd: SdReproduceArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn command(a: ReproduceArgs) -> Result<()> {
    if a.preset == "sd" {
        return super::reproduce_sd::command(a);
    }
    refuse(&a.sd.given(), "applies to --preset sd only")?;
    if a.preset.starts_with("study") {
        return study_command(&a);
    }
    ensure!(!a.rewrite_report, "--rewrite-report: only with --preset study");
    let mut cfg = ReproduceConfig::preset(&a.preset).context("--preset")?;
    cfg.seeds = a.seeds.unwrap_or(cfg.seeds);
    cfg.intervals = a.intervals.unwrap_or(cfg.intervals);
    cfg.solver = a.solver.unwrap_or(cfg.solver);
    cfg.guidance = a.guidance.unwrap_or(cfg.guidance);
    cfg.distill_steps = a.distill_steps.unwrap_or(cfg.distill_steps);
    cfg.batch = a.batch.unwrap_or(cfg.batch);
    cfg.lr = a.lr.unwrap_or(cfg.lr);
    cfg.per_class = a.per_class.unwrap_or(cfg.per_class);
    cfg.loss = a.loss.unwrap_or(cfg.loss);
    cfg.ema_decay = a.ema_decay.or(cfg.ema_decay);
    cfg.lora = a.lora.lora()?.or(cfg.lora);
    cfg.cosine_decay |= a.cosine_decay;
    cfg.validate()?;
    let (out_dir, models, source) = open_run(&a, &format!("reproduce-{}", cfg.preset))?;
    let start = std::time::Instant::now();
    let outcome = run(&cfg, &models)?;
    save_students(&out_dir.join("students"), &source, &outcome.students)?;
    let table = write_run(&out_dir, &cfg, &outcome, start.elapsed().as_secs_f64())?;
    println!("{table}");
    eprintln!(
        "finished in {:.0} s; report in {}",
        start.elapsed().as_secs_f64(),
        out_dir.join("report.md").display()
    );
    Ok(())
}

/// Every trained student as a student folder, `DIR/<method>[-seed<K>]`, which
/// `dcm sample` and `dcm eval` take (`dcm eval --seed K` repeats this run's evaluation).
pub fn save_students(dir: &Path, source: &StudentSource, students: &[TrainedStudent]) -> Result<()> {
    for s in students {
        let name = match s.seed {
            0 => s.method.name().to_string(),
            k => format!("{}-seed{k}", s.method.name()),
        };
        let config = StudentConfig {
            teacher: portable_spec(&source.teacher.to_string_lossy()),
            data: source.data.clone(),
            conditional: true,
            net: source.net.clone(),
            distill: s.distill.clone(),
            teacher_evaluations: s.teacher_evaluations,
            train_seconds: s.seconds,
        };
        model_dir::save(&dir.join(name), &config, &s.params)?;
    }
    Ok(())
}

/// Where a run's students come from, as their configs record it.
pub struct StudentSource {
    pub teacher: PathBuf,
    pub data: String,
    pub net: NetConfig,
}

/// What every evaluation of a run shares: the training latents, the held-out data's
/// features, and the labels and shape of the evaluation batch.
pub struct Setup {
    pub classes: usize,
    pub train_latents: Dataset,
    real_features: DMatrix<f64>,
    pub labels: Vec<u32>,
    pub cond: Condition,
    pub shape: Vec<usize>,
}

impl Setup {
    pub fn new(cfg: &ReproduceConfig, models: &Models) -> Result<Self> {
        cfg.validate()?;
        let classes = models.teacher.num_classes();
        ensure!(
            classes > 0,
            "the teacher is unconditional; reproduce needs a class-conditional teacher"
        );
        let (train, held_out) = models.data.standard_split()?;
        let train_latents = Dataset::new(
            encode_all(&models.autoencoder, &train.x)?,
            train.labels.clone(),
            train.num_classes,
        )?;
        let real_features = to_matrix(&features(&models.featnet, &held_out.x)?)?;
        let n = cfg.per_class * classes;
        // Images and latents of the reference, each model's samples, and the PRDC distances.
        let images = models.autoencoder.image_shape().iter().product::<usize>();
        ensure_fits(
            f32_bytes(&[n, images]) * 16.0 + 2.0 * f32_bytes(&[n, n]),
            &format!("--per-class {}", cfg.per_class),
        )?;
        let labels: Vec<u32> = (0..n as u32).map(|i| i % classes as u32).collect();
        let cond = Condition::Labels(labels.iter().map(|&c| Some(c)).collect());
        let mut shape = vec![n];
        shape.extend(models.teacher_net.sample_shape());
        Ok(Self {
            classes,
            train_latents,
            real_features,
            labels,
            cond,
            shape,
        })
    }

    /// The evaluation noise of `seed` and the teacher's reference solve from it at guidance `w`.
    pub fn judge<'a>(&self, cfg: &ReproduceConfig, models: &'a Models, seed: u64, w: f64) -> Result<Judge<'a>> {
        let noise = standard_normal(&mut eval_noise_rng(seed), self.shape.clone(), &models.runtime.device)?;
        let guided = Guided::new(&*models.teacher, w);
        let ref_latents = solve(
            cfg.solver,
            &guided,
            &noise,
            Discretization::new(cfg.intervals)?,
            T,
            &self.cond,
        )?;
        let ref_images = decode_all(&models.autoencoder, &ref_latents)?;
        let ref_features = to_matrix(&features(&models.featnet, &ref_images)?)?;
        Ok(Judge {
            models,
            labels: self.labels.clone(),
            cond: self.cond.clone(),
            noise,
            seed,
            ref_latents,
            ref_images,
            ref_features,
            real_features: self.real_features.clone(),
        })
    }

    /// Distills one student of `method` on the training latents.
    pub fn train(
        &self,
        cfg: &ReproduceConfig,
        models: &Models,
        method: Method,
        seed: u64,
        checkpointing: Checkpointing,
    ) -> Result<(TrainedStudent, Vec<f32>)> {
        let start = std::time::Instant::now();
        // A LoRA student's teacher is itself with its adapters off (the same weights).
        let teacher = cfg.lora.is_none().then_some(&*models.teacher as &dyn Denoiser);
        let distill_cfg = cfg.distill_config(method, seed);
        let d = distill(
            teacher,
            &models.teacher_net,
            &models.teacher_params,
            &self.train_latents,
            &distill_cfg,
            checkpointing,
        )?;
        let student = TrainedStudent {
            method,
            seed,
            distill: distill_cfg,
            params: d.params,
            teacher_evaluations: d.teacher_evaluations,
            seconds: start.elapsed().as_secs_f64(),
        };
        Ok((student, d.losses))
    }
}

/// Judges decoded samples against the teacher's reference and the held-out data.
pub struct Judge<'a> {
    models: &'a Models,
    labels: Vec<u32>,
    pub cond: Condition,
    /// The evaluation noise x_T every model starts from.
    pub noise: Tensor,
    seed: u64,
    pub ref_latents: Tensor,
    ref_images: Tensor,
    ref_features: DMatrix<f64>,
    real_features: DMatrix<f64>,
}

fn features(net: &Featnet, images: &Tensor) -> Result<Tensor> {
    map_chunks(images, 500, |c| net.features(c))
}

impl Judge<'_> {
    /// Every metric of `latents` and their decoded images.
    pub fn judge(&self, latents: &Tensor) -> Result<(Metrics, Tensor)> {
        let images = decode_all(&self.models.autoencoder, latents)?;
        let feats = features(&self.models.featnet, &images)?;
        let predicted = self.models.featnet.logits(&feats)?.argmax(1)?.to_vec1::<u32>()?;
        let hits = predicted.iter().zip(&self.labels).filter(|(p, l)| p == l).count();
        let f = to_matrix(&feats)?;
        let p = prdc(&self.real_features, &f, 5)?;
        let metrics = Metrics {
            ode_error_latent: ode_error(latents, &self.ref_latents)?,
            ode_error_pixel: ode_error(&images, &self.ref_images)?,
            fd_teacher: frechet_distance(&f, &self.ref_features)?,
            fd_data: frechet_distance(&f, &self.real_features)?,
            kd_data: kernel_distance(&f, &self.real_features)?,
            precision: p.precision,
            recall: p.recall,
            density: p.density,
            coverage: p.coverage,
            class_accuracy: hits as f64 / self.labels.len() as f64,
        };
        Ok((metrics, images))
    }

    /// A student's K-step samples from this judge's noise (re-noise from the seed's own stream).
    pub fn sample(&self, cfg: &ReproduceConfig, params: &Params, steps: usize) -> Result<Tensor> {
        let student = self
            .models
            .teacher_net
            .build(&self.models.runtime.frozen(params)?, None)?;
        let grid = Discretization::new(cfg.intervals)?;
        multistep_sample(
            &*student,
            &self.noise,
            grid,
            steps,
            &self.cond,
            &mut renoise_rng(self.seed),
        )
    }
}

/// The first `cols` samples of every class, class by class (rows of a grid).
fn grid_images(images: &Tensor, classes: usize, cols: usize) -> Result<Tensor> {
    let idx: Vec<u32> = (0..classes)
        .flat_map(|c| (0..cols).map(move |j| (j * classes + c) as u32))
        .collect();
    Ok(images.index_select(&Tensor::from_vec(idx.clone(), idx.len(), images.device())?, 0)?)
}

pub fn run(cfg: &ReproduceConfig, models: &Models) -> Result<Outcome> {
    let setup = Setup::new(cfg, models)?;
    let classes = setup.classes;
    let mut out = Outcome {
        classes,
        rows: Vec::new(),
        training: Vec::new(),
        students: Vec::new(),
        grids: Vec::new(),
    };
    let guided = Guided::new(&*models.teacher, cfg.guidance);
    for seed in 0..cfg.seeds as u64 {
        let judge = setup.judge(cfg, models, seed, cfg.guidance)?;
        let mut record = |method: &str, steps: usize, latents: &Tensor| -> Result<()> {
            let (metrics, images) = judge.judge(latents)?;
            if seed == 0 {
                out.grids.push((
                    method.to_string(),
                    steps,
                    grid_images(&images, classes, cfg.grid_columns)?,
                ));
            }
            out.rows.push(Row {
                method: method.to_string(),
                steps,
                seed,
                metrics,
            });
            Ok(())
        };
        record("teacher", cfg.intervals, &judge.ref_latents)?;
        for &k in &cfg.steps {
            let coarse = solve(
                Solver::Ddim,
                &guided,
                &judge.noise,
                Discretization::new(k)?,
                T,
                &setup.cond,
            )?;
            record("teacher DDIM", k, &coarse)?;
        }
        for method in Method::compared() {
            let (student, losses) = setup.train(cfg, models, method, seed, Default::default())?;
            for &k in &cfg.steps {
                record(method.title(), k, &judge.sample(cfg, &student.params, k)?)?;
            }
            out.training.push(TrainingRecord {
                method: method.title().into(),
                seed,
                losses,
                teacher_evaluations: student.teacher_evaluations,
                seconds: student.seconds,
            });
            out.students.push(student);
        }
    }
    Ok(out)
}

/// `--preset study` (or `study-smoke`): the whole study into `--out` (default
/// `runs/PRESET`); its settings
/// are fixed so that its results can be compared, so other overrides are refused.
/// The run folder (checked writable; default `runs/NAME`), the shipped or given models with
/// `--data`, and where the run's students come from.
fn open_run(a: &ReproduceArgs, name: &str) -> Result<(PathBuf, Models, StudentSource)> {
    let rt = a.runtime.runtime()?;
    let models_dir = a.models.clone().unwrap_or_else(|| assets::home().join("models"));
    let out_dir = a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(name));
    check_output_dir(&out_dir, "--out")?;
    let data = Dataset::load(&a.data, 0).with_context(|| format!("--data {}", a.data))?;
    let models = Models::load(&models_dir, data, &rt)?;
    let source = StudentSource {
        teacher: models_dir.join("teacher"),
        data: a.data.clone(),
        net: models.teacher_net.clone(),
    };
    Ok((out_dir, models, source))
}

fn study_command(a: &ReproduceArgs) -> Result<()> {
    let overrides = [
        ("--seeds", a.seeds.is_some()),
        ("--solver", a.solver.is_some()),
        ("--intervals", a.intervals.is_some()),
        ("--guidance", a.guidance.is_some()),
        ("--distill-steps", a.distill_steps.is_some()),
        ("--batch", a.batch.is_some()),
        ("--lr", a.lr.is_some()),
        ("--per-class", a.per_class.is_some()),
        ("--loss", a.loss.is_some()),
        ("--ema-decay", a.ema_decay.is_some()),
        ("--cosine-decay", a.cosine_decay),
        ("--lora-rank", a.lora.lora()?.is_some()),
    ];
    if let Some((flag, _)) = overrides.iter().find(|o| o.1) {
        bail!("{flag}: --preset study has fixed settings (only --out, --models and --data apply)");
    }
    if a.rewrite_report {
        let dir = a
            .out
            .as_deref()
            .context("--rewrite-report needs --out DIR (the study's run folder)")?;
        return study::rewrite_report(dir);
    }
    let cfg = StudyConfig::named(&a.preset)?;
    cfg.validate()?;
    let (out_dir, models, source) = open_run(a, &a.preset)?;
    let start = std::time::Instant::now();
    study::run(&cfg, &models, &source, &out_dir)?;
    eprintln!(
        "study finished in {:.1} min; report in {}",
        start.elapsed().as_secs_f64() / 60.0,
        out_dir.join("README.md").display()
    );
    Ok(())
}
