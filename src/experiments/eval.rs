//! `dcm eval`: a student's ODE-solving error at several step counts; for a LoRA student of a
//! Stable Diffusion teacher (`--teacher sd:DIR`), the paper's table (`eval::sd_eval`) written
//! to a folder.

use super::args::{refuse, OdeArgs, RuntimeArgs};
use crate::consistency::sampler::Picking;
use crate::data::npy;
use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::schedule::T;
use crate::diffusion::solver::Solver;
use crate::eval::evaluate::{ode_errors, EvalSetup};
use crate::eval::sd_eval::{load_clip, real_image_features, SdEvalSetup, SdEvaluation};
use crate::eval::sd_reference::{ReferenceCache, TeacherOde};
use crate::models::sd::images::write_pngs;
use crate::models::sd::prompts;
use crate::models::sd::student::SdStudentConfig;
use crate::models::sd::text::NullText;
use crate::models::sd::SdTeacher;
use crate::models::student::Student;
use crate::nets::sd::lora_files::KOHYA_FILE;
use crate::runtime::files::{check_output_dir, write_atomic};
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::{eval_noise_rng, standard_normal};
use anyhow::{bail, ensure, Context, Result};
use candle_core::DType;
use clap::Args;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct EvalArgs {
    /// A student folder written by `dcm distill`; with --teacher sd:DIR, a distillation run
    /// folder holding lora.safetensors (and student.json, whose N, w and solver are the defaults).
    #[arg(long, required_unless_present = "lora")]
    pub student: Option<PathBuf>,
    /// Stable Diffusion teacher sd:DIR of a LoRA student (--lora FILE or --student OUT).
    #[arg(long)]
    pub teacher: Option<String>,
    /// A LoRA student of the sd:DIR teacher (kohya, PEFT or diffusers' mixed layout).
    #[arg(long, value_name = "FILE", conflicts_with = "student", requires = "teacher")]
    pub lora: Option<PathBuf>,
    /// SD: prompts, one line per noise row (a file of one line applies it to every row).
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// SD: initial latents x_T [B, C, h, w], .npy, shared by the teacher and the student.
    #[arg(long, value_name = "IN.npy")]
    pub noise: Option<PathBuf>,
    /// SD: the teacher's solve the student is measured against (N is also the student's grid).
    #[command(flatten)]
    pub ode: OdeArgs,
    /// SD: negative prompt of the teacher's guidance [default: as the diffusers pipeline].
    #[arg(long, conflicts_with = "uncond", allow_hyphen_values = true)]
    pub negative_prompt: Option<String>,
    /// SD: unconditional input of the teacher's guidance: zeros or empty.
    #[arg(long, value_name = "zeros|empty")]
    pub uncond: Option<String>,
    /// SD: a transformers CLIPModel folder (e.g. ViT-L/14) for FD on CLIP features and CLIP score.
    #[arg(long, value_name = "CLIP_DIR")]
    pub clip: Option<PathBuf>,
    /// SD: reuse the teacher's reference samples in this folder (an earlier EVAL_DIR/reference).
    #[arg(long, value_name = "DIR")]
    pub reference: Option<PathBuf>,
    /// SD: a folder of real PNG/JPEG images for FD against them (needs --clip).
    #[arg(long, value_name = "FOLDER", requires = "clip")]
    pub real: Option<PathBuf>,
    /// SD: rows per UNet, VAE and CLIP call [default: 8].
    #[arg(long)]
    pub batch: Option<usize>,
    /// SD: output folder: eval.json, eval.csv, eval.md, reference/, students/kK/.
    #[arg(long, value_name = "EVAL_DIR")]
    pub out: Option<PathBuf>,
    /// Number of noise samples (students of `dcm distill` on the built-in teachers) [default: 2000].
    #[arg(long)]
    pub samples: Option<usize>,
    /// Student step counts to evaluate, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub steps: Vec<usize>,
    /// Evaluation seed: the noise and the sampler's re-noise streams (`dcm reproduce` seed K uses the same).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub fn command(a: EvalArgs) -> Result<()> {
    if a.teacher.is_some() {
        return sd_command(a);
    }
    refuse(
        &sd_flags_given(&a),
        "applies to a Stable Diffusion evaluation (--teacher sd:DIR with --lora FILE or --student OUT)",
    )?;
    mnist_command(a)
}

