//! Data-parallel distillation under `mpirun` (built with `--features distributed`; CI installs
//! Open MPI): K = 2 ranks train the student K = 1 trains, up to the summation order of the
//! gradients' all-reduce, for an MLP student and a LoRA student of the tiny SD pipeline; a
//! rank killed with SIGKILL ends the job within 60 s naming the rank, and the checkpoint it
//! leaves resumes with K = 1 to the uninterrupted run's student.
#![cfg(feature = "distributed")]

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dcm-distributed-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `mpirun -n ranks dcm args…` (one thread per rank: the machine has two cores).
fn mpirun(ranks: usize) -> Command {
    mpirun_with(ranks, "RAYON_NUM_THREADS=1")
}

/// `mpirun` exporting `var` (NAME=VALUE) and one thread per rank to every rank.
fn mpirun_with(ranks: usize, var: &str) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-n", &ranks.to_string()]);
    c.args(["-x", "RAYON_NUM_THREADS=1", "-x", var, env!("CARGO_BIN_EXE_dcm")]);
    c
}

fn run(ranks: usize, args: &[&str]) -> Output {
    let o = mpirun(ranks).args(args).output().expect("mpirun runs");
    assert!(
        o.status.success(),
        "mpirun -n {ranks} dcm {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn norm2(t: &Tensor) -> f64 {
    let v: f32 = t.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    v as f64
}

/// The files' tensors agree to `tol` relative over the whole file (`‖a − b‖ ≤ tol ‖a‖`, all
/// tensors as one vector) and to `10 tol` tensor by tensor.
fn assert_close(a: &Path, b: &Path, tol: f64) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.len(), b.len());
    let (mut total, mut total_diff) = (0.0, 0.0);
    for (name, x) in &a {
        let (scale, diff) = (norm2(x), norm2(&(x - &b[name]).unwrap()));
        assert!(
            diff.sqrt() <= 10.0 * tol * scale.sqrt().max(1e-12),
            "{name}: ‖Δ‖ {:e} of ‖a‖ {:e}",
            diff.sqrt(),
            scale.sqrt()
        );
        (total, total_diff) = (total + scale, total_diff + diff);
    }
    let relative = (total_diff / total).sqrt();
    eprintln!("relative difference over the file: {relative:e}");
    assert!(relative <= tol, "relative difference over the file {relative:e}");
}

const MLP: &[&str] = &[
    "distill",
    "--teacher",
    "mixture:ring",
    "--hidden",
    "32",
    "--batch",
    "16",
];

