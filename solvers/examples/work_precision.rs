//! Prints the work-precision table of this crate against `ode_solvers` 0.6.2 (Dopri5 and
//! DOP853 at rtol = atol ∈ {1e-3, 1e-6, 1e-9}) on Arenstorf, Lorenz and a batch of 512 2-D
//! states through a random 2→64→2 MLP: function evaluations, error against a tight
//! reference, time, the solver's own time per step and allocations per step.
//!
//! `cargo run --release -p odeflow-solvers --example work_precision`

#[path = "../benches/common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: common::CountingAlloc = common::CountingAlloc;

fn main() {
    let rows = common::table(&[1e-3, 1e-6, 1e-9]);
    common::print_table(&rows);
}
