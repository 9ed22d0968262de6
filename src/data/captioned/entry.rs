//! What a data folder is read into (one image and its caption) and how it is read.

use std::path::PathBuf;

/// How to read a folder: `--caption-column` and `--skip-unknown-files`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderOptions {
    /// The metadata column holding captions.
    pub caption_column: String,
    /// Pass over files that are neither images, captions nor metadata (with a count).
    pub skip_unknown: bool,
}

impl Default for FolderOptions {
    fn default() -> Self {
        Self {
            caption_column: "text".into(),
            skip_unknown: false,
        }
    }
}

/// One training image and its caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub image: PathBuf,
    pub caption: String,
    /// How many times the image counts in the draw (a kohya `N_concept` folder's N, else 1).
    pub repeats: u32,
}
