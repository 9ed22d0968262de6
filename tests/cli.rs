//! The `dcm` binary: documented command shapes work, and every bad flag or file
//! ends in a one-line error with exit code 2, never a panic.

use dcm::data::npy;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dcm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(args)
        .output()
        .expect("run dcm")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dcm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write_noise(path: &Path, rows: usize, dim: usize) {
    let noise = dcm::runtime::noise::standard_normal(
        &mut dcm::runtime::noise::seeded(11),
        (rows, dim),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    npy::write(path, &noise).unwrap();
}

fn assert_clean_failure(args: &[&str], needle: &str) {
    let out = dcm(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?} should exit 2; stderr: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(err.contains(needle), "{args:?}: expected '{needle}' in: {err}");
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{args:?}: error must be one line: {err}"
    );
}

#[test]
fn teacher_sample_matches_the_exact_gaussian_solution() {
    let (noise, out) = (tmp("n.npy"), tmp("o.npy"));
    write_noise(&noise, 64, 3);
    let o = dcm(&[
        "sample",
        "--teacher",
        "gaussian:mean=1,std=0.5",
        "--solver",
        "heun",
        "--intervals",
        "100",
        "--noise",
        noise.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let x = npy::read(&noise).unwrap();
    let y = npy::read(&out).unwrap();
    assert_eq!(y.dims(), &[64, 3]);
    let g = dcm::diffusion::analytic::Gaussian {
        mean: 1.0,
        std: 0.5,
        dim: None,
        schedule: Default::default(),
    };
    let exact = g.exact_solution(&x, &[1000; 64]).unwrap();
    let mse = dcm::eval::ode_error::ode_error(&y, &exact).unwrap();
    assert!(mse < 1e-5, "Heun N=100 MSE to the exact solution {mse}");
}

#[test]
fn bad_inputs_fail_cleanly() {
    let noise = tmp("ok.npy");
    write_noise(&noise, 4, 2);
    let n = noise.to_str().unwrap();
    let out = tmp("out.npy");
    let o = out.to_str().unwrap();
    let garbled = tmp("garbled.npy");
    std::fs::write(&garbled, b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'").unwrap();
    let g = garbled.to_str().unwrap();
    assert_clean_failure(
        &[
            "sample",
            "--teacher",
            "gaussian:mean=0,std=1",
            "--noise",
            "/nonexistent.npy",
            "--out",
            o,
        ],
        "/nonexistent.npy",
    );
    assert_clean_failure(
        &["sample", "--teacher", "gaussian:mean=0,std=1", "--noise", g, "--out", o],
        "garbled.npy",
    );
    assert_clean_failure(
        &[
            "sample",
            "--teacher",
            "gaussian:mean=0,std=1",
            "--intervals",
            "7",
            "--noise",
            n,
            "--out",
            o,
        ],
        "must divide",
    );
    assert_clean_failure(
        &[
            "sample",
            "--teacher",
            "gaussian:mean=0,std=1",
            "--solver",
            "rk4",
            "--noise",
            n,
            "--out",
            o,
        ],
        "rk4",
    );
    assert_clean_failure(
        &[
            "sample",
            "--teacher",
            "gaussian:mean=0,std=-1",
            "--noise",
            n,
            "--out",
            o,
        ],
        "std must be positive",
    );
    assert_clean_failure(
        &[
            "sample",
            "--teacher",
            "gaussian:mean=0,std=1,dim=3",
            "--noise",
            n,
            "--out",
            o,
        ],
        "dim=3",
    );
    assert_clean_failure(
        &[
            "sample",
            "--teacher",
            "mixture:means=0:0/1,std=1",
            "--noise",
            n,
            "--out",
            o,
        ],
        "same dimension",
    );
    assert_clean_failure(
        &[
            "sample",
            "--teacher",
            "mixture:ring",
            "--class",
            "9",
            "--noise",
            n,
            "--out",
            o,
        ],
        "class 9",
    );
    assert_clean_failure(&["sample", "--teacher", "nope", "--noise", n, "--out", o], "nope");
    assert_clean_failure(
        &["sample", "--student", "/nonexistent", "--noise", n, "--out", o],
        "not a folder",
    );
    assert_clean_failure(
        &["distill", "--method", "cmx", "--teacher", "mixture:ring", "--out", o],
        "cmx",
    );
    assert_clean_failure(
        &[
            "distill",
            "--method",
            "cm",
            "--teacher",
            "gaussian:mean=0,std=1",
            "--out",
            o,
        ],
        "needs --data",
    );
    assert_clean_failure(
        &[
            "distill",
            "--method",
            "cm",
            "--teacher",
            "mixture:ring",
            "--data",
            "toy:donut",
            "--out",
            o,
        ],
        "donut",
    );
    assert_clean_failure(&["train-teacher", "--data", g, "--out", o], "garbled.npy");
}

#[test]
fn distill_eval_and_student_sampling_work_from_the_command_line() {
    let dir = tmp("student");
    let d = dir.to_str().unwrap();
    let o = dcm(&[
        "distill",
        "--method",
        "direct",
        "--teacher",
        "mixture:ring",
        "--unconditional",
        "--intervals",
        "10",
        "--steps",
        "300",
        "--out",
        d,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["config.json", "model.safetensors", "train_log.csv"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("train_log.csv"))
            .unwrap()
            .lines()
            .count(),
        301
    );
    let o = dcm(&["eval", "--student", d, "--samples", "200"]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for k in ["| 1 |", "| 2 |", "| 4 |", "| 8 |"] {
        assert!(table.contains(k), "eval table lacks row {k}: {table}");
    }
    let (noise, out) = (tmp("sn.npy"), tmp("so.npy"));
    write_noise(&noise, 16, 2);
    let o = dcm(&[
        "sample",
        "--student",
        d,
        "--steps",
        "2",
        "--noise",
        noise.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(npy::read(&out).unwrap().dims(), &[16, 2]);
    assert_clean_failure(
        &[
            "sample",
            "--student",
            d,
            "--steps",
            "11",
            "--noise",
            noise.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        "--steps 11",
    );
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mismatched = config.replace(
        "\"teacher\": \"mixture:ring\"",
        "\"teacher\": \"gaussian:mean=0,std=1,dim=3\"",
    );
    assert_ne!(mismatched, config);
    std::fs::write(dir.join("config.json"), &mismatched).unwrap();
    assert_clean_failure(&["eval", "--student", d], "no longer matches");
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"hidden\": 128", "\"hidden\": \"wide\""),
    )
    .unwrap();
    assert_clean_failure(&["eval", "--student", d], "config.json: invalid configuration");
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"hidden\": 128", "\"hidden\": 0"),
    )
    .unwrap();
    assert_clean_failure(&["eval", "--student", d], "hidden and depth must be positive");
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"hidden\": 128", "\"hidden\": 64"),
    )
    .unwrap();
    assert_clean_failure(&["eval", "--student", d], "expected [64");
    std::fs::write(dir.join("config.json"), &config).unwrap();
    std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
    assert_clean_failure(&["eval", "--student", d], "model.safetensors");
}

#[test]
fn a_trained_network_teacher_can_be_sampled_with_guidance() {
    let dir = tmp("teacher");
    let d = dir.to_str().unwrap();
    let o = dcm(&[
        "train-teacher",
        "--data",
        "toy:moons",
        "--steps",
        "200",
        "--hidden",
        "64",
        "--out",
        d,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (noise, out) = (tmp("tn.npy"), tmp("to.npy"));
    write_noise(&noise, 8, 2);
    let o = dcm(&[
        "sample",
        "--teacher",
        d,
        "--guidance",
        "2",
        "--class",
        "1",
        "--intervals",
        "20",
        "--noise",
        noise.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let y = npy::read(&out).unwrap().to_vec2::<f32>().unwrap();
    assert!(y.iter().flatten().all(|v| v.is_finite()));
    assert_clean_failure(
        &[
            "sample",
            "--teacher",
            d,
            "--class",
            "2",
            "--noise",
            noise.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        "class 2",
    );
}

#[test]
fn bench_reports_every_workload_and_the_direct_saving() {
    let o = dcm(&[
        "bench",
        "--json",
        "--dim",
        "8",
        "--hidden",
        "32",
        "--depth",
        "1",
        "--batch",
        "100",
        "--intervals",
        "50",
        "--repeats",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = r["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "teacher forward",
            "teacher 50-interval guided DDIM sampling",
            "one CM distillation step",
            "one Direct distillation step",
            "autoencoder decode",
            "feature network forward"
        ]
    );
    // The conv workloads run the shipped sizes; bench/compare.sh asserts these against PyTorch.
    assert_eq!(r["conv_parameters"], serde_json::json!([15201, 458570]));
    assert!(r["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["seconds"].as_f64().unwrap() > 0.0));
    // Start times spread evenly over N = 50 intervals: the active set saves exactly 2N/(N+1).
    let ratio = r["direct_evaluation_ratio"].as_f64().unwrap();
    assert!((ratio - 100.0 / 51.0).abs() < 1e-12, "{ratio}");
    // in 8→32, embedding (64 time + 64 class)→32, one 32→32 block, out 32→8, 11 class rows of 64.
    let expected = (8 * 32 + 32) + (128 * 32 + 32) + (32 * 32 + 32) + (32 * 8 + 8) + 11 * 64;
    assert_eq!(r["parameters"].as_u64().unwrap(), expected);
}

/// `--workload unet` refuses the MLP workloads' flags and the MLP workloads the UNet's (each
/// would otherwise be ignored silently); a latent size the UNet cannot halve three times is
/// refused before any weights are drawn, and so is bf16 on the CPU.
#[test]
fn bench_refuses_the_other_workloads_flags() {
    assert_clean_failure(
        &["bench", "--workload", "unet", "--hidden", "16", "--intervals", "10"],
        "--hidden, --intervals cannot be set for --workload unet",
    );
    assert_clean_failure(&["bench", "--size", "64"], "--size cannot be set for --workload mlp");
    assert_clean_failure(&["bench", "--workload", "unet", "--size", "12"], "a multiple of 8");
    assert_clean_failure(&["bench", "--workload", "unet", "--batch", "0"], "must be positive");
    assert_clean_failure(&["bench", "--workload", "unet", "--dtype", "bf16"], "no bf16");
}

/// Every computing command takes `--device` and `--dtype`; a CPU build refuses CUDA on one line.
#[test]
fn every_command_takes_a_device_and_a_dtype() {
    if candle_core::utils::cuda_is_available() {
        return;
    }
    let (noise, out, dir) = (tmp("dn.npy"), tmp("do.npy"), tmp("dev-run"));
    write_noise(&noise, 4, 2);
    let (n, o, d) = (noise.to_str().unwrap(), out.to_str().unwrap(), dir.to_str().unwrap());
    let commands: [&[&str]; 8] = [
        &["sample", "--teacher", "mixture:ring", "--noise", n, "--out", o],
        &["distill", "--method", "cm", "--teacher", "mixture:ring", "--out", d],
        &["eval", "--student", d],
        &["train-teacher", "--data", "toy:ring", "--out", d],
        &["train-autoencoder", "--out", d],
        &["train-featnet", "--out", d],
        &["reproduce", "--preset", "smoke", "--out", d],
        &["bench"],
    ];
    for args in commands {
        let with = |extra: &[&'static str]| [args, extra].concat();
        assert_clean_failure(&with(&["--device", "cuda"]), "without the `cuda` feature");
        assert_clean_failure(&with(&["--dtype", "f64"]), "--dtype f64: expected f32, f16 or bf16");
    }
}

/// A LoRA student of a network teacher from the command line: the folder holds the merged
/// weights and the adapters alone, and samples like any student.
#[test]
fn lora_students_train_save_and_sample() {
    let home = Path::new(env!("CARGO_MANIFEST_DIR"));
    let teacher = home.join("models/teacher");
    let (latents, noise, out, dir) = (tmp("lat.npy"), tmp("ln.npy"), tmp("lo.npy"), tmp("lora-student"));
    let z = dcm::runtime::noise::standard_normal(
        &mut dcm::runtime::noise::seeded(2),
        (64, 4, 7, 7),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    npy::write(&latents, &z).unwrap();
    npy::write(&noise, &z.narrow(0, 0, 8).unwrap()).unwrap();
    let d = dir.to_str().unwrap();
    let t = teacher.to_str().unwrap();
    let base = [
        "distill",
        "--method",
        "cm",
        "--teacher",
        t,
        "--data",
        latents.to_str().unwrap(),
    ];
    assert_clean_failure(&[&base[..], &["--lora-alpha", "4", "--out", d]].concat(), "--lora-rank");
    assert_clean_failure(
        &[&base[..], &["--lora-rank", "0", "--out", d]].concat(),
        "--lora-rank must be at least 1",
    );
    let o = dcm(&[
        &base[..],
        &[
            "--lora-rank",
            "4",
            "--intervals",
            "10",
            "--steps",
            "5",
            "--batch",
            "8",
            "--out",
            d,
        ],
    ]
    .concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let adapters = candle_core::safetensors::load(dir.join("adapters.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(
        !adapters.is_empty()
            && adapters
                .keys()
                .all(|k| k.contains(".lora_A.") || k.contains(".lora_B."))
    );
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(
        config.contains("\"lora\"") && config.contains("\"rank\": 4"),
        "{config}"
    );
    let o = dcm(&[
        "sample",
        "--student",
        d,
        "--steps",
        "2",
        "--class",
        "3",
        "--noise",
        noise.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(npy::read(&out).unwrap().dims(), &[8, 4, 7, 7]);
}

/// Inputs that once gave a silent result are refused by name: noise that holds no values, and
/// an integer tensor in a network teacher's weights file.
#[test]
fn empty_noise_and_integer_weights_are_refused() {
    use candle_core::{DType, Device, Tensor};
    let (empty, out) = (tmp("empty.npy"), tmp("empty-out.npy"));
    npy::write(&empty, &Tensor::zeros((0, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let sample = |teacher: &str, noise: &Path| {
        vec![
            "sample".to_string(),
            "--teacher".into(),
            teacher.into(),
            "--noise".into(),
            noise.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let args = sample("gaussian:mean=0,std=1", &empty);
    assert_clean_failure(&args.iter().map(String::as_str).collect::<Vec<_>>(), "holds no values");
    assert!(!out.exists(), "no output for empty noise");

    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/teacher");
    let teacher = tmp("int-teacher");
    std::fs::create_dir_all(&teacher).unwrap();
    std::fs::copy(shipped.join("config.json"), teacher.join("config.json")).unwrap();
    let weights = candle_core::safetensors::load(shipped.join("model.safetensors"), &Device::Cpu).unwrap();
    let (first, _) = weights.iter().next().unwrap();
    let first = first.clone();
    let mut weights = weights;
    let int = weights[&first].to_dtype(DType::I64).unwrap();
    weights.insert(first.clone(), int);
    candle_core::safetensors::save(&weights, teacher.join("model.safetensors")).unwrap();
    let noise = tmp("int-noise.npy");
    write_noise(&noise, 2, 196);
    let args = sample(teacher.to_str().unwrap(), &noise);
    assert_clean_failure(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &format!("tensor '{first}' is I64, but weights must be floating point"),
    );
}

/// A `--models` folder without the three networks is refused naming `--models` and the missing
/// part, not `--teacher` (a flag the user did not give).
#[test]
fn reproduce_models_folder_is_named() {
    let dir = std::env::temp_dir().join(format!("dcm-cli-models-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("autoencoder")).unwrap();
    std::fs::write(dir.join("autoencoder/config.json"), "{}").unwrap();
    let out = dir.join("out");
    let o = dcm(&[
        "reproduce",
        "--preset",
        "smoke",
        "--models",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--models") && err.contains("no teacher/config.json") && !err.contains("--teacher"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
