//! The safety check of a PyTorch pickle: every Python global it names must be one that tensor
//! serialisation needs, else the file is refused before anything reads its tensors.
//!
//! Unpickling calls whatever globals the pickle names (`os.system` included), which is how a
//! `.ckpt` file can carry code. dcm never unpickles: candle's reader only builds a tree of
//! values. The check still refuses such files, as a tensor file naming `os.system` is not what
//! it claims to be. It walks the opcodes without building anything and collects the globals
//! (`GLOBAL`, `INST`, and `STACK_GLOBAL` with the two strings pushed before it); anything it
//! cannot resolve statically is refused too.

use anyhow::{bail, Result};
use std::collections::HashMap;

/// Globals a tensor file may name: tensor and storage reconstruction, the dict type of state
/// dicts, and the harmless values training checkpoints carry beside the weights (numpy
/// scalars, bytes, sets, Lightning's checkpoint callback as a dict key).
fn allowed(module: &str, name: &str) -> bool {
    const STORAGES: &[&str] = &[
        "FloatStorage",
        "DoubleStorage",
        "HalfStorage",
        "BFloat16Storage",
        "ByteStorage",
        "CharStorage",
        "ShortStorage",
        "IntStorage",
        "LongStorage",
        "BoolStorage",
    ];
    const DTYPES: &[&str] = &[
        "float16", "float32", "float64", "bfloat16", "uint8", "int8", "int16", "int32", "int64", "bool",
    ];
    match module {
        "collections" => name == "OrderedDict",
        "torch._utils" => matches!(name, "_rebuild_tensor_v2" | "_rebuild_parameter"),
        "torch._tensor" => name == "_rebuild_from_type_v2",
        "torch" => STORAGES.contains(&name) || DTYPES.contains(&name) || matches!(name, "Size" | "Tensor"),
        "torch.nn.parameter" => name == "Parameter",
        "numpy.core.multiarray" | "numpy._core.multiarray" => matches!(name, "scalar" | "_reconstruct"),
        "numpy" => matches!(name, "dtype" | "ndarray"),
        "_codecs" => name == "encode",
        "builtins" | "__builtin__" => matches!(name, "set" | "frozenset"),
        "pytorch_lightning.callbacks.model_checkpoint" => name == "ModelCheckpoint",
        _ => false,
    }
}

/// Errors (naming `what` and the global) unless every global of the pickle `data` is allowed.
pub fn check_pickle(data: &[u8], what: &str) -> Result<()> {
    for (module, name) in globals(data).map_err(|e| anyhow::anyhow!("{what}: {e}"))? {
        if !allowed(&module, &name) {
            bail!(
                "{what}: refers to the Python global {module}.{name}, which a tensor file does not need; refused \
                 (a file that names it may run code when loaded by Python)"
            );
        }
    }
    Ok(())
}

/// How an opcode's argument is laid out in the stream.
enum Arg {
    None,
    Fixed(usize),
    Line,
    TwoLines,
    /// A length of this many little-endian bytes, then that many bytes.
    Counted(usize),
}

fn arg_of(op: u8) -> Option<Arg> {
    use Arg::*;
    Some(match op {
        b'('
        | b'.'
        | b'0'
        | b'1'
        | b'2'
        | b'N'
        | b'Q'
        | b'R'
        | b'a'
        | b'b'
        | b'd'
        | b'}'
        | b'e'
        | b'l'
        | b']'
        | b'o'
        | b's'
        | b't'
        | b')'
        | b'u'
        | 0x81
        | 0x85..=0x89
        | 0x8f..=0x94
        | 0x97
        | 0x98 => None,
        b'F' | b'I' | b'L' | b'P' | b'S' | b'V' | b'g' | b'p' => Line,
        b'c' | b'i' => TwoLines,
        b'K' | b'h' | b'q' | 0x80 | 0x82 => Fixed(1),
        b'M' | 0x83 => Fixed(2),
        b'J' | b'j' | b'r' | 0x84 => Fixed(4),
        b'G' | 0x95 => Fixed(8),
        b'U' | b'C' | 0x8a | 0x8c => Counted(1),
        b'T' | b'X' | b'B' | 0x8b => Counted(4),
        0x8d | 0x8e | 0x96 => Counted(8),
        _ => return Option::None,
    })
}

/// A cursor over the pickle bytes.
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let Some(end) = self.at.checked_add(n).filter(|&e| e <= self.data.len()) else {
            bail!("pickle truncated at byte {}", self.at)
        };
        let out = &self.data[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn line(&mut self) -> Result<&'a [u8]> {
        let Some(len) = self.data[self.at..].iter().position(|&b| b == b'\n') else {
            bail!("pickle truncated at byte {}", self.at)
        };
        let out = self.take(len)?;
        self.at += 1;
        Ok(out)
    }

    fn uint(&mut self, n: usize) -> Result<usize> {
        let bytes = self.take(n)?;
        let v = bytes.iter().rev().fold(0u64, |v, &b| (v << 8) | b as u64);
        usize::try_from(v).map_err(|_| anyhow::anyhow!("pickle length {v} too large"))
    }
}

