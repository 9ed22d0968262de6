//! `dcm bench`: the four workloads a user runs, timed as medians over repeats after
//! warm-up, with teacher-evaluation counts and peak memory — the figures compared
//! against PyTorch eager by `bench/compare.sh`. `--workload unet` times a Stable Diffusion
//! UNet instead (`bench_unet.rs`).

use super::args::{refuse, RuntimeArgs};
use super::bench_unet::{UNetBench, UNetPreset};
use crate::consistency::distance::Distance;
use crate::consistency::objective::Method;
use crate::data::Dataset;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::guidance::Guided;
use crate::diffusion::schedule::ScheduleKind;
use crate::diffusion::schedule::T;
use crate::diffusion::solver::{solve, Solver};
use crate::models::model_dir;
use crate::nets::autoencoder::{Autoencoder, AutoencoderConfig};
use crate::nets::featnet::{Featnet, FeatnetConfig};
use crate::nets::layers::Params;
use crate::nets::mlp::MlpConfig;
use crate::nets::network::NetConfig;
use crate::runtime::device::Runtime;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::{seeded, standard_normal};
use crate::train::distill::{distill, DistillConfig};
use crate::train::optim::OptimConfig;
use anyhow::{ensure, Result};
use candle_core::Device;
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    pub name: String,
    /// Median seconds per repeat.
    pub seconds: f64,
    /// Samples processed per second (per repeat: the batch).
    pub samples_per_second: f64,
    pub teacher_evaluations: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub net: NetConfig,
    pub parameters: usize,
    pub batch: usize,
    pub intervals: usize,
    pub threads: usize,
    /// Where the workloads ran: `Cpu` or `Cuda(N)`.
    pub device: String,
    pub workloads: Vec<Workload>,
    /// Parameters of the shipped-size autoencoder and feature network the conv workloads use.
    pub conv_parameters: [usize; 2],
    /// Direct targets: teacher evaluations of the whole-batch reference over the active set's.
    pub direct_evaluation_ratio: f64,
    pub peak_memory_mib: f64,
}

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
fn time(device: &Device, warmup: usize, repeats: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
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

pub struct BenchSetup {
    pub net: NetConfig,
    pub params: Params,
    pub batch: usize,
    pub intervals: usize,
    pub guidance: f64,
    pub repeats: usize,
    pub runtime: Runtime,
}

/// What `dcm bench` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWorkload {
    /// The MLP teacher's forward, guided sampling, one CM and one Direct distillation step,
    /// and the shipped autoencoder and feature network.
    Mlp,
    /// One forward of a Stable Diffusion UNet of the released size (random weights).
    Unet,
    /// One LoRA distillation step, CM and Direct, of that UNet (random weights and data).
    UnetLora,
}

#[derive(Args)]
pub struct BenchArgs {
    /// What to time.
    #[arg(long, value_enum, default_value_t = BenchWorkload::Mlp)]
    pub workload: BenchWorkload,
    /// A network teacher folder to benchmark [default: a fresh MLP of the sizes below] (mlp).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Values per sample of the fresh MLP [default: 196].
    #[arg(long)]
    pub dim: Option<usize>,
    /// [default: 512]
    #[arg(long)]
    pub hidden: Option<usize>,
    /// [default: 4]
    #[arg(long)]
    pub depth: Option<usize>,
    /// [default: 64]
    #[arg(long)]
    pub time_dim: Option<usize>,
    /// [default: 10]
    #[arg(long)]
    pub classes: Option<usize>,
    /// Samples per forward [default: 256 (mlp), 2 (unet)].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Solver intervals N for the sampling and Direct workloads [default: 50].
    #[arg(long)]
    pub intervals: Option<usize>,
    /// [default: 2]
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Which UNet configuration (unet).
    #[arg(long, value_enum)]
    pub unet: Option<UNetPreset>,
    /// Latent height and width [default: 32] (unet).
    #[arg(long)]
    pub size: Option<usize>,
    /// Timed repeats per workload, after warm-up [default: 10 (mlp), 5 (unet)].
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl BenchArgs {
    /// The flags given that only one workload reads.
    fn given(&self, of: BenchWorkload) -> Vec<&'static str> {
        let flags = match of {
            BenchWorkload::Mlp => vec![
                ("--teacher", self.teacher.is_some()),
                ("--dim", self.dim.is_some()),
                ("--hidden", self.hidden.is_some()),
                ("--depth", self.depth.is_some()),
                ("--time-dim", self.time_dim.is_some()),
                ("--classes", self.classes.is_some()),
                ("--intervals", self.intervals.is_some()),
                ("--guidance", self.guidance.is_some()),
            ],
            BenchWorkload::Unet | BenchWorkload::UnetLora => {
                vec![("--unet", self.unet.is_some()), ("--size", self.size.is_some())]
            }
        };
        flags.into_iter().filter(|(_, g)| *g).map(|(f, _)| f).collect()
    }
}

