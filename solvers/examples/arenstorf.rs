//! Solves the Arenstorf orbit (HNW I, §II.0) over one period with Dormand–Prince 5(4) and
//! prints how far the orbit is from closing, with the work statistics.
//!
//! `cargo run --release -p odeflow-solvers --example arenstorf`

use odeflow_solvers::problems::arenstorf;
use odeflow_solvers::{Integrator, Method, NoObserver, SolveOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut sys, y0, period) = arenstorf();
    println!("Arenstorf orbit, one period T = {period}, Dopri5");
    println!("{:>8} {:>12} {:>8} {:>9} {:>9}", "tol", "|y(T)-y0|", "NFE", "accepted", "rejected");
    let mut integ = Integrator::new(Method::Dopri5, SolveOptions::default())?;
    for tol in [1e-4, 1e-6, 1e-8, 1e-10, 1e-12] {
        integ.set_options(SolveOptions::tol(tol, tol))?;
        let mut y = y0;
        let stats = integ.integrate(&mut sys, 0.0, period, &mut y, &mut NoObserver)?;
        let err = y.iter().zip(&y0).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        println!(
            "{tol:>8.0e} {err:>12.3e} {:>8} {:>9} {:>9}",
            stats.n_rhs, stats.n_accepted, stats.n_rejected
        );
    }
    Ok(())
}
