//! Solvers against an independent float64 implementation of docs/MATHEMATICS.md's formulas,
//! against the Gaussian's exact ODE solution, and their convergence orders.

use candle_core::{Device, Tensor};
use dcm::diffusion::analytic::Gaussian;
use dcm::diffusion::condition::Condition;
use dcm::diffusion::discretization::Discretization;
use dcm::diffusion::schedule::{Schedule, ScheduleKind, T};
use dcm::diffusion::solver::{solve, Solver};
use dcm::runtime::noise::{seeded, standard_normal};

/// Independent reference: docs/MATHEMATICS.md's formulas on plain f64, for a Gaussian N(m, s²) teacher.
fn reference_solve(solver: Solver, sch: &Schedule, m: f64, s: f64, x: f64, n: usize) -> f64 {
    let eps = |x: f64, t: usize| {
        let (a, sg) = ((sch_ab(sch, t)).sqrt(), (1.0 - sch_ab(sch, t)).sqrt());
        sg * (x - a * m) / (a * a * s * s + sg * sg)
    };
    let alpha = |t: usize| sch_ab(sch, t).sqrt();
    let sigma = |t: usize| (1.0 - sch_ab(sch, t)).sqrt();
    let beta_c = |t: usize| T as f64 * sch.beta(t);
    let slope = |x: f64, t: usize| -0.5 * beta_c(t) * (x - eps(x, t) / sigma(t));
    let k = T / n;
    let dt = -(k as f64) / T as f64;
    let mut x = x;
    for i in (1..=n).rev() {
        let (ts, tn) = (i * k, i * k - k);
        x = match solver {
            Solver::Ddim => {
                let e = eps(x, ts);
                let x0 = (x - sigma(ts) * e) / alpha(ts);
                alpha(tn) * x0 + sigma(tn) * e
            }
            Solver::Euler => x + dt * slope(x, ts),
            Solver::Heun => {
                let d1 = slope(x, ts);
                let xe = x + dt * d1;
                let d2 = slope(xe, tn.max(1));
                x + dt * 0.5 * (d1 + d2)
            }
        };
    }
    x
}

fn sch_ab(s: &Schedule, t: usize) -> f64 {
    if t == 0 {
        1.0
    } else {
        s.alpha_bar(t)
    }
}

fn gaussian(kind: ScheduleKind) -> Gaussian {
    Gaussian {
        mean: 0.7,
        std: 0.5,
        dim: None,
        schedule: Schedule::new(kind),
    }
}

fn noise(n: usize) -> Tensor {
    standard_normal(&mut seeded(3), (n, 4), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn mse(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64
}

#[test]
fn solvers_match_independent_f64_formulas() {
    for kind in [ScheduleKind::ScaledLinear, ScheduleKind::Linear, ScheduleKind::Cosine] {
        let g = gaussian(kind);
        let x = noise(16);
        for solver in [Solver::Ddim, Solver::Euler, Solver::Heun] {
            for n in [1, 10, 50, 1000] {
                let got = values(
                    &solve(
                        solver,
                        &g,
                        &x,
                        Discretization::new(n).unwrap(),
                        T,
                        &Condition::unconditional(16),
                    )
                    .unwrap(),
                );
                let want: Vec<f64> = values(&x)
                    .iter()
                    .map(|&x| reference_solve(solver, &g.schedule, g.mean, g.std, x, n))
                    .collect();
                let err = max_abs_diff(&got, &want);
                // DDIM's x̂₀ divides an f32 cancellation by α_T (≈ 0.07 scaled-linear, ≈ 1e-4 cosine).
                let tol = f64::max(1e-4, 10.0 * f32::EPSILON as f64 / g.schedule.alpha(T));
                assert!(err < tol, "{kind:?} {solver:?} N={n}: max |diff| {err}");
            }
        }
    }
}

#[test]
fn fine_solves_approach_the_exact_solution() {
    let g = gaussian(ScheduleKind::ScaledLinear);
    let x = noise(64);
    let exact = values(&g.exact_solution(&x, &[T; 64]).unwrap());
    for solver in [Solver::Ddim, Solver::Euler, Solver::Heun] {
        let got = values(
            &solve(
                solver,
                &g,
                &x,
                Discretization::new(1000).unwrap(),
                T,
                &Condition::unconditional(64),
            )
            .unwrap(),
        );
        let err = mse(&got, &exact);
        println!("{solver:?} N=1000 MSE to exact: {err:.3e}");
        assert!(err < 1e-4, "{solver:?}: {err}");
    }
}

fn self_convergence_ratios(solver: Solver) -> Vec<f64> {
    let g = gaussian(ScheduleKind::ScaledLinear);
    let x = noise(64);
    let fine = values(
        &solve(
            solver,
            &g,
            &x,
            Discretization::new(1000).unwrap(),
            T,
            &Condition::unconditional(64),
        )
        .unwrap(),
    );
    let errs: Vec<f64> = [10, 20, 40]
        .iter()
        .map(|&n| {
            mse(
                &values(
                    &solve(
                        solver,
                        &g,
                        &x,
                        Discretization::new(n).unwrap(),
                        T,
                        &Condition::unconditional(64),
                    )
                    .unwrap(),
                ),
                &fine,
            )
            .sqrt()
        })
        .collect();
    println!("{solver:?} RMS error to N=1000 at N=10,20,40: {errs:?}");
    errs.windows(2).map(|w| w[0] / w[1]).collect()
}

#[test]
fn euler_is_first_order() {
    for r in self_convergence_ratios(Solver::Euler) {
        assert!((1.6..2.6).contains(&r), "Euler error ratio per doubling {r}");
    }
}

#[test]
fn heun_is_second_order() {
    for r in self_convergence_ratios(Solver::Heun) {
        assert!(r >= 3.0, "Heun error ratio per doubling {r}");
    }
}

/// The time axis comes with the schedule and the grid, not a global: a teacher trained on a
/// 400-step axis (its own linear β) solves on `Discretization::on_axis(400, N)` with the
/// unchanged solvers, reaches its exact solution at N = 400, and the top timestep beyond its
/// axis is refused.
#[test]
fn a_teacher_on_another_time_axis_needs_no_solver_change() {
    let steps = 400;
    let betas: Vec<f64> = (0..steps)
        .map(|i| 1e-4 + (0.02 - 1e-4) * i as f64 / (steps - 1) as f64)
        .collect();
    let g = Gaussian {
        schedule: Schedule::on_axis(betas).unwrap(),
        ..gaussian(ScheduleKind::Linear)
    };
    assert_eq!(g.schedule.steps(), steps);
    let x = noise(64);
    let exact = values(&g.exact_solution(&x, &[steps; 64]).unwrap());
    let cond = Condition::unconditional(64);
    for solver in [Solver::Ddim, Solver::Euler, Solver::Heun] {
        let grid = Discretization::on_axis(steps, steps).unwrap();
        let got = values(&solve(solver, &g, &x, grid, grid.top(), &cond).unwrap());
        let err = mse(&got, &exact);
        println!("{solver:?} on a {steps}-step axis, N = {steps}: MSE to exact {err:.3e}");
        assert!(err < 1e-3, "{solver:?}: {err}");
    }
    let beyond = Discretization::new(50).unwrap();
    assert!(solve(Solver::Ddim, &g, &x, beyond, beyond.top(), &cond).is_err());
    assert!(Discretization::on_axis(steps, 300).is_err());
}
