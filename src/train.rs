//! The shared optimisation loop of every training command: trainable vars,
//! NaN/Inf guard, backward, gradient clipping, AdamW, loss log and progress bar.

use crate::layers::Params;
use crate::optim::{clip_grad_norm, AdamW, OptimConfig};
use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};

pub struct Trainer {
    names: Vec<String>,
    vars: Vec<Var>,
    opt: AdamW,
    cfg: OptimConfig,
    total: usize,
    pub losses: Vec<f32>,
    bar: ProgressBar,
}

impl Trainer {
    /// Trainable copies of `init` (sorted by name, so updates are deterministic).
    pub fn new(init: &Params, cfg: OptimConfig, steps: usize, what: &str) -> Result<Self> {
        let names: Vec<String> = init.keys().cloned().collect();
        let vars = init
            .values()
            .map(|t| Var::from_tensor(&t.copy()?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(what.to_string());
        Ok(Self {
            names,
            opt: AdamW::new(cfg, &vars)?,
            vars,
            cfg,
            total: steps,
            losses: Vec::new(),
            bar,
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
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

    /// Backward, clip, update; refuses a non-finite loss before touching the weights.
    pub fn step(&mut self, loss: &Tensor) -> Result<f32> {
        let value: f32 = loss.to_scalar()?;
        let step = self.losses.len() + 1;
        if !value.is_finite() {
            self.bar.abandon();
            bail!("loss is {value} at step {step}; stopping before the weights are corrupted");
        }
        let mut grads = loss.backward()?;
        clip_grad_norm(&self.vars, &mut grads, self.cfg.max_grad_norm)?;
        self.opt
            .step(&self.vars, &grads, self.cfg.lr_at(step - 1, self.total))?;
        self.losses.push(value);
        if step.is_multiple_of(10) {
            let recent = &self.losses[self.losses.len().saturating_sub(50)..];
            self.bar
                .set_message(format!("loss {:.4e}", recent.iter().sum::<f32>() / recent.len() as f32));
        }
        self.bar.inc(1);
        Ok(value)
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
