//! The study's pieces: the target-horizon objective at its ends and in between, the
//! training-length checkpoints, `dcm reproduce --preset study-smoke` end to end, its resume
//! after signals (and its refusal to mix studies), and the committed write-up as a function
//! of its study.json.

use candle_core::{Device, Tensor};
use dcm::consistency::cm::cm_target;
use dcm::consistency::direct::direct_targets;
use dcm::consistency::horizon::horizon_target;
use dcm::consistency::objective::Method;
use dcm::consistency::parameterization::consistency;
use dcm::data::Dataset;
use dcm::diffusion::analytic::GaussianMixture;
use dcm::diffusion::condition::Condition;
use dcm::diffusion::discretization::Discretization;
use dcm::diffusion::schedule::Schedule;
use dcm::diffusion::solver::Solver;
use dcm::eval::study::config::StudyConfig;
use dcm::experiments::report::study::render;
use dcm::experiments::report::study_record::StoredStudy;
use dcm::experiments::report::study_summary::{SUMMARY_BEGIN, SUMMARY_END};
use dcm::experiments::study_resume::StudyInputs;
use dcm::nets::mlp::{Mlp, MlpConfig};
use dcm::nets::network::NetConfig;
use dcm::runtime::noise::{seeded, standard_normal};
use dcm::train::checkpoint::load_checkpoint;
use dcm::train::distill::{distill, DistillConfig};
use dcm::train::optim::OptimConfig;
use dcm::train::trainer::{kept_checkpoint, Checkpointing};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn mixture() -> GaussianMixture {
    GaussianMixture::new(
        vec![vec![-1.0, 0.0], vec![1.0, 0.5]],
        vec![0.3, 0.2],
        vec![1.0, 2.0],
        Schedule::default(),
    )
    .unwrap()
}

fn net() -> MlpConfig {
    MlpConfig {
        sample_shape: vec![2],
        hidden: 32,
        depth: 2,
        time_dim: 16,
        num_classes: 2,
        schedule: Default::default(),
    }
}

