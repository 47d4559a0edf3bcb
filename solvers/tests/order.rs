//! Empirical order of convergence of every method with fixed steps h = T·2^-k on problems
//! with exact solutions: the least-squares slope of log(error) against log(h) must be within
//! 0.2 of the method's classical order (the criterion). The adaptive pairs run their
//! main (propagated) method with fixed steps.
//!
//! For each method the (problem, interval, k-range) is chosen so that every error lies in the
//! asymptotic regime and above round-off (asserted: > 1e-13, about 100× the round-off of the
//! few thousand steps involved). Tsit5 minimises its leading error coefficients, so its
//! pre-asymptotic slope is near 6 on linear problems; it and Dopri5 are measured on the
//! nonlinear Kepler problem with small steps, where the h⁵ term dominates.

use odeflow_solvers::problems::{Kepler, Linear2, NonAutonomous};
use odeflow_solvers::{Integrator, Method, NoObserver, OdeSystem, SolveOptions};

/// Least-squares slope of `ys` against `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    sxy / sxx
}

/// Max-norm error at `t_end` of a fixed-step solve.
fn fixed_error<S: OdeSystem<f64>>(
    method: Method,
    sys: &mut S,
    y0: &[f64],
    exact: &[f64],
    t_end: f64,
    h: f64,
) -> f64 {
    let mut integ = Integrator::new(method, SolveOptions::fixed(h)).unwrap();
    let mut y = y0.to_vec();
    let stats = integ.integrate(sys, 0.0, t_end, &mut y, &mut NoObserver).unwrap();
    assert_eq!(stats.n_accepted, (t_end / h).round() as usize, "fixed steps land exactly");
    y.iter().zip(exact).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

#[derive(Clone, Copy, Debug)]
enum Problem {
    /// y' = y cos t on [0, 2] (non-autonomous: checks the stage times).
    NonAuto,
    /// The 2×2 linear system against its matrix exponential, on [0, 2].
    Linear,
    /// Kepler with e = 0.5 over four periods.
    Kepler,
}

fn measure(method: Method, problem: Problem, ks: std::ops::RangeInclusive<i32>) -> f64 {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for k in ks {
        let (err, h) = match problem {
            Problem::NonAuto => {
                let h = 2.0 * 2f64.powi(-k);
                let ex = [NonAutonomous::exact(1.0, 2.0)];
                (fixed_error(method, &mut NonAutonomous, &[1.0], &ex, 2.0, h), h)
            }
            Problem::Linear => {
                let h = 2.0 * 2f64.powi(-k);
                let ex = Linear2::exact(&[1.0, 0.5], 2.0);
                (fixed_error(method, &mut Linear2, &[1.0, 0.5], &ex, 2.0, h), h)
            }
            Problem::Kepler => {
                let kp = Kepler { e: 0.5 };
                let t_end = 4.0 * std::f64::consts::TAU;
                let h = t_end * 2f64.powi(-k);
                let (y0, ex) = (kp.exact(0.0), kp.exact(t_end));
                (fixed_error(method, &mut { kp }, &y0, &ex, t_end, h), h)
            }
        };
        assert!(err > 1e-13, "{method} {problem:?}: error {err} at h = {h} is at round-off level");
        xs.push(h.ln());
        ys.push(err.ln());
    }
    slope(&xs, &ys)
}

fn check(method: Method, problem: Problem, ks: std::ops::RangeInclusive<i32>) {
    let p = measure(method, problem, ks);
    let want = f64::from(method.order());
    println!("{method} on {problem:?}: measured order {p:.3}, theory {want}");
    assert!((p - want).abs() < 0.2, "{method} on {problem:?}: measured {p:.3}, theory {want}");
}

#[test]
fn order_euler() {
    check(Method::Euler, Problem::NonAuto, 6..=11);
    check(Method::Euler, Problem::Linear, 6..=11);
}

#[test]
fn order_midpoint() {
    check(Method::Midpoint, Problem::NonAuto, 5..=10);
    check(Method::Midpoint, Problem::Linear, 5..=10);
}

#[test]
fn order_heun() {
    check(Method::Heun, Problem::NonAuto, 5..=10);
    check(Method::Heun, Problem::Linear, 5..=10);
}

#[test]
fn order_rk4() {
    check(Method::Rk4, Problem::NonAuto, 3..=7);
    check(Method::Rk4, Problem::Linear, 3..=7);
}

#[test]
fn order_bosh3() {
    check(Method::Bosh3, Problem::NonAuto, 4..=9);
    check(Method::Bosh3, Problem::Linear, 4..=9);
}

#[test]
fn order_dopri5() {
    check(Method::Dopri5, Problem::Kepler, 11..=13);
}

#[test]
fn order_tsit5() {
    check(Method::Tsit5, Problem::Kepler, 11..=13);
}

#[test]
fn order_dop853() {
    check(Method::Dop853, Problem::NonAuto, 1..=4);
    check(Method::Dop853, Problem::Linear, 1..=4);
}
