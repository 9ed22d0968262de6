//! A finite-difference gradient checker for any differentiable computation.
//!
//! Some candle ops have no backward: fused kernels applied with `apply_op*_no_bwd`
//! (`candle_nn::ops::softmax_last_dim`, `ops::layer_norm`, `ops::rms_norm`, and so
//! `candle_nn::LayerNorm` / `RmsNorm` on contiguous input) return a tensor that records no
//! graph, and `backward()` then silently gives no gradient for whatever lies behind them.
//! [`check`] compares `backward()`'s gradient of a scalar `f(inputs)` with the central
//! difference `∂f/∂x_i ≈ (f(x + h e_i) − f(x − h e_i)) / 2h` on sampled entries of every
//! input, and counts a missing gradient as a failure.
//!
//! Use f64 inputs (candle's CPU backend runs matmul, conv, softmax, etc. in f64): central
//! differences then agree to about 1e-8 relative and a tolerance of 1e-6 separates right from
//! wrong. In f32 use [`GradCheck::f32`] and a tolerance around 1e-2. A loss like
//! `sum(y ⊙ r)` with a fixed random `r` or `sum(y²)` reaches every output entry.

use crate::runtime::noise::seeded;
use anyhow::{bail, ensure, Result};
use candle_core::{DType, Tensor, Var};
use std::fmt;

/// Options of [`check`].
#[derive(Clone, Debug, PartialEq)]
pub struct GradCheck {
    /// The central-difference step `h`, added to one input entry at a time.
    pub step: f64,
    /// Entries checked per input, drawn without replacement (all of them if fewer).
    pub samples: usize,
    /// Floor of the relative error's denominator: gradients below it are compared in
    /// absolute terms, as numerical noise is about `ε·|f| / h` whatever the gradient. Keep it
    /// above that noise (raise it, or scale the loss down, when `|f|` is large) and below
    /// the gradients that matter.
    pub floor: f64,
    /// Seed of the entry sampling.
    pub seed: u64,
}

impl Default for GradCheck {
    /// For f64 inputs: `h = 1e-5` (truncation error `h²|f'''|/6` and rounding error
    /// `ε|f|/h` both about 1e-11 for moderate f), 16 entries per input, floor 1e-6.
    fn default() -> Self {
        Self {
            step: 1e-5,
            samples: 16,
            floor: 1e-6,
            seed: 0,
        }
    }
}

impl GradCheck {
    /// For f32 inputs: `h = 1e-2`, floor 1e-2 (compare with a tolerance around 1e-2).
    pub fn f32() -> Self {
        Self {
            step: 1e-2,
            floor: 1e-2,
            ..Self::default()
        }
    }
}

/// One checked entry of an input.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Multi-index of the entry in its input.
    pub index: Vec<usize>,
    /// `backward()`'s gradient, `None` when it gave none for the input.
    pub analytic: Option<f64>,
    pub numerical: f64,
    /// `|a − n| / max(|a|, |n|, floor)`; infinite when the gradient is missing or not finite.
    pub rel_err: f64,
}

/// The comparison for one input.
#[derive(Clone, Debug, PartialEq)]
pub struct GradReport {
    /// Position of the input in `inputs`.
    pub input: usize,
    pub shape: Vec<usize>,
    /// `backward()` gave no gradient for this input: the graph does not reach it (an op
    /// without backward, a `detach`, or the input is unused). Always a failure.
    pub missing: bool,
    /// Entries compared.
    pub checked: usize,
    /// Largest relative error over the checked entries (0 when none).
    pub max_rel_err: f64,
    /// The entry with the largest error (with a missing gradient: the largest numerical one).
    pub worst: Option<Entry>,
}

impl GradReport {
    /// An error naming the input and its worst entry unless the gradient exists and every
    /// checked entry's relative error is at most `tol`.
    pub fn assert_below(&self, tol: f64) -> Result<()> {
        ensure!(!self.missing && self.max_rel_err <= tol, "{self} (tolerance {tol:e})");
        Ok(())
    }
}

impl fmt::Display for GradReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "input {} {:?}: ", self.input, self.shape)?;
        if self.missing {
            write!(
                f,
                "no gradient (graph does not reach it: an op without backward, a detach, or unused)"
            )?;
        } else {
            write!(
                f,
                "max relative error {:.2e} over {} entries",
                self.max_rel_err, self.checked
            )?;
        }
        if let Some(e) = &self.worst {
            let a = e.analytic.map_or("none".to_string(), |a| format!("{a:e}"));
            write!(
                f,
                "; worst entry {:?}: analytic {a}, numerical {:e}",
                e.index, e.numerical
            )?;
        }
        Ok(())
    }
}