/// A batch whose rows start at every kind of timestep, the last interval included.
fn batch(grid: Discretization) -> (Tensor, Vec<usize>, Condition) {
    let t: Vec<usize> = [0, 9, 3, 1, 9, 5, 0, 7].iter().map(|&n| grid.start(n)).collect();
    let x = standard_normal(&mut seeded(3), (t.len(), 2), &Device::Cpu).unwrap();
    let cond = Condition::Labels((0..t.len()).map(|i| Some((i % 2) as u32)).collect());
    (x, t, cond)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// k = 1 is CM's target and k ≥ N Direct's, to the bit: the family really runs from one to
/// the other (the boundary condition makes the target network the identity at clean).
#[test]
fn horizon_ends_are_cm_and_direct_exactly() {
    let teacher = mixture();
    let target_net = Mlp::new(net(), &net().init(&mut seeded(9)).unwrap()).unwrap();
    let grid = Discretization::new(10).unwrap();
    let (x, t, cond) = batch(grid);
    for solver in [Solver::Ddim, Solver::Heun] {
        let one = horizon_target(solver, &teacher, &target_net, &x, &t, grid, 1, &cond).unwrap();
        let cm = cm_target(solver, &teacher, &target_net, &x, &t, grid.k(), &cond).unwrap();
        assert_eq!(values(&one), values(&cm), "{solver:?}: k = 1 vs CM");
        let all = horizon_target(solver, &teacher, &target_net, &x, &t, grid, 10, &cond).unwrap();
        let direct = direct_targets(solver, &teacher, &x, &t, grid, &cond).unwrap();
        assert_eq!(values(&all), values(&direct), "{solver:?}: k = N vs Direct");
    }
}

/// In between, each row is k single DDIM steps (or fewer, to clean) and then the target
/// network at the landing timestep — composed here row by row, one step at a time.
#[test]
fn a_middle_horizon_is_k_teacher_steps_then_the_target_network() {
    let teacher = mixture();
    let target_net = Mlp::new(net(), &net().init(&mut seeded(9)).unwrap()).unwrap();
    let grid = Discretization::new(10).unwrap();
    let (x, t, cond) = batch(grid);
    let k = 3;
    let got = horizon_target(Solver::Ddim, &teacher, &target_net, &x, &t, grid, k, &cond).unwrap();
    for (i, &start) in t.iter().enumerate() {
        let ci = cond.select(&[i]).unwrap();
        let mut xi = x.narrow(0, i, 1).unwrap();
        let mut ti = start;
        for _ in 0..k.min(start / grid.k()) {
            xi = Solver::Ddim.step(&teacher, &xi, &[ti], grid.k(), &ci).unwrap();
            ti -= grid.k();
        }
        let want = consistency(&target_net, &xi, &[ti], &ci).unwrap();
        let (g, w) = (values(&got.narrow(0, i, 1).unwrap()), values(&want));
        for (a, b) in g.iter().zip(&w) {
            assert!((a - b).abs() < 1e-5, "row {i} (t = {start}): {g:?} vs {w:?}");
        }
    }
}

/// One long run's kept checkpoint at step S holds exactly the weights of an S-step run
/// (constant learning rate): the training-length sweep and the main students agree.
#[test]
fn a_kept_checkpoint_is_the_shorter_run() {
    let teacher = mixture();
    let data: Dataset = teacher.sample(400, &mut seeded(1)).unwrap();
    let cfg = |steps: usize| DistillConfig {
        method: "horizon-2".parse::<Method>().unwrap(),
        solver: Solver::Ddim,
        intervals: 10,
        guidance: 1.0,
        steps,
        batch: 16,
        optim: OptimConfig {
            lr: 1e-3,
            weight_decay: 1e-2,
            max_grad_norm: 1.0,
            cosine_decay: false,
        },
        loss: dcm::consistency::distance::Distance::L2,
        ema_decay: Some(0.95),
        lora: None,
        grad_accum: 1,
        seed: 4,
    };
    let init = net().init(&mut seeded(2)).unwrap();
    let arch = NetConfig::Mlp(net());
    let dir = std::env::temp_dir().join(format!("dcm-kept-{}", std::process::id()));
    let ckpt = Checkpointing {
        dir: Some(dir.clone()),
        keep: vec![5, 12],
        ..Default::default()
    };
    distill(Some(&teacher), &arch, &init, &data, &cfg(20), ckpt).unwrap();
    let short = distill(Some(&teacher), &arch, &init, &data, &cfg(12), Default::default()).unwrap();
    let (kept, _) = load_checkpoint(&dir.join(kept_checkpoint(12))).unwrap();
    for (name, w) in &short.params {
        assert_eq!(values(&kept[&format!("param/{name}")]), values(w), "{name}");
    }
    assert!(dir.join(kept_checkpoint(5)).is_file() && !dir.join(kept_checkpoint(20)).is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every stage of the study at toy size: every artifact, the training length chosen by the
/// criterion from two sweep seeds, the main baseline's three seeds (two read off the sweep's
/// runs, one trained), every interval well-formed in the CSV, a claim per step count, the
/// sweeps on both seeds with the horizon spanning k = 1 … N, and the report rewritten from
/// study.json alone.
#[test]
fn study_smoke_writes_every_artifact() {
    let dir = std::env::temp_dir().join(format!("dcm-study-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(["reproduce", "--preset", "study-smoke", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in [
        "README.md",
        "summary.md",
        "study.json",
        "results.csv",
        "intervals.csv",
        "training_length.csv",
        "horizon.csv",
        "guidance.csv",
        "analytic.csv",
        "training_length_fd.svg",
        "training_length_ode_error.svg",
        "ode_error_vs_fd.svg",
        "horizon.svg",
        "students/smoke/cm/model.safetensors",
        "students/smoke/direct-seed2/model.safetensors",
        "students/smoke-lora/direct-seed2/model.safetensors",
        "checkpoints/seed1/direct/checkpoint-10.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let intervals = std::fs::read_to_string(dir.join("intervals.csv")).unwrap();
    // 2 baselines × 4 step counts × 10 metrics, the analytic control's 4 × 3, and CM − Direct
    // on FD and ODE error at 3 training lengths and 2 guidance scales × 4 step counts.
    assert_eq!(intervals.lines().count(), 1 + 2 * 4 * 10 + 4 * 3 + (3 + 2) * 4 * 2);
    for line in intervals.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let v: Vec<f64> = f[6..11].iter().map(|x| x.parse().unwrap()).collect();
        let (d, lo, hi, t_lo, t_hi) = (v[0], v[1], v[2], v[3], v[4]);
        assert!(lo <= d && d <= hi && t_lo <= d && d <= t_hi, "{line}");
        let (with_sign, seeds): (usize, usize) = (f[11].parse().unwrap(), f[12].parse().unwrap());
        assert!(with_sign <= seeds && (seeds == 3 || seeds == 2), "{line}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("study.json")).unwrap()).unwrap();
    let main = &json["outcome"]["main"];
    assert_eq!(
        main["training"].as_array().unwrap().len(),
        2 * 3,
        "CM and Direct at 3 seeds"
    );
    let chosen = main["training"][0]["losses"].as_array().unwrap().len();
    assert!(
        [5, 10, 20].contains(&chosen),
        "the baselines train a swept length, not {chosen}"
    );
    let training = &json["outcome"]["other"]["training"];
    assert_eq!(
        training[5]["losses"].as_array().unwrap().len(),
        chosen,
        "both baselines at one length"
    );
    let horizon = std::fs::read_to_string(dir.join("horizon.csv")).unwrap();
    let ks: BTreeSet<&str> = horizon.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(
        ks,
        ["1", "10", "2", "5"].into_iter().collect(),
        "k = 1, 2, 5 and N = 10"
    );
    for csv in ["horizon.csv", "guidance.csv", "training_length.csv"] {
        let text = std::fs::read_to_string(dir.join(csv)).unwrap();
        let seeds: BTreeSet<&str> = text.lines().skip(1).map(|l| l.split(',').nth(3).unwrap()).collect();
        assert_eq!(seeds, ["0", "1"].into_iter().collect(), "{csv}: the sweep's two seeds");
    }
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert_eq!(readme.matches("- The paper's claim").count(), 2 * 4 + 4, "{readme}");
    assert!(readme.contains(&format!("They trained **{chosen} steps**")), "{readme}");
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    // The report is a function of study.json alone: rewriting it gives the same text.
    std::fs::remove_file(dir.join("README.md")).unwrap();
    std::fs::remove_file(dir.join("summary.md")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(["reproduce", "--preset", "study", "--rewrite-report", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(dir.join("README.md")).unwrap(), readme);
    assert_eq!(std::fs::read_to_string(dir.join("summary.md")).unwrap(), summary);
    let out = Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(["reproduce", "--preset", "study", "--lr", "1e-3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--lr"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `dcm ARGS`, run to its end.
fn dcm(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(args)
        .arg(dir)
        .output()
        .unwrap()
}

/// `kill -SIGNAL pid`.
fn signal(name: &str, pid: u32) {
    assert!(Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// `dcm ARGS DIR` stopped by SIGTERM as soon as `ready(DIR, stderr so far)` holds: paused
/// first (SIGSTOP), so that however fast the machine the signal lands where `ready` saw the
/// run, then signalled and let go on. It must end by the signal (128 + 15), not finish.
/// Returns its stderr.
fn stopped_when(args: &[&str], dir: &Path, ready: impl Fn(&Path, &str) -> bool) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(args)
        .arg(dir)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (pipe, err) = (child.stderr.take().unwrap(), err.clone());
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)) {
                err.lock().unwrap().push_str(&(line.unwrap() + "\n"));
            }
        })
    };
    while !ready(dir, &err.lock().unwrap()) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{args:?} ended before the signal: {}",
            err.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    signal("STOP", child.id());
    signal("TERM", child.id());
    signal("CONT", child.id());
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let err = err.lock().unwrap().clone();
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "{args:?} was not stopped by SIGTERM: {err}"
    );
    err
}

/// study.json without its wall times (each stage's, each student's, the whole study's).
fn without_times(dir: &Path) -> serde_json::Value {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("study.json")).unwrap()).unwrap();
    json["seconds"] = 0.into();
    for stage in json["outcome"]["stages"].as_array_mut().unwrap() {
        stage[1] = 0.into();
    }
    for baseline in ["main", "other"] {
        for t in json["outcome"][baseline]["training"].as_array_mut().unwrap() {
            t["seconds"] = 0.into();
        }
    }
    json
}

/// Removes every training state (running and kept checkpoints) under `dir`, leaving the
/// units' results: what a study's record carried to another machine holds. Returns how many.
fn remove_training_states(dir: &Path) -> usize {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            removed += remove_training_states(&path);
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            std::fs::remove_file(&path).unwrap();
            removed += 1;
        }
    }
    removed
}

/// A study stopped by SIGTERM three times — in the middle of a training-length run (which
/// saves its checkpoint and continues from it), as the main baseline starts, and as the last
/// stage starts (the main baseline resumed with stages 1 and 2 taken from the record and the
/// long runs from their units' results, their training states removed as on another machine,
/// so that the seeds read off them are trained again) — and resumed each time with
/// `--resume` ends with the record of an uninterrupted study, wall times apart.
#[test]
fn a_study_stopped_by_signals_resumes_to_the_uninterrupted_record() {
    let base = std::env::temp_dir().join(format!("dcm-study-resume-{}", std::process::id()));
    let (whole, parts) = (base.join("whole"), base.join("parts"));
    let out = dcm(&["reproduce", "--preset", "study-smoke", "--out"], &whole);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unit = parts.join("checkpoints/seed0/cm");
    let err = stopped_when(&["reproduce", "--preset", "study-smoke", "--out"], &parts, |_, _| {
        unit.join(kept_checkpoint(5)).is_file()
    });
    assert!(
        err.contains(&format!("checkpoint saved, continue with --resume {}", parts.display())),
        "the message names the study's folder: {err}"
    );
    assert!(unit.join("checkpoint.safetensors").is_file() && !unit.join("result.json").is_file());
    let resume = ["reproduce", "--preset", "study-smoke", "--resume"];
    let err = stopped_when(&resume, &parts, |_, err| err.contains("[study 3/7]"));
    assert!(err.contains("[study 1/7] references: finished before"), "{err}");
    let states = remove_training_states(&parts.join("checkpoints"));
    assert!(states > 0, "the long runs keep their states");
    let err = stopped_when(&resume, &parts, |_, err| err.contains("[study 7/7]"));
    assert!(err.contains("[study 2/7] training length: finished before"), "{err}");
    let out = dcm(&resume, &parts);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("[study 6/7] target horizon: finished before"), "{err}");
    assert!(
        without_times(&parts) == without_times(&whole),
        "the resumed study's record differs"
    );
    for f in [
        "results.csv",
        "intervals.csv",
        "training_length.csv",
        "horizon.csv",
        "guidance.csv",
    ] {
        let read = |d: &Path| std::fs::read_to_string(d.join(f)).unwrap();
        assert!(read(&parts) == read(&whole), "{f} differs");
    }
    std::fs::remove_dir_all(&base).unwrap();
}

/// A study's record made with other settings or from other data is not continued: one line
/// names what differs. Nor is a study started over a recorded one, or `--resume` taken
/// outside the study.
#[test]
fn a_resume_with_other_settings_is_refused_naming_them() {
    let dir = std::env::temp_dir().join(format!("dcm-study-refuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = serde_json::to_value(StudyConfig::named("study-smoke").unwrap()).unwrap();
    let empty = |preset: &str| serde_json::json!({"preset": preset, "rows": [], "training": []});
    let record = |config: &serde_json::Value| {
        let outcome = serde_json::json!({"classes": 10, "main": empty("smoke"), "other": empty("smoke-lora"),
            "lengths": [], "horizons": [], "guidance": [], "analytic": [], "analytic_samples": 0, "stages": []});
        let json = serde_json::json!({"config": config, "outcome": outcome, "seconds": 0.0, "machine": ""});
        std::fs::write(dir.join("study.json"), json.to_string()).unwrap();
    };
    let refused = |args: &[&str], wanted: &[&str]| {
        let out = dcm(args, &dir);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.trim().lines().count() == 1,
            "{args:?}: {err}"
        );
        assert!(wanted.iter().all(|w| err.contains(w)), "{args:?}: {err}");
    };
    let resume = ["reproduce", "--preset", "study-smoke", "--resume"];
    refused(&resume, &["no study.json there"]);
    config["main"]["per_class"] = 9.into();
    config["level"] = 0.9.into();
    record(&config);
    refused(
        &resume,
        &["different settings", "main.per_class: 9 → 8", "level: 0.9 → 0.95"],
    );
    refused(
        &["reproduce", "--preset", "study", "--resume"],
        &["different settings", "more"],
    );
    record(&serde_json::to_value(StudyConfig::named("study-smoke").unwrap()).unwrap());
    let mut inputs = StudyInputs::of(&dcm::runtime::assets::home().join("models"), "mnist").unwrap();
    inputs.data = "digits/".into();
    inputs.save(&dir).unwrap();
    refused(&resume, &["other models or data", "--data: digits/ → mnist"]);
    refused(
        &["reproduce", "--preset", "study-smoke", "--out"],
        &["holds a study already", "--resume"],
    );
    refused(
        &["reproduce", "--preset", "smoke", "--resume"],
        &["--resume: only with --preset study"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn repo(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every sentence of docs/study/README.md and of the README's Results block is generated
/// from docs/study/study.json: rendering that file again gives them to the byte (and the
/// intervals beside them). A hand edit, or numbers changed without the text, fails here.
#[test]
fn the_write_up_is_generated_from_study_json() {
    let stored = StoredStudy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/study/study.json")).unwrap();
    let text = render(&stored.record(), None).unwrap();
    assert!(
        text.readme == repo("docs/study/README.md"),
        "docs/study/README.md is not what study.json renders"
    );
    assert!(
        text.summary == repo("docs/study/summary.md"),
        "docs/study/summary.md is not what study.json renders"
    );
    assert!(
        text.intervals_csv == repo("docs/study/intervals.csv"),
        "docs/study/intervals.csv differs"
    );
    let readme = repo("README.md");
    let block = readme
        .split_once(SUMMARY_BEGIN)
        .and_then(|(_, rest)| rest.split_once(SUMMARY_END))
        .map(|(block, _)| block.trim())
        .expect("README.md has no generated Results block");
    assert!(
        block == text.summary.trim(),
        "README.md's Results block differs from docs/study/summary.md: copy it in"
    );
}

/// `paper` was never the paper's settings: it runs as `large` and says so.
#[test]
fn the_old_paper_preset_runs_as_large_saying_why() {
    let out = Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(["reproduce", "--preset", "paper", "--per-class", "3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--preset paper is now --preset large") && err.contains("--preset lora"),
        "{err}"
    );
    assert!(
        !out.status.success() && err.contains("--per-class"),
        "the large preset's validation ran: {err}"
    );
}
