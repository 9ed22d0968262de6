//! SiLU `x σ(x)` (Elfwing et al. 2018) and its derivative `σ(x)(1 + x(1 − σ(x)))` over
//! slices, with a branch-free `exp` the compiler vectorizes (libm's `expf` runs one
//! value at a time).

/// `e^x` to about 2 ulp: `2^n · p(r)`, `x = n ln2 + r`, `|r| ≤ ln2/2`, `p` Cephes' degree-7
/// polynomial; inputs clamped to the finite range, NaN kept.
#[inline(always)]
fn exp(x: f32) -> f32 {
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

/// `out[i] = silu(x[i])`.
pub fn silu(x: &[f32], out: &mut [f32]) {
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

/// Runs `f` compiled for AVX2/FMA where the CPU has them, so its loops vectorize 8-wide.
#[inline(always)]
fn vectorized(f: impl FnOnce()) {
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
        let mut y = vec![0f32; x.len()];
        silu(&x, &mut y);
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
        assert!(y[4002].abs() < 1e-8 && g[4002].abs() < 1e-8, "silu at −∞ must vanish");
        assert_eq!((y[4003], g[4003]), (1e30, 1.0));
    }
}