/// An MLP student: CM and Direct CM with K = 2 equal K = 1 to 1e-5 relative.
#[test]
fn two_ranks_train_the_mlp_student_one_rank_trains() {
    let d = dir("mlp");
    for method in ["cm", "direct"] {
        let outs = [1, 2].map(|k| d.join(format!("{method}-{k}")));
        for (k, out) in [1, 2].iter().zip(&outs) {
            let mut args = MLP.to_vec();
            args.extend(["--method", method, "--steps", "30", "--out", out.to_str().unwrap()]);
            run(*k, &args);
        }
        assert_close(
            &outs[0].join("model.safetensors"),
            &outs[1].join("model.safetensors"),
            1e-5,
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// A captioned folder of six small images for the tiny SD pipeline.
fn captioned_folder(d: &Path) -> PathBuf {
    let data = d.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..6u32 {
        let img = image::RgbImage::from_fn(24, 20, |x, y| match (x / 4 + y / 4 + i) % 2 {
            0 => image::Rgb([(40 * i) as u8, 200 - (30 * i) as u8, 90]),
            _ => image::Rgb([250 - (20 * i) as u8, (35 * i) as u8, 160]),
        });
        img.save(data.join(format!("img{i}.png"))).unwrap();
        std::fs::write(data.join(format!("img{i}.txt")), format!("picture {i}")).unwrap();
    }
    data
}

/// A LoRA student of the tiny SD pipeline: K = 2 writes the LoRA file K = 1 writes, to 1e-5
/// relative (its convolutions round differently at 2 rows than at 4, and AdamW's first steps
/// carry that to ~1e-5 of the smallest tensors).
#[test]
fn two_ranks_train_the_lora_student_one_rank_trains() {
    let d = dir("sd");
    let data = captioned_folder(&d);
    let teacher = format!("sd:{}/tests/fixtures/sd/sd1", env!("CARGO_MANIFEST_DIR"));
    let outs = [1, 2].map(|k| d.join(format!("k{k}")));
    for (k, out) in [1, 2].iter().zip(&outs) {
        let args = [
            "distill",
            "--method",
            "cm",
            "--teacher",
            &teacher,
            "--data",
            data.to_str().unwrap(),
            "--lora-rank",
            "4",
            "--intervals",
            "10",
            "--guidance",
            "3",
            "--steps",
            "4",
            "--batch",
            "4",
            "--lr",
            "1e-3",
            "--out",
            out.to_str().unwrap(),
        ];
        run(*k, &args);
    }
    assert_close(
        &outs[0].join("lora.safetensors"),
        &outs[1].join("lora.safetensors"),
        1e-5,
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// The ranks' processes of a running `mpirun`, as (rank, pid): its descendants whose
/// environment names their rank.
fn ranks_of(job: &Child) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let env = String::from_utf8_lossy(&env);
        let rank = env.split('\0').find_map(|v| v.strip_prefix("OMPI_COMM_WORLD_RANK="));
        if let Some(rank) = rank
            .and_then(|r| r.parse().ok())
            .filter(|_| descends_from(pid, job.id()))
        {
            found.push((rank, pid));
        }
    }
    found
}

fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    while pid > 1 {
        if pid == ancestor {
            return true;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        pid = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
    }
    false
}

/// `kill SIGNAL pid`.
fn signal(name: &str, pid: u32) {
    assert!(Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// The job's ranks' pids in rank order, each stopped (SIGSTOP): a run of a few hundred
/// milliseconds is then interrupted at a known point, mid-run, on any machine.
fn pause(job: &Child) -> Vec<u32> {
    let mut ranks = ranks_of(job);
    ranks.sort();
    assert_eq!(ranks.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1], "the job's ranks");
    ranks.iter().for_each(|&(_, pid)| signal("-STOP", pid));
    ranks.into_iter().map(|(_, pid)| pid).collect()
}

/// SIGKILL to rank 1 of a K = 2 run ends the job with a non-zero exit within 60 s and a message
/// naming rank 1; the last checkpoint (rank 0's, written atomically) resumes with K = 1 to the
/// student of an uninterrupted K = 1 run.
#[test]
fn a_killed_rank_ends_the_job_and_its_checkpoint_resumes_with_one_rank() {
    let d = dir("kill");
    let (whole, cut) = (d.join("whole"), d.join("cut"));
    let mut args = MLP.to_vec();
    args.extend(["--method", "cm", "--steps", "1000", "--checkpoint-every", "50"]);
    let mut one = args.clone();
    one.extend(["--out", whole.to_str().unwrap()]);
    run(1, &one);
    let mut two = args.clone();
    two.extend(["--out", cut.to_str().unwrap()]);
    let mut job = mpirun(2)
        .args(&two)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&cut);
    let ranks = pause(&job);
    let killed = Instant::now();
    signal("-KILL", ranks[1]);
    signal("-CONT", ranks[0]);
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the job outlived its killed rank by 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "exit {status:?}");
    assert!(stderr.contains("rank 1"), "{stderr}");
    resume_with_one_rank(&args, &cut, &whole);
    std::fs::remove_dir_all(&d).unwrap();
}

/// SIGTERM to one rank stops every rank at the end of the same step (the request travels with
/// the gradients' sum), rank 0 saves that step, and the checkpoint resumes with K = 1 to the
/// uninterrupted run's student. The ranks are paused while the signal is queued, so it lands
/// mid-run however fast the machine is.
#[test]
fn sigterm_to_one_rank_stops_every_rank_at_one_step_and_the_checkpoint_resumes() {
    let d = dir("sigterm");
    let (whole, cut) = (d.join("whole"), d.join("cut"));
    let mut args = MLP.to_vec();
    args.extend(["--method", "direct", "--steps", "1500", "--checkpoint-every", "50"]);
    let mut one = args.clone();
    one.extend(["--out", whole.to_str().unwrap()]);
    run(1, &one);
    let mut two = args.clone();
    two.extend(["--out", cut.to_str().unwrap()]);
    let job = mpirun(2)
        .args(&two)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&cut);
    let ranks = pause(&job);
    signal("-TERM", ranks[1]);
    ranks.iter().for_each(|&pid| signal("-CONT", pid));
    let output = job.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("distilled in"),
        "the run ended before SIGTERM reached it: {stderr}"
    );
    let step = stopped_step(&stderr);
    assert!(step < 1500, "{stderr}");
    resume_with_one_rank(&args, &cut, &whole);
    std::fs::remove_dir_all(&d).unwrap();
}

