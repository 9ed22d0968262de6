//! A distillation objective: the whole loss of one training batch — the target the
//! teacher provides and the distance the student's prediction is judged by. Each
//! objective lives in its own file; `REGISTRY` lists them, so a new one is one file
//! and one line there.

use super::cm::Cm;
use super::direct::Direct;
use super::distance::Distance;
use super::horizon::{HORIZON_10, HORIZON_2, HORIZON_25, HORIZON_5};
use super::parameterization::consistency;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::solver::Solver;
use anyhow::{Context, Result};
use candle_core::Tensor;

/// Every objective `dcm` knows, by name.
static REGISTRY: &[&dyn Objective] = &[&Cm, &Direct, &HORIZON_2, &HORIZON_5, &HORIZON_10, &HORIZON_25];

/// What an objective sees of one training batch.
pub struct Batch<'a> {
    /// The guided teacher ε̂ (counted).
    pub teacher: &'a dyn Denoiser,
    /// The network being trained, θ.
    pub student: &'a dyn Denoiser,
    /// The target network θ⁻: θ under stop-gradient, or its EMA.
    pub target_net: &'a dyn Denoiser,
    pub solver: Solver,
    pub grid: Discretization,
    pub distance: Distance,
    /// `x_{t_n}`, each row noised to its own start timestep.
    pub x: &'a Tensor,
    pub t: &'a [usize],
    pub cond: &'a Condition,
}

impl Batch<'_> {
    /// The student's consistency prediction `f_θ(x_{t_n}, t_n)` (carries the gradient).
    pub fn prediction(&self) -> Result<Tensor> {
        consistency(self.student, self.x, self.t, self.cond)
    }
}

pub trait Objective: Sync {
    /// The name `--method` takes and configs store.
    fn name(&self) -> &'static str;
    /// The name in reports and tables.
    fn title(&self) -> &'static str;
    /// The batch's loss, differentiable with respect to the student only.
    fn loss(&self, batch: &Batch) -> Result<Tensor>;
}

/// A registered objective, stored by name in configs.
#[derive(Clone, Copy)]
pub struct Method(&'static dyn Objective);

impl Method {
    pub fn all() -> impl Iterator<Item = Method> {
        REGISTRY.iter().map(|&o| Method(o))
    }

    /// CM and Direct CM: the pair the paper compares.
    pub fn compared() -> [Method; 2] {
        [Method(&Cm), Method(&Direct)]
    }

    pub fn objective(self) -> &'static dyn Objective {
        self.0
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    pub fn title(self) -> &'static str {
        self.0.title()
    }
}

impl PartialEq for Method {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.title())
    }
}

impl std::str::FromStr for Method {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::all().find(|m| m.name() == s).with_context(|| {
            let names: Vec<&str> = Self::all().map(Method::name).collect();
            format!("unknown method '{s}' (expected {})", names.join(", "))
        })
    }
}

impl serde::Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}
