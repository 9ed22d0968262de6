//! The LAION aesthetic predictor (improved-aesthetic-predictor's
//! `sac+logos+ava1-l14-linearMSE.pth`), the paper's aesthetic score: a chain of linear layers
//! (768 → 1024 → 128 → 64 → 16 → 1 in the released file; dropout between some of them, which
//! evaluation skips, and no activation anywhere) applied to the CLIP ViT-L/14 image embedding
//! scaled to unit L2 norm, as the predictor's own inference code and the paper's do.
//!
//! The file is a PyTorch state dict of `layers.N.weight` / `layers.N.bias` (N the position in
//! its `nn.Sequential`, dropouts holding the other positions); the layers are taken in order of
//! N, their widths from the tensors, checked to chain and end in one output. Reading the file is
//! the caller's (`eval::metric_nets`).

use super::layers::Params;
use anyhow::{anyhow, bail, ensure, Result};
use candle_core::{DType, Device, Tensor, D};

/// The predictor's affine layers, `(weight [out, in], bias [out])`, in order.
pub struct AestheticPredictor {
    layers: Vec<(Tensor, Tensor)>,
}

impl AestheticPredictor {
    /// The layers of a state dict; any tensor other than `layers.N.weight|bias` is an error.
    pub fn from_params(params: &Params) -> Result<Self> {
        let mut indices = Vec::new();
        for name in params.keys() {
            let parsed = name
                .strip_prefix("layers.")
                .and_then(|rest| rest.split_once('.'))
                .filter(|(_, kind)| ["weight", "bias"].contains(kind))
                .and_then(|(n, _)| n.parse::<usize>().ok());
            let Some(n) = parsed else {
                bail!("tensor '{name}' is not a layer of the aesthetic predictor (layers.N.weight|bias)");
            };
            indices.push(n);
        }
        indices.sort_unstable();
        indices.dedup();
        ensure!(
            !indices.is_empty(),
            "no layers.N.weight tensors: not an aesthetic predictor"
        );
        let layers = indices.iter().map(|n| layer(params, *n)).collect::<Result<Vec<_>>>()?;
        check_chain(&layers)?;
        Ok(Self { layers })
    }

    /// The embedding width the first layer takes (768 for CLIP ViT-L/14).
    pub fn input_dim(&self) -> usize {
        self.layers[0].0.dims()[1]
    }

    /// One score per row of CLIP image embeddings `[B, input_dim]` (unnormalised; scaled to unit
    /// norm here).
    pub fn scores(&self, embeddings: &Tensor) -> Result<Vec<f64>> {
        let x = embeddings.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        ensure!(
            x.dims().len() == 2 && x.dims()[1] == self.input_dim(),
            "embeddings {:?}, the aesthetic predictor takes [B, {}]",
            x.dims(),
            self.input_dim()
        );
        let mut x = x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?;
        for (w, b) in &self.layers {
            x = x.matmul(&w.t()?)?.broadcast_add(b)?;
        }
        Ok(x.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
    }
}

fn layer(params: &Params, n: usize) -> Result<(Tensor, Tensor)> {
    let get = |kind: &str| {
        params
            .get(&format!("layers.{n}.{kind}"))
            .cloned()
            .ok_or_else(|| anyhow!("layers.{n}.{kind} is missing"))
    };
    let (w, b) = (get("weight")?, get("bias")?);
    ensure!(
        w.dims().len() == 2 && b.dims() == [w.dims()[0]],
        "layers.{n}: weight {:?} and bias {:?} are not one linear layer",
        w.dims(),
        b.dims()
    );
    Ok((w, b))
}

/// Each layer's input is the previous one's output; the last gives one number.
fn check_chain(layers: &[(Tensor, Tensor)]) -> Result<()> {
    for pair in layers.windows(2) {
        let (out, inp) = (pair[0].0.dims()[0], pair[1].0.dims()[1]);
        ensure!(out == inp, "a layer of {out} outputs feeds one of {inp} inputs");
    }
    let last = layers[layers.len() - 1].0.dims()[0];
    ensure!(last == 1, "the last layer has {last} outputs, not one score");
    Ok(())
}
