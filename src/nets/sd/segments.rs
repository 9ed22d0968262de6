//! How the UNet runs its segments: plainly, or with gradient checkpointing
//! (`--gradient-checkpointing`, `nets::checkpoint`), keeping only each segment's inputs for
//! the backward pass and running it again there.
//!
//! The segments are each resnet, each transformer layer (`BasicTransformerBlock`), a
//! transformer's way into its tokens (GroupNorm, `proj_in`) and out of them (`proj_out`, the
//! residual), each upsampler and the output head: everything whose activations grow with the
//! image, at the granularity of diffusers' own checkpointing (resnets and transformer layers)
//! plus the glue between them, so that what stays per sample is one map per segment boundary.
//! The downsamplers and `conv_in` stay plain: their inputs are kept anyway (a skip connection,
//! the latents). A recomputed segment holds only its own activations at a time, at most one
//! transformer layer's at the highest resolution with attention.

use crate::nets::checkpoint::checkpoint;
use crate::nets::lora::Switch;
use anyhow::Result;
use candle_core::Tensor;
use std::sync::Arc;

/// Plain or checkpointed segments of one UNet; the adapters' switch is recorded at the
/// forward pass so that a recomputation sees the adapters as the forward pass did.
#[derive(Clone, Debug)]
pub struct Segments {
    pub checkpointing: bool,
    pub switch: Switch,
}

impl Segments {
    /// `f(layer, x, side)`, checkpointed when asked: `side` holds every other tensor the
    /// segment reads that may carry a gradient (time embedding, text context, a residual).
    pub fn run<L: Send + Sync + 'static>(
        &self,
        layer: &Arc<L>,
        x: &Tensor,
        side: &[Tensor],
        f: fn(&L, &Tensor, &[Tensor]) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if !self.checkpointing {
            return f(layer, x, side);
        }
        let (layer, switch, on) = (layer.clone(), self.switch.clone(), self.switch.is_on());
        let segment = move |x: &Tensor, side: &[Tensor]| switched(&switch, on, || f(&layer, x, side));
        checkpoint(x, side, Arc::new(segment))
    }
}

/// Runs `f` with the adapters `on` (or off), then restores the switch, also when `f` panics.
fn switched<T>(switch: &Switch, on: bool, f: impl FnOnce() -> T) -> T {
    struct Restore<'a>(&'a Switch, bool);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            self.0.set(self.1);
        }
    }
    let _restore = Restore(switch, switch.is_on());
    switch.set(on);
    f()
}