fn sd_flags_given(a: &EvalArgs) -> Vec<&'static str> {
    let mut given = a.ode.given();
    let flags = [
        ("--prompts", a.prompts.is_some()),
        ("--noise", a.noise.is_some()),
        ("--negative-prompt", a.negative_prompt.is_some()),
        ("--uncond", a.uncond.is_some()),
        ("--clip", a.clip.is_some()),
        ("--reference", a.reference.is_some()),
        ("--real", a.real.is_some()),
        ("--batch", a.batch.is_some()),
        ("--out", a.out.is_some()),
    ];
    given.extend(flags.iter().filter(|(_, g)| *g).map(|(f, _)| *f));
    given
}

fn mnist_command(a: EvalArgs) -> Result<()> {
    let samples = a.samples.unwrap_or(2000);
    ensure!(samples > 0, "--samples must be positive");
    let rt = a.runtime.runtime()?;
    let student = Student::load(a.student.as_deref().context("give --student DIR")?, &rt)?;
    let teacher = student.teacher(&rt)?;
    let d = &student.config.distill;
    let grid = Discretization::new(d.intervals)?;
    let mut shape = vec![samples];
    shape.extend(student.config.net.sample_shape());
    // The reference solve, the sampler and the coarse solve each hold several copies.
    ensure_fits(f32_bytes(&shape) * 16.0, &format!("--samples {samples}"))?;
    let noise = standard_normal(&mut eval_noise_rng(a.seed), shape, &rt.device)?;
    let classes = teacher.num_classes() as u32;
    let conditional = student.config.conditional && classes > 0;
    let labels = Condition::Labels((0..samples as u32).map(|i| conditional.then(|| i % classes)).collect());
    for &k in &a.steps {
        ensure!(
            k >= 1 && k <= grid.intervals() && T.is_multiple_of(k),
            "--steps {k} must divide 1000 and be at most N = {}",
            grid.intervals()
        );
    }
    let setup = EvalSetup {
        teacher: &teacher,
        solver: d.solver,
        grid,
        guidance: d.guidance,
    };
    let rows = ode_errors(&setup, &*student.net, &noise, &labels, &a.steps, a.seed)?;
    let cond = if conditional {
        "classes in turn"
    } else {
        "unconditional"
    };
    println!(
        "ODE error (MSE to the teacher's {}-interval {:?} solve, w = {}, {samples} samples, {cond})",
        d.intervals, d.solver, d.guidance
    );
    println!("| steps | student ({:?}) | teacher DDIM, same steps |", d.method);
    println!("|---|---|---|");
    for r in rows {
        println!("| {} | {:.4e} | {:.4e} |", r.steps, r.student, r.teacher_ddim);
    }
    Ok(())
}

/// The LoRA file of `--lora FILE` or `--student OUT`, and the run's settings for the latter.
struct SdStudent {
    lora: PathBuf,
    config: Option<SdStudentConfig>,
}

