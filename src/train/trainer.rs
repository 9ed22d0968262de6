//! The shared optimisation loop of every training command: trainable vars,
//! AdamW with clipping, optional EMA, the run's random generator, NaN/Inf guard,
//! loss log, progress bar, and crash-safe checkpoints with exact resume.

use crate::nets::layers::Params;
use crate::runtime::bucket;
use crate::runtime::fingerprint::Fingerprints;
use crate::runtime::noise::{seeded, Rng};
use crate::runtime::progress;
use crate::runtime::ranks;
use crate::runtime::signals::{
    continue_text, record_saved, requested, signal_name, Interrupted, Stopped, GRACE, SIGINT, SIGTERM,
};
use crate::train::checkpoint::{check_inputs, load_checkpoint, read_state, save_checkpoint, CHECKPOINT};
use crate::train::ema::Ema;
use crate::train::optim::{clip_scale, grad_norm, AdamW, OptimConfig};
use anyhow::{bail, ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use indicatif::ProgressBar;
use rand::SeedableRng;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

/// Where and how often a run saves its full state.
#[derive(Clone, Debug, Default)]
pub struct Checkpointing {
    /// The run's output folder (the checkpoint is `DIR/checkpoint.safetensors`); none: no checkpoints.
    pub dir: Option<PathBuf>,
    /// Save every this many steps (0: only when stopped by a signal).
    pub every: usize,
    /// Continue from the checkpoint in `dir`.
    pub resume: bool,
    /// What the caller knows defines the run beyond the training config (data, teacher).
    pub context: Value,
    /// Also keep the state at these steps, as `DIR/checkpoint-STEP.safetensors` (one run
    /// gives the whole training-length curve).
    pub keep: Vec<usize>,
    /// Content fingerprints of the run's input files (teacher, data): recorded in every
    /// checkpoint, and a resume on changed ones is refused naming them.
    pub inputs: Fingerprints,
}

impl Checkpointing {
    /// Before any work: refuses a resume whose inputs changed since the checkpoint (the
    /// trainer checks again as it restores, with the settings).
    pub fn check_resume_inputs(&self) -> Result<()> {
        match (&self.dir, self.resume) {
            (Some(dir), true) if dir.join(CHECKPOINT).is_file() => {
                check_inputs(dir, &read_state(&dir.join(CHECKPOINT))?, &self.inputs).map(|_| ())
            }
            _ => Ok(()),
        }
    }
}

/// The file a run's state at `step` is kept in (`Checkpointing::keep`).
pub fn kept_checkpoint(step: usize) -> String {
    format!("checkpoint-{step}.safetensors")
}

/// The schedule of a plain supervised training run (feature network, autoencoder).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageTraining {
    pub steps: usize,
    pub batch: usize,
    pub optim: OptimConfig,
    pub seed: u64,
}

/// What a training loop needs besides its initial weights.
pub struct TrainerOptions<'a> {
    pub what: &'a str,
    pub steps: usize,
    pub optim: OptimConfig,
    pub seed: u64,
    pub ema_decay: Option<f64>,
    pub checkpointing: Checkpointing,
    /// Where the weights train.
    pub device: Device,
    /// Everything that defines the run; a resume must match it exactly.
    pub run_config: Value,
}

pub struct Trainer {
    names: Vec<String>,
    vars: Vec<Var>,
    opt: AdamW,
    ema: Option<Ema>,
    cfg: OptimConfig,
    total: usize,
    rng: Rng,
    pub losses: Vec<f32>,
    /// A count the loop keeps across resumes (distillation: teacher evaluations so far).
    pub counter: u64,
    /// Gradients and loss summed over this step's micro-batches so far.
    pending: Option<(GradStore, f32)>,
    /// When the last step ended: a step longer than `signals::GRACE` makes the run save after
    /// every step, so a forced stop keeps the last completed one.
    last_step_end: Instant,
    /// The generator and counter as the current step began (`begin_step`): what a stop in the
    /// middle of the step saves, so the resumed step draws what the interrupted one drew.
    step_start: Option<(Rng, u64)>,
    bar: ProgressBar,
    checkpointing: Checkpointing,
    run_config: Value,
    /// Training time of the processes before this one (from the resumed checkpoint), and
    /// when this one began: a resumed run's time is the whole run's.
    earlier_seconds: f64,
    started: Instant,
}

