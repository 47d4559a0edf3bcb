//! `DenseSolution`: the recorded interpolant against exact solutions, `integrate_at`, and
//! the solver's own states.

use std::ops::ControlFlow;

use odeflow_solvers::problems::{arenstorf, Harmonic};
use odeflow_solvers::{
    Crossing, DenseSolution, EventSpec, Events, FnObserver, FnSystem, Integrator, Method, Observer,
    SolveError, SolveOptions, StepView,
};

fn bits(x: &[f64]) -> Vec<u64> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn options(method: Method) -> SolveOptions<f64> {
    if method.is_adaptive() {
        SolveOptions::tol(1e-9, 1e-9)
    } else {
        SolveOptions::fixed(0.01)
    }
}

/// At any time inside a step the record gives what `integrate_at` gives for that time,
/// bit for bit (the same rows, the same θ), for every method (Hairer's form and the
/// polynomial form), forward and backward. (The times end at t1: `integrate_at` stops at its
/// last time, and a shorter last step would be another interpolant.)
#[test]
fn evaluations_match_integrate_at_bit_for_bit() {
    let (mut sys, y0, period) = arenstorf();
    for method in Method::ALL {
        for (t0, t1) in [(0.0, period), (period, 0.0)] {
            let times: Vec<f64> = (1..=200).map(|k| t0 + (t1 - t0) * k as f64 / 200.0).collect();
            let mut integ = Integrator::new(method, options(method)).unwrap();
            let mut start = y0;
            if t0 != 0.0 {
                integ.integrate(&mut sys, 0.0, t0, &mut start, &mut DenseSolution::new()).unwrap();
            }
            let mut expected = vec![0.0; 4 * times.len()];
            let mut y = start;
            integ.integrate_at(&mut sys, t0, &times, &mut y, &mut expected).unwrap();

            let mut sol = DenseSolution::new();
            let mut y = start;
            integ.integrate(&mut sys, t0, t1, &mut y, &mut sol).unwrap();
            let mut got = vec![0.0; 4 * times.len()];
            sol.eval_many(&times, &mut got).unwrap();
            let first_diff = bits(&got).iter().zip(bits(&expected)).position(|(a, b)| *a != b);
            assert_eq!(first_diff, None, "{method} from {t0}");
            assert_eq!(sol.span(), Some((t0, t1)));
        }
    }
}

/// At each step's start the value is the solver's state there, exactly, and at the end the
/// final state; the record holds one entry per accepted step.
#[test]
fn step_boundaries_give_the_solvers_states() {
    let mut states: Vec<(f64, [f64; 2])> = Vec::new();
    let mut sol = DenseSolution::new();
    let mut both = Both(&mut sol, |s: &StepView<'_, f64>| {
        states.push((s.t_start(), [s.y_start()[0], s.y_start()[1]]));
    });
    let mut integ = Integrator::new(Method::Dop853, SolveOptions::tol(1e-8, 1e-8)).unwrap();
    let mut y = [1.0, 0.0];
    let stats = integ.integrate(&mut Harmonic { omega: 3.0 }, 0.0, 4.0, &mut y, &mut both).unwrap();
    assert_eq!(sol.n_steps(), stats.n_accepted);
    assert_eq!(sol.dim(), 2);
    assert_eq!(bits(sol.step_starts()), bits(&states.iter().map(|s| s.0).collect::<Vec<_>>()));
    let mut at = [0.0; 2];
    for (t, state) in &states {
        sol.eval(*t, &mut at).unwrap();
        assert_eq!(bits(&at), bits(state), "t = {t}");
    }
    sol.eval(4.0, &mut at).unwrap();
    assert_eq!(bits(&at), bits(&y));
}

/// Records alongside another observer.
struct Both<'a, F>(&'a mut DenseSolution<f64>, F);

