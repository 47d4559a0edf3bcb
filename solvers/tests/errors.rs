//! Every error case returns a typed error (never a panic or a hang), with the numbers a caller
//! acts on.

use odeflow_solvers::problems::{arenstorf, ExpDecay, Harmonic};
use odeflow_solvers::{
    solve, Atol, Decision, FnSystem, Integrator, Method, NoObserver, OdeSystem, PiController,
    SolveError, SolveOptions, StepController,
};

fn decay() -> ExpDecay {
    ExpDecay { dim: 2, lambda: 1.0 }
}

#[test]
fn invalid_tolerances() {
    for rtol in [0.0, -1e-6, f64::NAN, f64::INFINITY] {
        let o = SolveOptions { rtol, ..Default::default() };
        assert!(matches!(o.validate(), Err(SolveError::InvalidTolerance { .. })), "rtol {rtol}");
        assert!(matches!(
            Integrator::new(Method::Dopri5, o),
            Err(SolveError::InvalidTolerance { .. })
        ));
    }
    for atol in [0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
        let o = SolveOptions { atol: Atol::Scalar(atol), ..Default::default() };
        assert!(matches!(o.validate(), Err(SolveError::InvalidTolerance { .. })), "atol {atol}");
    }
    let o = SolveOptions::<f64> { atol: Atol::PerComponent(vec![1e-6, 0.0]), ..Default::default() };
    assert_eq!(o.validate(), Err(SolveError::InvalidTolerance { rtol: 1e-6, atol: 0.0 }));
    assert_eq!(SolveOptions::<f64>::default().validate(), Ok(()));
    // rtol at fault: the message names the atol given beside it, not a placeholder.
    let o = SolveOptions::<f64>::tol(0.0, 1e-5);
    assert_eq!(o.validate(), Err(SolveError::InvalidTolerance { rtol: 0.0, atol: 1e-5 }));
    let msg = o.validate().unwrap_err().to_string();
    assert!(msg.contains("rtol = 0, atol = 1e-5"), "{msg}");
    // An rtol below the scalar's machine epsilon asks for more than the precision (with an
    // atol as small it ended in "non-finite state" from an error norm that overflowed); at
    // epsilon and above it is taken.
    for rtol in [1e-300, 1e-17, f64::EPSILON / 2.0] {
        let e = SolveOptions::<f64>::tol(rtol, 1e-5).validate().unwrap_err();
        let SolveError::ToleranceBelowPrecision { scalar, epsilon, .. } = e else {
            panic!("rtol {rtol}: {e:?}")
        };
        assert_eq!((scalar, epsilon), ("f64", f64::EPSILON));
    }
    assert_eq!(SolveOptions::<f64>::tol(f64::EPSILON, 1e-5).validate(), Ok(()));
    let e = SolveOptions::<f32>::tol(1e-8, 1e-5).validate().unwrap_err();
    let msg = e.to_string();
    assert_eq!(
        msg,
        "rtol = 1e-8 is below the precision of f32 (machine epsilon 1.2e-7): no solution is that accurate"
    );
    assert_eq!(SolveOptions::<f32>::tol(1e-6, 1e-6).validate(), Ok(()));
}

#[test]
fn invalid_options() {
    let bad = [
        SolveOptions { h0: Some(-1.0), ..Default::default() },
        SolveOptions { h0: Some(0.0), ..Default::default() },
        SolveOptions { h_min: -1.0, ..Default::default() },
        SolveOptions { h_min: 1.0, h_max: Some(0.5), ..Default::default() },
        SolveOptions { h_fixed: Some(0.0), ..Default::default() },
        SolveOptions { h_fixed: Some(f64::NAN), ..Default::default() },
        SolveOptions { max_steps: 0, ..Default::default() },
    ];
    for o in bad {
        assert!(matches!(o.validate(), Err(SolveError::InvalidOption { .. })), "{o:?}");
    }
    assert_eq!(
        Integrator::<f64>::new(Method::Rk4, SolveOptions::default()).err(),
        Some(SolveError::MissingStepSize { method: "rk4" })
    );
    let mut integ = Integrator::new(Method::Euler, SolveOptions::fixed(0.1)).unwrap();
    assert_eq!(
        integ.set_options(SolveOptions::default()),
        Err(SolveError::MissingStepSize { method: "euler" })
    );
}