pub fn command(a: BenchArgs) -> Result<()> {
    match a.workload {
        BenchWorkload::Mlp => {
            refuse(
                &a.given(BenchWorkload::Unet),
                "cannot be set for --workload mlp (UNet workload only)",
            )?;
            mlp_command(a)
        }
        BenchWorkload::Unet => {
            refuse(
                &a.given(BenchWorkload::Mlp),
                "cannot be set for --workload unet (MLP workloads only)",
            )?;
            unet_command(a)
        }
        BenchWorkload::UnetLora => {
            let mlp_only: Vec<&str> = a
                .given(BenchWorkload::Mlp)
                .into_iter()
                .filter(|f| !matches!(*f, "--intervals" | "--guidance"))
                .collect();
            refuse(&mlp_only, "cannot be set for --workload unet-lora (MLP workloads only)")?;
            unet_command(a)
        }
    }
}

fn unet_command(a: BenchArgs) -> Result<()> {
    let setup = UNetBench {
        preset: a.unet.unwrap_or(UNetPreset::Sd15),
        batch: a.batch.unwrap_or(2),
        size: a.size.unwrap_or(32),
        repeats: a.repeats.unwrap_or(5),
        runtime: a.runtime.runtime()?,
    };
    let r = match a.workload {
        BenchWorkload::UnetLora => setup.lora_steps(a.intervals.unwrap_or(50), a.guidance.unwrap_or(9.0))?,
        _ => setup.run()?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        r.print();
    }
    Ok(())
}

