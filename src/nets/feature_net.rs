//! A network that maps images to feature vectors, on which Fréchet and kernel distances and
//! CLIP-style scores are computed (docs/MATHEMATICS.md, "Metrics of sample quality"). Each implementation
//! includes its reference implementation's preprocessing, so every caller hands over the same
//! thing: RGB images in [0, 1].

use anyhow::Result;
use candle_core::Tensor;

pub trait FeatureNet {
    /// The name `--model` and reports use (`inception`, `dinov2`, `clip`).
    fn name(&self) -> &'static str;

    /// The length of one feature vector.
    fn dim(&self) -> usize;

    /// Features `[B, dim]` (f32, on the CPU) of RGB images `[B, 3, H, W]`, f32 in [0, 1], of any
    /// size: resized and normalised here exactly as the reference implementation does.
    fn features(&self, images: &Tensor) -> Result<Tensor>;
}
