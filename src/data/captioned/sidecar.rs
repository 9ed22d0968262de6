//! Captions in side files: `name.txt` or `name.caption` (kohya's extension) beside
//! `name.png|jpg|jpeg|webp`, in the folder or any sub-folder. Exactly one caption per image and
//! one image per caption: anything else is an error naming the files.
//!
//! kohya's DreamBooth layout names each top-level sub-folder `N_concept`, meaning "repeat
//! these images N times per epoch". dcm honours it: such an image counts N times when training
//! draws its rows (the same share of the batches as kohya's epochs give it), and a note says so.

use super::entry::Entry;
use super::listing::Listing;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn entries(files: &Listing, notes: &mut Vec<String>) -> Result<Vec<Entry>> {
    let mut images: BTreeMap<PathBuf, &PathBuf> = BTreeMap::new();
    for image in &files.images {
        if let Some(other) = images.insert(image.with_extension(""), image) {
            bail!(
                "{} and {}: two images share one caption name; rename one",
                other.display(),
                image.display()
            );
        }
    }
    let mut captions: BTreeMap<PathBuf, Vec<&PathBuf>> = BTreeMap::new();
    for caption in &files.captions {
        let stem = caption.with_extension("");
        if !images.contains_key(&stem) {
            bail!(
                "{}: a caption without an image (no {}.png, .jpg, .jpeg or .webp)",
                caption.display(),
                stem.display()
            );
        }
        captions.entry(stem).or_default().push(caption);
    }
    let mut entries = Vec::with_capacity(images.len());
    for (stem, image) in images {
        let caption = match captions.get(&stem).map(Vec::as_slice) {
            Some([one]) => read_caption(one)?,
            Some([a, b, ..]) => bail!(
                "{} and {}: two captions for {}; keep one",
                a.display(),
                b.display(),
                image.display()
            ),
            _ => bail!(
                "{}: no caption ({}.txt or {}.caption is missing)",
                image.display(),
                stem.display(),
                stem.display()
            ),
        };
        entries.push(Entry {
            repeats: repeats(&files.root, image)?,
            image: image.clone(),
            caption,
        });
    }
    if let Some(note) = repeats_note(&files.root, &entries) {
        notes.push(note);
    }
    Ok(entries)
}

fn read_caption(path: &Path) -> Result<String> {
    let text = crate::runtime::files::read_regular_text(path)
        .with_context(|| format!("{}: cannot read (captions are UTF-8 text)", path.display()))?;
    Ok(text.trim().to_string())
}

/// The N of a kohya `N_concept` folder at the top of `root` holding `image`, else 1.
fn repeats(root: &Path, image: &Path) -> Result<u32> {
    let Some(folder) = concept_folder(root, image) else {
        return Ok(1);
    };
    let Some((n, _)) = kohya_name(&folder) else {
        return Ok(1);
    };
    match n.parse::<u32>() {
        Ok(0) => bail!(
            "{}: a kohya repeat folder with 0 repeats would never be drawn; use 1 or more",
            root.join(&folder).display()
        ),
        Ok(n) => Ok(n),
        Err(_) => bail!("{}: repeat count {n} is too large", root.join(&folder).display()),
    }
}

/// The top-level sub-folder of `root` that holds `image`, if it is not directly in `root`.
fn concept_folder(root: &Path, image: &Path) -> Option<String> {
    let rel = image.strip_prefix(root).ok()?;
    let mut parts = rel.components();
    let first = parts.next()?;
    parts.next()?;
    Some(first.as_os_str().to_string_lossy().into_owned())
}

/// `N_concept` split into its digits and the rest, when the name has that form.
fn kohya_name(folder: &str) -> Option<(&str, &str)> {
    let (n, rest) = folder.split_once('_')?;
    (!n.is_empty() && !rest.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some((n, rest))
}

/// One line naming each repeat folder, its N and its image count.
fn repeats_note(root: &Path, entries: &[Entry]) -> Option<String> {
    let mut folders: BTreeMap<String, (u32, usize)> = BTreeMap::new();
    for e in entries.iter().filter(|e| has_kohya_folder(root, e)) {
        let folder = concept_folder(root, &e.image)?;
        folders.entry(folder).or_insert((e.repeats, 0)).1 += 1;
    }
    if folders.is_empty() {
        return None;
    }
    let list: Vec<String> = folders
        .iter()
        .map(|(f, (n, count))| format!("{f} ×{n} ({count} images)"))
        .collect();
    Some(format!(
        "kohya repeat folders: {}; each image counts N times when batches are drawn",
        list.join(", ")
    ))
}

fn has_kohya_folder(root: &Path, e: &Entry) -> bool {
    concept_folder(root, &e.image).is_some_and(|f| kohya_name(&f).is_some())
}
