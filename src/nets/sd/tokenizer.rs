//! CLIP's byte-level BPE tokenizer, built from a diffusers `tokenizer/` folder in either
//! layout: `vocab.json` + `merges.txt` (the SD repositories), or only `tokenizer.json` (what
//! transformers ≥ 5's `save_pretrained` writes), each beside `tokenizer_config.json` and
//! optionally `special_tokens_map.json` (docs/SD_FORMATS.md, "Tokenizer").
//!
//! Assembled from the `tokenizers` crate's parts exactly as transformers' `CLIPTokenizer` does:
//! special tokens (bos, eos, pad, unk) are split out of the raw text first, the rest is
//! normalized (NFC, whitespace runs → one space, lowercase), split by CLIP's regex, mapped to
//! byte-level symbols and merged by BPE with `</w>` on each word's last symbol. `encode` then
//! gives what `tokenizer(prompt, padding="max_length", max_length=77, truncation=True)` gives:
//! bos, the tokens truncated so that eos fits, eos, then padding.

use super::clip_vocabulary;
use anyhow::{anyhow, bail, ensure, Result};
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as Normalizers, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// CLIP's context length (`model_max_length` of every SD tokenizer).
pub const CLIP_MAX_LENGTH: usize = 77;

/// CLIP's pre-tokenizer pattern (transformers `CLIPTokenizer`, after OpenAI's `simple_tokenizer.py`).
const CLIP_SPLIT: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Marks the last symbol of a word in the vocabulary and the merges.
const END_OF_WORD: &str = "</w>";

/// CLIP's BPE tokenizer with fixed-length (padded, truncated) encoding.
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_length: usize,
}

impl ClipTokenizer {
    /// Reads a tokenizer folder; errors name the file (and line) at fault.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let bpe = Bpe::read(dir)?;
        let special = SpecialTokens::read(dir, &bpe)?;
        let Bpe { vocab, merges, .. } = bpe;
        let id = |token: &str| vocab.get(token).copied().unwrap_or_default(); // presence checked by `read`
        let (bos, eos, pad) = (id(&special.bos), id(&special.eos), id(&special.pad));
        let inner = assemble(vocab, merges, &special).map_err(|e| anyhow!("tokenizer in {}: {e}", dir.display()))?;
        Ok(Self {
            inner,
            bos,
            eos,
            pad,
            max_length: special.max_length,
        })
    }

    /// The released CLIP tokenizer ([`clip_vocabulary`]) padding with `pad`: `<|endoftext|>` for
    /// OpenAI's CLIP-L (SD 1.x, SDXL's first encoder), `!` for the OpenCLIP encoders (SD 2.x,
    /// SDXL's second), as their published `tokenizer/` folders set it.
    pub fn released(pad: &str) -> Result<Self> {
        let (vocab, merges) = clip_vocabulary::released()?;
        let special = SpecialTokens {
            pad: pad.to_string(),
            ..SpecialTokens::clip()
        };
        let id = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| anyhow!("pad token {token:?} is not in CLIP's vocabulary"))
        };
        let (bos, eos, pad) = (id(&special.bos)?, id(&special.eos)?, id(&special.pad)?);
        Ok(Self {
            inner: assemble(vocab, merges, &special)?,
            bos,
            eos,
            pad,
            max_length: special.max_length,
        })
    }

    /// Exactly `max_length` ids: bos, the prompt's tokens (truncated so that eos fits), eos, pad….
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(prompt, false)
            .map_err(|e| anyhow!("tokenizing {prompt:?}: {e}"))?;
        let body = encoding.get_ids();
        let body = &body[..body.len().min(self.max_length - 2)];
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend_from_slice(body);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        Ok(ids)
    }

    /// `[B, max_length]` u32 ids on the CPU, one row per prompt.
    pub fn encode_batch(&self, prompts: &[String]) -> Result<Tensor> {
        let rows = prompts.iter().map(|p| self.encode(p)).collect::<Result<Vec<_>>>()?;
        let flat: Vec<u32> = rows.into_iter().flatten().collect();
        Ok(Tensor::from_vec(flat, (prompts.len(), self.max_length), &Device::Cpu)?)
    }

    /// The number of ids the tokenizer can produce (vocabulary and special tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Length of every encoding (`model_max_length`).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }
}

