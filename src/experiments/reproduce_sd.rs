//! `dcm reproduce --preset sd`: the paper's table for a user's own Stable Diffusion model —
//! the teacher's reference samples, CM and Direct CM LoRA students trained with identical
//! settings and data order, every student at 1, 2, 4 and 8 steps on the same noise, judged by
//! ODE error, FD against the teacher's samples on CLIP features and CLIP score.

use super::report::chart::{write_chart, Series};
use super::report::grid::write_grid;
use super::reproduce_args::{ReproduceArgs, SdReproduceArgs};
use crate::consistency::objective::Method;
use crate::consistency::sampler::Picking;
use crate::data::captioned::FolderOptions;
use crate::data::npy;
use crate::diffusion::teacher_ode::TeacherOde;
use crate::eval::metric_nets::{LoadedNets, MetricFiles};
use crate::eval::sd_eval::{SampleSink, SdEvalRow, SdEvalSetup, SCORE_COLUMNS};
use crate::eval::sd_reference::ReferenceCache;
use crate::families::distillation::{self, Finished};
use crate::families::sd::distill::{default_resolution, SdRun, TRAINING_UNCOND};
use crate::families::sd::family::SdFamily;
use crate::models::sd::text::NullText;
use crate::models::spec::TeacherSpec;
use crate::nets::lora::LoraConfig;
use crate::nets::sd::lora_files::KOHYA_FILE;
use crate::nets::sd::unet::DEFAULT_LORA_TARGETS;
use crate::runtime::device::Runtime;
use crate::runtime::files::{check_output_dir, write_atomic};
use crate::runtime::noise::{eval_noise_rng, standard_normal};
use crate::train::distill::DistillConfig;
use crate::train::optim::OptimConfig;
use crate::train::trainer::Checkpointing;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The run's settings, written as `config.json` beside the report.
#[derive(Clone, Debug, Serialize)]
struct SdReproduceConfig {
    teacher: String,
    data: String,
    caption_column: String,
    skip_unknown_files: bool,
    prompts: String,
    prompt_lines: usize,
    per_prompt: usize,
    /// The metric networks' files.
    metrics: BTreeMap<String, String>,
    resolution: usize,
    uncond: String,
    lora: LoraConfig,
    distill: DistillConfig,
    steps: Vec<usize>,
    seed: u64,
}

/// One trained student and its evaluation.
#[derive(Serialize)]
struct MethodResult {
    method: String,
    teacher_evaluations: u64,
    train_seconds: f64,
    final_loss: f32,
    rows: Vec<SdEvalRow>,
}

const STEPS: [usize; 4] = [1, 2, 4, 8];

pub fn command(a: ReproduceArgs) -> Result<()> {
    refuse_mnist_flags(&a)?;
    let rt = a.runtime.runtime()?;
    let spec = a.sd.teacher.clone().context("--preset sd needs --teacher sd:DIR")?;
    let TeacherSpec::Sd(dir) = TeacherSpec::parse(&spec)? else {
        bail!("--teacher '{spec}': --preset sd takes sd:DIR");
    };
    ensure!(
        a.data != "mnist",
        "--data FOLDER: --preset sd trains on a folder of captioned images"
    );
    let prompts_file = a.sd.prompts.clone().context("--preset sd needs --prompts FILE")?;
    let per_prompt = a.sd.per_prompt.unwrap_or(4);
    ensure!(per_prompt > 0, "--per-prompt must be positive");
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs/reproduce-sd"));
    check_output_dir(&out, "--out")?;
    let family = SdFamily::open(&dir, &a.sd.single_file.options()?, &rt)?;
    let lines = read_lines(&prompts_file)?;
    let cfg = run_config(&a, &family, &spec, &prompts_file, lines.len(), per_prompt)?;
    let prompts: Vec<String> = lines
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), per_prompt))
        .collect();
    // A wrong CLIP folder is refused before hours of training.
    // Wrong metric files are refused before hours of training.
    let files = MetricFiles {
        clip: a.sd.clip.clone(),
        inception: a.sd.inception.clone(),
        dino: a.sd.dino.clone(),
        aesthetic: a.sd.aesthetic.clone(),
        real: None,
    };
    let loaded = files.load(&rt)?;
    let started = Instant::now();
    let trained = train_students(&family, &rt, &cfg, &out)?;
    let evaluated = evaluate_students(&family, &rt, &cfg, &prompts, &loaded, &out, trained)?;
    let notes = evaluated.1;
    write_report(&out, &cfg, &evaluated.0, &notes, started.elapsed().as_secs_f64())?;
    eprintln!(
        "finished in {:.0} s; report in {}",
        started.elapsed().as_secs_f64(),
        out.join("report.md").display()
    );
    Ok(())
}

