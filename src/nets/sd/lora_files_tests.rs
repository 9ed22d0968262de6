//! LoRA files against the fixtures diffusers + peft wrote (`tests/fixtures/sd/lora/`): each
//! layout gives diffusers' UNet output, export → import is exact, and malformed files give
//! one-line errors naming the key.

use crate::nets::layers::{Init, Params};
use crate::nets::lora::LoraConfig;
use crate::nets::sd::lora_files::{
    export, export_kohya, export_peft, import, KohyaNames, KohyaOptions, LoraFile, LoraLayout, TextEncoderParts,
    KOHYA_FILE, PEFT_FILE,
};
use crate::nets::sd::test_util::*;
use crate::nets::sd::unet::{UNet, DEFAULT_LORA_TARGETS};
use crate::nets::sd::unet_config::UNetConfig;
use crate::nets::sd::weights::load_safetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

const TOL: f64 = 1e-4;
const FIXTURE_CFG: LoraConfig = LoraConfig { rank: 4, alpha: 8.0 };
const CONV1: &str = "down_blocks.0.resnets.0.conv1";
const KOHYA_CONV1: &str = "lora_unet_down_blocks_0_resnets_0_conv1";

fn sd1_cfg() -> UNetConfig {
    unet_fixture("sd1").0
}

/// A scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dcm-lora-files-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The header metadata of a safetensors file.
fn header_metadata(path: &std::path::Path) -> HashMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default()
}

/// Writes `tensors` (and `metadata`) to `dir/name` and returns its path.
fn write(dir: &std::path::Path, name: &str, tensors: &Params, metadata: Option<HashMap<String, String>>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, safetensors::serialize(tensors.clone(), metadata).unwrap()).unwrap();
    path
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

/// Same names, shapes and bits.
fn assert_same(a: &Params, b: &Params) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in a {
        assert_eq!(t.dims(), b[k].dims(), "{k}");
        assert!(bits(t) == bits(&b[k]), "{k} differs");
    }
}

/// sd1 with `lora` attached against diffusers' `unet.out` (LoRA loaded); the max abs error.
fn unet_error(lora: &LoraFile) -> f64 {
    let (cfg, mut params) = unet_fixture("sd1");
    params.extend(lora.params.clone());
    let unet = UNet::new(cfg, &params, Some(&lora.unet_lora())).unwrap();
    assert_eq!(unet.adapted_layers().len(), lora.targets.len());
    let g = golden("lora/lora_golden.safetensors");
    let out = unet
        .forward(&g["unet.sample"], &timesteps(&g), &text(&g), None)
        .unwrap();
    max_abs_diff(&out, &g["unet.out"])
}

/// The fixture's PEFT file in dcm naming (the reference the other layouts must equal).
fn reference() -> LoraFile {
    import(
        &fixture("lora/lora_peft.safetensors"),
        &sd1_cfg(),
        TextEncoderParts::Refuse,
    )
    .unwrap()
}

/// Each of diffusers' three files gives diffusers' UNet output with the LoRA loaded, and the
/// same tensors in dcm naming (the mixed file's attention keys included, which diffusers 0.42
/// drops).
#[test]
fn each_fixture_layout_gives_diffusers_unet_output() {
    let want = reference();
    for (file, layout) in [
        ("lora_kohya.safetensors", LoraLayout::Kohya),
        ("lora_peft.safetensors", LoraLayout::Peft),
        ("lora_mixed.safetensors", LoraLayout::Mixed),
    ] {
        let lora = import(&fixture(&format!("lora/{file}")), &sd1_cfg(), TextEncoderParts::Refuse).unwrap();
        assert_eq!((lora.layout, lora.cfg), (layout, FIXTURE_CFG), "{file}");
        assert_eq!(lora.targets.len(), 79, "{file}");
        assert!(lora.rescaled.is_empty(), "{file}");
        assert_same(&lora.params, &want.params);
        let err = unet_error(&lora);
        eprintln!("{file}: UNet output vs diffusers {err:.2e}");
        assert!(err <= TOL, "{file}: {err}");
    }
    let mut targets = sd1_cfg().lora_layers(&DEFAULT_LORA_TARGETS).unwrap();
    targets.sort();
    let paths: Vec<String> = targets.into_iter().map(|(p, _)| p).collect();
    assert_eq!(want.targets, paths);
}

