//! Stable Diffusion teachers from diffusers pipeline folders (`sd:DIR`) against the goldens of
//! `tests/fixtures/sd/` (README there): our DDIM solve of the guided teacher equals diffusers'
//! whole pipeline call with `DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True)`
//! for SD 1.x, SD 2.x (v-prediction) and SDXL; `dcm sample --teacher sd:DIR` writes the same
//! latents and one PNG per row; bad folders and flags end in one-line errors.

use candle_core::{DType, Device, Tensor};
use dcm::data::npy;
use dcm::diffusion::condition::Condition;
use dcm::diffusion::discretization::Discretization;
use dcm::diffusion::guidance::Guided;
use dcm::diffusion::schedule::T;
use dcm::diffusion::solver::{solve, Solver};
use dcm::models::sd::text::NullText;
use dcm::models::sd::SdTeacher;
use dcm::runtime::device::Runtime;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// diffusers' pipeline calls in the goldens: (intervals N, guidance w).
const SOLVES: [(usize, f64); 3] = [(4, 3.0), (10, 3.0), (4, 1.0)];

/// Relative tolerance of whole solves (fixture README: `|a − b| ≤ 1e-4 · max(1, |b|)`).
const TOL: f64 = 1e-4;

fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sd")
        .join(model)
}

fn golden(model: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(model).join("golden.safetensors"), &Device::Cpu).unwrap()
}

fn solve_prompts(model: &str) -> Vec<String> {
    let text = std::fs::read_to_string(fixture(model).join("golden.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(json["settings"]["solve"]["prompts"].clone()).unwrap()
}

/// `max |a − b| / max(1, |b|)` over all elements.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a = a
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let b = b
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max)
}

fn golden_name(n: usize, w: f64) -> String {
    format!("solve.ddim_n{n}_cfg{w}")
}

/// Every step of our guided DDIM solve against diffusers' trajectory, and the whole `solve`.
fn check_solves(model: &str) {
    let rt = Runtime::default();
    let teacher = SdTeacher::load(&fixture(model), &rt).unwrap();
    let g = golden(model);
    let x_t = &g["solve.latents"];
    let cond = teacher
        .condition(&rt, &solve_prompts(model), &NullText::Pipeline, x_t)
        .unwrap();
    for (n, w) in SOLVES {
        let name = golden_name(n, w);
        let grid = Discretization::new(n).unwrap();
        let guided = Guided::new(&teacher, w);
        let trajectory = &g[&format!("{name}.trajectory")];
        let mut x = x_t.clone();
        for (i, t) in (0..n).map(|i| (i, grid.start(i))) {
            x = Solver::Ddim.step(&guided, &x, &[t; 2], grid.k(), &cond).unwrap();
            let err = rel_err(&x, &trajectory.get(i).unwrap());
            assert!(err <= TOL, "{model} {name}: step {i} (t = {t}) off by {err:e}");
        }
        let out = solve(Solver::Ddim, &guided, x_t, grid, T, &cond).unwrap();
        let err = rel_err(&out, &g[&format!("{name}.out")]);
        let scale = g[&format!("{name}.out")]
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        eprintln!("{model} {name}: max |Δ|/max(1,|b|) = {err:.2e} (max |b| = {scale:.1})");
        assert!(err <= TOL, "{model} {name}: off by {err:e}");
    }
    if model == "sdxl" {
        check_sdxl_added_conditioning(&cond, &g);
    }
}

/// SDXL: the pooled embeddings and size ids the pipeline passed to the UNet, rows `[null; text]`.
fn check_sdxl_added_conditioning(cond: &Condition, g: &HashMap<String, Tensor>) {
    let Condition::Text { text, null } = cond else {
        panic!("text condition expected")
    };
    let both = |get: fn(&dcm::diffusion::condition::TextEmbedding) -> &Option<Tensor>| {
        Tensor::cat(&[get(null).as_ref().unwrap(), get(text).as_ref().unwrap()], 0).unwrap()
    };
    let name = golden_name(4, 3.0);
    let ids = both(|t| &t.time_ids);
    assert_eq!(rel_err(&ids, &g[&format!("{name}.add_time_ids")]), 0.0);
    let pooled = both(|t| &t.pooled);
    let err = rel_err(&pooled, &g[&format!("{name}.add_text_embeds")]);
    assert!(err <= 1e-5, "sdxl add_text_embeds off by {err:e}");
}

#[test]
fn sd1_guided_ddim_solves_match_diffusers() {
    check_solves("sd1");
}

