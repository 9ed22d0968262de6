//! The `dcm` command line: parses flags and calls the library.

use anyhow::{ensure, Context, Result};
use clap::{Args, Parser, Subcommand};
use dcm::consistency::distance::Distance;
use dcm::consistency::objective::Method;
use dcm::consistency::sampler::multistep_sample;
use dcm::data::npy;
use dcm::data::Dataset;
use dcm::diffusion::condition::Condition;
use dcm::diffusion::denoiser::Denoiser;
use dcm::diffusion::discretization::Discretization;
use dcm::diffusion::guidance::Guided;
use dcm::diffusion::schedule::{ScheduleKind, T};
use dcm::diffusion::solver::{solve, Solver};
use dcm::eval::evaluate::{ode_errors, EvalSetup};
use dcm::experiments::report::run::write_run;
use dcm::experiments::reproduce::{Models, ReproduceConfig};
use dcm::models::model_dir;
use dcm::models::student::{portable_spec, Student, StudentConfig};
use dcm::models::teacher::{NetworkTeacherConfig, Teacher, SPEC_HELP};
use dcm::nets::autoencoder::{Autoencoder, AutoencoderConfig};
use dcm::nets::featnet::{Featnet, FeatnetConfig};
use dcm::nets::mlp::MlpConfig;
use dcm::runtime::noise::{seeded, standard_normal};
use dcm::train::autoencoder::{decode_all, encode_all, reconstruction_mse, train_autoencoder};
use dcm::train::distill::{distill, DistillConfig};
use dcm::train::featnet::{accuracy, train_featnet};
use dcm::train::optim::OptimConfig;
use dcm::train::score_matching::{train_teacher, TeacherTraining};
use dcm::train::trainer::{Checkpointing, ImageTraining};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// candle allocates a fresh buffer per op; mimalloc reuses freed memory instead of
/// returning it to the system and page-faulting it back (CANDLE_NOTES.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "dcm",
    version,
    about = "Distill diffusion models into few-step consistency models (CM and Direct CM) and measure ODE error against sample quality"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Solve the teacher's ODE, or run a student's few-step sampler, from given noise.
    #[command(after_help = SPEC_HELP)]
    Sample(SampleArgs),
    /// Distill a teacher into a consistency student (CM or Direct CM).
    #[command(after_help = SPEC_HELP)]
    Distill(DistillArgs),
    /// Print a student's ODE solving error at 1, 2, 4 and 8 steps.
    Eval(EvalArgs),
    /// Train an ε-prediction MLP teacher by denoising score matching (on latents with --autoencoder).
    TrainTeacher(TrainTeacherArgs),
    /// Train the convolutional autoencoder (1×28×28 ↔ C×7×7) on the train split.
    TrainAutoencoder(TrainAutoencoderArgs),
    /// Train the CNN classifier whose features the image metrics use.
    TrainFeatnet(TrainFeatnetArgs),
    /// Rerun the paper's comparison on the shipped MNIST latent setting and print its table.
    Reproduce(ReproduceArgs),
    /// Time teacher forward, guided sampling, and one CM and one Direct distillation step.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// A network teacher folder to benchmark [default: a fresh MLP of the sizes below].
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Values per sample of the fresh MLP.
    #[arg(long, default_value_t = 196)]
    dim: usize,
    #[arg(long, default_value_t = 512)]
    hidden: usize,
    #[arg(long, default_value_t = 4)]
    depth: usize,
    #[arg(long, default_value_t = 64)]
    time_dim: usize,
    #[arg(long, default_value_t = 10)]
    classes: usize,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Solver intervals N for the sampling and Direct workloads.
    #[arg(long, default_value_t = 50)]
    intervals: usize,
    #[arg(long, default_value_t = 2.0)]
    guidance: f64,
    /// Timed repeats per workload (after warm-up).
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Where to run: cpu, cuda or cuda:N (CUDA needs a build with the `cuda` feature)
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct ReproduceArgs {
    /// smoke (≤ 60 s), default (≤ 15 min on 2 cores) or paper (N = 100, for a GPU).
    #[arg(long, default_value = "default")]
    preset: String,
    /// Repeat with this many seeds and report mean ± std.
    #[arg(long)]
    seeds: Option<usize>,
    /// Run folder [default: runs/reproduce-PRESET].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Folder holding autoencoder/, teacher/ and featnet/ [default: the shipped models].
    #[arg(long)]
    models: Option<PathBuf>,
    /// Images the held-out split comes from [default: the shipped MNIST digits].
    #[arg(long, default_value = "mnist")]
    data: String,
    /// Override the preset's teacher solver (ddim, euler or heun).
    #[arg(long)]
    solver: Option<Solver>,
    /// Override the preset's number of teacher solver intervals N.
    #[arg(long)]
    intervals: Option<usize>,
    /// Override the preset's guidance scale w.
    #[arg(long)]
    guidance: Option<f64>,
    /// Override the preset's distillation steps (per student).
    #[arg(long)]
    distill_steps: Option<usize>,
    /// Override the preset's distillation batch size.
    #[arg(long)]
    batch: Option<usize>,
    /// Override the preset's learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Override the preset's evaluation samples per class.
    #[arg(long)]
    per_class: Option<usize>,
    /// Override the preset's distance: l2, huber or huber:C.
    #[arg(long)]
    loss: Option<Distance>,
    /// Use an EMA target network with this decay for CM.
    #[arg(long)]
    ema_decay: Option<f64>,
    /// Keep the learning rate constant instead of the preset's cosine decay.
    #[arg(long)]
    constant_lr: bool,
}