/// Export → import is bit-exact in both layouts with the same rank and alpha, and the kohya
/// export of the fixture's adapters is byte for byte the file diffusers wrote.
#[test]
fn export_import_round_trip_is_exact() {
    let lora = reference();
    let dir = scratch("round-trip");
    export(&dir, &sd1_cfg(), &lora.params, lora.cfg, &KohyaOptions::default()).unwrap();
    for (file, layout) in [(KOHYA_FILE, LoraLayout::Kohya), (PEFT_FILE, LoraLayout::Peft)] {
        let back = import(&dir.join(file), &sd1_cfg(), TextEncoderParts::Refuse).unwrap();
        assert_eq!((back.layout, back.cfg), (layout, lora.cfg), "{file}");
        assert_eq!(back.targets, lora.targets);
        assert!(back.rescaled.is_empty());
        assert_same(&back.params, &lora.params);
    }
    let ours = std::fs::read(dir.join(KOHYA_FILE)).unwrap();
    let theirs = std::fs::read(fixture("lora/lora_kohya.safetensors")).unwrap();
    assert!(ours == theirs, "kohya export differs from diffusers' file");
    let again = scratch("round-trip-again");
    export(&again, &sd1_cfg(), &lora.params, lora.cfg, &KohyaOptions::default()).unwrap();
    assert_eq!(
        std::fs::read(dir.join(PEFT_FILE)).unwrap(),
        std::fs::read(again.join(PEFT_FILE)).unwrap()
    );
    // A non-integral alpha and f16 factors survive too (alpha kept in f64 where f32 would round).
    let cfg = LoraConfig { rank: 4, alpha: 0.1 };
    let half = converted(&lora.params, DType::F16);
    export(&dir, &sd1_cfg(), &half, cfg, &KohyaOptions::default()).unwrap();
    for file in [KOHYA_FILE, PEFT_FILE] {
        let back = import(&dir.join(file), &sd1_cfg(), TextEncoderParts::Refuse).unwrap();
        assert_eq!(back.cfg, cfg, "{file}");
        let (a, b) = (converted(&back.params, DType::F32), converted(&half, DType::F32));
        assert_same(&a, &b);
        assert!(back.params.values().all(|t| t.dtype() == DType::F16));
    }
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&again).unwrap();
}