/// The `tokenizers` pipeline of transformers' `CLIPTokenizer` (no post-processor: `encode`
/// adds bos/eos itself).
fn assemble(vocab: Vocab, merges: Merges, special: &SpecialTokens) -> Result<Tokenizer> {
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(special.unk.clone())
        .end_of_word_suffix(END_OF_WORD.to_string())
        .build()
        .map_err(|e| anyhow!("BPE model: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(|e| anyhow!("normalizer: {e}"))?;
    let normalizer = Normalizers::new(vec![NFC.into(), whitespace.into(), Lowercase.into()]);
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(|e| anyhow!("normalizer: {e}"))?;
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| anyhow!("pre-tokenizer: {e}"))?;
    let byte_level = ByteLevel::new(false, true, true); // no prefix space, trim offsets, GPT-2 regex
    tokenizer.with_pre_tokenizer(Some(PreTokenizers::new(vec![split.into(), byte_level.into()])));
    // Special tokens match the raw text before normalization (transformers adds them so).
    let specials = [&special.bos, &special.eos, &special.pad, &special.unk].map(|t| AddedToken::from(t.as_str(), true));
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| anyhow!("special tokens: {e}"))?;
    Ok(tokenizer)
}

/// The BPE model's vocabulary and merges (rank order), and where they were read from.
struct Bpe {
    vocab: Vocab,
    merges: Merges,
    /// Names the vocabulary's source in errors: `vocab.json` or `tokenizer.json`'s `model.vocab`.
    source: &'static str,
}

impl Bpe {
    /// The classic pair when both files are there, else `tokenizer.json`; a folder with half
    /// the pair and no `tokenizer.json` reports the missing file.
    fn read(dir: &Path) -> Result<Self> {
        let (vocab_path, merges_path) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let json_path = dir.join("tokenizer.json");
        let pair = (vocab_path.exists(), merges_path.exists());
        if pair != (true, true) && json_path.exists() {
            return read_tokenizer_json(&json_path);
        }
        ensure!(
            pair != (false, false),
            "{}: no tokenizer: neither vocab.json + merges.txt nor tokenizer.json",
            dir.display()
        );
        let vocab = read_vocab(&vocab_path)?;
        let merges = read_merges(&merges_path, &vocab)?;
        Ok(Self {
            vocab,
            merges,
            source: "vocab.json",
        })
    }
}

fn read_text(path: &Path) -> Result<String> {
    crate::runtime::files::read_regular_text(path).map_err(|e| anyhow!("reading {}: {e}", path.display()))
}

/// `vocab.json`: token → id.
fn read_vocab(path: &Path) -> Result<Vocab> {
    let map: HashMap<String, u32> = serde_json::from_str(&read_text(path)?)
        .map_err(|e| anyhow!("{}: not a token → id map: {e}", path.display()))?;
    Ok(map.into_iter().collect())
}

/// `merges.txt`: a `#version` header, then one merge `left right` per line, in rank order;
/// both sides and their concatenation must be in the vocabulary. Blank lines are skipped.
fn read_merges(path: &Path, vocab: &Vocab) -> Result<Merges> {
    let text = read_text(path)?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.starts_with("#version") => {}
        _ => bail!("{} line 1: expected the '#version' header", path.display()),
    }
    let mut merges = Merges::new();
    for (i, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{} line {}", path.display(), i + 1);
        let (left, right) = match line.split(' ').collect::<Vec<_>>()[..] {
            [l, r] if !l.is_empty() && !r.is_empty() => (l, r),
            _ => bail!("{}: expected two tokens separated by one space, found {line:?}", at()),
        };
        check_merge(vocab, left, right, || format!("{}: merge {line:?}", at()), "vocab.json")?;
        merges.push((left.to_string(), right.to_string()));
    }
    Ok(merges)
}