/// SIGTERM to `mpirun` (which passes it on to the ranks in its own time) stops the job within
/// 60 s, every rank at the end of the same step, with a non-zero exit and the checkpoint of
/// that step saved. The run (200,000 steps, a minute or more) cannot end before the signal arrives.
#[test]
fn sigterm_to_mpirun_stops_every_rank_at_one_step_with_its_checkpoint() {
    let d = dir("sigterm-mpirun");
    let cut = d.join("cut");
    let mut args = MLP.to_vec();
    args.extend(["--method", "direct", "--steps", "200000", "--checkpoint-every", "50"]);
    args.extend(["--out", cut.to_str().unwrap()]);
    let job = mpirun(2)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&cut);
    let sent = Instant::now();
    signal("-TERM", job.id());
    let output = job.wait_with_output().unwrap();
    assert!(
        sent.elapsed() < Duration::from_secs(60),
        "the job outlived SIGTERM by 60 s"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let step = stopped_step(&stderr);
    let checkpoint = std::fs::read(cut.join("checkpoint.safetensors")).unwrap();
    let len = u64::from_le_bytes(checkpoint[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&checkpoint[8..8 + len]).unwrap();
    let state: serde_json::Value = serde_json::from_str(header["__metadata__"]["dcm_state"].as_str().unwrap()).unwrap();
    assert_eq!(state["adam_step"].as_u64(), Some(step as u64), "{stderr}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Resumes the interrupted run in `cut` with one rank (no mpirun) and checks that it ends with
/// the uninterrupted run's student in `whole`, to 1e-5 relative.
fn resume_with_one_rank(args: &[&str], cut: &Path, whole: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(args)
        .args(["--resume", cut.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_close(&whole.join("model.safetensors"), &cut.join("model.safetensors"), 1e-5);
}

/// Waits (at most 120 s) for a run's first checkpoint.
fn wait_for_checkpoint(out: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.join("checkpoint.safetensors").is_file() {
        assert!(Instant::now() < deadline, "no checkpoint within 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The step after which both ranks of a K = 2 job say they stopped by SIGTERM (they must agree).
fn stopped_step(stderr: &str) -> usize {
    let steps: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("stopped by SIGTERM after step "))
        .map(|l| l.split(';').next().unwrap())
        .collect();
    assert_eq!(steps.len(), 2, "{stderr}");
    assert_eq!(steps[0], steps[1], "the ranks stopped at different steps: {stderr}");
    steps[0].parse().unwrap()
}

/// A rank that hangs without dying (SIGSTOP) ends the job within 60 s: the other rank gives up
/// waiting after `DCM_RANK_TIMEOUT` seconds, naming itself and the wait.
#[test]
fn a_hung_rank_ends_the_job_in_bounded_time() {
    let d = dir("hang");
    let cut = d.join("cut");
    let mut args = MLP.to_vec();
    args.extend([
        "--method",
        "cm",
        "--steps",
        "100000",
        "--checkpoint-every",
        "50",
        "--out",
        cut.to_str().unwrap(),
    ]);
    let mut job = mpirun_with(2, "DCM_RANK_TIMEOUT=5")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&cut);
    let rank1 = ranks_of(&job)
        .into_iter()
        .find(|(r, _)| *r == 1)
        .expect("rank 1 runs")
        .1;
    let stopped = Instant::now();
    Command::new("kill")
        .args(["-STOP", &rank1.to_string()])
        .status()
        .unwrap();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        if stopped.elapsed() > Duration::from_secs(60) {
            let _ = Command::new("kill").args(["-9", &rank1.to_string()]).status();
            panic!("the job outlived its hung rank by 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let _ = Command::new("kill").args(["-9", &rank1.to_string()]).status();
    assert!(!status.success(), "exit {status:?}");
    assert!(
        stderr.contains("rank 0: no answer from the other ranks for 5 s"),
        "{stderr}"
    );
    assert!(cut.join("checkpoint.safetensors").is_file());
    std::fs::remove_dir_all(&d).unwrap();
}

/// `dcm eval` of a LoRA student of the tiny SD pipeline: K = 2 ranks (sharing five rows in
/// blocks of two, so one round leaves rank 1 idle) write the table, samples and teacher
/// reference K = 1 writes, bit for bit apart from the wall times; and K = 2 reading K = 1's
/// reference cache gives the same table.
#[test]
fn two_ranks_evaluate_as_one_rank_does() {
    let d = dir("eval");
    let fixture = |p: &str| format!("{}/tests/fixtures/sd/{p}", env!("CARGO_MANIFEST_DIR"));
    let noise = d.join("noise.npy");
    let draw = candle_core::Tensor::randn(0f32, 1.0, (5, 4, 8, 8), &Device::Cpu).unwrap();
    dcm::data::npy::write(&noise, &draw).unwrap();
    let prompts = d.join("prompts.txt");
    std::fs::write(&prompts, "a red cat\nblue sky\nblue sky over a field\na dog\na field\n").unwrap();
    let eval = |ranks: usize, out: &Path, extra: &[&str]| {
        let teacher = format!("sd:{}", fixture("sd1"));
        let (lora, clip) = (fixture("lora/lora_kohya.safetensors"), fixture("clip"));
        let mut args = vec![
            "eval",
            "--teacher",
            &teacher,
            "--lora",
            &lora,
            "--clip",
            &clip,
            "--intervals",
            "10",
            "--guidance",
            "3",
            "--steps",
            "1,2",
            "--batch",
            "2",
        ];
        args.extend([
            "--prompts",
            prompts.to_str().unwrap(),
            "--noise",
            noise.to_str().unwrap(),
        ]);
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(extra);
        run(ranks, &args);
    };
    let (one, two, cached) = (d.join("one"), d.join("two"), d.join("cached"));
    eval(1, &one, &[]);
    eval(2, &two, &[]);
    let reference = one.join("reference");
    eval(2, &cached, &["--reference", reference.to_str().unwrap()]);
    let table = |dir: &Path| -> Vec<String> {
        let csv = std::fs::read_to_string(dir.join("eval.csv")).unwrap();
        // The last column is wall time.
        csv.lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect()
    };
    assert_eq!(table(&one), table(&two));
    assert_eq!(table(&one), table(&cached));
    let files = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut found: Vec<(String, Vec<u8>)> = walk(dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "npy"))
            .map(|p| {
                (
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        found.sort();
        found
    };
    let (a, b) = (files(&one), files(&two));
    assert!(
        a.len() > 10,
        "samples written: {:?}",
        a.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_eq!(a.len(), b.len());
    for ((name_a, bytes_a), (name_b, bytes_b)) in a.iter().zip(&b) {
        assert_eq!(name_a, name_b);
        assert!(bytes_a == bytes_b, "{name_a} differs between K = 1 and K = 2");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .flat_map(|e| match e.path().is_dir() {
            true => walk(&e.path()),
            false => vec![e.path()],
        })
        .collect()
}
