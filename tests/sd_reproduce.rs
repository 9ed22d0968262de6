//! `dcm reproduce --preset sd` on the tiny random SD 1.x fixture: every artifact is written
//! with finite numbers, the teacher against itself has ODE error 0 and FD 0, both students
//! share one latent encoding, and bad input is one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dcm-sd-reproduce-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn dcm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dcm")).args(args).output().unwrap()
}

/// Four captioned 16×16 images and a prompts file of three lines.
fn inputs(d: &Path) -> (PathBuf, PathBuf) {
    let data = d.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..4u32 {
        let img = image::RgbImage::from_fn(16, 16, |x, y| {
            image::Rgb([(60 * i) as u8, (x * 15) as u8, (y * 15) as u8])
        });
        img.save(data.join(format!("{i}.png"))).unwrap();
        std::fs::write(data.join(format!("{i}.txt")), format!("a gradient of colour {i}")).unwrap();
    }
    let prompts = d.join("prompts.txt");
    std::fs::write(&prompts, "a gradient of colour 1\na red square\na blue circle\n").unwrap();
    (data, prompts)
}

fn args<'a>(teacher: &'a str, data: &'a Path, prompts: &'a Path, out: &'a Path, clip: &'a str) -> Vec<&'a str> {
    vec![
        "reproduce",
        "--preset",
        "sd",
        "--teacher",
        teacher,
        "--data",
        data.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--per-prompt",
        "2",
        "--clip",
        clip,
        "--intervals",
        "10",
        "--guidance",
        "3",
        "--distill-steps",
        "12",
        "--batch",
        "2",
        "--lora-rank",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]
}

fn finite_numbers(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.as_f64().is_some_and(f64::is_finite),
        serde_json::Value::Array(a) => a.iter().all(finite_numbers),
        serde_json::Value::Object(o) => o.values().all(finite_numbers),
        _ => true,
    }
}

#[test]
fn preset_sd_writes_the_table_grids_and_charts() {
    let d = dir("run");
    let (data, prompts) = inputs(&d);
    let out = d.join("out");
    let teacher = format!("sd:{}", root().join("tests/fixtures/sd/sd1").display());
    let clip = root().join("tests/fixtures/sd/clip");
    let o = dcm(&args(&teacher, &data, &prompts, &out, clip.to_str().unwrap()));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("latents from the cache"),
        "the second student reuses the first's encoding: {err}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(finite_numbers(&report), "{report}");
    let methods = report["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 2);
    for m in methods {
        let rows = m["rows"].as_array().unwrap();
        let teacher_row = rows.iter().find(|r| r["model"] == "teacher").unwrap();
        assert_eq!(
            teacher_row["ode_error"].as_f64(),
            Some(0.0),
            "the teacher against itself"
        );
        assert!(teacher_row["fd_clip_vs_teacher"].as_f64().unwrap().abs() < 1e-6);
        let ks: Vec<u64> = rows
            .iter()
            .filter(|r| r["model"] == "student")
            .map(|r| r["steps"].as_u64().unwrap())
            .collect();
        assert_eq!(ks, vec![1, 2, 4, 8]);
        for r in rows.iter().filter(|r| r["model"] == "student") {
            assert!(
                r["ode_error"].as_f64().unwrap() > 0.0 && r["clip_cosine"].is_number(),
                "{r}"
            );
        }
        assert!(m["teacher_evaluations"].as_u64().unwrap() > 0);
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 5, "{csv}");
    for name in ["cm", "direct"] {
        let student = out.join("students").join(name);
        for f in [
            "lora.safetensors",
            "pytorch_lora_weights.safetensors",
            "student.json",
            "train_log.csv",
        ] {
            assert!(student.join(f).is_file(), "{name}/{f}");
        }
        for k in [1, 2, 4, 8] {
            let grid = image::open(out.join(format!("samples_{name}_{k}step.png"))).unwrap();
            // Three prompt rows of two 16-pixel samples with 2-pixel gutters.
            assert_eq!((grid.width(), grid.height()), (2 * 18 + 2, 3 * 18 + 2));
        }
    }
    for f in [
        "report.md",
        "config.json",
        "ode_error_vs_fd.svg",
        "loss.svg",
        "samples_teacher.png",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn preset_sd_bad_input_is_one_line() {
    let d = dir("bad");
    let (data, prompts) = inputs(&d);
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = d.join("out");
    let teacher = format!("sd:{}", root().join("tests/fixtures/sd/sd1").display());
    let text_encoder = root().join("tests/fixtures/sd/sd1/text_encoder");
    let clip = root().join("tests/fixtures/sd/clip");
    let base = args(&teacher, &data, &prompts, &out, clip.to_str().unwrap());
    let swap = |flag: &str, value: &str| -> Vec<String> {
        let mut v: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        let i = v.iter().position(|s| s == flag).unwrap();
        v[i + 1] = value.to_string();
        v
    };
    let cases = [
        (swap("--data", empty.to_str().unwrap()), "no images"),
        (swap("--clip", text_encoder.to_str().unwrap()), "--clip"),
        (swap("--teacher", "mixture:ring"), "sd:DIR"),
        (
            [
                base.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                vec!["--per-class".into(), "5".into()],
            ]
            .concat(),
            "--per-class",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = dcm(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains(needle) && err.lines().filter(|l| l.contains("error")).count() == 1,
            "{needle}: {err}"
        );
    }
    let o = dcm(&["reproduce", "--preset", "smoke", "--prompts", prompts.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--prompts applies to --preset sd only"));
    let _ = std::fs::remove_dir_all(&d);
}
