//! `dcm reproduce --preset smoke` on the shipped models and data: the run folder
//! has every artifact, the table every (model, steps) row, and every number is finite.

use std::process::Command;

#[test]
fn smoke_preset_writes_a_complete_finite_report() {
    let dir = std::env::temp_dir().join(format!("dcm-reproduce-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(["reproduce", "--preset", "smoke", "--seeds", "2", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in [
        "report.md",
        "report.json",
        "results.csv",
        "config.json",
        "ode_error_vs_fd.svg",
        "loss_curves.svg",
        "samples_teacher_10.png",
        "samples_cm_1.png",
        "samples_direct_8.png",
        "samples_teacher_ddim_4.png",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let summary = report["summary"].as_array().unwrap();
    // teacher reference + teacher DDIM, CM and Direct at 1, 2, 4, 8 steps.
    assert_eq!(summary.len(), 1 + 3 * 4);
    for row in summary {
        assert_eq!(row["seeds"], 2);
        for v in row["values"].as_array().unwrap() {
            let (mean, std) = (v[1].as_f64().unwrap(), v[2].as_f64().unwrap());
            assert!(mean.is_finite() && std.is_finite(), "{row}");
        }
    }
    let reference = &summary[0];
    assert_eq!(reference["method"], "teacher");
    let ode = reference["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v[0] == "ODE error (latent)");
    assert_eq!(
        ode.unwrap()[1].as_f64().unwrap(),
        0.0,
        "the teacher's own ODE error is zero by construction"
    );
    assert_eq!(
        reference["values"][0][0], "FD vs teacher",
        "the paper's metric heads the table"
    );
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 13);
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("| Direct | 8 |") && md.contains(" ± "), "{md}");
    eval_repeats_the_runs_ode_errors(&dir, &csv);
    let png = image::open(dir.join("samples_cm_1.png")).unwrap();
    assert_eq!(
        (png.width(), png.height()),
        (4 * 30 + 2, 10 * 30 + 2),
        "4 columns, one row per class"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The run keeps its students, and `dcm eval --seed 0` on one repeats the run's ODE errors
/// (same noise and re-noise streams, labels and reference solve).
fn eval_repeats_the_runs_ode_errors(dir: &std::path::Path, csv: &str) {
    for name in ["cm", "direct", "cm-seed1", "direct-seed1"] {
        assert!(
            dir.join("students").join(name).join("model.safetensors").is_file(),
            "{name}"
        );
    }
    let student = dir.join("students").join("cm");
    let out = Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(["eval", "--samples", "200", "--seed", "0", "--student"])
        .arg(&student)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    for line in csv
        .lines()
        .filter(|l| l.starts_with("CM,") && l.split(',').nth(2) == Some("0"))
    {
        let f: Vec<&str> = line.split(',').collect();
        let column = csv
            .lines()
            .next()
            .unwrap()
            .split(',')
            .position(|c| c == "ODE_error_latent");
        let (steps, ode_error): (&str, f64) = (f[1], f[column.unwrap()].parse().unwrap());
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {steps} |")))
            .unwrap_or_else(|| panic!("no row for {steps} steps in {table}"));
        let eval: f64 = row.split('|').nth(2).unwrap().trim().parse().unwrap();
        assert!(
            (eval - ode_error).abs() <= 1e-4 * ode_error.abs(),
            "{steps} steps: eval {eval} vs reproduce {ode_error}"
        );
    }
}

/// The shipped teacher's guided samples, decoded, are digits of the requested class
/// (judged by the shipped feature network), through the documented CLI.
#[test]
fn shipped_teacher_samples_are_digits_of_the_requested_class() {
    let home = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("dcm-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let noise = dcm::runtime::noise::standard_normal(
        &mut dcm::runtime::noise::seeded(5),
        (40, 4, 7, 7),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    dcm::data::npy::write(&dir.join("n.npy"), &noise).unwrap();
    let featnet = dcm::models::model_dir::load_featnet(&home.join("models/featnet"), &Default::default()).unwrap();
    for class in ["3", "7"] {
        let out = dir.join(format!("digits{class}.npy"));
        let o = Command::new(env!("CARGO_BIN_EXE_dcm"))
            .args(["sample", "--teacher"])
            .arg(home.join("models/teacher"))
            .args([
                "--class",
                class,
                "--guidance",
                "2",
                "--intervals",
                "20",
                "--decode",
                "--noise",
            ])
            .arg(dir.join("n.npy"))
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let images = dcm::data::npy::read(&out).unwrap();
        assert_eq!(images.dims(), &[40, 1, 28, 28]);
        let v = images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|p| (0.0..=1.0).contains(p)));
        let predicted = featnet.classify(&images).unwrap();
        let hits = predicted.iter().filter(|&&p| p.to_string() == class).count();
        assert!(
            hits >= 36,
            "only {hits}/40 samples of class {class} are classified as {class}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