/// `--student OUT`: OUT/lora.safetensors and the settings in OUT/student.json, both written
/// by `dcm distill --teacher sd:DIR`.
fn sd_student(a: &EvalArgs) -> Result<SdStudent> {
    if let Some(lora) = &a.lora {
        ensure!(lora.is_file(), "--lora {}: no such file", lora.display());
        return Ok(SdStudent {
            lora: lora.clone(),
            config: None,
        });
    }
    let out = a.student.as_deref().context("give --lora FILE or --student OUT")?;
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

/// The teacher's ODE from the flags, else the student run's settings (its N, w, solver and
/// unconditional input), else the defaults.
fn teacher_ode(a: &EvalArgs, s: &SdStudent) -> Result<TeacherOde> {
    let ode = &a.ode;
    let trained = s.config.as_ref().map(|c| &c.distill);
    let null = match (&a.negative_prompt, &a.uncond, &s.config) {
        (None, None, Some(c)) => NullText::from_flags(None, Some(&c.uncond))?,
        _ => NullText::from_flags(a.negative_prompt.as_deref(), a.uncond.as_deref())?,
    };
    Ok(TeacherOde {
        solver: ode.solver.or(trained.map(|d| d.solver)).unwrap_or(Solver::Ddim),
        intervals: ode
            .intervals
            .or(trained.map(|d| d.intervals))
            .unwrap_or(ode.intervals()),
        guidance: match (ode.guidance, trained) {
            (None, Some(d)) => d.guidance,
            _ => ode.guidance()?,
        },
        null,
    })
}

fn sd_command(a: EvalArgs) -> Result<()> {
    ensure!(
        a.samples.is_none(),
        "--samples: an SD evaluation takes its rows from --noise"
    );
    let spec = a.teacher.as_deref().unwrap_or_default();
    let Some(dir) = spec.strip_prefix("sd:") else {
        bail!("--teacher '{spec}': dcm eval takes sd:DIR teachers (a student of another teacher: --student DIR alone)");
    };
    let out = a.out.clone().context("--out EVAL_DIR is needed for an SD evaluation")?;
    check_output_dir(&out, "--out")?;
    let student = sd_student(&a)?;
    let ode = teacher_ode(&a, &student)?;
    let batch = a.batch.unwrap_or(8);
    ensure!(batch > 0, "--batch 0: must be at least 1");
    let rt = a.runtime.runtime()?;
    let noise_file = a
        .noise
        .as_deref()
        .context("--noise IN.npy is needed for an SD evaluation")?;
    let noise = npy::read(noise_file)?;
    let rows = noise.dim(0).unwrap_or(0);
    let prompts = prompts::per_row(
        None,
        Some(a.prompts.as_deref().context("--prompts FILE is needed")?),
        rows,
    )?;
    // Held at once: the reference, one student's latents and its K − 1 re-noise draws, working copies.
    let max_k = a.steps.iter().copied().max().unwrap_or(1);
    ensure_fits(
        f32_bytes(noise.dims()) * (max_k + 8) as f64,
        &format!("--noise {}", noise_file.display()),
    )?;
    let noise = noise.to_dtype(DType::F32)?.to_device(&rt.device)?;
    let teacher = SdTeacher::load(Path::new(dir), &rt).with_context(|| format!("--teacher '{spec}'"))?;
    let reference = match &a.reference {
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
    };
    let mut setup = SdEvalSetup {
        teacher: &teacher,
        rt: &rt,
        ode,
        prompts: &prompts,
        noise: &noise,
        steps: a.steps.clone(),
        picking: Picking::Floor,
        seed: a.seed,
        batch,
        clip: None,
        real: None,
        reference,
    };
    // Cheap checks before the student, CLIP and real images load.
    setup.validate()?;
    // The loader's errors name the LoRA file.
    let lora_student = SdTeacher::load_with_lora(Path::new(dir), &rt, Some(&student.lora))?;
    let clip = match &a.clip {
        Some(d) => Some(load_clip(d, &rt).with_context(|| format!("--clip {}", d.display()))?),
        None => None,
    };
    let real = match (&clip, &a.real) {
        (Some(c), Some(d)) => {
            Some(real_image_features(c, d, batch).with_context(|| format!("--real {}", d.display()))?)
        }
        _ => None,
    };
    setup.clip = clip.as_ref();
    setup.real = real.as_ref();
    let eval = setup.run(&lora_student)?;
    write_outputs(&out, &a, &student.lora, &setup, &eval)?;
    print!("{}", eval.to_markdown());
    Ok(())
}

/// eval.json, eval.csv, eval.md and each K's latents and PNGs under students/kK/.
fn write_outputs(out: &Path, a: &EvalArgs, lora: &Path, setup: &SdEvalSetup, eval: &SdEvaluation) -> Result<()> {
    for s in &eval.samples {
        let dir = out.join("students").join(format!("k{}", s.steps));
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        npy::write(&dir.join("latents.npy"), &s.latents)?;
        write_pngs(&dir, &(s.images.to_dtype(DType::F32)? / 255.0)?)?;
    }
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let ode = &setup.ode;
    let report = json!({
        "settings": {
            "teacher": a.teacher,
            "lora": lora.display().to_string(),
            "prompts": path(&a.prompts),
            "noise": path(&a.noise),
            "noise_shape": setup.noise.dims(),
            "solver": format!("{:?}", ode.solver).to_lowercase(),
            "intervals": ode.intervals,
            "guidance": ode.guidance,
            "uncond": format!("{:?}", ode.null),
            "steps": setup.steps,
            "sampler_timesteps": "diffusers LCMScheduler (floor of linspace(0, N, K, endpoint=false))",
            "seed": setup.seed,
            "batch": setup.batch,
            "clip": path(&a.clip),
            "real": path(&a.real),
            "device": a.runtime.device,
            "dtype": a.runtime.dtype,
        },
        "reference": {
            "dir": setup.reference.dir.display().to_string(),
            "from_cache": eval.reference.from_cache,
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
