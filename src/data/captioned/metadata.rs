//! Hugging Face imagefolder metadata: `metadata.jsonl` (one JSON object a line) or
//! `metadata.csv` (RFC 4180: a header row, quoted fields may hold commas, quotes and line
//! breaks), with a `file_name` column naming each image relative to the folder and a caption
//! column. Every image of the folder must be listed: an unlisted one is an error, not a skip.

use super::entry::Entry;
use super::listing::{is_image, Listing};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

const FILE_COLUMN: &str = "file_name";

/// One metadata row: where it is (for messages), its file name and caption.
struct Row {
    at: String,
    file_name: String,
    caption: String,
}

pub fn entries(files: &Listing, meta: &Path, column: &str) -> Result<Vec<Entry>> {
    if let Some(side) = files.captions.first() {
        bail!(
            "{}: a caption side file in a folder with {}; captions come from one or the other, \
             remove one",
            side.display(),
            meta.display()
        );
    }
    let rows = if meta.extension().is_some_and(|e| e == "csv") {
        read_csv(meta, column)?
    } else {
        read_jsonl(meta, column)?
    };
    let on_disk: BTreeSet<&PathBuf> = files.images.iter().collect();
    let mut listed = BTreeSet::new();
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let image = resolve(&files.root, &row)?;
        ensure!(
            on_disk.contains(&image),
            "{}: {} does not exist",
            row.at,
            image.display()
        );
        ensure!(
            listed.insert(image.clone()),
            "{}: {} is listed twice",
            row.at,
            row.file_name
        );
        entries.push(Entry {
            image,
            caption: row.caption,
            repeats: 1,
        });
    }
    let unlisted: Vec<_> = files.images.iter().filter(|p| !listed.contains(*p)).collect();
    if let Some(first) = unlisted.first() {
        bail!(
            "{}: not listed in {} ({} image{} of the folder are not; list them or move them out)",
            first.display(),
            meta.display(),
            unlisted.len(),
            if unlisted.len() == 1 { "" } else { "s" }
        );
    }
    Ok(entries)
}

/// The image a row names: a relative path inside the folder, to a PNG, JPEG or WebP file.
fn resolve(root: &Path, row: &Row) -> Result<PathBuf> {
    let mut path = root.to_path_buf();
    for part in Path::new(&row.file_name).components() {
        match part {
            Component::Normal(p) => path.push(p),
            Component::CurDir => {}
            _ => bail!(
                "{}: file_name {:?} must be a path relative to the folder, inside it",
                row.at,
                row.file_name
            ),
        }
    }
    ensure!(
        is_image(&path),
        "{}: file_name {:?} is not a PNG, JPEG or WebP image",
        row.at,
        row.file_name
    );
    Ok(path)
}

fn read_jsonl(meta: &Path, column: &str) -> Result<Vec<Row>> {
    let text =
        crate::runtime::files::read_regular_text(meta).with_context(|| format!("{}: cannot read", meta.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = format!("{} line {}", meta.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{at}: not JSON"))?;
        let obj = v.as_object().with_context(|| format!("{at}: not a JSON object"))?;
        let field = |k: &str| -> Result<String> {
            let Some(value) = obj.get(k) else {
                let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                bail!("{}", missing(&at, k, &keys));
            };
            let s = value
                .as_str()
                .with_context(|| format!("{at}: \"{k}\" is not a string"))?;
            Ok(s.to_string())
        };
        rows.push(Row {
            file_name: field(FILE_COLUMN)?,
            caption: field(column)?,
            at,
        });
    }
    Ok(rows)
}

fn read_csv(meta: &Path, column: &str) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new()
        .from_path(meta)
        .with_context(|| format!("{}: cannot read", meta.display()))?;
    let header: Vec<String> = reader
        .headers()
        .with_context(|| format!("{}: unreadable header row", meta.display()))?
        .iter()
        .map(str::to_string)
        .collect();
    let names: Vec<&str> = header.iter().map(String::as_str).collect();
    let index = |k: &str| -> Result<usize> {
        let at = meta.display().to_string();
        names
            .iter()
            .position(|n| *n == k)
            .with_context(|| missing(&at, k, &names))
    };
    let (file_at, caption_at) = (index(FILE_COLUMN)?, index(column)?);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{}: malformed CSV", meta.display()))?;
        let at = format!("{} line {}", meta.display(), record.position().map_or(0, |p| p.line()));
        let field = |i: usize| {
            record
                .get(i)
                .map(str::to_string)
                .with_context(|| format!("{at}: too few fields"))
        };
        rows.push(Row {
            file_name: field(file_at)?,
            caption: field(caption_at)?,
            at,
        });
    }
    Ok(rows)
}

/// The message for a column `key` absent at `at`, listing those that exist.
fn missing(at: &str, key: &str, present: &[&str]) -> String {
    let hint = if key == FILE_COLUMN {
        "every row names its image in file_name"
    } else {
        "choose the caption column with --caption-column"
    };
    format!("{at}: no column \"{key}\" (it has: {}; {hint})", present.join(", "))
}
