//! `dcm eval` for a LoRA student of a Stable Diffusion teacher, on the tiny sd1 pipeline, its
//! random rank-4 LoRA and the tiny CLIP model (`tests/fixtures/sd`): the teacher's ODE error
//! against itself and FD of a sample set against itself are 0, the table's numbers equal
//! ones computed here from the written samples, the reference samples are made once and a
//! cache of another setting is refused, and bad inputs are one-line errors naming the flag.

use candle_core::{DType, Device, Tensor};
use dcm::consistency::sampler::{multistep_sample_with, picked_timesteps, Picking};
use dcm::data::npy;
use dcm::diffusion::discretization::Discretization;
use dcm::diffusion::guidance::Guided;
use dcm::diffusion::schedule::T;
use dcm::diffusion::solver::{solve, Solver};
use dcm::diffusion::teacher_ode::TeacherOde;
use dcm::eval::metrics::fd::frechet_distance;
use dcm::eval::metrics::kd::kernel_distance;
use dcm::eval::metrics::to_matrix;
use dcm::eval::sd_eval::{load_clip, student_samples, SampleSink, SdEvalRow, SdEvalSetup};
use dcm::eval::sd_metrics::MetricNets;
use dcm::eval::sd_reference::{read_pngs, ReferenceCache};
use dcm::models::sd::text::NullText;
use dcm::models::sd::SdTeacher;
use dcm::runtime::device::Runtime;
use dcm::runtime::noise::{renoise_rng, seeded, standard_normal};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROWS: usize = 4;
const INTERVALS: usize = 10;
const GUIDANCE: f64 = 3.0;
/// Chosen so the tiny random CLIP's mean cosine is positive (an empty prompt or "a red cat"
/// alone give a negative mean, which the CLIP score clamps to 0).
const PROMPTS: [&str; ROWS] = [
    "blue sky over a field",
    "a red cat",
    "blue sky over a field",
    "blue sky",
];

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sd")
        .join(path)
}

fn lora() -> PathBuf {
    fixture("lora/lora_kohya.safetensors")
}

/// A fresh folder per test, holding `noise.npy` `[ROWS, 4, 8, 8]` and `prompts.txt`.
fn workspace(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dcm-sd-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    npy::write(&dir.join("noise.npy"), &noise()).unwrap();
    std::fs::write(dir.join("prompts.txt"), PROMPTS.join("\n") + "\n").unwrap();
    dir
}

fn noise() -> Tensor {
    standard_normal(&mut seeded(5), (ROWS, 4, 8, 8), &Device::Cpu).unwrap()
}

fn prompts() -> Vec<String> {
    PROMPTS.iter().map(|p| p.to_string()).collect()
}

fn dcm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dcm")).args(args).output().unwrap()
}

/// `dcm eval` on the fixtures from `ws`, writing `ws/out`; a flag in `extra` replaces the
/// default one.
fn eval_cli(ws: &Path, out: &str, extra: &[&str]) -> Output {
    let path = |p: PathBuf| p.display().to_string();
    let base = [
        ("--teacher", format!("sd:{}", path(fixture("sd1")))),
        ("--lora", path(lora())),
        ("--prompts", path(ws.join("prompts.txt"))),
        ("--noise", path(ws.join("noise.npy"))),
        ("--intervals", "10".into()),
        ("--guidance", "3".into()),
        ("--steps", "1,2,4".into()),
        ("--clip", path(fixture("clip"))),
        ("--out", path(ws.join(out))),
    ];
    let mut args = vec!["eval"];
    for (flag, value) in &base {
        if !extra.contains(flag) {
            args.extend([*flag, value.as_str()]);
        }
    }
    args.extend_from_slice(extra);
    dcm(&args)
}

fn ok(o: &Output) {
    assert!(o.status.success(), "dcm failed: {}", String::from_utf8_lossy(&o.stderr));
}

