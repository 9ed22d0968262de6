//! `dcm eval` of a LoRA student of a Stable Diffusion teacher: the paper's table
//! (`eval::sd_eval`) written to a folder — eval.json, eval.csv, eval.md, the teacher's cached
//! reference samples and each step count's latents and PNGs.

use crate::consistency::sampler::Picking;
use crate::data::npy;
use crate::data::npy_rows::RowWriter;
use crate::diffusion::solver::Solver;
use crate::diffusion::teacher_ode::TeacherOde;
use crate::eval::sd_eval::{SampleSink, SdEvalSetup, SdEvaluation};
use crate::eval::sd_metrics::MetricNets;
use crate::eval::sd_reference::ReferenceCache;
use crate::families::family::EvalRequest;
use crate::models::sd::images::{check_png_paths, write_pngs_from};
use crate::models::sd::prompts;
use crate::models::sd::sampling_cost::SamplingCost;
use crate::models::sd::student::SdStudentConfig;
use crate::models::sd::text::NullText;
use crate::models::sd::SdTeacher;
use crate::nets::sd::lora_files::{TextEncoderParts, KOHYA_FILE};
use crate::runtime::device::Runtime;
use crate::runtime::files::{check_output_dir, check_output_file, write_atomic};
use crate::runtime::fingerprint::{changes, describe, relative_to, HashCache, HASH_CACHE};
use crate::runtime::finite::finite_flag;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::train::distill::MAX_GUIDANCE;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Rows per UNet, VAE and CLIP call when `--batch` is not given.
const DEFAULT_BATCH: usize = 8;
/// Feature floats per sample over the metric networks at their largest (Inception 2,048,
/// DINOv2 ViT-g 1,536, CLIP ViT-bigG 1,280).
const FEATURE_FLOATS: f64 = 4_864.0;
/// The teacher's grid when neither `--intervals` nor a run's settings give one.
const DEFAULT_INTERVALS: usize = 50;

/// The LoRA file of `--lora FILE` or `--student OUT`, and the run's settings for the latter.
struct SdStudent {
    lora: PathBuf,
    config: Option<SdStudentConfig>,
}

/// `--student OUT`: OUT/lora.safetensors and the settings in OUT/student.json, both written
/// by `dcm distill --teacher sd:DIR`.
fn sd_student(r: &EvalRequest) -> Result<SdStudent> {
    if let Some(lora) = &r.lora {
        ensure!(lora.is_file(), "--lora {}: no such file", lora.display());
        return Ok(SdStudent {
            lora: lora.clone(),
            config: None,
        });
    }
    let out = r.student.as_deref().context("give --lora FILE or --student OUT")?;
    let lora = out.join(KOHYA_FILE);
    ensure!(
        lora.is_file(),
        "--student {}: no {KOHYA_FILE} (give a folder written by dcm distill --teacher sd:DIR, or --lora FILE)",
        out.display()
    );
    Ok(SdStudent {
        lora,
        config: Some(SdStudentConfig::load(out)?),
    })
}

/// Refuses a teacher whose files differ from those the student was distilled from (their
/// content hashes in student.json), naming them, unless `--allow-other-teacher`; a LoRA file
/// alone, or a student.json from before the hashes were recorded, is not checked.
fn check_teacher(teacher: &SdTeacher, r: &EvalRequest, s: &SdStudent, out: &Path) -> Result<()> {
    let Some(config) = &s.config else {
        ensure!(
            !r.allow_other_teacher,
            "--allow-other-teacher applies to --student OUT (whose student.json records its teacher), not to --lora FILE"
        );
        return Ok(());
    };
    let student = r.student.as_deref().unwrap_or(Path::new("")).display();
    let Some(recorded) = &config.teacher_files else {
        eprintln!(
            "note: --student {student}: student.json records no fingerprint of its teacher (written by an \
             older dcm), so the teacher is not checked against it"
        );
        return Ok(());
    };
    let pipeline = teacher.pipeline();
    let files: Vec<PathBuf> = pipeline
        .files()?
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let hashes = HashCache::open(Some(out.join(HASH_CACHE)));
    let now = hashes.fingerprints(&files)?;
    hashes.save()?;
    let differences = changes(recorded, &relative_to(pipeline.path(), &now));
    match (differences.is_empty(), r.allow_other_teacher) {
        (true, _) => Ok(()),
        (false, true) => {
            eprintln!(
                "note: --allow-other-teacher: the teacher differs from the student's: {}",
                describe(&differences)
            );
            Ok(())
        }
        (false, false) => bail!(
            "--student {student}: the teacher {} is not the one it was distilled from: {}; give \
             --allow-other-teacher to evaluate against it anyway",
            pipeline.path().display(),
            describe(&differences)
        ),
    }
}

