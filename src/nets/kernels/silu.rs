//! SiLU `x σ(x)` (Elfwing et al. 2018) and its derivative `σ(x)(1 + x(1 − σ(x)))` over
//! slices, with a branch-free `exp` the compiler vectorizes (libm's `expf` runs one
//! value at a time).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// `e^x` to about 2 ulp: `2^n · p(r)`, `x = n ln2 + r`, `|r| ≤ ln2/2`, `p` Cephes' degree-7
/// polynomial; inputs clamped to the finite range, NaN kept.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to the nearest integer with plain arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = p * r + c;
    }
    // n sits in the low mantissa bits of `shifted`: 2^n built with integer ops that vectorize.
    let scale = f32::from_bits((shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23);
    (p * r * r + r + 1.0) * scale
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `x[i] ← silu(x[i])`.
pub fn silu(x: &mut [f32]) {
    vectorized(|| {
        for v in x.iter_mut() {
            *v *= sigmoid(*v);
        }
    })
}

/// `out[i] = silu(x[i])`.
pub fn silu_into(x: &[f32], out: &mut [f32]) {
    vectorized(|| {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v * sigmoid(v);
        }
    })
}

/// `grad[i] *= silu'(x[i])`.
pub fn silu_backward(x: &[f32], grad: &mut [f32]) {
    vectorized(|| {
        for (g, &v) in grad.iter_mut().zip(x) {
            let s = sigmoid(v);
            *g *= s * (1.0 + v * (1.0 - s));
        }
    })
}

/// SiLU as a candle op (CPU) with this module's vectorized forward and backward.
pub struct Silu;

impl Silu {
    pub fn forward(x: &Tensor) -> Result<Tensor> {
        x.apply_op1_arc(std::sync::Arc::new(Box::new(Silu)))
    }
}

impl CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "silu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut v = contiguous_values(s, l)?;
        silu(&mut v);
        Ok((CpuStorage::F32(v), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let x = x.flatten_all()?.to_vec1::<f32>()?;
        let mut g = grad.flatten_all()?.to_vec1::<f32>()?;
        silu_backward(&x, &mut g);
        Ok(Some(Tensor::from_vec(g, grad.shape(), grad.device())?))
    }
}

/// The f32 values of a CPU operand in row-major order.
fn contiguous_values(s: &CpuStorage, l: &Layout) -> Result<Vec<f32>> {
    let data = s.as_slice::<f32>()?;
    if let Some((start, end)) = l.contiguous_offsets() {
        return Ok(data[start..end].to_vec());
    }
    // Walk the multi-index in row-major order, last axis fastest.
    let (dims, stride) = (l.dims(), l.stride());
    let mut index = vec![0usize; dims.len()];
    let mut out = Vec::with_capacity(l.shape().elem_count());
    for _ in 0..l.shape().elem_count() {
        out.push(data[l.start_offset() + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>()]);
        for (i, &d) in index.iter_mut().zip(dims).rev() {
            *i += 1;
            if *i < d {
                break;
            }
            *i = 0;
        }
    }
    Ok(out)
}

/// Runs `f` compiled for AVX2/FMA where the CPU has them, so its loops vectorize 8-wide.
#[inline(always)]
pub(crate) fn vectorized(f: impl FnOnce()) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn with_avx2(f: impl FnOnce()) {
            f()
        }
        // SAFETY: the features were detected just above.
        unsafe { with_avx2(f) };
        return;
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomial exp against libm over the whole range SiLU meets, and its limits.
    #[test]
    fn exp_is_accurate_to_a_few_ulp() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3.0 * f32::EPSILON as f64, "worst relative error {worst:e}");
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(-1e30), exp(-87.0));
    }

    /// Values and derivative against float64 formulas, NaN propagated, saturation at ±∞.
    #[test]
    fn silu_and_derivative_match_float64() {
        let x: Vec<f32> = (0..4001)
            .map(|i| -40.0 + 0.02 * i as f32)
            .chain([f32::NAN, -1e30, 1e30])
            .collect();
        let mut y = x.clone();
        silu(&mut y);
        let mut g = vec![1f32; x.len()];
        silu_backward(&x, &mut g);
        for ((&v, &yv), &gv) in x.iter().zip(&y).zip(&g).take(4001) {
            let s = 1.0 / (1.0 + (-(v as f64)).exp());
            let (want_y, want_g) = (v as f64 * s, s * (1.0 + v as f64 * (1.0 - s)));
            assert!(
                (yv as f64 - want_y).abs() <= 1e-6 * (1.0 + want_y.abs()),
                "silu({v}) = {yv}, want {want_y}"
            );
            assert!((gv as f64 - want_g).abs() <= 1e-6, "silu'({v}) = {gv}, want {want_g}");
        }
        assert!(y[4001].is_nan() && g[4001].is_nan());
        let op = Silu::forward(&Tensor::new(&x[..4001], &candle_core::Device::Cpu).unwrap()).unwrap();
        assert_eq!(op.to_vec1::<f32>().unwrap(), y[..4001]);
        assert!(y[4002].abs() < 1e-8 && g[4002].abs() < 1e-8, "silu at −∞ must vanish");
        assert_eq!((y[4003], g[4003]), (1e30, 1.0));
    }

    /// The op's gradient equals candle's SiLU gradient, for a strided (transposed) input.
    #[test]
    fn op_gradient_matches_candle() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let v = candle_core::Var::from_tensor(&Tensor::randn(0f32, 3.0, (5, 7), &dev)?)?;
        let w = Tensor::randn(0f32, 1.0, (7, 5), &dev)?;
        let x = v.as_tensor().t()?;
        let g = (Silu::forward(&x)? * &w)?.sum_all()?.backward()?;
        let want = (x.silu()? * &w)?.sum_all()?.backward()?;
        let diff = (g.get(&v).unwrap() - want.get(&v).unwrap())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "gradient differs by {diff}");
        Ok(())
    }
}