/// The run failed with exit code 2 and one stderr line containing every piece of `says`.
fn one_line_error(o: &Output, says: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for s in says {
        assert!(err.contains(s), "error lacks '{s}': {err}");
    }
}

fn report(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap()
}

fn row(report: &Value, model: &str, steps: u64) -> Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == model && r["steps"] == steps)
        .unwrap_or_else(|| panic!("no {model} row at {steps} steps"))
        .clone()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn mse(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (values(a), values(b));
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>() / a.len() as f64
}

fn ode() -> TeacherOde {
    TeacherOde::new(Solver::Ddim, INTERVALS, GUIDANCE).unwrap()
}

/// The library run: the teacher's row has ODE error 0 and FD 0 (its samples against
/// themselves), and the cached reference is exactly the teacher's guided solve made here
/// with the solver itself (so the teacher's ODE error against its own solve is 0).
#[test]
fn teacher_against_itself_is_zero() {
    let ws = workspace("self");
    let rt = Runtime::default();
    let teacher = SdTeacher::load(&fixture("sd1"), &rt).unwrap();
    let student = SdTeacher::load_with_lora(&fixture("sd1"), &rt, Some(&lora())).unwrap();
    let clip = load_clip(&fixture("clip"), &rt).unwrap();
    let (noise, prompts) = (noise(), prompts());
    let setup = SdEvalSetup {
        teacher: &teacher,
        rt: &rt,
        ode: ode(),
        null: NullText::Pipeline,
        prompts: &prompts,
        noise: &noise,
        steps: vec![1, 2],
        picking: Picking::Floor,
        seed: 0,
        batch: ROWS,
        nets: MetricNets {
            clip: Some(&clip),
            ..Default::default()
        },
        reference: ReferenceCache {
            dir: ws.join("reference"),
            create: true,
        },
    };
    let eval = setup.run(&student, &mut Kept::default()).unwrap();
    let t = &eval.rows[0];
    assert_eq!(
        (t.model.as_str(), t.steps, t.unet_evals_per_sample),
        ("teacher", 10, 20)
    );
    assert_eq!(t.ode_error, 0.0);
    let fd = t.scores["fd_clip_vs_teacher"];
    assert!(
        fd.abs() < 1e-6,
        "FD of the teacher's samples against themselves: {fd:e}"
    );
    let cond = teacher.condition(&rt, &prompts, &NullText::Pipeline, &noise).unwrap();
    let grid = Discretization::new(INTERVALS).unwrap();
    let own = solve(Solver::Ddim, &Guided::new(&teacher, GUIDANCE), &noise, grid, T, &cond).unwrap();
    let cached = npy::read(&ws.join("reference/latents.npy")).unwrap();
    assert_eq!(mse(&cached, &own), 0.0, "cached reference vs the teacher's solve");
    // A student's samples differ from the teacher's: both metrics are positive.
    for r in &eval.rows[1..] {
        assert!(r.ode_error > 0.0 && r.scores["fd_clip_vs_teacher"] > 0.0, "{r:?}");
    }
    std::fs::remove_dir_all(&ws).unwrap();
}

/// The samples an evaluation hands over, block by block.
#[derive(Default)]
struct Kept {
    teacher: Vec<(usize, Tensor)>,
    students: Vec<(usize, usize, Tensor)>,
}

impl SampleSink for Kept {
    fn teacher(&mut self, start: usize, images: &Tensor) -> anyhow::Result<()> {
        self.teacher.push((start, images.clone()));
        Ok(())
    }
    fn student(&mut self, steps: usize, start: usize, latents: &Tensor, _: &Tensor) -> anyhow::Result<()> {
        self.students.push((steps, start, latents.clone()));
        Ok(())
    }
}

