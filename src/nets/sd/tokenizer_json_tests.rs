//! The `tokenizer.json`-only layout (transformers ≥ 5) against the `vocab.json` + `merges.txt`
//! one: every fixture folder holds both, written from the same tokenizer.

use super::tests::{error_of, fixtures, golden_prompts, EDGE_CASES};
use super::*;
use std::path::PathBuf;

/// Every tokenizer folder of the fixtures, with the golden.json holding its prompts.
const FOLDERS: &[(&str, &str)] = &[
    ("sd1/tokenizer", "sd1"),
    ("sd2/tokenizer", "sd2"),
    ("sdxl/tokenizer", "sdxl"),
    ("sdxl/tokenizer_2", "sdxl"),
    ("tokenizer_merges", "tokenizer_merges"),
];

/// A scratch copy of a fixture tokenizer folder without the files named in `drop`.
fn copy_without(folder: &str, tag: &str, drop: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dcm-clip-tokjson-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixtures().join(folder)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if path.is_file() && !name.contains("golden") && !drop.contains(&name.as_str()) {
            std::fs::copy(&path, dir.join(&name)).unwrap();
        }
    }
    dir
}

/// The JSON-only copy of `folder`, its `tokenizer.json` rewritten by `edit` when given.
fn json_only(folder: &str, tag: &str, edit: Option<&dyn Fn(&mut Value)>) -> PathBuf {
    let dir = copy_without(folder, tag, &["vocab.json", "merges.txt"]);
    if let Some(edit) = edit {
        let path = dir.join("tokenizer.json");
        let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut json);
        std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    }
    dir
}

/// The fixture's and the merges fixture's golden prompts, and every edge case.
fn all_prompts(golden: &str) -> Vec<String> {
    let mut prompts = golden_prompts(golden);
    prompts.extend(golden_prompts("tokenizer_merges"));
    prompts.extend(EDGE_CASES.iter().map(|(_, p, _)| p.to_string()));
    prompts.extend(["".to_string(), "a photo of a cat".into()]);
    prompts
}

fn assert_same_ids(classic: &ClipTokenizer, json: &ClipTokenizer, prompts: &[String], what: &str) {
    assert_eq!(
        (json.bos_id(), json.eos_id(), json.pad_id(), json.max_length()),
        (
            classic.bos_id(),
            classic.eos_id(),
            classic.pad_id(),
            classic.max_length()
        ),
        "{what}: special ids"
    );
    for prompt in prompts {
        assert_eq!(
            json.encode(prompt).unwrap(),
            classic.encode(prompt).unwrap(),
            "{what}: {prompt:?}"
        );
    }
}

#[test]
fn json_layout_gives_the_classic_ids() {
    for (i, (folder, golden)) in FOLDERS.iter().enumerate() {
        let classic = ClipTokenizer::from_dir(&fixtures().join(folder)).unwrap();
        let dir = json_only(folder, &format!("same{i}"), None);
        let json = ClipTokenizer::from_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_same_ids(&classic, &json, &all_prompts(golden), folder);
    }
}

/// Whichever form transformers wrote, the other form of the same merges loads the same.
#[test]
fn string_and_pair_merges_agree() {
    let classic = ClipTokenizer::from_dir(&fixtures().join("tokenizer_merges")).unwrap();
    let prompts = all_prompts("tokenizer_merges");
    for (tag, pairs) in [("strings", false), ("pairs", true)] {
        let rewrite = move |json: &mut Value| {
            let merges = json["model"]["merges"].as_array_mut().unwrap();
            assert!(!merges.is_empty());
            for merge in merges.iter_mut() {
                let (l, r) = match &*merge {
                    Value::String(s) => s.split_once(' ').map(|(l, r)| (l.to_string(), r.to_string())).unwrap(),
                    Value::Array(a) => (a[0].as_str().unwrap().into(), a[1].as_str().unwrap().into()),
                    other => panic!("merge {other}"),
                };
                *merge = if pairs {
                    serde_json::json!([l, r])
                } else {
                    Value::String(format!("{l} {r}"))
                };
            }
        };
        let dir = json_only("tokenizer_merges", tag, Some(&rewrite));
        let json = ClipTokenizer::from_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_same_ids(&classic, &json, &prompts, tag);
    }
}

#[test]
fn bad_json_layouts_are_named() {
    let all = ["vocab.json", "merges.txt", "tokenizer.json"];
    let err = error_of(&copy_without("tokenizer_merges", "none", &all));
    assert!(
        err.contains("vocab.json") && err.contains("merges.txt") && err.contains("tokenizer.json"),
        "{err}"
    );
    let dir = json_only("tokenizer_merges", "malformed", None);
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": {").unwrap();
    let err = error_of(&dir);
    assert!(err.contains("tokenizer.json") && err.contains("invalid JSON"), "{err}");
    let drop_vocab = |json: &mut Value| {
        json["model"].as_object_mut().unwrap().remove("vocab");
    };
    let err = error_of(&json_only("tokenizer_merges", "novocab", Some(&drop_vocab)));
    assert!(err.contains("tokenizer.json") && err.contains("model.vocab"), "{err}");
    let oov = |json: &mut Value| json["model"]["merges"][1] = serde_json::json!(["q", "z</w>"]);
    let err = error_of(&json_only("tokenizer_merges", "oov", Some(&oov)));
    assert!(
        err.contains("tokenizer.json") && err.contains("model.merges[1]") && err.contains("qz</w>"),
        "{err}"
    );
    let extra = |json: &mut Value| {
        let added = json["added_tokens"].as_array_mut().unwrap();
        added.push(serde_json::json!({"id": 534, "content": "<extra>", "special": true}));
    };
    let err = error_of(&json_only("tokenizer_merges", "extra", Some(&extra)));
    assert!(err.contains("tokenizer.json") && err.contains("<extra>"), "{err}");
}