/// Every exported key names an adaptable module of the UNet (looked up independently of the
/// importer) with factor shapes fitting its weight; alpha is a 0-d f32; the PEFT metadata is
/// diffusers' (`format`, `lora_adapter_metadata` with `unet.r`, `unet.lora_alpha`,
/// `unet.target_modules`).
#[test]
fn exported_keys_map_to_modules_with_matching_shapes() {
    let lora = reference();
    let dir = scratch("keys");
    export(&dir, &sd1_cfg(), &lora.params, lora.cfg, &KohyaOptions::default()).unwrap();
    let layers: BTreeMap<String, Vec<usize>> = sd1_cfg().adaptable_layers().unwrap().into_iter().collect();
    let by_kohya: BTreeMap<String, &String> = layers.keys().map(|p| (p.replace('.', "_"), p)).collect();
    assert_eq!(by_kohya.len(), layers.len(), "kohya names are unique");
    let r = lora.cfg.rank;
    let expect = |path: &str, a: bool| {
        let base = &layers[path];
        match a {
            true => [&[r][..], &base[1..]].concat(),
            false => [vec![base[0], r], vec![1; base.len() - 2]].concat(),
        }
    };
    let kohya = load_safetensors(&dir.join(KOHYA_FILE)).unwrap();
    assert_eq!(kohya.len(), 3 * 79);
    for (key, t) in &kohya {
        let (flat, part) = key.strip_prefix("lora_unet_").unwrap().split_once('.').unwrap();
        let path = by_kohya[flat];
        match part {
            "lora_down.weight" => assert_eq!(t.dims(), expect(path, true), "{key}"),
            "lora_up.weight" => assert_eq!(t.dims(), expect(path, false), "{key}"),
            "alpha" => {
                assert_eq!((t.dims(), t.dtype()), (&[][..], DType::F32), "{key}");
                assert_eq!(t.to_scalar::<f32>().unwrap(), 8.0);
            }
            _ => panic!("unexpected key {key}"),
        }
    }
    let peft = load_safetensors(&dir.join(PEFT_FILE)).unwrap();
    assert_eq!(peft.len(), 2 * 79);
    for (key, t) in &peft {
        let name = key.strip_prefix("unet.").unwrap();
        let (path, a) = match name.strip_suffix(".lora_A.weight") {
            Some(p) => (p, true),
            None => (name.strip_suffix(".lora_B.weight").unwrap(), false),
        };
        assert_eq!(t.dims(), expect(path, a), "{key}");
    }
    assert_eq!(
        header_metadata(&dir.join(KOHYA_FILE)),
        HashMap::from([("format".into(), "pt".into())])
    );
    let meta = header_metadata(&dir.join(PEFT_FILE));
    assert_eq!(meta["format"], "pt");
    let json: serde_json::Value = serde_json::from_str(&meta["lora_adapter_metadata"]).unwrap();
    assert_eq!(json["unet.r"], serde_json::json!(4));
    assert_eq!(json["unet.lora_alpha"], serde_json::json!(8));
    assert_eq!(json["unet.target_modules"], serde_json::json!(lora.targets));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The fixture's kohya tensors, to be altered by a test.
fn kohya_tensors() -> Params {
    golden("lora/lora_kohya.safetensors")
}

/// Imports `tensors` written with `metadata` and returns the error text (which must be one
/// line naming the file).
fn import_error(name: &str, tensors: &Params, metadata: Option<HashMap<String, String>>) -> String {
    let dir = scratch(name);
    let path = write(&dir, "lora.safetensors", tensors, metadata);
    let err = import(&path, &sd1_cfg(), TextEncoderParts::Refuse)
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!err.contains('\n') && err.contains("lora.safetensors"), "{err}");
    err
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
}

