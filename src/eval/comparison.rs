//! The paper's comparison end to end on the MNIST latent setting: the teacher's
//! reference solve, its own K-interval DDIM, and CM and Direct CM distilled with
//! identical hyper-parameters, every model judged at each step count on the same noise.

use crate::consistency::objective::Method;
use crate::diffusion::solver::Solver;
use crate::diffusion::teacher_ode::TeacherOde;
use crate::eval::judge::Judge;
use crate::eval::model_set::Models;
use crate::eval::records::{Row, TrainingRecord};
use crate::eval::reproduce_config::ReproduceConfig;
use crate::eval::setup::Setup;
use crate::eval::students::TrainedStudent;
use anyhow::Result;
use candle_core::Tensor;

pub struct Outcome {
    pub classes: usize,
    pub rows: Vec<Row>,
    pub training: Vec<TrainingRecord>,
    pub students: Vec<TrainedStudent>,
    /// Decoded images per (method, steps) for seed 0, for the sample grids.
    pub grids: Vec<(String, usize, Tensor)>,
}

/// The first `cols` samples of every class, class by class (rows of a grid).
fn grid_images(images: &Tensor, classes: usize, cols: usize) -> Result<Tensor> {
    let idx: Vec<u32> = (0..classes)
        .flat_map(|c| (0..cols).map(move |j| (j * classes + c) as u32))
        .collect();
    Ok(images.index_select(&Tensor::from_vec(idx.clone(), idx.len(), images.device())?, 0)?)
}

pub fn run(cfg: &ReproduceConfig, models: &Models) -> Result<Outcome> {
    let setup = Setup::new(cfg, models)?;
    let classes = setup.classes;
    let mut out = Outcome {
        classes,
        rows: Vec::new(),
        training: Vec::new(),
        students: Vec::new(),
        grids: Vec::new(),
    };
    for seed in 0..cfg.seeds as u64 {
        let judge = Judge::new(&setup, cfg, models, seed, cfg.guidance)?;
        let mut record = |method: &str, steps: usize, latents: &Tensor| -> Result<()> {
            let (metrics, images) = judge.judge(latents)?;
            if seed == 0 {
                out.grids.push((
                    method.to_string(),
                    steps,
                    grid_images(&images, classes, cfg.grid_columns)?,
                ));
            }
            out.rows.push(Row {
                method: method.to_string(),
                steps,
                seed,
                metrics,
            });
            Ok(())
        };
        record("teacher", cfg.intervals, &judge.ref_latents)?;
        for &k in &cfg.steps {
            let coarse =
                TeacherOde::new(Solver::Ddim, k, cfg.guidance)?.solve(&*models.teacher, &judge.noise, &setup.cond)?;
            record("teacher DDIM", k, &coarse)?;
        }
        for method in Method::compared() {
            let (student, losses) = setup.train(cfg, models, method, seed, Default::default())?;
            for &k in &cfg.steps {
                record(method.title(), k, &judge.sample(cfg, &student.params, k)?)?;
            }
            out.training.push(student.record(losses));
            out.students.push(student);
        }
    }
    Ok(out)
}