#[test]
fn dimension_mismatches() {
    let mut integ = Integrator::new(Method::Dopri5, SolveOptions::default()).unwrap();
    let mut y = [1.0; 3];
    assert_eq!(
        integ.integrate(&mut decay(), 0.0, 1.0, &mut y, &mut NoObserver),
        Err(SolveError::DimensionMismatch { expected: 2, found: 3 })
    );
    let o = SolveOptions { atol: Atol::PerComponent(vec![1e-6; 3]), ..Default::default() };
    let mut integ = Integrator::new(Method::Dopri5, o).unwrap();
    let mut y = [1.0; 2];
    assert_eq!(
        integ.integrate(&mut decay(), 0.0, 1.0, &mut y, &mut NoObserver),
        Err(SolveError::DimensionMismatch { expected: 2, found: 3 })
    );
    let mut integ = Integrator::new(Method::Dopri5, SolveOptions::default()).unwrap();
    let mut out = [0.0; 5];
    assert_eq!(
        integ.integrate_at(&mut decay(), 0.0, &[0.5, 1.0, 2.0], &mut y, &mut out),
        Err(SolveError::DimensionMismatch { expected: 6, found: 5 })
    );
    // A system of its own whose error range overshoots its state (FnSystem refuses to be
    // built with one, below).
    struct Overshoots;
    impl OdeSystem<f64> for Overshoots {
        fn dim(&self) -> usize {
            2
        }
        fn rhs(&mut self, _t: f64, y: &[f64], dy: &mut [f64]) {
            dy.copy_from_slice(y)
        }
        fn error_components(&self) -> std::ops::Range<usize> {
            1..3
        }
    }
    assert_eq!(
        integ.integrate(&mut Overshoots, 0.0, 1.0, &mut y, &mut NoObserver),
        Err(SolveError::InvalidErrorComponents { start: 1, end: 3, dim: 2 })
    );
}

/// `FnSystem::with_error_components` takes a non-empty range within the state: an empty one
/// turned error control off (a solve of y' = y at rtol 1e-6 erred by 1.4e-2), one past the
/// end would fail at every solve.
#[test]
fn fn_system_error_components_are_checked_when_given() {
    let f = |_t: f64, y: &[f64], dy: &mut [f64]| dy.copy_from_slice(y);
    for (r, dim) in [(1..1, 2), (0..0, 2), (2..2, 2), (1..3, 2), (0..1, 0)] {
        let e = FnSystem::new(dim, f).with_error_components(r.clone()).err();
        let want = SolveError::InvalidErrorComponents { start: r.start, end: r.end, dim };
        assert_eq!(e, Some(want), "{r:?} in dimension {dim}");
    }
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = FnSystem::new(2, f).with_error_components(2..1).err();
    assert!(matches!(backwards, Some(SolveError::InvalidErrorComponents { .. })));
    assert_eq!(
        FnSystem::new(2, f).with_error_components(1..1).err().unwrap().to_string(),
        "invalid error components 1..1 for a state of dimension 2"
    );
    // Within the state: taken, and the solve controls component 0 only (to its tolerance).
    for r in [0..1, 1..2, 0..2] {
        assert!(FnSystem::new(2, f).with_error_components(r).is_ok());
    }
    assert!(FnSystem::new(0, f).with_error_components(0..0).is_ok(), "an empty state");
    let mut sys = FnSystem::new(2, f).with_error_components(0..1).unwrap();
    let (y, _) =
        solve(Method::Dopri5, &mut sys, 0.0, 1.0, &[1.0, 1.0], &SolveOptions::tol(1e-6, 1e-9))
            .unwrap();
    assert!((y[0] - 1f64.exp()).abs() < 1e-5, "{y:?}");
}

/// A controller that accepts every step and keeps its size.
struct AlwaysAccept;

