//! Scaled dot-product attention `softmax(q kᵀ/√d) v` for frozen networks (the UNet's and the
//! VAE's attention at inference), one op instead of candle's: per batch row and block of
//! queries, every head's scores, softmax and weighted values pass through a buffer that
//! stays in cache, reading q, k and v straight from the projections' `[B, L, heads·d]`
//! layout and writing the output in the layout `to_out` takes. That removes the head split
//! and merge copies, the `[B·heads, L, S]` score tensor and the five single-threaded passes
//! of the composed softmax.
//!
//! The backward pass (Dao et al. 2022, "FlashAttention", Algorithm 2) recomputes each block's
//! probabilities from q and k instead of keeping them, so a graph holds only q, k, v and the
//! output: per batch row and head, `dV = Pᵀ dO`, `dS = P ⊙ (dO Vᵀ − rowsum(dO ⊙ O))`,
//! `dQ = dS K / √d`, `dK = dSᵀ Q / √d`.

use super::gemm::{product, View};
use super::silu::{exp, vectorized};
use super::storage::{contiguous_f32, Values};
use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Queries per task: their scores against every key (`QUERIES × S` values) stay in L2.
const QUERIES: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct Sdpa {
    pub heads: usize,
}

impl Sdpa {
    /// `q` `[B, L, heads·d]`, `k` and `v` `[B, S, heads·d]` → `[B, L, heads·d]`, head `h` in
    /// columns `h·d..(h + 1)·d` of each.
    pub fn forward(self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        match q.track_op() || k.track_op() || v.track_op() {
            true => q.apply_op3(&k, &v, self),
            false => q.apply_op3_no_bwd(&k, &v, &self),
        }
    }

    /// The sizes of `q` `[B, L, width]` against `k` and `v` `[B, S, width]`.
    fn dims(self, q: &[usize], k: &[usize], v: &[usize]) -> Result<(usize, Dims)> {
        let (&[b, l, width], &[bk, s, wk]) = (q, k) else {
            candle_core::bail!("attention: expected [B, L, heads·d] queries and [B, S, heads·d] keys")
        };
        if bk != b || wk != width || v != k || self.heads == 0 || width % self.heads != 0 || s == 0 {
            candle_core::bail!(
                "attention: queries {q:?}, keys {k:?} and values {v:?} do not fit {} heads",
                self.heads
            )
        }
        let dims = Dims {
            l,
            s,
            heads: self.heads,
            d: width / self.heads,
        };
        Ok((b, dims))
    }
}

/// One batch row's and head's gradients `(dQ [L, d], dK [S, d], dV [S, d])`, query blocks of
/// `QUERIES` one after the other.
fn head_backward(t: [&[f32]; 5], dims: Dims, h: usize) -> [Vec<f32>; 3] {
    let [q, k, v, o, g] = t;
    let Dims { l, s, d, .. } = dims;
    let scale = 1.0 / (d as f32).sqrt();
    let (mut dq, mut dk, mut dv) = (vec![0f32; l * d], vec![0f32; s * d], vec![0f32; s * d]);
    let (mut p, mut dp) = (vec![0f32; QUERIES * s], vec![0f32; QUERIES * s]);
    let (keys, values) = (dims.head(k, 0, s, h), dims.head(v, 0, s, h));
    for l0 in (0..l).step_by(QUERIES) {
        let rows = QUERIES.min(l - l0);
        let (p, dp) = (&mut p[..rows * s], &mut dp[..rows * s]);
        let (qb, gb) = (dims.head(q, l0, rows, h), dims.head(g, l0, rows, h));
        product(qb, keys.t(), p, None, false);
        let inv = softmax_rows(p, s, scale);
        for (row, inv) in p.chunks_exact_mut(s).zip(&inv) {
            row.iter_mut().for_each(|x| *x *= inv);
        }
        product(View::row_major(p, rows, s).t(), gb, &mut dv, None, true);
        product(gb, values.t(), dp, None, false);
        let ob = dims.head(o, l0, rows, h);
        vectorized(|| {
            for (i, (dpr, pr)) in dp.chunks_exact_mut(s).zip(p.chunks_exact(s)).enumerate() {
                let delta: f32 = (0..d).map(|j| gb.data[i * gb.rs + j] * ob.data[i * ob.rs + j]).sum();
                for (x, &pv) in dpr.iter_mut().zip(pr) {
                    *x = pv * (*x - delta) * scale;
                }
            }
        });
        let ds = View::row_major(dp, rows, s);
        product(ds, keys, &mut dq[l0 * d..(l0 + rows) * d], None, false);
        product(ds.t(), qb, &mut dk, None, true);
    }
    [dq, dk, dv]
}

