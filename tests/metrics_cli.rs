//! `dcm features` and `dcm fd` on the tiny CLIP fixture (tests/fixtures/sd/clip): the features
//! file holds exactly the network's features of the folder's images in file-name order, FD and
//! KD between two sets are the library's formulas on those features (FD zero for a set against
//! itself), and folders or flags that cannot be scored are refused in one line.

use candle_core::{Device, Tensor};
use dcm::data::npy;
use dcm::eval::metrics::fd::frechet_distance;
use dcm::eval::metrics::kd::kernel_distance;
use dcm::eval::metrics::to_matrix;
use dcm::nets::sd::clip_model::ClipModel;
use std::path::{Path, PathBuf};
use std::process::Command;

fn clip_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/clip")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dcm-metrics-{}-{name}", std::process::id()));
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

/// `n` seeded RGB images of 20×24 pixels named so that their sorted order is `order`.
fn image_folder(dir: &Path, seed: u8) -> Vec<Tensor> {
    std::fs::create_dir_all(dir).unwrap();
    (0..3u8)
        .map(|i| {
            let pixels: Vec<u8> = (0..20 * 24 * 3)
                .map(|j| ((j as u32 * 7 + i as u32 * 31 + seed as u32 * 13) % 251) as u8)
                .collect();
            let img = image::RgbImage::from_raw(24, 20, pixels.clone()).unwrap();
            img.save(dir.join(format!("img{}.png", 2 - i))).unwrap();
            Tensor::from_vec(pixels, (20, 24, 3), &Device::Cpu)
                .unwrap()
                .permute((2, 0, 1))
                .unwrap()
        })
        .rev()
        .collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn features_and_distances_are_the_networks_and_the_formulas() {
    let dir = scratch("ok");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let (images_a, images_b) = (image_folder(&a, 1), image_folder(&b, 2));
    let model = format!("clip:{}", clip_dir().display());
    let out = dir.join("a.npy");
    let o = dcm(&[
        "features",
        "--model",
        &model,
        "--images",
        a.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let clip = ClipModel::from_dir(&clip_dir(), &Device::Cpu, None).unwrap();
    let want = |images: &[Tensor]| {
        let u8s = Tensor::stack(images, 0).unwrap();
        clip.image_features(&(u8s.to_dtype(candle_core::DType::F32).unwrap() / 255.0).unwrap())
            .unwrap()
    };
    let features = npy::read(&out).unwrap();
    assert!(max_abs(&features, &want(&images_a)) <= 1e-6, "rows in file-name order");
    let o = dcm(&["fd", a.to_str().unwrap(), out.to_str().unwrap(), "--model", &model]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let value = |text: &str, key: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{key} "))).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    // FD of a set against itself is 0; the unbiased KD is not (its cross term keeps the diagonal).
    let same = to_matrix(&features).unwrap();
    let kd_same = kernel_distance(&same, &same).unwrap();
    assert!(value(&text, "fd").abs() < 1e-6, "{text}");
    assert!(
        (value(&text, "kd") - kd_same).abs() <= 1e-5 * kd_same.abs(),
        "{text} vs {kd_same}"
    );
    let o = dcm(&["fd", a.to_str().unwrap(), b.to_str().unwrap(), "--model", &model]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let (x, y) = (
        to_matrix(&want(&images_a)).unwrap(),
        to_matrix(&want(&images_b)).unwrap(),
    );
    let (fd, kd) = (frechet_distance(&x, &y).unwrap(), kernel_distance(&x, &y).unwrap());
    assert!(
        (value(&text, "fd") - fd).abs() <= 1e-5 * fd.abs().max(1.0),
        "{text} vs {fd}"
    );
    assert!(
        (value(&text, "kd") - kd).abs() <= 1e-5 * kd.abs().max(1e-3),
        "{text} vs {kd}"
    );
    assert_eq!(value(&text, "n_a"), 3.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn refusal(args: &[&str]) -> String {
    let o = dcm(args);
    assert!(!o.status.success(), "{args:?} succeeded");
    let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

#[test]
fn unscorable_sets_are_refused_in_one_line() {
    let dir = scratch("bad");
    let a = dir.join("a");
    image_folder(&a, 1);
    let model = format!("clip:{}", clip_dir().display());
    std::fs::write(a.join("notes.txt"), "x").unwrap();
    let e = refusal(&[
        "features",
        "--model",
        &model,
        "--images",
        a.to_str().unwrap(),
        "--out",
        dir.join("f.npy").to_str().unwrap(),
    ]);
    assert!(e.contains("notes.txt: not a PNG, JPEG or WebP image"), "{e}");
    std::fs::remove_file(a.join("notes.txt")).unwrap();
    let e = refusal(&["fd", a.to_str().unwrap(), a.to_str().unwrap()]);
    assert!(e.contains("--model: an image folder needs a network"), "{e}");
    let e = refusal(&["fd", a.to_str().unwrap(), a.to_str().unwrap(), "--model", "vgg:x"]);
    assert!(e.contains("--model 'vgg:x': expected clip:DIR"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
