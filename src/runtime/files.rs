//! Crash-safe file output: write a temporary file in the same folder, fsync it,
//! then rename over the destination, so a reader sees the old or the new file, never half of one.
//! Only regular files are ever written or replaced, and a command checks where it will
//! write before it starts work, so no run is lost to an unwritable folder.

use anyhow::{bail, ensure, Context, Result};
use std::io::Write;
use std::path::Path;

/// Errors unless `path` is absent or a regular file (not a symlink, device, FIFO or folder).
pub fn ensure_replaceable(path: &Path, what: &str) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) if m.file_type().is_symlink() => {
            bail!("{what} {}: is a symbolic link; give a regular file", path.display())
        }
        Ok(m) if m.is_dir() => bail!("{what} {}: is a folder; give a file path", path.display()),
        Ok(_) => bail!(
            "{what} {}: is not a regular file (a device or pipe); dcm writes only regular files",
            path.display()
        ),
    }
}

/// Opens `path` for reading if it is a regular file (or a link to one). Files found inside a
/// folder (configs, captions, weights) are opened through this: opening a pipe blocks until
/// a writer comes, and a device may never end.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a pipe, device or folder)",
        ));
    }
    std::fs::File::open(path)
}

/// The bytes of the regular file `path` (`open_regular`).
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut open_regular(path)?, &mut bytes)?;
    Ok(bytes)
}

/// The text of the regular file `path` (`open_regular`), which must be UTF-8.
pub fn read_regular_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_regular(path)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "stream did not contain valid UTF-8"))
}

/// Checks, before any work, that `path` can be written as a regular file by `flag`:
/// its folder exists (or is created) and takes a new file, and `path` itself is absent
/// or a regular file.
pub fn check_output_file(path: &Path, flag: &str) -> Result<()> {
    ensure_replaceable(path, flag)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    check_writable(dir, flag)
}

/// Checks, before any work, that the folder `dir` named by `flag` exists or can be
/// created, and takes new files.
pub fn check_output_dir(dir: &Path, flag: &str) -> Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(dir) {
        ensure!(m.is_dir(), "{flag} {}: exists and is not a folder", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{flag} {}: cannot create folder", dir.display()))?;
    check_writable(dir, flag)
}

fn check_writable(dir: &Path, flag: &str) -> Result<()> {
    let probe = dir.join(format!(".dcm-write-test.{}", std::process::id()));
    std::fs::File::create(&probe).with_context(|| format!("{flag}: cannot write in {}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers see the old
/// file or the new one, never part of one. Among data-parallel ranks only rank 0 writes
/// (every rank holds the same results; K writers of one file would race).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// `write_atomic` with the content written by `fill` into the temporary file, so a large file
/// is streamed instead of held whole in memory.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    if !crate::runtime::ranks::place().is_root() {
        return Ok(());
    }
    ensure_replaceable(path, "output")?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    // A forced stop (runtime::signals) waits for the write to finish.
    let _writing = super::signals::Writing::start();
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        fill(&mut f)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            d.sync_all()?;
        }
        Ok(())
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("dcm-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.bin");
        super::write_atomic(&p, b"old").unwrap();
        super::write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A symlink, a folder or a FIFO is never replaced; an unwritable folder is found before work.
    #[test]
    fn only_regular_files_are_written() {
        let dir = std::env::temp_dir().join(format!("dcm-outputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("target.bin");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.join("link.bin");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fifo = dir.join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        for bad in [&link, &dir, &fifo] {
            assert!(super::write_atomic(bad, b"new").is_err(), "{}", bad.display());
            assert!(super::check_output_file(bad, "--out").is_err(), "{}", bad.display());
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        let e = super::check_output_file(&std::path::PathBuf::from("/dev/full"), "--out").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(super::check_output_dir(&target, "--out").is_err());
        assert!(super::check_output_file(&dir.join("new.npy"), "--out").is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