impl StepController<f64> for AlwaysAccept {
    fn reset(&mut self) {}
    fn decide(&mut self, _err: f64, h: f64, _k: u8) -> Decision<f64> {
        Decision::Accept { h_next: h.abs() }
    }
}

/// A controller that returns one fixed verdict.
struct Says(Decision<f64>);

impl StepController<f64> for Says {
    fn reset(&mut self) {}
    fn decide(&mut self, _err: f64, _h: f64, _k: u8) -> Decision<f64> {
        self.0
    }
}

/// Whatever a custom controller says, a step to a non-finite state is not accepted: the solve
/// fails as the built-in controller's and a fixed step's do (it returned `Ok` with y = NaN).
#[test]
fn a_custom_controller_cannot_accept_a_non_finite_state() {
    let mut sys = FnSystem::new(1, |t: f64, _y: &[f64], dy: &mut [f64]| {
        dy[0] = if t > 0.3 { f64::NAN } else { 1.0 };
    });
    let opts = SolveOptions { h0: Some(0.05), ..Default::default() };
    for m in [Method::Bosh3, Method::Dopri5, Method::Tsit5, Method::Dop853] {
        let mut integ = Integrator::with_controller(m, AlwaysAccept, opts.clone()).unwrap();
        let mut y = [0.0];
        match integ.integrate(&mut sys, 0.0, 1.0, &mut y, &mut NoObserver) {
            Err(SolveError::NonFinite { t }) => assert!((0.25..=0.3).contains(&t), "{m}: t = {t}"),
            other => panic!("{m}: {other:?}, y = {y:?}"),
        }
        assert_eq!(y[0].to_bits(), 0.0f64.to_bits(), "{m}: y is left untouched on error");
        // The controller's other steps are taken: up to t = 0.3, y' = 1 is solved exactly.
        let mut y = [0.0];
        integ.integrate(&mut sys, 0.0, 0.3, &mut y, &mut NoObserver).unwrap();
        assert!((y[0] - 0.3).abs() < 1e-12, "{m}: {y:?}");
    }
}