/// A key naming no module, a shape mismatch, a factor without its partner, an alpha without
/// factors, text-encoder keys (by default), one module under both namings and other keys are
/// one-line errors naming the key.
#[test]
fn malformed_files_are_errors_naming_the_key() {
    let down = format!("{KOHYA_CONV1}.lora_down.weight");
    let up = format!("{KOHYA_CONV1}.lora_up.weight");
    let alpha = format!("{KOHYA_CONV1}.alpha");
    let with = |key: &str, t: Tensor| {
        let mut p = kohya_tensors();
        p.insert(key.to_string(), t);
        p
    };
    let without = |keys: &[&str]| {
        let mut p = kohya_tensors();
        for k in keys {
            p.remove(*k).unwrap();
        }
        p
    };
    let nowhere = "lora_unet_down_blocks_0_resnets_0_conv3.lora_down.weight";
    let cases: Vec<(&str, Params, Vec<&str>)> = vec![
        (
            "unknown",
            with(nowhere, zeros(&[4, 16, 3, 3])),
            vec![nowhere, "matches no module"],
        ),
        (
            "shape",
            with(&up, zeros(&[16, 4])),
            vec![&up, "shape [16, 4]", "[16, 4, 1, 1]"],
        ),
        ("partner", without(&[&up]), vec![&down, "no partner", &up]),
        ("alpha-only", without(&[&up, &down]), vec![&alpha, "no lora_down"]),
        (
            "rank",
            with(&down, zeros(&[2, 16, 3, 3])),
            vec![&up, "expected [16, 2, 1, 1]"],
        ),
        (
            "text-encoder",
            with(
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                zeros(&[4, 32]),
            ),
            vec![
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                "--lora-text-encoder ignore",
            ],
        ),
        (
            "peft-text-encoder",
            with(
                "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight",
                zeros(&[4, 32]),
            ),
            vec!["text_encoder.text_model", "--lora-text-encoder ignore"],
        ),
        (
            "dora",
            with(&format!("{KOHYA_CONV1}.dora_scale"), zeros(&[16, 1, 1, 1])),
            vec!["dora_scale", "not a LoRA factor"],
        ),
        (
            "ldm-name",
            with(
                "lora_unet_input_blocks_9_0_in_layers_2.lora_down.weight",
                zeros(&[4, 16, 3, 3]),
            ),
            vec!["lora_unet_input_blocks_9_0_in_layers_2", "matches no module"],
        ),
        (
            "ldm-and-diffusers-name",
            with(
                "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight",
                zeros(&[4, 16, 3, 3]),
            ),
            vec!["lora_unet_input_blocks_1_0_in_layers_2", &down, "same tensor"],
        ),
        (
            "alpha-zero",
            with(&alpha, Tensor::new(0f32, &Device::Cpu).unwrap()),
            vec![&alpha, "positive"],
        ),
        ("alpha-vector", with(&alpha, zeros(&[2])), vec![&alpha, "one number"]),
        (
            "nan",
            with(&up, (zeros(&[16, 4, 1, 1]) / 0.0).unwrap()),
            vec![&up, "NaN"],
        ),
        (
            "integer",
            with(&up, Tensor::zeros((16, 4, 1, 1), DType::U8, &Device::Cpu).unwrap()),
            vec![&up, "dtype"],
        ),
        (
            "duplicate",
            with(&format!("unet.{CONV1}.lora_A.weight"), zeros(&[4, 16, 3, 3])),
            vec![&down, "same tensor"],
        ),
        ("empty", Params::new(), vec!["no LoRA tensors"]),
    ];
    for (name, tensors, needles) in cases {
        let err = import_error(name, &tensors, None);
        eprintln!("{name}: {err}");
        for n in needles {
            assert!(err.contains(n), "{name}: '{n}' not in: {err}");
        }
    }
    let dir = scratch("not-safetensors");
    let path = dir.join("x.safetensors");
    std::fs::write(&path, b"not a file").unwrap();
    let err = import(&path, &sd1_cfg(), TextEncoderParts::Refuse)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x.safetensors") && err.contains("not a safetensors file"),
        "{err}"
    );
    let err = import(&dir.join("missing.safetensors"), &sd1_cfg(), TextEncoderParts::Refuse)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing.safetensors") && err.contains("cannot read"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// PEFT metadata: alpha = rank without it, `unet.r` must agree with the factors, DoRA and
