//! `y = x Wᵀ (+ b)` for the linear layers of frozen networks (the UNet's projections and
//! feed-forward at inference): the project's product, whose threads each pack only their
//! slice of the weights, with the bias written before it, instead of candle's matmul and a
//! separate broadcast add. No backward: whatever records a gradient takes candle's ops.

use super::gemm::{gemm, View};
use super::storage::{contiguous_f32, Values};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor};

pub struct FrozenLinear;

impl FrozenLinear {
    /// `x` `[…, in]`, `w` `[out, in]`, `b` `[out]` → `[…, out]`.
    pub fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        match b {
            Some(b) => x.apply_op3_no_bwd(&w, &b.contiguous()?, &FrozenLinear),
            None => x.apply_op2_no_bwd(&w, &FrozenLinear),
        }
    }
}

/// `∂L/∂x = g W` of `y = x Wᵀ (+ b)` with frozen `w` `[out, in]`, from `g` `[…, out]`.
pub fn input_gradient(grad: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (grad, w) = (grad.contiguous()?, w.contiguous()?);
    let (gv, wv) = (Values::of(&grad), Values::of(&w));
    let (&[out, inp], Some((&g_out, lead))) = (wv.dims(), gv.dims().split_last()) else {
        candle_core::bail!("linear input gradient: expected a [out, in] weight and a [.., out] gradient")
    };
    if g_out != out {
        candle_core::bail!(
            "linear input gradient: gradient {:?} does not fit weight {:?}",
            gv.dims(),
            wv.dims()
        )
    }
    let rows: usize = lead.iter().product();
    let mut gx = vec![0f32; rows * inp];
    gemm(
        View::row_major(gv.get()?, rows, out),
        View::row_major(wv.get()?, out, inp),
        &mut gx,
        None,
        false,
    );
    let mut dims = lead.to_vec();
    dims.push(inp);
    Tensor::from_vec(gx, dims, &Device::Cpu)
}

/// The product for `x` (`lx`) and `w` (`lw`), with `bias` per output.
fn linear(x: &[f32], lx: &Layout, w: &[f32], lw: &Layout, bias: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
    let (Some((&inp, lead)), &[out, w_in]) = (lx.dims().split_last(), lw.dims()) else {
        candle_core::bail!("linear: expected an input [.., in] and a weight [out, in]")
    };
    if inp != w_in || bias.is_some_and(|b| b.len() != out) {
        candle_core::bail!(
            "linear: input {:?} and weight {:?} (and bias) do not fit",
            lx.dims(),
            lw.dims()
        )
    }
    let rows: usize = lead.iter().product();
    let mut y = vec![0f32; rows * out];
    gemm(
        View::row_major(x, rows, inp),
        View::row_major(w, out, inp).t(),
        &mut y,
        bias,
        false,
    );
    let mut dims = lead.to_vec();
    dims.push(out);
    Ok((CpuStorage::F32(y), Shape::from(dims)))
}

impl CustomOp2 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, sx: &CpuStorage, lx: &Layout, sw: &CpuStorage, lw: &Layout) -> Result<(CpuStorage, Shape)> {
        linear(
            contiguous_f32(sx, lx, "linear")?,
            lx,
            contiguous_f32(sw, lw, "linear")?,
            lw,
            None,
        )
    }
}

impl CustomOp3 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        linear(
            contiguous_f32(sx, lx, "linear")?,
            lx,
            contiguous_f32(sw, lw, "linear")?,
            lw,
            Some(contiguous_f32(sb, lb, "linear")?),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    /// Against candle's linear layer: with and without bias, on 2-D and 3-D inputs, and an
    /// input transposed in memory (made contiguous first).
    #[test]
    fn matches_candle_linear() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.2, (70, 33), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 70, &dev)?;
        let inputs = [
            Tensor::randn(0f32, 1.0, (5, 33), &dev)?,
            Tensor::randn(0f32, 1.0, (2, 300, 33), &dev)?,
            Tensor::randn(0f32, 1.0, (3, 33, 9), &dev)?.transpose(1, 2)?,
        ];
        for x in &inputs {
            for bias in [None, Some(&b)] {
                let got = FrozenLinear::forward(x, &w, bias)?;
                let want = candle_nn::Linear::new(w.clone(), bias.cloned()).forward(&x.contiguous()?)?;
                assert_eq!(got.dims(), want.dims());
                let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-5, "{:?} bias {}: differs by {diff}", x.dims(), bias.is_some());
            }
        }
        Ok(())
    }
}
