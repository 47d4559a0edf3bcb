//! Dense output, output at requested times, and observers.

use std::ops::ControlFlow;

use odeflow_solvers::problems::{Harmonic, Kepler, Lorenz};
use odeflow_solvers::{
    FnObserver, Integrator, Method, NoObserver, Observer, SolveError, SolveOptions, StepView,
};

fn max_err(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Interpolation error at the middle of one step of size h from the exact state.
fn mid_step_error(method: Method, h: f64) -> f64 {
    // DOP853 on the milder orbit (e = 0.2): with e = 0.5 its errors reach round-off before
    // the h⁸ term dominates.
    let e = if method == Method::Dop853 { 0.2 } else { 0.5 };
    let kp = Kepler { e };
    let mut integ = Integrator::new(method, SolveOptions::fixed(h)).unwrap();
    let mut y = kp.exact(0.0);
    let mut out = [0.0; 8];
    let stats = integ.integrate_at(&mut { kp }, 0.0, &[0.5 * h, h], &mut y, &mut out).unwrap();
    assert_eq!(stats.n_accepted, 1);
    max_err(&out[..4], &kp.exact(0.5 * h))
}

/// The local error of the interpolant at θ = 1/2 after one step from the exact state is
/// O(h^(q+1)) for an interpolant of order q, limited by the step's own local error: cubic
/// Hermite with exact end data is O(h⁴), so Euler gives 2, midpoint/Heun 3, RK4/Bosh3 4;
/// the 4th-order interpolants of Dopri5/Tsit5 give 5; DOP853's 7th-order one gives 8.
/// Checked coarsely (within 0.35) over h = 2^-k where the errors are above round-off and
/// asymptotic (Tsit5's interpolant has small leading coefficients: its local slope is 5.4–6
/// down to h = 2^-6 and 5.0–5.1 below, so it is measured at h = 2^-6 … 2^-8).
#[test]
fn dense_output_local_order() {
    let cases = [
        (Method::Euler, 2.0, 4..=9),
        (Method::Midpoint, 3.0, 4..=9),
        (Method::Heun, 3.0, 4..=9),
        (Method::Rk4, 4.0, 3..=8),
        (Method::Bosh3, 4.0, 3..=8),
        (Method::Dopri5, 5.0, 3..=7),
        (Method::Tsit5, 5.0, 6..=8),
        (Method::Dop853, 8.0, 1..=4),
    ];
    for (m, want, ks) in cases {
        let (mut xs, mut ys) = (vec![], vec![]);
        for k in ks {
            let h = 2f64.powi(-k);
            let e = mid_step_error(m, h);
            assert!(e > 1e-14, "{m}: error {e:e} at h = {h} at round-off");
            xs.push(h.ln());
            ys.push(e.ln());
        }
        let n = xs.len() as f64;
        let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
        let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
        let p = sxy / sxx;
        println!("{m}: dense local order {p:.2} (expected {want})");
        assert!((p - want).abs() < 0.35, "{m}: dense local order {p:.2}, expected {want}");
    }
}

#[test]
fn integrate_at_matches_exact_solution() {
    let osc = Harmonic { omega: 2.0 };
    let y0 = [1.0, 0.5];
    let times: Vec<f64> = (0..=200).map(|i| i as f64 * 0.05).collect();
    for m in [Method::Bosh3, Method::Dopri5, Method::Tsit5, Method::Dop853] {
        let mut integ = Integrator::new(m, SolveOptions::tol(1e-9, 1e-9)).unwrap();
        let mut y = y0;
        let mut out = vec![0.0; 2 * times.len()];
        integ.integrate_at(&mut { osc }, 0.0, &times, &mut y, &mut out).unwrap();
        let mut worst = 0.0f64;
        for (i, &t) in times.iter().enumerate() {
            worst = worst.max(max_err(&out[2 * i..2 * i + 2], &osc.exact(&y0, t)));
        }
        println!("{m}: worst dense error {worst:.2e}");
        // The interpolants are accurate to about the tolerance; over 10 time units of a
        // neutral oscillator the global error grows to ~10·tol per unit: 1e3·tol.
        assert!(worst < 1e-6, "{m}: worst dense error {worst:e}");
        // The first output (t0) is y0 exactly and the last is the final state.
        assert_eq!(&out[..2], &y0);
        assert_eq!(&out[out.len() - 2..], &y);
    }
}

/// Dense output does not change the step sequence: the final state of `integrate_at` is
/// bit-identical to `integrate` over the same interval.
#[test]
fn integrate_at_final_state_equals_integrate() {
    for m in [Method::Dopri5, Method::Tsit5, Method::Dop853, Method::Rk4] {
        let opts = SolveOptions {
            h_fixed: (m == Method::Rk4).then_some(0.01),
            ..SolveOptions::tol(1e-7, 1e-7)
        };
        let mut integ = Integrator::new(m, opts).unwrap();
        let mut a = Lorenz::Y0;
        integ.integrate(&mut Lorenz, 0.0, 2.0, &mut a, &mut NoObserver).unwrap();
        let times = [0.3, 0.7, 1.1, 2.0];
        let mut b = Lorenz::Y0;
        let mut out = vec![0.0; 12];
        integ.integrate_at(&mut Lorenz, 0.0, &times, &mut b, &mut out).unwrap();
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}");
    }
}

