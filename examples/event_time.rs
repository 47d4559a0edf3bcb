//! Training through an event time: a ball dropped from 5 m, `y = (height, velocity)`,
//! `dy/dt = A y + b`, starts as free fall (`A = [[0, 1], [0, 0]]`, `b = (0, −9.81)`: it lands
//! after 1.010 s at −9.9 m/s). Adam fits all six entries of A and b so that it lands (the
//! height falls through 0, the terminal event) after 1.2 s at −7 m/s, as a ball with drag
//! would: `L = (t* − 1.2)² + ((v(t*) + 7)/10)²`, its gradient through the landing time by
//! [`odeflow::adjoint::ode_event_grad`]. Prints t*, v(t*), L, the learned A and b, and the
//! forward/backward evaluations.
//!
//! Run: `cargo run --release --example event_time -- [ITERATIONS] [LR]` (defaults 500, 2e-2).

use odeflow::adjoint::{ode_event_grad, AdjointConfig, EventOdeSpec, HyperplaneEvent};
use odeflow::field::{LinearField, VectorField};
use odeflow::solvers::{Crossing, Method, SolveOptions};
use odeflow::train::{Adam, AdamConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let iterations: u64 = args.first().map_or(Ok(500), |s| s.parse())?;
    let lr: f64 = args.get(1).map_or(Ok(2e-2), |s| s.parse())?;
    let (t_target, v_target) = (1.2, -7.0);

    let mut field = LinearField::new(&[0.0, 1.0, 0.0, 0.0], &[0.0, -9.81])?;
    let ground = HyperplaneEvent { w: vec![1.0, 0.0], c: 0.0 };
    let spec = EventOdeSpec {
        t0: 0.0,
        t_max: 20.0,
        crossing: Crossing::Falling,
        method: Method::Dopri5,
        options: SolveOptions::tol(1e-9, 1e-9),
    };
    let adam_cfg = AdamConfig { lr, weight_decay: 0.0, ..Default::default() };
    let mut adam = Adam::new(adam_cfg, field.n_params())?;
    let adj = AdjointConfig::default();
    let start = std::time::Instant::now();
    for it in 0..=iterations {
        let mut v = f64::NAN;
        let loss = |t: f64, y: &[f64], dy: &mut [f64]| {
            v = y[1];
            let dv = (y[1] - v_target) / 10.0;
            dy[1] = 2.0 * dv / 10.0;
            ((t - t_target).powi(2) + dv * dv, 2.0 * (t - t_target))
        };
        let (l, t, g) = ode_event_grad(&field, &spec, &[5.0, 0.0], &ground, &adj, loss)?;
        if it % (iterations / 10).max(1) == 0 {
            println!(
                "iter {it:4}: lands at t* = {t:.4} s, v = {v:.3} m/s, L = {l:.2e} \
                 (NFE fwd {} bwd {})",
                g.stats.forward.n_rhs, g.stats.backward.n_rhs
            );
        }
        if it < iterations {
            adam.step(field.params_mut(), &g.theta)?;
        }
    }
    let p = field.params();
    println!(
        "A = [[{:.4}, {:.4}], [{:.4}, {:.4}]], b = ({:.4}, {:.4})",
        p[0], p[1], p[2], p[3], p[4], p[5]
    );
    println!("{iterations} iterations in {:.2} s", start.elapsed().as_secs_f64());
    Ok(())
}
