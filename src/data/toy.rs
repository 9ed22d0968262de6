//! 2-D toy distributions for tests, trajectory plots and analytic-teacher studies.
//! `ring` and `grid` are Gaussian mixtures, so an exact analytic teacher exists for them.

use super::dataset::Dataset;
use crate::runtime::noise::{seeded, Rng};
use anyhow::{bail, ensure, Result};
use candle_core::{Device, Tensor};
use rand::Rng as _;
use rand_distr::{Distribution, StandardNormal};
use std::f64::consts::PI;

/// Points drawn for a `toy:NAME` dataset.
pub const DEFAULT_SIZE: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toy {
    /// 8 Gaussians (std 0.1) on a circle of radius 1.5; class = component.
    Ring,
    /// 5×5 Gaussians (std 0.05) on a grid with spacing 0.6; class = component.
    Grid,
    /// Uniform on the dark squares of a 4×4 board over [−1.5, 1.5]²; unlabeled.
    Checkerboard,
    /// Two interleaved half circles with noise 0.05; class = moon.
    Moons,
    /// A two-turn spiral with noise 0.04; unlabeled.
    Spiral,
}

impl Toy {
    pub const NAMES: &'static str = "ring, grid, checkerboard, moons, spiral";

    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "ring" => Self::Ring,
            "grid" => Self::Grid,
            "checkerboard" => Self::Checkerboard,
            "moons" => Self::Moons,
            "spiral" => Self::Spiral,
            _ => bail!("unknown toy dataset '{name}' (expected one of {})", Self::NAMES),
        })
    }

    /// The exact mixture behind `ring` and `grid`; `None` for the others.
    pub fn components(self) -> Option<Components> {
        let (means, std): (Vec<Vec<f64>>, f64) = match self {
            Self::Ring => (
                (0..8)
                    .map(|k| {
                        let a = 2.0 * PI * k as f64 / 8.0;
                        vec![1.5 * a.cos(), 1.5 * a.sin()]
                    })
                    .collect(),
                0.1,
            ),
            Self::Grid => (
                (0..25)
                    .map(|k| vec![0.6 * (k % 5) as f64 - 1.2, 0.6 * (k / 5) as f64 - 1.2])
                    .collect(),
                0.05,
            ),
            _ => return None,
        };
        let n = means.len();
        Some(Components::new(means, vec![std; n], vec![1.0; n]).expect("valid built-in mixture"))
    }

    pub fn dataset(self, n: usize, seed: u64) -> Result<Dataset> {
        let mut rng = seeded(seed);
        let draw: fn(&mut Rng) -> ([f64; 2], Option<u32>) = match self {
            Self::Ring | Self::Grid => {
                return self
                    .components()
                    .expect("ring and grid are mixtures")
                    .sample(n, &mut rng)
            }
            Self::Checkerboard => checkerboard,
            Self::Moons => moons,
            Self::Spiral => spiral,
        };
        let mut xs = Vec::with_capacity(2 * n);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let (p, label) = draw(&mut rng);
            xs.extend(p.map(|v| v as f32));
            labels.push(label);
        }
        let classes = if self == Self::Moons { 2 } else { 0 };
        Dataset::new(Tensor::from_vec(xs, (n, 2), &Device::Cpu)?, labels, classes)
    }
}

/// Uniform on the dark squares of a 4×4 board over [−1.5, 1.5]² (rejection sampling).
fn checkerboard(rng: &mut Rng) -> ([f64; 2], Option<u32>) {
    loop {
        let (x, y) = (rng.random_range(-1.5..1.5f64), rng.random_range(-1.5..1.5f64));
        let (i, j) = (((x + 1.5) / 0.75) as i64, ((y + 1.5) / 0.75) as i64);
        if (i + j) % 2 == 0 {
            return ([x, y], None);
        }
    }
}

fn moons(rng: &mut Rng) -> ([f64; 2], Option<u32>) {
    let upper = rng.random_bool(0.5);
    let a = rng.random_range(0.0..PI);
    let (x, y) = if upper {
        (a.cos(), a.sin())
    } else {
        (1.0 - a.cos(), 0.5 - a.sin())
    };
    let mut z = || -> f64 { StandardNormal.sample(rng) };
    ([x - 0.5 + 0.05 * z(), y - 0.25 + 0.05 * z()], Some(upper as u32))
}

fn spiral(rng: &mut Rng) -> ([f64; 2], Option<u32>) {
    let s: f64 = rng.random_range(0.0..1.0f64).sqrt();
    let a = 4.0 * PI * s;
    let mut z = || -> f64 { StandardNormal.sample(rng) };
    ([1.5 * s * a.cos() + 0.04 * z(), 1.5 * s * a.sin() + 0.04 * z()], None)
}

/// A mixture of isotropic Gaussians `Σ_k w_k N(μ_k, s_k² I)` as data: component k is class k.
#[derive(Clone, Debug)]
pub struct Components {
    pub means: Vec<Vec<f64>>,
    pub stds: Vec<f64>,
    /// Normalised to sum to 1.
    pub weights: Vec<f64>,
}

impl Components {
    pub fn new(means: Vec<Vec<f64>>, stds: Vec<f64>, weights: Vec<f64>) -> Result<Self> {
        ensure!(!means.is_empty(), "a mixture needs at least one component");
        let d = means[0].len();
        ensure!(d > 0, "mixture means must have at least one coordinate");
        ensure!(
            means.iter().all(|m| m.len() == d),
            "all mixture means must have the same dimension ({d})"
        );
        ensure!(
            stds.len() == means.len() && weights.len() == means.len(),
            "mixture needs one std and one weight per component"
        );
        ensure!(
            stds.iter().all(|&s| s > 0.0 && s.is_finite()),
            "mixture stds must be positive"
        );
        ensure!(
            weights.iter().all(|&w| w > 0.0 && w.is_finite()),
            "mixture weights must be positive"
        );
        let total: f64 = weights.iter().sum();
        let weights = weights.iter().map(|w| w / total).collect();
        Ok(Self { means, stds, weights })
    }

    pub fn dim(&self) -> usize {
        self.means[0].len()
    }

    /// Draws `n` points with their component as class label.
    pub fn sample(&self, n: usize, rng: &mut Rng) -> Result<Dataset> {
        let d = self.dim();
        let mut xs = Vec::with_capacity(n * d);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let mut u: f64 = rng.random();
            let k = self
                .weights
                .iter()
                .position(|&w| {
                    u -= w;
                    u < 0.0
                })
                .unwrap_or(self.weights.len() - 1);
            for &m in &self.means[k] {
                let z: f64 = StandardNormal.sample(rng);
                xs.push((m + self.stds[k] * z) as f32);
            }
            labels.push(Some(k as u32));
        }
        Dataset::new(Tensor::from_vec(xs, (n, d), &Device::Cpu)?, labels, self.means.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toys_are_seeded_and_centred() {
        for name in ["ring", "grid", "checkerboard", "moons", "spiral"] {
            let toy = Toy::parse(name).unwrap();
            let a = toy.dataset(4000, 7).unwrap();
            let b = toy.dataset(4000, 7).unwrap();
            let (va, vb) = (
                a.x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(va, vb, "{name} must be reproducible from its seed");
            let mean: f32 = va.iter().sum::<f32>() / va.len() as f32;
            assert!(mean.abs() < 0.1, "{name} mean {mean}");
            assert!(va.iter().all(|v| v.abs() < 2.5), "{name} out of range");
        }
        assert!(Toy::parse("donut").is_err());
    }
}