/// Both sides of a merge and their concatenation must be in the vocabulary.
fn check_merge(vocab: &Vocab, left: &str, right: &str, at: impl Fn() -> String, source: &str) -> Result<()> {
    for token in [left.to_string(), right.to_string(), format!("{left}{right}")] {
        ensure!(
            vocab.contains_key(&token),
            "{} needs {token:?}, absent from {source}",
            at()
        );
    }
    Ok(())
}

/// `tokenizer.json`'s BPE `model`: `vocab` (token → id) and `merges` in rank order, each merge
/// `"left right"` (tokenizers < 0.20) or `["left", "right"]` (later). Its `added_tokens` must
/// already be in the vocabulary at the same id, as `check_added_tokens` asks of the config.
fn read_tokenizer_json(path: &Path) -> Result<Bpe> {
    let source = "tokenizer.json's model.vocab";
    let json: Value =
        serde_json::from_str(&read_text(path)?).map_err(|e| anyhow!("{}: invalid JSON: {e}", path.display()))?;
    let model = &json["model"];
    if let Some(kind) = model.get("type").and_then(Value::as_str) {
        ensure!(kind == "BPE", "{}: model.type is {kind:?}, not \"BPE\"", path.display());
    }
    let vocab = model
        .get("vocab")
        .ok_or_else(|| anyhow!("{}: no model.vocab", path.display()))?;
    let vocab: HashMap<String, u32> = serde_json::from_value(vocab.clone())
        .map_err(|e| anyhow!("{}: model.vocab is not a token → id map: {e}", path.display()))?;
    let vocab: Vocab = vocab.into_iter().collect();
    let entries = model.get("merges").and_then(Value::as_array);
    let entries = entries.ok_or_else(|| anyhow!("{}: no model.merges list", path.display()))?;
    let mut merges = Merges::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = || format!("{} model.merges[{i}] {entry}", path.display());
        let (left, right) = match entry {
            Value::String(s) => match s.split(' ').collect::<Vec<_>>()[..] {
                [l, r] => (l, r),
                _ => bail!("{}: expected two tokens separated by one space", at()),
            },
            Value::Array(pair) => match pair.iter().map(Value::as_str).collect::<Vec<_>>()[..] {
                [Some(l), Some(r)] => (l, r),
                _ => bail!("{}: expected two strings", at()),
            },
            _ => bail!("{}: expected \"left right\" or [\"left\", \"right\"]", at()),
        };
        ensure!(!left.is_empty() && !right.is_empty(), "{}: empty token", at());
        check_merge(&vocab, left, right, at, source)?;
        merges.push((left.to_string(), right.to_string()));
    }
    check_json_added_tokens(&json, path, &vocab)?;
    Ok(Bpe { vocab, merges, source })
}

/// `added_tokens` of `tokenizer.json`: each one `model.vocab`'s token at the same id.
fn check_json_added_tokens(json: &Value, path: &Path, vocab: &Vocab) -> Result<()> {
    for token in json.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
        let content = token.get("content").and_then(Value::as_str).unwrap_or_default();
        let id = token.get("id").and_then(Value::as_u64);
        ensure!(
            id.is_some() && vocab.get(content).map(|&v| v as u64) == id,
            "{}: added token {content:?} (id {}) is not model.vocab's; extra added tokens are unsupported",
            path.display(),
            token.get("id").unwrap_or(&Value::Null)
        );
    }
    Ok(())
}

/// bos/eos/pad/unk and the fixed length, from CLIP's defaults, overridden by
/// `tokenizer_config.json`, overridden by `special_tokens_map.json` (transformers' order).
struct SpecialTokens {
    bos: String,
    eos: String,
    pad: String,
    unk: String,
    max_length: usize,
}

impl SpecialTokens {
    /// CLIP's defaults.
    fn clip() -> Self {
        Self {
            bos: "<|startoftext|>".into(),
            eos: "<|endoftext|>".into(),
            pad: "<|endoftext|>".into(),
            unk: "<|endoftext|>".into(),
            max_length: CLIP_MAX_LENGTH,
        }
    }

