//! odeflow: continuous normalizing flows and neural ODEs.

pub use odeflow_solvers as solvers;

pub mod field;

pub use field::Real;
