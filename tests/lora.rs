//! LoRA students: the teacher is the student with its adapters off, only the adapters
//! train and reach the checkpoint, and merging them into the base weights changes nothing.
//! Stable Diffusion LoRA files through the CLI: `--lora-format ldm` writes kohya's ldm names
//! with the base-model metadata, and `--init-lora` starts a student from such a file.

use candle_core::{Device, Tensor};
use dcm::consistency::distance::Distance;
use dcm::consistency::objective::Method;
use dcm::data::Dataset;
use dcm::diffusion::condition::Condition;
use dcm::diffusion::denoiser::Denoiser;
use dcm::diffusion::solver::Solver;
use dcm::nets::lora::LoraConfig;
use dcm::nets::mlp::{Mlp, MlpConfig};
use dcm::nets::network::{AdaptersOff, NetConfig};
use dcm::runtime::noise::{seeded, standard_normal};
use dcm::train::checkpoint::load_checkpoint;
use dcm::train::distill::{distill, DistillConfig};
use dcm::train::optim::OptimConfig;
use dcm::train::trainer::Checkpointing;

fn net() -> MlpConfig {
    MlpConfig {
        sample_shape: vec![2, 3],
        hidden: 64,
        depth: 2,
        time_dim: 16,
        num_classes: 3,
        schedule: Default::default(),
    }
}

fn config(steps: usize) -> DistillConfig {
    DistillConfig {
        method: "direct".parse().unwrap(),
        solver: Solver::Ddim,
        intervals: 10,
        guidance: 2.0,
        steps,
        batch: 64,
        optim: OptimConfig {
            lr: 1e-3,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            cosine_decay: false,
        },
        loss: Distance::L2,
        ema_decay: None,
        lora: Some(LoraConfig { rank: 4, alpha: 8.0 }),
        grad_accum: 1,
        seed: 5,
    }
}

