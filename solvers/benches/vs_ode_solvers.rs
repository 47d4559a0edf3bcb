//! Side-by-side criterion benchmark of this crate against `ode_solvers` 0.6.2 with the same
//! right-hand-side code: Dopri5 and DOP853 at rtol = atol ∈ {1e-3, 1e-6, 1e-9} on Arenstorf
//! (stack `SVector` for the peer), Lorenz (`SVector`) and a batch of 512 two-dimensional
//! states through a fixed random 2→64→2 MLP (`DVector`, 1024 numbers). Before the timings it
//! prints the work-precision table (NFE, error vs a tight reference, time, solver time per
//! step = total − NFE × RHS time, allocations per step from a counting allocator).
//!
//! `cargo bench -p odeflow-solvers --bench vs_ode_solvers`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_main, BenchmarkId, Criterion};
use odeflow_solvers::Method;

mod common;
use common::{mlp, run_peer, Ours, Problem};

#[global_allocator]
static GLOBAL: common::CountingAlloc = common::CountingAlloc;

/// Prints the table, then times both crates on every workload.
pub fn bench(c: &mut Criterion) {
    let tols = [1e-3, 1e-6, 1e-9];
    common::print_table(&common::table(&tols));
    let mut field = mlp();
    for problem in Problem::ALL {
        let mut g = c.benchmark_group(problem.name());
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for method in [Method::Dopri5, Method::Dop853] {
            for tol in tols {
                let id = format!("{method}/{tol:.0e}");
                let mut ours = Ours::new(method, tol);
                g.bench_function(BenchmarkId::new("odeflow", &id), |b| {
                    b.iter(|| black_box(ours.run(black_box(problem), &mut field)))
                });
                let f = &field;
                g.bench_function(BenchmarkId::new("ode_solvers", &id), |b| {
                    b.iter(|| black_box(run_peer(method, black_box(problem), tol, f)))
                });
            }
        }
        g.finish();
    }
}

/// The criterion group (the macro's function carries no doc comment of its own).
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