/// Each K's latents in row order, from the blocks a sink kept.
fn kept_latents(kept: &Kept, k: usize) -> Tensor {
    let blocks: Vec<Tensor> = kept
        .students
        .iter()
        .filter(|(s, _, _)| *s == k)
        .map(|(_, _, t)| t.clone())
        .collect();
    Tensor::cat(&blocks, 0).unwrap()
}

/// The evaluation runs a block of `--batch` rows at a time (bounded memory for thousands of
/// prompts): blocks of 1 and of 3 rows give the samples and every number of one block of all
/// rows (the samples exactly; FD, KD, cosine and ODE error to 1e-5 relative, as the feature
/// networks' float32 products round differently by batch), and a second
/// run reading the cached reference block by block gives the same table again.
#[test]
fn the_block_size_changes_no_number() {
    let ws = workspace("blocks");
    let rt = Runtime::default();
    let teacher = SdTeacher::load(&fixture("sd1"), &rt).unwrap();
    let student = SdTeacher::load_with_lora(&fixture("sd1"), &rt, Some(&lora())).unwrap();
    let clip = load_clip(&fixture("clip"), &rt).unwrap();
    let (noise, prompts) = (noise(), prompts());
    let run = |batch: usize, cache: &str| {
        let setup = SdEvalSetup {
            teacher: &teacher,
            rt: &rt,
            ode: ode(),
            null: NullText::Pipeline,
            prompts: &prompts,
            noise: &noise,
            steps: vec![1, 3],
            picking: Picking::Floor,
            seed: 2,
            batch,
            nets: MetricNets {
                clip: Some(&clip),
                ..Default::default()
            },
            reference: ReferenceCache {
                dir: ws.join(cache),
                create: true,
            },
        };
        let mut kept = Kept::default();
        let eval = setup.run(&student, &mut kept).unwrap();
        (eval.rows, eval.reference_from_cache, kept)
    };
    let close = |a: &[SdEvalRow], b: &[SdEvalRow], what: &str| {
        for (x, y) in a.iter().zip(b) {
            assert_eq!((x.steps, x.n, x.scores.len()), (y.steps, y.n, y.scores.len()), "{what}");
            let pairs = std::iter::once(("ode_error", &x.ode_error, &y.ode_error))
                .chain(x.scores.iter().map(|(k, v)| (k.as_str(), v, &y.scores[k])));
            for (key, p, q) in pairs {
                assert!(
                    (p - q).abs() <= 1e-5 * p.abs().max(q.abs()).max(1e-9),
                    "{what} {key}: {p} vs {q}"
                );
            }
        }
    };
    let (whole, cached, whole_kept) = run(ROWS, "ref-whole");
    assert!(!cached);
    for batch in [1, 3] {
        let (rows, cached, kept) = run(batch, &format!("ref-{batch}"));
        assert!(!cached);
        close(&whole, &rows, &format!("batch {batch}"));
        for k in [1, 3] {
            assert_eq!(
                mse(&kept_latents(&kept, k), &kept_latents(&whole_kept, k)),
                0.0,
                "batch {batch}, K = {k}"
            );
        }
        assert_eq!(
            kept.teacher.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (0..ROWS).step_by(batch).collect::<Vec<_>>()
        );
    }
    let (again, cached, _) = run(3, "ref-whole");
    assert!(cached, "the second run reads the cache");
    close(&whole, &again, "from the cache");
    std::fs::remove_dir_all(&ws).unwrap();
}

