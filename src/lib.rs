//! odeflow: continuous normalizing flows and neural ODEs.

pub use odeflow_solvers as solvers;

pub mod io;
pub mod plot;
