//! Crash safety: a run killed with SIGKILL at random moments and resumed ends with a
//! model byte-identical to an uninterrupted run; SIGINT saves and exits 130; a stop in the
//! middle of a gradient-accumulation step saves the last completed step and resumes
//! bit-identically; a non-finite loss stops the run with a clear error and keeps the last
//! checkpoint.

use candle_core::{Device, Tensor};
use dcm::diffusion::condition::Condition;
use dcm::diffusion::denoiser::Denoiser;
use dcm::models::teacher::Teacher;
use dcm::nets::lora::LoraConfig;
use dcm::nets::mlp::MlpConfig;
use dcm::nets::network::NetConfig;
use dcm::runtime::device::Runtime;
use dcm::runtime::noise::{seeded, Rng};
use dcm::runtime::signals;
use dcm::train::distill::{distill, DistillConfig, TrainingData};
use dcm::train::trainer::Checkpointing;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
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
        .map(|s| if *s == "300" { "10000" } else { s })
        .collect();
    let mut child = spawn(&long, &["--checkpoint-every", "0", "--out", b.to_str().unwrap()]);
    // Signal once training is under way — at its first progress line (step 1,000 of 10,000),
    // whatever the machine's speed — with nine tenths of the run left for the signal to land in.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let mut err = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        err += &(line.clone() + "\n");
        if line.contains("step ") {
            break;
        }
    }
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    for line in lines {
        err += &(line.unwrap() + "\n");
    }
    let status = child.wait().unwrap();
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

/// Training data that raises the stop flag (as SIGTERM does) while drawing its `at`-th batch.
struct StopAt<'a> {
    inner: &'a dyn TrainingData,
    calls: Cell<usize>,
    at: usize,
}

impl TrainingData for StopAt<'_> {
    fn sample_shape(&self) -> Vec<usize> {
        self.inner.sample_shape()
    }
    fn batch(&self, rng: &mut Rng, size: usize, device: &Device) -> anyhow::Result<(Tensor, Condition)> {
        self.calls.set(self.calls.get() + 1);
        if self.calls.get() == self.at {
            signals::flag().store(signals::SIGTERM, Ordering::Relaxed);
        }
        self.inner.batch(rng, size, device)
    }
}

fn bits(params: &dcm::nets::layers::Params) -> Vec<(String, Vec<u32>)> {
    params
        .iter()
        .map(|(k, v)| {
            let v: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
            (k.clone(), v.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

/// A stop in the middle of a `--grad-accum` step saves the last *completed* step — its
/// generator as that step ended, the partial gradient dropped — so the resumed run redraws the
/// interrupted step's batches and ends bit-identical to an uninterrupted one. Two ways in: the
/// flag seen between micro-batches (CM), and a stop honoured inside a micro-batch, between the
/// teacher's solver steps (Direct). One test: the flag is the process's.
#[test]
fn a_stop_between_micro_batches_saves_the_last_completed_step() {
    let rt = Runtime::default();
    let teacher = Teacher::parse("mixture:ring", &rt).unwrap();
    let data = teacher.sample_data(512, &mut seeded(3)).unwrap();
    let net = NetConfig::Mlp(MlpConfig {
        sample_shape: data.sample_shape(),
        hidden: 32,
        depth: 2,
        time_dim: 16,
        num_classes: teacher.num_classes(),
        schedule: teacher.schedule_kind().unwrap(),
    });
    let start = net.init(&mut seeded(1)).unwrap();
    // (method, micro-batches per step, the batch draw that stops, the step it falls in)
    for (method, accum, at, step) in [("cm", 4, 10, 3), ("direct", 2, 7, 4)] {
        let cfg = DistillConfig {
            method: method.parse().unwrap(),
            intervals: 10,
            guidance: 1.0,
            steps: 6,
            batch: 16,
            grad_accum: accum,
            ema_decay: Some(0.9),
            ..DistillConfig::paper_lora(method.parse().unwrap(), LoraConfig::PAPER)
        };
        let cfg = DistillConfig { lora: None, ..cfg };
        let run = |d: &dyn TrainingData, out: &Path, resume: bool| {
            let checkpointing = Checkpointing {
                dir: Some(out.to_path_buf()),
                resume,
                ..Checkpointing::default()
            };
            distill(Some(&teacher), &net, &start, d, &cfg, checkpointing)
        };
        let (a, b) = (dir(&format!("mid-a-{method}")), dir(&format!("mid-b-{method}")));
        let whole = run(&data, &a, false).unwrap();
        let stopping = StopAt {
            inner: &data,
            calls: Cell::new(0),
            at,
        };
        let e = run(&stopping, &b, false).err().unwrap();
        signals::flag().store(0, Ordering::Relaxed);
        let stop = e
            .downcast_ref::<signals::Interrupted>()
            .unwrap_or_else(|| panic!("{e:#}"));
        assert_eq!((stop.step, stop.mid_step), (step - 1, true), "{method}: {stop}");
        assert!(stop.to_string().contains(&format!("checkpoint of step {}", step - 1)));
        let resumed = run(&data, &b, true).unwrap();
        assert_eq!(resumed.losses.len(), 6);
        assert!(
            bits(&whole.params) == bits(&resumed.params) && whole.losses == resumed.losses,
            "{method}: stopped mid-step and resumed differs from the uninterrupted run"
        );
        assert_eq!(whole.teacher_evaluations, resumed.teacher_evaluations, "{method}");
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }
}
