//! What watching events and keeping the solution cost: the Lorenz system from (1, 1, 1) over
//! t ∈ [0, 100], solved plainly, with dense output computed on every step (the floor any
//! event detection pays), with two recorded events (`z − 27` and `ż`, both falling: the
//! Poincaré section and the maxima of z, ~130 crossings each), and recorded whole as a
//! `DenseSolution`; Dormand–Prince 5(4) at 1e-8 and DOP853 at 1e-10. Compare the times within
//! one run (the ratio to the plain solve), not across runs.
//!
//! `cargo bench -p odeflow-solvers --bench events`

use std::hint::black_box;
use std::ops::ControlFlow;
use std::time::Duration;

use criterion::{criterion_main, BenchmarkId, Criterion};
use odeflow_solvers::problems::Lorenz;
use odeflow_solvers::{
    Crossing, DenseSolution, EventSpec, Events, FnObserver, Integrator, Method, NoObserver,
    SolveOptions, StepView,
};

const T_END: f64 = 100.0;

/// Times the four ways of solving with both methods.
pub fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("lorenz_events");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (method, tol) in [(Method::Dopri5, 1e-8), (Method::Dop853, 1e-10)] {
        let id = format!("{method}/{tol:.0e}");
        let mut integ = Integrator::new(method, SolveOptions::tol(tol, tol)).unwrap();
        g.bench_function(BenchmarkId::new("plain", &id), |b| {
            b.iter(|| {
                let mut y = Lorenz::Y0;
                integ.integrate(&mut Lorenz, 0.0, T_END, &mut y, &mut NoObserver).unwrap();
                black_box(y)
            })
        });
        g.bench_function(BenchmarkId::new("dense_output", &id), |b| {
            let mut obs = FnObserver(|s: &StepView<'_, f64>| {
                black_box(s.h());
                ControlFlow::Continue(())
            });
            b.iter(|| {
                let mut y = Lorenz::Y0;
                integ.integrate(&mut Lorenz, 0.0, T_END, &mut y, &mut obs).unwrap();
                black_box(y)
            })
        });
        let beta = 8.0 / 3.0;
        let specs =
            vec![EventSpec::record(Crossing::Falling), EventSpec::record(Crossing::Falling)];
        let mut events = Events::new(specs, |_t: f64, y: &[f64], g: &mut [f64]| {
            g[0] = y[2] - 27.0;
            g[1] = y[0] * y[1] - beta * y[2];
        });
        let mut y = Lorenz::Y0;
        integ
            .integrate_events(&mut Lorenz, 0.0, T_END, &mut y, &mut events, &mut NoObserver)
            .unwrap();
        println!("{id}: {} crossings recorded", events.hits().len());
        g.bench_function(BenchmarkId::new("two_events", &id), |b| {
            b.iter(|| {
                let mut y = Lorenz::Y0;
                let out = integ.integrate_events(
                    &mut Lorenz,
                    0.0,
                    T_END,
                    &mut y,
                    &mut events,
                    &mut NoObserver,
                );
                black_box(out.unwrap())
            })
        });
        let mut sol = DenseSolution::new();
        g.bench_function(BenchmarkId::new("dense_solution", &id), |b| {
            b.iter(|| {
                sol.clear();
                let mut y = Lorenz::Y0;
                integ.integrate(&mut Lorenz, 0.0, T_END, &mut y, &mut sol).unwrap();
                black_box(sol.n_steps())
            })
        });
    }
    g.finish();
}

/// The criterion group (the macro's function carries no doc comment of its own).
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
