//! Memory estimates checked before allocation: a size that cannot fit is refused in
//! one line instead of growing until the out-of-memory killer ends the process.

use super::limits::headroom;
pub use super::limits::human;
use anyhow::{ensure, Result};

/// Refuses work whose estimated need, `bytes`, exceeds what the tightest of the process's
/// memory limits still allows (runtime::limits); `what` names the flag or input that sets
/// the size, and the message names the limit.
pub fn ensure_fits(bytes: f64, what: &str) -> Result<()> {
    if let Some(free) = headroom() {
        ensure!(
            bytes <= free.bytes,
            "{what}: needs about {} but only {} is available under {}",
            human(bytes),
            human(free.bytes),
            free.source
        );
    }
    Ok(())
}

/// Bytes of `elements` f32 values, as f64 so huge products do not overflow.
pub fn f32_bytes(elements: &[usize]) -> f64 {
    4.0 * elements.iter().map(|&e| e as f64).product::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_sizes_are_refused_and_small_ones_pass() {
        assert!(ensure_fits(f32_bytes(&[1000, 1000]), "--batch").is_ok());
        let e = ensure_fits(f32_bytes(&[100_000_000_000, 196]), "--samples 100000000000").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--samples 100000000000: needs about 71.3 TiB"),
            "{e}"
        );
        assert_eq!(human(1536.0), "1.5 KiB");
    }
}