impl Trainer {
    /// Trainable copies of `init` (sorted by name, so updates are deterministic), or the
    /// state of the checkpoint being resumed.
    pub fn new(init: &Params, o: TrainerOptions) -> Result<Self> {
        ensure!(o.steps > 0, "--steps {}: must be at least 1", o.steps);
        o.optim.validate()?;
        let names: Vec<String> = init.keys().cloned().collect();
        let vars = init
            .values()
            .map(|t| Var::from_tensor(&t.to_device(&o.device)?.copy()?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let ema = o.ema_decay.map(|d| Ema::new(d, &vars)).transpose()?;
        let mut t = Self {
            opt: AdamW::new(o.optim, &vars)?,
            names,
            vars,
            ema,
            cfg: o.optim,
            total: o.steps,
            rng: seeded(o.seed),
            losses: Vec::new(),
            counter: 0,
            pending: None,
            last_step_end: Instant::now(),
            step_start: None,
            bar: progress::bar(o.steps, o.what),
            run_config: json!({"run": o.run_config, "context": o.checkpointing.context}),
            checkpointing: o.checkpointing,
            earlier_seconds: 0.0,
            started: Instant::now(),
        };
        if t.checkpointing.resume {
            t.restore()?;
        }
        Ok(t)
    }

    /// Where the trained weights live.
    pub fn device(&self) -> Device {
        self.vars.first().map_or(Device::Cpu, |v| v.device().clone())
    }

    /// Seconds the run has trained, over every process that continued it (up to the last
    /// checkpoint of each one stopped).
    pub fn seconds(&self) -> f64 {
        self.earlier_seconds + self.started.elapsed().as_secs_f64()
    }

    /// The run's random generator (part of the checkpointed state).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    pub fn finished(&self) -> bool {
        self.losses.len() >= self.total
    }

    /// The trainable tensors (gradients flow into them).
    pub fn params(&self) -> Params {
        self.names
            .iter()
            .cloned()
            .zip(self.vars.iter().map(|v| v.as_tensor().clone()))
            .collect()
    }

    /// The current weights as plain tensors: no graph, updated in place by each step.
    pub fn frozen_params(&self) -> Params {
        self.names
            .iter()
            .cloned()
            .zip(self.vars.iter().map(|v| v.as_tensor().detach()))
            .collect()
    }

    /// The EMA weights (updated in place), if the run keeps an EMA.
    pub fn ema_params(&self) -> Option<Params> {
        self.ema.as_ref().map(|e| e.params(&self.names))
    }

    /// Backward, clip, update, EMA; refuses a non-finite loss before touching the weights
    /// (the last checkpoint stays as it was); checkpoints on schedule or on a stop signal.
    pub fn step(&mut self, loss: &Tensor) -> Result<f32> {
        self.accumulate(loss, 1)?;
        self.step_accumulated()
    }

    /// Adds the gradient of one of `parts` equal micro-batches' losses (`--grad-accum`): the
    /// step then follows the mean loss over them, as one batch of their total size would.
    /// Each part's graph is freed after its backward pass, so only one part's activations live.
    pub fn accumulate(&mut self, loss: &Tensor, parts: usize) -> Result<()> {
        let value: f32 = loss.to_scalar()?;
        if !value.is_finite() {
            self.bar.abandon();
            let step = self.losses.len() + 1;
            bail!(
                "loss is {value} at step {step}: the run diverged — lower --lr ({}){}; stopped without \
                 saving (the last checkpoint is kept)",
                self.cfg.lr,
                match self.cfg.max_grad_norm {
                    0.0 => " or clip the gradients with --max-grad-norm (now off)".to_string(),
                    n => format!(" or --max-grad-norm ({n})"),
                }
            );
        }
        let grads = match parts {
            1 => loss.backward()?,
            _ => (loss / parts as f64)?.backward()?,
        };
        self.pending = Some(match self.pending.take() {
            None => (grads, value / parts as f32),
            Some((mut sum, total)) => {
                for v in &self.vars {
                    if let Some(g) = grads.get(v) {
                        let added = match sum.get(v) {
                            Some(s) => (s + g)?,
                            None => g.clone(),
                        };
                        sum.insert(v, added);
                    }
                }
                (sum, total + value / parts as f32)
            }
        });
        Ok(())
    }

    /// Marks the start of a step made of micro-batches: the generator and counter now are what
    /// `stop_mid_step` restores.
    pub fn begin_step(&mut self) {
        self.step_start = Some((self.rng.clone(), self.counter));
    }

    /// A stop by `signal` in the middle of a step: its partial gradient is discarded, the
    /// generator and counter go back to the step's start, and the last completed step is
    /// saved, so `--resume` redraws this step's batches exactly. Returns the error to end with.
    pub fn stop_mid_step(&mut self, signal: usize) -> anyhow::Error {
        self.pending = None;
        if let Some((rng, counter)) = self.step_start.take() {
            self.rng = rng;
            self.counter = counter;
        }
        self.bar.abandon();
        let Some(dir) = self.checkpointing.dir.clone() else {
            return Stopped { signal }.into();
        };
        if let Err(e) = self.save() {
            return e.context(format!(
                "stopped by {}, but the checkpoint could not be saved",
                signal_name(signal)
            ));
        }
        Interrupted {
            signal,
            step: self.losses.len(),
            dir,
            mid_step: true,
        }
        .into()
    }

    /// The optimizer step on the gradients accumulated since the last step.
    pub fn step_accumulated(&mut self) -> Result<f32> {
        let (grads, value) = self.pending.take().context("no gradient accumulated for this step")?;
        let (grads, value, stop) = self.across_ranks(grads, value)?;
        self.step_start = None;
        let step = self.losses.len() + 1;
        let scale = clip_scale(grad_norm(&self.vars, &grads)?, self.cfg.max_grad_norm);
        self.opt
            .step(&self.vars, &grads, self.cfg.lr_at(step - 1, self.total), scale)?;
        if let Some(e) = &self.ema {
            e.update(&self.vars)?;
        }
        self.losses.push(value);
        if step.is_multiple_of(10) {
            let recent = &self.losses[self.losses.len().saturating_sub(50)..];
            self.bar
                .set_message(format!("loss {:.4e}", recent.iter().sum::<f32>() / recent.len() as f32));
        }
        self.bar.inc(1);
        self.log_when_not_a_terminal(step);
        if let Some(signal) = stop {
            let Some(dir) = self.checkpointing.dir.clone() else {
                self.bar.abandon();
                return Err(Stopped { signal }.into());
            };
            self.save()?;
            self.bar.abandon();
            return Err(Interrupted {
                signal,
                step,
                dir,
                mid_step: false,
            }
            .into());
        }
        let long = std::mem::replace(&mut self.last_step_end, Instant::now()).elapsed() > GRACE;
        if long || (self.checkpointing.every > 0 && step.is_multiple_of(self.checkpointing.every)) {
            self.save()?;
        }
        if self.checkpointing.keep.contains(&step) {
            self.save_as(&kept_checkpoint(step))?;
        }
        Ok(value)
    }

    /// This step's gradients, loss and stop request summed over the data-parallel ranks (each
    /// rank's are its rows' share of the batch mean): identical on every rank, so all take the
    /// same update and stop at the same step. The teacher-evaluation counter is summed likewise
    /// (its increment over the step). On the CPU everything goes in one flattened host buffer;
    /// where the gradients' device sums them itself (NCCL), they go in one flattened bucket
    /// there and only the control values through the host.
    fn across_ranks(&mut self, grads: GradStore, value: f32) -> Result<(GradStore, f32, Option<usize>)> {
        let on_device = ranks::sums_on(&self.device());
        if ranks::place().size == 1 && !on_device {
            return Ok((grads, value, requested()));
        }
        let counted_from = self.step_start.as_ref().map_or(self.counter, |(_, c)| *c);
        let control = Control {
            evaluations: self.counter - counted_from,
            loss: value,
            signal: requested(),
        };
        let (grads, summed) = match on_device {
            true => summed_on_device(grads, &self.vars, &control)?,
            false => summed_on_host(grads, &self.vars, &control)?,
        };
        self.counter = counted_from + summed.evaluations;
        Ok((grads, summed.loss, summed.signal))
    }

    /// Without a terminal the bar is hidden; print a line every 10% instead, so logs show progress.
    fn log_when_not_a_terminal(&self, step: usize) {
        if self.bar.is_hidden() && ranks::place().is_root() && self.total >= 100 && step.is_multiple_of(self.total / 10)
        {
            let recent = &self.losses[self.losses.len().saturating_sub(50)..];
            let loss = recent.iter().sum::<f32>() / recent.len() as f32;
            eprintln!(
                "{} step {step}/{}: loss {loss:.4e}, {:.1} it/s",
                self.bar.prefix(),
                self.total,
                self.bar.per_sec()
            );
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn save(&self) -> Result<()> {
        self.save_as(CHECKPOINT)?;
        if let Some(dir) = &self.checkpointing.dir {
            record_saved(format!(
                "checkpoint of step {} saved, continue with {}",
                self.losses.len(),
                continue_text(dir)
            ));
        }
        Ok(())
    }

    fn save_as(&self, file: &str) -> Result<()> {
        let Some(dir) = &self.checkpointing.dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        let (adam_step, m, v) = self.opt.state();
        let mut tensors = Params::new();
        for (i, name) in self.names.iter().enumerate() {
            tensors.insert(format!("param/{name}"), self.vars[i].as_tensor().detach());
            tensors.insert(format!("adam_m/{name}"), m[i].clone());
            tensors.insert(format!("adam_v/{name}"), v[i].clone());
            if let Some(e) = &self.ema {
                tensors.insert(format!("ema/{name}"), e.shadow()[i].as_tensor().detach());
            }
        }
        tensors.insert("losses".into(), Tensor::new(self.losses.as_slice(), &Device::Cpu)?);
        let rng = json!({"seed": self.rng.get_seed().iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "stream": self.rng.get_stream(), "word_pos": self.rng.get_word_pos().to_string()});
        let state = json!({"adam_step": adam_step, "rng": rng, "counter": self.counter, "config": self.run_config,
            "inputs": self.checkpointing.inputs, "seconds": self.seconds()});
        save_checkpoint(&dir.join(file), &tensors, &state)
    }

    /// The run folder's checkpoint, refused unless it was made with this run's settings and inputs.
    fn matching_checkpoint(&self) -> Result<(PathBuf, Params, Value)> {
        let dir = self
            .checkpointing
            .dir
            .clone()
            .context("--resume needs the run's folder")?;
        let path = dir.join(CHECKPOINT);
        ensure!(
            path.is_file(),
            "--resume {}: no {CHECKPOINT} in that folder",
            dir.display()
        );
        let (t, state) = load_checkpoint(&path)?;
        if state["config"] != self.run_config {
            let mut changes = Vec::new();
            differences(&state["config"], &self.run_config, "", &mut changes);
            bail!(
                "--resume {}: the checkpoint was made with different settings: {}",
                dir.display(),
                changes.join("; ")
            );
        }
        if !check_inputs(&dir, &state, &self.checkpointing.inputs)? && !self.checkpointing.inputs.is_empty() {
            eprintln!(
                "note: --resume {}: the checkpoint records no fingerprints of the teacher's and the data's \
                 files (made by an older dcm), so they are not checked against it; the next checkpoint records them",
                dir.display()
            );
        }
        Ok((path, t, state))
    }

    /// Puts each parameter and EMA shadow back on its variable's device; returns AdamW's moments.
    fn restore_tensors(&mut self, t: &mut Params, bad: &dyn Fn(&str) -> String) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let mut take = |kind: &str, name: &str| {
            t.remove(&format!("{kind}/{name}"))
                .with_context(|| bad(&format!("lacks {kind}/{name}")))
        };
        let (mut m, mut v) = (Vec::new(), Vec::new());
        for (i, name) in self.names.clone().iter().enumerate() {
            let device = self.vars[i].device().clone();
            let mut take = |kind: &str| take(kind, name).and_then(|t| Ok(t.to_device(&device)?));
            self.vars[i]
                .set(&take("param")?)
                .with_context(|| bad(&format!("tensor param/{name} does not fit")))?;
            m.push(take("adam_m")?);
            v.push(take("adam_v")?);
            if let Some(e) = &self.ema {
                e.shadow()[i]
                    .set(&take("ema")?)
                    .with_context(|| bad(&format!("tensor ema/{name} does not fit")))?;
            }
        }
        Ok((m, v))
    }

    /// Continues from the run folder's checkpoint: weights, optimizer moments, generator and step count.
    fn restore(&mut self) -> Result<()> {
        let (path, mut t, state) = self.matching_checkpoint()?;
        let bad = |what: &str| format!("{}: checkpoint {what}", path.display());
        let (m, v) = self.restore_tensors(&mut t, &bad)?;
        self.losses = t
            .remove("losses")
            .with_context(|| bad("lacks losses"))?
            .to_vec1::<f32>()?;
        // One optimizer step per logged loss: AdamW's bias correction depends on the count.
        let adam_step = state["adam_step"].as_i64().with_context(|| bad("lacks adam_step"))?;
        ensure!(
            adam_step == self.losses.len() as i64,
            "{}",
            bad(&format!(
                "has adam_step {adam_step} but {} completed steps",
                self.losses.len()
            ))
        );
        self.opt
            .restore(adam_step as i32, m, v)
            .with_context(|| bad("optimizer state does not fit"))?;
        ensure!(
            self.losses.len() <= self.total,
            "{}",
            bad("is past the requested number of steps")
        );
        self.rng = restore_rng(&state["rng"]).with_context(|| bad("has a malformed generator state"))?;
        self.counter = state["counter"].as_u64().with_context(|| bad("lacks counter"))?;
        // Checkpoints of older dcm versions record no time.
        self.earlier_seconds = state["seconds"]
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(0.0);
        self.bar.set_position(self.losses.len() as u64);
        Ok(())
    }
}

/// The gradients and control values in one host buffer of f64, summed over MPI.
fn summed_on_host(mut grads: GradStore, vars: &[Var], control: &Control) -> Result<(GradStore, Control)> {
    let mut flat = Vec::new();
    for v in vars {
        match grads.get(v) {
            Some(g) => flat.extend(g.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?),
            None => flat.resize(flat.len() + v.elem_count(), 0.0),
        }
    }
    let at = flat.len();
    flat.extend(control.values());
    ranks::sum(&mut flat)?;
    let mut from = 0;
    for v in vars {
        let n = v.elem_count();
        let g = Tensor::from_slice(&flat[from..from + n], v.shape(), &Device::Cpu)?;
        grads.insert(v, g.to_dtype(v.dtype())?.to_device(v.device())?);
        from += n;
    }
    Ok((grads, Control::from_values(&flat[at..])))
}

/// The gradients in one bucket on their device, summed there (NCCL); the control values over
/// MPI.
fn summed_on_device(mut grads: GradStore, vars: &[Var], control: &Control) -> Result<(GradStore, Control)> {
    let flat = bucket::flatten(&grads, vars, bucket::dtype(vars))?;
    ranks::sum_in_place(&flat)?;
    bucket::split(&flat, vars, &mut grads)?;
    let mut values = control.values();
    ranks::sum(&mut values)?;
    Ok((grads, Control::from_values(&values)))
}

/// The values every step sums over the ranks besides the gradients: this rank's teacher
/// evaluations in the step, its share of the loss, and whether it was asked to stop.
#[derive(Debug, PartialEq)]
struct Control {
    evaluations: u64,
    loss: f32,
    signal: Option<usize>,
}

impl Control {
    /// As four numbers to sum: a stop request counts once per signal, so the sum says whether
    /// any rank had one.
    fn values(&self) -> [f64; 4] {
        [
            self.evaluations as f64,
            self.loss as f64,
            f64::from(u8::from(self.signal == Some(SIGINT))),
            f64::from(u8::from(self.signal == Some(SIGTERM))),
        ]
    }

    /// The summed values: SIGTERM on any rank wins over SIGINT on another (it leaves no time).
    fn from_values(v: &[f64]) -> Control {
        let signal = match (v[2] > 0.0, v[3] > 0.0) {
            (_, true) => Some(SIGTERM),
            (true, false) => Some(SIGINT),
            _ => None,
        };
        Control {
            evaluations: v[0] as u64,
            loss: v[1] as f32,
            signal,
        }
    }
}

/// Every setting that differs between `old` and `new`, as `path: old → new`
/// (`run.` and `context.` prefixes dropped: they are where, not what).
pub fn differences(old: &Value, new: &Value, path: &str, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let sub = match path {
                    "" | "run" | "context" => k.clone(),
                    _ => format!("{path}.{k}"),
                };
                let (x, y) = (a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null));
                differences(x, y, &sub, out);
            }
        }
        _ if old != new => out.push(format!("{path}: {old} → {new}")),
        _ => {}
    }
}

