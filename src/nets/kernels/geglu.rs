//! diffusers' GEGLU activation `value · gelu(gate)` (`[value, gate]` = the halves of the last
//! axis): one vectorized pass over rows split across threads, instead of candle's narrow
//! copies and five single-threaded passes around a scalar `erf`; its backward (`backward`)
//! is one more such pass, reading only the input.

use super::silu::{exp, vectorized};
use super::storage::Values;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Values per thread task, at least.
const CHUNK: usize = 1 << 14;

pub struct Geglu;

impl Geglu {
    /// `h` `[…, 2·inner]` → `[…, inner]`.
    pub fn forward(h: &Tensor) -> Result<Tensor> {
        h.contiguous()?.apply_op1_no_bwd(&Geglu)
    }

    /// `∂L/∂h` from `∂L/∂y` (`grad`, `[…, inner]`): `g · gelu(gate)` for the value half and
    /// `g · value · gelu'(gate)` for the gate half.
    pub fn backward(h: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (h, grad) = (h.contiguous()?, grad.contiguous()?);
        let (hv, gv) = (Values::of(&h), Values::of(&grad));
        let width = halves(h.dims())?;
        let inner = width / 2;
        if grad.dims().split_last() != Some((&inner, &h.dims()[..h.rank() - 1])) {
            candle_core::bail!("geglu: gradient {:?} for input {:?}", grad.dims(), h.dims())
        }
        let mut out = vec![0f32; hv.get()?.len()];
        let rows = (CHUNK / inner.max(1)).max(1);
        out.par_chunks_mut(rows * width.max(1))
            .zip(
                hv.get()?
                    .par_chunks(rows * width.max(1))
                    .zip(gv.get()?.par_chunks(rows * inner.max(1))),
            )
            .for_each(|(dst, (src, gs))| {
                vectorized(|| {
                    for ((d, row), g) in dst
                        .chunks_exact_mut(width)
                        .zip(src.chunks_exact(width))
                        .zip(gs.chunks_exact(inner))
                    {
                        let (value, gate) = row.split_at(inner);
                        let (dv, dg) = d.split_at_mut(inner);
                        for (((dv, dg), (&v, &x)), &g) in dv.iter_mut().zip(dg).zip(value.iter().zip(gate)).zip(g) {
                            *dv = g * gelu(x);
                            *dg = g * v * gelu_derivative(x);
                        }
                    }
                })
            });
        Tensor::from_vec(out, h.dims(), &Device::Cpu)
    }
}

/// The width of the last axis of `dims`, which must split in halves.
fn halves(dims: &[usize]) -> Result<usize> {
    match dims.last() {
        Some(&w) if w % 2 == 0 => Ok(w),
        _ => candle_core::bail!("geglu: the last axis of {dims:?} does not split in halves"),
    }
}

/// `erf(x)` as a rational function of x (the odd/even polynomials Eigen and XLA use for f32):
/// 6.5e-8 from erf in exact arithmetic, up to 3.3e-7 in f32 near |x| = 3.9; exactly ±1 where
/// f32's erf is. Branch-free (a select) so that it vectorizes.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    for c in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + c;
    }
    let mut q = -1.456_607_2e-5f32;
    for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
        q = q * x2 + c;
    }
    // From here on erf rounds to ±1 in f32, where the rational form is an ulp short.
    match x.abs() >= 3.86 {
        true => 1f32.copysign(x),
        false => x * p / q,
    }
}