/// The teacher's ODE from the flags, else the student run's settings (its N, w, solver and
/// unconditional input), else the defaults.
fn teacher_ode(r: &EvalRequest, s: &SdStudent) -> Result<(TeacherOde, NullText)> {
    let trained = s.config.as_ref().map(|c| &c.distill);
    let null = match (&r.negative_prompt, &r.uncond, &s.config) {
        (None, None, Some(c)) => NullText::from_flags(None, Some(&c.uncond))?,
        _ => NullText::from_flags(r.negative_prompt.as_deref(), r.uncond.as_deref())?,
    };
    let solver = r.solver.or(trained.map(|d| d.solver)).unwrap_or(Solver::Ddim);
    let intervals = r
        .intervals
        .or(trained.map(|d| d.intervals))
        .unwrap_or(DEFAULT_INTERVALS);
    let guidance = match (r.guidance, trained) {
        (None, Some(d)) => d.guidance,
        (w, _) => finite_flag(w.unwrap_or(1.0), "--guidance", MAX_GUIDANCE)?,
    };
    // Without guidance (w ≤ 1, as diffusers) the unconditional input is never read.
    let given = [("--negative-prompt", &r.negative_prompt), ("--uncond", &r.uncond)];
    if let Some((flag, _)) = given.iter().find(|(_, v)| v.is_some() && guidance <= 1.0) {
        bail!("{flag} has no effect without guidance (--guidance W > 1)");
    }
    Ok((TeacherOde::new(solver, intervals, guidance)?, null))
}

/// The evaluation noise and one prompt per row, checked against memory.
fn noise_and_prompts(r: &EvalRequest, rt: &Runtime) -> Result<(Tensor, Vec<String>)> {
    let noise_file = r
        .noise
        .as_deref()
        .context("--noise IN.npy is needed for an SD evaluation")?;
    let noise = npy::read(noise_file)?;
    ensure!(
        noise.rank() == 4 && noise.elem_count() > 0,
        "--noise {}: expected latents [B, C, h, w] holding values, got shape {:?}",
        noise_file.display(),
        noise.dims()
    );
    let rows = noise.dim(0)?;
    let prompts = prompts::per_row(
        None,
        Some(r.prompts.as_deref().context("--prompts FILE is needed")?),
        rows,
    )?;
    // Held at once: the noise (twice while it is read) and, per model, every sample's feature
    // vectors in float32 and, while FD is computed, one network's in float64; the samples
    // themselves only a block at a time (`SdEvalSetup::run`).
    let models = r.steps.len() + 1;
    let features = rows as f64 * FEATURE_FLOATS * (4.0 * models as f64 + 8.0 * 3.0);
    ensure_fits(
        2.0 * f32_bytes(noise.dims()) + features,
        &format!("--noise {}", noise_file.display()),
    )?;
    Ok((noise.to_dtype(DType::F32)?.to_device(&rt.device)?, prompts))
}

/// The UNet's memory for one block of rows (refused naming `--noise` when one row cannot
/// fit, else `--batch`) and, when long, the time of every call: the teacher's guided solve
/// (if the reference is made) and each step count's sampler.
fn check_sampling(setup: &SdEvalSetup, r: &EvalRequest, rt: &Runtime) -> Result<()> {
    let cfg = setup.teacher.pipeline().unet_config()?;
    let [rows, c, h, w] = <[usize; 4]>::try_from(setup.noise.dims()).context("--noise: [B, C, h, w]")?;
    let halves = if setup.ode.guidance > 1.0 { 2 } else { 1 };
    let row_calls = rows * (halves * setup.ode.teacher_calls_per_sample() + setup.steps.iter().sum::<usize>());
    let noise = format!("--noise {}", r.noise.as_deref().unwrap_or(Path::new("")).display());
    let one = SamplingCost::estimate(&cfg, rt.dtype, [c, h, w], halves, 1)?;
    if rt.device.is_cpu() {
        ensure_fits(one.memory(), &format!("{noise} (one row of {c}×{h}×{w} latents)"))?;
    }
    let held = halves * setup.batch.min(rows);
    let block = SamplingCost::estimate(&cfg, rt.dtype, [c, h, w], held, row_calls.div_ceil(held))?;
    block.check(rt, &format!("--batch {}", setup.batch))
}

/// Where the teacher's reference samples are read or made.
fn reference_cache(r: &EvalRequest, out: &Path) -> Result<ReferenceCache> {
    Ok(match &r.reference {
        Some(d) if !d.join("key.json").is_file() => bail!(
            "--reference {}: no key.json, so not a folder of reference samples (EVAL_DIR/reference of an earlier dcm eval)",
            d.display()
        ),
        Some(d) => ReferenceCache {
            dir: d.clone(),
            create: false,
        },
        None => ReferenceCache {
            dir: out.join("reference"),
            create: true,
        },
    })
}