/// The teacher's probability-flow ODE: solver, grid and guidance.
#[derive(Args)]
struct OdeArgs {
    /// Teacher ODE solver: ddim, euler or heun.
    #[arg(long, default_value = "ddim")]
    solver: Solver,
    /// Number of solver intervals N (must divide T = 1000).
    #[arg(long, default_value_t = 50)]
    intervals: usize,
    /// Classifier-free guidance scale w of the teacher (1: none).
    #[arg(long, default_value_t = 1.0)]
    guidance: f64,
}

/// Output folder, checkpoints and resume: shared by every training command.
#[derive(Args)]
struct RunArgs {
    /// Output folder: config.json, model.safetensors, train_log.csv (and checkpoint.safetensors).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Save the full training state to OUT/checkpoint.safetensors every K steps (0: only on SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Continue the run in this folder from its checkpoint (the other flags must match the original run).
    #[arg(long)]
    resume: Option<PathBuf>,
}

impl RunArgs {
    /// The output folder and checkpoint settings; `context` records what else identifies the run.
    fn checkpointing(&self, context: serde_json::Value) -> Result<(PathBuf, Checkpointing)> {
        let dir = match (&self.out, &self.resume) {
            (Some(o), Some(r)) => {
                ensure!(
                    o == r,
                    "--out {} and --resume {} name different folders",
                    o.display(),
                    r.display()
                );
                o.clone()
            }
            (Some(d), None) | (None, Some(d)) => d.clone(),
            (None, None) => anyhow::bail!("give --out DIR or --resume DIR"),
        };
        let ckpt = Checkpointing {
            dir: Some(dir.clone()),
            every: self.checkpoint_every,
            resume: self.resume.is_some(),
            context,
        };
        Ok((dir, ckpt))
    }
}