/// `x Φ(x) = x · ½(1 + erf(x/√2))`, PyTorch's exact GELU.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `Φ(x) + x φ(x)`, the derivative of `x Φ(x)`.
#[inline(always)]
fn gelu_derivative(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    cdf + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("geglu: expected a contiguous tensor")
        };
        let h = &s.as_slice::<f32>()?[start..end];
        let width = halves(l.dims())?;
        let lead = &l.dims()[..l.dims().len() - 1];
        let inner = width / 2;
        let mut out = vec![0f32; h.len() / 2];
        let rows = (CHUNK / inner.max(1)).max(1);
        out.par_chunks_mut(rows * inner.max(1))
            .zip(h.par_chunks(rows * width.max(1)))
            .for_each(|(dst, src)| {
                vectorized(|| {
                    for (y, row) in dst.chunks_exact_mut(inner).zip(src.chunks_exact(width)) {
                        let (value, gate) = row.split_at(inner);
                        for ((y, &v), &g) in y.iter_mut().zip(value).zip(gate) {
                            *y = v * gelu(g);
                        }
                    }
                })
            });
        let mut dims = lead.to_vec();
        dims.push(inner);
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// `erf` against libm's over the range a GELU gate meets, and at its limits.
    #[test]
    fn erf_is_accurate() {
        let mut worst = 0f64;
        for i in 0..=100_000 {
            let x = -8.0 + 16.0 * i as f32 / 100_000.0;
            worst = worst.max((erf(x) as f64 - libm_erf(x as f64)).abs());
        }
        assert!(worst < 4e-7, "worst absolute error {worst:e}");
        assert_eq!((erf(-1e30), erf(1e30), erf(0.0)), (-1.0, 1.0, 0.0));
        assert!(erf(f32::NAN).is_nan());
    }

    fn libm_erf(x: f64) -> f64 {
        let t = Tensor::new(&[x], &Device::Cpu).unwrap().erf().unwrap();
        t.to_vec1::<f64>().unwrap()[0]
    }

    /// Against the composed formula on a 3-D input with an odd inner width.
    #[test]
    fn matches_the_composed_formula() -> Result<()> {
        let h = Tensor::randn(0f32, 3.0, (2, 5, 2 * 37), &Device::Cpu)?;
        let (value, gate) = (h.narrow(D::Minus1, 0, 37)?, h.narrow(D::Minus1, 37, 37)?);
        let phi = (&gate * std::f64::consts::FRAC_1_SQRT_2)?.erf()?.affine(0.5, 0.5)?;
        let want = (&value * (&gate * phi)?)?;
        let got = Geglu::forward(&h)?;
        assert_eq!(got.dims(), want.dims());
        // Within 1e-6 of the inputs' scale: where gelu is tiny (gate ≈ −3), 1 + erf cancels in
        // any f32 formula, PyTorch's included.
        let scale = (value.abs()? * (gate.abs()? + 1.0)?)?.flatten_all()?.to_vec1::<f32>()?;
        let (got, want) = (
            got.flatten_all()?.to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?,
        );
        for ((g, w), s) in got.iter().zip(&want).zip(&scale) {
            assert!((g - w).abs() <= 1e-6 * (1.0 + s), "{g} vs {w}");
        }
        Ok(())
    }

    /// The input gradient against the composed formula's backward (candle's `erf` and
    /// arithmetic), on a loss `Σ y ⊙ r`, including gates in the tails (|x| > 4).
    #[test]
    fn backward_matches_the_composed_formula() -> Result<()> {
        let dev = Device::Cpu;
        let h = candle_core::Var::from_tensor(&Tensor::randn(0f32, 2.5, (3, 4, 2 * 29), &dev)?)?;
        let (value, gate) = (h.narrow(D::Minus1, 0, 29)?, h.narrow(D::Minus1, 29, 29)?);
        let phi = (&gate * std::f64::consts::FRAC_1_SQRT_2)?.erf()?.affine(0.5, 0.5)?;
        let y = (&value * (&gate * phi)?)?;
        let r = Tensor::randn(0f32, 1.0, y.dims(), &dev)?;
        let grads = (y * &r)?.sum_all()?.backward()?;
        let want = grads.get(h.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?;
        let got = Geglu::backward(&h.as_tensor().detach(), &r)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 2e-6 * scale, "{g} vs {w}");
        }
        Ok(())
    }
}
