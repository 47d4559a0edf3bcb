//! Explicit Runge–Kutta integrators for odeflow: adaptive step control, dense output and a
//! reusable, allocation-free workspace, on one flat state buffer.
//!
//! # A guided tour
//!
//! 1. **The system.** Implement [`OdeSystem`] (or wrap a closure in [`FnSystem`]): it writes
//!    `f(t, y)` into a caller buffer. A batch of B states of dimension d is one buffer of
//!    B·d numbers. [`OdeSystem::error_components`] chooses which components the error norm
//!    sees (a seminorm); [`OdeSystem::passive_components`] names quadratures the right-hand
//!    side never reads (an adjoint's parameter cotangent, a CNF's log-density), which are
//!    then formed only in each step's solution, not in every stage state;
//!    [`OdeSystem::rhs_error_part`] may skip the other components where the integrator
//!    reads only the error components (the initial-step probe), and
//!    [`OdeSystem::rhs_active_part`] the passive ones where a stage's derivative reaches
//!    only later stage states (Dormand–Prince 5(4)'s stage 2, DOP853's stages 2–5).
//! 2. **The method.** [`Method`] selects Euler, midpoint, Heun, RK4 (fixed step) or
//!    Bogacki–Shampine 3(2), Dormand–Prince 5(4), Tsitouras 5(4), DOP853 (adaptive); its
//!    [`Tableau`] is public `const` data with a citation.
//! 3. **The options.** [`SolveOptions`] (rtol, atol, first/min/max step, max steps, fixed
//!    step) with `Default` and [`SolveOptions::validate`]. The error of a step is measured in
//!    the mixed RMS norm `sqrt(mean_i (e_i / (atol_i + rtol·max(|y0_i|, |y1_i|)))²)` and the
//!    step size chosen by the [`PiController`] (HNW I §II.4).
//! 4. **The solve.** [`solve`] in one call, or an [`Integrator`] that owns every buffer and
//!    integrates in place, forward or backward ([`Integrator::integrate`]), or at requested
//!    output times through dense output ([`Integrator::integrate_at`]), or watching events
//!    ([`Integrator::integrate_events`]: the zero crossings of functions `g(t, y)`, located
//!    on the dense output, recorded, and ending the solve where one is terminal; see
//!    [`Events`]). An [`Observer`] sees every accepted step through a [`StepView`] (end
//!    points, step size and the interpolant); the [`DenseSolution`] observer keeps every
//!    step's interpolant, to evaluate `y(t)` anywhere in the span after the solve.
//! 5. **The result.** [`Stats`] counts right-hand-side calls and accepted/rejected steps;
//!    failures are a [`SolveError`] that carries the numbers (t, h, …), never a panic.
//! 6. **Reference problems** with exact or reference solutions live in [`problems`].
//!
//! # Design notes
//!
//! - *In place, one workspace.* [`Integrator`] owns every buffer (stages `s × dim`, candidate,
//!   error, dense-output rows). They grow on the first solve of a given size and are reused;
//!   nothing inside [`Integrator::integrate`] allocates (a counting-allocator test checks it).
//! - *Backward in time* by the sign of h: the same code path, `t1 < t0`.
//! - *Tableaux are run-time data*, converted to `T` once per integrator with their zero
//!   coefficients dropped. The stage sums `y + h Σ_j a_ij k_j` run as const-size kernels for
//!   states of 1–8 numbers (vectorised like a stack vector), a fused scalar loop up to 32,
//!   and streaming passes over four stages at a time beyond (the batched CNF state). With
//!   that, the per-step overhead matches `ode_solvers` with a stack `SVector` (see
//!   `benches/vs_ode_solvers.rs`), without one type per method.
//! - *Stepping follows Hairer's codes*: the same controller constants and formulas as
//!   `dopri5.f`/`dop853.f` (Dopri5 takes the same step sequence as `ode_solvers`), with the
//!   initial-step heuristic evaluated in the RMS norm.
//! - *f32* works for every method; DOP853's large, cancelling coefficients limit it to about
//!   1e-4 in f32.
//!
//! ```
//! use odeflow_solvers::{Integrator, Method, NoObserver, SolveOptions, problems};
//!
//! // Arenstorf's orbit is periodic: after one period it returns to its start.
//! let (mut sys, y0, period) = problems::arenstorf();
//! let opts = SolveOptions { rtol: 1e-10, atol: 1e-10.into(), ..Default::default() };
//! let mut integ = Integrator::new("dopri5".parse::<Method>().unwrap(), opts).unwrap();
//! let mut y = y0;
//! let stats = integ.integrate(&mut sys, 0.0, period, &mut y, &mut NoObserver).unwrap();
//! let err = y.iter().zip(&y0).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
//! assert!(err < 1e-5, "orbit error {err}");
//! assert_eq!(stats.n_rhs, 6 * stats.n_steps() + 2); // FSAL: 6 per step + f(y0) + h0 guess
//! ```

mod controller;
mod event;
mod integrator;
mod observer;
mod options;
pub mod problems;
mod real;
mod solution;
mod system;
pub mod tableau;

pub use controller::{Decision, PiController, StepController};
pub use event::{Crossing, EventHit, EventSolve, EventSpec, Events};
pub use integrator::{solve, solve_into, Integrator};
pub use observer::{FnObserver, NoObserver, Observer, StepView};
pub use options::{Atol, InitialStepOrder, SolveError, SolveOptions, Stats};
pub use real::Real;
pub use solution::DenseSolution;
pub use system::{FnSystem, OdeSystem};
pub use tableau::{DenseOutput, ErrorEstimator, Method, ParseMethodError, Tableau};