    fn read(dir: &Path, bpe: &Bpe) -> Result<Self> {
        let vocab = &bpe.vocab;
        let mut tokens = Self::clip();
        let config_path = dir.join("tokenizer_config.json");
        if let Some(config) = read_json_if_present(&config_path)? {
            tokens.apply(&config, &config_path)?;
            tokens.max_length = max_length(&config, &config_path)?;
            check_added_tokens(&config, &config_path, bpe)?;
        }
        let map_path = dir.join("special_tokens_map.json");
        if let Some(map) = read_json_if_present(&map_path)? {
            tokens.apply(&map, &map_path)?;
        }
        for token in [&tokens.bos, &tokens.eos, &tokens.pad, &tokens.unk] {
            ensure!(
                vocab.contains_key(token.as_str()),
                "{}: special token {token:?} is absent from {}",
                dir.display(),
                bpe.source
            );
        }
        Ok(tokens)
    }

    /// Takes each special token given as a string or as an `AddedToken` object (`content`).
    fn apply(&mut self, json: &Value, path: &Path) -> Result<()> {
        for (key, slot) in [
            ("bos_token", &mut self.bos),
            ("eos_token", &mut self.eos),
            ("pad_token", &mut self.pad),
            ("unk_token", &mut self.unk),
        ] {
            match json.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => *slot = s.clone(),
                Some(v) => match v.get("content").and_then(Value::as_str) {
                    Some(s) => *slot = s.to_string(),
                    None => bail!(
                        "{}: '{key}' is neither a string nor an object with 'content'",
                        path.display()
                    ),
                },
            }
        }
        Ok(())
    }
}

fn read_json_if_present(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let json = serde_json::from_str(&read_text(path)?).map_err(|e| anyhow!("{}: invalid JSON: {e}", path.display()))?;
    Ok(Some(json))
}

/// `model_max_length` (CLIP's 77 when absent): at least 2 (room for bos and eos).
fn max_length(config: &Value, path: &Path) -> Result<usize> {
    let Some(v) = config.get("model_max_length") else {
        return Ok(CLIP_MAX_LENGTH);
    };
    match v.as_u64() {
        Some(n) if n >= 2 && n <= u32::MAX as u64 => Ok(n as usize),
        _ => bail!(
            "{}: model_max_length {v} is not a usable sequence length",
            path.display()
        ),
    }
}

