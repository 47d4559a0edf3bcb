//! Gradients through an event time against a closed form and finite differences.

use odeflow::adjoint::{
    ode_event_forward, ode_event_grad, ode_forward, AdjointConfig, EventFunction, EventOdeSpec,
    HyperplaneEvent, OdeSpec, Strategy,
};
use odeflow::field::{Activation, LinearField, Mlp, MlpConfig, TimeConditioning, VectorField};
use odeflow::solvers::{Crossing, Method, SolveError, SolveOptions};
use odeflow::Error;

const STRATEGIES: [Strategy; 3] = [Strategy::Backsolve, Strategy::Checkpointed, Strategy::Discrete];

fn spec(t0: f64, t_max: f64, crossing: Crossing, tol: f64) -> EventOdeSpec<f64> {
    let options = SolveOptions::tol(tol, tol);
    EventOdeSpec { t0, t_max, crossing, method: Method::Dopri5, options }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

/// `dz/dt = a z + b` from `z0` until `z = c`: with `u = b/a`,
/// `t* = t0 + ln((c + u)/(z0 + u))/a`. For `L = t* + ½ z*²` the second term is constant
/// (z* = c whatever θ), so the total derivatives are `t*`'s own; the adjoint must cancel the
/// `L_z = c` it is given (a* = L_z − ((L_z f + 1)/f)·1 = −1/f). Forward (z falls to c) and
/// backward in time (z rises to c), every strategy, at rtol 1e-10: relative 1e-6 (observed
/// worst 1.7e-10).
#[test]
fn event_time_gradients_match_the_closed_form() {
    let (a, b, c): (f64, f64, f64) = (-0.5, 0.1, 1.0);
    for (t0, t_max, z0, crossing) in
        [(0.3, 10.0, 2.0, Crossing::Falling), (0.3, -10.0, 0.5, Crossing::Rising)]
    {
        let u = b / a;
        let ln = ((c + u) / (z0 + u)).ln();
        let t_star = t0 + ln / a;
        let dt_dz0 = -1.0 / (a * (z0 + u));
        let dt_db = (1.0 / (c + u) - 1.0 / (z0 + u)) / (a * a);
        let dt_da = -ln / (a * a) - b / (a * a * a) * (1.0 / (c + u) - 1.0 / (z0 + u));
        let field = LinearField::new(&[a], &[b]).unwrap();
        let level = HyperplaneEvent { w: vec![1.0], c };
        for strategy in STRATEGIES {
            let adj = AdjointConfig::with_strategy(strategy);
            let loss = |t: f64, z: &[f64], dz: &mut [f64]| {
                dz[0] = z[0];
                (t + 0.5 * z[0] * z[0], 1.0)
            };
            let sp = spec(t0, t_max, crossing, 1e-10);
            let (l, t, g) = ode_event_grad(&field, &sp, &[z0], &level, &adj, loss).unwrap();
            let what = format!("{strategy:?} from z0 = {z0}");
            assert!((t - t_star).abs() < 1e-8, "{what}: t* {t} vs {t_star}");
            assert!((l - t_star - 0.5 * c * c).abs() < 1e-8, "{what}: L {l}");
            for (name, got, want) in [
                ("a", g.theta[0], dt_da),
                ("b", g.theta[1], dt_db),
                ("z0", g.y0[0], dt_dz0),
                ("t0", g.t0, 1.0),
            ] {
                assert!(rel(got, want) < 1e-6, "{what}: d/d{name} {got} vs {want}");
            }
            // Outside the solves: the adjoint's own evaluation at t0 (for dL/dt0); f at the
            // event is the forward's (counted there). (The discrete strategy counts its
            // replayed stages there too.)
            assert!(g.stats.forward.n_rhs > 0, "{what}");
            if strategy != Strategy::Discrete {
                assert_eq!(g.stats.extra_evals, 1, "{what}");
            }
        }
    }
}

/// A crossing of a hyperplane by a batch of two points of a small MLP field, met at about
/// t = 0.4 by construction (the plane through z(0.4) normal to f there), with the loss
/// `L = t*² + Σ sin z*`: θ (three random directions), z(t0) and t0 against fourth-order
/// central differences of the whole event-terminated solve (δ = 1e-3), every strategy, at
/// rtol 1e-10: relative 1e-5, the bound for gradients (observed worst 2.4e-6, for
/// t0; the others 7.2e-8 or below).
#[test]
fn event_time_gradients_match_finite_differences_for_an_mlp() {
    let cfg = MlpConfig {
        dim: 2,
        hidden: vec![8, 8],
        activation: Activation::Tanh,
        time: TimeConditioning::ConcatSquash,
        seed: 7,
        ..Default::default()
    };
    let field = Mlp::<f64>::new(&cfg).unwrap();
    let y0 = [0.8, -0.3, -0.5, 0.9];
    let tol = SolveOptions::tol(1e-10, 1e-10);
    // The plane: through z(0.4), normal to f(0.4, z(0.4)).
    let at = OdeSpec { t0: 0.0, t_obs: vec![0.4], method: Method::Dopri5, options: tol.clone() };
    let z04 = ode_forward(&field, &at, &y0, &AdjointConfig::default()).unwrap().states().to_vec();
    let mut w = vec![0.0; 4];
    let mut ws = field.workspace(2);
    field.eval(0.4, &z04, &mut w, &mut ws).unwrap();
    let c: f64 = w.iter().zip(&z04).map(|(a, b)| a * b).sum();
    let plane = HyperplaneEvent { w, c };
    let sp = spec(0.0, 2.0, Crossing::Rising, 1e-10);
    let loss_of = |t: f64, z: &[f64]| t * t + z.iter().map(|v| v.sin()).sum::<f64>();
    let value = |field: &Mlp<f64>, y0: &[f64], t0: f64| -> f64 {
        let sp = EventOdeSpec { t0, ..sp.clone() };
        let tape = ode_event_forward(field, &sp, y0, &plane, &AdjointConfig::default()).unwrap();
        loss_of(tape.t_event(), tape.state())
    };
    let fd4 = |mut l: Box<dyn FnMut(f64) -> f64 + '_>, d: f64| {
        (-l(2.0 * d) + 8.0 * l(d) - 8.0 * l(-d) + l(-2.0 * d)) / (12.0 * d)
    };
    let n_params = field.n_params();
    let directions: Vec<Vec<f64>> = (0..3)
        .map(|k| {
            let v: Vec<f64> = (0..n_params).map(|i| ((i * 7 + k * 13) % 11) as f64 - 5.0).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect();
    let mut fd = Vec::new();
    for v in &directions {
        let f = |e: f64| {
            let mut moved = field.clone();
            for (p, &vi) in moved.params_mut().iter_mut().zip(v) {
                *p += e * vi;
            }
            value(&moved, &y0, 0.0)
        };
        fd.push(fd4(Box::new(f), 1e-3));
    }
    for i in 0..4 {
        let f = |e: f64| {
            let mut y = y0;
            y[i] += e;
            value(&field, &y, 0.0)
        };
        fd.push(fd4(Box::new(f), 1e-3));
    }
    fd.push(fd4(Box::new(|e: f64| value(&field, &y0, e)), 1e-3));

    for strategy in STRATEGIES {
        let adj = AdjointConfig::with_strategy(strategy);
        let loss = |t: f64, z: &[f64], dz: &mut [f64]| {
            for (d, &v) in dz.iter_mut().zip(z) {
                *d = v.cos();
            }
            (loss_of(t, z), 2.0 * t)
        };
        let (_, t, g) = ode_event_grad(&field, &sp, &y0, &plane, &adj, loss).unwrap();
        assert!((t - 0.4).abs() < 1e-8, "{strategy:?}: t* = {t}");
        let mut got: Vec<f64> =
            directions.iter().map(|v| v.iter().zip(&g.theta).map(|(a, b)| a * b).sum()).collect();
        got.extend_from_slice(&g.y0);
        got.push(g.t0);
        for (k, (&a, &b)) in got.iter().zip(&fd).enumerate() {
            assert!(rel(a, b) < 1e-5, "{strategy:?} component {k}: {a} vs fd {b}");
        }
    }
}

/// An event function whose gradient says it does not change along the solution.
struct Flat;

impl EventFunction<f64> for Flat {
    fn value(&self, _t: f64, z: &[f64]) -> f64 {
        z[0] - 1.0
    }
    fn gradient(&self, _t: f64, _z: &[f64], grad_z: &mut [f64]) -> f64 {
        grad_z.fill(0.0);
        0.0
    }
}

/// `z − 1`, with a NaN value after t = 0.5 or a NaN time derivative.
#[derive(Debug)]
struct Nan {
    in_value: bool,
}

impl EventFunction<f64> for Nan {
    fn value(&self, t: f64, z: &[f64]) -> f64 {
        if self.in_value && t > 0.5 {
            f64::NAN
        } else {
            z[0] - 1.0
        }
    }
    fn gradient(&self, _t: f64, _z: &[f64], grad_z: &mut [f64]) -> f64 {
        grad_z[0] = 1.0;
        f64::NAN
    }
}

/// No crossing by t_max, a tangential crossing, bad loss derivatives and a NaN event value
/// are errors that say so.
#[test]
fn event_gradient_errors() {
    let field = LinearField::new(&[-0.5], &[0.0]).unwrap();
    let adj = AdjointConfig::default();
    let level = HyperplaneEvent { w: vec![1.0], c: 1.0 };
    let sp = spec(0.0, 1.0, Crossing::Falling, 1e-8);
    // z = 2e^{−t/2} reaches 1 at 2 ln 2 ≈ 1.39 > 1.
    let err = ode_event_forward(&field, &sp, &[2.0], &level, &adj).unwrap_err();
    assert!(matches!(err, Error::NoEvent { t_max } if t_max.to_bits() == 1f64.to_bits()), "{err}");
    // Rising never happens on the way down.
    let sp = spec(0.0, 10.0, Crossing::Rising, 1e-8);
    let err = ode_event_forward(&field, &sp, &[2.0], &level, &adj).unwrap_err();
    assert!(matches!(err, Error::NoEvent { .. }), "{err}");

    let sp = spec(0.0, 10.0, Crossing::Falling, 1e-8);
    let tape = ode_event_forward(&field, &sp, &[2.0], &Flat, &adj).unwrap();
    let err = tape.backward(&[1.0], 0.0).unwrap_err();
    assert!(
        matches!(err, Error::TangentialEvent { rate, .. } if rate.to_bits() == 0f64.to_bits()),
        "{err}"
    );
    assert!(err.to_string().contains("not differentiable"), "{err}");

    let tape = ode_event_forward(&field, &sp, &[2.0], &level, &adj).unwrap();
    let err = tape.backward(&[1.0, 2.0], 0.0).unwrap_err();
    assert!(matches!(err, Error::BufferLength { .. }), "{err}");
    let err = tape.backward(&[1.0], f64::NAN).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { name: "dl_dt", .. }), "{err}");
    let err = tape.backward(&[f64::INFINITY], 0.0).unwrap_err();
    assert!(matches!(err, Error::NonFiniteInput { .. }), "{err}");

    // A hyperplane of the wrong length (a batch of two points, a normal for one), or not
    // finite, is refused before any solve.
    let err = ode_event_forward(&field, &sp, &[2.0, 3.0], &level, &adj).unwrap_err();
    assert!(matches!(err, Error::BufferLength { buffer: "w", expected: 2, found: 1 }), "{err}");
    let nan = HyperplaneEvent { w: vec![f64::NAN], c: 1.0 };
    let err = ode_event_forward(&field, &sp, &[2.0], &nan, &adj).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { name: "w", .. }), "{err}");

    // An event function whose own value is NaN is the solver's error; one whose gradient is
    // NaN is reported as such.
    let err = ode_event_forward(&field, &sp, &[2.0], &Nan { in_value: true }, &adj).unwrap_err();
    let is_event = |e: &Error| {
        matches!(e, Error::Solve { source: SolveError::NonFiniteEvent { index: 0, .. }, .. })
    };
    assert!(is_event(&err), "{err}");
    let nan_grad = Nan { in_value: false };
    let tape = ode_event_forward(&field, &sp, &[2.0], &nan_grad, &adj).unwrap();
    let err = tape.backward(&[1.0], 0.0).unwrap_err();
    assert!(matches!(err, Error::NonFiniteGradient { what: "event", index: 1, .. }), "{err}");
}