/// A controller's step size must be finite and positive: a negative or NaN one ran the solve
/// backward to t = −9999 and then reported too many steps.
#[test]
fn a_controller_step_size_must_be_finite_and_positive() {
    use Decision::{Accept, Reject};
    let opts = SolveOptions { h0: Some(0.1), ..Default::default() };
    let cases = [
        (Accept { h_next: -0.1 }, "h_next"),
        (Accept { h_next: f64::INFINITY }, "h_next"),
        (Reject { h_retry: -0.05 }, "h_retry"),
        (Reject { h_retry: f64::NEG_INFINITY }, "h_retry"),
    ];
    for (d, name) in cases {
        let mut integ = Integrator::with_controller(Method::Dopri5, Says(d), opts.clone()).unwrap();
        let mut y = [1.0, 1.0];
        let got = integ.integrate(&mut decay(), 0.0, 1.0, &mut y, &mut NoObserver);
        let value = match d {
            Accept { h_next } => h_next,
            Reject { h_retry } => h_retry,
        };
        // Decided on the first step, from t = 0.
        assert_eq!(got, Err(SolveError::InvalidControllerStep { name, value, t: 0.0 }), "{d:?}");
        assert_eq!(y.map(f64::to_bits), [1f64.to_bits(); 2], "{d:?}: y is left untouched");
    }
    for d in [Accept { h_next: f64::NAN }, Reject { h_retry: f64::NAN }] {
        let mut integ = Integrator::with_controller(Method::Tsit5, Says(d), opts.clone()).unwrap();
        let mut y = [1.0, 1.0];
        match integ.integrate(&mut decay(), 0.0, 1.0, &mut y, &mut NoObserver) {
            Err(SolveError::InvalidControllerStep { value, t, .. }) => {
                assert!(value.is_nan() && t == 0.0, "{d:?}: {value}, {t}")
            }
            other => panic!("{d:?}: {other:?}"),
        }
    }
    // A step size of zero (one that underflowed, with a tiny fac_min) is a step-size
    // underflow, as the built-in controller's would be: after the accepted first step, or
    // at once.
    for (d, at) in [(Accept { h_next: 0.0 }, 0.1), (Reject { h_retry: -0.0 }, 0.0)] {
        let mut integ = Integrator::with_controller(Method::Dopri5, Says(d), opts.clone()).unwrap();
        let mut y = [1.0, 1.0];
        match integ.integrate(&mut decay(), 0.0, 1.0, &mut y, &mut NoObserver) {
            Err(SolveError::StepSizeUnderflow { t, h }) => {
                assert!((t - at).abs() < 1e-15 && h == 0.0, "{d:?}: {t}, {h}")
            }
            other => panic!("{d:?}: {other:?}"),
        }
    }
    let e = SolveError::InvalidControllerStep { name: "h_retry", value: -0.05, t: 0.25 };
    assert_eq!(
        e.to_string(),
        "the step controller returned h_retry = -0.05 at t = 0.25 (a step size must be finite \
         and > 0)"
    );
    // A positive, finite step is taken as it is (here until t1).
    let mut integ =
        Integrator::with_controller(Method::Dopri5, Says(Accept { h_next: 0.1 }), opts).unwrap();
    let mut y = [1.0, 1.0];
    let s = integ.integrate(&mut decay(), 0.0, 1.0, &mut y, &mut NoObserver).unwrap();
    assert_eq!((s.n_accepted, s.n_rejected), (10, 0));
    // The built-in controller's steps stay finite where 10·h would overflow.
    let mut sys = FnSystem::new(1, |_t: f64, _y: &[f64], dy: &mut [f64]| dy[0] = 0.0);
    for m in [Method::Dopri5, Method::Dop853] {
        let mut integ = Integrator::new(m, SolveOptions::default()).unwrap();
        let mut y = [1.0];
        let got = integ.integrate(&mut sys, 0.0, f64::MAX, &mut y, &mut NoObserver);
        assert!(got.is_ok() && y[0].to_bits() == 1f64.to_bits(), "{m}: {got:?} {y:?}");
    }
}