impl<F: FnMut(&StepView<'_, f64>)> Observer<f64> for Both<'_, F> {
    fn on_step(&mut self, step: &StepView<'_, f64>) -> ControlFlow<()> {
        (self.1)(step);
        self.0.on_step(step)
    }
}

/// Against the exact solution: Dormand–Prince's interpolant is order 4 and its steps order 5,
/// so at rtol 1e-10 the values between steps are as accurate as those at the steps: the
/// worst error over 2001 times (5.83e-10 observed) is the worst at the steps' ends (5.81e-10)
/// to 1%; the test allows 2×.
#[test]
fn values_between_steps_are_as_accurate_as_the_steps() {
    let mut sol = DenseSolution::new();
    let mut worst_at_steps = 0.0f64;
    let mut at_steps = FnObserver(|s: &StepView<'_, f64>| {
        let t = s.t_end();
        worst_at_steps = worst_at_steps.max((s.y_end()[0] - t.cos()).abs());
        ControlFlow::Continue(())
    });
    let mut integ = Integrator::new(Method::Dopri5, SolveOptions::tol(1e-10, 1e-10)).unwrap();
    let osc = &mut Harmonic { omega: 1.0 };
    let mut y = [1.0, 0.0];
    integ.integrate(osc, 0.0, 20.0, &mut y, &mut at_steps).unwrap();
    let mut y = [1.0, 0.0];
    integ.integrate(osc, 0.0, 20.0, &mut y, &mut sol).unwrap();
    let mut worst = 0.0f64;
    let mut at = [0.0; 2];
    for k in 0..=2000 {
        let t = 20.0 * k as f64 / 2000.0;
        sol.eval(t, &mut at).unwrap();
        worst = worst.max((at[0] - t.cos()).abs()).max((at[1] + t.sin()).abs());
    }
    assert!(worst < 2.0 * worst_at_steps, "{worst:e} vs {worst_at_steps:e}");
    assert!(worst < 1e-8, "{worst:e}");
}

/// A ball bouncing with restitution 0.8: three solves, each restarted at a landing with the
/// velocity reversed, join into one record. Between landings it is the exact parabola (to
/// rounding: the interpolant reproduces quadratics); at a landing it reads the state after
/// the bounce (continuous from the right).
#[test]
fn solves_restarted_at_events_join_into_one_piecewise_solution() {
    let g = 9.81;
    let mut ball = FnSystem::new(2, |_t: f64, y: &[f64], dy: &mut [f64]| {
        dy[0] = y[1];
        dy[1] = -g;
    });
    let mut ground =
        Events::new(vec![EventSpec::terminal(Crossing::Falling)], |_t, y: &[f64], g| g[0] = y[0]);
    let mut sol = DenseSolution::new();
    let mut integ = Integrator::new(Method::Tsit5, SolveOptions::tol(1e-10, 1e-10)).unwrap();
    let (mut t, mut y) = (0.0, [5.0, 0.0]);
    let mut landings = Vec::new();
    for _ in 0..3 {
        let out = integ.integrate_events(&mut ball, t, 20.0, &mut y, &mut ground, &mut sol);
        t = out.unwrap().t;
        y[1] *= -0.8;
        landings.push((t, y[1]));
    }
    assert_eq!(sol.span().map(|s| s.0), Some(0.0));
    let mut at = [0.0; 2];
    // Exact: h(t) = 5 − g t²/2 before the first landing, then launches at each landing.
    let exact = |t: f64| -> [f64; 2] {
        let (mut t0, mut h0, mut v0) = (0.0, 5.0, 0.0);
        for &(tl, vl) in &landings[..2] {
            if t >= tl {
                (t0, h0, v0) = (tl, 0.0, vl);
            }
        }
        let s = t - t0;
        [h0 + v0 * s - 0.5 * g * s * s, v0 - g * s]
    };
    let t_last = landings[2].0;
    for k in 0..=500 {
        let t = t_last * k as f64 / 500.0;
        sol.eval(t, &mut at).unwrap();
        let e = exact(t);
        assert!((at[0] - e[0]).abs() < 1e-11 && (at[1] - e[1]).abs() < 1e-11, "t = {t}");
    }
    // Right-continuous at the first two landings: the launch velocity.
    for &(tl, vl) in &landings[..2] {
        sol.eval(tl, &mut at).unwrap();
        assert_eq!(at[1].to_bits(), vl.to_bits());
    }
}

