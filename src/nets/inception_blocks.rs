//! The layers of pytorch-fid's FID Inception-v3, by torchvision's module names: the
//! convolution + BatchNorm + ReLU unit (`NAME.conv`, `NAME.bn`) and the mixed blocks, each a
//! set of parallel branches whose outputs are concatenated along the channels.
//!
//! The FID variant differs from torchvision's Inception in the pools of its mixed blocks: the
//! average pools of blocks A, C and the first E ignore the padding, and the second E block
//! max-pools instead.

use crate::nets::inception_conv::ConvRelu;
use crate::nets::inception_ops::{avg_pool_3x3_inside, max_pool_3x3};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};

/// BatchNorm's ε in torchvision's Inception.
const BN_EPS: f64 = 1e-3;

/// Gives the tensor of a name, checked against the shape the network expects.
pub type Fetch<'a> = dyn FnMut(&str, &[usize]) -> Result<Tensor> + 'a;

/// Where the built network computes.
#[derive(Clone, Debug)]
pub struct Target {
    pub device: Device,
    pub dtype: DType,
}

/// `relu(bn(conv(x)))` with the BatchNorm (running statistics) folded into the convolution.
pub struct ConvBn {
    w: Tensor,
    b: Tensor,
    conv: ConvRelu,
}

/// A kernel `(kh, kw)` with torchvision's `stride` and `padding` for that module.
#[derive(Clone, Copy)]
pub struct Kernel(pub (usize, usize), pub usize, pub (usize, usize));

/// A square kernel at stride 1 with "same" padding.
pub fn same(k: usize) -> Kernel {
    Kernel((k, k), 1, (k / 2, k / 2))
}

impl ConvBn {
    pub fn new(fetch: &mut Fetch, name: &str, (cin, cout): (usize, usize), k: Kernel, to: &Target) -> Result<Self> {
        let Kernel((kh, kw), stride, pad) = k;
        let mut get = |p: &str, shape: &[usize]| -> Result<Tensor> {
            Ok(fetch(&format!("{name}.{p}"), shape)?
                .to_device(&Device::Cpu)?
                .to_dtype(DType::F64)?)
        };
        let w = get("conv.weight", &[cout, cin, kh, kw])?;
        let gamma = get("bn.weight", &[cout])?;
        let beta = get("bn.bias", &[cout])?;
        let mean = get("bn.running_mean", &[cout])?;
        let var = get("bn.running_var", &[cout])?;
        // bn(y) = (y − mean)·scale + beta with scale = gamma / √(var + ε), folded in f64.
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let w = w.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        let b = (beta - (mean * &scale)?)?;
        let cast = |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(to.dtype)?.to_device(&to.device)?) };
        Ok(Self {
            w: cast(w)?,
            b: cast(b)?,
            conv: ConvRelu { stride, pad },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.conv.forward(x, &self.w, &self.b)?)
    }
}

#[derive(Clone, Copy, PartialEq)]
pub enum Pool {
    None,
    /// 3×3, stride 1, padding 1, the mean over the pixels inside.
    AvgInside,
    /// 3×3, stride 1, padding 1.
    Max,
    /// 3×3, stride 2, no padding.
    MaxHalve,
}

/// A pool, then convolutions in sequence, then optionally parallel convolutions on the
/// sequence's output whose results are concatenated (the E blocks' 1×3 and 3×1 pairs).
pub struct Branch {
    pool: Pool,
    convs: Vec<ConvBn>,
    split: Vec<ConvBn>,
}

impl Branch {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = match self.pool {
            Pool::None => x.clone(),
            Pool::AvgInside => avg_pool_3x3_inside(x)?,
            Pool::Max => max_pool_3x3(x, 1, 1)?,
            Pool::MaxHalve => max_pool_3x3(x, 2, 0)?,
        };
        for conv in &self.convs {
            y = conv.forward(&y)?;
        }
        if self.split.is_empty() {
            return Ok(y);
        }
        let parts = self.split.iter().map(|c| c.forward(&y)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 1)?)
    }
}

/// Parallel branches, concatenated along the channels in order.
pub struct Mixed(Vec<Branch>);

impl Mixed {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let parts = self.0.iter().map(|b| b.forward(x)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 1)?)
    }
}

/// Builds a block's branches, fetching their tensors in the order the module declares them.
pub struct BlockBuilder<'f, 'a> {
    fetch: &'f mut Fetch<'a>,
    name: &'f str,
    to: &'f Target,
}

/// One convolution of a branch: module name, (in, out) channels, kernel.
type Layer<'s> = (&'s str, (usize, usize), Kernel);

impl<'f, 'a> BlockBuilder<'f, 'a> {
    /// The builder of block `name` (`Mixed_5b`).
    pub fn new(fetch: &'f mut Fetch<'a>, name: &'f str, to: &'f Target) -> Self {
        Self { fetch, name, to }
    }

    fn convs(&mut self, layers: &[Layer]) -> Result<Vec<ConvBn>> {
        layers
            .iter()
            .map(|&(m, io, k)| ConvBn::new(self.fetch, &format!("{}.{m}", self.name), io, k, self.to))
            .collect()
    }

    fn branch(&mut self, pool: Pool, layers: &[Layer], split: &[Layer]) -> Result<Branch> {
        Ok(Branch {
            pool,
            convs: self.convs(layers)?,
            split: self.convs(split)?,
        })
    }

