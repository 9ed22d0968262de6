//! Content fingerprints of the files a run reads (a teacher's weights and configs, its training
//! data): a 128-bit xxh3 hash of each file's bytes, so a resume or an evaluation can tell that
//! an input changed and name it.
//!
//! Hashing a 5 GB teacher takes seconds, so a run keeps the hashes it made in a cache file in
//! its folder and reuses one while the file's identity is unchanged: the same device, inode,
//! size, modification time *and* change time (ctime). Tools can set a file's modification time
//! back (`touch -d`, `cp -p`, `rsync -t`) but not its change time, which moves on every write,
//! rename and copy into place, so a file replaced at the same path with the same size and
//! modification time is hashed again. A file changed less than two seconds before it is hashed
//! is not cached: a write within the same timestamp tick could otherwise hide behind it.

use super::files::write_atomic;
use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Each file's content hash, by path.
pub type Fingerprints = BTreeMap<String, String>;

/// The cache file's name in a run folder.
pub const HASH_CACHE: &str = "input_hashes.json";

/// Files changed this recently are hashed but not cached.
const SETTLED: Duration = Duration::from_secs(2);

/// A 128-bit xxh3 hash of a file's bytes, as hex (read in blocks: weights can be large).
pub fn content_hash(p: &Path) -> Result<String> {
    let mut file = super::files::open_regular(p).with_context(|| format!("{}: cannot read", p.display()))?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut block = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut block)
            .with_context(|| format!("{}: cannot read", p.display()))?;
        if n == 0 {
            return Ok(format!("{:032x}", hasher.digest128()));
        }
        hasher.update(&block[..n]);
    }
}

/// What identifies a file's content without reading it (see the module's policy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Known {
    identity: Identity,
    hash: String,
}

#[cfg(unix)]
fn identity(p: &Path) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
    Some(Identity {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
    })
}

#[cfg(not(unix))]
fn identity(_: &Path) -> Option<Identity> {
    None
}

/// Whether a file last changed at `ns` (since the epoch) had settled by `now`.
fn settled(ns: i128, now: SystemTime) -> bool {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i128;
    now - ns >= SETTLED.as_nanos() as i128
}

/// Hashes remembered by file identity, read from and written to a cache file.
pub struct HashCache {
    path: Option<PathBuf>,
    known: Mutex<BTreeMap<String, Known>>,
}

impl HashCache {
    /// The cache in `path` (`None`: in memory only). A missing or unreadable cache is empty:
    /// it only saves work.
    pub fn open(path: Option<PathBuf>) -> Self {
        // Only a regular file is read: reading a pipe would block.
        let regular = |p: &&Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
        let known = path
            .as_deref()
            .filter(regular)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        Self {
            path,
            known: Mutex::new(known),
        }
    }

    /// The content hash of every file of `files` (in parallel), keyed by its path as given.
    pub fn fingerprints(&self, files: &[PathBuf]) -> Result<Fingerprints> {
        files
            .par_iter()
            .map(|p| Ok((p.display().to_string(), self.hash(p)?)))
            .collect()
    }

    fn hash(&self, p: &Path) -> Result<String> {
        let key = std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string();
        let now = SystemTime::now();
        let before = identity(p);
        let cached = self.known.lock().ok().and_then(|k| k.get(&key).cloned());
        if let (Some(id), Some(known)) = (&before, cached) {
            if *id == known.identity {
                return Ok(known.hash);
            }
        }
        let hash = content_hash(p)?;
        // Cached only if the file did not change while it was read and has settled.
        if let Some(id) = before.filter(|id| identity(p).as_ref() == Some(id)) {
            if settled(id.ctime_ns, now) && settled(id.mtime_ns, now) {
                if let Ok(mut known) = self.known.lock() {
                    known.insert(
                        key,
                        Known {
                            identity: id,
                            hash: hash.clone(),
                        },
                    );
                }
            }
        }
        Ok(hash)
    }

    /// Writes the cache file (atomically), if it has one.
    pub fn save(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let known = self.known.lock().map(|k| k.clone()).unwrap_or_default();
        write_atomic(path, serde_json::to_string_pretty(&known)?.as_bytes())
    }
}

/// `prints` keyed by path relative to `root` (a folder, or a file: then its name), so that
/// a copy of the same files elsewhere compares equal; paths outside `root` stay as they are.
pub fn relative_to(root: &Path, prints: &Fingerprints) -> Fingerprints {
    let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    let (base, file) = match root.is_file() {
        true => (
            root.parent().map(Path::to_path_buf).unwrap_or_default(),
            Some(root.clone()),
        ),
        false => (root.clone(), None),
    };
    prints
        .iter()
        .map(|(path, hash)| {
            let p = Path::new(path);
            let inside = file.as_deref().is_none_or(|f| f == p);
            let key = match p.strip_prefix(&base) {
                Ok(rel) if inside => rel.display().to_string(),
                _ => path.clone(),
            };
            (key, hash.clone())
        })
        .collect()
}

/// What differs between the fingerprints `old` (recorded) and `new`, one phrase per file
/// naming it: changed, gone or added.
pub fn changes(old: &Fingerprints, new: &Fingerprints) -> Vec<String> {
    let mut out = Vec::new();
    for (path, hash) in old {
        match new.get(path) {
            None => out.push(format!("{path} is no longer among them")),
            Some(h) if h != hash => out.push(format!("{path} changed (its content hash differs)")),
            Some(_) => {}
        }
    }
    out.extend(
        new.keys()
            .filter(|p| !old.contains_key(*p))
            .map(|p| format!("{p} was added")),
    );
    out
}

/// `changes` as one clause: the first few, and how many more.
pub fn describe(changes: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = changes.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if changes.len() > SHOWN {
        text += &format!("; and {} more", changes.len() - SHOWN);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dcm-fingerprint-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A cached hash is reused only while the file is untouched: content replaced at the same
    /// size with the modification time set back is hashed again (its change time moved).
    #[test]
    fn a_replaced_file_with_the_same_size_and_mtime_is_rehashed() {
        let d = temp("replace");
        let f = d.join("caption.txt");
        std::fs::write(&f, "a red cube").unwrap();
        // Old enough to be cached.
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::thread::sleep(SETTLED + Duration::from_millis(100));
        let cache = HashCache::open(Some(d.join(HASH_CACHE)));
        let first = cache.fingerprints(std::slice::from_ref(&f)).unwrap();
        cache.save().unwrap();
        let reopened = HashCache::open(Some(d.join(HASH_CACHE)));
        assert_eq!(reopened.known.lock().unwrap().len(), 1, "the settled file is cached");
        assert_eq!(reopened.fingerprints(std::slice::from_ref(&f)).unwrap(), first);
        std::fs::write(&f, "a red ball").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let again = reopened.fingerprints(std::slice::from_ref(&f)).unwrap();
        assert_ne!(again, first, "same size, same mtime, other bytes: rehashed");
        let key = f.display().to_string();
        assert_eq!(
            changes(&first, &again),
            [format!("{key} changed (its content hash differs)")]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn changes_name_changed_gone_and_added_files() {
        let old = Fingerprints::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
        let new = Fingerprints::from([("a".into(), "9".into()), ("c".into(), "3".into())]);
        assert_eq!(
            changes(&old, &new),
            [
                "a changed (its content hash differs)",
                "b is no longer among them",
                "c was added"
            ]
        );
        assert!(changes(&old, &old).is_empty());
        let many: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        assert_eq!(describe(&many), "0; 1; 2; and 2 more");
    }
}