/// A solve that does not continue the record starts a new one; outside the span, a NaN time
/// or a wrong buffer is an error.
#[test]
fn a_new_solve_starts_a_new_record_and_bad_queries_are_errors() {
    let mut sol = DenseSolution::new();
    let mut at = [0.0; 2];
    assert!(matches!(sol.eval(0.0, &mut at), Err(SolveError::InvalidTime { .. })));
    let mut integ = Integrator::new(Method::Dopri5, SolveOptions::tol(1e-8, 1e-8)).unwrap();
    let osc = &mut Harmonic { omega: 1.0 };
    let mut y = [1.0, 0.0];
    integ.integrate(osc, 0.0, 3.0, &mut y, &mut sol).unwrap();
    let mut y = [1.0, 0.0];
    integ.integrate(osc, 10.0, 8.0, &mut y, &mut sol).unwrap();
    assert_eq!(sol.span(), Some((10.0, 8.0)));
    sol.eval(9.0, &mut at).unwrap();
    assert!(((at[0] - (9.0f64 - 10.0).cos()).abs()) < 1e-6);
    for t in [1.0, 7.99, 10.01, f64::NAN, f64::INFINITY] {
        assert!(matches!(sol.eval(t, &mut at), Err(SolveError::InvalidTime { .. })), "{t}");
    }
    let mut short = [0.0; 1];
    let err = sol.eval(9.0, &mut short);
    assert!(matches!(err, Err(SolveError::DimensionMismatch { expected: 2, found: 1 })));
    let err = sol.eval_many(&[9.0, 8.5], &mut [0.0; 3]);
    assert!(matches!(err, Err(SolveError::DimensionMismatch { expected: 4, found: 3 })));
    // Back from where the record ends: a new record, not a fold in the old one.
    let mut y = [1.0, 0.0];
    integ.integrate(osc, 8.0, 9.5, &mut y, &mut sol).unwrap();
    assert_eq!(sol.span(), Some((8.0, 9.5)));
    // Continuing from its end in the same direction extends it.
    integ.integrate(osc, 9.5, 12.0, &mut y, &mut sol).unwrap();
    assert_eq!(sol.span(), Some((8.0, 12.0)));
    sol.eval(9.0, &mut at).unwrap();
    assert!(((at[0] - (9.0f64 - 8.0).cos()).abs()) < 1e-6);
    sol.clear();
    assert_eq!((sol.span(), sol.n_steps()), (None, 0));
}

/// An event located so close to a solve's start that its time rounds to it cuts the step to
/// length 0; the record keeps its earlier steps (the direction is the interpolant's step's).
#[test]
fn a_zero_length_step_cut_at_an_event_keeps_the_record() {
    let mut ball = FnSystem::new(2, |_t: f64, y: &[f64], dy: &mut [f64]| {
        dy[0] = y[1];
        dy[1] = -9.81;
    });
    let mut sol = DenseSolution::new();
    let mut integ = Integrator::new(Method::Dopri5, SolveOptions::tol(1e-8, 1e-8)).unwrap();
    let mut y = [5.0, 0.0];
    integ.integrate(&mut ball, 0.0, 0.5, &mut y, &mut sol).unwrap();
    let steps = sol.n_steps();
    let mut ground =
        Events::new(vec![EventSpec::terminal(Crossing::Falling)], |_t, y: &[f64], g| g[0] = y[0]);
    let mut y = [1e-300, -1.0];
    let out = integ.integrate_events(&mut ball, 0.5, 2.0, &mut y, &mut ground, &mut sol).unwrap();
    assert_eq!(out.t.to_bits(), 0.5f64.to_bits(), "the event rounds to the start");
    assert_eq!(sol.span(), Some((0.0, 0.5)));
    assert_eq!(sol.n_steps(), steps + 1);
    let mut at = [0.0; 2];
    sol.eval(0.25, &mut at).unwrap();
    assert!((at[0] - (5.0 - 9.81 * 0.25 * 0.25 / 2.0)).abs() < 1e-12);
    // At 0.5 itself: the state after the restart (the record is right-continuous).
    sol.eval(0.5, &mut at).unwrap();
    assert_eq!(bits(&at), bits(&y));
}

/// Wrapped in an observer that declines dense output, a DenseSolution keeps nothing and says
/// so; it does not end the solve.
#[test]
fn without_dense_output_evaluations_are_an_error_and_the_solve_goes_on() {
    struct Declining<'a>(&'a mut DenseSolution<f64>, usize);
    impl Observer<f64> for Declining<'_> {
        fn wants_dense(&self) -> bool {
            false
        }
        fn on_step(&mut self, step: &StepView<'_, f64>) -> ControlFlow<()> {
            self.1 += 1;
            self.0.on_step(step)
        }
    }
    let mut sol = DenseSolution::new();
    let mut integ = Integrator::new(Method::Dop853, SolveOptions::tol(1e-8, 1e-8)).unwrap();
    let mut y = [1.0, 0.0];
    let mut obs = Declining(&mut sol, 0);
    let stats = integ.integrate(&mut Harmonic { omega: 1.0 }, 0.0, 5.0, &mut y, &mut obs).unwrap();
    assert_eq!(obs.1, stats.n_accepted);
    let mut at = [0.0; 2];
    assert!(matches!(sol.eval(1.0, &mut at), Err(SolveError::DenseOutputUnavailable)));
    // A later solve with dense output records again.
    let mut y = [1.0, 0.0];
    integ.integrate(&mut Harmonic { omega: 1.0 }, 0.0, 5.0, &mut y, &mut sol).unwrap();
    sol.eval(1.0, &mut at).unwrap();
    assert!((at[0] - 1f64.cos()).abs() < 1e-6);
}
