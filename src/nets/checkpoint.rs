//! Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
//! Cost"): a segment of a network keeps only its inputs for the backward pass and runs again
//! there.
//!
//! Forward: the segment runs exactly as without checkpointing (the same ops on the same
//! values — its inputs tracked, as a graph's would be — so the same output bit for bit); the
//! trainable tensors (`Var`s) its graph reaches are noted, and only the output is kept,
//! detached, which frees the segment's graph at once. One op joins that output to the graph.
//! Backward: the segment runs again on copies of the saved inputs, this time with a graph; a
//! nested backward pass of `Σ out ⊙ ∂L/∂out` gives the gradients of its inputs and of its
//! trainable tensors, which flow on from there as the plain path's would.
//!
//! candle's custom ops take at most three inputs, so every input and trainable tensor reaches
//! the joining op through a *tap*: an op on that tensor with a one-element output, whose
//! backward hands over the gradient the recomputation left for it. The taps are inputs of the
//! joining op, so every backward order candle may choose runs them after it.
//!
//! A segment must reach the rest of the network's graph only through its inputs: a tracked
//! tensor it captured otherwise (not a `Var`) would be backpropagated twice.

use crate::nets::input_gradient::with_input_gradient;
use anyhow::{anyhow, Result};
use candle_core::{DType, Tensor, TensorId, Var};
use std::sync::{Arc, Mutex};

/// A segment of a network: its output from the main input and the side inputs.
pub type Segment = dyn Fn(&Tensor, &[Tensor]) -> Result<Tensor> + Send + Sync;

/// Gradients the recomputation leaves for the taps, one slot per tap.
type Slots = Arc<Mutex<Vec<Option<Tensor>>>>;

/// `segment(x, side)`, keeping only `x` and `side` for the backward pass, which runs the
/// segment again. Without anything to differentiate (no tracked input, no `Var` reached) it is
/// the plain call.
pub fn checkpoint(x: &Tensor, side: &[Tensor], segment: Arc<Segment>) -> Result<Tensor> {
    let inputs: Vec<&Tensor> = std::iter::once(x).chain(side).collect();
    let tracked: Vec<bool> = inputs.iter().map(|t| t.track_op()).collect();
    let (leaf_inputs, out) = run_tracked(&*segment, &inputs, &tracked)?;
    let input_ids: Vec<TensorId> = leaf_inputs.iter().flatten().map(|v| v.id()).collect();
    let params: Vec<Tensor> = out
        .sorted_nodes()
        .into_iter()
        .filter(|t| t.is_variable() && !input_ids.contains(&t.id()))
        .cloned()
        .collect();
    if !tracked.contains(&true) && params.is_empty() {
        return Ok(out);
    }
    let y = out.detach();
    drop(out);
    // Tapped, in order: the tracked inputs, then the trainable tensors.
    let tapped: Vec<Tensor> = (inputs.iter().zip(&tracked))
        .filter(|(_, tracked)| **tracked)
        .map(|(t, _)| (*t).clone())
        .chain(params.iter().cloned())
        .collect();
    let slots: Slots = Arc::new(Mutex::new(vec![None; tapped.len()]));
    let taps = (tapped.iter().enumerate())
        .map(|(i, t)| tap(t, i, &slots))
        .collect::<Result<Vec<_>>>()?;
    let taps = Tensor::cat(&taps, 0)?;
    let saved = Saved {
        segment,
        inputs: inputs.iter().map(|t| t.detach()).collect(),
        tracked,
        params,
    };
    let n = tapped.len();
    with_input_gradient(&taps, y, move |g, _, _| {
        let grads = saved
            .recompute(g)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        *slots.lock().map_err(|_| poisoned())? = grads;
        Tensor::zeros(n, TAP_DTYPE, g.device())
    })
}

/// The dtype of every tap's (zero) output.
const TAP_DTYPE: DType = DType::F32;

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("gradient checkpoint: a recomputation panicked".into())
}

