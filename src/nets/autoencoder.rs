//! The convolutional autoencoder whose latent space hosts the experiment, as
//! SDXL's VAE hosts the paper's: 1×28×28 images ↔ C×7×7 latents. Latents are
//! multiplied by `scale` (fitted to unit variance, SD's 0.18215 in spirit).

use crate::nets::layers::{as_input, as_weights, conv, conv_act, map_chunks, upsample2x, Init, Params};
use crate::runtime::noise::Rng;
use anyhow::{ensure, Result};
use candle_core::Tensor;
use candle_nn::Conv2d;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderConfig {
    pub latent_channels: usize,
    /// Channels of the first stage (the second has twice as many).
    pub width: usize,
    /// Multiplier that gives the encoded latents unit variance.
    pub scale: f64,
}

impl AutoencoderConfig {
    /// (name, out, in, kernel, stride) of every convolution.
    fn convs(&self) -> Vec<(&'static str, usize, usize, usize, usize)> {
        let (w, c) = (self.width, self.latent_channels);
        vec![
            ("enc.0", w, 1, 3, 2),
            ("enc.1", 2 * w, w, 3, 2),
            ("enc.2", 2 * w, 2 * w, 3, 1),
            ("enc.3", c, 2 * w, 1, 1),
            ("dec.0", 2 * w, c, 3, 1),
            ("dec.1", 2 * w, 2 * w, 3, 1),
            ("dec.2", w, 2 * w, 3, 1),
            ("dec.3", 1, w, 3, 1),
        ]
    }

    pub fn init(&self, rng: &mut Rng) -> Result<Params> {
        let mut init = Init::new(rng);
        for (name, cout, cin, k, _) in self.convs() {
            init.conv(name, cout, cin, k)?;
        }
        Ok(init.params)
    }
}

pub struct Autoencoder {
    pub cfg: AutoencoderConfig,
    enc: Vec<Conv2d>,
    dec: Vec<Conv2d>,
}

impl Autoencoder {
    pub fn new(cfg: AutoencoderConfig, params: &Params) -> Result<Self> {
        ensure!(
            cfg.latent_channels > 0 && cfg.width > 0,
            "autoencoder sizes must be positive"
        );
        ensure!(
            cfg.scale > 0.0 && cfg.scale.is_finite(),
            "autoencoder scale must be positive"
        );
        let mut layers = cfg
            .convs()
            .into_iter()
            .map(|(name, cout, cin, k, s)| conv(params, name, cout, cin, k, s))
            .collect::<Result<Vec<_>>>()?;
        let dec = layers.split_off(4);
        Ok(Self { cfg, enc: layers, dec })
    }

    /// The per-image shape it encodes.
    pub fn image_shape(&self) -> Vec<usize> {
        vec![1, 28, 28]
    }

    /// Images `[B, 1, 28, 28]` in [0, 1] → scaled latents `[B, C, 7, 7]`.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        ensure!(
            x.dims()[1..] == [1, 28, 28],
            "the autoencoder takes 1×28×28 images, got {:?}",
            &x.dims()[1..]
        );
        let mut h = as_weights(x, self.enc[0].weight())?.affine(2.0, -1.0)?;
        for (i, layer) in self.enc.iter().enumerate() {
            h = conv_act(layer, &h, i + 1 < self.enc.len())?;
        }
        as_input((h * self.cfg.scale)?, x)
    }

    /// Scaled latents → images in [0, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let h = (as_weights(z, self.dec[0].weight())? / self.cfg.scale)?;
        let h = conv_act(&self.dec[0], &h, true)?;
        let h = conv_act(&self.dec[1], &h, true)?;
        let h = conv_act(&self.dec[2], &upsample2x(&h)?, true)?;
        let out = conv_act(&self.dec[3], &upsample2x(&h)?, false)?;
        as_input(candle_nn::ops::sigmoid(&out)?, z)
    }
}

/// `ae.encode` over a large set, 500 rows at a time (bounds memory).
pub fn encode_all(ae: &Autoencoder, x: &Tensor) -> Result<Tensor> {
    map_chunks(x, 500, |c| ae.encode(c))
}

/// `ae.decode` over a large set, 500 rows at a time.
pub fn decode_all(ae: &Autoencoder, z: &Tensor) -> Result<Tensor> {
    map_chunks(z, 500, |c| ae.decode(c))
}
