//! The prompt of every row of a batch, from `--prompt TEXT` or `--prompts FILE`.

use anyhow::{bail, ensure, Context, Result};
use std::path::Path;

/// One prompt per row: `--prompt` for all rows, or `--prompts FILE` with one line per row
/// (a file with a single line applies it to every row). Lines end in `\n` or `\r\n`; an
/// empty line is the empty prompt.
pub fn per_row(prompt: Option<&str>, file: Option<&Path>, rows: usize) -> Result<Vec<String>> {
    if rows == 0 {
        let source = file.map_or_else(|| "--prompt".to_string(), |f| format!("--prompts {}", f.display()));
        bail!("{source}: the noise has no rows, so there is nothing to prompt");
    }
    let lines = match (prompt, file) {
        (Some(p), None) => vec![p.to_string()],
        (None, Some(path)) => read_lines(path, rows)?,
        (None, None) => bail!("a text-conditioned teacher needs --prompt TEXT or --prompts FILE"),
        (Some(_), Some(_)) => bail!("give --prompt or --prompts, not both"),
    };
    Ok(if lines.len() == 1 {
        vec![lines[0].clone(); rows]
    } else {
        lines
    })
}

fn read_lines(path: &Path, rows: usize) -> Result<Vec<String>> {
    let at = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("--prompts {at}: cannot read as UTF-8 text"))?;
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    ensure!(
        lines.len() == rows || lines.len() == 1,
        "--prompts {at}: {} lines for {rows} noise rows (give one line per row, or a single line for all)",
        lines.len()
    );
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_from_flag_or_file() {
        let path = std::env::temp_dir().join(format!("dcm-prompts-{}.txt", std::process::id()));
        assert_eq!(per_row(Some("a cat"), None, 2).unwrap(), vec!["a cat", "a cat"]);
        std::fs::write(&path, "a cat\r\n\ntwo dogs\n").unwrap();
        assert_eq!(per_row(None, Some(&path), 3).unwrap(), vec!["a cat", "", "two dogs"]);
        let e = per_row(None, Some(&path), 4).unwrap_err().to_string();
        assert!(
            e.contains("dcm-prompts-") && e.contains("3 lines for 4 noise rows"),
            "{e}"
        );
        std::fs::write(&path, "one for all").unwrap();
        assert_eq!(per_row(None, Some(&path), 2).unwrap(), vec!["one for all"; 2]);
        std::fs::write(&path, "").unwrap();
        assert!(per_row(None, Some(&path), 1)
            .unwrap_err()
            .to_string()
            .contains("0 lines"));
        std::fs::write(&path, b"\xff\xfe").unwrap();
        assert!(per_row(None, Some(&path), 1).unwrap_err().to_string().contains("UTF-8"));
        assert!(per_row(None, None, 1).is_err());
        let e = per_row(None, Some(&path), 0).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--prompts {}: the noise has no rows", path.display())),
            "{e}"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
