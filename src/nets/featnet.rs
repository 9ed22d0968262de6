//! The feature network of the image metrics: a small CNN digit classifier whose
//! penultimate layer gives the features for FD, KD and precision/recall, and whose
//! logits give class accuracy (the analogue of the paper's CLIP score).

use crate::nets::layers::{as_input, as_weights, conv, conv_act, linear, map_chunks, Init, Params};
use crate::runtime::noise::Rng;
use anyhow::{ensure, Result};
use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Linear};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatnetConfig {
    pub width: usize,
    pub features: usize,
    pub classes: usize,
}

impl FeatnetConfig {
    pub fn init(&self, rng: &mut Rng) -> Result<Params> {
        let w = self.width;
        let mut init = Init::new(rng);
        init.conv("conv.0", w, 1, 3)?;
        init.conv("conv.1", 2 * w, w, 3)?;
        init.conv("conv.2", 2 * w, 2 * w, 3)?;
        init.linear("fc", self.features, 2 * w * 49, 1.0)?;
        init.linear("head", self.classes, self.features, 1.0)?;
        Ok(init.params)
    }
}

pub struct Featnet {
    pub cfg: FeatnetConfig,
    convs: [Conv2d; 3],
    fc: Linear,
    head: Linear,
}

impl Featnet {
    pub fn new(cfg: FeatnetConfig, params: &Params) -> Result<Self> {
        let w = cfg.width;
        ensure!(
            w > 0 && cfg.features > 0 && cfg.classes > 1,
            "feature network sizes must be positive"
        );
        Ok(Self {
            convs: [
                conv(params, "conv.0", w, 1, 3, 2)?,
                conv(params, "conv.1", 2 * w, w, 3, 2)?,
                conv(params, "conv.2", 2 * w, 2 * w, 3, 1)?,
            ],
            fc: linear(params, "fc", cfg.features, 2 * w * 49)?,
            head: linear(params, "head", cfg.classes, cfg.features)?,
            cfg,
        })
    }

    /// Penultimate-layer features of images `[B, 1, 28, 28]` in [0, 1].
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        ensure!(
            x.dims()[1..] == [1, 28, 28],
            "the feature network takes 1×28×28 images, got {:?}",
            &x.dims()[1..]
        );
        let mut h = as_weights(x, self.fc.weight())?.affine(2.0, -1.0)?;
        for c in &self.convs {
            h = conv_act(c, &h, true)?;
        }
        as_input(self.fc.forward(&h.flatten_from(1)?)?.silu()?, x)
    }

    /// Class logits from features.
    pub fn logits(&self, features: &Tensor) -> Result<Tensor> {
        let f = as_weights(features, self.head.weight())?;
        as_input(self.head.forward(&f)?, features)
    }

    /// Predicted class of each image, evaluated in chunks to bound memory.
    pub fn classify(&self, x: &Tensor) -> Result<Vec<u32>> {
        let logits = map_chunks(x, 500, |c| self.logits(&self.features(c)?))?;
        Ok(logits.argmax(1)?.to_vec1::<u32>()?)
    }
}
