//! The FID Inception against pytorch-fid on the goldens of scripts/make_inception_fixture.py
//! (tests/fixtures/inception): weights from a formula of each tensor's name and index, computed
//! here exactly as the script computes them, so the 91 MB of real weights stay out of git.

use super::inception::FidInception;
use super::inception_blocks::Target;
use super::inception_ops::resize_bilinear;
use super::kernels;
use super::layers::Params;
use super::pth::read_pth;
use crate::nets::feature_net::FeatureNet;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inception")
}

fn goldens() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("goldens.safetensors"), &Device::Cpu).unwrap()
}

/// keys.json: every tensor of pytorch-fid's FID Inception state dict, in order.
fn keys() -> Vec<(String, Vec<usize>, String)> {
    let text = std::fs::read_to_string(fixtures().join("keys.json")).unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    entries
        .iter()
        .map(|e| {
            let shape = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize);
            (
                e["name"].as_str().unwrap().to_string(),
                shape.collect(),
                e["dtype"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The script's `uniform`: FNV-1a of the name, splitmix64's finaliser of (hash ^ index·φ),
/// the top 24 bits as a value in [−1, 1).
fn uniform(name: &str, n: usize) -> impl Iterator<Item = f64> {
    let hash = name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    });
    (0..n as u64).map(move |i| {
        let mut z = hash ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f64 / 16_777_216.0 * 2.0 - 1.0
    })
}

/// The script's `formula`: the f32 values of tensor `name`.
fn formula(name: &str, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    let fan_in: usize = shape.iter().skip(1).product();
    let value = |u: f64| -> f32 {
        let v = if name.ends_with("conv.weight") {
            u * (6.0 / fan_in as f64).sqrt()
        } else if name.ends_with("bn.weight") {
            1.0 + 0.25 * u
        } else if name.ends_with("bn.running_var") {
            1.0 + 0.5 * u
        } else {
            0.1 * u
        };
        v as f32
    };
    Tensor::from_vec(uniform(name, n).map(value).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
}

/// The formula weights of every floating-point tensor in keys.json.
fn formula_params() -> Params {
    keys()
        .into_iter()
        .filter(|(_, _, dtype)| dtype == "float32")
        .map(|(name, shape, _)| {
            let t = formula(&name, &shape);
            (name, t)
        })
        .collect()
}

fn cpu_f32() -> Target {
    Target {
        device: Device::Cpu,
        dtype: DType::F32,
    }
}

/// max |got − want| / max |want|.
fn relative_error(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let diff = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    diff / scale
}

/// The network asks for exactly the tensors of pytorch-fid's state dict that InceptionV3([3])
/// uses — all but the classifier and BatchNorm's step counters — with their shapes, in the
/// file's order: a renamed, missing or reshaped layer would show here.
#[test]
fn requests_exactly_pytorch_fids_tensors() -> Result<()> {
    let mut requested = Vec::new();
    let mut fetch = |name: &str, shape: &[usize]| -> Result<Tensor> {
        requested.push((name.to_string(), shape.to_vec()));
        Ok(formula(name, shape))
    };
    FidInception::build(&mut fetch, cpu_f32())?;
    let want: Vec<(String, Vec<usize>)> = keys()
        .into_iter()
        .filter(|(name, _, _)| !name.starts_with("fc.") && !name.ends_with(".num_batches_tracked"))
        .map(|(name, shape, _)| (name, shape))
        .collect();
    assert_eq!(want.len(), 94 * 5, "keys.json lists 94 convolution + BatchNorm units");
    assert_eq!(requested, want);
    Ok(())
}

/// pytorch-fid's 2048-d features of two 40×56 images (upsampled to 299×299) agree to 1e-4
/// relative, and so do the stages on the way: the resized input and each block's channel means.
#[test]
fn features_match_pytorch_fid() -> Result<()> {
    let g = goldens();
    let net = FidInception::from_params(&formula_params(), "formula weights", &Device::Cpu, DType::F32)?;
    let x = net.preprocess(&g["images"])?;
    let sampled = x.index_select(&Tensor::arange_step(0u32, 299, 23, &Device::Cpu)?, 2)?;
    let sampled = sampled.index_select(&Tensor::arange_step(0u32, 299, 23, &Device::Cpu)?, 3)?;
    assert!(relative_error(&sampled, &g["resized_every_23"]) < 1e-6);
    let blocks = net.blocks(&x)?;
    for (i, b) in blocks[..3].iter().enumerate() {
        let means = b.flatten_from(2)?.mean(2)?;
        let err = relative_error(&means, &g[&format!("block{i}_mean")]);
        assert!(err < 1e-5, "block {i}: relative error {err}");
    }
    let features = net.features(&g["images"])?;
    let err = relative_error(&features, &g["features"]);
    assert!(err < 1e-4, "features: relative error {err}");
    assert_eq!(
        (features.dims(), net.dim(), net.name()),
        (&[2, 2048][..], 2048, "inception")
    );
    Ok(())
}

/// The generic ops (what a GPU runs) agree with the CPU kernels on a whole image, and an
/// image's features do not depend on the rest of its batch.
#[test]
fn generic_ops_and_batching_agree() -> Result<()> {
    let g = goldens();
    let net = FidInception::from_params(&formula_params(), "formula weights", &Device::Cpu, DType::F32)?;
    let images = g["images"].narrow(3, 0, 40)?.narrow(2, 0, 31)?;
    let fast = net.features(&images)?;
    let generic = kernels::with_generic_ops(|| net.features(&images))?;
    assert!(relative_error(&generic, &fast) < 1e-5);
    let alone = net.features(&images.narrow(0, 1, 1)?)?;
    assert_eq!(alone.to_vec2::<f32>()?, fast.narrow(0, 1, 1)?.to_vec2::<f32>()?);
    Ok(())
}

/// The resize is PyTorch's bilinear `interpolate` (align_corners=False), up and down.
#[test]
fn resize_matches_pytorch() -> Result<()> {
    let g = goldens();
    for (key, h, w) in [("resize_down_11x13", 11, 13), ("resize_up_33x41", 33, 41)] {
        let got = resize_bilinear(&g["resize_in"], h, w)?;
        let err = relative_error(&got, &g[key]);
        assert!(err < 1e-6, "{key}: relative error {err}");
    }
    Ok(())
}

/// Both torch.save formats — the zip archive and the legacy stream the released weights use —
/// give the saved tensors bit for bit, the integer step counter included.
#[test]
fn reads_both_pth_formats() -> Result<()> {
    for file in ["stem_zip.pth", "stem_legacy.pth"] {
        let params = read_pth(&fixtures().join(file))?;
        let names: Vec<&str> = params.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 6, "{file}: {names:?}");
        for (name, shape) in [
            ("Conv2d_1a_3x3.conv.weight", vec![32, 3, 3, 3]),
            ("Conv2d_1a_3x3.bn.weight", vec![32]),
            ("Conv2d_1a_3x3.bn.bias", vec![32]),
            ("Conv2d_1a_3x3.bn.running_mean", vec![32]),
            ("Conv2d_1a_3x3.bn.running_var", vec![32]),
        ] {
            let got = params[name].flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(
                got,
                formula(name, &shape).flatten_all()?.to_vec1::<f32>()?,
                "{file}: {name}"
            );
        }
        let steps = &params["Conv2d_1a_3x3.bn.num_batches_tracked"];
        assert_eq!((steps.dtype(), steps.rank()), (DType::I64, 0), "{file}");
    }
    Ok(())
}

fn error_of<T>(r: Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

/// A file that is not pytorch-fid's weights, a missing or reshaped tensor, and a cut-off file
/// are each refused in one line naming the file and the tensor.
#[test]
fn bad_weights_are_refused_by_name() -> Result<()> {
    let stem = fixtures().join("stem_legacy.pth");
    let mut errors = Vec::new();
    let e = error_of(FidInception::load(&stem, &Device::Cpu, DType::F32));
    assert!(
        e.contains("stem_legacy.pth") && e.contains("'Conv2d_2a_3x3.conv.weight'"),
        "{e}"
    );
    errors.push(e);
    let e = error_of(FidInception::load(
        &fixtures().join("keys.json"),
        &Device::Cpu,
        DType::F32,
    ));
    assert!(e.contains("keys.json") && e.contains("not a PyTorch .pth file"), "{e}");
    errors.push(e);
    let mut params = formula_params();
    let name = "Mixed_6c.branch7x7_2.conv.weight";
    params.insert(name.into(), Tensor::zeros((160, 160, 7, 1), DType::F32, &Device::Cpu)?);
    let e = error_of(FidInception::from_params(&params, "w.pth", &Device::Cpu, DType::F32));
    assert!(
        e.contains("w.pth") && e.contains(name) && e.contains("[160, 160, 1, 7]"),
        "{e}"
    );
    errors.push(e);
    let bytes = std::fs::read(&stem)?;
    let cut = std::env::temp_dir().join(format!("dcm-inception-cut-{}.pth", std::process::id()));
    std::fs::write(&cut, &bytes[..bytes.len() - 100])?;
    let e = error_of(read_pth(&cut));
    std::fs::remove_file(&cut)?;
    assert!(e.contains("dcm-inception-cut") && e.contains("cut off"), "{e}");
    errors.push(e);
    for e in errors {
        assert!(!e.contains('\n'), "{e}");
    }
    Ok(())
}

/// A `.pth` that names a Python global tensor files do not need (`os.system`) is refused by
/// name before anything is read, in the legacy format and in the zip archive alike (the
/// pipelines' `malicious.ckpt` fixture).
#[test]
fn pth_files_naming_code_are_refused() -> Result<()> {
    let mut legacy = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e".to_vec();
    legacy.extend_from_slice(b"\x80\x02M\xe9\x03.");
    legacy.extend_from_slice(b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.");
    let path = std::env::temp_dir().join(format!("dcm-legacy-code-{}.pth", std::process::id()));
    std::fs::write(&path, &legacy)?;
    let e = error_of(read_pth(&path));
    std::fs::remove_file(&path)?;
    assert!(e.contains("dcm-legacy-code") && e.contains("os.system"), "{e}");
    let zip = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/formats/malicious.ckpt");
    let e = error_of(read_pth(&zip));
    assert!(e.contains("malicious.ckpt") && e.contains("refused"), "{e}");
    Ok(())
}

/// Images outside [0, 1] (0–255 pixels) or not RGB would give features unlike pytorch-fid's:
/// refused.
#[test]
fn bad_images_are_refused() -> Result<()> {
    let net = FidInception::build(&mut |name, shape| Ok(formula(name, shape)), cpu_f32())?;
    let e = error_of(net.features(&Tensor::full(255f32, (1, 3, 8, 8), &Device::Cpu)?));
    assert!(e.contains("[0, 1]"), "{e}");
    let e = error_of(net.features(&Tensor::zeros((1, 1, 8, 8), DType::F32, &Device::Cpu)?));
    assert!(e.contains("[B, 3, H, W]"), "{e}");
    Ok(())
}