/// The values just pushed, as far as `STACK_GLOBAL` needs them: the two most recent pushes if
/// both were strings (literal or fetched from the memo), and the memo's strings.
#[derive(Default)]
struct Strings {
    recent: [Option<String>; 2],
    memo: HashMap<usize, Option<String>>,
}

impl Strings {
    fn push(&mut self, s: Option<String>) {
        self.recent = [self.recent[1].take(), s];
    }

    fn memoize(&mut self, id: usize) {
        self.memo.insert(id, self.recent[1].clone());
    }
}

/// Every `(module, name)` global the pickle names, in order; an opcode whose global cannot be
/// read statically (an extension code, a computed `STACK_GLOBAL`) is an error.
fn globals(data: &[u8]) -> Result<Vec<(String, String)>> {
    let mut r = Reader { data, at: 0 };
    let mut found = Vec::new();
    let mut strings = Strings::default();
    loop {
        let at = r.at;
        let op = r.take(1)?[0];
        let Some(arg) = arg_of(op) else {
            bail!("not a pickle this reader knows (opcode 0x{op:02x} at byte {at})")
        };
        let bytes = match arg {
            Arg::None => &[][..],
            Arg::Fixed(n) => r.take(n)?,
            Arg::Line => r.line()?,
            Arg::TwoLines => {
                let module = String::from_utf8_lossy(r.line()?).into_owned();
                let name = String::from_utf8_lossy(r.line()?).into_owned();
                found.push((module, name));
                &[][..]
            }
            Arg::Counted(n) => {
                let len = r.uint(n)?;
                r.take(len)?
            }
        };
        match op {
            b'.' => return Ok(found),
            // Strings: unicode and the byte strings of protocols 0-2.
            b'X' | 0x8c | 0x8d | b'V' | b'U' | b'T' | b'S' => {
                strings.push(Some(String::from_utf8_lossy(bytes).into_owned()))
            }
            b'q' | b'r' => strings.memoize(le(bytes)),
            b'p' => strings.memoize(decimal(bytes)?),
            0x94 => strings.memoize(strings.memo.len()),
            b'h' | b'j' => strings.push(strings.memo.get(&le(bytes)).cloned().flatten()),
            b'g' => strings.push(strings.memo.get(&decimal(bytes)?).cloned().flatten()),
            0x93 => match std::mem::take(&mut strings.recent) {
                [Some(module), Some(name)] => found.push((module, name)),
                _ => bail!("a STACK_GLOBAL at byte {at} whose module and name are not plain strings"),
            },
            0x82..=0x84 => bail!("an extension-registry global (opcode 0x{op:02x} at byte {at})"),
            // Framing and the protocol mark leave the stack as it is.
            0x80 | 0x95 => {}
            _ => strings.push(None),
        }
    }
}

fn le(bytes: &[u8]) -> usize {
    bytes.iter().rev().fold(0usize, |v, &b| (v << 8) | b as usize)
}

fn decimal(bytes: &[u8]) -> Result<usize> {
    let text = String::from_utf8_lossy(bytes);
    text.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("pickle memo index '{text}' is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protocol 4 as Python writes it: `STACK_GLOBAL` after two strings, the second time
    /// with the module fetched from the memo; both globals are seen and the second refused.
    #[test]
    fn stack_globals_are_resolved_through_the_memo() {
        let mut p = vec![0x80, 4];
        let s = |p: &mut Vec<u8>, text: &str| {
            p.push(0x8c);
            p.push(text.len() as u8);
            p.extend_from_slice(text.as_bytes());
            p.push(0x94);
        };
        s(&mut p, "collections");
        s(&mut p, "OrderedDict");
        p.push(0x93);
        p.extend_from_slice(&[0x94, b')', b'R', b'0']);
        p.extend_from_slice(&[b'h', 0]);
        s(&mut p, "getattr");
        p.push(0x93);
        p.push(b'.');
        assert_eq!(
            globals(&p).unwrap(),
            vec![
                ("collections".into(), "OrderedDict".into()),
                ("collections".into(), "getattr".into())
            ]
        );
        let e = check_pickle(&p, "f.ckpt").unwrap_err().to_string();
        assert!(
            e.starts_with("f.ckpt: refers to the Python global collections.getattr,"),
            "{e}"
        );
    }

    /// A STACK_GLOBAL whose strings are computed, an extension code, an unknown opcode and a
    /// truncated stream are refused rather than guessed.
    #[test]
    fn what_cannot_be_resolved_is_refused() {
        let computed = [0x80, 4, b'N', b'N', 0x93, b'.'];
        assert!(globals(&computed)
            .unwrap_err()
            .to_string()
            .contains("STACK_GLOBAL at byte 4"));
        assert!(globals(&[0x80, 2, 0x82, 1, b'.'])
            .unwrap_err()
            .to_string()
            .contains("extension-registry"));
        assert!(globals(&[0x80, 2, 0xff])
            .unwrap_err()
            .to_string()
            .contains("opcode 0xff at byte 2"));
        assert!(globals(b"cos\nsys").unwrap_err().to_string().contains("truncated"));
        assert!(check_pickle(b"ctorch._utils\n_rebuild_tensor_v2\n.", "x").is_ok());
    }
}
