//! The image networks at the shipped sizes (fresh weights): decoding a batch of latents to
//! images (what evaluation does per sample) and the feature network's forward (the metrics).

use super::timing::{time, Workload};
use crate::nets::autoencoder::{Autoencoder, AutoencoderConfig};
use crate::nets::featnet::{Featnet, FeatnetConfig};
use crate::nets::layers::Params;
use crate::runtime::device::Runtime;
use crate::runtime::noise::{seeded, standard_normal};
use anyhow::Result;
use candle_core::{Device, Tensor};

/// The size of the shipped `models/autoencoder`.
const AUTOENCODER: AutoencoderConfig = AutoencoderConfig {
    latent_channels: 4,
    width: 16,
    scale: 1.0,
};

/// The size of the shipped `models/featnet`.
const FEATNET: FeatnetConfig = FeatnetConfig {
    width: 32,
    features: 128,
    classes: 10,
};

/// The decode and feature workloads over `batch` samples, each timed over `repeats` after
/// warm-up, with the parameters each runs: the decoder's and the feature network's.
pub fn conv_workloads(runtime: &Runtime, batch: usize, repeats: usize) -> Result<(Vec<Workload>, [usize; 2])> {
    let dev = &runtime.device;
    let mut rng = seeded(1);
    let ae_params = AUTOENCODER.init(&mut rng)?;
    let ae = Autoencoder::new(AUTOENCODER, &runtime.frozen(&ae_params)?)?;
    let fn_params = FEATNET.init(&mut rng)?;
    let featnet = Featnet::new(FEATNET, &runtime.frozen(&fn_params)?)?;
    let z = standard_normal(&mut rng, (batch, 4, 7, 7), &Device::Cpu)?.to_device(dev)?;
    let images = Tensor::rand(0f32, 1.0, (batch, 1, 28, 28), dev)?;
    let decode = time(dev, 3, repeats, || ae.decode(&z).map(|_| ()))?;
    let features = time(dev, 3, repeats, || featnet.features(&images).map(|_| ()))?;
    Ok((
        vec![
            Workload::timed("autoencoder decode", decode, batch),
            Workload::timed("feature network forward", features, batch),
        ],
        [decoder_parameters(&ae_params), count(&fn_params)],
    ))
}

fn count(params: &Params) -> usize {
    params.values().map(|p| p.elem_count()).sum()
}

/// Only the decoder's weights take part in decoding.
fn decoder_parameters(ae_params: &Params) -> usize {
    ae_params
        .iter()
        .filter(|(k, _)| k.starts_with("dec."))
        .map(|(_, p)| p.elem_count())
        .sum()
}