fn mlp_command(a: BenchArgs) -> Result<()> {
    let (batch, repeats) = (a.batch.unwrap_or(256), a.repeats.unwrap_or(10));
    let dim = a.dim.unwrap_or(196);
    ensure!(repeats > 0 && batch > 0, "--repeats and --batch must be positive");
    ensure_fits(f32_bytes(&[batch, dim.max(784), 64]), &format!("--batch {batch}"))?;
    let (net, params) = match &a.teacher {
        Some(dir) => (
            model_dir::load_net_config::<NetConfig>(dir, model_dir::Kind::Teacher)?,
            model_dir::load_params(dir)?,
        ),
        None => {
            let net = MlpConfig {
                sample_shape: vec![dim],
                hidden: a.hidden.unwrap_or(512),
                depth: a.depth.unwrap_or(4),
                time_dim: a.time_dim.unwrap_or(64),
                num_classes: a.classes.unwrap_or(10),
                schedule: ScheduleKind::ScaledLinear,
            };
            net.validate()?;
            let params = net.init(&mut seeded(0))?;
            (NetConfig::Mlp(net), params)
        }
    };
    let setup = BenchSetup {
        net,
        params,
        batch,
        intervals: a.intervals.unwrap_or(50),
        guidance: a.guidance.unwrap_or(2.0),
        repeats,
        runtime: a.runtime.runtime()?,
    };
    let r = run(&setup)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "network {}, {} parameters, batch {}, {} threads, device {}",
        serde_json::to_string(&r.net)?,
        r.parameters,
        r.batch,
        r.threads,
        r.device
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

pub fn run(s: &BenchSetup) -> Result<BenchReport> {
    let dev = &s.runtime.device;
    let params = s.runtime.frozen(&s.params)?;
    let teacher = s.net.build(&params, None)?;
    let teacher = &*teacher;
    let mut shape = vec![s.batch];
    shape.extend(s.net.sample_shape());
    let mut rng = seeded(0);
    let x = standard_normal(&mut rng, shape.clone(), &Device::Cpu)?.to_device(dev)?;
    let classes = teacher.num_classes().max(1) as u32;
    let labels: Vec<Option<u32>> = (0..s.batch as u32)
        .map(|i| (teacher.num_classes() > 0).then_some(i % classes))
        .collect();
    let cond = Condition::Labels(labels.clone());
    let t: Vec<usize> = (0..s.batch).map(|i| 1 + (i * 997) % T).collect();
    let grid = Discretization::new(s.intervals)?;
    let guided = Guided::new(teacher, s.guidance);
    let per_sec = |secs: f64| s.batch as f64 / secs;
    let mut workloads = Vec::new();
    let fwd = time(dev, 3, s.repeats, || teacher.eps(&x, &t, &cond).map(|_| ()))?;
    workloads.push(Workload {
        name: "teacher forward".into(),
        seconds: fwd,
        samples_per_second: per_sec(fwd),
        teacher_evaluations: None,
    });
    let sampling = time(dev, 1, s.repeats.div_ceil(4), || {
        solve(Solver::Ddim, &guided, &x, grid, T, &cond).map(|_| ())
    })?;
    let name = format!("teacher {}-interval guided DDIM sampling", s.intervals);
    workloads.push(Workload {
        name,
        seconds: sampling,
        samples_per_second: per_sec(sampling),
        teacher_evaluations: None,
    });
    let student_init = s.runtime.trainable(&s.params)?;
    let data = Dataset::new(
        standard_normal(&mut rng, shape, &Device::Cpu)?,
        labels.clone(),
        teacher.num_classes(),
    )?;
    for method in Method::compared() {
        let cfg = DistillConfig {
            method,
            solver: Solver::Ddim,
            intervals: s.intervals,
            guidance: s.guidance,
            steps: 1,
            batch: s.batch,
            optim: OptimConfig {
                lr: 1e-4,
                weight_decay: 1e-2,
                max_grad_norm: 1.0,
                cosine_decay: false,
            },
            loss: Distance::L2,
            ema_decay: None,
            lora: None,
            grad_accum: 1,
            seed: 0,
        };
        let mut evals = 0;
        let secs = time(dev, 2, s.repeats, || {
            evals = distill(Some(teacher), &s.net, &student_init, &data, &cfg, Default::default())?.teacher_evaluations;
            Ok(())
        })?;
        let name = format!("one {} distillation step", method.title());
        workloads.push(Workload {
            name,
            seconds: secs,
            samples_per_second: per_sec(secs),
            teacher_evaluations: Some(evals),
        });
    }
    let (conv, conv_parameters) = conv_workloads(s)?;
    workloads.extend(conv);
    Ok(BenchReport {
        conv_parameters,
        parameters: s.params.values().map(|p| p.elem_count()).sum(),
        net: s.net.clone(),
        batch: s.batch,
        intervals: s.intervals,
        threads: candle_core::utils::get_num_threads(),
        device: format!("{:?}", s.runtime.device.location()),
        direct_evaluation_ratio: direct_evaluation_ratio(&guided, &x, grid, &cond)?,
        workloads,
        peak_memory_mib: peak_memory_mib(),
    })
}

/// The image networks at the shipped sizes (fresh weights): decoding a batch of latents to
/// images (what evaluation does per sample) and the feature network's forward (the metrics).
fn conv_workloads(s: &BenchSetup) -> Result<(Vec<Workload>, [usize; 2])> {
    let mut rng = seeded(1);
    let ae_cfg = AutoencoderConfig {
        latent_channels: 4,
        width: 16,
        scale: 1.0,
    };
    let ae_params = ae_cfg.init(&mut rng)?;
    let ae = Autoencoder::new(ae_cfg, &s.runtime.frozen(&ae_params)?)?;
    let fn_cfg = FeatnetConfig {
        width: 32,
        features: 128,
        classes: 10,
    };
    let fn_params = fn_cfg.init(&mut rng)?;
    let featnet = Featnet::new(fn_cfg, &s.runtime.frozen(&fn_params)?)?;
    let z = standard_normal(&mut rng, (s.batch, 4, 7, 7), &Device::Cpu)?.to_device(&s.runtime.device)?;
    let images = candle_core::Tensor::rand(0f32, 1.0, (s.batch, 1, 28, 28), &s.runtime.device)?;
    let decode = time(&s.runtime.device, 3, s.repeats, || ae.decode(&z).map(|_| ()))?;
    let features = time(&s.runtime.device, 3, s.repeats, || {
        featnet.features(&images).map(|_| ())
    })?;
    let workload = |name: &str, seconds: f64| Workload {
        name: name.into(),
        seconds,
        samples_per_second: s.batch as f64 / seconds,
        teacher_evaluations: None,
    };
    // Only the decoder's weights take part in decoding.
    let decoder = ae_params
        .iter()
        .filter(|(k, _)| k.starts_with("dec."))
        .map(|(_, p)| p.elem_count())
        .sum();
    Ok((
        vec![
            workload("autoencoder decode", decode),
            workload("feature network forward", features),
        ],
        [decoder, fn_params.values().map(|p| p.elem_count()).sum()],
    ))
}

/// Teacher evaluations of the whole-batch Direct targets over the active set's, with start
/// times spread evenly over the grid (row i starts at grid point i mod N: the expectation of
/// uniform draws when the batch is a multiple of N, without their sampling noise).
fn direct_evaluation_ratio(
    teacher: &dyn Denoiser,
    x: &candle_core::Tensor,
    grid: Discretization,
    cond: &Condition,
) -> Result<f64> {
    use crate::consistency::direct::{direct_targets, direct_targets_whole_batch};
    use crate::diffusion::denoiser::Counted;
    let t: Vec<usize> = (0..cond.len()).map(|i| grid.start(i % grid.intervals())).collect();
    let (active, whole) = (Counted::new(teacher), Counted::new(teacher));
    direct_targets(Solver::Ddim, &active, x, &t, grid, cond)?;
    direct_targets_whole_batch(Solver::Ddim, &whole, x, &t, grid, cond)?;
    Ok(whole.evaluations() as f64 / active.evaluations() as f64)
}