/// Flags every image-network training command shares.
#[derive(Args)]
struct ImageTrainArgs {
    /// Images: `mnist` (the shipped digits), a folder of IDX files or of class sub-folders of PNG/JPEG.
    #[arg(long, default_value = "mnist")]
    data: String,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct TrainAutoencoderArgs {
    #[command(flatten)]
    common: ImageTrainArgs,
    /// Latent channels C (latents are C×7×7).
    #[arg(long, default_value_t = 4)]
    latent_channels: usize,
    /// Channels of the first convolution stage.
    #[arg(long, default_value_t = 32)]
    width: usize,
    /// A feature network folder: also report its accuracy on held-out reconstructions.
    #[arg(long)]
    featnet: Option<PathBuf>,
}

#[derive(Args)]
struct TrainFeatnetArgs {
    #[command(flatten)]
    common: ImageTrainArgs,
    /// Channels of the first convolution.
    #[arg(long, default_value_t = 32)]
    width: usize,
    /// Width of the penultimate (feature) layer.
    #[arg(long, default_value_t = 128)]
    features: usize,
}

#[derive(Args)]
struct SampleArgs {
    /// Teacher SPEC (see below): solve its probability-flow ODE.
    #[arg(long, conflicts_with = "student", required_unless_present = "student")]
    teacher: Option<String>,
    /// Student folder written by `dcm distill`: run its few-step sampler.
    #[arg(long)]
    student: Option<PathBuf>,
    #[command(flatten)]
    ode: OdeArgs,
    /// Class label for every sample (default: unconditional).
    #[arg(long)]
    class: Option<u32>,
    /// Student sampling steps K (1 ≤ K ≤ the student's N).
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// Initial noise x_T, shape [B, …], .npy float32 or float64.
    #[arg(long)]
    noise: PathBuf,
    /// Output .npy (float32, same shape as the noise).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the fresh noise a multistep student injects between steps.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write decoded images (float32 [B, 1, 28, 28] in [0, 1]) instead of latents; needs a latent-space teacher.
    #[arg(long)]
    decode: bool,
}

#[derive(Args)]
struct DistillArgs {
    /// Objective: `cm` (one teacher step + self target) or `direct` (full teacher solve as target).
    #[arg(long)]
    method: Method,
    /// Teacher SPEC (see below).
    #[arg(long)]
    teacher: String,
    /// Training data: `toy:NAME` or an .npy file [n, …]; default: the analytic teacher's own distribution.
    #[arg(long)]
    data: Option<String>,
    #[command(flatten)]
    ode: OdeArgs,
    /// Training steps.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// AdamW learning rate [default: 1e-3 for a fresh student, 1e-4 when starting from a network teacher].
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 1e-2)]
    weight_decay: f64,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Keep the learning rate constant (default: cosine decay to 0).
    #[arg(long)]
    constant_lr: bool,
    /// Distance: l2, huber (c = 0.001) or huber:C.
    #[arg(long, default_value = "l2")]
    loss: Distance,
    /// Use an EMA of the student with this decay as the CM target network (default: the student itself, stop-gradient).
    #[arg(long)]
    ema_decay: Option<f64>,
    /// Ignore class labels: distill the teacher's unconditional ODE.
    #[arg(long)]
    unconditional: bool,
    /// Hidden width of a fresh student MLP (analytic teachers).
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Hidden layers of a fresh student MLP (analytic teachers).
    #[arg(long, default_value_t = 3)]
    depth: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct EvalArgs {
    #[arg(long)]
    student: PathBuf,
    /// Number of noise samples.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Student step counts to evaluate, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    steps: Vec<usize>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct TrainTeacherArgs {
    /// Training data: `toy:NAME` (ring, grid, checkerboard, moons, spiral), `mnist`, an image folder or an .npy file [n, …].
    #[arg(long)]
    data: String,
    /// Train in this autoencoder's latent space (images are encoded first; image data uses its train split).
    #[arg(long)]
    autoencoder: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, default_value_t = 5000)]
    steps: usize,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Keep the learning rate constant (default: cosine decay to 0).
    #[arg(long)]
    constant_lr: bool,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 3)]
    depth: usize,
    /// Width of the sinusoidal timestep embedding (even).
    #[arg(long, default_value_t = 64)]
    time_dim: usize,
    /// Noise schedule: scaled_linear, linear or cosine.
    #[arg(long, default_value = "scaled_linear")]
    schedule: ScheduleKind,
    /// Probability of replacing the label by the null label.
    #[arg(long, default_value_t = 0.1)]
    label_dropout: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn sample(a: SampleArgs) -> Result<()> {
    let noise = npy::read(&a.noise)?;
    ensure!(
        noise.rank() >= 2,
        "--noise {}: expected shape [B, …], got {:?}",
        a.noise.display(),
        noise.dims()
    );
    let labels = Condition::repeat(a.class, noise.dim(0)?);
    let (out, teacher_spec) = if let Some(dir) = &a.student {
        let student = Student::load(dir)?;
        let grid = Discretization::new(student.config.distill.intervals)?;
        let out = multistep_sample(&student.net, &noise, grid, a.steps, &labels, &mut seeded(a.seed))?;
        (out, student.config.teacher)
    } else {
        let spec = a.teacher.clone().context("give --teacher SPEC or --student DIR")?;
        let teacher = Teacher::parse(&spec)?;
        let grid = Discretization::new(a.ode.intervals).context("--intervals")?;
        (
            solve(
                a.ode.solver,
                &Guided::new(&teacher, a.ode.guidance),
                &noise,
                grid,
                T,
                &labels,
            )?,
            spec,
        )
    };
    let out = if a.decode {
        let ae = Teacher::parse(&teacher_spec)?.autoencoder()?;
        decode_all(
            &ae.context("--decode: the teacher has no autoencoder (not a latent-space teacher)")?,
            &out,
        )?
    } else {
        out
    };
    npy::write(&a.out, &out)
}