/// Sampling in chunks of rows gives the samples of one unchunked run with the same re-noise
/// stream (one `[B, …]` draw per step), so `--batch` changes no number.
#[test]
fn student_samples_do_not_depend_on_the_batch() {
    let rt = Runtime::default();
    let student = SdTeacher::load_with_lora(&fixture("sd1"), &rt, Some(&lora())).unwrap();
    let noise = noise();
    let cond = student.condition(&rt, &prompts(), &NullText::Pipeline, &noise).unwrap();
    let ts = picked_timesteps(Discretization::new(INTERVALS).unwrap(), 4, Picking::Floor).unwrap();
    let mut rng = renoise_rng(3);
    let mut draw = |s: &candle_core::Shape| standard_normal(&mut rng, s.clone(), &Device::Cpu);
    let whole = multistep_sample_with(&student, &noise, &ts, &cond, &mut draw, &mut |_| ()).unwrap();
    for batch in [1, 3, ROWS] {
        let chunked = student_samples(&student, &noise, &cond, &ts, 3, batch).unwrap();
        let err = mse(&chunked, &whole);
        assert!(err < 1e-12, "batch {batch}: mse {err:e}");
    }
}

/// The command on the tiny fixtures writes every file with finite numbers; each student's
/// ODE error is the MSE of its written latents to the written reference, its FD the Fréchet
/// distance of CLIP features of its PNGs and the reference's (its KD the kernel distance), its
/// CLIP score the mean raw cosine of its PNGs and prompts (the paper's unit), n the sample
/// count, and the table lists the teacher and each K.
#[test]
fn command_writes_finite_numbers_that_match_its_samples() {
    let ws = workspace("run");
    let o = eval_cli(&ws, "out", &[]);
    ok(&o);
    let out = ws.join("out");
    let r = report(&out);
    assert_eq!(r["rows"].as_array().unwrap().len(), 4);
    for x in r["rows"].as_array().unwrap() {
        assert_eq!(x["n"], ROWS as u64);
        for m in [
            "ode_error",
            "fd_clip_vs_teacher",
            "kd_clip_vs_teacher",
            "clip_cosine",
            "seconds",
        ] {
            assert!(x[m].as_f64().is_some_and(f64::is_finite), "{m} in {x}");
        }
        assert!(x["fd_clip_vs_real"].is_null());
    }
    let reference = npy::read(&out.join("reference/latents.npy")).unwrap();
    let clip = load_clip(&fixture("clip"), &Runtime::default()).unwrap();
    let features = |images: &Tensor| to_matrix(&clip.image_features(images).unwrap()).unwrap();
    let teacher_images = read_pngs(&out.join("reference/images"), 0, ROWS).unwrap();
    for k in [1u64, 2, 4] {
        let dir = out.join(format!("students/k{k}"));
        let latents = npy::read(&dir.join("latents.npy")).unwrap();
        let want = mse(&latents, &reference);
        let got = row(&r, "student", k)["ode_error"].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-12 * want.max(1.0), "K = {k}: {got} vs {want}");
        let images = read_pngs(&dir, 0, ROWS).unwrap();
        let want = frechet_distance(&features(&images), &features(&teacher_images)).unwrap();
        let got = row(&r, "student", k)["fd_clip_vs_teacher"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-9 * want.max(1.0),
            "K = {k}: FD {got} vs {want}"
        );
        let want = kernel_distance(&features(&images), &features(&teacher_images)).unwrap();
        let got = row(&r, "student", k)["kd_clip_vs_teacher"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1e-3),
            "K = {k}: KD {got} vs {want}"
        );
        let raw = clip.clip_scores_raw(&images, &prompts()).unwrap();
        let want = raw.iter().sum::<f64>() / ROWS as f64 / 100.0;
        let got = row(&r, "student", k)["clip_cosine"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-9, "K = {k}: CLIP cosine {got} vs {want}");
    }
    let csv = std::fs::read_to_string(out.join("eval.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(
        csv.starts_with(
            "model,steps,unet_evals_per_sample,n,ode_error,clip_cosine,fd_clip_vs_teacher,kd_clip_vs_teacher,seconds"
        ),
        "{csv}"
    );
    let md = std::fs::read_to_string(out.join("eval.md")).unwrap();
    assert!(
        md.contains("| teacher | 10 | 20 |") && md.contains("--real FOLDER"),
        "{md}"
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), md);
    std::fs::remove_dir_all(&ws).unwrap();
}