/// The run's settings: the paper's, with the flags' overrides.
fn run_config(
    a: &ReproduceArgs,
    family: &SdFamily,
    spec: &str,
    prompts_file: &Path,
    prompt_lines: usize,
    per_prompt: usize,
) -> Result<SdReproduceConfig> {
    let resolution = match a.sd.resolution {
        Some(r) => r,
        None => default_resolution(family.pipeline())?,
    };
    let lora = a.lora.lora()?.unwrap_or(LoraConfig::PAPER);
    let cfg = SdReproduceConfig {
        teacher: spec.to_string(),
        data: a.data.clone(),
        caption_column: a
            .sd
            .caption_column
            .clone()
            .unwrap_or_else(|| FolderOptions::default().caption_column),
        skip_unknown_files: a.sd.skip_unknown_files,
        prompts: prompts_file.display().to_string(),
        prompt_lines,
        per_prompt,
        metrics: metric_files(&a.sd)
            .iter()
            .filter_map(|(flag, p)| Some((flag.to_string(), p.as_ref()?.display().to_string())))
            .collect(),
        resolution,
        uncond: TRAINING_UNCOND.into(),
        lora,
        distill: paper_distill(a, lora),
        steps: STEPS
            .iter()
            .copied()
            .filter(|&k| k <= a.intervals.unwrap_or(100))
            .collect(),
        seed: 0,
    };
    cfg.distill.validate()?;
    Ok(cfg)
}

/// Trains the CM and the Direct student with identical settings into OUT/students/METHOD.
fn train_students(
    family: &SdFamily,
    rt: &Runtime,
    cfg: &SdReproduceConfig,
    out: &Path,
) -> Result<Vec<(Method, Finished)>> {
    let mut results = Vec::new();
    for method in Method::compared() {
        let run = SdRun {
            pipeline: family.pipeline(),
            rt,
            data: PathBuf::from(&cfg.data),
            folder: FolderOptions {
                caption_column: cfg.caption_column.clone(),
                skip_unknown: cfg.skip_unknown_files,
            },
            resolution: cfg.resolution,
            uncond: cfg.uncond.clone(),
            targets: DEFAULT_LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
            lora: cfg.lora,
            distill: DistillConfig {
                method,
                ..cfg.distill.clone()
            },
            kohya_names: Default::default(),
            init: None,
            gradient_checkpointing: false,
        };
        let student_dir = out.join("students").join(method.name());
        std::fs::create_dir_all(&student_dir)
            .with_context(|| format!("{}: cannot create folder", student_dir.display()))?;
        // Both students share one latent cache: same images, same encoding.
        link_latent_cache(out, &student_dir)?;
        eprintln!("training the {} student", method.title());
        let done = distillation::run(&run, &run.distill, &student_dir, Checkpointing::default())?;
        results.push((method, done));
    }
    Ok(results)
}

