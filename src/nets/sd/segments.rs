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

#[cfg(test)]
mod tests {
    use crate::diffusion::condition::TextEmbedding;
    use crate::nets::lora::{adapter_names, LoraConfig};
    use crate::nets::sd::test_util::{converted, unet_fixture};
    use crate::nets::sd::unet::{UNet, UNetLora};
    use crate::runtime::noise::{seeded, standard_normal};
    use candle_core::{DType, Device, Tensor, Var};

    /// ‖a − b‖ / ‖a‖.
    fn relative_difference(a: &Tensor, b: &Tensor) -> f64 {
        let norm = |t: &Tensor| t.to_dtype(DType::F64)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>();
        norm(&(a - b).unwrap()).unwrap() / norm(a).unwrap().max(f64::MIN_POSITIVE)
    }

    /// `model`'s fixture UNet in `dtype` with an adapter (random nonzero A and B) on every
    /// linear and conv layer — resnets, attention, feed-forward, projections, resamplers, the
    /// time embedding, so that the time embedding and the text context reach the segments with
    /// a gradient: the output of a checkpointed forward pass equals the plain one bit for bit,
    /// and the gradients of `Σ unet(x) ⊙ r` for every adapter, the latents and the text inputs
    /// equal the plain path's within `tol` (relative, in norm); the largest difference is
    /// returned.
    fn check(model: &str, pooled: bool, dtype: DType, tol: f64) {
        let (cfg, base) = unet_fixture(model);
        let rank = 2;
        let var = |shape: &[usize], seed: u64, scale: f64| {
            let t = standard_normal(&mut seeded(seed), shape, &Device::Cpu).unwrap();
            Var::from_tensor(&(t * scale).unwrap().to_dtype(dtype).unwrap()).unwrap()
        };
        let layers = cfg.adaptable_layers().unwrap();
        let mut params = converted(&base, dtype);
        let mut vars = Vec::new();
        for (i, (path, shape)) in layers.iter().enumerate() {
            let fan_in: usize = shape[1..].iter().product();
            let a_shape: Vec<usize> = [rank].iter().chain(&shape[1..]).copied().collect();
            let b_shape: Vec<usize> = [shape[0], rank]
                .into_iter()
                .chain(shape[2..].iter().map(|_| 1))
                .collect();
            let (a, b) = adapter_names(path);
            for (name, shape, seed, scale) in [
                (a, a_shape, 10 + 2 * i as u64, 1.0 / (fan_in as f64).sqrt()),
                (b, b_shape, 11 + 2 * i as u64, 0.2),
            ] {
                let v = var(&shape, seed, scale);
                params.insert(name, v.as_tensor().clone());
                vars.push(v);
            }
        }
        let lora = UNetLora {
            cfg: LoraConfig { rank, alpha: 4.0 },
            targets: layers.iter().map(|(p, _)| p.clone()).collect(),
        };
        let ctx = cfg.layout().unwrap().context_dim;
        let (x, tokens, pool) = (
            var(&[2, 4, 8, 8], 1, 1.0),
            var(&[2, 5, ctx], 2, 1.0),
            var(&[2, 32], 3, 1.0),
        );
        let ids = [[64f32, 64., 0., 0., 64., 64.], [32., 48., 4., 8., 32., 48.]];
        let time_ids = Tensor::new(&ids, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let text = TextEmbedding {
            tokens: tokens.as_tensor().clone(),
            pooled: pooled.then(|| pool.as_tensor().clone()),
            time_ids: pooled.then_some(time_ids),
        };
        let r = var(&[2, 4, 8, 8], 4, 1.0).as_tensor().detach();
        let inputs = [&x, &tokens, &pool];
        let run = |checkpointing: bool| {
            let mut unet = UNet::new(cfg.clone(), &params, Some(&lora)).unwrap();
            unet.set_gradient_checkpointing(checkpointing);
            let y = unet.forward(x.as_tensor(), &[999.0, 37.0], &text, None).unwrap();
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let of = |v: &Var| grads.get(v.as_tensor()).cloned();
            let all: Vec<Option<Tensor>> = inputs.iter().map(|v| of(v)).chain(vars.iter().map(of)).collect();
            (
                y.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
                all,
            )
        };
        let ((y_plain, plain), (y_ckpt, ckpt)) = (run(false), run(true));
        assert_eq!(y_plain, y_ckpt, "{model}: outputs");
        let mut worst = 0f64;
        for (i, (p, c)) in plain.iter().zip(&ckpt).enumerate() {
            match (p, c) {
                (Some(p), Some(c)) => worst = worst.max(relative_difference(p, c)),
                (None, None) => assert!(i == 2 && !pooled, "{model}: no gradient for tensor {i}"),
                _ => panic!("{model}: tensor {i} has a gradient on one path only"),
            }
        }
        eprintln!(
            "{model} {dtype:?}: {} adapted layers, largest relative gradient difference {worst:.2e}",
            layers.len()
        );
        assert!(worst <= tol, "{model} {dtype:?}: {worst:e}");
    }

    /// In f32 the gradients differ by the rounding of sums taken in another order (an input's
    /// gradient inside a segment is summed before the rest of the network's is added).
    #[test]
    fn sd1_checkpointed_gradients_equal_the_plain_path() {
        check("sd1", false, DType::F32, 1e-6);
    }

    /// SDXL's fixture: linear projections, two transformer layers per block, pooled text. In
    /// f64 the rounding differences shrink with the precision: the computation is the same.
    #[test]
    fn sdxl_checkpointed_gradients_equal_the_plain_path() {
        check("sdxl", true, DType::F32, 1e-6);
        check("sdxl", true, DType::F64, 1e-14);
    }
}
