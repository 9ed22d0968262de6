//! Crash safety: a run killed with SIGKILL at random moments and resumed ends with a
//! model byte-identical to an uninterrupted run; SIGINT saves and exits 130; a
//! non-finite loss stops the run with a clear error and keeps the last checkpoint.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dcm-resume-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn spawn(args: &[&str], out: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(args)
        .args(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn run(args: &[&str], out: &[&str]) -> std::process::Output {
    spawn(args, out).wait_with_output().unwrap()
}

/// A pseudo-random delay in [lo, hi) ms that differs between runs and kills.
fn random_ms(lo: u64, hi: u64, salt: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    lo + (t ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % (hi - lo)
}

fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn model(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

const TEACHER: &[&str] = &[
    "train-teacher",
    "--data",
    "toy:moons",
    "--steps",
    "300",
    "--hidden",
    "64",
    "--checkpoint-every",
    "20",
];
const CM_EMA: &[&str] = &[
    "distill",
    "--method",
    "cm",
    "--teacher",
    "mixture:ring",
    "--intervals",
    "10",
    "--steps",
    "200",
    "--hidden",
    "64",
    "--ema-decay",
    "0.9",
    "--checkpoint-every",
    "15",
];

#[test]
fn sigkill_and_resume_is_byte_identical() {
    for (i, args) in [TEACHER, CM_EMA].iter().enumerate() {
        let (a, b) = (dir(&format!("a{i}")), dir(&format!("b{i}")));
        let o = run(args, &["--out", a.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut kills = 0;
        let mut finished = false;
        for attempt in 0..20 {
            let resume = b.join("checkpoint.safetensors").is_file();
            let flag = if resume { "--resume" } else { "--out" };
            let mut child = spawn(args, &[flag, b.to_str().unwrap()]);
            let deadline = Instant::now()
                + Duration::from_millis(if kills < 3 {
                    random_ms(100, 900, attempt)
                } else {
                    600_000
                });
            match wait_until(&mut child, deadline) {
                Some(status) => {
                    assert!(
                        status.success(),
                        "resumed run failed: {}",
                        String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr)
                    );
                    finished = true;
                    break;
                }
                None => {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    kills += 1;
                }
            }
        }
        assert!(finished, "{args:?} never finished");
        println!("{}: {kills} SIGKILLs, resumed to the end", args[0]);
        assert!(
            model(&a) == model(&b),
            "{}: resumed model differs from the uninterrupted one",
            args[0]
        );
    }
}

#[test]
fn sigint_saves_a_checkpoint_and_exits_130() {
    let (a, b) = (dir("int-a"), dir("int-b"));
    let long: Vec<&str> = TEACHER[..TEACHER.len() - 2]
        .iter()
        .map(|s| if *s == "300" { "3000" } else { s })
        .collect();
    let mut child = spawn(&long, &["--checkpoint-every", "0", "--out", b.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(700));
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("stopped by SIGINT") && err.contains("--resume"), "{err}");
    assert!(b.join("checkpoint.safetensors").is_file());
    let o = run(&long, &["--checkpoint-every", "0", "--resume", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&long, &["--checkpoint-every", "0", "--out", a.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(
        model(&a) == model(&b),
        "SIGINT + resume must equal an uninterrupted run"
    );
}

#[test]
fn resume_refuses_different_settings_and_nan_keeps_the_checkpoint() {
    let d = dir("nan");
    let o = run(
        &[
            "train-teacher",
            "--data",
            "toy:moons",
            "--steps",
            "40",
            "--hidden",
            "32",
            "--checkpoint-every",
            "10",
        ],
        &["--out", d.to_str().unwrap()],
    );
    assert!(o.status.success());
    let o = run(
        &[
            "train-teacher",
            "--data",
            "toy:spiral",
            "--steps",
            "40",
            "--hidden",
            "32",
        ],
        &["--resume", d.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("different settings") && err.contains("data: \"toy:moons\" → \"toy:spiral\""),
        "the error names each differing setting with its old and new value: {err}"
    );
    let e = dir("nan2");
    let o = run(
        &[
            "train-teacher",
            "--data",
            "toy:moons",
            "--steps",
            "200",
            "--hidden",
            "32",
            "--lr",
            "1e30",
            "--max-grad-norm",
            "0",
            "--checkpoint-every",
            "1",
        ],
        &["--out", e.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("loss is") && err.contains("at step"), "{err}");
    assert!(
        e.join("checkpoint.safetensors").is_file(),
        "the last good checkpoint must survive"
    );
    assert!(!e.join("model.safetensors").exists());
}