#[test]
fn integrate_at_backward() {
    let osc = Harmonic { omega: 1.0 };
    let y0 = [0.3, -0.2];
    let times = [5.0, 4.0, 2.5, 1.0, 0.0];
    let mut integ = Integrator::new(Method::Dopri5, SolveOptions::tol(1e-10, 1e-10)).unwrap();
    let mut y = y0;
    let mut out = vec![0.0; 10];
    // Start at t0 = 5 with the exact state there, integrate back to 0.
    let start = osc.exact(&y0, 5.0);
    y.copy_from_slice(&start);
    integ.integrate_at(&mut { osc }, 5.0, &times, &mut y, &mut out).unwrap();
    for (i, &t) in times.iter().enumerate() {
        let e = max_err(&out[2 * i..2 * i + 2], &osc.exact(&y0, t));
        assert!(e < 1e-8, "t = {t}: error {e:e}");
    }
}

#[test]
fn observer_sees_every_accepted_step() {
    let kp = Kepler { e: 0.3 };
    for m in [Method::Heun, Method::Bosh3, Method::Dopri5, Method::Tsit5, Method::Dop853] {
        let opts = SolveOptions {
            h_fixed: (m == Method::Heun).then_some(0.002),
            ..SolveOptions::tol(1e-8, 1e-8)
        };
        let mut integ = Integrator::new(m, opts).unwrap();
        let mut y = kp.exact(0.0);
        let mut prev_end = 0.0;
        let mut count = 0;
        let mut worst_mid = 0.0f64;
        let mut mid = [0.0; 4];
        let mut obs = FnObserver(|s: &StepView<'_, f64>| {
            assert!((s.t_start() - prev_end).abs() <= 0.0, "steps are contiguous");
            assert!((s.t_end() - s.t_start() - s.h()).abs() < 1e-15);
            // The interpolant reproduces the end points.
            s.interpolate(s.t_start(), &mut mid).unwrap();
            assert!(max_err(&mid, s.y_start()) < 1e-12);
            s.interpolate(s.t_end(), &mut mid).unwrap();
            assert!(max_err(&mid, s.y_end()) < 1e-12);
            // And is accurate in the middle (exact solution available).
            let tm = s.t_start() + 0.5 * s.h();
            s.interpolate(tm, &mut mid).unwrap();
            worst_mid = worst_mid.max(max_err(&mid, &kp.exact(tm)));
            prev_end = s.t_end();
            count += 1;
            ControlFlow::Continue(())
        });
        let stats = integ.integrate(&mut { kp }, 0.0, 6.0, &mut y, &mut obs).unwrap();
        assert_eq!(count, stats.n_accepted, "{m}");
        assert!((prev_end - 6.0).abs() <= 0.0, "{m}: last step ends exactly at t1");
        // Heun with h = 0.002 has global error ~1.3e-4 here; the adaptive ones ~1e-6.
        assert!(worst_mid < 1e-3, "{m}: mid-step interpolation error {worst_mid:e}");
    }
}

