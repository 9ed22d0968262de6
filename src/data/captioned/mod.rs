//! A folder of images with captions, the data people have for text-to-image models, in the
//! layouts the common tools write:
//!
//! - Hugging Face imagefolder: a top-level `metadata.jsonl` or `metadata.csv` whose
//!   `file_name` column names each image (relative to the folder, sub-folders allowed) and
//!   whose caption column (`text` unless chosen) holds its caption;
//! - side files: `name.txt` or `name.caption` (kohya) beside `name.png`, in any sub-folder;
//!   a top-level sub-folder named `N_concept` (kohya) repeats its images N times in the draw
//!   (side-file layouts only: in a metadata layout, folder names are only paths).
//!
//! Images are PNG, JPEG or WebP. Nothing is skipped without a word: an image without a caption,
//! a caption without an image, an image the metadata does not list, and any other file are
//! errors naming the file (other files may be skipped with a count printed). Hidden entries
//! (`.DS_Store`, `.git/`) are not data and are passed over. Entries come in sorted path order.

mod entry;
mod listing;
mod metadata;
mod pixels;
mod sidecar;

pub use entry::{Entry, FolderOptions};
pub use pixels::{load_chunk, load_image};

use anyhow::{ensure, Result};
use std::path::{Path, PathBuf};

/// A data folder's entries and what the user should be told about how it was read.
#[derive(Debug)]
pub struct Folder {
    pub dir: PathBuf,
    pub entries: Vec<Entry>,
    /// One line each: files skipped, repeat counts honoured.
    pub notes: Vec<String>,
    /// Every file the entries were read from: the images and the caption side files or the
    /// metadata file (what a run's fingerprint of its data covers).
    pub files: Vec<PathBuf>,
}

impl Folder {
    /// Lists `dir` and pairs every image with its caption.
    pub fn read(dir: &Path, opts: &FolderOptions) -> Result<Self> {
        ensure!(dir.is_dir(), "--data {}: not a folder", dir.display());
        let files = listing::Listing::scan(dir)?;
        let mut notes = Vec::new();
        files.check_unknown(opts.skip_unknown, &mut notes)?;
        let (mut entries, mut read) = match files.metadata()? {
            Some(meta) => (
                metadata::entries(&files, meta, &opts.caption_column)?,
                vec![meta.to_path_buf()],
            ),
            None => {
                // A column other than the default names nothing in side-file captions.
                ensure!(
                    opts.caption_column == FolderOptions::default().caption_column,
                    "--caption-column {}: {} has no metadata.jsonl or metadata.csv to take a column from \
                     (its captions are side files)",
                    opts.caption_column,
                    dir.display()
                );
                (sidecar::entries(&files, &mut notes)?, files.captions.clone())
            }
        };
        ensure!(
            !entries.is_empty(),
            "--data {}: no images (expected name.png beside name.txt or name.caption, or a \
             metadata.jsonl / metadata.csv)",
            dir.display()
        );
        entries.sort_by(|a, b| a.image.cmp(&b.image));
        read.extend(entries.iter().map(|e| e.image.clone()));
        read.sort();
        Ok(Self {
            dir: dir.to_path_buf(),
            entries,
            notes,
            files: read,
        })
    }

    pub fn captions(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.caption.clone()).collect()
    }

    pub fn repeats(&self) -> Vec<u32> {
        self.entries.iter().map(|e| e.repeats).collect()
    }
}

#[cfg(test)]
mod tests;
