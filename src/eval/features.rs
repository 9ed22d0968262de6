//! The feature network's features of images, which FD, KD, PRDC and the class accuracy
//! compare (in chunks, to bound memory).

use crate::nets::featnet::Featnet;
use crate::nets::layers::map_chunks;
use anyhow::Result;
use candle_core::Tensor;

pub fn features(net: &Featnet, images: &Tensor) -> Result<Tensor> {
    map_chunks(images, 500, |c| net.features(c))
}