/// The second run in the same folder and a run given `--reference` read the reference samples
/// instead of making them (the flag in eval.json, the file's modification time unchanged);
/// a run of another guidance scale or other noise is refused, naming the difference. With
/// the reference's own images as `--real`, the teacher's FD to real images is 0.
#[test]
fn reference_is_made_once_and_another_settings_cache_is_refused() {
    let ws = workspace("cache");
    ok(&eval_cli(&ws, "out", &["--steps", "1"]));
    let (out, latents) = (ws.join("out"), ws.join("out/reference/latents.npy"));
    assert_eq!(report(&out)["reference"]["from_cache"], false);
    let made = std::fs::metadata(&latents).unwrap().modified().unwrap();
    ok(&eval_cli(&ws, "out", &["--steps", "2"]));
    assert_eq!(report(&out)["reference"]["from_cache"], true);
    assert_eq!(std::fs::metadata(&latents).unwrap().modified().unwrap(), made);
    let (reference, real) = (out.join("reference"), out.join("reference/images"));
    let given = [
        "--reference",
        reference.to_str().unwrap(),
        "--real",
        real.to_str().unwrap(),
    ];
    ok(&eval_cli(&ws, "other", &given));
    let r = report(&ws.join("other"));
    assert_eq!(r["reference"]["from_cache"], true);
    let fd_real = row(&r, "teacher", 10)["fd_clip_vs_real"].as_f64().unwrap();
    assert!(fd_real.abs() < 1e-6, "teacher vs its own images as real: {fd_real:e}");
    assert!(row(&r, "student", 1)["fd_clip_vs_real"].as_f64().unwrap() > 0.0);
    one_line_error(
        &eval_cli(&ws, "out", &["--guidance", "2"]),
        &["key.json", "guidance 3.0 there, 2.0 here", "delete"],
    );
    npy::write(&ws.join("noise.npy"), &(noise() * 2.0).unwrap()).unwrap();
    one_line_error(
        &eval_cli(&ws, "third", &["--reference", reference.to_str().unwrap()]),
        &["key.json", "noise"],
    );
    std::fs::remove_dir_all(&ws).unwrap();
}

/// `--student OUT` evaluates the LoRA a `dcm distill --teacher sd:DIR` run wrote, with the
/// run's N, w and unconditional input from its student.json.
#[test]
fn student_folder_gives_the_lora_and_its_settings() {
    let ws = workspace("student");
    let (run, data) = (ws.join("run"), ws.join("data"));
    std::fs::create_dir_all(&data).unwrap();
    for (i, shade) in [40u8, 200].into_iter().enumerate() {
        let img = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([shade, (x * 12) as u8, (y * 9) as u8]));
        img.save(data.join(format!("{i}.png"))).unwrap();
        std::fs::write(data.join(format!("{i}.txt")), PROMPTS[i]).unwrap();
    }
    let teacher = format!("sd:{}", fixture("sd1").display());
    ok(&dcm(&[
        "distill",
        "--method",
        "cm",
        "--teacher",
        &teacher,
        "--data",
        data.to_str().unwrap(),
        "--lora-rank",
        "2",
        "--intervals",
        "20",
        "--guidance",
        "2",
        "--steps",
        "2",
        "--batch",
        "2",
        "--out",
        run.to_str().unwrap(),
    ]));
    let (noise, prompts, out) = (ws.join("noise.npy"), ws.join("prompts.txt"), ws.join("out"));
    let args = [
        "eval",
        "--teacher",
        &teacher,
        "--student",
        run.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--noise",
        noise.to_str().unwrap(),
        "--steps",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    ok(&dcm(&args));
    let r = report(&out);
    assert_eq!(
        (r["settings"]["intervals"].as_u64(), r["settings"]["guidance"].as_f64()),
        (Some(20), Some(2.0))
    );
    assert_eq!(r["settings"]["uncond"], "Zeros", "the run's unconditional input");
    assert_eq!(row(&r, "teacher", 20)["unet_evals_per_sample"], 40);
    assert!(row(&r, "student", 2)["clip_cosine"].is_null());
    let notes = r["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n.as_str().unwrap().contains("no --clip CLIP_DIR")),
        "{notes:?}"
    );
    std::fs::remove_file(run.join("lora.safetensors")).unwrap();
    one_line_error(&dcm(&args), &["--student", "no lora.safetensors"]);
    std::fs::remove_dir_all(&ws).unwrap();
}

