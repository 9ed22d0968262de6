//! pytorch-fid's FID Inception-v3 (`InceptionV3([3])`, the network behind FID): 2048-d
//! features from the final average pool, loaded from pytorch-fid's released weights
//! `pt_inception-2015-12-05-6726825d.pth` (TensorFlow's 2015 Inception ported to PyTorch),
//! read as they are.
//!
//! As pytorch-fid evaluates it: images in [0, 1] resized to 299×299 (bilinear, half-pixel
//! centres, no antialiasing), scaled to [−1, 1], then the stem (five convolutions and two max
//! pools), the mixed blocks 5b–7c and the mean over the final 8×8 map. Every convolution is
//! followed by BatchNorm with its running statistics (ε = 10⁻³), folded into it, and a ReLU.
//! The classifier (`fc`) and the BatchNorm step counters in the file are not used.

use crate::nets::feature_net::FeatureNet;
use crate::nets::inception_blocks::{same, BlockBuilder, ConvBn, Fetch, Kernel, Mixed, Pool, Target};
use crate::nets::inception_ops::{global_mean, max_pool_3x3, resize_bilinear};
use crate::nets::layers::Params;
use crate::nets::pth::read_pth;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// The input size the network was trained at; pytorch-fid resizes every image to it.
pub const INPUT_SIZE: usize = 299;
/// The name of pytorch-fid's weights file (a release asset of github.com/mseitzer/pytorch-fid).
pub const WEIGHTS_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";

pub struct FidInception {
    stem: Vec<ConvBn>,
    blocks: Vec<Mixed>,
    to: Target,
}

impl FidInception {
    /// Reads pytorch-fid's weights file (`WEIGHTS_FILE`); the network computes on `device` in
    /// `dtype`.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let params = read_pth(path)?;
        Self::from_params(&params, &path.display().to_string(), device, dtype)
    }

    /// The network from named tensors with pytorch-fid's names; `what` names their source in
    /// errors.
    pub fn from_params(params: &Params, what: &str, device: &Device, dtype: DType) -> Result<Self> {
        ensure!(
            !(device.is_cpu() && dtype == DType::BF16),
            "the FID Inception cannot run in bf16 on the CPU (candle has no bf16 convolution there): use f32 or f16"
        );
        let mut fetch = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = params.get(name).with_context(|| {
                format!("{what}: no tensor '{name}' (expected pytorch-fid's FID Inception weights, {WEIGHTS_FILE})")
            })?;
            ensure!(
                t.dims() == shape,
                "{what}: tensor '{name}' has shape {:?}, expected {shape:?}",
                t.dims()
            );
            ensure!(
                t.dtype().is_float(),
                "{what}: tensor '{name}' has dtype {:?}, expected floating point",
                t.dtype()
            );
            Ok(t.clone())
        };
        let to = Target {
            device: device.clone(),
            dtype,
        };
        Self::build(&mut fetch, to)
    }

    /// The network, each tensor taken from `fetch` by name and shape, in the state dict's order.
    pub(crate) fn build(fetch: &mut Fetch, to: Target) -> Result<Self> {
        let halve = Kernel((3, 3), 2, (0, 0));
        let valid = Kernel((3, 3), 1, (0, 0));
        let stem = [
            ("Conv2d_1a_3x3", (3, 32), halve),
            ("Conv2d_2a_3x3", (32, 32), valid),
            ("Conv2d_2b_3x3", (32, 64), same(3)),
            ("Conv2d_3b_1x1", (64, 80), same(1)),
            ("Conv2d_4a_3x3", (80, 192), valid),
        ]
        .into_iter()
        .map(|(name, io, k)| ConvBn::new(fetch, name, io, k, &to))
        .collect::<Result<Vec<_>>>()?;
        let blocks = vec![
            BlockBuilder::new(fetch, "Mixed_5b", &to).a(192, 32)?,
            BlockBuilder::new(fetch, "Mixed_5c", &to).a(256, 64)?,
            BlockBuilder::new(fetch, "Mixed_5d", &to).a(288, 64)?,
            BlockBuilder::new(fetch, "Mixed_6a", &to).b(288)?,
            BlockBuilder::new(fetch, "Mixed_6b", &to).c(768, 128)?,
            BlockBuilder::new(fetch, "Mixed_6c", &to).c(768, 160)?,
            BlockBuilder::new(fetch, "Mixed_6d", &to).c(768, 160)?,
            BlockBuilder::new(fetch, "Mixed_6e", &to).c(768, 192)?,
            BlockBuilder::new(fetch, "Mixed_7a", &to).d(768)?,
            BlockBuilder::new(fetch, "Mixed_7b", &to).e(1280, Pool::AvgInside)?,
            BlockBuilder::new(fetch, "Mixed_7c", &to).e(2048, Pool::Max)?,
        ];
        Ok(Self { stem, blocks, to })
    }

    /// pytorch-fid's input transform: resize to 299×299, then [0, 1] → [−1, 1].
    pub fn preprocess(&self, images: &Tensor) -> Result<Tensor> {
        let x = images.to_device(&self.to.device)?.to_dtype(self.to.dtype)?;
        Ok(resize_bilinear(&x, INPUT_SIZE, INPUT_SIZE)?.affine(2.0, -1.0)?)
    }

    /// The outputs of pytorch-fid's four blocks (64, 192, 768 and 2048 channels; the last
    /// one pooled to `[B, 2048]`) for preprocessed input.
    pub fn blocks(&self, x: &Tensor) -> Result<[Tensor; 4]> {
        let [c1a, c2a, c2b, c3b, c4a] = &self.stem[..] else {
            bail!("the FID Inception's stem has five convolutions");
        };
        let b0 = max_pool_3x3(&c2b.forward(&c2a.forward(&c1a.forward(x)?)?)?, 2, 0)?;
        let b1 = max_pool_3x3(&c4a.forward(&c3b.forward(&b0)?)?, 2, 0)?;
        let (to_6e, to_7c) = self.blocks.split_at(8);
        let b2 = to_6e.iter().try_fold(b1.clone(), |x, m| m.forward(&x))?;
        let b3 = to_7c.iter().try_fold(b2.clone(), |x, m| m.forward(&x))?;
        Ok([b0, b1, b2, global_mean(&b3)?])
    }
}

/// Images must be `[B, 3, H, W]` in [0, 1]: anything else would give features silently unlike
/// pytorch-fid's (0–255 pixels, a missing channel).
fn check_images(images: &Tensor) -> Result<()> {
    let dims = images.dims();
    ensure!(
        dims.len() == 4 && dims[1] == 3 && dims[2] > 0 && dims[3] > 0,
        "FID Inception: expected RGB images [B, 3, H, W], got shape {dims:?}"
    );
    if images.elem_count() == 0 {
        return Ok(());
    }
    let flat = images.flatten_all()?.to_dtype(DType::F32)?;
    let (lo, hi) = (flat.min(0)?.to_scalar::<f32>()?, flat.max(0)?.to_scalar::<f32>()?);
    ensure!(
        (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi),
        "FID Inception: image values must lie in [0, 1], found {lo}..{hi}"
    );
    Ok(())
}

impl FeatureNet for FidInception {
    fn name(&self) -> &'static str {
        "inception"
    }

    fn dim(&self) -> usize {
        2048
    }

    fn features(&self, images: &Tensor) -> Result<Tensor> {
        check_images(images)?;
        if images.dim(0)? == 0 {
            return Ok(Tensor::zeros((0, 2048), DType::F32, &Device::Cpu)?);
        }
        let [_, _, _, pooled] = self.blocks(&self.preprocess(images)?)?;
        Ok(pooled.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
    }
}
