//! The one progress-bar style of every long stage: position, rate and time left.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` units labelled `what` (hidden when stderr is not a terminal, and on every
/// data-parallel rank but rank 0).
pub fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = match crate::runtime::ranks::place().is_root() {
        true => ProgressBar::new(len as u64),
        false => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}