fn distill_cmd(a: DistillArgs) -> Result<()> {
    let teacher = Teacher::parse(&a.teacher)?;
    let mut data = match &a.data {
        Some(spec) => Dataset::load(spec, a.seed).with_context(|| format!("--data {spec}"))?,
        None => teacher.sample_data(dcm::data::toy::DEFAULT_SIZE, &mut seeded(a.seed ^ 0x5eed))?,
    };
    if a.unconditional || teacher.num_classes() == 0 {
        data.labels.iter_mut().for_each(|l| *l = None);
    }
    let conditional = data.labels.iter().any(Option::is_some);
    if let Some(shape) = teacher.sample_shape() {
        ensure!(
            shape == data.sample_shape(),
            "--data samples have shape {:?} but the teacher expects {:?}",
            data.sample_shape(),
            shape
        );
    }
    let (net, init, default_lr) = match &teacher {
        Teacher::Network { net, dir } => (net.config().clone(), model_dir::load_params(dir)?, 1e-4),
        _ => {
            let net = MlpConfig {
                sample_shape: data.sample_shape(),
                hidden: a.hidden,
                depth: a.depth,
                time_dim: 32,
                num_classes: teacher.num_classes(),
                schedule: teacher.schedule_kind(),
            };
            net.validate()?;
            let init = net.init(&mut seeded(a.seed.wrapping_add(1)))?;
            (net, init, 1e-3)
        }
    };
    let cfg = DistillConfig {
        method: a.method,
        solver: a.ode.solver,
        intervals: a.ode.intervals,
        guidance: a.ode.guidance,
        steps: a.steps,
        batch: a.batch,
        optim: OptimConfig {
            lr: a.lr.unwrap_or(default_lr),
            weight_decay: a.weight_decay,
            max_grad_norm: a.max_grad_norm,
            cosine_decay: !a.constant_lr,
        },
        loss: a.loss,
        ema_decay: a.ema_decay,
        seed: a.seed,
    };
    let (out_dir, ckpt) = a
        .run
        .checkpointing(serde_json::json!({"teacher": a.teacher, "data": a.data, "unconditional": a.unconditional}))?;
    let start = std::time::Instant::now();
    let out = distill(&teacher, &net, &init, &data, &cfg, ckpt)?;
    let config = StudentConfig {
        teacher: portable_spec(&a.teacher),
        data: a.data.clone().unwrap_or_else(|| "teacher distribution".into()),
        conditional,
        net,
        distill: cfg,
        teacher_evaluations: out.teacher_evaluations,
        train_seconds: start.elapsed().as_secs_f64(),
    };
    save_run(&out_dir, &config, &out.params, &out.losses)?;
    eprintln!(
        "distilled in {:.1} s ({} per-sample teacher evaluations); final loss {:.3e}; wrote {}",
        config.train_seconds,
        out.teacher_evaluations,
        out.losses.last().copied().unwrap_or(f32::NAN),
        out_dir.display()
    );
    Ok(())
}

fn save_run(
    dir: &Path,
    config: &impl serde::Serialize,
    params: &dcm::nets::layers::Params,
    losses: &[f32],
) -> Result<()> {
    model_dir::save(dir, config, params)?;
    let mut log = String::from("step,loss\n");
    for (i, l) in losses.iter().enumerate() {
        log.push_str(&format!("{},{l}\n", i + 1));
    }
    dcm::train::checkpoint::write_atomic(&dir.join("train_log.csv"), log.as_bytes())
}

