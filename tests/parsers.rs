//! Property-based robustness of every parser of user files: arbitrary corruptions
//! (truncation, byte flips, random bytes) of valid `.npy`, IDX, safetensors,
//! PNG and config files, of a Stable Diffusion pipeline folder's files (model_index.json,
//! component configs, vocab.json, merges.txt, UNet weights, shard indexes), of single-file and
//! PyTorch `.ckpt` checkpoints and of LoRA files (kohya layout),
//! give `Err`, or a value that passed validation — never a panic.
//! Each property runs `CASES` cases (2,000 by default; `PROPTEST_CASES` overrides).

use candle_core::{Device, Tensor};
use dcm::data::{idx, npy};
use dcm::nets::mlp::{Mlp, MlpConfig};
use proptest::prelude::*;
use std::io::Write;

const CASES: u32 = 2000;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A corruption of `good`: truncate, flip bytes, or replace a slice with random bytes.
fn corrupt(good: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = good.len();
    prop_oneof![
        (0..n).prop_map({
            let g = good.clone();
            move |cut| g[..cut].to_vec()
        }),
        proptest::collection::vec((0..n, any::<u8>()), 1..8).prop_map({
            let g = good.clone();
            move |flips| {
                let mut b = g.clone();
                for (i, v) in flips {
                    b[i] = v;
                }
                b
            }
        }),
        proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

fn tmp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("dcm-prop-{}-{name}", std::process::id()));
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

fn npy_bytes() -> Vec<u8> {
    npy::encode(
        &Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap(),
    )
    .unwrap()
}

fn idx_bytes() -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3];
    b.extend(0..18u8);
    b
}

fn mlp_config() -> MlpConfig {
    MlpConfig {
        sample_shape: vec![2],
        hidden: 4,
        depth: 1,
        time_dim: 4,
        num_classes: 2,
        schedule: Default::default(),
    }
}

fn safetensors_bytes() -> Vec<u8> {
    let params = mlp_config().init(&mut dcm::runtime::noise::seeded(0)).unwrap();
    safetensors::serialize(params, None).unwrap()
}

fn png_bytes() -> Vec<u8> {
    let img = image::GrayImage::from_fn(4, 4, |x, y| image::Luma([(x * 40 + y) as u8]));
    let mut b = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png)
        .unwrap();
    b
}

fn sd_fixture(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sd")
        .join(rel)
}

fn sd_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(sd_fixture(rel)).unwrap()
}

/// A scratch copy of a fixture folder (files only, no goldens), made once per property.
fn sd_copy(from: &str, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dcm-prop-sd-{}-{name}", std::process::id()));
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &target);
            } else if !path.to_string_lossy().contains("golden") && !target.exists() {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    copy(&sd_fixture(from), &dir);
    dir
}

/// Byte flips inside a safetensors file's header (8-byte length and JSON), where a random
/// flip of a large file rarely lands.
fn corrupt_safetensors_header(good: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    proptest::collection::vec((0..header, any::<u8>()), 1..4).prop_map(move |flips| {
        let mut b = good.clone();
        for (i, v) in flips {
            b[i] = v;
        }
        b
    })
}

fn sd1_unet_config() -> dcm::nets::sd::unet_config::UNetConfig {
    dcm::nets::sd::unet_config::UNetConfig::from_file(&sd_fixture("sd1/unet/config.json")).unwrap()
}