fn restore_rng(v: &Value) -> Result<Rng> {
    let hex = v["seed"].as_str().context("seed")?;
    ensure!(hex.len() == 64, "seed must be 64 hex digits");
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    let mut rng = Rng::from_seed(seed);
    rng.set_stream(v["stream"].as_u64().context("stream")?);
    rng.set_word_pos(v["word_pos"].as_str().context("word_pos")?.parse()?);
    Ok(rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::OptimConfig;

    fn trainer() -> Trainer {
        let init = Params::from([(
            "w".to_string(),
            Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu).unwrap(),
        )]);
        Trainer::new(&init, trainer_options()).unwrap()
    }

    fn trainer_options() -> TrainerOptions<'static> {
        TrainerOptions {
            what: "test",
            steps: 3,
            optim: OptimConfig {
                lr: 0.1,
                weight_decay: 0.0,
                max_grad_norm: 0.0,
                cosine_decay: false,
            },
            seed: 0,
            ema_decay: None,
            checkpointing: Checkpointing::default(),
            device: Device::Cpu,
            run_config: Value::Null,
        }
    }

    /// `½ Σ (w − c)²`, whose gradient is `w − c`.
    fn loss(t: &Trainer, c: [f32; 3]) -> Tensor {
        let w = &t.params()["w"];
        let c = Tensor::new(&c, &Device::Cpu).unwrap();
        (w - c)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .affine(0.5, 0.0)
            .unwrap()
    }

    /// Two accumulated halves make the same step as one step on their mean loss: the
    /// gradient of `(L₁ + L₂)/2` is `(∇L₁ + ∇L₂)/2`, and the logged loss is the mean.
    /// The control values survive the sum over ranks: evaluation counts and losses add up,
    /// and a stop request on any rank stops all, SIGTERM before SIGINT.
    #[test]
    fn control_values_sum_over_ranks() {
        let sum = |cs: &[&Control]| {
            let mut total = [0.0; 4];
            for c in cs {
                total.iter_mut().zip(c.values()).for_each(|(t, v)| *t += v);
            }
            Control::from_values(&total)
        };
        let (a, b, c) = (
            Control {
                evaluations: 3,
                loss: 0.25,
                signal: None,
            },
            Control {
                evaluations: 5,
                loss: 0.5,
                signal: Some(SIGINT),
            },
            Control {
                evaluations: 0,
                loss: 0.0,
                signal: Some(SIGTERM),
            },
        );
        assert_eq!(sum(&[&a]), a);
        assert_eq!(
            sum(&[&a, &b]),
            Control {
                evaluations: 8,
                loss: 0.75,
                signal: Some(SIGINT)
            }
        );
        assert_eq!(sum(&[&b, &b]).signal, Some(SIGINT));
        assert_eq!(sum(&[&a, &b, &c]).signal, Some(SIGTERM));
        assert_eq!(sum(&[&c, &b]).signal, Some(SIGTERM));
    }

    #[test]
    fn accumulated_parts_step_as_their_mean() {
        let (c1, c2) = ([1.0, 0.0, -3.0], [0.0, 4.0, 1.0]);
        let (mut parts, mut whole) = (trainer(), trainer());
        for _ in 0..3 {
            let (l1, l2) = (loss(&parts, c1), loss(&parts, c2));
            parts.accumulate(&l1, 2).unwrap();
            parts.accumulate(&l2, 2).unwrap();
            let logged = parts.step_accumulated().unwrap();
            let mean = ((loss(&whole, c1) + loss(&whole, c2)).unwrap() * 0.5).unwrap();
            let want = whole.step(&mean).unwrap();
            assert!((logged - want).abs() <= 1e-6 * want.abs(), "{logged} vs {want}");
        }
        let (a, b) = (&parts.frozen_params()["w"], &whole.frozen_params()["w"]);
        let (a, b): (Vec<f32>, Vec<f32>) = (a.to_vec1().unwrap(), b.to_vec1().unwrap());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6, "{a:?} vs {b:?}");
        }
        assert!(a != vec![0.5, -1.0, 2.0], "the weights moved");
        assert!(parts.step_accumulated().is_err(), "a step needs a gradient");
    }

    /// A resumed run's time is the whole run's: the checkpoint records the seconds trained so
    /// far and the run continued from it counts on from them.
    #[test]
    fn a_resumed_run_counts_the_time_before_its_checkpoint() {
        let dir = std::env::temp_dir().join(format!("dcm-seconds-{}", std::process::id()));
        let with_dir = |resume| {
            let init = Params::from([("w".to_string(), Tensor::new(&[0.5f32], &Device::Cpu).unwrap())]);
            let mut o = trainer_options();
            o.checkpointing = Checkpointing {
                dir: Some(dir.clone()),
                resume,
                ..Checkpointing::default()
            };
            Trainer::new(&init, o).unwrap()
        };
        let mut t = with_dir(false);
        let l = t.params()["w"].sqr().unwrap().sum_all().unwrap();
        t.step(&l).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        t.save().unwrap();
        let recorded = read_state(&dir.join(CHECKPOINT)).unwrap()["seconds"].as_f64().unwrap();
        assert!(recorded >= 0.3, "recorded {recorded} s");
        let resumed = with_dir(true);
        assert!(resumed.seconds() >= recorded, "{} < {recorded}", resumed.seconds());
        assert!(with_dir(false).seconds() < 0.3, "a fresh run starts at 0");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A checkpoint whose `adam_step` was edited away from its completed steps is refused:
    /// AdamW's bias correction would silently differ from the run's.
    #[test]
    fn an_edited_adam_step_is_refused() {
        let dir = std::env::temp_dir().join(format!("dcm-adam-step-{}", std::process::id()));
        let with_dir = |resume| {
            let init = Params::from([("w".to_string(), Tensor::new(&[0.5f32], &Device::Cpu).unwrap())]);
            let mut o = trainer_options();
            o.checkpointing = Checkpointing {
                dir: Some(dir.clone()),
                resume,
                ..Checkpointing::default()
            };
            Trainer::new(&init, o)
        };
        let mut t = with_dir(false).unwrap();
        let l = t.params()["w"].sqr().unwrap().sum_all().unwrap();
        t.step(&l).unwrap();
        t.save().unwrap();
        assert!(with_dir(true).is_ok());
        let path = dir.join(CHECKPOINT);
        let (tensors, mut state) = load_checkpoint(&path).unwrap();
        state["adam_step"] = json!(1000);
        save_checkpoint(&path, &tensors, &state).unwrap();
        let e = with_dir(true).err().unwrap().to_string();
        assert!(
            e.ends_with("checkpoint has adam_step 1000 but 1 completed steps"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