    /// FIDInceptionA: 1×1 | 1×1 → 5×5 | 1×1 → 3×3 → 3×3 | mean pool (inside) → 1×1.
    pub fn a(mut self, cin: usize, pool_features: usize) -> Result<Mixed> {
        Ok(Mixed(vec![
            self.branch(Pool::None, &[("branch1x1", (cin, 64), same(1))], &[])?,
            self.branch(
                Pool::None,
                &[("branch5x5_1", (cin, 48), same(1)), ("branch5x5_2", (48, 64), same(5))],
                &[],
            )?,
            self.branch(
                Pool::None,
                &[
                    ("branch3x3dbl_1", (cin, 64), same(1)),
                    ("branch3x3dbl_2", (64, 96), same(3)),
                    ("branch3x3dbl_3", (96, 96), same(3)),
                ],
                &[],
            )?,
            self.branch(Pool::AvgInside, &[("branch_pool", (cin, pool_features), same(1))], &[])?,
        ]))
    }

    /// InceptionB (Mixed_6a), halving the size: 3×3/2 | 1×1 → 3×3 → 3×3/2 | max pool /2.
    pub fn b(mut self, cin: usize) -> Result<Mixed> {
        let halve = Kernel((3, 3), 2, (0, 0));
        Ok(Mixed(vec![
            self.branch(Pool::None, &[("branch3x3", (cin, 384), halve)], &[])?,
            self.branch(
                Pool::None,
                &[
                    ("branch3x3dbl_1", (cin, 64), same(1)),
                    ("branch3x3dbl_2", (64, 96), same(3)),
                    ("branch3x3dbl_3", (96, 96), halve),
                ],
                &[],
            )?,
            self.branch(Pool::MaxHalve, &[], &[])?,
        ]))
    }

    /// FIDInceptionC: 1×1 | 1×1 → 1×7 → 7×1 | 1×1 → (7×1 → 1×7) twice | mean pool → 1×1.
    pub fn c(mut self, cin: usize, c7: usize) -> Result<Mixed> {
        let (row, col) = (Kernel((1, 7), 1, (0, 3)), Kernel((7, 1), 1, (3, 0)));
        Ok(Mixed(vec![
            self.branch(Pool::None, &[("branch1x1", (cin, 192), same(1))], &[])?,
            self.branch(
                Pool::None,
                &[
                    ("branch7x7_1", (cin, c7), same(1)),
                    ("branch7x7_2", (c7, c7), row),
                    ("branch7x7_3", (c7, 192), col),
                ],
                &[],
            )?,
            self.branch(
                Pool::None,
                &[
                    ("branch7x7dbl_1", (cin, c7), same(1)),
                    ("branch7x7dbl_2", (c7, c7), col),
                    ("branch7x7dbl_3", (c7, c7), row),
                    ("branch7x7dbl_4", (c7, c7), col),
                    ("branch7x7dbl_5", (c7, 192), row),
                ],
                &[],
            )?,
            self.branch(Pool::AvgInside, &[("branch_pool", (cin, 192), same(1))], &[])?,
        ]))
    }

    /// InceptionD (Mixed_7a), halving the size: 1×1 → 3×3/2 | 1×1 → 1×7 → 7×1 → 3×3/2 | max pool /2.
    pub fn d(mut self, cin: usize) -> Result<Mixed> {
        let halve = Kernel((3, 3), 2, (0, 0));
        Ok(Mixed(vec![
            self.branch(
                Pool::None,
                &[("branch3x3_1", (cin, 192), same(1)), ("branch3x3_2", (192, 320), halve)],
                &[],
            )?,
            self.branch(
                Pool::None,
                &[
                    ("branch7x7x3_1", (cin, 192), same(1)),
                    ("branch7x7x3_2", (192, 192), Kernel((1, 7), 1, (0, 3))),
                    ("branch7x7x3_3", (192, 192), Kernel((7, 1), 1, (3, 0))),
                    ("branch7x7x3_4", (192, 192), halve),
                ],
                &[],
            )?,
            self.branch(Pool::MaxHalve, &[], &[])?,
        ]))
    }

    /// FIDInceptionE_1 (`pool` = mean inside) and E_2 (`pool` = max): 1×1 | 1×1 → (1×3, 3×1)
    /// | 1×1 → 3×3 → (1×3, 3×1) | pool → 1×1.
    pub fn e(mut self, cin: usize, pool: Pool) -> Result<Mixed> {
        let (row, col) = (Kernel((1, 3), 1, (0, 1)), Kernel((3, 1), 1, (1, 0)));
        Ok(Mixed(vec![
            self.branch(Pool::None, &[("branch1x1", (cin, 320), same(1))], &[])?,
            self.branch(
                Pool::None,
                &[("branch3x3_1", (cin, 384), same(1))],
                &[("branch3x3_2a", (384, 384), row), ("branch3x3_2b", (384, 384), col)],
            )?,
            self.branch(
                Pool::None,
                &[
                    ("branch3x3dbl_1", (cin, 448), same(1)),
                    ("branch3x3dbl_2", (448, 384), same(3)),
                ],
                &[
                    ("branch3x3dbl_3a", (384, 384), row),
                    ("branch3x3dbl_3b", (384, 384), col),
                ],
            )?,
            self.branch(pool, &[("branch_pool", (cin, 192), same(1))], &[])?,
        ]))
    }
}
