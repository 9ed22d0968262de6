//! Single-file checkpoints (`sd:FILE.safetensors`, `sd:FILE.ckpt`) against the diffusers folders
//! they were written from (tests/fixtures/sd/single_file, made by scripts/make_single_file.py and
//! checked there with diffusers' own `from_single_file`): every weight of every component reads
//! to the folder's bit for bit, `dcm sample` writes the same latents from the file as from the
//! folder for SD 1.x, SD 2.x (v-prediction) and SDXL, and what cannot be read is refused by name.

use candle_core::{Device, Tensor};
use dcm::data::npy;
use dcm::models::sd::pipeline::Pipeline;
use dcm::models::sd::single_file::SingleFileOptions;
use dcm::nets::layers::Params;
use dcm::runtime::device::Runtime;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd")
}

fn single(name: &str) -> PathBuf {
    fixtures().join("single_file").join(name)
}

fn with_config(model: &str) -> SingleFileOptions {
    SingleFileOptions {
        config: Some(fixtures().join(model)),
        prediction: None,
    }
}

/// Equal names and values; `text_model.` prefixes, which the text encoder's loader takes with or
/// without (docs/SD_FORMATS.md, "Text-encoder key prefixes"), are compared without.
fn assert_same(what: &str, a: &Params, b: &Params) {
    let plain = |p: &Params| -> Params {
        let kept = p.iter().filter(|(k, _)| !k.ends_with("position_ids"));
        kept.map(|(k, v)| (k.strip_prefix("text_model.").unwrap_or(k).to_string(), v.clone()))
            .collect()
    };
    let (a, b) = (plain(a), plain(b));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: parameter names"
    );
    for name in a.keys() {
        let (x, y) = (&a[name], &b[name]);
        assert_eq!(x.dims(), y.dims(), "{what}: {name}");
        let diff = (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{what}: {name}");
    }
}

/// Every component's weights, as diffusers names them, read from the file equal the folder's.
fn check_weights(model: &str, file: &str) {
    let rt = Runtime::default();
    let folder = Pipeline::open(&fixtures().join(model)).unwrap();
    let file = Pipeline::open_with(&single(file), &with_config(model)).unwrap();
    assert_eq!(folder.family(), file.family());
    assert_same(
        "unet",
        &folder.unet_params(&rt).unwrap().0,
        &file.unet_params(&rt).unwrap().0,
    );
    assert_eq!(folder.text_encoders(), file.text_encoders());
    for i in 0..folder.text_encoders() {
        let (a, b) = (folder.text_encoder(i, &rt).unwrap(), file.text_encoder(i, &rt).unwrap());
        assert_same(&format!("text encoder {i}"), &a.1, &b.1);
    }
    let (a, b) = (folder.vae(&rt).unwrap(), file.vae(&rt).unwrap());
    let z = Tensor::randn(0f32, 1.0, (1, 4, 4, 4), &Device::Cpu).unwrap();
    let (x, y) = (a.decode(&z).unwrap(), b.decode(&z).unwrap());
    let diff = (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "VAE decode");
}

#[test]
fn sd1_single_files_hold_the_folders_weights() {
    check_weights("sd1", "sd1.safetensors");
    check_weights("sd1", "sd1.ckpt");
}

#[test]
fn sd2_single_file_holds_the_folders_weights() {
    check_weights("sd2", "sd2.safetensors");
}

#[test]
fn sdxl_single_file_holds_the_folders_weights() {
    check_weights("sdxl", "sdxl.safetensors");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dcm-single-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn dcm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(args)
        .output()
        .expect("run dcm")
}

/// `dcm sample` latents from `teacher` with `extra` flags.
fn sample(dir: &Path, tag: &str, teacher: &str, extra: &[&str]) -> Tensor {
    let (noise, out) = (dir.join("noise.npy"), dir.join(format!("{tag}.npy")));
    if !noise.exists() {
        npy::write(&noise, &Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &Device::Cpu).unwrap()).unwrap();
    }
    let mut args = vec![
        "sample",
        "--teacher",
        teacher,
        "--prompt",
        "a red cube",
        "--intervals",
        "4",
        "--guidance",
        "2",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--noise", noise.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let o = dcm(&args);
    assert!(o.status.success(), "{tag}: {}", String::from_utf8_lossy(&o.stderr));
    npy::read(&out).unwrap()
}

/// `dcm sample --teacher sd:FILE --config DIR` writes the latents `--teacher sd:DIR` writes.
#[test]
fn cli_samples_from_single_files_equal_their_folders() {
    for (model, file) in [
        ("sd1", "sd1.safetensors"),
        ("sd2", "sd2.safetensors"),
        ("sdxl", "sdxl.safetensors"),
    ] {
        let dir = scratch(model);
        let folder = fixtures().join(model);
        let from_folder = sample(&dir, "folder", &format!("sd:{}", folder.display()), &[]);
        let config = folder.to_str().unwrap();
        let from_file = sample(
            &dir,
            "file",
            &format!("sd:{}", single(file).display()),
            &["--config", config],
        );
        let diff = (from_folder - from_file)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() <= 1e-6, "{model}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// `dcm sample` with `args`, a noise file and an output, refused with one line.
fn refusal(args: &[&str]) -> String {
    let dir = scratch("refusal");
    let noise = dir.join("noise.npy");
    npy::write(
        &noise,
        &Tensor::zeros((1, 4, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap();
    let out = dir.join("out.npy");
    let mut args = args.to_vec();
    args.extend_from_slice(&["--noise", noise.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let o = dcm(&args);
    assert!(!o.status.success(), "{args:?} succeeded");
    let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

/// A file of another architecture than the released one, an SD 2.x file without `--prediction`
/// and options given to a folder are refused naming the flag to give.
#[test]
fn unreadable_single_files_are_refused_by_name() {
    let sd1 = format!("sd:{}", single("sd1.safetensors").display());
    let e = refusal(&["sample", "--teacher", &sd1, "--prompt", "x"]);
    assert!(e.contains("not a released SD 1.x base model; give --config"), "{e}");
    let sd2 = format!("sd:{}", single("sd2.safetensors").display());
    let e = refusal(&["sample", "--teacher", &sd2, "--prompt", "x"]);
    assert!(e.contains("give --prediction epsilon or --prediction v"), "{e}");
    let folder = format!("sd:{}", fixtures().join("sd1").display());
    let e = refusal(&["sample", "--teacher", &folder, "--prediction", "v", "--prompt", "x"]);
    assert!(e.contains("apply only to single-file checkpoints"), "{e}");
    let e = refusal(&["sample", "--teacher", "gaussian:mean=0,std=1", "--prediction", "v"]);
    assert!(e.contains("--config and --prediction read single-file"), "{e}");
}
