//! The JSON files of a diffusers folder read key by key, so an error names the file and the key.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// A JSON object read from a file; lookups name the file and the key in their errors.
pub struct JsonFile {
    pub path: PathBuf,
    map: Map<String, Value>,
}

impl JsonFile {
    pub fn read(path: &Path) -> Result<Self> {
        let text = crate::runtime::files::read_regular_text(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| anyhow!("{}: not valid JSON ({e})", path.display()))?;
        match value {
            Value::Object(map) => Ok(Self {
                path: path.to_path_buf(),
                map,
            }),
            _ => bail!("{}: expected a JSON object", path.display()),
        }
    }

    /// `key`'s value, absent when missing or null.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// An error naming this file and `key`.
    pub fn error(&self, key: &str, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: '{key}' {what}", self.path.display())
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.error(key, format!("is {v}, expected a number"))),
        }
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => (v.as_u64().map(|n| n as usize))
                .ok_or_else(|| self.error(key, format!("is {v}, expected a non-negative integer"))),
        }
    }

    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.error(key, format!("is {v}, expected a string"))),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(key, format!("is {v}, expected true or false"))),
        }
    }

    /// A list of numbers, if present.
    pub fn f64s(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let list = v
            .as_array()
            .ok_or_else(|| self.error(key, "is not a list of numbers"))?;
        let numbers = list.iter().map(Value::as_f64).collect::<Option<Vec<_>>>();
        numbers
            .map(Some)
            .ok_or_else(|| self.error(key, "is not a list of numbers"))
    }
}
