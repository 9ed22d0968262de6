//! Reading a diffusers or transformers `config.json` object into its typed form so that a
//! value of the wrong type names its key: serde reports only what it expected, so on an error
//! each key is taken out in turn, and the key whose absence changes the error is the one at fault.

use anyhow::{anyhow, Result};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// `map` as a `T`; a type error reads `'KEY' = VALUE: what serde expected`.
pub fn from_object<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T> {
    let parse = |m: &Map<String, Value>| serde_json::from_value::<T>(Value::Object(m.clone()));
    let first = match parse(&map) {
        Ok(v) => return Ok(v),
        Err(e) => e.to_string(),
    };
    // A missing key is reported after every present one was read, and serde names it.
    if first.starts_with("missing field") {
        return Err(anyhow!("{first}"));
    }
    let why = first.replace(
        "data did not match any variant of untagged enum PerBlock",
        "expected one value for every block or a list of one per block",
    );
    for key in map.keys() {
        let mut without = map.clone();
        without.remove(key);
        if parse(&without).err().map(|e| e.to_string()).as_deref() != Some(first.as_str()) {
            return Err(anyhow!("'{key}' = {}: {why}", short(&map[key])));
        }
    }
    Err(anyhow!("{why}"))
}

/// Refuses a number read from a config outside `[lo, hi]` (or not finite), naming its key and
/// the range, so a value that would overflow or silently flatten the output is caught at load.
pub fn in_range(key: &str, value: f64, lo: f64, hi: f64) -> Result<()> {
    match value.is_finite() && (lo..=hi).contains(&value) {
        true => Ok(()),
        false => Err(anyhow!("'{key}' = {}: must be between {lo} and {hi}", number(value))),
    }
}

/// Plain notation for ordinary numbers, exponent notation for huge and tiny ones.
fn number(v: f64) -> String {
    match v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-4) {
        true => format!("{v:e}"),
        false => format!("{v}"),
    }
}

/// An optional `sample_size`: one size or a list of sizes (height, width), each in `1..=max`.
pub fn check_sample_size(value: Option<&Value>, max: u64) -> Result<()> {
    let sizes: Vec<&Value> = match value {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(list)) if (1..=2).contains(&list.len()) => list.iter().collect(),
        Some(v) => vec![v],
    };
    for v in sizes {
        match v.as_u64() {
            Some(n) if (1..=max).contains(&n) => {}
            _ => {
                return Err(anyhow!(
                    "'sample_size' = {}: expected a size from 1 to {max}",
                    short(value.unwrap_or(v))
                ))
            }
        }
    }
    Ok(())
}

/// A value as JSON, cut to a readable length.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Config {
        layers: usize,
        #[serde(default)]
        eps: f64,
        name: String,
    }

    fn parse(text: &str) -> Result<Config> {
        from_object(serde_json::from_str(text).unwrap())
    }

    /// The key with the wrong type is named whatever its position; a missing key stays
    /// serde's own message (it already names the field).
    #[test]
    fn the_key_at_fault_is_named() {
        let e = parse(r#"{"name": "x", "eps": 1e-5, "layers": "one"}"#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(r#"'layers' = "one": invalid type: string "one""#),
            "{e}"
        );
        let e = parse(r#"{"layers": 2, "eps": "small", "name": "x"}"#).unwrap_err();
        assert!(e.to_string().starts_with(r#"'eps' = "small": invalid type"#), "{e}");
        let e = parse(r#"{"layers": 2}"#).unwrap_err();
        assert_eq!(e.to_string(), "missing field `name`");
        assert_eq!(parse(r#"{"layers": 2, "name": "x"}"#).unwrap().layers, 2);
    }

    /// Numbers out of range or not finite are refused with the key and the range; sample
    /// sizes are positive integers (one, or height and width).
    #[test]
    fn ranges_name_the_key() {
        let e = in_range("scaling_factor", 1e39, 1e-3, 1e3).unwrap_err();
        assert_eq!(e.to_string(), "'scaling_factor' = 1e39: must be between 0.001 and 1000");
        assert!(in_range("x", f64::NAN, 0.0, 1.0).is_err() && in_range("x", 0.5, 0.0, 1.0).is_ok());
        let size = |t: &str| check_sample_size(Some(&serde_json::from_str(t).unwrap()), 512);
        assert!(size("64").is_ok() && size("[96, 64]").is_ok() && size("null").is_ok());
        for bad in ["0", "-1", "1.5", "\"big\"", "[64, 0]", "[]", "100000"] {
            let e = size(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("'sample_size' = ") && e.ends_with("expected a size from 1 to 512"),
                "{bad}: {e}"
            );
        }
    }
}
