//! Single-precision matrix product `C ← A·B + bias (+ C)` for the networks' dense layers,
//! on the `gemm` crate's packed AVX2/AVX-512 kernels. Work is split across threads here,
//! each running gemm single-threaded: at the MLP's sizes (a few hundred rows) that scales
//! to two cores where gemm's own threading does not (docs/PERFORMANCE.md). Every output
//! element is computed by one thread over the whole depth in gemm's fixed order, so
//! results do not depend on the thread count.

use rayon::prelude::*;

/// Below this many multiply-adds one thread is faster than two.
const PARALLEL_WORK: usize = 1 << 18;
/// Rows per thread, at least.
const MIN_ROWS: usize = 16;
/// Columns per thread, at least.
const MIN_COLS: usize = 32;

/// A read-only strided matrix: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    #[cfg(test)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }

    /// The first `rows` rows from row `i0` on.
    pub fn rows(self, i0: usize, rows: usize) -> Self {
        Self {
            data: &self.data[i0 * self.rs..],
            rows,
            ..self
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `c ← a·b + bias`, or `c ← c + a·b + bias` when `accumulate`; `c` is row-major
/// `a.rows × b.cols`, `bias` (one value per column) is optional. Large products split
/// `c`'s columns across threads, so each thread packs only its part of `b` (the weights).
pub fn gemm(a: View, b: View, c: &mut [f32], bias: Option<&[f32]>, accumulate: bool) {
    check(a, b, c, bias);
    let n = b.cols;
    let threads = if a.rows * n * a.cols < PARALLEL_WORK {
        1
    } else {
        rayon::current_num_threads().min(n / MIN_COLS).max(1)
    };
    if threads == 1 {
        return product(a, b, c, bias, accumulate);
    }
    // Column blocks in whole 16-wide micro-panels where possible.
    let width = n.div_ceil(threads).next_multiple_of(16).min(n);
    let dst = SharedDst(c.as_mut_ptr());
    (0..n.div_ceil(width)).into_par_iter().for_each(|t| {
        let (j0, j1) = (t * width, ((t + 1) * width).min(n));
        let block = View {
            data: &b.data[j0 * b.cs..],
            cols: j1 - j0,
            ..b
        };
        // SAFETY: columns j0..j1 of every row of c are written by this thread only, and
        // lie inside c (checked above).
        unsafe { block_product(a, block, dst.at(j0), n, bias.map(|v| &v[j0..j1]), accumulate) }
    });
}

/// `c`'s base pointer, shared by threads that write disjoint column blocks.
struct SharedDst(*mut f32);
// SAFETY: only `gemm` shares it, and its threads write disjoint columns.
unsafe impl Sync for SharedDst {}

impl SharedDst {
    fn at(&self, column: usize) -> *mut f32 {
        self.0.wrapping_add(column)
    }
}

fn check(a: View, b: View, c: &[f32], bias: Option<&[f32]>) {
    let n = b.cols;
    assert!(b.rows == a.cols && c.len() == a.rows * n && bias.is_none_or(|v| v.len() == n));
    assert!(a.in_bounds() && b.in_bounds(), "matrix view outside its data");
}

/// Runs `f(first_row, rows)` over the rows of the row-major `c` (`n` columns), split into one
/// contiguous chunk per thread when each output needs `depth` operations and the whole
/// is worth more than one thread.
pub fn for_row_chunks(c: &mut [f32], n: usize, depth: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if n == 0 || c.is_empty() {
        return;
    }
    let m = c.len() / n;
    let threads = if m * n * depth < PARALLEL_WORK {
        1
    } else {
        rayon::current_num_threads().min(m / MIN_ROWS).max(1)
    };
    if threads == 1 {
        return f(0, c);
    }
    let rows_per_thread = m.div_ceil(threads);
    c.par_chunks_mut(rows_per_thread * n)
        .enumerate()
        .for_each(|(t, c)| f(t * rows_per_thread, c));
}

/// `gemm` on the calling thread.
pub fn product(a: View, b: View, c: &mut [f32], bias: Option<&[f32]>, accumulate: bool) {
    check(a, b, c, bias);
    // SAFETY: c holds a.rows × b.cols values in rows of b.cols (checked above).
    unsafe { block_product(a, b, c.as_mut_ptr(), b.cols, bias, accumulate) }
}

/// The product into the `a.rows × b.cols` block at `c` with row stride `ldc`: the bias
/// written (or added) first, then gemm accumulates onto it.
///
/// # Safety
/// The block must be valid for writes and not accessed by anyone else meanwhile; `a` and
/// `b` must be in bounds with `b.rows == a.cols`.
unsafe fn block_product(a: View, b: View, c: *mut f32, ldc: usize, bias: Option<&[f32]>, accumulate: bool) {
    let n = b.cols;
    if n == 0 || a.rows == 0 {
        return;
    }
    if let Some(bias) = bias {
        for i in 0..a.rows {
            let row = std::slice::from_raw_parts_mut(c.add(i * ldc), n);
            if accumulate {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            } else {
                row.copy_from_slice(bias);
            }
        }
    }
    gemm::gemm(
        a.rows,
        n,
        a.cols,
        c,
        1,
        ldc as isize,
        accumulate || bias.is_some(),
        a.data.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.data.as_ptr(),
        b.cs as isize,
        b.rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn naive(a: View, b: View, c0: &[f32], bias: Option<&[f32]>, accumulate: bool) -> Vec<f64> {
        let mut c = vec![0f64; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let dot: f64 = (0..a.cols).map(|p| a.at(i, p) as f64 * b.at(p, j) as f64).sum();
                let base = if accumulate { c0[i * b.cols + j] as f64 } else { 0.0 };
                c[i * b.cols + j] = base + dot + bias.map_or(0.0, |v| v[j] as f64);
            }
        }
        c
    }

    /// Every shape class (edge panels, deep and wide products, one thread and column
    /// blocks split across threads, narrow last block), both operand layouts, with and
    /// without bias and accumulation, matches a float64 product to f32 rounding.
    #[test]
    fn matches_float64_product() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let shapes = [
            (1, 1, 1),
            (5, 3, 17),
            (6, 16, 256),
            (7, 600, 31),
            (131, 257, 40),
            (300, 2100, 5),
            (3, 5, 2100),
            (64, 9, 700),
            (40, 64, 200),
            (7, 1100, 90),
        ];
        for &(m, k, n) in &shapes {
            for (ta, tb, with_bias, accumulate) in [
                (false, false, true, false),
                (true, true, false, true),
                (false, true, true, true),
            ] {
                let a_data: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                let b_data: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
                let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
                let c0: Vec<f32> = (0..m * n).map(|_| rng.random_range(-1.0..1.0)).collect();
                let a = if ta {
                    View::row_major(&a_data, k, m).t()
                } else {
                    View::row_major(&a_data, m, k)
                };
                let b = if tb {
                    View::row_major(&b_data, n, k).t()
                } else {
                    View::row_major(&b_data, k, n)
                };
                let bias = with_bias.then_some(&bias[..]);
                let want = naive(a, b, &c0, bias, accumulate);
                let mut c = c0.clone();
                gemm(a, b, &mut c, bias, accumulate);
                for (got, want) in c.iter().zip(&want) {
                    assert!(
                        (*got as f64 - want).abs() <= 1e-5 * (k as f64).sqrt() * 4.0,
                        "{m}x{k}x{n} ta={ta} tb={tb}: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// Splitting rows across threads must not change a single bit.
    #[test]
    fn thread_count_does_not_change_results() {
        let (m, k, n) = (97, 300, 130);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 89) as f32 - 44.0) / 13.0).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut c = vec![0f32; m * n];
            pool.install(|| {
                gemm(
                    View::row_major(&a, m, k),
                    View::row_major(&b, k, n),
                    &mut c,
                    None,
                    false,
                )
            });
            c
        };
        assert_eq!(run(1), run(3));
    }
}