/// `PiController`'s settings (public through `CnfConfig::controller` in odeflow) are checked
/// when the integrator is built and again at each solve. Unchecked, `safety = −1` ended in
/// "non-finite state at t = −14.07" on a solve over [0, 1], `safety = 0` in a step-size
/// underflow, `beta2 = 100` in "too many steps at t = 0", and `fac_max = −1` was ignored.
#[test]
fn pi_controller_settings_are_checked() {
    // A default controller with one edit (its history fields are private).
    let pi = |edit: fn(&mut PiController<f64>)| {
        let mut c = PiController::default();
        edit(&mut c);
        c
    };
    let bad = [
        (pi(|c| c.safety = -1.0), "safety", -1.0),
        (pi(|c| c.safety = 0.0), "safety", 0.0),
        (pi(|c| c.safety = 1.5), "safety", 1.5),
        (pi(|c| c.fac_min = Some(0.0)), "fac_min", 0.0),
        (pi(|c| c.fac_min = Some(1.0)), "fac_min", 1.0),
        (pi(|c| c.fac_min = Some(-0.5)), "fac_min", -0.5),
        (pi(|c| c.fac_max = Some(-1.0)), "fac_max", -1.0),
        (pi(|c| c.fac_max = Some(1.0)), "fac_max", 1.0),
        (pi(|c| c.fac_max = Some(f64::INFINITY)), "fac_max", f64::INFINITY),
        (pi(|c| c.beta2 = Some(100.0)), "beta2", 100.0),
        (pi(|c| c.beta2 = Some(0.21)), "beta2", 0.21),
        (pi(|c| c.beta2 = Some(-0.01)), "beta2", -0.01),
    ];
    for (c, name, value) in bad {
        let e = Integrator::with_controller(Method::Dopri5, c, SolveOptions::default()).err();
        let Some(SolveError::InvalidController { name: n, value: v, .. }) = e else {
            panic!("{name} = {value}: {e:?}")
        };
        assert_eq!((n, v), (name, value));
        // Set after the build: refused by the solve.
        let mut integ = Integrator::new(Method::Dopri5, SolveOptions::default()).unwrap();
        *integ.controller_mut() = c;
        let mut y = [1.0, 1.0];
        let got = integ.integrate(&mut decay(), 0.0, 1.0, &mut y, &mut NoObserver);
        assert!(
            matches!(got, Err(SolveError::InvalidController { name: n, .. }) if n == name),
            "{name} = {value}: {got:?}"
        );
    }
    for c in [
        pi(|c| c.safety = f64::NAN),
        pi(|c| c.fac_min = Some(f64::NAN)),
        pi(|c| c.fac_max = Some(f64::NAN)),
        pi(|c| c.beta2 = Some(f64::NAN)),
    ] {
        let e = Integrator::with_controller(Method::Dopri5, c, SolveOptions::default()).err();
        assert!(matches!(e, Some(SolveError::InvalidController { value, .. }) if value.is_nan()));
    }
    // β1 = 1/k − 0.75·β2 must stay positive: β2 = 0.18 is Dopri5's (k = 5: β1 = 0.065), not
    // DOP853's (k = 8: β1 = −0.01, so a rejected step would grow).
    let c = pi(|c| c.beta2 = Some(0.18));
    assert!(Integrator::with_controller(Method::Dopri5, c, SolveOptions::default()).is_ok());
    let e = Integrator::with_controller(Method::Dop853, c, SolveOptions::default()).err();
    assert!(matches!(e, Some(SolveError::InvalidController { name: "beta2", .. })), "{e:?}");
    let msg = e.unwrap().to_string();
    assert!(msg.starts_with("invalid step controller setting beta2 = 0.18: must be in [0, 0.2]"));
    // The edges of the ranges, the defaults, the elementary controller and the settings the
    // odeflow tests use are all taken, and solve.
    let good = [
        PiController::default(),
        PiController::elementary(),
        pi(|c| c.safety = 1.0),
        pi(|c| c.safety = 0.5),
        pi(|c| (c.fac_min, c.fac_max) = (Some(0.999), Some(1.001))),
        pi(|c| c.fac_max = Some(1.2)),
        pi(|c| c.beta2 = Some(0.0)),
        pi(|c| c.beta2 = Some(0.1)),
    ];
    for c in good {
        for m in [Method::Bosh3, Method::Dopri5, Method::Tsit5, Method::Dop853] {
            let mut integ = Integrator::with_controller(m, c, SolveOptions::default()).unwrap();
            let mut y = [1.0, 1.0];
            let got = integ.integrate(&mut decay(), 0.0, 1.0, &mut y, &mut NoObserver);
            assert!(got.is_ok(), "{m} {c:?}: {got:?}");
            assert!((y[0] - (-1.0f64).exp()).abs() < 1e-5, "{m} {c:?}: {y:?}");
        }
    }
    // Bosh3 (k = 3) and Dopri5 take β2 up to Hairer's 0.2; a tiny safety factor is taken (a
    // solve with it crawls into too many steps, a clear error of its own).
    for c in [pi(|c| c.beta2 = Some(0.2)), pi(|c| c.safety = 1e-6)] {
        for m in [Method::Bosh3, Method::Dopri5] {
            assert!(Integrator::with_controller(m, c, SolveOptions::default()).is_ok());
        }
    }
}

