//! A dataset: samples (points, images or latents) with optional class labels, and the
//! project's seeded splits. Reading one from files is `load.rs`, so the type does not
//! depend on the file formats.

use crate::runtime::noise::Rng;
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use rand::Rng as _;

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

    /// The same samples with every label replaced by the null label.
    pub fn without_labels(mut self) -> Self {
        self.labels.iter_mut().for_each(|l| *l = None);
        self
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

    /// A batch of `size` rows drawn uniformly with replacement, moved to `device`.
    pub fn batch(&self, rng: &mut Rng, size: usize, device: &Device) -> Result<(Tensor, Vec<Option<u32>>)> {
        let idx: Vec<u32> = (0..size).map(|_| rng.random_range(0..self.len() as u32)).collect();
        let labels = idx.iter().map(|&i| self.labels[i as usize]).collect();
        let ids = Tensor::from_vec(idx, size, self.x.device())?;
        Ok((self.x.index_select(&ids, 0)?.to_device(device)?, labels))
    }

    fn subset(&self, idx: &[usize]) -> Result<Self> {
        let ids = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            idx.len(),
            self.x.device(),
        )?;
        Self::new(
            self.x.index_select(&ids, 0)?,
            idx.iter().map(|&i| self.labels[i]).collect(),
            self.num_classes,
        )
    }

    /// The project's fixed split: 10% of each class held out, seed 0 (9,001 / 999 for the shipped digits).
    pub fn standard_split(&self) -> Result<(Self, Self)> {
        self.split(0.1, 0)
    }

    /// Seeded stratified split: `held_out` of each class (rounded) goes to the second set.
    pub fn split(&self, held_out: f64, seed: u64) -> Result<(Self, Self)> {
        let mut rng = crate::runtime::noise::seeded(seed);
        let mut by_class: std::collections::BTreeMap<Option<u32>, Vec<usize>> = Default::default();
        for (i, l) in self.labels.iter().enumerate() {
            by_class.entry(*l).or_default().push(i);
        }
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for idx in by_class.values_mut() {
            rand::seq::SliceRandom::shuffle(idx.as_mut_slice(), &mut rng);
            let k = (idx.len() as f64 * held_out).round() as usize;
            test.extend_from_slice(&idx[..k]);
            train.extend_from_slice(&idx[k..]);
        }
        train.sort_unstable();
        test.sort_unstable();
        ensure!(
            !test.is_empty() && !train.is_empty(),
            "{} samples: holding out {:.0}% of each class (rounded) leaves {} for training and {} for testing; give at least {} per class",
            self.labels.len(),
            held_out * 100.0,
            train.len(),
            test.len(),
            (0.5 / held_out).ceil().max(2.0)
        );
        Ok((self.subset(&train)?, self.subset(&test)?))
    }
}
