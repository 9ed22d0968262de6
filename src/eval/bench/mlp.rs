//! `dcm bench --workload mlp`: a network teacher's forward, guided DDIM sampling, one CM and
//! one Direct distillation step, and the image networks (`conv.rs`), timed as medians over
//! repeats after warm-up, with teacher-evaluation counts and peak memory.

use super::conv::conv_workloads;
use super::timing::{peak_memory_mib, time, Workload};
use crate::consistency::objective::Method;
use crate::data::Dataset;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::guidance::Guided;
use crate::diffusion::schedule::{ScheduleKind, T};
use crate::diffusion::solver::Solver;
use crate::diffusion::teacher_ode::TeacherOde;
use crate::models::model_dir;
use crate::nets::layers::Params;
use crate::nets::lora::LoraConfig;
use crate::nets::mlp::MlpConfig;
use crate::nets::network::NetConfig;
use crate::runtime::device::Runtime;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::{seeded, standard_normal, Rng};
use crate::train::distill::{distill, DistillConfig};
use anyhow::{bail, ensure, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::path::PathBuf;

/// What `run` measured, with the settings it ran.
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

/// The MLP teacher drawn (seed 0) when no teacher folder is given.
#[derive(Clone, Debug)]
pub struct FreshMlp {
    /// Values per sample.
    pub dim: usize,
    pub hidden: usize,
    pub depth: usize,
    pub time_dim: usize,
    pub classes: usize,
}

impl Default for FreshMlp {
    fn default() -> Self {
        Self {
            dim: 196,
            hidden: 512,
            depth: 4,
            time_dim: 64,
            classes: 10,
        }
    }
}

impl FreshMlp {
    fn draw(&self) -> Result<(NetConfig, Params)> {
        let net = MlpConfig {
            sample_shape: vec![self.dim],
            hidden: self.hidden,
            depth: self.depth,
            time_dim: self.time_dim,
            num_classes: self.classes,
            schedule: ScheduleKind::ScaledLinear,
        };
        net.validate()?;
        let params = net.init(&mut seeded(0))?;
        Ok((NetConfig::Mlp(net), params))
    }
}

/// What the MLP workloads run: a teacher folder or a fresh MLP, and the sizes of the work.
#[derive(Clone, Debug)]
pub struct MlpBench {
    pub teacher: Option<PathBuf>,
    pub fresh: FreshMlp,
    /// Samples per forward.
    pub batch: usize,
    /// Solver intervals N of the sampling and Direct workloads.
    pub intervals: usize,
    pub guidance: f64,
    /// Timed repeats per workload, after warm-up.
    pub repeats: usize,
}

impl Default for MlpBench {
    fn default() -> Self {
        Self {
            teacher: None,
            fresh: FreshMlp::default(),
            batch: 256,
            intervals: 50,
            guidance: 2.0,
            repeats: 10,
        }
    }
}

impl MlpBench {
    /// Checks the sizes, then loads or draws the teacher and opens `runtime`, in that order.
    pub fn setup(self, runtime: impl FnOnce() -> Result<Runtime>) -> Result<BenchSetup> {
        let (batch, dim) = (self.batch, self.fresh.dim);
        ensure!(self.repeats > 0 && batch > 0, "--repeats and --batch must be positive");
        ensure_fits(f32_bytes(&[batch, dim.max(784), 64]), &format!("--batch {batch}"))?;
        let (net, params) = match &self.teacher {
            Some(dir) if !dir.is_dir() => bail!(
                "--teacher {}: not a folder; bench --workload mlp times a network teacher folder written by \
                 dcm train-teacher (--workload unet and unet-lora time a released-size SD UNet of random weights)",
                dir.display()
            ),
            Some(dir) => (
                model_dir::load_net_config::<NetConfig>(dir, model_dir::Kind::Teacher)?,
                model_dir::load_params(dir)?,
            ),
            None => self.fresh.draw()?,
        };
        Ok(BenchSetup {
            net,
            params,
            batch,
            intervals: self.intervals,
            guidance: self.guidance,
            repeats: self.repeats,
            runtime: runtime()?,
        })
    }
}

/// A network teacher and the sizes of the work, ready to time.
pub struct BenchSetup {
    pub net: NetConfig,
    pub params: Params,
    pub batch: usize,
    pub intervals: usize,
    pub guidance: f64,
    pub repeats: usize,
    pub runtime: Runtime,
}

/// The teacher's inputs: one batch of noise, labels cycling through the classes (none for
/// an unconditional teacher) and timesteps spread over the schedule.
struct Inputs {
    shape: Vec<usize>,
    x: Tensor,
    labels: Vec<Option<u32>>,
    cond: Condition,
    t: Vec<usize>,
}

impl Inputs {
    fn draw(s: &BenchSetup, teacher: &dyn Denoiser, rng: &mut Rng) -> Result<Self> {
        let mut shape = vec![s.batch];
        shape.extend(s.net.sample_shape());
        let x = standard_normal(rng, shape.clone(), &Device::Cpu)?.to_device(&s.runtime.device)?;
        let classes = teacher.num_classes().max(1) as u32;
        let labels: Vec<Option<u32>> = (0..s.batch as u32)
            .map(|i| (teacher.num_classes() > 0).then_some(i % classes))
            .collect();
        Ok(Self {
            cond: Condition::Labels(labels.clone()),
            t: (0..s.batch).map(|i| 1 + (i * 997) % T).collect(),
            shape,
            x,
            labels,
        })
    }
}

/// Times every workload of `s` (teacher, distillation, image networks) in that order.
pub fn run(s: &BenchSetup) -> Result<BenchReport> {
    let params = s.runtime.frozen(&s.params)?;
    let teacher = s.net.build(&params, None)?;
    let teacher = &*teacher;
    let mut rng = seeded(0);
    let inputs = Inputs::draw(s, teacher, &mut rng)?;
    let grid = Discretization::new(s.intervals)?;
    let guided = Guided::new(teacher, s.guidance);
    let ode = TeacherOde {
        solver: Solver::Ddim,
        grid,
        guidance: s.guidance,
    };
    let mut workloads = teacher_workloads(s, teacher, &ode, &inputs)?;
    workloads.extend(distillation_workloads(s, teacher, &inputs, &mut rng)?);
    let (conv, conv_parameters) = conv_workloads(&s.runtime, s.batch, s.repeats)?;
    workloads.extend(conv);
    Ok(BenchReport {
        conv_parameters,
        parameters: s.params.values().map(|p| p.elem_count()).sum(),
        net: s.net.clone(),
        batch: s.batch,
        intervals: s.intervals,
        threads: candle_core::utils::get_num_threads(),
        device: format!("{:?}", s.runtime.device.location()),
        direct_evaluation_ratio: direct_evaluation_ratio(&guided, &inputs.x, grid, &inputs.cond)?,
        workloads,
        peak_memory_mib: peak_memory_mib(),
    })
}

/// The teacher's forward, and a whole guided DDIM solve over the grid (a quarter as many
/// repeats: each is N guided forwards).
fn teacher_workloads(
    s: &BenchSetup,
    teacher: &dyn Denoiser,
    ode: &TeacherOde,
    inputs: &Inputs,
) -> Result<Vec<Workload>> {
    let dev = &s.runtime.device;
    let Inputs { x, t, cond, .. } = inputs;
    let forward = time(dev, 3, s.repeats, || teacher.eps(x, t, cond).map(|_| ()))?;
    let sampling = time(dev, 1, s.repeats.div_ceil(4), || {
        ode.solve(teacher, x, cond).map(|_| ())
    })?;
    Ok(vec![
        Workload::timed("teacher forward", forward, s.batch),
        Workload::timed(
            format!("teacher {}-interval guided DDIM sampling", s.intervals),
            sampling,
            s.batch,
        ),
    ])
}

/// One step of the paper's distillation (DDIM, its optimizer, L2, θ⁻ = θ, seed 0) at the
/// bench's N, w and batch, training every weight of the network instead of adapters.
fn one_step(s: &BenchSetup, method: Method) -> DistillConfig {
    DistillConfig {
        intervals: s.intervals,
        guidance: s.guidance,
        steps: 1,
        batch: s.batch,
        lora: None,
        ..DistillConfig::paper_lora(method, LoraConfig::PAPER)
    }
}

/// One distillation step of each compared method from the teacher's weights, on a batch of
/// random data (drawn from `rng` after the inputs), with the teacher evaluations it made.
fn distillation_workloads(
    s: &BenchSetup,
    teacher: &dyn Denoiser,
    inputs: &Inputs,
    rng: &mut Rng,
) -> Result<Vec<Workload>> {
    let student_init = s.runtime.trainable(&s.params)?;
    let data = Dataset::new(
        standard_normal(rng, inputs.shape.clone(), &Device::Cpu)?,
        inputs.labels.clone(),
        teacher.num_classes(),
    )?;
    let mut workloads = Vec::new();
    for method in Method::compared() {
        let cfg = one_step(s, method);
        let mut evals = 0;
        let secs = time(&s.runtime.device, 2, s.repeats, || {
            evals = distill(Some(teacher), &s.net, &student_init, &data, &cfg, Default::default())?.teacher_evaluations;
            Ok(())
        })?;
        workloads.push(Workload {
            teacher_evaluations: Some(evals),
            ..Workload::timed(format!("one {} distillation step", method.title()), secs, s.batch)
        });
    }
    Ok(workloads)
}

/// Teacher evaluations of the whole-batch Direct targets over the active set's, with start
/// times spread evenly over the grid (row i starts at grid point i mod N: the expectation of
/// uniform draws when the batch is a multiple of N, without their sampling noise).
fn direct_evaluation_ratio(teacher: &dyn Denoiser, x: &Tensor, grid: Discretization, cond: &Condition) -> Result<f64> {
    use crate::consistency::direct::{direct_targets, direct_targets_whole_batch};
    use crate::diffusion::denoiser::Counted;
    let t: Vec<usize> = (0..cond.len()).map(|i| grid.start(i % grid.intervals())).collect();
    let (active, whole) = (Counted::new(teacher), Counted::new(teacher));
    direct_targets(Solver::Ddim, &active, x, &t, grid, cond)?;
    direct_targets_whole_batch(Solver::Ddim, &whole, x, &t, grid, cond)?;
    Ok(whole.evaluations() as f64 / active.evaluations() as f64)
}

impl BenchReport {
    /// The report as a Markdown table with its headline figures.
    pub fn print(&self) -> Result<()> {
        println!(
            "network {}, {} parameters, batch {}, {} threads, device {}",
            serde_json::to_string(&self.net)?,
            self.parameters,
            self.batch,
            self.threads,
            self.device
        );
        println!("| workload | median ms | samples/s | teacher evaluations |\n|---|---|---|---|");
        for w in &self.workloads {
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
            self.direct_evaluation_ratio, self.peak_memory_mib
        );
        Ok(())
    }
}