/// Extra tokens in `added_tokens_decoder` would change the encoding; only tokens that are
/// already in the vocabulary at the same id (bos, eos, pad) are accepted.
fn check_added_tokens(config: &Value, path: &Path, bpe: &Bpe) -> Result<()> {
    let Some(added) = config.get("added_tokens_decoder").and_then(Value::as_object) else {
        return Ok(());
    };
    for (id, token) in added {
        let content = token.get("content").and_then(Value::as_str).unwrap_or_default();
        let in_vocab = bpe.vocab.get(content).map(|v| v.to_string());
        ensure!(
            in_vocab.as_deref() == Some(id.as_str()),
            "{}: added token {content:?} (id {id}) is not {}'s; extra added tokens are unsupported",
            path.display(),
            bpe.source
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    pub(super) fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd")
    }

    /// The prompts a fixture's goldens were computed from (`settings.prompts` of golden.json).
    pub(super) fn golden_prompts(folder: &str) -> Vec<String> {
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join(folder).join("golden.json")).unwrap())
                .unwrap();
        serde_json::from_value(json["settings"]["prompts"].clone()).unwrap()
    }

    fn golden_ids(folder: &str, file: &str, name: &str) -> Vec<Vec<u32>> {
        let golden = candle_core::safetensors::load(fixtures().join(folder).join(file), &Device::Cpu).unwrap();
        let ids = golden.get(name).unwrap_or_else(|| panic!("{folder}: no '{name}'"));
        let rows: Vec<Vec<i64>> = ids.to_vec2().unwrap();
        rows.into_iter()
            .map(|r| r.into_iter().map(|i| i as u32).collect())
            .collect()
    }

    fn check_golden(folder: &str, tokenizer: &str, file: &str, name: &str, prompts: &[String]) {
        let tok = ClipTokenizer::from_dir(&fixtures().join(folder).join(tokenizer)).unwrap();
        let expected = golden_ids(folder, file, name);
        assert_eq!(expected.len(), prompts.len());
        for (prompt, want) in prompts.iter().zip(&expected) {
            assert_eq!(&tok.encode(prompt).unwrap(), want, "{folder}/{tokenizer}: {prompt:?}");
        }
        let batch: Vec<Vec<u32>> = tok.encode_batch(prompts).unwrap().to_vec2().unwrap();
        assert_eq!(&batch, &expected);
    }

    #[test]
    fn pipeline_tokenizers_match_goldens() {
        for folder in ["sd1", "sd2", "sdxl"] {
            let prompts = golden_prompts(folder);
            check_golden(
                folder,
                "tokenizer",
                "golden.safetensors",
                "tokenizer.input_ids",
                &prompts,
            );
        }
        let prompts = golden_prompts("sdxl");
        check_golden(
            "sdxl",
            "tokenizer_2",
            "golden.safetensors",
            "tokenizer_2.input_ids",
            &prompts,
        );
        let tok2 = ClipTokenizer::from_dir(&fixtures().join("sdxl/tokenizer_2")).unwrap();
        assert_eq!(
            (tok2.bos_id(), tok2.eos_id(), tok2.pad_id(), tok2.max_length()),
            (512, 513, 0, 77)
        );
    }

    /// Merge ranks, `in` vs `in</w>`, case and whitespace folding, contractions, UTF-8 and
    /// emoji, and truncation (bos + 75 + eos).
    #[test]
    fn merges_match_goldens() {
        let prompts = golden_prompts("tokenizer_merges");
        assert_eq!(prompts.len(), 8);
        check_golden("tokenizer_merges", ".", "golden.safetensors", "input_ids", &prompts);
        check_golden(
            "sd1",
            "tokenizer",
            "../tokenizer_merges/golden.safetensors",
            "bytes_only.input_ids",
            &prompts,
        );
        let tok = ClipTokenizer::from_dir(&fixtures().join("tokenizer_merges")).unwrap();
        let long = tok.encode(&prompts[7]).unwrap();
        assert_eq!((long[0], long[76]), (tok.bos_id(), tok.eos_id()));
        assert!(!long[1..76].contains(&tok.pad_id()));
    }

    /// Prompts beyond the goldens, expected ids from transformers 5.24 `CLIPTokenizer`
    /// (`tokenizer(p, truncation=True, max_length=77).input_ids`, before padding). With
    /// `tokenizer_2` the pad token "!" is special: "!!" is two pad ids, not `!` + `!</w>`.
    #[rustfmt::skip]
    pub(super) const EDGE_CASES: &[(&str, &str, &[u32])] = &[
        ("sdxl/tokenizer_2", "wow!! great!", &[512, 86, 78, 342, 0, 0, 70, 81, 68, 64, 339, 0, 513]),
        ("sdxl/tokenizer_2", "a<|endoftext|>b <|startoftext|>", &[512, 320, 513, 321, 512, 513]),
        ("sdxl/tokenizer_2", "<|ENDOFTEXT|>", &[512, 27, 347, 68, 77, 67, 78, 69, 83, 68, 87, 339, 91, 285, 513]),
        ("sdxl/tokenizer_2", "nbsp\u{a0}here\u{3000}ideo\u{85}nel\u{200b}zw\u{feff}bom", &[512, 77, 65, 82, 335, 71, 68, 81, 324, 72, 67, 68, 334, 77, 68, 331, 158, 222, 489, 89, 342, 171, 119, 379, 65, 78, 332, 513]),
        ("sdxl/tokenizer_2", "\u{130}stanbul \u{1c5} \u{df} \u{fb01}", &[512, 328, 136, 485, 82, 83, 64, 77, 65, 84, 331, 131, 484, 127, 509, 171, 105, 479, 513]),
        ("sdxl/tokenizer_2", "e\u{301} composed", &[512, 127, 358, 66, 78, 76, 79, 78, 82, 68, 323, 513]),
        ("sdxl/tokenizer_2", "3.14 x\u{b2} \u{bd} \u{663}", &[512, 274, 269, 272, 275, 343, 126, 366, 126, 377, 149, 352, 513]),
        ("sdxl/tokenizer_2", "it's 'twas we'll I'M", &[512, 72, 339, 6, 338, 6, 339, 86, 64, 338, 86, 324, 6, 75, 331, 328, 6, 332, 513]),
        ("sdxl/tokenizer_2", "!'s '''s ''", &[512, 0, 6, 338, 6, 6, 262, 338, 6, 262, 513]),
        ("sdxl/tokenizer_2", "\u{65e5}\u{672c}\u{8a9e}\u{306e}\u{30c6}\u{30ad}\u{30b9}\u{30c8}", &[512, 162, 245, 98, 162, 250, 105, 164, 103, 252, 159, 223, 106, 159, 225, 228, 159, 224, 255, 159, 224, 117, 159, 225, 486, 513]),
        ("sdxl/tokenizer_2", "\u{1f642}\u{1f44d}\u{1f3fd} family \u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}", &[512, 172, 253, 247, 224, 172, 253, 239, 235, 172, 253, 237, 377, 69, 64, 76, 72, 75, 344, 172, 253, 239, 101, 158, 222, 235, 172, 253, 239, 102, 158, 222, 235, 172, 253, 239, 356, 513]),
        ("sdxl/tokenizer", "wow!! great!", &[512, 86, 78, 342, 0, 256, 70, 81, 68, 64, 339, 256, 513]),
        ("sdxl/tokenizer", "!'s '''s ''", &[512, 0, 262, 338, 6, 6, 262, 338, 6, 262, 513]),
        ("tokenizer_merges", "wow!! great!", &[532, 86, 521, 0, 256, 70, 81, 68, 519, 256, 533]),
        ("tokenizer_merges", "a<|endoftext|>b <|startoftext|>", &[532, 320, 533, 321, 532, 533]),
        ("tokenizer_merges", "tab\t\tand\n\nnewlines  ", &[532, 83, 64, 321, 64, 77, 323, 77, 68, 86, 75, 514, 68, 338, 533]),
        ("tokenizer_merges", "  leading and trailing  ", &[532, 75, 68, 64, 67, 515, 64, 77, 323, 83, 81, 64, 72, 75, 515, 533]),
        ("tokenizer_merges", "e\u{301} composed", &[532, 127, 358, 66, 78, 76, 79, 78, 82, 528, 533]),
    ];

    #[test]
    fn edge_cases_match_transformers() {
        for (folder, prompt, want) in EDGE_CASES {
            let tok = ClipTokenizer::from_dir(&fixtures().join(folder)).unwrap();
            let ids = tok.encode(prompt).unwrap();
            assert_eq!(&ids[..want.len()], *want, "{folder}: {prompt:?}");
            assert!(
                ids[want.len()..].iter().all(|&i| i == tok.pad_id()),
                "{folder}: {prompt:?} padding"
            );
        }
    }

    /// A scratch copy of a tokenizer folder with one file replaced (or removed with `None`).
    fn scratch(tag: &str, file: &str, content: Option<&str>) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dcm-clip-tok-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = fixtures().join("tokenizer_merges");
        for name in [
            "vocab.json",
            "merges.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            std::fs::copy(src.join(name), dir.join(name)).unwrap();
        }
        match content {
            Some(text) => std::fs::write(dir.join(file), text).unwrap(),
            None => std::fs::remove_file(dir.join(file)).unwrap(),
        }
        dir
    }

    pub(super) fn error_of(dir: &Path) -> String {
        let err = ClipTokenizer::from_dir(dir)
            .err()
            .expect("loading must fail")
            .to_string();
        std::fs::remove_dir_all(dir).unwrap();
        assert!(!err.contains('\n'), "one-line error: {err}");
        err
    }

    #[test]
    fn bad_files_are_named() {
        let err = error_of(&scratch("novocab", "vocab.json", None));
        assert!(err.contains("vocab.json"), "{err}");
        let err = error_of(&scratch("nomerges", "merges.txt", None));
        assert!(err.contains("merges.txt"), "{err}");
        let err = error_of(&scratch("header", "merges.txt", Some("t h\nth e</w>\n")));
        assert!(err.contains("merges.txt line 1"), "{err}");
        let err = error_of(&scratch(
            "malformed",
            "merges.txt",
            Some("#version: 0.2\nt h\nth e</w> x\n"),
        ));
        assert!(err.contains("merges.txt line 3"), "{err}");
        let err = error_of(&scratch("oov", "merges.txt", Some("#version: 0.2\nt h\nq z</w>\n")));
        assert!(err.contains("merges.txt line 3") && err.contains("qz</w>"), "{err}");
        let err = error_of(&scratch(
            "pad",
            "special_tokens_map.json",
            Some(r#"{"pad_token": "<pad>"}"#),
        ));
        assert!(err.contains("\"<pad>\""), "{err}");
        let err = error_of(&scratch(
            "len",
            "tokenizer_config.json",
            Some(r#"{"model_max_length": 1e30}"#),
        ));
        assert!(
            err.contains("tokenizer_config.json") && err.contains("model_max_length"),
            "{err}"
        );
    }

    /// The released vocabulary tokenizes as transformers' `CLIPTokenizer` on the same vocabulary
    /// does with either pad token, and as OpenCLIP's own tokenizer wherever the prompt holds no
    /// literal "!" (transformers then splits out the pad token "!" as id 0, OpenCLIP encodes
    /// "!</w>"); goldens in `single_file/clip_bpe_golden.json`.
    #[test]
    fn released_tokenizer_matches_transformers_and_open_clip() {
        let path = fixtures().join("single_file/clip_bpe_golden.json");
        let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let field = |k: &str| -> Vec<Vec<u32>> { serde_json::from_value(golden[k].clone()).unwrap() };
        let prompts: Vec<String> = serde_json::from_value(golden["prompts"].clone()).unwrap();
        let (bang, eot) = (
            ClipTokenizer::released("!").unwrap(),
            ClipTokenizer::released("<|endoftext|>").unwrap(),
        );
        let rows = prompts
            .iter()
            .zip(field("transformers_pad_bang"))
            .zip(field("transformers_pad_eot"));
        for (((prompt, want_bang), want_eot), open_clip) in rows.zip(field("open_clip")) {
            let ids = bang.encode(prompt).unwrap();
            assert_eq!(ids, want_bang, "{prompt:?}");
            assert_eq!(eot.encode(prompt).unwrap(), want_eot, "{prompt:?}");
            if !prompt.contains('!') {
                assert_eq!(ids, open_clip, "{prompt:?}");
            }
        }
    }

    /// transformers 4 writes special tokens as `AddedToken` objects; CRLF merges load too.
    #[test]
    fn added_token_objects_and_crlf() {
        let config = r#"{"model_max_length": 77, "pad_token": {"__type": "AddedToken", "content": "!"},
            "added_tokens_decoder": {"0": {"content": "!", "special": true}}}"#;
        let dir = scratch("objects", "tokenizer_config.json", Some(config));
        std::fs::write(dir.join("special_tokens_map.json"), "{}").unwrap();
        let merges = std::fs::read_to_string(dir.join("merges.txt"))
            .unwrap()
            .replace('\n', "\r\n");
        std::fs::write(dir.join("merges.txt"), merges).unwrap();
        let tok = ClipTokenizer::from_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(tok.pad_id(), 0);
        let ids = tok.encode("a photo of a cat").unwrap();
        assert_eq!(&ids[..10], &[532, 320, 524, 78, 525, 78, 325, 320, 531, 533]);
        assert_eq!(ids[10], 0);
    }
}

#[cfg(test)]
#[path = "tokenizer_json_tests.rs"]
mod json_tests;