/// `StepView::interpolate` at a time that is not finite is an error (it wrote NaN and
/// returned `Ok`); outside the step it extrapolates, as documented.
#[test]
fn interpolate_at_a_non_finite_time_is_an_error() {
    use odeflow_solvers::{FnObserver, StepView};
    use std::ops::ControlFlow;
    for m in [Method::Dopri5, Method::Dop853, Method::Rk4] {
        let opts = if m.is_adaptive() { SolveOptions::default() } else { SolveOptions::fixed(0.1) };
        let mut integ = Integrator::new(m, opts).unwrap();
        let mut seen = Vec::new();
        let mut obs = FnObserver(|s: &StepView<'_, f64>| {
            let mut out = [0.0; 2];
            for t in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                seen.push((t, s.interpolate(t, &mut out), out));
            }
            // Just past the step's end: extrapolated, finite, close to y_end.
            let past = s.interpolate(s.t_end() + 1e-3 * s.h(), &mut out);
            assert!(past.is_ok() && (out[0] - s.y_end()[0]).abs() < 1e-2, "{past:?} {out:?}");
            ControlFlow::Break(())
        });
        let mut y = [1.0, 1.0];
        integ.integrate(&mut decay(), 0.0, 1.0, &mut y, &mut obs).unwrap();
        assert_eq!(seen.len(), 3, "{m}");
        for (t, got, out) in seen {
            match got {
                Err(SolveError::InvalidTime { t: bad }) => {
                    assert!(bad.to_bits() == t.to_bits(), "{m}: {bad} for {t}")
                }
                other => panic!("{m}: interpolate({t}) gave {other:?}"),
            }
            assert_eq!(out.map(f64::to_bits), [0; 2], "{m}: out is left untouched on error");
        }
    }
}

/// Sizing the workspace past what can be addressed is an error, not a "capacity overflow"
/// panic, and leaves the integrator usable.
#[test]
fn reserving_an_impossible_workspace_is_an_error() {
    for m in [Method::Euler, Method::Dopri5, Method::Dop853] {
        let opts = if m.is_adaptive() { SolveOptions::default() } else { SolveOptions::fixed(0.1) };
        let mut integ = Integrator::<f64>::new(m, opts).unwrap();
        integ.reserve(2).unwrap();
        assert_eq!(integ.workspace_dim(), 2);
        // The element count overflows usize (stages × dim), or the byte count isize::MAX.
        for dim in [usize::MAX / 4, usize::MAX, usize::MAX / 64, (isize::MAX as usize) / 8 + 1] {
            assert_eq!(integ.reserve(dim), Err(SolveError::WorkspaceTooLarge { dim }), "{m}");
            assert_eq!(integ.workspace_dim(), 0, "{m}: sized for nothing after the failure");
        }
        assert_eq!(
            SolveError::WorkspaceTooLarge { dim: 7 }.to_string(),
            "the solver workspace for states of length 7 is too large to allocate"
        );
        let mut y = [1.0, 1.0];
        integ.integrate(&mut decay(), 0.0, 1.0, &mut y, &mut NoObserver).unwrap();
        assert_eq!(integ.workspace_dim(), 2);
        let want = if m.is_adaptive() { (-1.0f64).exp() } else { 0.9f64.powi(10) };
        assert!((y[0] - want).abs() < 1e-5, "{m}: {y:?}");
    }
}

#[test]
fn invalid_and_empty_times() {
    let mut integ = Integrator::new(Method::Dopri5, SolveOptions::default()).unwrap();
    let mut y = [1.0, 1.0];
    assert_eq!(
        integ.integrate(&mut decay(), 0.5, 0.5, &mut y, &mut NoObserver),
        Err(SolveError::EmptyInterval { t: 0.5 })
    );
    assert!(matches!(
        integ.integrate(&mut decay(), 0.0, f64::NAN, &mut y, &mut NoObserver),
        Err(SolveError::InvalidTime { .. })
    ));
    assert_eq!(
        integ.integrate(&mut decay(), f64::INFINITY, 1.0, &mut y, &mut NoObserver),
        Err(SolveError::InvalidTime { t: f64::INFINITY })
    );
    let mut out = [0.0; 6];
    assert_eq!(
        integ.integrate_at(&mut decay(), 0.0, &[0.5, 0.2, 1.0], &mut y, &mut out),
        Err(SolveError::InvalidTime { t: 0.2 })
    );
    // Times before t0 (against the direction of integration).
    assert_eq!(
        integ.integrate_at(&mut decay(), 0.0, &[-0.5, 0.2, 1.0], &mut y, &mut out),
        Err(SolveError::InvalidTime { t: -0.5 })
    );
    assert_eq!(
        integ.integrate_at(&mut decay(), 0.0, &[], &mut y, &mut []),
        Err(SolveError::EmptyInterval { t: 0.0 })
    );
    // All times at t0: answered without integrating.
    let mut out = [0.0; 4];
    let s = integ.integrate_at(&mut decay(), 0.0, &[0.0, 0.0], &mut y, &mut out).unwrap();
    assert_eq!(s.n_rhs, 0);
    assert!(out.iter().all(|x| x.to_bits() == 1.0f64.to_bits()));
}

