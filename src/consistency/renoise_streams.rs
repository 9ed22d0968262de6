//! The multistep sampler's fresh noise over many rows, a block of rows at a time. One sampler
//! run over all B rows draws one `[B, …]` tensor per step but the last from `renoise_rng(seed)`;
//! here each step has its own generator, started where the draws before it end, so blocks taken
//! in row order receive exactly the rows of those whole draws — whatever the block size, and
//! without ever holding a `[B, …]` draw (10,000 latents of SDXL are 2.6 GB per step).

use crate::runtime::noise::{renoise_rng, standard_normal, Rng};
use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use rand_distr::{Distribution, StandardNormal};

pub struct RenoiseStreams {
    /// The generator of each step's draw, positioned at the next block's first value.
    steps: Vec<Rng>,
    /// The shape of one row of the draws.
    row: Vec<usize>,
    rows_left: usize,
}

impl RenoiseStreams {
    /// The draws of a `steps`-step sampler over noise of `shape` `[B, …]`.
    pub fn new(seed: u64, steps: usize, shape: &[usize]) -> Self {
        let per_draw: usize = shape.iter().product();
        let mut rng = renoise_rng(seed);
        let mut starts = Vec::new();
        for step in 1..steps {
            starts.push(rng.clone());
            if step + 1 < steps {
                // Skipped by drawing: the normal sampler takes a variable number of words per value.
                (0..per_draw).for_each(|_| {
                    let _: f32 = StandardNormal.sample(&mut rng);
                });
            }
        }
        Self {
            steps: starts,
            row: shape.get(1..).unwrap_or_default().to_vec(),
            rows_left: shape.first().copied().unwrap_or(0),
        }
    }

    /// The next `len` rows of every step's draw, `[len, …]` each.
    pub fn block(&mut self, len: usize, device: &Device) -> Result<Vec<Tensor>> {
        ensure!(
            len <= self.rows_left,
            "re-noise asked for {len} rows, {} left",
            self.rows_left
        );
        self.rows_left -= len;
        let shape: Vec<usize> = std::iter::once(len).chain(self.row.iter().copied()).collect();
        self.steps
            .iter_mut()
            .map(|rng| standard_normal(rng, shape.clone(), device))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of any size, in order, are the rows of one whole draw per step from
    /// `renoise_rng(seed)`, bit for bit.
    #[test]
    fn blocks_are_rows_of_the_whole_draws() {
        let shape = [7usize, 2, 3];
        let mut rng = renoise_rng(5);
        let whole: Vec<Vec<f32>> = (0..3)
            .map(|_| {
                let t = standard_normal(&mut rng, &shape[..], &Device::Cpu).unwrap();
                t.flatten_all().unwrap().to_vec1().unwrap()
            })
            .collect();
        for block in [1, 3, 7] {
            let mut streams = RenoiseStreams::new(5, 4, &shape);
            let mut got = vec![Vec::new(); 3];
            for start in (0..7).step_by(block) {
                for (step, t) in streams
                    .block(block.min(7 - start), &Device::Cpu)
                    .unwrap()
                    .iter()
                    .enumerate()
                {
                    got[step].extend(t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                }
            }
            assert_eq!(got, whole, "block {block}");
            assert!(streams.block(1, &Device::Cpu).is_err(), "past the last row");
        }
        assert!(RenoiseStreams::new(5, 1, &shape)
            .block(7, &Device::Cpu)
            .unwrap()
            .is_empty());
    }
}
