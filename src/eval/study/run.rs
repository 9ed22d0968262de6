//! The study's stages in order — references and the teacher's own solves, the main
//! baseline's training-length runs (which set the baselines' length), the two baselines,
//! the analytic control, the target horizon and guidance sweeps — saving the baselines'
//! students beside the report. Each finished stage is in the record the report is written
//! from, so a resumed study skips the stages its record holds and continues the first
//! unfinished one unit by unit (`units`).

use crate::eval::judge::Judge;
use crate::eval::model_set::Models;
use crate::eval::records::Comparison;
use crate::eval::reproduce_config::ReproduceConfig;
use crate::eval::setup::Setup;
use crate::eval::students::{save_students, StudentSource, TrainedStudent};
use crate::eval::study::analytic_control;
use crate::eval::study::baselines::{baseline, length_sweep, teacher_rows, LongRun};
use crate::eval::study::config::StudyConfig;
use crate::eval::study::outcome::StudyOutcome;
use crate::eval::study::sweeps::{guidance_sweep, horizon_sweep};
use crate::eval::study::units::Units;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What each stage makes, in order (the record names a finished stage after what it made).
pub const STAGE_TOPICS: [&str; 7] = [
    "references",
    "training length",
    "main baseline",
    "other baseline",
    "analytic control",
    "target horizon",
    "guidance",
];

const STAGES: usize = STAGE_TOPICS.len();

/// Stages 1 to 6 but 5 judge against each seed's reference solve (made once, as the first
/// of stages 1 to 6 a process runs starts): a study resumed at stage 7 needs none.
const LAST_JUDGED: usize = 6;

/// The outcome before any stage has run.
fn nothing_yet(cfg: &StudyConfig, classes: usize) -> StudyOutcome {
    let empty = |c: &ReproduceConfig| Comparison {
        preset: c.preset.clone(),
        rows: Vec::new(),
        training: Vec::new(),
    };
    StudyOutcome {
        classes,
        main: empty(&cfg.main),
        other: empty(&cfg.other),
        lengths: Vec::new(),
        horizons: Vec::new(),
        guidance: Vec::new(),
        analytic: Vec::new(),
        analytic_samples: 0,
        stages: Vec::new(),
    }
}

/// A study's record so far, to continue: its outcome and the seconds it had taken.
pub struct Resumed {
    pub outcome: StudyOutcome,
    pub seconds: f64,
}

/// What the stages share.
struct Study<'a> {
    cfg: &'a StudyConfig,
    models: &'a Models,
    source: &'a StudentSource,
    setup: Setup,
    units: Units,
    students: PathBuf,
    /// Each seed's evaluation noise and the teacher's reference solve from it: made by the
    /// first stage this process runs that judges.
    judges: Vec<Judge<'a>>,
    /// The training-length runs, once stage 2 has run in this process.
    runs: Option<Vec<LongRun>>,
}

/// Runs every stage the record in `resumed` does not hold into `out` (checkpoints and
/// students), handing the outcome so far and the study's seconds to `report` after each,
/// so that a run stopped part-way leaves the report of the stages it finished.
pub fn run(
    cfg: &StudyConfig,
    (models, source): (&Models, &StudentSource),
    out: &Path,
    resumed: Option<Resumed>,
    mut report: impl FnMut(&StudyOutcome, f64) -> Result<()>,
) -> Result<StudyOutcome> {
    cfg.validate()?;
    let started = Instant::now();
    let setup = Setup::new(&cfg.main, models)?;
    let Resumed { mut outcome, seconds } = resumed.unwrap_or_else(|| Resumed {
        outcome: nothing_yet(cfg, setup.classes),
        seconds: 0.0,
    });
    let o = &mut outcome;
    let mut study = Study {
        cfg,
        models,
        source,
        setup,
        units: Units::new(out.join("checkpoints")),
        students: out.join("students"),
        judges: Vec::new(),
        runs: None,
    };
    // Time before this process: the record's, and the units it takes from earlier ones.
    let mut earlier = seconds;
    for n in 1..=STAGES {
        if let Some((name, _)) = o.stages.get(n - 1) {
            eprintln!("[study {n}/{STAGES}] {name}: finished before, taken from the record");
            continue;
        }
        eprintln!(
            "[study {n}/{STAGES}] {} (study elapsed {:.1} min)",
            study.title(n, o)?,
            (earlier + started.elapsed().as_secs_f64()) / 60.0
        );
        let clock = Instant::now();
        if n <= LAST_JUDGED && study.judges.is_empty() {
            study.judges = (0..cfg.main.seeds as u64)
                .map(|seed| Judge::new(&study.setup, &cfg.main, models, seed, cfg.main.guidance))
                .collect::<Result<_>>()?;
        }
        let name = study.stage(n, o)?;
        let carried = study.units.take_carried();
        earlier += carried;
        o.stages.push((name, clock.elapsed().as_secs_f64() + carried));
        report(o, earlier + started.elapsed().as_secs_f64())?;
    }
    Ok(outcome)
}