/// Judges each trained student on the same noise and prompts; writes the sample grids.
fn evaluate_students(
    family: &SdFamily,
    rt: &Runtime,
    cfg: &SdReproduceConfig,
    prompts: &[String],
    nets: &LoadedNets,
    out: &Path,
    trained: Vec<(Method, Finished)>,
) -> Result<(Vec<MethodResult>, Vec<String>)> {
    let teacher = family.sd_teacher()?;
    let side = cfg.resolution / teacher.vae_scale_factor();
    let shape = (prompts.len(), teacher.unet().config().in_channels, side, side);
    let noise = standard_normal(&mut eval_noise_rng(cfg.seed), shape, &rt.device)?;
    npy::write(&out.join("noise.npy"), &noise)?;
    let (lines, per_prompt) = (cfg.prompt_lines, cfg.per_prompt);
    let mut results = Vec::new();
    let mut notes = Vec::new();
    for (i, (method, done)) in trained.into_iter().enumerate() {
        let setup = SdEvalSetup {
            teacher,
            rt,
            ode: TeacherOde::new(cfg.distill.solver, cfg.distill.intervals, cfg.distill.guidance)?,
            null: NullText::from_flags(None, Some(&cfg.uncond))?,
            prompts,
            noise: &noise,
            steps: cfg.steps.clone(),
            picking: Picking::Floor,
            seed: cfg.seed,
            batch: 8,
            nets: nets.nets(),
            reference: ReferenceCache {
                dir: out.join("reference"),
                create: true,
            },
        };
        let lora_file = out.join("students").join(method.name()).join(KOHYA_FILE);
        let student = family.with_adapters(&lora_file, crate::nets::sd::lora_files::TextEncoderParts::Refuse, rt)?;
        eprintln!("evaluating the {} student", method.title());
        let mut grids = Grids::default();
        let eval = setup.run(&student, &mut grids)?;
        for (k, images) in &grids.students {
            let path = out.join(format!("samples_{}_{k}step.png", method.name()));
            write_grid(&path, &u8_images(images)?, lines, per_prompt)?;
        }
        if i == 0 {
            write_grid(
                &out.join("samples_teacher.png"),
                &u8_images(&grids.teacher)?,
                lines,
                per_prompt,
            )?;
            notes = eval.notes.clone();
        }
        results.push(MethodResult {
            method: method.name().into(),
            teacher_evaluations: done.distilled.teacher_evaluations,
            train_seconds: done.train_seconds,
            final_loss: done.distilled.losses.last().copied().unwrap_or(f32::NAN),
            rows: eval.rows,
        });
    }
    Ok((results, notes))
}

/// The sample grids of a reproduction, gathered as the evaluation makes its blocks (its
/// prompt sets are a few lines, so every image fits).
#[derive(Default)]
struct Grids {
    teacher: Vec<Tensor>,
    students: BTreeMap<usize, Vec<Tensor>>,
}

impl SampleSink for Grids {
    fn teacher(&mut self, _: usize, images: &Tensor) -> Result<()> {
        self.teacher.push(images.clone());
        Ok(())
    }

    fn student(&mut self, steps: usize, _: usize, _: &Tensor, images: &Tensor) -> Result<()> {
        self.students.entry(steps).or_default().push(images.clone());
        Ok(())
    }
}

/// Blocks of u8 images as one `[B, 3, H, W]` tensor in [0, 1].
fn u8_images(blocks: &[Tensor]) -> Result<Tensor> {
    Ok((Tensor::cat(blocks, 0)?.to_dtype(DType::F32)? / 255.0)?)
}

/// The paper's settings (N = 100, w = 9, lr 1e-4, 250 steps, batch 16, L2, constant learning
/// rate, θ⁻ = θ), each overridable by its flag.
fn paper_distill(a: &ReproduceArgs, lora: LoraConfig) -> DistillConfig {
    let paper = DistillConfig::paper_lora(Method::all().next().expect("a registered objective"), lora);
    DistillConfig {
        solver: a.solver.unwrap_or(paper.solver),
        intervals: a.intervals.unwrap_or(paper.intervals),
        guidance: a.guidance.unwrap_or(paper.guidance),
        steps: a.distill_steps.unwrap_or(paper.steps),
        batch: a.batch.unwrap_or(paper.batch),
        optim: OptimConfig {
            lr: a.lr.unwrap_or(paper.optim.lr),
            cosine_decay: a.cosine_decay,
            ..paper.optim
        },
        loss: a.loss.unwrap_or(paper.loss),
        ema_decay: a.ema_decay,
        ..paper
    }
}

