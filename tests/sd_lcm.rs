//! A LoRA student of an SD teacher sampled with the multistep consistency sampler against
//! diffusers' `LCMScheduler` (`original_inference_steps = 10`, guidance 1) with the same LoRA
//! loaded (`tests/fixtures/sd/lora/golden.json`): from the golden latents and the scheduler's
//! recorded re-noise draws, every step's `denoised` and the final latents, for the kohya, PEFT
//! and mixed layouts; `dcm sample --lora` writes finite latents and refuses non-SD teachers.

use candle_core::{DType, Device, Shape, Tensor};
use dcm::consistency::sampler::{multistep_sample_with, picked_timesteps, Picking};
use dcm::data::npy;
use dcm::diffusion::discretization::Discretization;
use dcm::models::sd::text::NullText;
use dcm::models::sd::SdTeacher;
use dcm::runtime::device::Runtime;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `|a − b| ≤ 1e-4 · max(1, |b|)`.
const TOL: f64 = 1e-4;
/// The scheduler's `original_inference_steps`, our N.
const INTERVALS: usize = 10;
const LAYOUTS: [&str; 3] = ["lora_kohya", "lora_peft", "lora_mixed"];

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sd")
        .join(path)
}

fn golden() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("lora/lora_golden.safetensors"), &Device::Cpu).unwrap()
}

fn lcm_prompts() -> Vec<String> {
    let text = std::fs::read_to_string(fixture("lora/golden.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(json["settings"]["lcm_sampling"]["prompts"].clone()).unwrap()
}

/// `max |a − b| / max(1, |b|)` over all elements.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let v = |t: &Tensor| {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    v(a).iter()
        .zip(&v(b))
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max)
}

/// Our timesteps for K steps are diffusers' τ + 1.
#[test]
fn sampler_timesteps_are_the_lcm_schedulers() {
    let g = golden();
    let grid = Discretization::new(INTERVALS).unwrap();
    for k in [2, 4] {
        let want: Vec<i64> = g[&format!("lcm.n{k}.timesteps")].to_vec1().unwrap();
        let got = picked_timesteps(grid, k, Picking::Floor).unwrap();
        let got: Vec<i64> = got.iter().map(|&t| t as i64 - 1).collect();
        assert_eq!(got, want, "K = {k}");
    }
}

/// Samples with the golden's re-noise draws; per-step `denoised` and the output.
fn check_layout(layout: &str) {
    let rt = Runtime::default();
    let lora = fixture(&format!("lora/{layout}.safetensors"));
    let student = SdTeacher::load_with_lora(&fixture("sd1"), &rt, Some(&lora)).unwrap();
    let g = golden();
    let x_t = &g["lcm.latents"];
    let cond = student
        .condition(&rt, &lcm_prompts(), &NullText::Pipeline, x_t)
        .unwrap();
    let grid = Discretization::new(INTERVALS).unwrap();
    for k in [2, 4] {
        let ts = picked_timesteps(grid, k, Picking::Floor).unwrap();
        let noise = &g[&format!("lcm.n{k}.noise")];
        let mut drawn = 0;
        let mut renoise = |shape: &Shape| {
            let z = noise.get(drawn)?;
            assert_eq!(z.shape(), shape);
            drawn += 1;
            Ok(z)
        };
        let mut steps = Vec::new();
        let out = multistep_sample_with(&student, x_t, &ts, &cond, &mut renoise, &mut |x0| {
            steps.push(x0.clone())
        })
        .unwrap();
        assert_eq!(drawn, k - 1, "{layout} K = {k}: one draw per step but the last");
        let denoised = &g[&format!("lcm.n{k}.denoised")];
        for (i, x0) in steps.iter().enumerate() {
            let e = rel_err(x0, &denoised.get(i).unwrap());
            eprintln!("{layout} K = {k} step {i}: denoised rel err {e:.2e}");
            assert!(e <= TOL, "{layout} K = {k} step {i}: denoised rel err {e:.2e}");
        }
        let e = rel_err(&out, &g[&format!("lcm.n{k}.out")]);
        eprintln!("{layout} K = {k}: out rel err {e:.2e}");
        assert!(e <= TOL, "{layout} K = {k}: out rel err {e:.2e}");
    }
}

#[test]
fn kohya_lora_student_matches_lcm_scheduler() {
    check_layout(LAYOUTS[0]);
}

#[test]
fn peft_lora_student_matches_lcm_scheduler() {
    check_layout(LAYOUTS[1]);
}

#[test]
fn mixed_lora_student_matches_lcm_scheduler() {
    check_layout(LAYOUTS[2]);
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dcm-sdlcm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn dcm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dcm"))
        .args(args)
        .output()
        .expect("run dcm")
}

/// `dcm sample --teacher sd:DIR --lora FILE --steps 2` writes finite latents of the noise's shape.
#[test]
fn cli_samples_a_lora_student() {
    let dir = scratch("cli");
    let (noise, out) = (dir.join("x.npy"), dir.join("out.npy"));
    npy::write(&noise, &golden()["lcm.latents"]).unwrap();
    let teacher = format!("sd:{}", fixture("sd1").display());
    let lora = fixture("lora/lora_kohya.safetensors");
    let run = dcm(&[
        "sample",
        "--teacher",
        &teacher,
        "--lora",
        lora.to_str().unwrap(),
        "--intervals",
        "10",
        "--steps",
        "2",
        "--prompt",
        "a photo of a cat",
        "--noise",
        noise.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let got = npy::read(&out).unwrap();
    assert_eq!(got.dims(), &[2, 4, 8, 8]);
    let v = got
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let run = dcm(args);
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: expected '{needle}' in: {err}");
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{args:?}: {err}"
    );
}

/// `--lora` needs an sd:DIR teacher; a LoRA student takes no --guidance or --solver.
#[test]
fn cli_lora_flags_fail_cleanly() {
    let dir = scratch("bad");
    let (noise, out) = (dir.join("x.npy"), dir.join("out.npy"));
    npy::write(&noise, &golden()["lcm.latents"]).unwrap();
    let lora = fixture("lora/lora_kohya.safetensors");
    let (noise, out, lora) = (noise.to_str().unwrap(), out.to_str().unwrap(), lora.to_str().unwrap());
    let base = ["sample", "--noise", noise, "--out", out];
    let gaussian = ["--teacher", "gaussian:mean=0,std=1", "--lora", lora];
    assert_one_line_error(&[&base[..], &gaussian].concat(), "needs an sd:DIR teacher");
    let teacher = format!("sd:{}", fixture("sd1").display());
    let sd = [&base[..], &["--teacher", &teacher, "--prompt", "a cat", "--lora"]].concat();
    let with_lora = [&sd[..], &[lora]].concat();
    assert_one_line_error(&[&with_lora[..], &["--guidance", "3"]].concat(), "--guidance");
    assert_one_line_error(&[&with_lora[..], &["--solver", "heun"]].concat(), "--solver");
    assert_one_line_error(
        &[&with_lora[..], &["--steps", "11", "--intervals", "10"]].concat(),
        "--steps 11",
    );
    assert_one_line_error(&[&sd[..], &["/nonexistent/l.safetensors"]].concat(), "nonexistent");
    // A student samples without guidance, so an unconditional input would change nothing.
    assert_one_line_error(
        &[&with_lora[..], &["--negative-prompt", "blurry"]].concat(),
        "--negative-prompt has no effect on a student",
    );
    assert_one_line_error(
        &[&with_lora[..], &["--uncond", "zeros"]].concat(),
        "--uncond has no effect on a student",
    );
}