impl Study<'_> {
    fn title(&self, n: usize, o: &StudyOutcome) -> Result<String> {
        Ok(match n {
            1 => "references: the teacher's own solves from each seed's noise".into(),
            2 => format!(
                "training length: {} seed(s), one run each to the longest",
                self.cfg.sweep_seeds
            ),
            3 => format!("main baseline at {} training steps", o.baseline_steps(self.cfg)?),
            4 => "the other baseline".into(),
            5 => "analytic control".into(),
            6 => "target horizon".into(),
            _ => "guidance".into(),
        })
    }

    /// Runs stage `n` into `o`; returns the name the record gives it.
    fn stage(&mut self, n: usize, o: &mut StudyOutcome) -> Result<String> {
        let (cfg, at) = (self.cfg, (self.models, &self.setup));
        let sweep = || Ok::<_, anyhow::Error>((o.lengths.as_slice(), cfg.sweep_length(o.baseline_steps(cfg)?)));
        Ok(match n {
            1 => {
                for (seed, judge) in self.judges.iter().enumerate() {
                    o.main
                        .rows
                        .extend(teacher_rows(&cfg.main, self.models, judge, seed as u64)?);
                }
                "references".into()
            }
            2 => {
                let lengths = (cfg.lengths.as_slice(), &self.units);
                let (rows, runs) = length_sweep(&cfg.main, at, &self.judges, lengths, cfg.sweep_seeds)?;
                (o.lengths, self.runs) = (rows, Some(runs));
                "training length".into()
            }
            3 | 4 => self.baseline(n == 3, o)?,
            5 => {
                (o.analytic, o.analytic_samples) =
                    analytic_control::run(&cfg.analytic, &cfg.main, &self.models.runtime)?;
                "analytic control".into()
            }
            6 => {
                o.horizons = horizon_sweep(cfg, at, &self.judges, sweep()?, &self.units)?;
                "target horizon".into()
            }
            _ => {
                o.guidance = guidance_sweep(cfg, at, sweep()?, &self.units)?;
                "guidance".into()
            }
        })
    }

    /// The main baseline (at the sweep seeds read off the training-length runs) or the other.
    fn baseline(&mut self, main: bool, o: &mut StudyOutcome) -> Result<String> {
        let (main_cfg, other_cfg) = self.cfg.baselines_at(o.baseline_steps(self.cfg)?);
        let (cfg, runs) = match main {
            true => (main_cfg, self.long_runs()?),
            false => (other_cfg, Vec::new()),
        };
        let students = self.students.join(&cfg.preset);
        let save = |s: &TrainedStudent| save_students(&students, self.source, std::slice::from_ref(s));
        let at = (self.models, &self.setup);
        let comparison = baseline(&cfg, at, &self.judges, &runs, (&self.units, &save))?;
        match main {
            true => {
                o.main.rows.extend(comparison.rows);
                o.main.training = comparison.training;
            }
            false => o.other = comparison,
        }
        Ok(format!("{} baseline", cfg.preset))
    }

    /// The training-length runs: stage 2's in this process, or else taken from its units
    /// (whose time is stage 2's, not the caller's).
    fn long_runs(&mut self) -> Result<Vec<LongRun>> {
        if let Some(runs) = self.runs.take() {
            return Ok(runs);
        }
        let (cfg, at) = (self.cfg, (self.models, &self.setup));
        let lengths = (cfg.lengths.as_slice(), &self.units);
        let (_, runs) = length_sweep(&cfg.main, at, &self.judges, lengths, cfg.sweep_seeds)?;
        self.units.take_carried();
        Ok(runs)
    }
}