/// Fewer cases for properties that build a whole network per case.
fn heavy_config() -> ProptestConfig {
    let c = config();
    ProptestConfig {
        cases: (c.cases / 10).max(1),
        ..c
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn npy_never_panics(bytes in corrupt(npy_bytes())) {
        if let Ok(t) = npy::decode(&bytes) {
            // Whatever decodes must be backed by the file's bytes (float32 or float64 payload).
            let n = t.elem_count();
            prop_assert!(bytes.len() >= 10 + 4 * n);
        }
    }

    #[test]
    fn idx_never_panics(bytes in corrupt(idx_bytes())) {
        let p = tmp_file("idx", &bytes);
        if let Ok(t) = idx::read_images(&p) {
            prop_assert!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| (0.0..=1.0).contains(v)));
        }
        let _ = idx::read_labels(&p);
    }

    #[test]
    fn gzip_idx_never_panics(bytes in corrupt({
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&idx_bytes()).unwrap();
        e.finish().unwrap()
    })) {
        let _ = idx::read_images(&tmp_file("idxgz", &bytes));
    }

    #[test]
    fn safetensors_weights_never_panic(bytes in corrupt(safetensors_bytes())) {
        let dir = std::env::temp_dir().join(format!("dcm-prop-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
        if let Ok(params) = dcm::models::model_dir::load_params(&dir) {
            let _ = Mlp::new(mlp_config(), &params);
        }
    }

    #[test]
    fn png_folder_never_panics(bytes in corrupt(png_bytes())) {
        let dir = std::env::temp_dir().join(format!("dcm-prop-png-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("0")).unwrap();
        std::fs::write(dir.join("0").join("a.png"), &bytes).unwrap();
        let _ = dcm::data::image_folder::read(&dir);
    }

    #[test]
    fn captioned_folder_never_panics(
        meta in corrupt(b"{\"file_name\": \"a.png\", \"text\": \"a cat\"}\n".to_vec()),
        image in corrupt(png_bytes()),
    ) {
        let dir = std::env::temp_dir().join(format!("dcm-prop-captioned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("metadata.jsonl"), &meta).unwrap();
        std::fs::write(dir.join("a.png"), &image).unwrap();
        let opts = dcm::data::captioned::FolderOptions::default();
        if let Ok(f) = dcm::data::captioned::Folder::read(&dir, &opts) {
            if let Ok(images) = dcm::data::captioned::load_chunk(&f.entries, 4) {
                prop_assert_eq!(images.dims()[1..].to_vec(), vec![3, 4, 4]);
                prop_assert_eq!(images.dim(0).unwrap(), f.entries.len());
            }
        }
    }

    #[test]
    fn configs_never_panic(bytes in corrupt(serde_json::to_vec(&serde_json::json!({"net": mlp_config(), "data": "toy:moons", "autoencoder": null, "steps": 5, "seed": 0})).unwrap())) {
        let dir = std::env::temp_dir().join(format!("dcm-prop-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), &bytes).unwrap();
        if let Ok(cfg) = dcm::models::model_dir::load_config::<dcm::models::teacher::NetworkTeacherConfig>(&dir, dcm::models::model_dir::Kind::Teacher) {
            let _ = cfg.net.validate();
        }
    }

    #[test]
    fn sd_model_index_never_panics(bytes in corrupt(sd_bytes("sdxl/model_index.json"))) {
        let dir = sd_copy("sdxl", "index");
        std::fs::write(dir.join("model_index.json"), &bytes).unwrap();
        let _ = dcm::models::sd::pipeline::Pipeline::open(&dir);
    }

    #[test]
    fn sd_scheduler_config_never_panics(bytes in corrupt(sd_bytes("sd2/scheduler/scheduler_config.json"))) {
        let p = tmp_file("scheduler_config.json", &bytes);
        if let Ok(cfg) = dcm::models::sd::scheduler::SchedulerConfig::from_file(&p) {
            let s = &cfg.schedule;
            prop_assert!((1..=dcm::diffusion::schedule::T).all(|t| s.alpha_bar(t) > 0.0 && s.alpha_bar(t) < s.alpha_bar(t - 1)));
        }
    }

    #[test]
    fn sd_unet_config_never_panics(bytes in corrupt(sd_bytes("sdxl/unet/config.json"))) {
        let p = tmp_file("unet_config.json", &bytes);
        if let Ok(cfg) = dcm::nets::sd::unet_config::UNetConfig::from_file(&p) {
            let _ = cfg.lora_layers(&["to_q"]);
        }
    }

    /// A corrupted kohya LoRA file imports only as one rank-r adapter pair per target.
    #[test]
    fn sd_lora_file_never_panics(bytes in {
        let good = sd_bytes("lora/lora_kohya.safetensors");
        prop_oneof![corrupt(good.clone()), corrupt_safetensors_header(good)]
    }) {
        let p = tmp_file("lora_kohya.safetensors", &bytes);
        if let Ok(lora) = dcm::nets::sd::lora_files::import(&p, &sd1_unet_config(), Default::default()) {
            prop_assert!(lora.cfg.validate().is_ok() && !lora.targets.is_empty());
            prop_assert_eq!(lora.params.len(), 2 * lora.targets.len());
            for t in &lora.targets {
                prop_assert_eq!(lora.params[&format!("{t}.lora_A.weight")].dims()[0], lora.cfg.rank);
            }
        }
    }

    #[test]
    fn sd_vae_config_never_panics(bytes in corrupt(sd_bytes("sd1/vae/config.json"))) {
        let _ = dcm::nets::sd::vae::VaeConfig::from_file(&tmp_file("vae_config.json", &bytes));
    }

    #[test]
    fn sd_text_encoder_config_never_panics(bytes in corrupt(sd_bytes("sdxl/text_encoder_2/config.json"))) {
        let _ = dcm::nets::sd::clip_text::ClipTextConfig::from_file(&tmp_file("clip_config.json", &bytes));
    }

    #[test]
    fn sd_vocab_never_panics(bytes in corrupt(sd_bytes("tokenizer_merges/vocab.json"))) {
        let dir = sd_copy("tokenizer_merges", "vocab");
        std::fs::write(dir.join("vocab.json"), &bytes).unwrap();
        if let Ok(tok) = dcm::nets::sd::tokenizer::ClipTokenizer::from_dir(&dir) {
            let _ = tok.encode("a photo of a cat's ünïcode 🐈");
        }
    }

    #[test]
    fn sd_merges_never_panic(bytes in corrupt(sd_bytes("tokenizer_merges/merges.txt"))) {
        let dir = sd_copy("tokenizer_merges", "merges");
        std::fs::write(dir.join("merges.txt"), &bytes).unwrap();
        if let Ok(tok) = dcm::nets::sd::tokenizer::ClipTokenizer::from_dir(&dir) {
            let _ = tok.encode("a photo of a cat's ünïcode 🐈");
        }
    }
}

/// Every tensor of a checkpoint that opened loads finite (or is refused by name): no panic.
fn load_every_tensor(file: &dcm::models::sd::checkpoint::Checkpoint) -> Result<(), TestCaseError> {
    for name in file.names() {
        if let Ok(t) = file.load(&name, &Device::Cpu, candle_core::DType::F32) {
            if t.dtype().is_float() {
                let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                prop_assert!(v.iter().all(|x| x.is_finite()), "{name}");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Corrupted PyTorch zip archives (`.ckpt`): refused, or every tensor they give is finite.
    #[test]
    fn torch_checkpoint_never_panics(bytes in corrupt(sd_bytes("formats/tiny.ckpt"))) {
        let p = tmp_file("tiny.ckpt", &bytes);
        if let Ok(file) = dcm::models::sd::checkpoint::Checkpoint::open(&p) {
            load_every_tensor(&file)?;
        }
    }

    /// A corrupted shard index: refused, or the component loads with finite weights.
    #[test]
    fn shard_index_never_panics(bytes in corrupt(sd_bytes("formats/vae_sharded/diffusion_pytorch_model.safetensors.index.json"))) {
        let dir = sd_copy("formats/vae_sharded", "shards");
        std::fs::write(dir.join("diffusion_pytorch_model.safetensors.index.json"), &bytes).unwrap();
        let kind = dcm::models::sd::weights::WeightsKind::Diffusers;
        let _ = dcm::models::sd::weights::load_component(&dir, kind, &Device::Cpu, candle_core::DType::F32);
    }
}

proptest! {
    #![proptest_config(heavy_config())]

    /// A single-file checkpoint with a corrupted header opens only if every UNet tensor has its
    /// shape; then every tensor it gives is finite.
    #[test]
    fn single_file_never_panics(bytes in corrupt_safetensors_header(sd_bytes("single_file/sd1.safetensors"))) {
        let p = tmp_file("sd1.safetensors", &bytes);
        let options = dcm::models::sd::single_file::SingleFileOptions { config: Some(sd_fixture("sd1")), prediction: None };
        if dcm::models::sd::pipeline::Pipeline::open_with(&p, &options).is_ok() {
            load_every_tensor(&dcm::models::sd::checkpoint::Checkpoint::open(&p).unwrap())?;
        }
    }

    /// The teacher loads from a corrupted UNet file only if every tensor is there, finite and
    /// of the right shape; then it evaluates.
    #[test]
    fn sd_unet_weights_never_panic(bytes in {
        let good = sd_bytes("sd1/unet/diffusion_pytorch_model.safetensors");
        prop_oneof![corrupt(good.clone()), corrupt_safetensors_header(good)]
    }) {
        let dir = sd_copy("sd1", "unet");
        std::fs::write(dir.join("unet/diffusion_pytorch_model.safetensors"), &bytes).unwrap();
        if let Ok(teacher) = dcm::models::sd::SdTeacher::load(&dir, &Default::default()) {
            use dcm::diffusion::denoiser::Denoiser;
            let text = dcm::diffusion::condition::TextEmbedding {
                tokens: Tensor::zeros((1, 77, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
                pooled: None,
                time_ids: None,
            };
            let cond = dcm::diffusion::condition::Condition::Text { text: text.clone(), null: text };
            let x = Tensor::zeros((1, 4, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
            prop_assert!(teacher.eps(&x, &[500], &cond).is_ok());
        }
    }

    /// A LoRA file that imports (the fixture's kohya file, corrupted) fits the sd1 UNet: the
    /// UNet builds with it and evaluates.
    #[test]
    fn sd_lora_file_loads_into_the_unet(bytes in {
        let good = sd_bytes("lora/lora_kohya.safetensors");
        prop_oneof![corrupt(good.clone()), corrupt_safetensors_header(good)]
    }) {
        let p = tmp_file("lora_kohya_unet.safetensors", &bytes);
        if let Ok(lora) = dcm::nets::sd::lora_files::import(&p, &sd1_unet_config(), Default::default()) {
            let unet_file = sd_fixture("sd1/unet/diffusion_pytorch_model.safetensors");
            let mut params = dcm::nets::sd::weights::load_safetensors(&unet_file).unwrap();
            for (k, t) in &lora.params {
                params.insert(k.clone(), t.to_dtype(candle_core::DType::F32).unwrap());
            }
            let unet = dcm::nets::sd::unet::UNet::new(sd1_unet_config(), &params, Some(&lora.unet_lora()));
            prop_assert!(unet.is_ok(), "{:?}", unet.err());
            let text = dcm::diffusion::condition::TextEmbedding {
                tokens: Tensor::zeros((1, 77, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
                pooled: None,
                time_ids: None,
            };
            let x = Tensor::zeros((1, 4, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
            prop_assert!(unet.unwrap().forward(&x, &[500.0], &text, None).is_ok());
        }
    }
}

/// A valid `student.json` of an SD LoRA run, as `dcm distill --teacher sd:DIR` writes it.
fn sd_student_json() -> Vec<u8> {
    use dcm::models::sd::student::SdStudentConfig;
    let lora = dcm::nets::lora::LoraConfig { rank: 4, alpha: 4.0 };
    let method = dcm::consistency::objective::Method::compared()[0];
    let cfg = SdStudentConfig {
        teacher: "sd:/models/sd15".into(),
        teacher_options: Default::default(),
        data: "/data/images".into(),
        resolution: 512,
        uncond: "zeros".into(),
        lora_targets: vec!["to_q".into(), "conv1".into()],
        gradient_checkpointing: false,
        distill: dcm::train::distill::DistillConfig::paper_lora(method, lora),
        teacher_evaluations: 4000,
        train_seconds: 12.5,
        final_loss: 0.01,
        teacher_files: None,
    };
    serde_json::to_vec_pretty(&cfg).unwrap()
}

proptest! {
    #![proptest_config(config())]

    /// A corrupted `student.json` is read or refused with an error naming the file, never a
    /// panic; what reads back has settings that validate or are refused.
    #[test]
    fn sd_student_json_never_panics(bytes in corrupt(sd_student_json())) {
        let dir = std::env::temp_dir().join(format!("dcm-parsers-sd-student-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("student.json"), &bytes).unwrap();
        match dcm::models::sd::student::SdStudentConfig::load(&dir) {
            Ok(cfg) => {
                let _ = cfg.distill.validate();
            }
            Err(e) => prop_assert!(e.to_string().contains("student.json"), "{}", e),
        }
    }
}

/// The uncorrupted file reads back to the settings written (the corruption property starts
/// from a file that loads).
#[test]
fn sd_student_json_round_trips() {
    let dir = std::env::temp_dir().join(format!("dcm-parsers-sd-student-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("student.json"), sd_student_json()).unwrap();
    let cfg = dcm::models::sd::student::SdStudentConfig::load(&dir).unwrap();
    assert_eq!(
        (cfg.resolution, cfg.distill.intervals, cfg.distill.guidance),
        (512, 100, 9.0)
    );
    assert!(cfg.distill.validate().is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}