/// Flags of the MNIST presets that mean nothing here.
fn refuse_mnist_flags(a: &ReproduceArgs) -> Result<()> {
    let given = [
        ("--seeds", a.seeds.is_some()),
        ("--models", a.models.is_some()),
        ("--per-class", a.per_class.is_some()),
        ("--rewrite-report", a.rewrite_report),
    ];
    let flags: Vec<&str> = given.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect();
    super::args::refuse(&flags, "applies to the MNIST presets, not --preset sd")
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--prompts {}: cannot read", path.display()))?;
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    ensure!(!lines.is_empty(), "--prompts {}: no prompts", path.display());
    Ok(lines)
}

/// Points `student_dir/latents` at the run's shared cache folder `OUT/latents` by encoding
/// there once: the first student's run writes it, the second's reads it.
fn link_latent_cache(out: &Path, student_dir: &Path) -> Result<()> {
    let shared = out.join("latents");
    std::fs::create_dir_all(&shared).with_context(|| format!("{}: cannot create folder", shared.display()))?;
    let link = student_dir.join("latents");
    if link.exists() {
        return Ok(());
    }
    std::os::unix::fs::symlink(std::fs::canonicalize(&shared)?, &link)
        .with_context(|| format!("{}: cannot link the latent cache", link.display()))
}

/// report.md, report.json, results.csv, the ODE-error-against-FD chart and the loss curves.
fn write_report(
    out: &Path,
    cfg: &SdReproduceConfig,
    results: &[MethodResult],
    notes: &[String],
    seconds: f64,
) -> Result<()> {
    write_atomic(&out.join("config.json"), serde_json::to_string_pretty(cfg)?.as_bytes())?;
    let json = serde_json::json!({"config": cfg, "methods": results, "notes": notes, "seconds": seconds});
    write_atomic(
        &out.join("report.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    let columns = present_columns(results);
    let mut csv = String::from("method,steps,unet_evals_per_sample,n,ode_error");
    columns.iter().for_each(|(key, _)| csv += &format!(",{key}"));
    csv += "\n";
    for r in results {
        for row in &r.rows {
            let method = if row.model == "teacher" { "teacher" } else { &r.method };
            csv += &format!(
                "{method},{},{},{},{}",
                row.steps, row.unet_evals_per_sample, row.n, row.ode_error
            );
            for (key, _) in &columns {
                csv += &format!(",{}", row.scores.get(*key).map_or(String::new(), |v| format!("{v}")));
            }
            csv += "\n";
        }
    }
    write_atomic(&out.join("results.csv"), csv.as_bytes())?;
    write_charts(out, results)?;
    let md = markdown(cfg, results, notes, seconds);
    print!("{md}");
    write_atomic(&out.join("report.md"), md.as_bytes())
}

fn markdown(cfg: &SdReproduceConfig, results: &[MethodResult], notes: &[String], seconds: f64) -> String {
    let d = &cfg.distill;
    let mut md = format!(
        "# CM vs Direct CM on {}\n\nLoRA rank {} (α {}), {} steps × batch {}, lr {}, {:?}, teacher {} N = {}, w = {} \
         (unconditional input: {}), {} prompts × {} samples, {:.0} s in all.\n\n\
",
        cfg.teacher,
        cfg.lora.rank,
        cfg.lora.alpha,
        d.steps,
        d.batch,
        d.optim.lr,
        d.loss,
        format!("{:?}", d.solver).to_lowercase(),
        d.intervals,
        d.guidance,
        cfg.uncond,
        cfg.prompt_lines,
        cfg.per_prompt,
        seconds
    );
    let columns = present_columns(results);
    md += "| method | steps | n | ODE error |";
    columns.iter().for_each(|(_, heading)| md += &format!(" {heading} |"));
    md += &format!("\n|---|---|---|---|{}\n", "---|".repeat(columns.len()));
    let teacher = results
        .first()
        .and_then(|r| r.rows.iter().find(|r| r.model == "teacher"));
    let rows = results.iter().flat_map(|r| {
        r.rows
            .iter()
            .filter(|row| row.model != "teacher")
            .map(move |row| (r.method.as_str(), row))
    });
    for (method, row) in teacher.map(|t| ("teacher", t)).into_iter().chain(rows) {
        md += &format!("| {method} | {} | {} | {:.4e} |", row.steps, row.n, row.ode_error);
        for (key, _) in &columns {
            md += &format!(
                " {} |",
                row.scores.get(*key).map_or("—".to_string(), |v| format!("{v:.4}"))
            );
        }
        md += "\n";
    }
    md.push_str("\n| method | teacher evaluations | training s | final loss |\n|---|---|---|---|\n");
    for r in results {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.3e} |\n",
            r.method, r.teacher_evaluations, r.train_seconds, r.final_loss
        ));
    }
    for n in notes {
        md.push_str(&format!("\n{n}\n"));
    }
    md
}

