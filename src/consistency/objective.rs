//! The objectives `dcm` knows, by name: `REGISTRY` lists them, so a new objective is
//! one file implementing `Objective` (see `batch.rs`) and one line here.

use super::batch::Objective;
use super::cm::Cm;
use super::direct::Direct;
use super::horizon::{HORIZON_10, HORIZON_2, HORIZON_25, HORIZON_5};
use anyhow::{Context, Result};

/// Every objective `dcm` knows, by name.
static REGISTRY: &[&dyn Objective] = &[&Cm, &Direct, &HORIZON_2, &HORIZON_5, &HORIZON_10, &HORIZON_25];

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