#[test]
fn observer_can_stop_early() {
    let mut integ = Integrator::new(Method::Dopri5, SolveOptions::tol(1e-8, 1e-8)).unwrap();
    let mut y = [1.0, 0.0];
    let mut seen = Vec::new();
    let mut obs = FnObserver(|s: &StepView<'_, f64>| {
        seen.push((s.t_end(), s.y_end().to_vec()));
        if s.t_end() > 1.0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    let stats = integ.integrate(&mut Harmonic { omega: 1.0 }, 0.0, 10.0, &mut y, &mut obs).unwrap();
    let (t_stop, y_stop) = seen.last().unwrap().clone();
    assert!(t_stop > 1.0 && t_stop < 10.0);
    assert_eq!(stats.n_accepted, seen.len());
    assert_eq!(y.to_vec(), y_stop);
}

/// DOP853 computes its three dense stages only when dense output is wanted.
#[test]
fn dop853_dense_stages_cost_three_evaluations_per_step() {
    struct Dense;
    impl Observer<f64> for Dense {
        fn on_step(&mut self, _: &StepView<'_, f64>) -> ControlFlow<()> {
            ControlFlow::Continue(())
        }
    }
    let mut integ = Integrator::new(Method::Dop853, SolveOptions::tol(1e-8, 1e-8)).unwrap();
    let mut y = Lorenz::Y0;
    let plain = integ.integrate(&mut Lorenz, 0.0, 1.0, &mut y, &mut NoObserver).unwrap();
    let mut y = Lorenz::Y0;
    let dense = integ.integrate(&mut Lorenz, 0.0, 1.0, &mut y, &mut Dense).unwrap();
    assert_eq!(dense.n_accepted, plain.n_accepted);
    assert_eq!(dense.n_rhs, plain.n_rhs + 3 * plain.n_accepted);
}

#[test]
fn interpolate_without_dense_output_is_an_error() {
    struct NoDense(Option<SolveError>);
    impl Observer<f64> for NoDense {
        fn wants_dense(&self) -> bool {
            false
        }
        fn on_step(&mut self, s: &StepView<'_, f64>) -> ControlFlow<()> {
            let mut out = [0.0; 2];
            self.0 = s.interpolate(s.t_start(), &mut out).err();
            let mut short = [0.0; 1];
            assert!(matches!(
                s.interpolate(s.t_start(), &mut short),
                Err(SolveError::DimensionMismatch { expected: 2, found: 1 })
            ));
            ControlFlow::Break(())
        }
    }
    let mut integ = Integrator::new(Method::Tsit5, SolveOptions::default()).unwrap();
    let mut obs = NoDense(None);
    let mut y = [1.0, 0.0];
    integ.integrate(&mut Harmonic { omega: 1.0 }, 0.0, 1.0, &mut y, &mut obs).unwrap();
    assert_eq!(obs.0, Some(SolveError::DenseOutputUnavailable));
}

#[test]
fn integrate_at_with_observer_sees_the_same_steps() {
    let times = [0.25, 0.5, 2.0];
    let mut integ = Integrator::new(Method::Dopri5, SolveOptions::tol(1e-8, 1e-8)).unwrap();
    let mut y = Lorenz::Y0;
    let mut out = [0.0; 9];
    let mut ends = Vec::new();
    let mut obs = FnObserver(|s: &StepView<'_, f64>| {
        ends.push(s.t_end());
        ControlFlow::Continue(())
    });
    let st = integ.integrate_at_with(&mut Lorenz, 0.0, &times, &mut y, &mut out, &mut obs).unwrap();
    assert_eq!(ends.len(), st.n_accepted);
    assert!((ends[ends.len() - 1] - 2.0).abs() <= 0.0);
    assert!(out[6..].iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()));
}
