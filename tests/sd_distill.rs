//! LoRA distillation of a Stable Diffusion teacher on the tiny random SD 1.x fixture: CM and
//! Direct CM students solve the teacher's guided ODE better in one step than the teacher's
//! own one-interval DDIM; both exported LoRA layouts load to the same student; SIGINT and
//! resume give byte-identical LoRA files; bad input is one line.

use candle_core::Device;
use dcm::data::npy;
use dcm::runtime::noise::{seeded, standard_normal};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn fixture() -> String {
    format!("sd:{}/tests/fixtures/sd/sd1", env!("CARGO_MANIFEST_DIR"))
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dcm-sd-distill-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn dcm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dcm")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> Output {
    let o = dcm(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Six captioned 24×20 checkerboards in distinct colours (resized and cropped to 16²).
fn captioned_folder(d: &Path) -> PathBuf {
    let data = d.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..6u32 {
        let img = image::RgbImage::from_fn(24, 20, |x, y| match (x / 4 + y / 4 + i) % 2 {
            0 => image::Rgb([(40 * i) as u8, 200 - (30 * i) as u8, 90]),
            _ => image::Rgb([250 - (20 * i) as u8, (35 * i) as u8, 160]),
        });
        img.save(data.join(format!("img{i}.png"))).unwrap();
        std::fs::write(
            data.join(format!("img{i}.txt")),
            format!("a checkered picture number {i}"),
        )
        .unwrap();
    }
    data
}

/// Prompts of the evaluation rows and their initial noise `[6, 4, 8, 8]`.
fn eval_inputs(d: &Path) -> (PathBuf, PathBuf) {
    let prompts = d.join("prompts.txt");
    let lines: Vec<String> = (0..6).map(|i| format!("a checkered picture number {i}")).collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let noise = d.join("noise.npy");
    let x = standard_normal(&mut seeded(7), (6, 4, 8, 8), &Device::Cpu).unwrap();
    npy::write(&noise, &x).unwrap();
    (prompts, noise)
}

fn read_npy(path: &Path) -> Vec<f32> {
    npy::read(path).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn mse(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64
}

const INTERVALS: &str = "20";
const GUIDANCE: &str = "3";

fn distill_args<'a>(method: &'a str, data: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "distill",
        "--method",
        method,
        "--data",
        data,
        "--lora-rank",
        "4",
        "--intervals",
        INTERVALS,
        "--guidance",
        GUIDANCE,
        "--steps",
        steps,
        "--batch",
        "4",
        "--lr",
        "1e-3",
        "--constant-lr",
    ]
}

/// `dcm sample` from the evaluation noise: the guided teacher with `intervals`, or a LoRA
/// student's one-step sampler.
fn sample(d: &Path, name: &str, extra: &[&str]) -> Vec<f32> {
    let (prompts, noise) = eval_inputs(d);
    let out = d.join(format!("{name}.npy"));
    let teacher = fixture();
    let mut args = vec!["sample", "--teacher", &teacher, "--prompts", prompts.to_str().unwrap()];
    args.extend(["--noise", noise.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    args.extend(extra);
    ok(&args);
    read_npy(&out)
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("train_log.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect()
}

/// After 48 steps each, CM's and Direct's one-step students land closer (latent MSE) to the
/// teacher's 20-interval guided solve than the teacher's own one-interval DDIM does, and the
/// training loss of the last quarter is below the first quarter's. (The tiny teacher is random:
/// its images mean nothing, its ODE does.)
#[test]
fn one_step_students_beat_the_one_interval_teacher() {
    let d = dir("quality");
    let data = captioned_folder(&d);
    let teacher = fixture();
    let uncond = ["--guidance", GUIDANCE, "--uncond", "zeros"];
    let solve = sample(&d, "solve", &[&["--intervals", INTERVALS][..], &uncond].concat());
    let one_interval = mse(
        &sample(&d, "ddim1", &[&["--intervals", "1"][..], &uncond].concat()),
        &solve,
    );
    for method in ["cm", "direct"] {
        let run = d.join(method);
        let mut args = distill_args(method, data.to_str().unwrap(), "48");
        args.extend(["--teacher", &teacher, "--out", run.to_str().unwrap()]);
        ok(&args);
        let l = losses(&run);
        let quarter = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let (first, last) = (quarter(&l[..12]), quarter(&l[36..]));
        assert!(last < first, "{method}: loss {first:.4} → {last:.4}");
        let lora = run.join("lora.safetensors");
        let student = sample(
            &d,
            method,
            &[
                "--lora",
                lora.to_str().unwrap(),
                "--intervals",
                INTERVALS,
                "--steps",
                "1",
            ],
        );
        let err = mse(&student, &solve);
        eprintln!(
            "{method}: loss {first:.4} → {last:.4}; 1-step ODE error {err:.4} vs teacher 1-interval {one_interval:.4}"
        );
        assert!(err < one_interval, "{method}: {err} ≥ {one_interval}");
        // The run folder alone is the same student: its teacher and N come from student.json.
        let (prompts, noise) = eval_inputs(&d);
        let by_folder = d.join(format!("{method}-folder.npy"));
        ok(&[
            "sample",
            "--student",
            run.to_str().unwrap(),
            "--prompts",
            prompts.to_str().unwrap(),
            "--noise",
            noise.to_str().unwrap(),
            "--out",
            by_folder.to_str().unwrap(),
        ]);
        assert_eq!(
            read_npy(&by_folder),
            student,
            "{method}: --student OUT differs from --lora"
        );
        let peft = run.join("pytorch_lora_weights.safetensors");
        let same = sample(
            &d,
            &format!("{method}-peft"),
            &[
                "--lora",
                peft.to_str().unwrap(),
                "--intervals",
                INTERVALS,
                "--steps",
                "1",
            ],
        );
        assert_eq!(student, same, "{method}: both LoRA layouts load to the same student");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("student.json")).unwrap()).unwrap();
        assert_eq!(config["distill"]["method"], method);
        assert!(config["teacher_evaluations"].as_u64().unwrap() > 0);
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// SIGINT saves a checkpoint and exits 130; resuming ends with LoRA files byte-identical to an
/// uninterrupted run's (adapters, AdamW state, the generator's position and the data position
/// are all in the checkpoint; the latents come back from the run's cache).
#[test]
fn sigint_and_resume_give_identical_lora_files() {
    let d = dir("resume");
    let data = captioned_folder(&d);
    let teacher = fixture();
    let (a, b) = (d.join("a"), d.join("b"));
    let mut args = distill_args("cm", data.to_str().unwrap(), "200");
    args.extend(["--teacher", &teacher, "--grad-accum", "2", "--checkpoint-every", "10"]);
    ok(&[&args[..], &["--out", a.to_str().unwrap()]].concat());
    let child = Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(&args)
        .args(["--out", b.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once training is under way: the first periodic checkpoint (step 10 of 200)
    // marks it, whatever the machine's speed, and leaves 190 steps for the signal to land in.
    let started = std::time::Instant::now();
    while !b.join("checkpoint.safetensors").is_file() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(b.join("checkpoint.safetensors").is_file());
    let resumed = ok(&[&args[..], &["--resume", b.to_str().unwrap()]].concat());
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("latents from the cache"));
    for file in ["lora.safetensors", "pytorch_lora_weights.safetensors"] {
        assert!(
            std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(),
            "{file}: resumed run differs from the uninterrupted one"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// `--gradient-checkpointing` through the command line trains the same student (the
/// gradients themselves are compared in `models/sd/checkpointing_tests.rs`): for CM and Direct,
/// the first step's loss is bit for bit the plain run's, and after that step every adapter
/// tensor is within 1e-3 of its largest entry (AdamW's first update is ±lr wherever a gradient
/// entry is well above ε, so only entries within rounding of zero may differ; a missing
/// gradient would differ by lr). `student.json` records the flag, a resume may turn it off, and
/// the small-model family refuses it by name.
#[test]
fn gradient_checkpointing_trains_the_same_student() {
    let d = dir("checkpointing");
    let data = captioned_folder(&d);
    let teacher = fixture();
    let adapters = |run: &Path| {
        candle_core::safetensors::load(run.join("pytorch_lora_weights.safetensors"), &Device::Cpu).unwrap()
    };
    let max = |t: &candle_core::Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    for method in ["cm", "direct"] {
        let (plain, ckpt) = (d.join(format!("{method}-plain")), d.join(format!("{method}-ckpt")));
        let mut args = distill_args(method, data.to_str().unwrap(), "1");
        args.extend(["--teacher", &teacher, "--checkpoint-every", "1"]);
        ok(&[&args[..], &["--out", plain.to_str().unwrap()]].concat());
        ok(&[
            &args[..],
            &["--out", ckpt.to_str().unwrap(), "--gradient-checkpointing"],
        ]
        .concat());
        assert_eq!(losses(&plain), losses(&ckpt), "{method}");
        let (a, b) = (adapters(&plain), adapters(&ckpt));
        assert_eq!(a.len(), b.len());
        let worst = (a.iter())
            .map(|(name, x)| max(&(x - &b[name]).unwrap()) / max(x).max(f32::MIN_POSITIVE))
            .fold(0f32, f32::max);
        eprintln!(
            "{method}: {} adapter tensors, largest relative difference {worst:.2e}",
            a.len()
        );
        assert!(worst <= 1e-3, "{method}: {worst:e}");
        let recorded = |run: &Path| std::fs::read_to_string(run.join("student.json")).unwrap();
        assert!(recorded(&ckpt).contains("\"gradient_checkpointing\": true"));
        assert!(!recorded(&plain).contains("gradient_checkpointing"));
        ok(&[&args[..], &["--resume", ckpt.to_str().unwrap()]].concat());
        assert!(!recorded(&ckpt).contains("gradient_checkpointing"));
    }
    let small = d.join("small");
    let o = dcm(&[
        "distill",
        "--method",
        "cm",
        "--teacher",
        "mixture:ring",
        "--gradient-checkpointing",
    ]
    .iter()
    .copied()
    .chain(["--out", small.to_str().unwrap()])
    .collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.trim().lines().count() == 1, "{err}");
    assert!(
        err.contains("--gradient-checkpointing") && err.contains("does not apply to small-model teachers"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// Each bad input is refused before training with one line naming the flag or file.
#[test]
fn bad_input_is_one_line() {
    let d = dir("bad");
    let data = captioned_folder(&d);
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let teacher = fixture();
    let out = d.join("out");
    let base = |data: &Path| -> Vec<String> {
        let mut v: Vec<String> = distill_args("cm", data.to_str().unwrap(), "2")
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend([
            "--teacher".into(),
            teacher.clone(),
            "--out".into(),
            out.to_str().unwrap().into(),
        ]);
        v
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (base(&empty), "empty"),
        (
            [base(&data), vec!["--resolution".into(), "18".into()]].concat(),
            "divisible by",
        ),
        (
            [base(&data), vec!["--lora-targets".into(), "to_q,not_a_layer".into()]].concat(),
            "not_a_layer",
        ),
        (
            [base(&data), vec!["--uncond".into(), "nothing".into()]].concat(),
            "--uncond nothing",
        ),
        (
            [base(&data), vec!["--grad-accum".into(), "0".into()]].concat(),
            "--grad-accum",
        ),
        (
            [base(&data), vec!["--unconditional".into()]].concat(),
            "--unconditional",
        ),
        (
            [base(&data), vec!["--hidden".into(), "64".into()]].concat(),
            "--hidden sizes a fresh MLP",
        ),
        (
            vec![
                "distill",
                "--method",
                "cm",
                "--teacher",
                "mixture:ring",
                "--steps",
                "2",
                "--uncond",
                "zeros",
                "--out",
                out.to_str().unwrap(),
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            "sd:DIR",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = dcm(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(needle) && err.lines().filter(|l| l.contains("error")).count() == 1,
            "{args:?}: {err}"
        );
    }
    // An output the run could not write at the end (a folder where lora.safetensors goes) is
    // refused before the latents are encoded.
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("lora.safetensors")).unwrap();
    let args = base(&data);
    let o = dcm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("lora.safetensors") && err.contains("--out"), "{err}");
    assert!(
        !out.join("latents").exists(),
        "work began before the outputs were checked"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// SDXL (two text encoders, pooled embedding, size ids) and SD 2 (v-prediction) students train
/// too, and each one's two exported layouts load to the identical, finite student.
#[test]
fn sdxl_and_v_prediction_students_export_loadable_loras() {
    let d = dir("families");
    let data = captioned_folder(&d);
    for model in ["sdxl", "sd2"] {
        let teacher = format!("sd:{}/tests/fixtures/sd/{model}", env!("CARGO_MANIFEST_DIR"));
        let run = d.join(model);
        let mut args = distill_args("cm", data.to_str().unwrap(), "4");
        args.extend(["--teacher", &teacher, "--out", run.to_str().unwrap()]);
        ok(&args);
        let (prompts, noise) = eval_inputs(&d);
        let sample = |file: &str| {
            let out = d.join(format!("{model}-{file}.npy"));
            let lora = run.join(file);
            ok(&[
                "sample",
                "--teacher",
                &teacher,
                "--lora",
                lora.to_str().unwrap(),
                "--intervals",
                INTERVALS,
                "--steps",
                "2",
                "--prompts",
                prompts.to_str().unwrap(),
                "--noise",
                noise.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ]);
            read_npy(&out)
        };
        let kohya = sample("lora.safetensors");
        assert!(kohya.iter().all(|v| v.is_finite()), "{model}");
        assert_eq!(kohya, sample("pytorch_lora_weights.safetensors"), "{model}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Without settings flags a Stable Diffusion student gets its family's defaults, the paper's:
/// DDIM with N = 100 and w = 9, rank-64 LoRA (α 64), AdamW at a constant 1e-4 — not the small
/// family's N = 50, w = 1 and cosine decay.
#[test]
fn stable_diffusion_defaults_are_the_papers() {
    let d = dir("defaults");
    let data = captioned_folder(&d);
    let run = d.join("run");
    let teacher = fixture();
    ok(&[
        "distill",
        "--method",
        "cm",
        "--teacher",
        &teacher,
        "--data",
        data.to_str().unwrap(),
        "--steps",
        "1",
        "--batch",
        "1",
        "--resolution",
        "16",
        "--out",
        run.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(run.join("student.json")).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    let d = &cfg["distill"];
    assert_eq!(d["solver"], "ddim");
    assert_eq!(d["intervals"], 100);
    assert_eq!(d["guidance"], 9.0);
    assert_eq!(d["lora"]["rank"], 64);
    assert_eq!(d["lora"]["alpha"], 64.0);
    assert_eq!(d["optim"]["lr"], 1e-4);
    assert_eq!(d["optim"]["cosine_decay"], false);
    assert_eq!(d["loss"], "l2");
}