/// Runs `segment` on leaf copies of the `tracked` inputs (the others as they are): the copies
/// (`None` for the others) and the output, with its graph.
fn run_tracked(segment: &Segment, inputs: &[&Tensor], tracked: &[bool]) -> Result<(Vec<Option<Var>>, Tensor)> {
    let leaves = (inputs.iter().zip(tracked))
        .map(|(t, tracked)| match tracked {
            true => Var::from_tensor(&t.detach()).map(Some),
            false => Ok(None),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let args: Vec<Tensor> = (inputs.iter().zip(&leaves))
        .map(|(t, leaf)| leaf.as_ref().map_or_else(|| (*t).clone(), |v| v.as_tensor().clone()))
        .collect();
    let out = segment(&args[0], &args[1..])?;
    Ok((leaves, out))
}

/// A one-element zero joined to `t`'s graph; its backward hands `t` the gradient left in slot `i`.
fn tap(t: &Tensor, i: usize, slots: &Slots) -> Result<Tensor> {
    let zero = Tensor::zeros(1, TAP_DTYPE, t.device())?;
    let (slots, shape, dtype) = (slots.clone(), t.shape().clone(), t.dtype());
    with_input_gradient(t, zero, move |g, _, _| {
        let taken = slots.lock().map_err(|_| poisoned())?[i].take();
        match taken {
            Some(grad) => Ok(grad),
            None => Tensor::zeros(shape.clone(), dtype, g.device()),
        }
    })
}

/// What the backward pass needs to run a segment again.
struct Saved {
    segment: Arc<Segment>,
    /// The inputs, detached (the same storage as the graph's).
    inputs: Vec<Tensor>,
    /// Which inputs were tracked (and are tapped).
    tracked: Vec<bool>,
    /// The trainable tensors the segment reached.
    params: Vec<Tensor>,
}

impl Saved {
    /// The gradients of the tracked inputs and the trainable tensors, in tap order, from
    /// `g` = ∂L/∂out.
    fn recompute(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let inputs: Vec<&Tensor> = self.inputs.iter().collect();
        let (leaves, out) = run_tracked(&*self.segment, &inputs, &self.tracked)?;
        if out.dims() != g.dims() {
            return Err(anyhow!(
                "gradient checkpoint: the segment gave {:?} on its second run, {:?} on its first",
                out.dims(),
                g.dims()
            ));
        }
        let grads = (out * g)?.sum_all()?.backward()?;
        // candle's gradients carry the ops that made them, which reference the recomputed
        // graph: detached, the graph is freed when this returns.
        let of = |t: &Tensor| grads.get(t).map(Tensor::detach);
        let of_inputs = leaves.iter().flatten().map(|v| of(v));
        Ok(of_inputs.chain(self.params.iter().map(of)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::noise::{seeded, standard_normal};
    use candle_core::Device;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        standard_normal(&mut seeded(seed), shape, &Device::Cpu).unwrap()
    }

    /// `tanh(x W + s) ⊙ x` as a segment with a trainable `W` and a side input `s`.
    fn segment(w: &Tensor) -> Arc<Segment> {
        let w = w.clone();
        Arc::new(move |x: &Tensor, side: &[Tensor]| Ok((x.matmul(&w)?.broadcast_add(&side[0])?.tanh()? * x)?))
    }

    /// Every gradient — the main and side inputs', a trainable tensor's, and one flowing
    /// through a second use of the input outside the segment — equals the plain path's, and the
    /// forward value is the same bit for bit.
    #[test]
    fn gradients_equal_the_plain_path() {
        let w = Var::from_tensor(&randn(&[4, 4], 1)).unwrap();
        let x = Var::from_tensor(&randn(&[3, 4], 2)).unwrap();
        let s = Var::from_tensor(&randn(&[1, 4], 3)).unwrap();
        let f = segment(w.as_tensor());
        let run = |checkpointed: bool| {
            let h = x.as_tensor().sin().unwrap();
            let side = [s.as_tensor().clone()];
            let y = match checkpointed {
                true => checkpoint(&h, &side, f.clone()).unwrap(),
                false => f(&h, &side).unwrap(),
            };
            let loss = (y.sqr().unwrap() + h.exp().unwrap()).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            let grads: Vec<Vec<f32>> = [w.as_tensor(), x.as_tensor(), s.as_tensor()]
                .iter()
                .map(|t| g.get(t).unwrap().flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            (y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), grads)
        };
        let ((y_plain, plain), (y_ckpt, ckpt)) = (run(false), run(true));
        assert_eq!(y_plain, y_ckpt);
        for (a, b) in plain.iter().zip(&ckpt) {
            for (p, q) in a.iter().zip(b) {
                assert!((p - q).abs() <= 1e-6 * p.abs().max(1e-3), "{p} vs {q}");
            }
        }
    }

    /// With nothing to differentiate the segment is the plain call: no graph is recorded.
    #[test]
    fn untracked_segments_record_nothing() {
        let (w, x, s) = (randn(&[4, 4], 1), randn(&[3, 4], 2), randn(&[1, 4], 3));
        let y = checkpoint(&x, &[s], segment(&w)).unwrap();
        assert!(!y.track_op());
    }
}