/// rsLoRA are refused, `alpha_pattern` gives a module its own alpha.
#[test]
fn peft_metadata_sets_alpha() {
    let peft = golden("lora/lora_peft.safetensors");
    let meta = |json: serde_json::Value| Some(HashMap::from([("lora_adapter_metadata".to_string(), json.to_string())]));
    let dir = scratch("metadata");
    let bare = import(
        &write(&dir, "bare.safetensors", &peft, None),
        &sd1_cfg(),
        TextEncoderParts::Refuse,
    )
    .unwrap();
    assert_eq!(bare.cfg, LoraConfig { rank: 4, alpha: 4.0 });
    let pattern = meta(serde_json::json!({"unet.r": 4, "unet.lora_alpha": 8, "unet.alpha_pattern": {CONV1: 16}}));
    let lora = import(
        &write(&dir, "pattern.safetensors", &peft, pattern),
        &sd1_cfg(),
        TextEncoderParts::Refuse,
    )
    .unwrap();
    assert_eq!(
        (lora.cfg, lora.rescaled.clone()),
        (FIXTURE_CFG, vec![CONV1.to_string()])
    );
    let b = format!("{CONV1}.lora_B.weight");
    let doubled = (&peft[&format!("unet.{b}")] * 2.0).unwrap();
    assert!(bits(&lora.params[&b]) == bits(&doubled));
    std::fs::remove_dir_all(&dir).unwrap();
    for (name, json, needle) in [
        (
            "r",
            serde_json::json!({"unet.r": 8, "unet.lora_alpha": 8}),
            "'unet.r' 8",
        ),
        (
            "dora",
            serde_json::json!({"unet.r": 4, "unet.use_dora": true}),
            "use_dora",
        ),
        (
            "rslora",
            serde_json::json!({"unet.r": 4, "unet.use_rslora": true}),
            "use_rslora",
        ),
        (
            "alpha",
            serde_json::json!({"unet.lora_alpha": "8"}),
            "'unet.lora_alpha' is not a number",
        ),
        (
            "regex",
            serde_json::json!({"unet.alpha_pattern": {"down.*conv1": 2}}),
            "regular expression",
        ),
    ] {
        let err = import_error(name, &peft, meta(json));
        assert!(
            err.contains("lora_adapter_metadata") && err.contains(needle),
            "{name}: {err}"
        );
    }
    let err = import_error(
        "json",
        &peft,
        Some(HashMap::from([("lora_adapter_metadata".into(), "{".into())])),
    );
    assert!(err.contains("not JSON"), "{err}");
}

