//! Datasets: points (or images, or latents) with optional class labels.

pub mod npy;
pub mod toy;

use crate::noise::Rng;
use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use rand::Rng as _;
use std::path::Path;

/// Samples `x` (shape `[n, …]`, f32, CPU) with a label per row (`None`: unlabeled).
#[derive(Clone, Debug)]
pub struct Dataset {
    pub x: Tensor,
    pub labels: Vec<Option<u32>>,
    pub num_classes: usize,
}

impl Dataset {
    pub fn new(x: Tensor, labels: Vec<Option<u32>>, num_classes: usize) -> Result<Self> {
        ensure!(
            x.rank() >= 2,
            "data must have shape [n, …] with at least one value per sample"
        );
        ensure!(
            x.dim(0)? == labels.len(),
            "{} samples but {} labels",
            x.dim(0)?,
            labels.len()
        );
        ensure!(x.dim(0)? > 0, "the dataset is empty");
        Ok(Self { x, labels, num_classes })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Per-sample shape (without the batch dimension).
    pub fn sample_shape(&self) -> Vec<usize> {
        self.x.dims()[1..].to_vec()
    }

    /// A batch of `size` rows drawn uniformly with replacement.
    pub fn batch(&self, rng: &mut Rng, size: usize) -> Result<(Tensor, Vec<Option<u32>>)> {
        let idx: Vec<u32> = (0..size).map(|_| rng.random_range(0..self.len() as u32)).collect();
        let labels = idx.iter().map(|&i| self.labels[i as usize]).collect();
        let ids = Tensor::from_vec(idx, size, self.x.device())?;
        Ok((self.x.index_select(&ids, 0)?, labels))
    }

    /// Loads `toy:NAME` (seeded) or an unlabeled `.npy` file of shape `[n, …]`.
    pub fn load(spec: &str, seed: u64) -> Result<Self> {
        if let Some(name) = spec.strip_prefix("toy:") {
            return toy::Toy::parse(name)?.dataset(toy::DEFAULT_SIZE, seed);
        }
        let path = Path::new(spec);
        let x = npy::read(path)?;
        ensure!(
            x.rank() >= 2,
            "{}: expected shape [n, …], got {:?}",
            path.display(),
            x.dims()
        );
        let n = x.dim(0)?;
        Self::new(x, vec![None; n], 0).with_context(|| format!("{}", path.display()))
    }
}