/// Head `h`'s `[rows, d]` values into columns `h·d..` of the `[rows, heads·d]` matrix `dst`.
fn place(dst: &mut [f32], head: &[f32], dims: Dims, h: usize) {
    let d = dims.d;
    for (row, src) in dst.chunks_exact_mut(dims.width()).zip(head.chunks_exact(d)) {
        row[h * d..(h + 1) * d].copy_from_slice(src);
    }
}

/// Sizes of one attention: `b` batch rows, `l` queries, `s` keys, `heads` of width `d`.
#[derive(Clone, Copy, Debug)]
struct Dims {
    l: usize,
    s: usize,
    heads: usize,
    d: usize,
}

impl Dims {
    fn width(&self) -> usize {
        self.heads * self.d
    }

    /// Head `h` of the `rows` tokens from token `t0` of a `[tokens, heads·d]` matrix.
    fn head<'a>(&self, m: &'a [f32], t0: usize, rows: usize, h: usize) -> View<'a> {
        View {
            data: &m[t0 * self.width() + h * self.d..],
            rows,
            cols: self.d,
            rs: self.width(),
            cs: 1,
        }
    }
}

/// Rows of `scores` (each `s` wide) ← `exp(scale·(x − max))`; returns each row's `1 / Σ`.
fn softmax_rows(scores: &mut [f32], s: usize, scale: f32) -> Vec<f32> {
    let mut inv = Vec::with_capacity(scores.len() / s);
    vectorized(|| {
        for row in scores.chunks_exact_mut(s) {
            let max = lanes(row, f32::NEG_INFINITY, f32::max);
            for x in row.iter_mut() {
                *x = exp(scale * (*x - max));
            }
            inv.push(1.0 / lanes(row, 0.0, |a, b| a + b));
        }
    });
    inv
}

/// `row` folded with `f` from `init`, in `LANES` independent accumulators combined at the end:
/// a single running value would be a serial chain the compiler may not vectorize.
#[inline(always)]
fn lanes(row: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [init; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = f(*a, x);
        }
    }
    let tail = chunks.remainder().iter().fold(init, |a, &x| f(a, x));
    acc.iter().fold(tail, |a, &x| f(a, x))
}

/// One batch row's queries `l0..` (as many as `out` holds) against all its keys, every head.
fn attend_block(q: &[f32], k: &[f32], v: &[f32], dims: Dims, l0: usize, out: &mut [f32]) {
    let Dims { s, d, .. } = dims;
    let rows = out.len() / dims.width();
    let scale = 1.0 / (d as f32).sqrt();
    let (mut scores, mut o) = (vec![0f32; rows * s], vec![0f32; rows * d]);
    for h in 0..dims.heads {
        let keys = dims.head(k, 0, s, h).t();
        product(dims.head(q, l0, rows, h), keys, &mut scores, None, false);
        let inv = softmax_rows(&mut scores, s, scale);
        product(
            View::row_major(&scores, rows, s),
            dims.head(v, 0, s, h),
            &mut o,
            None,
            false,
        );
        // Normalizing the d outputs instead of the s probabilities of each query.
        for ((dst, src), inv) in out.chunks_exact_mut(dims.width()).zip(o.chunks_exact(d)).zip(&inv) {
            for (y, &x) in dst[h * d..(h + 1) * d].iter_mut().zip(src) {
                *y = x * inv;
            }
        }
    }
}