#[test]
fn non_finite_state_or_derivative() {
    let mut integ = Integrator::new(Method::Dopri5, SolveOptions::default()).unwrap();
    let mut y = [f64::NAN, 1.0];
    assert_eq!(
        integ.integrate(&mut decay(), 0.0, 1.0, &mut y, &mut NoObserver),
        Err(SolveError::NonFinite { t: 0.0 })
    );
    // A derivative that becomes NaN for t > 0.5: the adaptive methods shrink the step until
    // it underflows and then report where the state stopped being finite.
    let mut sys = FnSystem::new(1, |t: f64, _y: &[f64], dy: &mut [f64]| {
        dy[0] = if t > 0.5 { f64::NAN } else { 1.0 };
    });
    for m in [Method::Bosh3, Method::Dopri5, Method::Tsit5, Method::Dop853] {
        let mut integ = Integrator::new(m, SolveOptions::default()).unwrap();
        let mut y = [0.0];
        match integ.integrate(&mut sys, 0.0, 1.0, &mut y, &mut NoObserver) {
            Err(SolveError::NonFinite { t }) => assert!((0.49..=0.5).contains(&t), "{m}: t = {t}"),
            other => panic!("{m}: {other:?}"),
        }
        assert_eq!(y[0].to_bits(), 0.0f64.to_bits(), "{m}: y is left untouched on error");
    }
    // Fixed steps stop at the first non-finite step: the one from t = 0.5 (its stages lie
    // beyond 0.5).
    let mut integ = Integrator::new(Method::Rk4, SolveOptions::fixed(0.1)).unwrap();
    let mut y = [0.0];
    match integ.integrate(&mut sys, 0.0, 1.0, &mut y, &mut NoObserver) {
        Err(SolveError::NonFinite { t }) => assert!((t - 0.5).abs() < 1e-12, "t = {t}"),
        other => panic!("{other:?}"),
    }
    // Derivative NaN at t0 itself.
    let mut nan = FnSystem::new(1, |_t: f64, _y: &[f64], dy: &mut [f64]| dy[0] = f64::NAN);
    let mut y = [0.0];
    assert_eq!(
        integ.integrate(&mut nan, 2.0, 3.0, &mut y, &mut NoObserver),
        Err(SolveError::NonFinite { t: 2.0 })
    );
}

#[test]
fn step_size_underflow_at_a_singularity() {
    // y' = y², y(0) = 1 blows up at t = 1.
    let mut sys = FnSystem::new(1, |_t: f64, y: &[f64], dy: &mut [f64]| dy[0] = y[0] * y[0]);
    for m in [Method::Bosh3, Method::Dopri5, Method::Tsit5, Method::Dop853] {
        let mut integ = Integrator::new(m, SolveOptions::tol(1e-8, 1e-8)).unwrap();
        let mut y = [1.0];
        match integ.integrate(&mut sys, 0.0, 2.0, &mut y, &mut NoObserver) {
            Err(SolveError::StepSizeUnderflow { t, h }) => {
                assert!((t - 1.0).abs() < 1e-3 && h.abs() < 1e-12, "{m}: t = {t}, h = {h}")
            }
            Err(SolveError::NonFinite { t }) => assert!((t - 1.0).abs() < 1e-3, "{m}: t = {t}"),
            other => panic!("{m}: {other:?}"),
        }
    }
    // h_min makes it fail early, at the first step that would need less.
    let (mut ar, y0, period) = arenstorf();
    let o = SolveOptions { h_min: 0.05, ..SolveOptions::tol(1e-8, 1e-8) };
    let mut integ = Integrator::new(Method::Dopri5, o).unwrap();
    let mut y = y0;
    match integ.integrate(&mut ar, 0.0, period, &mut y, &mut NoObserver) {
        Err(SolveError::StepSizeUnderflow { h, .. }) => assert!(h.abs() < 0.05),
        other => panic!("{other:?}"),
    }
}