/// A moving level, `g = z − 1 − 0.3 t` (so `∂g/∂t ≠ 0`), met by `dz/dt = a z + b` forward
/// and backward in time, with `L = t*² + z*`: θ, z0 and t0 against central differences of
/// the whole event-terminated solve at rtol 1e-11, every strategy (relative 1e-6; observed
/// worst 1.9e-7, about the central differences' own error at δ = 1e-4).
#[test]
fn a_time_dependent_event_function() {
    struct Moving;
    impl EventFunction<f64> for Moving {
        fn value(&self, t: f64, z: &[f64]) -> f64 {
            z[0] - 1.0 - 0.3 * t
        }
        fn gradient(&self, _t: f64, _z: &[f64], grad_z: &mut [f64]) -> f64 {
            grad_z[0] = 1.0;
            -0.3
        }
    }
    for (t0, t_max, z0, crossing) in
        [(0.2, 10.0, 2.0, Crossing::Falling), (0.2, -10.0, 0.5, Crossing::Rising)]
    {
        let value = |a: f64, b: f64, z0: f64, t0: f64| -> f64 {
            let field = LinearField::new(&[a], &[b]).unwrap();
            let sp = spec(t0, t_max, crossing, 1e-11);
            let adj = AdjointConfig::default();
            let tape = ode_event_forward(&field, &sp, &[z0], &Moving, &adj).unwrap();
            tape.t_event().powi(2) + tape.state()[0]
        };
        let (a, b, h) = (-0.5, 0.1, 1e-4);
        let central = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
        let fd = [
            central(&|e| value(a + e, b, z0, t0)),
            central(&|e| value(a, b + e, z0, t0)),
            central(&|e| value(a, b, z0 + e, t0)),
            central(&|e| value(a, b, z0, t0 + e)),
        ];
        let field = LinearField::new(&[a], &[b]).unwrap();
        for strategy in STRATEGIES {
            let adj = AdjointConfig::with_strategy(strategy);
            let loss = |t: f64, z: &[f64], dz: &mut [f64]| {
                dz[0] = 1.0;
                (t * t + z[0], 2.0 * t)
            };
            let sp = spec(t0, t_max, crossing, 1e-11);
            let (_, _, g) = ode_event_grad(&field, &sp, &[z0], &Moving, &adj, loss).unwrap();
            let got = [g.theta[0], g.theta[1], g.y0[0], g.t0];
            for (k, (&x, &y)) in got.iter().zip(&fd).enumerate() {
                assert!(rel(x, y) < 1e-6, "{strategy:?} from z0 = {z0}, {k}: {x} vs fd {y}");
            }
        }
    }
}