/// Evaluates the LoRA student of `req` against `teacher` (the spec `spec`) and writes `--out`.
pub fn evaluate(teacher: &SdTeacher, spec: &str, r: &EvalRequest, rt: &Runtime) -> Result<()> {
    ensure!(
        r.samples.is_none(),
        "--samples: an SD evaluation takes its rows from --noise"
    );
    let out = r.out.clone().context("--out EVAL_DIR is needed for an SD evaluation")?;
    check_output_dir(&out, "--out")?;
    // Files written at the end, and the hash cache read first (a pipe there would block).
    for name in ["eval.json", "eval.csv", "eval.md", HASH_CACHE] {
        check_output_file(&out.join(name), "--out")?;
    }
    let student = sd_student(r)?;
    let te = match &r.lora_text_encoder {
        Some(v) => v.parse()?,
        None => TextEncoderParts::default(),
    };
    check_teacher(teacher, r, &student, &out)?;
    let (ode, null) = teacher_ode(r, &student)?;
    let batch = r.batch.unwrap_or(DEFAULT_BATCH);
    ensure!(batch > 0, "--batch 0: must be at least 1");
    let (noise, prompts) = noise_and_prompts(r, rt)?;
    let mut setup = SdEvalSetup {
        teacher,
        rt,
        ode,
        null,
        prompts: &prompts,
        noise: &noise,
        steps: r.steps.clone(),
        picking: Picking::Floor,
        seed: r.seed,
        batch,
        nets: MetricNets::default(),
        reference: reference_cache(r, &out)?,
    };
    // Cheap checks before the student, CLIP and real images load.
    setup.validate()?;
    check_sampling(&setup, r, rt)?;
    // The loader's errors name the LoRA file.
    let lora_student = SdTeacher::from_pipeline_parts(teacher.pipeline().clone(), rt, Some(&student.lora), te)?;
    let loaded = r.metrics.load(rt)?;
    setup.nets = loaded.nets();
    let mut files = StudentFiles::new(&out, setup.noise.dims(), &setup.steps)?;
    let eval = setup.run(&lora_student, &mut files)?;
    files.finish()?;
    write_outputs(&out, spec, r, &student.lora, &setup, &eval)?;
    print!("{}", eval.to_markdown());
    Ok(())
}

/// Each K's samples as they are made: `students/kK/latents.npy` (written row block by row
/// block, visible once complete) and `students/kK/00000.png`, ….
struct StudentFiles {
    dirs: Vec<PathBuf>,
    latents: Vec<RowWriter>,
    steps: Vec<usize>,
}

impl StudentFiles {
    fn new(out: &Path, noise: &[usize], steps: &[usize]) -> Result<Self> {
        let dirs: Vec<PathBuf> = steps
            .iter()
            .map(|k| out.join("students").join(format!("k{k}")))
            .collect();
        let latents = dirs
            .iter()
            .map(|dir| {
                std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
                check_png_paths(dir, noise[0], "--out")?;
                RowWriter::create(&dir.join("latents.npy"), noise)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            dirs,
            latents,
            steps: steps.to_vec(),
        })
    }

    fn finish(self) -> Result<()> {
        self.latents.into_iter().try_for_each(RowWriter::finish)
    }
}

impl SampleSink for StudentFiles {
    fn teacher(&mut self, _: usize, _: &Tensor) -> Result<()> {
        Ok(())
    }

    fn student(&mut self, steps: usize, start: usize, latents: &Tensor, images: &Tensor) -> Result<()> {
        let i = self
            .steps
            .iter()
            .position(|&k| k == steps)
            .context("samples of a step count not asked for")?;
        self.latents[i].append(latents)?;
        write_pngs_from(&self.dirs[i], &(images.to_dtype(DType::F32)? / 255.0)?, start)
    }
}

/// eval.json, eval.csv and eval.md.
fn write_outputs(
    out: &Path,
    teacher: &str,
    r: &EvalRequest,
    lora: &Path,
    setup: &SdEvalSetup,
    eval: &SdEvaluation,
) -> Result<()> {
    let report = json!({
        "settings": settings(teacher, r, lora, setup),
        "reference": {
            "dir": setup.reference.dir.display().to_string(),
            "from_cache": eval.reference_from_cache,
        },
        "rows": eval.rows,
        "notes": eval.notes,
    });
    write_atomic(
        &out.join("eval.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    write_atomic(&out.join("eval.csv"), eval.to_csv().as_bytes())?;
    write_atomic(&out.join("eval.md"), eval.to_markdown().as_bytes())
}

/// The settings block of eval.json.
fn settings(teacher: &str, r: &EvalRequest, lora: &Path, setup: &SdEvalSetup) -> serde_json::Value {
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let ode = &setup.ode;
    json!({
        "teacher": teacher,
        "lora": lora.display().to_string(),
        "prompts": path(&r.prompts),
        "noise": path(&r.noise),
        "noise_shape": setup.noise.dims(),
        "solver": format!("{:?}", ode.solver).to_lowercase(),
        "intervals": ode.intervals(),
        "guidance": ode.guidance,
        "uncond": format!("{:?}", setup.null),
        "steps": setup.steps,
        "sampler_timesteps": "diffusers LCMScheduler (floor of linspace(0, N, K, endpoint=false))",
        "seed": setup.seed,
        "batch": setup.batch,
        "clip": path(&r.metrics.clip),
        "inception": path(&r.metrics.inception),
        "dino": path(&r.metrics.dino),
        "aesthetic": path(&r.metrics.aesthetic),
        "real": path(&r.metrics.real),
        "device": r.device,
        "dtype": r.dtype,
    })
}
