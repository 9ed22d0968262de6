//! Guidance, the consistency boundary condition and Direct's active-set targets.

use candle_core::{Device, Tensor};
use dcm::consistency::direct::{direct_targets, direct_targets_whole_batch};
use dcm::consistency::parameterization::{c_out, c_skip, consistency};
use dcm::diffusion::analytic::GaussianMixture;
use dcm::diffusion::condition::Condition;
use dcm::diffusion::denoiser::{Counted, Denoiser};
use dcm::diffusion::discretization::Discretization;
use dcm::diffusion::guidance::Guided;
use dcm::diffusion::schedule::Schedule;
use dcm::diffusion::solver::Solver;
use dcm::nets::mlp::{Mlp, MlpConfig};
use dcm::runtime::noise::{seeded, standard_normal};
use rand::Rng;

fn mixture() -> GaussianMixture {
    GaussianMixture::new(
        vec![vec![-1.0, 0.0], vec![1.0, 0.5]],
        vec![0.3, 0.2],
        vec![1.0, 2.0],
        Schedule::default(),
    )
    .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.sub(b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn small_mlp(classes: usize) -> Mlp {
    let cfg = MlpConfig {
        sample_shape: vec![2],
        hidden: 32,
        depth: 2,
        time_dim: 16,
        num_classes: classes,
        schedule: Default::default(),
    };
    let params = cfg.init(&mut seeded(9)).unwrap();
    Mlp::new(cfg, &params).unwrap()
}

#[test]
fn guidance_interpolates_conditional_and_unconditional() {
    let teacher = mixture();
    let x = standard_normal(&mut seeded(1), (6, 2), &Device::Cpu).unwrap();
    let t = [1000, 800, 500, 300, 100, 20];
    let c = Condition::Labels(vec![Some(0), Some(1), Some(0), Some(1), Some(0), Some(1)]);
    let ec = teacher.eps(&x, &t, &c).unwrap();
    let eu = teacher.eps(&x, &t, &Condition::unconditional(6)).unwrap();
    assert!(
        max_diff(&ec, &eu) > 1e-2,
        "conditional and unconditional must differ for the test to mean anything"
    );
    assert!(max_diff(&Guided::new(&teacher, 1.0).eps(&x, &t, &c).unwrap(), &ec) < 1e-6);
    assert!(max_diff(&Guided::new(&teacher, 0.0).eps(&x, &t, &c).unwrap(), &eu) < 1e-6);
    let w3 = (&eu + ((&ec - &eu).unwrap() * 3.0).unwrap()).unwrap();
    assert!(max_diff(&Guided::new(&teacher, 3.0).eps(&x, &t, &c).unwrap(), &w3) < 1e-5);
    // The network path batches [x; x] with [c; ∅] in one call: it must agree with two calls.
    let net = small_mlp(2);
    let (nc, nu) = (
        net.eps(&x, &t, &c).unwrap(),
        net.eps(&x, &t, &Condition::unconditional(6)).unwrap(),
    );
    let want = (&nu + ((&nc - &nu).unwrap() * 2.5).unwrap()).unwrap();
    assert!(max_diff(&Guided::new(&net, 2.5).eps(&x, &t, &c).unwrap(), &want) < 1e-5);
}

#[test]
fn consistency_function_meets_the_boundary_condition() {
    assert_eq!((c_skip(0), c_out(0)), (1.0, 0.0));
    for t in 1..1000 {
        assert!(
            c_skip(t) < c_skip(t - 1) && c_out(t) > c_out(t - 1),
            "scalings must be monotone at t={t}"
        );
    }
    let net = small_mlp(0);
    let x = standard_normal(&mut seeded(2), (5, 2), &Device::Cpu).unwrap();
    let f0 = consistency(&net, &x, &[0; 5], &Condition::unconditional(5)).unwrap();
    assert_eq!(
        f0.to_vec2::<f32>().unwrap(),
        x.to_vec2::<f32>().unwrap(),
        "f(x, 0) must be exactly x"
    );
    // Near the boundary f departs from x by c_out(1)·|x̂₀ − x| + …, which is small.
    let f1 = consistency(&net, &x, &[1; 5], &Condition::unconditional(5)).unwrap();
    assert!(max_diff(&f1, &x) < 0.1);
}

fn active_set_case(teacher: &dyn Denoiser, solver: Solver, labels: &Condition) {
    let b = labels.len();
    let grid = Discretization::new(20).unwrap();
    let mut rng = seeded(4);
    let t: Vec<usize> = (0..b).map(|_| grid.start(rng.random_range(0..20))).collect();
    let x = standard_normal(&mut rng, (b, 2), &Device::Cpu).unwrap();
    let (active, whole) = (Counted::new(teacher), Counted::new(teacher));
    let a = direct_targets(solver, &active, &x, &t, grid, labels).unwrap();
    let w = direct_targets_whole_batch(solver, &whole, &x, &t, grid, labels).unwrap();
    let diff = max_diff(&a, &w);
    let ratio = whole.evaluations() as f64 / active.evaluations() as f64;
    println!(
        "{solver:?}: active set {} vs whole batch {} teacher evaluations ({ratio:.2}x fewer), max |diff| {diff:.2e}",
        active.evaluations(),
        whole.evaluations()
    );
    assert!(diff < 1e-5, "targets differ by {diff}");
    assert!(ratio > 1.8, "active set saves only {ratio:.2}x");
}

#[test]
fn active_set_direct_targets_equal_whole_batch_targets() {
    let labels = Condition::Labels((0..256).map(|i| if i % 3 == 0 { None } else { Some(i % 2) }).collect());
    for solver in [Solver::Ddim, Solver::Euler, Solver::Heun] {
        active_set_case(&mixture(), solver, &labels);
        active_set_case(&Guided::new(&small_mlp(2), 2.0), solver, &labels);
    }
}
