//! The one line a failed command prints: the error and its causes joined by ": ", with
//! candle's captured backtraces left out (candle appends one to its errors whenever
//! `RUST_BACKTRACE` is set, which would glue dozens of frames onto the message).

/// `e` and its causes on one line, without backtraces.
pub fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|cause| match cause.downcast_ref::<candle_core::Error>() {
            Some(c) => candle_text(c),
            None => cause.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}

fn candle_text(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => candle_text(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_text(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), candle_text(inner)),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    /// A candle error with a captured backtrace prints as its message alone, after dcm's context.
    #[test]
    fn candle_backtraces_are_left_out() {
        let inner = candle_core::Error::Msg("unsupported dtype BF16 for op matmul".into());
        let with_bt = candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let e = Err::<(), _>(with_bt).context("encoding images").unwrap_err();
        assert_eq!(
            super::one_line(&e),
            "encoding images: unsupported dtype BF16 for op matmul"
        );
    }
}