impl CustomOp3 for Sdpa {
    fn name(&self) -> &'static str {
        "scaled-dot-product-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            contiguous_f32(sq, lq, "attention")?,
            contiguous_f32(sk, lk, "attention")?,
            contiguous_f32(sv, lv, "attention")?,
        );
        let (b, dims) = self.dims(lq.dims(), lk.dims(), lv.dims())?;
        let (l, s, width) = (dims.l, dims.s, dims.width());
        let mut out = vec![0f32; b * l * width];
        out.par_chunks_mut(l * width).enumerate().for_each(|(bi, rows)| {
            let (q, kv) = (&q[bi * l * width..], bi * s * width..(bi + 1) * s * width);
            let (k, v) = (&k[kv.clone()], &v[kv]);
            rows.par_chunks_mut(QUERIES * width)
                .enumerate()
                .for_each(|(block, out)| attend_block(q, k, v, dims, block * QUERIES, out));
        });
        Ok((CpuStorage::F32(out), Shape::from((b, dims.l, width))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, dims) = self.dims(q.dims(), k.dims(), v.dims())?;
        let (o, grad) = (res.contiguous()?, grad.contiguous()?);
        let views = [q, k, v, &o, &grad].map(Values::of);
        let [qs, ks, vs, os, gs] = [0, 1, 2, 3, 4].map(|i| views[i].get());
        let (qs, ks, vs, os, gs) = (qs?, ks?, vs?, os?, gs?);
        let (l, s, width) = (dims.l, dims.s, dims.width());
        let heads: Vec<[Vec<f32>; 3]> = (0..b * dims.heads)
            .into_par_iter()
            .map(|task| {
                let (bi, h) = (task / dims.heads, task % dims.heads);
                let (rows, keys) = (
                    bi * l * width..(bi + 1) * l * width,
                    bi * s * width..(bi + 1) * s * width,
                );
                let t = [
                    &qs[rows.clone()],
                    &ks[keys.clone()],
                    &vs[keys],
                    &os[rows.clone()],
                    &gs[rows],
                ];
                head_backward(t, dims, h)
            })
            .collect();
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; b * l * width],
            vec![0f32; b * s * width],
            vec![0f32; b * s * width],
        );
        for (task, [hq, hk, hv]) in heads.iter().enumerate() {
            let (bi, h) = (task / dims.heads, task % dims.heads);
            place(&mut dq[bi * l * width..(bi + 1) * l * width], hq, dims, h);
            place(&mut dk[bi * s * width..(bi + 1) * s * width], hk, dims, h);
            place(&mut dv[bi * s * width..(bi + 1) * s * width], hv, dims, h);
        }
        let grad_of = |t: &Tensor, g: Vec<f32>| {
            t.track_op()
                .then(|| Tensor::from_vec(g, t.dims(), &Device::Cpu))
                .transpose()
        };
        Ok((grad_of(q, dq)?, grad_of(k, dk)?, grad_of(v, dv)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// The composed formula, heads split as diffusers does.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
        let split = |t: &Tensor| {
            let (b, n, w) = t.dims3().unwrap();
            t.reshape((b, n, heads, w / heads)).unwrap().transpose(1, 2).unwrap()
        };
        let (qh, kh, vh) = (split(q), split(k), split(v));
        let d = q.dim(D::Minus1).unwrap() / heads;
        let scores = (qh.contiguous().unwrap() * (1.0 / (d as f64).sqrt()))
            .unwrap()
            .matmul(&kh.t().unwrap().contiguous().unwrap())
            .unwrap();
        let p = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let o = p.matmul(&vh.contiguous().unwrap()).unwrap();
        let (b, _, l, _) = o.dims4().unwrap();
        o.transpose(1, 2).unwrap().reshape((b, l, heads * d)).unwrap()
    }

    /// Against the composed ops: self- and cross-attention, query counts below, at and
    /// across the block size, one and several heads, large logits (the max subtraction).
    #[test]
    fn matches_the_composed_formula() -> Result<()> {
        let dev = Device::Cpu;
        for (b, l, s, heads, d, spread) in [
            (2, 37, 37, 3, 5, 1.0),
            (1, 64, 77, 1, 8, 1.0),
            (3, 130, 29, 2, 16, 1.0),
            (2, 16, 16, 8, 40, 30.0),
        ] {
            let q = Tensor::randn(0f32, spread, (b, l, heads * d), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (b, s, heads * d), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (b, s, heads * d), &dev)?;
            let got = Sdpa { heads }.forward(&q, &k, &v)?;
            let want = reference(&q, &k, &v, heads);
            let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 4e-5, "b={b} l={l} s={s} heads={heads} d={d}: differs by {diff}");
        }
        Ok(())
    }

    /// Gradients of q, k and v against the composed formula's backward (candle's matmul and
    /// softmax), on a loss `Σ o ⊙ r`: self- and cross-attention, query counts across the block
    /// size, one and several heads.
    #[test]
    fn backward_matches_the_composed_formula() -> Result<()> {
        let dev = Device::Cpu;
        for (b, l, s, heads, d) in [(2, 37, 37, 3, 5), (1, 70, 77, 2, 8), (2, 130, 29, 1, 16)] {
            let draw = |n| candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, n, heads * d), &dev)?);
            let (q, k, v) = (draw(l)?, draw(s)?, draw(s)?);
            let r = Tensor::randn(0f32, 1.0, (b, l, heads * d), &dev)?;
            let want = reference(q.as_tensor(), k.as_tensor(), v.as_tensor(), heads);
            let want = (want * &r)?.sum_all()?.backward()?;
            let got = Sdpa { heads }.forward(q.as_tensor(), k.as_tensor(), v.as_tensor())?;
            let got = (got * &r)?.sum_all()?.backward()?;
            for (t, name) in [(&q, "q"), (&k, "k"), (&v, "v")] {
                let (g, w) = (got.get(t.as_tensor()).unwrap(), want.get(t.as_tensor()).unwrap());
                let scale = w.abs()?.max_all()?.to_scalar::<f32>()?;
                let diff = (g - w)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(
                    diff < 2e-5 * scale,
                    "b={b} l={l} s={s} heads={heads}: d{name} differs by {diff}"
                );
            }
        }
        Ok(())
    }
}
