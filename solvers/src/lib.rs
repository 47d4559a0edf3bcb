//! Explicit Runge–Kutta integrators for odeflow.

mod real;

pub use real::Real;
