//! The released CLIP BPE vocabulary (OpenAI's `bpe_simple_vocab_16e6.txt.gz`, shipped in
//! `models/clip_bpe/` by `scripts/fetch_clip_vocab.sh`), so that a single-file checkpoint
//! tokenizes without a `tokenizer/` folder. SD 1.x, SD 2.x and both SDXL encoders use it.
//!
//! The file is a version line and then merges in rank order; CLIP keeps the first
//! 49,152 − 256 − 2 of them. Ids follow CLIP's construction (docs/SD_FORMATS.md, "Tokenizer"):
//! the 256 byte symbols in GPT-2's byte-to-unicode order, the same 256 with `</w>`, one token
//! per kept merge (its two sides joined), then `<|startoftext|>` (49406) and `<|endoftext|>`
//! (49407).

use anyhow::{anyhow, ensure, Result};
use std::io::Read;
use tokenizers::models::bpe::{Merges, Vocab};

const GZIPPED: &[u8] = include_bytes!("../../../models/clip_bpe/bpe_simple_vocab_16e6.txt.gz");

/// Merges CLIP keeps (its vocabulary size 49,408 less the 512 byte tokens and 2 specials).
const KEPT_MERGES: usize = 49_152 - 256 - 2;

/// The vocabulary size of every released CLIP text encoder.
pub const CLIP_VOCAB_SIZE: usize = 49_408;

/// GPT-2's printable stand-ins for the 256 bytes, in id order: the bytes that print as
/// themselves (`!`–`~`, `¡`–`¬`, `®`–`ÿ`) map to themselves, the rest, in byte order, to
/// U+0100 onwards.
pub fn byte_symbols() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut symbols: Vec<char> = (0..256u32)
        .filter(|&b| printable(b))
        .filter_map(char::from_u32)
        .collect();
    let others = (0..256u32).filter(|&b| !printable(b));
    symbols.extend(others.enumerate().filter_map(|(n, _)| char::from_u32(256 + n as u32)));
    symbols
}

/// The vocabulary and merges of the released CLIP tokenizer.
pub fn released() -> Result<(Vocab, Merges)> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(GZIPPED)
        .read_to_string(&mut text)
        .map_err(|e| anyhow!("the shipped CLIP vocabulary cannot be read: {e}"))?;
    let merges: Merges = text
        .lines()
        .skip(1)
        .take(KEPT_MERGES)
        .filter_map(|line| line.split_once(' '))
        .map(|(l, r)| (l.to_string(), r.to_string()))
        .collect();
    ensure!(merges.len() == KEPT_MERGES, "the shipped CLIP vocabulary is truncated");
    let bytes = byte_symbols();
    let tokens = bytes
        .iter()
        .map(char::to_string)
        .chain(bytes.iter().map(|c| format!("{c}</w>")))
        .chain(merges.iter().map(|(l, r)| format!("{l}{r}")))
        .chain(["<|startoftext|>".to_string(), "<|endoftext|>".to_string()]);
    let vocab: Vocab = tokens.enumerate().map(|(id, t)| (t, id as u32)).collect();
    ensure!(
        vocab.len() == CLIP_VOCAB_SIZE,
        "the shipped CLIP vocabulary has repeated tokens"
    );
    Ok((vocab, merges))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids of well-known tokens of the released tokenizer (transformers' `openai/clip-vit-large-patch14` vocab.json).
    #[test]
    fn released_vocabulary_has_clips_ids() {
        let (vocab, merges) = released().unwrap();
        assert_eq!(merges[0], ("i".to_string(), "n".to_string()));
        for (token, id) in [
            ("!", 0),
            ("a", 64),
            ("a</w>", 320),
            ("Ā", 188),
            ("photo</w>", 1125),
            ("cat</w>", 2368),
            ("<|startoftext|>", 49406),
            ("<|endoftext|>", 49407),
        ] {
            assert_eq!(vocab[token], id, "{token}");
        }
    }
}