fn eval(a: EvalArgs) -> Result<()> {
    ensure!(a.samples > 0, "--samples must be positive");
    let student = Student::load(&a.student)?;
    let teacher = student.teacher()?;
    let d = &student.config.distill;
    let grid = Discretization::new(d.intervals)?;
    let mut shape = vec![a.samples];
    shape.extend(&student.config.net.sample_shape);
    let noise = standard_normal(&mut seeded(a.seed), shape, &candle_core::Device::Cpu)?;
    let classes = teacher.num_classes() as u32;
    let conditional = student.config.conditional && classes > 0;
    let labels = Condition::Labels(
        (0..a.samples as u32)
            .map(|i| conditional.then(|| i % classes))
            .collect(),
    );
    for &k in &a.steps {
        ensure!(
            k >= 1 && k <= grid.intervals() && T.is_multiple_of(k),
            "--steps {k} must divide 1000 and be at most N = {}",
            grid.intervals()
        );
    }
    let setup = EvalSetup {
        teacher: &teacher,
        solver: d.solver,
        grid,
        guidance: d.guidance,
    };
    let rows = ode_errors(&setup, &student.net, &noise, &labels, &a.steps, a.seed)?;
    let cond = if conditional {
        "classes in turn"
    } else {
        "unconditional"
    };
    println!(
        "ODE error (MSE to the teacher's {}-interval {:?} solve, w = {}, {} samples, {cond})",
        d.intervals, d.solver, d.guidance, a.samples
    );
    println!("| steps | student ({:?}) | teacher DDIM, same steps |", d.method);
    println!("|---|---|---|");
    for r in rows {
        println!("| {} | {:.4e} | {:.4e} |", r.steps, r.student, r.teacher_ddim);
    }
    Ok(())
}

fn train_teacher_cmd(a: TrainTeacherArgs) -> Result<()> {
    let mut data = Dataset::load(&a.data, a.seed).with_context(|| format!("--data {}", a.data))?;
    if let Some(dir) = &a.autoencoder {
        let ae = model_dir::load_autoencoder(dir)?;
        let (train, _) = data.standard_split()?;
        data = Dataset::new(encode_all(&ae, &train.x)?, train.labels, train.num_classes)?;
    }
    let net = MlpConfig {
        sample_shape: data.sample_shape(),
        hidden: a.hidden,
        depth: a.depth,
        time_dim: a.time_dim,
        num_classes: data.num_classes,
        schedule: a.schedule,
    };
    net.validate()?;
    let cfg = TeacherTraining {
        steps: a.steps,
        batch: a.batch,
        optim: OptimConfig {
            lr: a.lr,
            weight_decay: a.weight_decay,
            max_grad_norm: a.max_grad_norm,
            cosine_decay: !a.constant_lr,
        },
        label_dropout: a.label_dropout,
        seed: a.seed,
    };
    let (out_dir, ckpt) = a
        .run
        .checkpointing(serde_json::json!({"data": a.data, "autoencoder": a.autoencoder}))?;
    std::fs::create_dir_all(&out_dir).with_context(|| format!("--out {}: cannot create folder", out_dir.display()))?;
    let start = std::time::Instant::now();
    let out = train_teacher(&data, &net, &cfg, ckpt)?;
    let config = NetworkTeacherConfig {
        net,
        data: a.data.clone(),
        autoencoder: a
            .autoencoder
            .as_deref()
            .map(|p| model_dir::relative_path(p, &out_dir).map(|r| r.to_string_lossy().into_owned()))
            .transpose()?,
        steps: a.steps,
        seed: a.seed,
    };
    save_run(&out_dir, &config, &out.params, &out.losses)?;
    eprintln!(
        "trained in {:.1} s; final loss {:.4}; wrote {}",
        start.elapsed().as_secs_f64(),
        out.losses.last().copied().unwrap_or(f32::NAN),
        out_dir.display()
    );
    Ok(())
}