#[test]
fn sd2_v_prediction_guided_ddim_solves_match_diffusers() {
    check_solves("sd2");
}

#[test]
fn sdxl_guided_ddim_solves_match_diffusers() {
    check_solves("sdxl");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dcm-sd-{}-{name}", std::process::id()));
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

/// `dcm sample --teacher sd:DIR` writes the golden latents to OUT.npy and one PNG per row,
/// the VAE's decode of those latents.
#[test]
fn cli_samples_sd1_latents_and_pngs() {
    let dir = scratch("cli");
    let g = golden("sd1");
    let (noise, out, pngs, prompts) = (
        dir.join("x.npy"),
        dir.join("out.npy"),
        dir.join("png"),
        dir.join("p.txt"),
    );
    npy::write(&noise, &g["solve.latents"]).unwrap();
    std::fs::write(&prompts, solve_prompts("sd1").join("\n") + "\n").unwrap();
    let teacher = format!("sd:{}", fixture("sd1").display());
    let o = dcm(&[
        "sample",
        "--teacher",
        &teacher,
        "--prompts",
        prompts.to_str().unwrap(),
        "--solver",
        "ddim",
        "--intervals",
        "4",
        "--guidance",
        "3",
        "--noise",
        noise.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--decode",
        pngs.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let latents = npy::read(&out).unwrap();
    let err = rel_err(&latents, &g["solve.ddim_n4_cfg3.out"]);
    eprintln!("sd1 CLI n4 cfg3: {err:.2e}");
    assert!(err <= TOL, "CLI latents off by {err:e}");
    let rt = Runtime::default();
    let sd = SdTeacher::load(&fixture("sd1"), &rt).unwrap();
    let images = dcm::models::sd::images::decode(sd.pipeline(), &rt, &latents).unwrap();
    assert_eq!(images.dims(), &[2, 3, 16, 16]);
    let want: Vec<f32> = images.flatten_all().unwrap().to_vec1().unwrap();
    for row in 0..2 {
        let img = image::open(dcm::models::sd::images::png_path(&pngs, row))
            .unwrap()
            .to_rgb8();
        assert_eq!((img.width(), img.height()), (16, 16));
        for (x, y, p) in img.enumerate_pixels() {
            for c in 0..3 {
                let v = want[((row * 3 + c) * 16 + y as usize) * 16 + x as usize];
                assert!(
                    (p.0[c] as f32 - 255.0 * v).abs() <= 0.5 + 1e-3,
                    "row {row} ({x}, {y}) channel {c}"
                );
            }
        }
    }
    assert_eq!(std::fs::read_dir(&pngs).unwrap().count(), 2);

    // `--decode` alone: --out holds the images; `--prompt` for every row, `--uncond zeros`.
    let o = dcm(&[
        "sample",
        "--teacher",
        &teacher,
        "--prompt",
        "a photo of a cat",
        "--uncond",
        "zeros",
        "--intervals",
        "4",
        "--guidance",
        "3",
        "--noise",
        noise.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--decode",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let x_t = &g["solve.latents"];
    let cond = sd
        .condition(&rt, &vec!["a photo of a cat".to_string(); 2], &NullText::Zeros, x_t)
        .unwrap();
    let grid = Discretization::new(4).unwrap();
    let latents = solve(Solver::Ddim, &Guided::new(&sd, 3.0), x_t, grid, T, &cond).unwrap();
    let want = dcm::models::sd::images::decode(sd.pipeline(), &rt, &latents).unwrap();
    let got = npy::read(&out).unwrap();
    assert_eq!(got.dims(), &[2, 3, 16, 16]);
    assert!(
        rel_err(&got, &want) <= 1e-6,
        "--decode images off by {:e}",
        rel_err(&got, &want)
    );
    assert!(
        rel_err(&latents, &g["solve.ddim_n4_cfg3.out"]) > 1e-2,
        "zero uncond must differ from \"\"'s"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A copy of a fixture pipeline to break.
fn copy_pipeline(model: &str, to: &Path) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &target);
            } else if !path.to_string_lossy().contains("golden") {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    copy(&fixture(model), to);
}

fn assert_clean_failure(args: &[&str], needles: &[&str]) {
    let out = dcm(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?} should exit 2; stderr: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{args:?}: expected '{needle}' in: {err}");
    }
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{args:?}: error must be one line: {err}"
    );
}

/// Broken folders and flags: exit code 2, one line naming the file, key or flag at fault.
#[test]
fn bad_pipelines_and_flags_fail_cleanly() {
    let dir = scratch("bad");
    let noise = dir.join("x.npy");
    npy::write(&noise, &golden("sd1")["solve.latents"]).unwrap();
    let out = dir.join("out.npy");
    let run = |pipeline: &Path, extra: &[&str], needles: &[&str]| {
        let teacher = format!("sd:{}", pipeline.display());
        let mut args = vec!["sample", "--teacher", &teacher, "--intervals", "4"];
        args.extend_from_slice(&["--noise", noise.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        assert_clean_failure(&args, needles);
    };
    let prompt: &[&str] = &["--prompt", "a cat"];

    let missing_vae = dir.join("missing_vae");
    copy_pipeline("sd1", &missing_vae);
    std::fs::remove_dir_all(missing_vae.join("vae")).unwrap();
    run(&missing_vae, prompt, &["missing_vae/vae: missing component folder"]);

    let bad_block = dir.join("bad_block");
    copy_pipeline("sd1", &bad_block);
    let cfg_path = bad_block.join("unet/config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, cfg.replacen("\"DownBlock2D\"", "\"FancyDownBlock2D\"", 1)).unwrap();
    run(&bad_block, prompt, &["bad_block/unet/config.json", "FancyDownBlock2D"]);

    let bad_shape = dir.join("bad_shape");
    copy_pipeline("sd1", &bad_shape);
    let weights = bad_shape.join("unet/diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    let w = tensors["conv_in.weight"].clone();
    tensors.insert("conv_in.weight".into(), w.narrow(1, 0, 3).unwrap());
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    run(
        &bad_shape,
        prompt,
        &["diffusion_pytorch_model.safetensors", "conv_in.weight"],
    );

    let no_merges = dir.join("no_merges");
    copy_pipeline("sd1", &no_merges);
    // Without merges.txt the folder's tokenizer.json is read instead; without both, refused.
    std::fs::remove_file(no_merges.join("tokenizer/merges.txt")).unwrap();
    std::fs::remove_file(no_merges.join("tokenizer/tokenizer.json")).unwrap();
    run(&no_merges, prompt, &["merges.txt"]);

    let bad_scheduler = dir.join("bad_scheduler");
    copy_pipeline("sd1", &bad_scheduler);
    let sched = bad_scheduler.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&sched).unwrap();
    std::fs::write(&sched, text.replace("\"epsilon\"", "\"sample\"")).unwrap();
    run(
        &bad_scheduler,
        prompt,
        &["scheduler_config.json", "'prediction_type' is 'sample'"],
    );

    let sd1 = fixture("sd1");
    let short = dir.join("short.txt");
    std::fs::write(&short, "only one prompt\nand another\nand a third\n").unwrap();
    run(
        &sd1,
        &["--prompts", short.to_str().unwrap()],
        &["short.txt", "3 lines for 2 noise rows"],
    );
    run(&sd1, &[], &["needs --prompt TEXT or --prompts FILE"]);
    run(
        &sd1,
        &["--prompt", "a", "--guidance", "3", "--uncond", "ones"],
        &["--uncond ones: expected zeros or empty"],
    );
    run(&sd1, &["--prompt", "a", "--class", "3"], &["--class"]);
    // Without guidance (w ≤ 1, as diffusers) the unconditional input is never read.
    run(
        &sd1,
        &["--prompt", "a", "--negative-prompt", "blurry", "--guidance", "1"],
        &["--negative-prompt has no effect without guidance"],
    );
    run(
        &sd1,
        &["--prompt", "a", "--uncond", "empty"],
        &["--uncond has no effect without guidance"],
    );
    run(
        &dir.join("nowhere"),
        prompt,
        &["nowhere: neither a pipeline folder nor a checkpoint file"],
    );
    let flat = dir.join("flat.npy");
    npy::write(&flat, &Tensor::zeros((2, 256), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let sd1_spec = format!("sd:{}", sd1.display());
    let (flat, o) = (flat.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "sample",
        "--teacher",
        &sd1_spec,
        "--prompt",
        "a",
        "--noise",
        flat,
        "--out",
        o,
    ];
    assert_clean_failure(
        &args,
        &[
            "--noise",
            "rows of shape [256], but a Stable Diffusion teacher needs latents [B, C, h, w]",
        ],
    );
    assert_clean_failure(
        &[
            "sample",
            "--teacher",
            "gaussian:mean=0,std=1",
            "--prompt",
            "a cat",
            "--noise",
            noise.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &["need a text-conditioned teacher"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
