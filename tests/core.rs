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

/// The Gaussian teacher N(μ, s²) in closed form, in f64: ε̂(x, t) for one coordinate.
fn gaussian_eps(schedule: &Schedule, mu: f64, s: f64, x: f64, t: usize) -> f64 {
    let (a, sig) = (schedule.alpha(t), schedule.sigma(t));
    sig * (x - a * mu) / (a * a * s * s + sig * sig)
}

/// f(x, t) = c_skip x + c_out x̂₀ in f64, with the scalings written out from docs/MATHEMATICS.md.
fn f_expected(schedule: &Schedule, mu: f64, s: f64, x: f64, t: usize) -> f64 {
    let st = 10.0 * t as f64;
    let (skip, out) = (0.25 / (st * st + 0.25), st / (st * st + 0.25).sqrt());
    let x0 = (x - schedule.sigma(t) * gaussian_eps(schedule, mu, s, x, t)) / schedule.alpha(t);
    skip * x + out * x0
}

fn gaussian(mu: f64, s: f64) -> dcm::diffusion::analytic::Gaussian {
    dcm::diffusion::analytic::Gaussian {
        mean: mu,
        std: s,
        dim: None,
        schedule: Schedule::default(),
    }
}

/// c_skip, c_out and f at t > 0 against the formulas, evaluated independently in f64.
#[test]
fn consistency_function_matches_its_formula_away_from_the_boundary() {
    let (mu, s) = (0.7, 0.4);
    let g = gaussian(mu, s);
    let sched = Schedule::default();
    let xs = [-2.0f32, -0.3, 0.0, 1.1, 2.5];
    let x = Tensor::new(&xs, &Device::Cpu).unwrap().reshape((5, 1)).unwrap();
    for t in [1usize, 3, 20, 250, 999, 1000] {
        let st = 10.0 * t as f64;
        assert!((c_skip(t) - 0.25 / (st * st + 0.25)).abs() < 1e-15);
        assert!((c_out(t) - st / (st * st + 0.25).sqrt()).abs() < 1e-15);
        let f = consistency(&g, &x, &[t; 5], &Condition::unconditional(5)).unwrap();
        for (got, &xi) in f.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().zip(&xs) {
            let want = f_expected(&sched, mu, s, xi as f64, t);
            assert!(
                (*got as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
                "t={t}: {got} vs {want}"
            );
        }
    }
}

/// The CM target `sg[f_θ⁻(DDIM(x_t → t − k), t − k)]` against the same computed by hand in
/// f64 from the Gaussian's closed-form ε (teacher and target network both the Gaussian).
#[test]
fn cm_target_matches_one_ddim_step_then_the_target_network() {
    let (mu, s) = (-0.5, 0.8);
    let g = gaussian(mu, s);
    let sched = Schedule::default();
    let xs = [-1.5f32, 0.2, 0.9, 3.0];
    let x = Tensor::new(&xs, &Device::Cpu).unwrap().reshape((4, 1)).unwrap();
    let t = [1000usize, 500, 100, 20];
    let k = 20;
    let got = dcm::consistency::cm::cm_target(Solver::Ddim, &g, &g, &x, &t, k, &Condition::unconditional(4)).unwrap();
    for (i, (&xi, &ti)) in xs.iter().zip(&t).enumerate() {
        let e = gaussian_eps(&sched, mu, s, xi as f64, ti);
        let x0 = (xi as f64 - sched.sigma(ti) * e) / sched.alpha(ti);
        let stepped = sched.alpha(ti - k) * x0 + sched.sigma(ti - k) * e;
        let want = f_expected(&sched, mu, s, stepped, ti - k);
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap()[i] as f64;
        assert!(
            (got - want).abs() < 1e-4 * want.abs().max(1.0),
            "row {i}: {got} vs {want}"
        );
    }
}

/// The K-step sampler re-noises x̂₀ to the next picked timestep with fresh noise from the
/// re-noise stream: two steps equal f at t₁, α x̂₀ + σ z at t₂, f again, by hand.
#[test]
fn multistep_sampler_renoises_with_fresh_noise() {
    use dcm::consistency::sampler::{multistep_sample, sampler_timesteps};
    use dcm::runtime::noise::{eval_noise_rng, renoise_rng};
    let g = gaussian(0.3, 0.6);
    let sched = Schedule::default();
    let grid = Discretization::new(10).unwrap();
    let noise = standard_normal(&mut eval_noise_rng(4), (6, 1), &Device::Cpu).unwrap();
    let cond = Condition::unconditional(6);
    let got = multistep_sample(&g, &noise, grid, 2, &cond, &mut renoise_rng(4)).unwrap();
    let ts = sampler_timesteps(grid, 2).unwrap();
    assert_eq!(ts, vec![1000, 500]);
    let z = standard_normal(&mut renoise_rng(4), (6, 1), &Device::Cpu).unwrap();
    let (xs, zs) = (
        noise.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        z.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    for (i, (&x, &zi)) in xs.iter().zip(&zs).enumerate() {
        assert_ne!(x, zi, "the re-noise must not repeat x_T");
        let first = f_expected(&sched, 0.3, 0.6, x as f64, 1000);
        let renoised = sched.alpha(500) * first + sched.sigma(500) * zi as f64;
        let want = f_expected(&sched, 0.3, 0.6, renoised, 500);
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap()[i] as f64;
        assert!(
            (got - want).abs() < 1e-4 * want.abs().max(1.0),
            "row {i}: {got} vs {want}"
        );
    }
}

/// ODE error is the plain mean squared difference, and zero against itself.
#[test]
fn ode_error_is_the_mean_squared_difference() {
    use dcm::eval::ode_error::ode_error;
    let a = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[[1.5f32, 2.0], [1.0, 4.0]], &Device::Cpu).unwrap();
    assert_eq!(ode_error(&a, &b).unwrap(), (0.25 + 4.0) / 4.0);
    assert_eq!(ode_error(&a, &a).unwrap(), 0.0);
    assert!(ode_error(&a, &a.reshape(4).unwrap()).is_err());
}