fn image_training(a: &ImageTrainArgs) -> Result<(Dataset, Dataset, ImageTraining)> {
    let data = Dataset::load(&a.data, a.seed).with_context(|| format!("--data {}", a.data))?;
    ensure!(
        data.num_classes > 0,
        "--data {}: image training needs labelled images",
        a.data
    );
    let (train, test) = data.standard_split()?;
    let optim = OptimConfig {
        lr: a.lr,
        weight_decay: 1e-4,
        max_grad_norm: 1.0,
        cosine_decay: true,
    };
    Ok((
        train,
        test,
        ImageTraining {
            steps: a.steps,
            batch: a.batch,
            optim,
            seed: a.seed,
        },
    ))
}

fn train_featnet_cmd(a: TrainFeatnetArgs) -> Result<()> {
    let (train, test, cfg) = image_training(&a.common)?;
    let c = &a.common;
    let net = FeatnetConfig {
        width: a.width,
        features: a.features,
        classes: train.num_classes,
    };
    let start = std::time::Instant::now();
    let (out_dir, ckpt) = c.run.checkpointing(serde_json::json!({"data": c.data}))?;
    let (params, losses) = train_featnet(&train, &net, &cfg, ckpt)?;
    let acc = accuracy(&Featnet::new(net.clone(), &params)?, &test)?;
    let secs = start.elapsed().as_secs_f64();
    let record = serde_json::json!({"net": net, "data": c.data, "training": cfg, "held_out_accuracy": acc, "train_seconds": secs});
    save_run(&out_dir, &record, &params, &losses)?;
    eprintln!(
        "trained in {secs:.0} s; held-out accuracy {:.2}% on {} images; wrote {}",
        100.0 * acc,
        test.len(),
        out_dir.display()
    );
    Ok(())
}

fn train_autoencoder_cmd(a: TrainAutoencoderArgs) -> Result<()> {
    let (train, test, cfg) = image_training(&a.common)?;
    let c = &a.common;
    let net = AutoencoderConfig {
        latent_channels: a.latent_channels,
        width: a.width,
        scale: 1.0,
    };
    let start = std::time::Instant::now();
    let (out_dir, ckpt) = c.run.checkpointing(serde_json::json!({"data": c.data}))?;
    let (net, params, losses) = train_autoencoder(&train, &net, &cfg, ckpt)?;
    let ae = Autoencoder::new(net.clone(), &params)?;
    let mse = reconstruction_mse(&ae, &test.x)?;
    let featnet_acc = match &a.featnet {
        Some(dir) => {
            let recon = Dataset::new(
                decode_all(&ae, &encode_all(&ae, &test.x)?)?,
                test.labels.clone(),
                test.num_classes,
            )?;
            Some(accuracy(&model_dir::load_featnet(dir)?, &recon)?)
        }
        None => None,
    };
    let secs = start.elapsed().as_secs_f64();
    let record = serde_json::json!({"net": net, "data": c.data, "training": cfg, "held_out_reconstruction_mse": mse,
        "featnet_accuracy_on_reconstructions": featnet_acc, "train_seconds": secs});
    save_run(&out_dir, &record, &params, &losses)?;
    let acc = featnet_acc.map_or(String::new(), |a| {
        format!("; feature-network accuracy on reconstructions {:.2}%", 100.0 * a)
    });
    eprintln!(
        "trained in {secs:.0} s; held-out reconstruction MSE {mse:.4}{acc}; latent scale {:.3}; wrote {}",
        net.scale,
        out_dir.display()
    );
    Ok(())
}

