//! The study's units of work — one student trained and judged — each in its own folder under
//! `OUT/checkpoints`: its training saves its full state there every `EVERY` steps and on
//! SIGINT/SIGTERM and continues from it, and its result is kept there as `result.json`, so
//! that a resumed study (`--resume OUT`) takes a finished unit's result instead of training
//! and judging it again.

use crate::runtime::files::{read_regular_text, write_atomic};
use crate::train::checkpoint::{read_state, CHECKPOINT};
use crate::train::trainer::Checkpointing;
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A unit's result file.
pub const RESULT: &str = "result.json";

/// Steps between a unit's saves: a process killed outright (SIGKILL, a lost session) loses
/// at most this many steps; a save costs a fraction of one step's time.
pub const EVERY: usize = 100;

/// What `result.json` holds: the unit's result and the seconds it took.
#[derive(Serialize, Deserialize)]
struct Kept<T> {
    seconds: f64,
    result: T,
}

/// The units' folders, and the seconds earlier processes spent on the units this one took
/// or continued.
pub struct Units {
    root: PathBuf,
    carried: Cell<f64>,
}

impl Units {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            carried: Cell::new(0.0),
        }
    }

    /// The folder of unit `name` (a relative path such as `seed0/cm`).
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Unit `name`'s result: the one kept in its folder, or `work`'s, run with that folder's
    /// checkpointing (continuing its checkpoint when there is one, and keeping its state at
    /// the steps `keep` as well), then kept. The running checkpoint goes once the result is
    /// kept: the result and the kept states are all later stages read.
    pub fn run<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        keep: &[usize],
        work: impl FnOnce(Checkpointing) -> Result<T>,
    ) -> Result<T> {
        let dir = self.dir(name);
        let path = dir.join(RESULT);
        if path.is_file() {
            let kept = load::<T>(&path)?;
            self.carried.set(self.carried.get() + kept.seconds);
            eprintln!("  {name}: done before, result taken from {}", path.display());
            return Ok(kept.result);
        }
        let start = Instant::now();
        let resume = dir.join(CHECKPOINT).is_file();
        // The time an earlier process spent on this unit, up to its last save: the unit's
        // and its stage's time include it.
        let earlier = match resume {
            true => read_state(&dir.join(CHECKPOINT))?["seconds"].as_f64().unwrap_or(0.0),
            false => 0.0,
        };
        self.carried.set(self.carried.get() + earlier);
        let checkpointing = Checkpointing {
            dir: Some(dir.clone()),
            every: EVERY,
            resume,
            keep: keep.to_vec(),
            ..Default::default()
        };
        let result = work(checkpointing)?;
        let kept = Kept {
            seconds: earlier + start.elapsed().as_secs_f64(),
            result: &result,
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        write_atomic(&path, &serde_json::to_vec(&kept)?)?;
        match std::fs::remove_file(dir.join(CHECKPOINT)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("{}: cannot remove", dir.join(CHECKPOINT).display()))
            }
            _ => Ok(result),
        }
    }

    /// The seconds that units taken from earlier processes took since the last call: what
    /// a resumed stage adds to its own time.
    pub fn take_carried(&self) -> f64 {
        self.carried.replace(0.0)
    }
}

fn load<T: DeserializeOwned>(path: &Path) -> Result<Kept<T>> {
    let text = read_regular_text(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a study unit's result", path.display()))
}

/// `slot`'s value, made by `make` the first time it is asked for: work a resumed
/// study needs only when a unit is unfinished.
pub fn built<T>(slot: &mut Option<T>, make: impl FnOnce() -> Result<T>) -> Result<&T> {
    if slot.is_none() {
        *slot = Some(make()?);
    }
    Ok(slot.as_ref().expect("filled above"))
}
