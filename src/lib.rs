//! odeflow: continuous normalizing flows and neural ODEs.

pub use odeflow_solvers as solvers;

pub mod adjoint;
pub mod cnf;
mod error;
pub mod field;
pub mod flows;
pub mod io;
pub mod plot;
mod pool;
mod spare_integrators;
pub mod trace;
pub mod train;
pub mod workprecision;

pub use error::Error;
pub use field::Real;

/// The README's code examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
