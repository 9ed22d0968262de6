//! How much more memory this process may take, read from every limit Linux applies: the
//! system's `MemAvailable`, the address-space limit (`RLIMIT_AS`, what `ulimit -v` and batch
//! schedulers set; it bounds virtual size, so what is already mapped counts against it) and
//! the memory limit of the process's control group (v2 `memory.max`, v1
//! `memory.limit_in_bytes`, less what the group already uses). The smallest one binds,
//! and a refusal names it (docs/RELIABILITY.md).

use std::path::{Path, PathBuf};

/// Bytes still available under one limit, and the limit's name for messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Headroom {
    pub bytes: f64,
    pub source: String,
}

/// Values at or above this mean "no limit" (cgroup v1 writes 2⁶³ rounded to a page).
const UNLIMITED: f64 = (1u64 << 60) as f64;

/// The tightest of the limits that apply to this process, if any is known.
pub fn headroom() -> Option<Headroom> {
    let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    [
        mem_available(),
        address_space(),
        cgroup(Path::new("/sys/fs/cgroup"), &proc_cgroup),
    ]
    .into_iter()
    .flatten()
    .min_by(|a, b| a.bytes.total_cmp(&b.bytes))
}

fn mem_available() -> Option<Headroom> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    Some(Headroom {
        bytes: kib_field(&info, "MemAvailable:")?,
        source: "MemAvailable in /proc/meminfo".into(),
    })
}

/// A `Key:   N kB` line of a /proc file, in bytes.
fn kib_field(text: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// `RLIMIT_AS` less the process's current virtual size (`VmSize`).
fn address_space() -> Option<Headroom> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mapped = kib_field(&status, "VmSize:").unwrap_or(0.0);
    Some(address_space_headroom(lim.rlim_cur as f64, mapped))
}

fn address_space_headroom(limit: f64, mapped: f64) -> Headroom {
    Headroom {
        bytes: (limit - mapped).max(0.0),
        source: format!(
            "the address-space limit (RLIMIT_AS, ulimit -v) of {} less {} already mapped",
            human(limit),
            human(mapped)
        ),
    }
}

/// The smallest headroom of the process's control group and its ancestors, under the
/// cgroup file system mounted at `root`; `proc_cgroup` is `/proc/self/cgroup`.
fn cgroup(root: &Path, proc_cgroup: &str) -> Option<Headroom> {
    let mut found = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (base, limit, usage) = match (id, controllers) {
            ("0", "") => (root.to_path_buf(), "memory.max", "memory.current"),
            (_, c) if c.split(',').any(|c| c == "memory") => {
                (root.join("memory"), "memory.limit_in_bytes", "memory.usage_in_bytes")
            }
            _ => continue,
        };
        for dir in group_and_ancestors(&base, path) {
            found.extend(group_headroom(&dir, limit, usage));
        }
    }
    found.into_iter().min_by(|a, b| a.bytes.total_cmp(&b.bytes))
}

/// The group's folder and those above it up to `base` (inside a container the group's
/// path may not exist under the mount; then only `base`, the container's own group).
fn group_and_ancestors(base: &Path, path: &str) -> Vec<PathBuf> {
    let mut dirs = vec![base.to_path_buf()];
    let mut dir = base.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != "..") {
        dir.push(part);
        if !dir.is_dir() {
            break;
        }
        dirs.push(dir.clone());
    }
    dirs
}

fn group_headroom(dir: &Path, limit: &str, usage: &str) -> Option<Headroom> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let max: f64 = read(limit)?.trim().parse().ok()?; // "max" (v2, no limit) does not parse
    if max >= UNLIMITED {
        return None;
    }
    let used: f64 = read(usage).and_then(|u| u.trim().parse().ok()).unwrap_or(0.0);
    Some(Headroom {
        bytes: (max - used).max(0.0),
        source: format!(
            "the control group's memory limit ({}) of {} less {} in use",
            dir.join(limit).display(),
            human(max),
            human(used)
        ),
    })
}

/// Bytes in binary units, one decimal.
pub fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("dcm-cgroup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        root
    }

    /// v2: the tightest group on the path from the mount to the process's group binds,
    /// as limit less use, and "max" is no limit.
    #[test]
    fn cgroup_v2_takes_the_tightest_ancestor() {
        let root = tree(
            "v2",
            &[
                ("memory.max", "max\n"),
                ("jobs/memory.max", "4294967296\n"),
                ("jobs/memory.current", "1073741824\n"),
                ("jobs/run/memory.max", "8589934592\n"),
                ("jobs/run/memory.current", "1073741824\n"),
            ],
        );
        let h = cgroup(&root, "0::/jobs/run\n").unwrap();
        assert_eq!(h.bytes, 3.0 * 1073741824.0);
        assert!(
            h.source.contains("jobs/memory.max") && h.source.contains("4.0 GiB"),
            "{}",
            h.source
        );
        assert_eq!(cgroup(&root, "0::/\n"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// v1: the memory controller's line is followed; the "unlimited" 2⁶³ is no limit.
    #[test]
    fn cgroup_v1_reads_the_memory_controller() {
        let root = tree(
            "v1",
            &[
                ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory/box/memory.limit_in_bytes", "2147483648\n"),
                ("memory/box/memory.usage_in_bytes", "536870912\n"),
            ],
        );
        let h = cgroup(&root, "5:cpu:/\n4:memory:/box\n").unwrap();
        assert_eq!(h.bytes, 1.5 * 1073741824.0);
        assert!(h.source.contains("memory.limit_in_bytes"), "{}", h.source);
        assert_eq!(cgroup(&root, "4:memory:/\n"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The address space already mapped is taken off the limit, never below zero.
    #[test]
    fn address_space_counts_what_is_mapped() {
        let h = address_space_headroom(8.0e9, 1.0e9);
        assert_eq!(h.bytes, 7.0e9);
        assert!(h.source.contains("ulimit -v"), "{}", h.source);
        assert_eq!(address_space_headroom(1.0e9, 2.0e9).bytes, 0.0);
        assert_eq!(
            kib_field("VmPeak:\t 10 kB\nVmSize:\t 3892 kB\n", "VmSize:"),
            Some(3892.0 * 1024.0)
        );
    }
}