/// Compares `backward()`'s gradient of the scalar `f(inputs)` (one element) with respect to
/// each input against central differences on up to `opts.samples` seeded random entries per
/// input, in the inputs' dtype. `f` is called once with the inputs as `Var`s and twice per
/// checked entry with plain tensors; it must be deterministic.
pub fn check(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor], opts: &GradCheck) -> Result<Vec<GradReport>> {
    ensure!(
        opts.step.is_finite() && opts.step > 0.0 && opts.floor >= 0.0,
        "gradient check needs a positive step and a non-negative floor"
    );
    for (i, x) in inputs.iter().enumerate() {
        ensure!(
            x.dtype().is_float(),
            "gradient check: input {i} has dtype {:?}",
            x.dtype()
        );
    }
    let analytic = analytic_gradients(&f, inputs)?;
    let mut rng = seeded(opts.seed);
    let mut reports = Vec::with_capacity(inputs.len());
    for (i, grad) in analytic.into_iter().enumerate() {
        let n = inputs[i].elem_count();
        ensure!(
            grad.as_ref().is_none_or(|g| g.len() == n),
            "gradient of input {i} has the wrong size"
        );
        let mut entries = rand::seq::index::sample(&mut rng, n, opts.samples.min(n)).into_vec();
        entries.sort_unstable();
        reports.push(compare_input(&f, inputs, i, grad.as_deref(), &entries, opts)?);
    }
    Ok(reports)
}

/// [`check`], then an error listing every input whose gradient is missing or off by more
/// than `tol` (relative).
pub fn check_all(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor], opts: &GradCheck, tol: f64) -> Result<()> {
    let failures: Vec<String> = check(f, inputs, opts)?
        .iter()
        .filter_map(|r| r.assert_below(tol).err().map(|e| e.to_string()))
        .collect();
    if !failures.is_empty() {
        bail!("gradient check failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// `f`'s value as f64, an error unless it has exactly one element.
fn scalar(y: &Tensor) -> Result<f64> {
    ensure!(
        y.elem_count() == 1,
        "gradient check: f must return one element, got shape {:?}",
        y.dims()
    );
    Ok(y.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0])
}

fn flat_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// The flattened gradient of `f` with respect to each input, `None` where `backward()` gives none.
fn analytic_gradients(f: &impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) -> Result<Vec<Option<Vec<f64>>>> {
    let vars = inputs
        .iter()
        .map(Var::from_tensor)
        .collect::<candle_core::Result<Vec<_>>>()?;
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&xs)?;
    scalar(&y)?;
    let grads = y.backward()?;
    vars.iter()
        .map(|v| grads.get(v.as_tensor()).map(flat_f64).transpose())
        .collect()
}

/// Input `i` with `delta` added to flat entry `j` (in the input's dtype), and the value of
/// that entry as stored.
fn perturbed(x: &Tensor, flat: &[f64], j: usize, delta: f64) -> Result<(Tensor, f64)> {
    let mut v = flat.to_vec();
    v[j] += delta;
    let t = Tensor::from_vec(v, x.shape(), x.device())?.to_dtype(x.dtype())?;
    let stored = t.flatten_all()?.get(j)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((t, stored))
}

/// `(f(x + h e_j) − f(x − h e_j)) / (x_j⁺ − x_j⁻)` for input `i`, with the step as actually
/// stored in the input's dtype.
fn central_difference(
    f: &impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    i: usize,
    flat: &[f64],
    j: usize,
    h: f64,
) -> Result<f64> {
    let eval = |delta: f64| -> Result<(f64, f64)> {
        let (t, stored) = perturbed(&inputs[i], flat, j, delta)?;
        let mut xs = inputs.to_vec();
        xs[i] = t;
        Ok((scalar(&f(&xs)?)?, stored))
    };
    let ((f_plus, x_plus), (f_minus, x_minus)) = (eval(h)?, eval(-h)?);
    ensure!(
        x_plus > x_minus,
        "gradient check: step {h:e} vanishes at input {i} entry {j} in {:?}",
        inputs[i].dtype()
    );
    Ok((f_plus - f_minus) / (x_plus - x_minus))
}

fn rel_err(a: Option<f64>, n: f64, floor: f64) -> f64 {
    match a {
        Some(a) if a.is_finite() && n.is_finite() => (a - n).abs() / a.abs().max(n.abs()).max(floor),
        _ => f64::INFINITY,
    }
}

fn multi_index(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        index[k] = flat % d;
        flat /= d;
    }
    index
}

