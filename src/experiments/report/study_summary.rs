//! The Results block of the repository's README (`docs/study/summary.md`): the study in
//! short, every sentence generated from its record — setup, training length, the headline
//! differences with both intervals and sign counts, the verdicts, every point where ODE
//! error and FD vs teacher disagree, KD on the teacher's own samples before the findings
//! against the data, ρ per method and step count, the sweeps, the analytic control and how
//! the setting differs from the paper's.

use super::finding::{better, difference_cells, leaning, num, verdict, Better, Verdict};
use super::length_criterion::{against_ddim, behind_sentence, choice_sentence, criterion_steps, named, steps_text};
use super::rank_correlation::{pooled, ranks, rho_text};
use super::study_findings::{
    analytic_claims, baseline_claims, baseline_name, bullets, disagreements, horizon_sentences, length_caveats,
    length_order, length_paths,
};
use super::study_record::{part_way, Differences, StudyRecord};
use super::sweep_order::paired;
use super::sweep_report::{mean_at, seed_note, settings, shown, SWEPT};
use super::teacher_kd::{kd_against_fd, kd_sentence};
use crate::consistency::distance::Distance;
use crate::diffusion::solver::Solver;
use crate::eval::difference::Difference;
use crate::eval::records::SweepRow;
use crate::eval::study::config::{LengthRule, StudyConfig};
use crate::eval::study::outcome::StudyOutcome;
use anyhow::Result;
use std::fmt::Write as _;

/// The markers around the README's copy of `summary.md`.
pub const SUMMARY_BEGIN: &str = "<!-- generated: docs/study/summary.md, checked by tests/study.rs -->";
pub const SUMMARY_END: &str = "<!-- end of docs/study/summary.md -->";

fn setup(r: &StudyRecord, length: usize) -> String {
    let (cfg, out) = (r.config, r.outcome);
    let m = &cfg.main;
    let rule = match cfg.length_rule {
        LengthRule::Criterion(_) => "set by the criterion below",
        LengthRule::Fixed => "a fixed budget",
    };
    let solver = match m.solver {
        Solver::Ddim => "DDIM",
        Solver::Euler => "Euler",
        Solver::Heun => "Heun",
    };
    let loss = match m.loss {
        Distance::L2 => "L2".to_string(),
        Distance::PseudoHuber { c } => format!("pseudo-Huber, c = {c}"),
    };
    format!(
        "**Setup.** MNIST digits in the latent space of the shipped autoencoder and the shipped \
         class-conditional teacher, whose {solver} solve with N = {} intervals at guidance w = {} is the \
         reference. CM and Direct CM are distilled with identical settings ({length} steps, {rule}; \
         batch {}, AdamW lr {:e} {}, weight decay {:e}, {loss}) under two baselines: {} (`--preset {}`) and \
         {} (`--preset {}`); {} seeds per method, each seed training both students and drawing its own \
         {} evaluation samples, every student judged at {} sampler steps. FD vs teacher is the Fréchet \
         distance to the teacher's samples from the same noise on the shipped MNIST classifier's \
         features: an analogue of the paper's FD, not the paper's metric. Every CM − Direct difference \
         comes with its {:.0} % percentile bootstrap interval over seeds, its t-interval (df = seeds − 1) \
         and its sign count (seeds with the mean's sign); a verdict names a method only when all three \
         agree. Wall time {:.0} min on {}.\n",
        m.intervals,
        m.guidance,
        m.batch,
        m.lr,
        if m.cosine_decay {
            "on a cosine decay"
        } else {
            "constant"
        },
        m.weight_decay,
        baseline_name(m),
        out.main.preset,
        baseline_name(&cfg.other),
        out.other.preset,
        m.seeds,
        m.per_class * out.classes,
        steps_text(&m.steps),
        cfg.level * 100.0,
        r.seconds / 60.0,
        r.machine
    )
}

fn training_length(cfg: &StudyConfig, out: &StudyOutcome, length: usize) -> Result<String> {
    let steps = criterion_steps(cfg);
    let Some(choice) = out.length_choice(&steps)? else {
        return Ok(String::new());
    };
    let rule = match cfg.length_rule {
        LengthRule::Criterion(_) => format!("The baselines trained {length} steps."),
        LengthRule::Fixed => format!(
            "These baselines trained a fixed budget of {length} steps: the run predates the criterion, which its training-length sweep answers as follows."
        ),
    };
    let checks = against_ddim(&named(out), &out.main, &steps);
    Ok(format!(
        "**Training length.** {rule} {} {}\n",
        choice_sentence(&choice, &steps),
        behind_sentence(&checks, &steps)
    ))
}