/// ODE error against FD vs the teacher (every method and K) and each method's loss curve.
fn write_charts(out: &Path, results: &[MethodResult]) -> Result<()> {
    let scatter: Vec<Series> = results
        .iter()
        .map(|r| Series {
            name: r.method.clone(),
            points: r
                .rows
                .iter()
                .filter(|row| row.model != "teacher")
                .filter_map(|row| Some((row.ode_error, primary_fd(row)?.1, format!("{}", row.steps))))
                .collect(),
        })
        .collect();
    write_chart(
        &out.join("ode_error_vs_fd.svg"),
        "ODE error against FD vs the teacher (FID, else FD-DINOv2, else FD-CLIP)",
        "ODE error (latent MSE)",
        "FD vs teacher",
        &scatter,
        false,
        false,
    )?;
    let mut curves = Vec::new();
    for r in results {
        let log = std::fs::read_to_string(out.join("students").join(&r.method).join("train_log.csv"))?;
        let points = log
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (s, v) = l.split_once(',')?;
                Some((s.parse().ok()?, v.parse().ok()?, String::new()))
            })
            .collect();
        curves.push(Series {
            name: r.method.clone(),
            points,
        });
    }
    write_chart(
        &out.join("loss.svg"),
        "Training loss",
        "step",
        "loss",
        &curves,
        true,
        true,
    )
}

/// The score columns any row of any method has, in the evaluation's order.
fn present_columns(results: &[MethodResult]) -> Vec<(&'static str, &'static str)> {
    let rows: Vec<&SdEvalRow> = results.iter().flat_map(|r| &r.rows).collect();
    SCORE_COLUMNS
        .iter()
        .filter(|(key, _)| rows.iter().any(|r| r.scores.contains_key(*key)))
        .copied()
        .collect()
}

/// The FD the chart plots: the paper's FID if measured, else FD-DINOv2, else FD-CLIP.
fn primary_fd(row: &SdEvalRow) -> Option<(&'static str, f64)> {
    ["fid_vs_teacher", "fd_dinov2_vs_teacher", "fd_clip_vs_teacher"]
        .into_iter()
        .find_map(|key| Some((key, *row.scores.get(key)?)))
}

/// The metric flags of `--preset sd`, as given.
fn metric_files(sd: &SdReproduceArgs) -> [(&'static str, &Option<PathBuf>); 4] {
    [
        ("clip", &sd.clip),
        ("inception", &sd.inception),
        ("dino", &sd.dino),
        ("aesthetic", &sd.aesthetic),
    ]
}
