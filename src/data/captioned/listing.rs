//! Every file of a data folder, recursively and in sorted order, sorted into images,
//! caption side files, metadata files and the rest. Hidden entries (a name starting with a
//! dot: `.DS_Store`, `.git/`) are not data and are passed over.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];
pub const CAPTION_EXTENSIONS: [&str; 2] = ["txt", "caption"];
const METADATA_NAMES: [&str; 2] = ["metadata.jsonl", "metadata.csv"];

/// Deeper than this is a symbolic-link loop, not a dataset.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Default)]
pub struct Listing {
    pub root: PathBuf,
    pub images: Vec<PathBuf>,
    pub captions: Vec<PathBuf>,
    /// Files named metadata.jsonl or metadata.csv, at any depth.
    metadata: Vec<PathBuf>,
    unknown: Vec<PathBuf>,
}

fn extension(p: &Path) -> Option<String> {
    p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase)
}

pub fn is_image(p: &Path) -> bool {
    extension(p).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

fn is_caption(p: &Path) -> bool {
    extension(p).is_some_and(|e| CAPTION_EXTENSIONS.contains(&e.as_str()))
}

impl Listing {
    pub fn scan(root: &Path) -> Result<Self> {
        let mut listing = Self {
            root: root.to_path_buf(),
            ..Self::default()
        };
        listing.walk(root, 0)?;
        Ok(listing)
    }

    fn walk(&mut self, dir: &Path, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            bail!(
                "{}: folders nested deeper than {MAX_DEPTH} (a symbolic-link loop?)",
                dir.display()
            );
        }
        let mut children = std::fs::read_dir(dir)
            .and_then(|d| d.map(|e| e.map(|e| e.path())).collect::<std::io::Result<Vec<_>>>())
            .with_context(|| format!("{}: cannot list", dir.display()))?;
        children.sort();
        for path in children {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            // Follows symbolic links: a broken one is an error naming it.
            let meta = std::fs::metadata(&path).with_context(|| format!("{}: cannot read", path.display()))?;
            if meta.is_dir() {
                self.walk(&path, depth + 1)?;
            } else if METADATA_NAMES.contains(&name.as_str()) {
                self.metadata.push(path);
            } else if is_image(&path) {
                self.images.push(path);
            } else if is_caption(&path) {
                self.captions.push(path);
            } else {
                self.unknown.push(path);
            }
        }
        Ok(())
    }

    /// Refuses files that are neither images, captions nor metadata, naming the first, or with
    /// `skip` passes over them and says how many.
    pub fn check_unknown(&self, skip: bool, notes: &mut Vec<String>) -> Result<()> {
        let Some(first) = self.unknown.first() else {
            return Ok(());
        };
        let n = self.unknown.len();
        if !skip {
            bail!(
                "{}: neither an image (.png .jpg .jpeg .webp), a caption (.txt .caption) nor \
                 metadata.jsonl/csv ({n} such file{} in {}; remove them or pass --skip-unknown-files)",
                first.display(),
                if n == 1 { "" } else { "s" },
                self.root.display()
            );
        }
        notes.push(format!(
            "--skip-unknown-files: passed over {n} file{} that are neither images nor captions, e.g. {}",
            if n == 1 { "" } else { "s" },
            first.display()
        ));
        Ok(())
    }

    /// The top-level metadata file, if any; two of them, or one in a sub-folder, are refused.
    pub fn metadata(&self) -> Result<Option<&Path>> {
        if let Some(nested) = self.metadata.iter().find(|p| p.parent() != Some(self.root.as_path())) {
            bail!(
                "{}: only a metadata file at the top of {} is read (its file_name paths may \
                 name sub-folders); move or merge it there",
                nested.display(),
                self.root.display()
            );
        }
        match self.metadata.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            [a, b, ..] => bail!("{} and {}: two metadata files; keep one", a.display(), b.display()),
        }
    }
}