/// Bad inputs stop the command with one line naming the flag or file.
#[test]
fn bad_inputs_are_one_line_errors() {
    let ws = workspace("bad");
    let text_encoder = fixture("sd1/text_encoder");
    one_line_error(
        &eval_cli(&ws, "out", &["--clip", text_encoder.to_str().unwrap()]),
        &["--clip", "not a CLIPModel config", "clip_text_model"],
    );
    let pipeline = fixture("sd1");
    one_line_error(
        &eval_cli(&ws, "out", &["--clip", pipeline.to_str().unwrap()]),
        &["--clip", "a diffusers pipeline folder, not a CLIP model"],
    );
    std::fs::write(ws.join("prompts.txt"), "one\ntwo\n").unwrap();
    one_line_error(&eval_cli(&ws, "out", &[]), &["--prompts", "2 lines for 4 noise rows"]);
    std::fs::write(ws.join("prompts.txt"), PROMPTS.join("\n") + "\n").unwrap();
    for shape in [(ROWS, 3, 8, 8), (ROWS, 4, 7, 8)] {
        let bad = standard_normal(&mut seeded(0), shape, &Device::Cpu).unwrap();
        npy::write(&ws.join("noise.npy"), &bad).unwrap();
        one_line_error(&eval_cli(&ws, "out", &[]), &["--noise", "[B, 4, h, w]"]);
    }
    npy::write(&ws.join("noise.npy"), &noise()).unwrap();
    one_line_error(&eval_cli(&ws, "out", &["--steps", "11"]), &["--steps 11"]);
    one_line_error(
        &dcm(&["eval", "--student", "nowhere", "--clip", "x"]),
        &["--clip applies to a Stable Diffusion evaluation"],
    );
    one_line_error(
        &eval_cli(&ws, "out", &["--reference", ws.to_str().unwrap()]),
        &["--reference", "no key.json"],
    );
    std::fs::remove_dir_all(&ws).unwrap();
}

/// With `--aesthetic`, each row's aesthetic score is the predictor's mean score of the CLIP
/// embeddings of that row's PNGs (tests/fixtures/metrics/aesthetic.pth takes the tiny CLIP's
/// 16-wide embeddings).
#[test]
fn aesthetic_score_is_the_predictors_mean_on_clip_embeddings() {
    let ws = workspace("aesthetic");
    let predictor_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics/aesthetic.pth");
    let file = predictor_file.to_str().unwrap();
    ok(&eval_cli(&ws, "out", &["--steps", "1", "--aesthetic", file]));
    let out = ws.join("out");
    let r = report(&out);
    let clip = load_clip(&fixture("clip"), &Runtime::default()).unwrap();
    let predictor = dcm::eval::metric_nets::load_aesthetic(&predictor_file).unwrap();
    for (model, steps, dir) in [
        ("teacher", 10, out.join("reference/images")),
        ("student", 1, out.join("students/k1")),
    ] {
        let images = read_pngs(&dir, 0, ROWS).unwrap();
        let scores = predictor.scores(&clip.image_features(&images).unwrap()).unwrap();
        let want = scores.iter().sum::<f64>() / ROWS as f64;
        let got = row(&r, model, steps)["aesthetic"].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{model}: {got} vs {want}"
        );
    }
    std::fs::remove_dir_all(&ws).unwrap();
}