#[test]
fn too_many_steps() {
    let (mut ar, y0, period) = arenstorf();
    let o = SolveOptions { max_steps: 50, ..SolveOptions::tol(1e-8, 1e-8) };
    let mut integ = Integrator::new(Method::Dopri5, o).unwrap();
    let mut y = y0;
    match integ.integrate(&mut ar, 0.0, period, &mut y, &mut NoObserver) {
        Err(SolveError::TooManySteps { t, max_steps: 50 }) => assert!(t > 0.0 && t < period),
        other => panic!("{other:?}"),
    }
    // Fixed steps: known up front.
    let mut integ =
        Integrator::new(Method::Rk4, SolveOptions { max_steps: 10, ..SolveOptions::fixed(0.01) })
            .unwrap();
    let mut y = [1.0, 0.0];
    assert_eq!(
        integ.integrate(&mut Harmonic { omega: 1.0 }, 0.0, 1.0, &mut y, &mut NoObserver),
        Err(SolveError::TooManySteps { t: 0.0, max_steps: 10 })
    );
}

#[test]
fn errors_display_their_numbers() {
    let e = SolveError::StepSizeUnderflow { t: 0.75, h: 1e-17 };
    assert_eq!(e.to_string(), "step size underflow at t = 0.75, h = 1e-17");
    let e = SolveError::TooManySteps { t: 3.5, max_steps: 10 };
    assert!(e.to_string().contains("3.5") && e.to_string().contains("10"));
    // Very small and very large numbers in scientific notation, not hundreds of digits.
    let e = SolveError::StepSizeUnderflow { t: 1e300, h: 1e-300 };
    assert_eq!(e.to_string(), "step size underflow at t = 1e300, h = 1e-300");
    let e = SolveError::InvalidTolerance { rtol: 1e-300, atol: 0.0001 };
    assert!(e.to_string().starts_with("invalid tolerance: rtol = 1e-300, atol = 0.0001 "), "{e}");
    let (y, _) =
        solve(Method::Dopri5, &mut decay(), 0.0, 1.0, &[1.0, 2.0], &SolveOptions::default())
            .unwrap();
    assert!((y[1] - 2.0 * (-1.0f64).exp()).abs() < 1e-6);
}

/// An empty state (a batch of no points) solves to nothing, with output times and dense
/// output too: no division by its zero dimension.
#[test]
fn empty_state_solves_without_panicking() {
    use odeflow_solvers::FnObserver;
    use std::ops::ControlFlow;
    for method in [Method::Dopri5, Method::Tsit5, Method::Dop853, Method::Rk4] {
        let mut opts = SolveOptions::tol(1e-6, 1e-6);
        if !method.is_adaptive() {
            opts.h_fixed = Some(0.1);
        }
        let mut sys = ExpDecay { dim: 0, lambda: 1.0 };
        let mut integ = Integrator::new(method, opts).unwrap();
        let (mut y, mut out) = (Vec::<f64>::new(), Vec::new());
        integ.integrate_at(&mut sys, 0.0, &[0.5, 1.0], &mut y, &mut out).unwrap();
        let mut steps = 0;
        let mut obs = FnObserver(|step: &odeflow_solvers::StepView<'_, f64>| {
            let mut mid = [];
            step.interpolate(step.t_start() + 0.5 * step.h(), &mut mid).unwrap();
            steps += 1;
            ControlFlow::Continue(())
        });
        let mut y = Vec::<f64>::new();
        integ.integrate(&mut sys, 0.0, 1.0, &mut y, &mut obs).unwrap();
        assert!(steps >= 1, "{method:?}: no step observed");
    }
}
