//! Where the shipped data and models live: the repository's `data/` and `models/`
//! folders (found from the build's manifest directory), overridable with `DCM_HOME`.

use std::path::PathBuf;

pub fn home() -> PathBuf {
    std::env::var_os("DCM_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The 10,000 shipped MNIST digits (gzip IDX).
pub fn mnist_dir() -> PathBuf {
    home().join("data").join("mnist")
}