/// Continuing past an event: a restart from the search's located state does not meet the
/// crossing again, and the solve then runs on to the next one (z = 2 e^{−t/2} reaches 1, then
/// 0.5 at twice the time).
#[test]
fn a_restart_from_the_located_state_goes_on_to_the_next_event() {
    let field = LinearField::new(&[-0.5], &[0.0]).unwrap();
    let adj = AdjointConfig::default();
    let first = HyperplaneEvent { w: vec![1.0], c: 1.0 };
    let tape =
        ode_event_forward(&field, &spec(0.0, 10.0, Crossing::Falling, 1e-8), &[2.0], &first, &adj)
            .unwrap();
    let t1 = tape.t_event();
    assert!(tape.located_state()[0] <= 1.0, "{}", tape.located_state()[0]);
    // Restarting with the same level: no immediate refire, so no crossing at all by t = 10.
    let sp = spec(t1, 10.0, Crossing::Falling, 1e-8);
    let again = ode_event_forward(&field, &sp, tape.located_state(), &first, &adj);
    assert!(matches!(again, Err(Error::NoEvent { .. })), "{again:?}");
    // The next level is met where the closed form says.
    let second = HyperplaneEvent { w: vec![1.0], c: 0.5 };
    let next = ode_event_forward(&field, &sp, tape.located_state(), &second, &adj).unwrap();
    let ln2 = 2f64.ln();
    assert!((t1 - 2.0 * ln2).abs() < 1e-7 && (next.t_event() - 4.0 * ln2).abs() < 1e-7);
}
