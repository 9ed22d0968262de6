//! Gradients as one flat tensor for one collective: each var's gradient flattened and
//! concatenated in the vars' order on their device (zeros where a var has none), then split
//! back by the vars' element counts and shapes. One all-reduce per step over this bucket
//! replaces one per var (runtime::ranks::sum_in_place).

use anyhow::{ensure, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

/// The bucket's element type: f64 for f64 vars, f32 otherwise (half-precision gradients are
/// summed in f32, which holds every f16/bf16 value exactly).
pub fn dtype(vars: &[Var]) -> DType {
    match vars.iter().all(|v| v.dtype() == DType::F64) && !vars.is_empty() {
        true => DType::F64,
        false => DType::F32,
    }
}

/// The vars' gradients in one contiguous 1-D tensor of `dtype` on the first var's device, in
/// storage of its own: the collective may write into it in place.
pub fn flatten(grads: &GradStore, vars: &[Var], dtype: DType) -> Result<Tensor> {
    ensure!(!vars.is_empty(), "no trained parameters to sum");
    let parts = vars
        .iter()
        .map(|v| match grads.get(v) {
            Some(g) => Ok(g.flatten_all()?.to_dtype(dtype)?),
            None => Ok(Tensor::zeros(v.elem_count(), dtype, v.device())?),
        })
        .collect::<Result<Vec<_>>>()?;
    // `cat` hands a lone part back as itself, which may share a gradient's storage.
    match parts.as_slice() {
        [one] => Ok(one.copy()?),
        _ => Ok(Tensor::cat(&parts, 0)?),
    }
}

/// Every var's gradient from `flat` (as `flatten` laid it out), in the var's shape and dtype.
pub fn split(flat: &Tensor, vars: &[Var], grads: &mut GradStore) -> Result<()> {
    let total: usize = vars.iter().map(|v| v.elem_count()).sum();
    ensure!(
        flat.dims() == [total],
        "gradient bucket of shape {:?} does not hold the {total} trained values",
        flat.dims()
    );
    let mut at = 0;
    for v in vars {
        let n = v.elem_count();
        grads.insert(v, flat.narrow(0, at, n)?.reshape(v.shape())?.to_dtype(v.dtype())?);
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{CpuStorage, Device, InplaceOp1, Layout};

    /// Doubles an f32 tensor in place, as a collective writes into the bucket.
    struct Double;

    impl InplaceOp1 for Double {
        fn name(&self) -> &'static str {
            "double"
        }

        fn cpu_fwd(&self, storage: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
            if let CpuStorage::F32(values) = storage {
                values.iter_mut().for_each(|x| *x *= 2.0);
            }
            Ok(())
        }
    }

    fn var(values: &[f32], shape: &[usize], dtype: DType) -> Var {
        Var::from_tensor(
            &Tensor::from_slice(values, shape, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap()
    }

    /// Gradients of the vars' own values: each var's gradient then names its var.
    fn grads_of(vars: &[Var], skip: usize) -> GradStore {
        let loss = vars
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, v)| {
                v.as_tensor()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
            })
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        loss.backward().unwrap()
    }

    /// The bucket is the concatenation in the vars' order, a var without a gradient holds
    /// zeros at its place, and splitting gives back every gradient bit for bit in its shape
    /// and dtype (f32 and bf16 vars in one bucket).
    #[test]
    fn flatten_then_split_gives_back_every_gradient() {
        let vars = [
            var(&[1.0, -2.0, 3.5, 0.25, 5.0, -6.0], &[2, 3], DType::F32),
            var(&[7.0, 8.0], &[2], DType::F32),
            var(&[0.1, -0.3, 1e-3, 9.5], &[2, 1, 2], DType::BF16),
        ];
        let grads = grads_of(&vars, 1);
        assert_eq!(dtype(&vars), DType::F32);
        let flat = flatten(&grads, &vars, DType::F32).unwrap();
        let mut expected: Vec<f32> = vec![2.0, -4.0, 7.0, 0.5, 10.0, -12.0, 0.0, 0.0];
        let bf = vars[2].as_tensor().to_dtype(DType::F32).unwrap().flatten_all().unwrap();
        expected.extend(bf.to_vec1::<f32>().unwrap().iter().map(|x| 2.0 * x));
        assert_eq!(flat.to_vec1::<f32>().unwrap(), expected);

        // A store of other gradients (candle makes stores only by backward): split replaces them.
        let mut back = grads_of(&vars, usize::MAX);
        split(&flat, &vars, &mut back).unwrap();
        for (i, v) in vars.iter().enumerate() {
            let got = back.get(v).unwrap();
            assert_eq!(got.dims(), v.dims(), "var {i}");
            assert_eq!(got.dtype(), v.dtype(), "var {i}");
            let got = got
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let want = match grads.get(v) {
                Some(g) => g
                    .to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                None => vec![0.0; v.elem_count()],
            };
            assert_eq!(got, want, "var {i}");
        }
    }

    /// Writing into the bucket in place leaves every gradient as it was, for one var (whose
    /// gradient `cat` would hand back as the bucket itself) and for several.
    #[test]
    fn the_bucket_owns_its_storage() {
        for count in [1, 2] {
            let vars: Vec<Var> = (0..count)
                .map(|i| var(&[1.0 + i as f32, -2.0], &[2], DType::F32))
                .collect();
            let grads = grads_of(&vars, usize::MAX);
            let before: Vec<Vec<f32>> = vars.iter().map(|v| grads.get(v).unwrap().to_vec1().unwrap()).collect();
            let flat = flatten(&grads, &vars, DType::F32).unwrap();
            flat.inplace_op1(&Double).unwrap();
            let after: Vec<Vec<f32>> = vars.iter().map(|v| grads.get(v).unwrap().to_vec1().unwrap()).collect();
            assert_eq!(before, after, "{count} vars");
            let doubled: Vec<f32> = before.concat().iter().map(|x| 2.0 * x).collect();
            assert_eq!(flat.to_vec1::<f32>().unwrap(), doubled, "{count} vars");
        }
    }

    /// f64 vars keep an f64 bucket; a bucket of the wrong size is refused with a message.
    #[test]
    fn f64_buckets_and_wrong_sizes() {
        let vars = [var(&[1.0, 2.0], &[2], DType::F64), var(&[3.0], &[1], DType::F64)];
        assert_eq!(dtype(&vars), DType::F64);
        let flat = flatten(&grads_of(&vars, usize::MAX), &vars, DType::F64).unwrap();
        assert_eq!(flat.to_vec1::<f64>().unwrap(), [2.0, 4.0, 6.0]);
        let short = flat.narrow(0, 0, 2).unwrap();
        let err = split(&short, &vars, &mut grads_of(&vars, usize::MAX)).unwrap_err();
        assert!(err.to_string().contains("3 trained values"), "{err}");
    }
}