fn reproduce_cmd(a: ReproduceArgs) -> Result<()> {
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
    cfg.cosine_decay &= !a.constant_lr;
    cfg.validate()?;
    let models_dir = a
        .models
        .clone()
        .unwrap_or_else(|| dcm::runtime::assets::home().join("models"));
    let teacher_dir = models_dir.join("teacher");
    let teacher_cfg: NetworkTeacherConfig = model_dir::load_config(&teacher_dir)?;
    let teacher_params = model_dir::load_params(&teacher_dir)?;
    let models = Models {
        autoencoder: model_dir::load_autoencoder(&models_dir.join("autoencoder"))?,
        teacher: dcm::nets::mlp::Mlp::new(teacher_cfg.net, &teacher_params)
            .with_context(|| format!("{}: weights do not match config.json", teacher_dir.display()))?,
        teacher_params,
        featnet: model_dir::load_featnet(&models_dir.join("featnet"))?,
        data: Dataset::load(&a.data, 0).with_context(|| format!("--data {}", a.data))?,
    };
    let out_dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/reproduce-{}", cfg.preset)));
    let start = std::time::Instant::now();
    let outcome = dcm::experiments::reproduce::run(&cfg, &models)?;
    let table = write_run(&out_dir, &cfg, &outcome, start.elapsed().as_secs_f64())?;
    println!("{table}");
    eprintln!(
        "finished in {:.0} s; report in {}",
        start.elapsed().as_secs_f64(),
        out_dir.join("report.md").display()
    );
    Ok(())
}

fn bench_cmd(a: BenchArgs) -> Result<()> {
    ensure!(a.repeats > 0 && a.batch > 0, "--repeats and --batch must be positive");
    let (net, params) = match &a.teacher {
        Some(dir) => (
            model_dir::load_net_config::<MlpConfig>(dir)?,
            model_dir::load_params(dir)?,
        ),
        None => {
            let net = MlpConfig {
                sample_shape: vec![a.dim],
                hidden: a.hidden,
                depth: a.depth,
                time_dim: a.time_dim,
                num_classes: a.classes,
                schedule: ScheduleKind::ScaledLinear,
            };
            net.validate()?;
            let params = net.init(&mut seeded(0))?;
            (net, params)
        }
    };
    let setup = dcm::experiments::bench::BenchSetup {
        net,
        params,
        batch: a.batch,
        intervals: a.intervals,
        guidance: a.guidance,
        repeats: a.repeats,
        device: dcm::runtime::device::parse(&a.device)?,
    };
    let r = dcm::experiments::bench::run(&setup)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "MLP {:?} hidden {}×{}, {} parameters, batch {}, {} threads, device {}",
        r.net.sample_shape, r.net.hidden, r.net.depth, r.parameters, r.batch, r.threads, r.device
    );
    println!("| workload | median ms | samples/s | teacher evaluations |\n|---|---|---|---|");
    for w in &r.workloads {
        println!(
            "| {} | {:.2} | {:.0} | {} |",
            w.name,
            1e3 * w.seconds,
            w.samples_per_second,
            w.teacher_evaluations.map_or("–".into(), |e| e.to_string())
        );
    }
    println!(
        "Direct targets: {:.2}× fewer teacher evaluations than the whole-batch reference; peak memory {:.0} MiB",
        r.direct_evaluation_ratio, r.peak_memory_mib
    );
    Ok(())
}

/// Clap's message folded into one line (help and version print as usual).
fn parse_args() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        if !e.use_stderr() {
            e.exit();
        }
        let text = e.to_string();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
            .filter(|l| !l.is_empty())
            .collect();
        eprintln!("{}", lines.join(" "));
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    // candle's element-wise pool spins for its next job after each op, taking a core from
    // the matrix products that carry the work (dcm's own kernels and gemm run on rayon);
    // the remaining candle ops are small enough for one thread (docs/PERFORMANCE.md).
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Err(e) = dcm::runtime::signals::install() {
        eprintln!("warning: cannot install signal handlers: {e}");
    }
    // The command runs on a worker of rayon's pool, so the parallel kernels it calls split
    // work with the other workers directly instead of handing it over from outside the pool.
    exit_code(rayon::scope(|_| run(cli.command)))
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Sample(a) => sample(a),
        Command::Distill(a) => distill_cmd(a),
        Command::Eval(a) => eval(a),
        Command::TrainTeacher(a) => train_teacher_cmd(a),
        Command::TrainAutoencoder(a) => train_autoencoder_cmd(a),
        Command::TrainFeatnet(a) => train_featnet_cmd(a),
        Command::Reproduce(a) => reproduce_cmd(a),
        Command::Bench(a) => bench_cmd(a),
    }
}

fn exit_code(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(stop) = e.downcast_ref::<dcm::runtime::signals::Interrupted>() {
                eprintln!("{stop}");
                return ExitCode::from(128 + stop.signal as u8);
            }
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
