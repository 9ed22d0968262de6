//! The layout states the data flow: `lib.rs` lists a few top-level modules in flow order,
//! and no module imports from one later in the flow (so there are no cycles).

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules in the order `lib.rs` declares them.
fn flow() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .map(str::to_string)
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every top-level module a file names as `crate::NAME`.
fn imports(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(i, m)| {
            text[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn no_module_imports_from_later_in_the_flow() {
    let flow = flow();
    assert!(
        (5..=10).contains(&flow.len()),
        "lib.rs should list a handful of modules, not {}",
        flow.len()
    );
    let mut violations = Vec::new();
    for (rank, module) in flow.iter().enumerate() {
        let mut files = Vec::new();
        let dir = src().join(module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(src().join(format!("{module}.rs")));
        }
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for used in imports(&text) {
                let at = flow.iter().position(|m| *m == used);
                let at = at.unwrap_or_else(|| panic!("{}: crate::{used} is not a top-level module", file.display()));
                if at > rank {
                    violations.push(format!("{} uses crate::{used}", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "imports against the flow: {violations:#?}");
}

/// The check above would catch a backward import: it finds the names a file uses.
#[test]
fn imports_are_found() {
    let text = "use crate::diffusion::solver::Solver;\nlet x = crate::nets::mlp::Mlp::new();";
    assert_eq!(imports(text), vec!["diffusion", "nets"]);
}
