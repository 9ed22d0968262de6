//! `dcm eval` of a small-model student: its ODE-solving error at several step counts against
//! the teacher it was distilled from, beside the teacher's own DDIM at the same step counts.

use crate::diffusion::condition::Condition;
use crate::diffusion::denoiser::Denoiser;
use crate::diffusion::discretization::Discretization;
use crate::diffusion::teacher_ode::TeacherOde;
use crate::eval::evaluate::ode_errors;
use crate::families::family::EvalRequest;
use crate::models::student::Student;
use crate::models::teacher::Teacher;
use crate::runtime::device::Runtime;
use crate::runtime::memory::{ensure_fits, f32_bytes};
use crate::runtime::noise::{eval_noise_rng, standard_normal};
use anyhow::{bail, ensure, Context, Result};

/// Noise samples when `--samples` is not given.
const DEFAULT_SAMPLES: usize = 2000;

/// Refuses the flags of a Stable Diffusion evaluation: a small student takes none of them.
pub fn refuse_text_flags(r: &EvalRequest) -> Result<()> {
    let flags = [
        ("--solver", r.solver.is_some()),
        ("--intervals", r.intervals.is_some()),
        ("--guidance", r.guidance.is_some()),
        ("--prompts", r.prompts.is_some()),
        ("--noise", r.noise.is_some()),
        ("--negative-prompt", r.negative_prompt.is_some()),
        ("--uncond", r.uncond.is_some()),
        ("--clip", r.metrics.clip.is_some()),
        ("--inception", r.metrics.inception.is_some()),
        ("--dino", r.metrics.dino.is_some()),
        ("--aesthetic", r.metrics.aesthetic.is_some()),
        ("--reference", r.reference.is_some()),
        ("--real", r.metrics.real.is_some()),
        ("--batch", r.batch.is_some()),
        ("--out", r.out.is_some()),
        ("--allow-other-teacher", r.allow_other_teacher),
        ("--lora-text-encoder", r.lora_text_encoder.is_some()),
    ];
    let given: Vec<&str> = flags.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect();
    if given.is_empty() {
        return Ok(());
    }
    bail!(
        "{} applies to a Stable Diffusion evaluation (--teacher sd:DIR with --lora FILE or --student OUT)",
        given.join(", ")
    )
}

/// Prints the ODE-error table of the student folder `req.student` (whose teacher is `teacher`;
/// the flags were checked with `refuse_text_flags`).
pub fn evaluate(teacher: &Teacher, req: &EvalRequest, rt: &Runtime) -> Result<()> {
    let samples = req.samples.unwrap_or(DEFAULT_SAMPLES);
    ensure!(samples > 0, "--samples must be positive");
    let student = Student::load(req.student.as_deref().context("give --student DIR")?, rt)?;
    student.check_teacher(teacher)?;
    let d = &student.config.distill;
    let grid = Discretization::new(d.intervals)?;
    let mut shape = vec![samples];
    shape.extend(student.config.net.sample_shape());
    // The reference solve, the sampler and the coarse solve each hold several copies.
    ensure_fits(f32_bytes(&shape) * 16.0, &format!("--samples {samples}"))?;
    let noise = standard_normal(&mut eval_noise_rng(req.seed), shape, &rt.device)?;
    let classes = teacher.num_classes() as u32;
    let conditional = student.config.conditional && classes > 0;
    let labels = Condition::Labels((0..samples as u32).map(|i| conditional.then(|| i % classes)).collect());
    for &k in &req.steps {
        ensure!(
            k >= 1 && k <= grid.intervals() && grid.top().is_multiple_of(k),
            "--steps {k} must divide {} and be at most N = {}",
            grid.top(),
            grid.intervals()
        );
    }
    let ode = TeacherOde {
        solver: d.solver,
        grid,
        guidance: d.guidance,
    };
    let rows = ode_errors(teacher, &ode, &*student.net, &noise, &labels, &req.steps, req.seed)?;
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