/// The report for input `i` over the flat `entries`, `grad` its flattened analytic gradient.
fn compare_input(
    f: &impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    i: usize,
    grad: Option<&[f64]>,
    entries: &[usize],
    opts: &GradCheck,
) -> Result<GradReport> {
    let shape = inputs[i].dims().to_vec();
    let flat = flat_f64(&inputs[i])?;
    let mut worst: Option<Entry> = None;
    for &j in entries {
        let numerical = central_difference(f, inputs, i, &flat, j, opts.step)?;
        let analytic = grad.map(|g| g[j]);
        let entry = Entry {
            index: multi_index(j, &shape),
            analytic,
            numerical,
            rel_err: rel_err(analytic, numerical, opts.floor),
        };
        let key = |e: &Entry| if grad.is_some() { e.rel_err } else { e.numerical.abs() };
        if worst.as_ref().is_none_or(|w| key(&entry) > key(w) || key(w).is_nan()) {
            worst = Some(entry);
        }
    }
    let max_rel_err = match (grad, &worst) {
        (None, _) => f64::INFINITY,
        (Some(_), Some(w)) => w.rel_err,
        (Some(_), None) => 0.0,
    };
    Ok(GradReport {
        input: i,
        shape,
        missing: grad.is_none(),
        checked: entries.len(),
        max_rel_err,
        worst,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = seeded(seed);
        crate::runtime::noise::standard_normal(&mut rng, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    }

    /// `sum(f(x) ⊙ r)` for a fixed `r`: a scalar that reaches every entry of `f(x)`.
    fn weighted(y: Tensor, seed: u64) -> Result<Tensor> {
        Ok((y.clone() * randn(y.dims(), seed))?.sum_all()?)
    }

    /// The checker accepts a correct gradient: `sum(tanh(x W))` with respect to x and W.
    #[test]
    fn passes_a_correct_gradient() {
        let inputs = [randn(&[3, 4], 1), randn(&[4, 5], 2)];
        let f = |t: &[Tensor]| Ok(t[0].matmul(&t[1])?.tanh()?.sum_all()?);
        let reports = check(f, &inputs, &GradCheck::default()).unwrap();
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].checked, 12);
        assert_eq!(reports[1].checked, 16);
        for r in &reports {
            assert!(!r.missing && r.max_rel_err < 1e-7, "{r}");
        }
        check_all(f, &inputs, &GradCheck::default(), 1e-6).unwrap();
    }

    /// The same check in f32 with the f32 options.
    #[test]
    fn passes_a_correct_gradient_in_f32() {
        let inputs = [randn(&[3, 4], 1), randn(&[4, 5], 2)].map(|t| t.to_dtype(DType::F32).unwrap());
        let f = |t: &[Tensor]| Ok(t[0].matmul(&t[1])?.tanh()?.sum_all()?);
        check_all(f, &inputs, &GradCheck::f32(), 1e-2).unwrap();
    }

    /// `softmax_last_dim` is a fused op without backward (candle 0.11: `apply_op1_no_bwd`):
    /// the gradient behind it is silently absent, and the checker must report that as a
    /// failure. The composite `softmax(x, D::Minus1)` has a correct gradient.
    #[test]
    fn detects_the_missing_gradient_of_fused_softmax() {
        let x = [randn(&[2, 5], 3)];
        let fused = |t: &[Tensor]| weighted(candle_nn::ops::softmax_last_dim(&t[0])?, 4);
        let report = &check(fused, &x, &GradCheck::default()).unwrap()[0];
        assert!(report.missing && report.max_rel_err.is_infinite(), "{report}");
        let worst = report.worst.as_ref().unwrap();
        assert!(worst.analytic.is_none() && worst.numerical.abs() > 1e-3, "{report}");
        let err = check_all(fused, &x, &GradCheck::default(), 1e-6)
            .unwrap_err()
            .to_string();
        assert!(err.contains("input 0") && err.contains("no gradient"), "{err}");

        let composite = |t: &[Tensor]| weighted(candle_nn::ops::softmax(&t[0], D::Minus1)?, 4);
        check_all(composite, &x, &GradCheck::default(), 1e-6).unwrap();
    }

    /// `ops::layer_norm`, and `candle_nn::LayerNorm` on contiguous input (which calls it), have
    /// no backward in candle 0.11: no gradient for x, scale or shift. `layer_norm_slow` has one.
    /// In f32: the fused kernel has no f64 version on CPU.
    #[test]
    fn detects_the_missing_gradient_of_fused_layer_norm() {
        let inputs = [randn(&[3, 6], 5), randn(&[6], 6), randn(&[6], 7)].map(|t| t.to_dtype(DType::F32).unwrap());
        let weighted32 = |y: Tensor| Ok((y.clone() * randn(y.dims(), 8).to_dtype(DType::F32)?)?.sum_all()?);
        let fused = |t: &[Tensor]| weighted32(candle_nn::ops::layer_norm(&t[0], &t[1], &t[2], 1e-5)?);
        let reports = check(fused, &inputs, &GradCheck::f32()).unwrap();
        assert!(reports.iter().all(|r| r.missing), "{reports:?}");

        let module = |t: &[Tensor]| {
            let ln = candle_nn::LayerNorm::new(t[1].clone(), t[2].clone(), 1e-5);
            weighted32(candle_core::Module::forward(&ln, &t[0])?)
        };
        let reports = check(module, &inputs, &GradCheck::f32()).unwrap();
        assert!(reports.iter().all(|r| r.missing), "{reports:?}");

        let slow = |t: &[Tensor]| weighted32(candle_nn::ops::layer_norm_slow(&t[0], &t[1], &t[2], 1e-5)?);
        check_all(slow, &inputs, &GradCheck::f32(), 1e-2).unwrap();
    }

    /// A gradient that exists but is wrong is caught too: candle 0.11's `upsample_nearest2d`
    /// backward overwrites its input's gradient instead of adding to it (docs/CANDLE_TRAPS.md), so
    /// `sum(up(x) ⊙ r) + sum(x ⊙ q)` gets only the second term's gradient.
    #[test]
    fn detects_a_wrong_gradient() {
        let x = [randn(&[1, 1, 2, 2], 9)];
        let f = |t: &[Tensor]| Ok((weighted(t[0].upsample_nearest2d(4, 4)?, 10)? + weighted(t[0].clone(), 11)?)?);
        let report = &check(f, &x, &GradCheck::default()).unwrap()[0];
        assert!(!report.missing && report.max_rel_err > 1e-2, "{report}");
        let err = report.assert_below(1e-6).unwrap_err().to_string();
        assert!(err.contains("input 0") && err.contains("worst entry"), "{err}");
    }

    /// Sampling checks `samples` distinct entries, the same ones for the same seed.
    #[test]
    fn samples_entries_reproducibly() {
        let x = [randn(&[10, 10], 12)];
        let f = |t: &[Tensor]| Ok(t[0].sqr()?.sum_all()?);
        let opts = GradCheck {
            samples: 5,
            ..GradCheck::default()
        };
        let a = check(f, &x, &opts).unwrap();
        assert_eq!(a[0].checked, 5);
        assert_eq!(a, check(f, &x, &opts).unwrap());
    }

    /// Bad use is an error, not a panic: a non-scalar f, an integer input, a zero step.
    #[test]
    fn rejects_bad_use() {
        let x = [randn(&[2, 2], 13)];
        assert!(check(|t: &[Tensor]| Ok(t[0].clone()), &x, &GradCheck::default()).is_err());
        let ints = [Tensor::new(&[1u32, 2], &Device::Cpu).unwrap()];
        assert!(check(|t: &[Tensor]| Ok(t[0].sum_all()?), &ints, &GradCheck::default()).is_err());
        let zero = GradCheck {
            step: 0.0,
            ..GradCheck::default()
        };
        assert!(check(|t: &[Tensor]| Ok(t[0].sum_all()?), &x, &zero).is_err());
    }

    #[test]
    fn multi_index_is_row_major() {
        assert_eq!(multi_index(7, &[2, 2, 3]), vec![1, 0, 1]);
        assert_eq!(multi_index(0, &[]), Vec::<usize>::new());
    }
}