fn data() -> Dataset {
    let x = standard_normal(&mut seeded(1), (512, 2, 3), &Device::Cpu).unwrap();
    let labels = (0..512).map(|i| Some(i % 3)).collect();
    Dataset::new(x, labels, 3).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

#[test]
fn only_adapters_train_and_the_base_stays_the_teacher() {
    let teacher_params = net().init(&mut seeded(2)).unwrap();
    let teacher = Mlp::new(net(), &teacher_params).unwrap();
    let dir = std::env::temp_dir().join(format!("dcm-lora-{}", std::process::id()));
    let ckpt = Checkpointing {
        dir: Some(dir.clone()),
        every: 50,
        ..Default::default()
    };
    let cfg = config(200);
    let arch = NetConfig::Mlp(net());
    let out = distill(None, &arch, &teacher_params, &data(), &cfg, ckpt).unwrap();

    // The checkpoint holds the adapters and their optimizer state, nothing of the base.
    let (tensors, _) = load_checkpoint(&dir.join("checkpoint.safetensors")).unwrap();
    let params: Vec<&String> = tensors.keys().filter(|k| k.starts_with("param/")).collect();
    assert_eq!(params.len(), 2 * net().layers().len());
    assert!(params
        .iter()
        .all(|k| k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight")));
    std::fs::remove_dir_all(&dir).unwrap();

    // Training moved the student: its loss fell.
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    let (first, last) = (mean(&out.losses[..20]), mean(&out.losses[180..]));
    assert!(last < 0.7 * first, "loss {first:.3e} → {last:.3e}");

    // With adapters off the student is the teacher, bit for bit; the merged network
    // computes what the adapted one does.
    let adapters = out.adapters.expect("a LoRA run returns its adapters");
    let all = teacher_params.clone().into_iter().chain(adapters).collect();
    let student = arch.build(&all, cfg.lora).unwrap();
    let merged = arch.build(&out.params, None).unwrap();
    let x = standard_normal(&mut seeded(3), (9, 2, 3), &Device::Cpu).unwrap();
    let t = [1000, 900, 500, 500, 100, 10, 1, 700, 300];
    let c = Condition::Labels((0..9).map(|i| (i % 4 < 3).then_some(i % 3)).collect());
    let off = AdaptersOff(&*student).eps(&x, &t, &c).unwrap();
    let base = teacher.eps(&x, &t, &c).unwrap();
    assert_eq!(off.to_vec3::<f32>().unwrap(), base.to_vec3::<f32>().unwrap());
    let on = student.eps(&x, &t, &c).unwrap();
    assert!(max_diff(&on, &base) > 1e-4, "the adapters changed nothing");
    assert!(max_diff(&on, &merged.eps(&x, &t, &c).unwrap()) < 1e-5);
    assert!(student.adapters().is_on(), "the switch is restored after use");
}

/// A fresh adapter (B = 0) leaves the teacher unchanged: under either objective the first
/// loss of a LoRA student equals that of a fully fine-tuned student from the same weights.
#[test]
fn fresh_adapters_start_at_the_teacher() {
    let teacher_params = net().init(&mut seeded(2)).unwrap();
    let teacher = Mlp::new(net(), &teacher_params).unwrap();
    let arch = NetConfig::Mlp(net());
    for method in Method::all() {
        let cfg = DistillConfig { method, ..config(1) };
        let lora = distill(None, &arch, &teacher_params, &data(), &cfg, Default::default()).unwrap();
        let full_cfg = DistillConfig { lora: None, ..cfg };
        let full = distill(
            Some(&teacher),
            &arch,
            &teacher_params,
            &data(),
            &full_cfg,
            Default::default(),
        )
        .unwrap();
        assert_eq!(lora.losses, full.losses, "{method:?}");
    }
}

/// `dcm distill` of the tiny SD 1.x fixture for one step on three captioned images, into `out`.
fn sd_distill(out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let data = out.with_extension("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..3u8 {
        let img = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([40 * i, (x * 16) as u8, (y * 16) as u8]));
        img.save(data.join(format!("img{i}.png"))).unwrap();
        std::fs::write(data.join(format!("img{i}.txt")), format!("picture {i}")).unwrap();
    }
    let teacher = format!("sd:{}/tests/fixtures/sd/sd1", env!("CARGO_MANIFEST_DIR"));
    let mut args = vec!["distill", "--method", "direct", "--teacher", &teacher];
    let (data, out) = (data.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--data", data, "--out", out, "--intervals", "10", "--guidance", "2"]);
    args.extend(["--steps", "1", "--batch", "2", "--resolution", "16"]);
    args.extend(extra);
    std::process::Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(&args)
        .output()
        .unwrap()
}

fn succeeded(o: std::process::Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn failed(o: std::process::Output) -> String {
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

/// `--lora-format ldm` writes ldm module names and SD 1's metadata; `--init-lora` of that file
/// starts from its adapters (after one step at a negligible learning rate they are still the
/// file's), refuses a disagreeing `--lora-rank` naming both ranks, and `--lora-text-encoder`
/// without `--init-lora` is refused.
#[test]
fn sd_ldm_export_and_init_lora() {
    use dcm::nets::sd::lora_files::{import, TextEncoderParts};
    use dcm::nets::sd::unet_config::UNetConfig;
    let root = std::env::temp_dir().join(format!("dcm-lora-cli-{}", std::process::id()));
    let first = root.join("first");
    succeeded(sd_distill(&first, &["--lora-rank", "2", "--lora-format", "ldm"]));
    let file = first.join("lora.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["ss_base_model_version"], "sd_v1");
    assert_eq!(meta["modelspec.architecture"], "stable-diffusion-v1/lora");
    assert_eq!(meta["ss_network_dim"], "2");
    let names: Vec<String> = header.tensors().into_keys().collect();
    assert!(
        names.iter().any(|k| k.starts_with("lora_unet_input_blocks_")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|k| k.starts_with("lora_unet_down_blocks_")),
        "{names:?}"
    );

    let second = root.join("second");
    let init = file.to_str().unwrap();
    succeeded(sd_distill(&second, &["--init-lora", init, "--lr", "1e-12"]));
    let cfg = UNetConfig::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/sd1/unet/config.json"),
    )
    .unwrap();
    let a = import(&file, &cfg, TextEncoderParts::Refuse).unwrap();
    let b = import(&second.join("lora.safetensors"), &cfg, TextEncoderParts::Refuse).unwrap();
    assert_eq!((a.cfg, &a.targets), (b.cfg, &b.targets));
    for (k, t) in &a.params {
        assert!(max_diff(t, &b.params[k]) < 1e-6, "{k}");
    }

    let err = failed(sd_distill(
        &root.join("third"),
        &["--init-lora", init, "--lora-rank", "4"],
    ));
    assert!(err.contains("--lora-rank 4") && err.contains("rank 2"), "{err}");
    let err = failed(sd_distill(&root.join("fourth"), &["--lora-text-encoder", "ignore"]));
    assert!(err.contains("--init-lora"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}