/// Kohya alphas per module: a module with its own alpha gets the ratio folded into B (here
/// alpha 16 with B halved: the same update, and exactly the fixture's tensors again); keys
/// with `base_model.model.` or no prefix name the same modules.
#[test]
fn per_module_alphas_and_prefixes() {
    let want = reference();
    let mut kohya = kohya_tensors();
    let up = format!("{KOHYA_CONV1}.lora_up.weight");
    kohya.insert(up.clone(), (&kohya[&up] * 0.5).unwrap());
    kohya.insert(
        format!("{KOHYA_CONV1}.alpha"),
        Tensor::new(16f32, &Device::Cpu).unwrap(),
    );
    let dir = scratch("alphas");
    let lora = import(
        &write(&dir, "k.safetensors", &kohya, None),
        &sd1_cfg(),
        TextEncoderParts::Refuse,
    )
    .unwrap();
    assert_eq!(
        (lora.cfg, lora.rescaled.clone()),
        (FIXTURE_CFG, vec![CONV1.to_string()])
    );
    assert_same(&lora.params, &want.params);
    for prefix in ["base_model.model.", "", "unet.base_model.model."] {
        let renamed: Params = (want.params.iter())
            .map(|(k, t)| (format!("{prefix}{k}"), t.clone()))
            .collect();
        let meta = HashMap::from([(
            "lora_adapter_metadata".to_string(),
            r#"{"unet.r": 4, "unet.lora_alpha": 8}"#.to_string(),
        )]);
        let back = import(
            &write(&dir, "p.safetensors", &renamed, Some(meta)),
            &sd1_cfg(),
            TextEncoderParts::Refuse,
        )
        .unwrap();
        assert_eq!((back.layout, back.cfg), (LoraLayout::Peft, FIXTURE_CFG), "'{prefix}'");
        assert_same(&back.params, &want.params);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Export refuses what no loader could use: names that are not dcm adapter names, modules the
/// UNet lacks, factors of another rank than the configuration's, or no adapters at all.
#[test]
fn export_rejects_adapters_that_do_not_fit() {
    let lora = reference();
    let dir = scratch("export-errors");
    let file = dir.join(KOHYA_FILE);
    let fails = |params: &Params, cfg: LoraConfig| {
        let k = export_kohya(&file, &sd1_cfg(), params, cfg, &KohyaOptions::default())
            .unwrap_err()
            .to_string();
        let p = export_peft(&dir.join(PEFT_FILE), &sd1_cfg(), params, cfg)
            .unwrap_err()
            .to_string();
        assert!(
            !k.contains('\n') && k.contains(KOHYA_FILE) && p.contains(PEFT_FILE),
            "{k} / {p}"
        );
        k
    };
    let mut p = lora.params.clone();
    p.insert("conv_in.weight".into(), zeros(&[16, 4, 3, 3]));
    assert!(fails(&p, lora.cfg).contains("'conv_in.weight' is not a LoRA factor"));
    let mut p = lora.params.clone();
    p.insert("mid_block.nothing.lora_A.weight".into(), zeros(&[4, 32]));
    assert!(fails(&p, lora.cfg).contains("'mid_block.nothing.lora_A.weight' matches no module"));
    let err = fails(&lora.params, LoraConfig { rank: 8, alpha: 8.0 });
    assert!(err.contains("rank 4") && err.contains("says 8"), "{err}");
    let mut p = lora.params.clone();
    p.remove(&format!("{CONV1}.lora_B.weight"));
    assert!(fails(&p, lora.cfg).contains("no partner"));
    assert!(fails(&Params::new(), lora.cfg).contains("no LoRA adapters"));
    assert!(!file.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Adapters on every linear and conv layer (not only the default targets) of each fixture
/// UNet, with random A and B, round-trip exactly through both layouts and the ldm-named kohya
/// file: the kohya names of all layers are unambiguous and found again by exact lookup.
#[test]
fn every_adaptable_layer_round_trips() {
    let cfg = LoraConfig { rank: 2, alpha: 3.0 };
    for model in ["sd1", "sd2", "sdxl", "lcm"] {
        let unet_cfg = UNetConfig::from_file(&fixture(&format!("{model}/unet/config.json"))).unwrap();
        let layers = unet_cfg.adaptable_layers().unwrap();
        let mut rng = crate::runtime::noise::seeded(7);
        let mut adapters = Params::new();
        for (path, shape) in &layers {
            crate::nets::lora::init_adapters(&mut adapters, path, shape, cfg, &mut rng).unwrap();
            let b = format!("{path}.lora_B.weight");
            let mut init = Init::new(&mut rng);
            init.uniform(&b, adapters[&b].dims(), 1.0).unwrap();
            adapters.append(&mut init.params);
        }
        let dir = scratch(&format!("all-{model}"));
        let ldm = KohyaOptions {
            names: KohyaNames::Ldm,
            info: None,
        };
        let ldm_file = dir.join("ldm.safetensors");
        match export_kohya(&ldm_file, &unet_cfg, &adapters, cfg, &ldm) {
            Ok(()) => {
                let back = import(&ldm_file, &unet_cfg, TextEncoderParts::Refuse).unwrap();
                assert_eq!((back.layout, back.cfg), (LoraLayout::KohyaLdm, cfg), "{model}");
                assert_same(&back.params, &adapters);
            }
            // LCM's guidance embedding exists only in diffusers' UNet.
            Err(e) => assert!(
                model == "lcm" && e.to_string().contains("time_embedding.cond_proj"),
                "{e}"
            ),
        }
        export(&dir, &unet_cfg, &adapters, cfg, &KohyaOptions::default()).unwrap();
        for file in [KOHYA_FILE, PEFT_FILE] {
            let back = import(&dir.join(file), &unet_cfg, TextEncoderParts::Refuse).unwrap();
            assert_eq!((back.cfg, back.targets.len()), (cfg, layers.len()), "{model} {file}");
            assert_same(&back.params, &adapters);
        }
        let (_, base) = unet_fixture(model);
        let mut params = base;
        let lora = import(&dir.join(KOHYA_FILE), &unet_cfg, TextEncoderParts::Refuse).unwrap();
        params.extend(lora.params.clone());
        let unet = UNet::new(unet_cfg, &params, Some(&lora.unet_lora())).unwrap();
        assert_eq!(unet.adapted_layers().len(), layers.len(), "{model}");
        eprintln!("{model}: {} adaptable layers round-trip", layers.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