fn headline(out: &StudyOutcome, d: &Differences, steps: &[usize]) -> String {
    let mut s = String::from(
        "| baseline | steps | FD vs teacher: CM | Direct | CM − Direct | bootstrap | t-interval | signs | ODE error: CM − Direct | bootstrap | t-interval | signs |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (name, diffs) in [(&out.main.preset, &d.main), (&out.other.preset, &d.other)] {
        for &k in steps {
            let find = |m: &str| diffs.iter().find(|x| x.metric == m && x.steps == k);
            if let (Some(fd), Some(ode)) = (find("FD vs teacher"), find("ODE error (latent)")) {
                let _ = writeln!(
                    s,
                    "| `{name}` | {k} | {} | {} | {} | {} |",
                    num(fd.cm),
                    num(fd.direct),
                    difference_cells(fd),
                    difference_cells(ode)
                );
            }
        }
    }
    s
}

/// The metrics against the data (everything but FD vs teacher and the ODE errors).
fn against_data(d: &Difference) -> bool {
    d.metric != "FD vs teacher" && !d.metric.starts_with("ODE")
}

/// `KD vs data at 2, 4 and 8 steps; precision at 1 step`: the resolved differences a
/// method wins against the data, metric by metric.
fn wins(diffs: &[Difference], who: Verdict) -> String {
    let mut by_metric: Vec<(String, Vec<usize>)> = Vec::new();
    for x in diffs
        .iter()
        .filter(|x| against_data(x) && verdict(x, better(&x.metric)) == who)
    {
        match by_metric.iter_mut().find(|m| m.0 == x.metric) {
            Some(m) => m.1.push(x.steps),
            None => by_metric.push((x.metric.clone(), vec![x.steps])),
        }
    }
    if by_metric.is_empty() {
        return "nothing".into();
    }
    by_metric
        .iter()
        .map(|(m, ks)| format!("{m} at {} step{}", steps_text(ks), if ks == &[1] { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join("; ")
}

fn data_section(out: &StudyOutcome, d: &Differences, steps: &[usize]) -> String {
    let mut s = String::from("**Against the held-out data.** ");
    if let Some(kd) = kd_sentence(&out.main.rows, steps) {
        let _ = write!(s, "{kd} ");
    }
    s.push_str("With that caveat, the differences against the data resolved for one method:\n\n");
    // A baseline a part-way study has not run has no differences, not "nothing better".
    let run = [(&out.main.preset, &d.main), (&out.other.preset, &d.other)]
        .into_iter()
        .filter(|(_, diffs)| !diffs.is_empty());
    for (name, diffs) in run {
        let split = kd_against_fd(diffs);
        let _ = writeln!(
            s,
            "- `{name}`: CM better on {}; Direct better on {}. KD vs data and FD vs data lean to different methods at {}.",
            wins(diffs, Verdict::Cm),
            wins(diffs, Verdict::Direct),
            if split.is_empty() {
                "no step count".to_string()
            } else {
                format!("{} step{}", steps_text(&split), if split == [1] { "" } else { "s" })
            }
        );
    }
    s
}

fn rank_summary(cfg: &StudyConfig, rows: &[SweepRow]) -> Result<String> {
    let rs = ranks(rows, &cfg.main.steps, cfg.level)?;
    let Some(first) = rs.first() else {
        return Ok(String::new());
    };
    let how = if first.per_seed.len() > 1 {
        format!("bootstrap over {} seeds", first.per_seed.len())
    } else {
        "Fisher's z over one run's checkpoints, descriptive".to_string()
    };
    let mut parts = Vec::new();
    for m in ["CM", "Direct"] {
        let each: Vec<String> = rs
            .iter()
            .filter(|r| r.method == m)
            .map(|r| format!("{} at {}", rho_text(r), r.steps))
            .collect();
        parts.push(format!("{m} {}", each.join(", ")));
    }
    Ok(format!(
        "**ODE error and FD vs teacher as rankings.** Spearman's ρ over each training-length run's {} checkpoints, per method and sampler step count ({:.0} % interval: {how}): {}. Pooled over methods, step counts and checkpoints — beside them only, since it mixes differences between methods and step counts into one ranking — ρ = {}.\n",
        first.checkpoints,
        cfg.level * 100.0,
        parts.join("; "),
        pooled(rows).map_or("undefined".into(), num)
    ))
}

/// Per w, the step counts at which each method has the lower FD vs teacher and ODE error:
/// by the resolved differences when the sweep has seeds to pair, by the means otherwise.
fn guidance_lines(rows: &[SweepRow], diffs: &[(f64, Difference)], steps: &[usize]) -> Vec<String> {
    settings(rows)
        .into_iter()
        .map(|w| {
            let side = |(metric, get): (&str, _)| {
                let (mut cm, mut direct, mut open) = (Vec::new(), Vec::new(), Vec::new());
                for &k in steps {
                    let lean = match (
                        paired(diffs, w, k, metric),
                        mean_at(rows, w, "CM", k, get),
                        mean_at(rows, w, "Direct", k, get),
                    ) {
                        (Some(d), ..) => verdict(d, Better::Lower),
                        (None, Some(c), Some(d)) => leaning(c - d, Better::Lower),
                        _ => continue,
                    };
                    match lean {
                        Verdict::Cm => cm.push(k),
                        Verdict::Direct => direct.push(k),
                        Verdict::Unresolved => open.push(k),
                    }
                }
                let at = |v: &[usize]| match v {
                    [] => "no step count".to_string(),
                    [1] => "1 step".to_string(),
                    _ => format!("{} steps", steps_text(v)),
                };
                let unsettled = match open.is_empty() {
                    true => String::new(),
                    false => format!(", not resolved at {}", at(&open)),
                };
                format!("CM at {}, Direct at {}{unsettled}", at(&cm), at(&direct))
            };
            format!(
                "w = {}: lower FD vs teacher — {}; lower ODE error — {}.",
                shown(w),
                side(SWEPT[0]),
                side(SWEPT[1])
            )
        })
        .collect()
}

fn sweeps(cfg: &StudyConfig, out: &StudyOutcome, d: &Differences) -> String {
    let steps = &cfg.main.steps;
    let mut s = String::new();
    if !out.lengths.is_empty() {
        let _ = write!(
            s,
            "**Training length sweep** ({}):\n\n{}\n",
            seed_note(&out.lengths),
            bullets(
                &[
                    length_order(&out.lengths, &d.lengths, steps),
                    length_paths(&out.lengths, steps)
                ]
                .concat()
            )
        );
    }
    if !out.horizons.is_empty() {
        let _ = write!(
            s,
            "**Target horizon** ({}; k teacher steps, then the target network; k = 1 is CM, k = N Direct):\n\n{}\n",
            seed_note(&out.horizons),
            bullets(&horizon_sentences(&out.horizons, &d.horizons, steps))
        );
    }
    if !out.guidance.is_empty() {
        let _ = write!(
            s,
            "**Guidance** ({}; each w judged against its own teacher solve), {}:\n\n{}\n",
            seed_note(&out.guidance),
            match d.guidance.is_empty() {
                true => "means over the seeds",
                false => "a method named where the bootstrap, the t-interval and the sign count agree",
            },
            bullets(&guidance_lines(&out.guidance, &d.guidance, steps))
        );
    }
    s
}

fn differs(cfg: &StudyConfig, length: usize) -> String {
    format!(
        "**How this differs from the paper.** MNIST digits in a small autoencoder's latent space \
         instead of SDXL's VAE latents of LAION images; a class label instead of a text prompt (class \
         accuracy stands in for the CLIP score); a small residual MLP teacher instead of SDXL's UNet; \
         FD on a small classifier's features instead of Inception or DINOv2; {length} distillation \
         steps of batch {} on CPU; sweeps on {} seed{}.\n",
        cfg.main.batch,
        cfg.sweep_seeds,
        if cfg.sweep_seeds == 1 { "" } else { "s" }
    )
}

/// The analytic control's claims (nothing before the stage has run).
fn analytic(cfg: &StudyConfig, diffs: &[Difference]) -> String {
    match diffs.is_empty() {
        true => String::new(),
        false => format!(
            "**Analytic control** (`{}` mixture, exact ODE solution, {} seeds):\n\n{}\n",
            cfg.analytic.toy,
            cfg.analytic.seeds,
            bullets(&analytic_claims(cfg, diffs))
        ),
    }
}

/// The README's Results block.
pub fn summary(r: &StudyRecord, d: &Differences) -> Result<String> {
    let (cfg, out) = (r.config, r.outcome);
    let length = out.baseline_steps(cfg)?;
    let steps = &cfg.main.steps;
    let mut verdicts = Vec::new();
    for (name, diffs) in [(&out.main.preset, &d.main), (&out.other.preset, &d.other)] {
        verdicts.extend(
            baseline_claims(diffs, steps)
                .into_iter()
                .map(|c| format!("`{name}`: {c}")),
        );
    }
    verdicts.extend(length_caveats(&out.lengths, &d.lengths, steps));
    let split = disagreements(cfg, out, d);
    Ok(format!(
        "{}{}\n{}\n**FD vs teacher and ODE error, CM − Direct** (means over seeds; intervals at {:.0} %):\n\n{}\n\
         **The paper's claim** (lower ODE error for Direct, yet lower FD vs teacher for CM), step count by step count:\n\n{}\n\
         **Where ODE error and FD vs teacher disagree** (the lower ODE error with the higher FD; every such point, {} in all):\n\n{}\n\
         {}\n{}\n{}{}{}",
        part_way(&out.stages),
        setup(r, length),
        training_length(cfg, out, length)?,
        cfg.level * 100.0,
        headline(out, d, steps),
        bullets(&verdicts),
        split.len(),
        if split.is_empty() { "- none\n".to_string() } else { bullets(&split) },
        data_section(out, d, steps),
        rank_summary(cfg, &out.lengths)?,
        sweeps(cfg, out, d),
        analytic(cfg, &d.analytic),
        differs(cfg, length)
    ))
}
