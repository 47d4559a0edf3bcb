//! Options, statistics and errors of a solve.

use std::ops::AddAssign;

use crate::Real;

/// Absolute tolerance: one value for every component, or one per component.
#[derive(Debug, Clone, PartialEq)]
pub enum Atol<T> {
    /// The same `atol` for every component.
    Scalar(T),
    /// One `atol_i` per component (length must equal the system's `dim()`).
    PerComponent(Vec<T>),
}

impl<T> From<T> for Atol<T> {
    fn from(x: T) -> Self {
        Atol::Scalar(x)
    }
}

impl<T> From<Vec<T>> for Atol<T> {
    fn from(v: Vec<T>) -> Self {
        Atol::PerComponent(v)
    }
}

/// The exponent of the automatic first step (HNW I, §II.4, "Starting step size"): after
/// `d0 = ‖y0‖`, `d1 = ‖f0‖`, `h0 = 0.01·d0/d1` and `d2 = ‖f(t0 + h0, y0 + h0·f0) − f0‖/h0`
/// (all in the error norm), the rule takes `h1 = (0.01 / max(d1, d2))^(1/q)` and starts with
/// `min(100·h0, h1)`. For tolerances tight enough that `max(d1, d2) > 0.01`, a larger `q`
/// starts with a larger step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum InitialStepOrder {
    /// `q = p`, the method's order: `HINIT` with `IORD` in Hairer's `dopri5.f`/`dop853.f`
    /// (and `ode_solvers`). The default.
    #[default]
    Method,
    /// `q = p + 1`: the book's statement of the rule (`h1^(p+1)·max(d1, d2) = 0.01`) and
    /// diffrax's choice. On FFJORD's toy net it saves one step of the ramp-up of a sampling
    /// solve (see `CnfConfig::controller` in the `odeflow` crate for the measured effect).
    MethodPlusOne,
}

/// Options of a solve. Build with struct-update syntax:
/// `SolveOptions { rtol: 1e-8, atol: 1e-8.into(), ..Default::default() }`.
#[derive(Debug, Clone, PartialEq)]
pub struct SolveOptions<T> {
    /// Relative tolerance; finite and at least the machine epsilon of `T` (2.2e-16 for `f64`,
    /// 1.2e-7 for `f32`). Default `1e-6`.
    pub rtol: T,
    /// Absolute tolerance(s); finite and > 0. Default `Scalar(1e-9)`.
    pub atol: Atol<T>,
    /// First step size (its magnitude; the sign follows the direction of integration).
    /// `None` (default): Hairer's automatic initial step (HNW I, §II.4).
    pub h0: Option<T>,
    /// The order `q` of Hairer's automatic first step `h1 = (0.01 / max(d1, d2))^(1/q)`
    /// (used when `h0` is `None`). Default [`InitialStepOrder::Method`], as Hairer's codes.
    pub initial_step_order: InitialStepOrder,
    /// Smallest allowed |h|; ≥ 0. Default 0 (only the round-off bound
    /// `|h| ≤ 10·ε·|t|` applies). A step that must shrink below it fails with
    /// [`SolveError::StepSizeUnderflow`].
    pub h_min: T,
    /// Largest allowed |h|; `None` (default) means |t1 − t0|.
    pub h_max: Option<T>,
    /// Maximum number of attempted steps (accepted + rejected) per solve; ≥ 1.
    /// Default 100 000.
    pub max_steps: usize,
    /// Fixed step size (magnitude, > 0). Required for the fixed-step methods; when set for an
    /// adaptive method the error estimate is ignored and every step has this size (the last
    /// one is shortened to land on t1). Default `None`.
    pub h_fixed: Option<T>,
}

impl<T: Real> Default for SolveOptions<T> {
    fn default() -> Self {
        SolveOptions {
            rtol: T::from_f64c(1e-6),
            atol: Atol::Scalar(T::from_f64c(1e-9)),
            h0: None,
            initial_step_order: InitialStepOrder::Method,
            h_min: T::zero(),
            h_max: None,
            max_steps: 100_000,
            h_fixed: None,
        }
    }
}

impl<T: Real> SolveOptions<T> {
    /// Options with `rtol` and a scalar `atol`, the rest default.
    pub fn tol(rtol: T, atol: T) -> Self {
        SolveOptions { rtol, atol: Atol::Scalar(atol), ..Default::default() }
    }

    /// Options for a fixed step of size `h`, the rest default.
    pub fn fixed(h: T) -> Self {
        SolveOptions { h_fixed: Some(h), ..Default::default() }
    }

    /// Checks every field's range (the system's dimension is checked at `integrate`).
    pub fn validate(&self) -> Result<(), SolveError> {
        let pos = |x: T| x.is_finite() && x > T::zero();
        if !pos(self.rtol) {
            // The atol beside it, as given (a per-component atol's first entry).
            let atol = match &self.atol {
                Atol::Scalar(a) => shown(*a),
                Atol::PerComponent(v) => v.first().map_or(f64::NAN, |&a| shown(a)),
            };
            return Err(SolveError::InvalidTolerance { rtol: shown(self.rtol), atol });
        }
        if self.rtol < T::epsilon() {
            return Err(SolveError::ToleranceBelowPrecision {
                rtol: shown(self.rtol),
                scalar: T::NAME,
                epsilon: T::epsilon().to_f64c(),
            });
        }
        match &self.atol {
            Atol::Scalar(a) => {
                if !pos(*a) {
                    return Err(SolveError::InvalidTolerance {
                        rtol: shown(self.rtol),
                        atol: shown(*a),
                    });
                }
            }
            Atol::PerComponent(v) => {
                if let Some(a) = v.iter().copied().find(|a| !pos(*a)) {
                    return Err(SolveError::InvalidTolerance {
                        rtol: shown(self.rtol),
                        atol: shown(a),
                    });
                }
            }
        }
        let bad = |name: &'static str, x: T| SolveError::InvalidOption { name, value: shown(x) };
        if let Some(h) = self.h0 {
            if !pos(h) {
                return Err(bad("h0", h));
            }
        }
        if !(self.h_min.is_finite() && self.h_min >= T::zero()) {
            return Err(bad("h_min", self.h_min));
        }
        if let Some(h) = self.h_max {
            if !pos(h) || h < self.h_min {
                return Err(bad("h_max", h));
            }
        }
        if let Some(h) = self.h_fixed {
            if !pos(h) {
                return Err(bad("h_fixed", h));
            }
        }
        if self.max_steps == 0 {
            return Err(SolveError::InvalidOption { name: "max_steps", value: 0.0 });
        }
        Ok(())
    }
}

/// Work statistics of a solve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    /// Number of right-hand-side evaluations (including those of the initial-step
    /// heuristic and of dense output).
    pub n_rhs: usize,
    /// Of those, the calls of [`OdeSystem::rhs_active_part`](crate::OdeSystem::rhs_active_part)
    /// (stages whose derivative reaches only later stage states: one per step attempt for
    /// Dormand–Prince 5(4), four for DOP853), which a system with passive components may
    /// make cheaper.
    pub n_rhs_active: usize,
    /// Number of accepted steps.
    pub n_accepted: usize,
    /// Number of rejected steps (all of them; Hairer's codes do not count rejections before
    /// the first accepted step, so they may report fewer for the same step sequence).
    pub n_rejected: usize,
}

impl Stats {
    /// Accepted plus rejected steps.
    pub fn n_steps(&self) -> usize {
        self.n_accepted + self.n_rejected
    }
}

impl AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.n_rhs += o.n_rhs;
        self.n_rhs_active += o.n_rhs_active;
        self.n_accepted += o.n_accepted;
        self.n_rejected += o.n_rejected;
    }
}

/// `x` as the `f64` nearest its shortest decimal form, for messages: an `f32` tolerance of
/// `1e-8` then reads `1e-8`, not `9.99999993922529e-9` (its exact value widened).
pub(crate) fn shown<T: Real>(x: T) -> f64 {
    x.to_string().parse().unwrap_or_else(|_| x.to_f64c())
}

/// A number in an error message: as `Display` prints it where that is short (0, and
/// magnitudes in `[1e-4, 1e15)`), else in scientific notation (`1e-300`, not 300 digits).
struct Num(f64);

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = self.0.abs();
        if a == 0.0 || !a.is_finite() || (1e-4..1e15).contains(&a) {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{:e}", self.0)
        }
    }
}

/// Why a solve failed. Times and step sizes are reported as `f64` whatever the scalar type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SolveError {
    /// `rtol` or an `atol` is not finite or not positive (when `rtol` is at fault, `atol` is the
    /// one given beside it: the scalar, or a per-component atol's first entry).
    #[error("invalid tolerance: rtol = {}, atol = {} (both must be finite and > 0)", Num(*rtol), Num(*atol))]
    InvalidTolerance {
        /// The relative tolerance.
        rtol: f64,
        /// The offending absolute tolerance.
        atol: f64,
    },
    /// `rtol` is below the scalar type's machine epsilon: rounding alone errs by more, so no
    /// solution is that accurate, and the steps would only shrink toward the round-off limit
    /// (or, with an atol as small, the error norm overflow). MATLAB and SciPy raise any rtol
    /// below 100 ε to 100 ε, with a warning; the floor here is ε itself (f32 runs at 1e-5
    /// and 1e-6 sit below f32's 100 ε), and below it is an error, as other bad input.
    #[error(
        "rtol = {} is below the precision of {scalar} (machine epsilon {epsilon:.1e}): no \
         solution is that accurate",
        Num(*rtol)
    )]
    ToleranceBelowPrecision {
        /// The relative tolerance.
        rtol: f64,
        /// The scalar type's name (`f64` or `f32`).
        scalar: &'static str,
        /// Its machine epsilon.
        epsilon: f64,
    },
    /// Another option is out of range.
    #[error("invalid option {name} = {}", Num(*value))]
    InvalidOption {
        /// Field name in [`SolveOptions`].
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A setting of the step-size controller is out of range (`name` is the
    /// [`PiController`](crate::PiController) field; checked when an
    /// [`Integrator`](crate::Integrator) is built and at the start of every solve).
    #[error("invalid step controller setting {name} = {}: must be {expected}", Num(*value))]
    InvalidController {
        /// The setting's name.
        name: &'static str,
        /// Its value.
        value: f64,
        /// Its valid range, in words.
        expected: &'static str,
    },
    /// A step-size controller's [`Decision`](crate::Decision) carried a step size that is not
    /// finite and positive (`name` is `h_next` or `h_retry`).
    #[error(
        "the step controller returned {name} = {} at t = {} (a step size must be finite and > 0)",
        Num(*value),
        Num(*t)
    )]
    InvalidControllerStep {
        /// `h_next` (an accepted step) or `h_retry` (a rejected one).
        name: &'static str,
        /// The step size the controller returned.
        value: f64,
        /// The start of the step it decided on.
        t: f64,
    },
    /// A fixed-step method was asked to run without `h_fixed`.
    #[error("method {method} has no error estimate: set SolveOptions::h_fixed")]
    MissingStepSize {
        /// The method's name.
        method: &'static str,
    },
    /// A buffer's length does not match.
    #[error("dimension mismatch: expected {expected}, found {found}")]
    DimensionMismatch {
        /// Required length.
        expected: usize,
        /// Given length.
        found: usize,
    },
    /// `error_components()` is not within `0..dim()`, or (given to
    /// [`FnSystem::with_error_components`](crate::FnSystem::with_error_components)) is empty
    /// while `dim() > 0`.
    #[error("invalid error components {start}..{end} for a state of dimension {dim}")]
    InvalidErrorComponents {
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// The system's dimension.
        dim: usize,
    },
    /// `passive_components()` is not within `0..dim()`.
    #[error("passive components {start}..{end} out of range for dimension {dim}")]
    InvalidPassiveComponents {
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// The system's dimension.
        dim: usize,
    },
    /// A time is not finite, or output times are not monotone in the direction of integration.
    #[error("invalid time {}", Num(*t))]
    InvalidTime {
        /// The offending time.
        t: f64,
    },
    /// `t0 == t1` (no direction of integration), or no output times were requested.
    #[error("empty interval at t = {}", Num(*t))]
    EmptyInterval {
        /// The start time.
        t: f64,
    },
    /// The state or its derivative became NaN or infinite.
    #[error("non-finite state or derivative at t = {}", Num(*t))]
    NonFinite {
        /// The time of the last good state.
        t: f64,
    },
    /// The step size fell below `h_min` or the round-off limit.
    #[error("step size underflow at t = {}, h = {}", Num(*t), Num(*h))]
    StepSizeUnderflow {
        /// The time reached.
        t: f64,
        /// The step size that was too small.
        h: f64,
    },
    /// More than `max_steps` steps were attempted, or (a fixed-step method) would be needed:
    /// `t` is where the solve stopped (the start, for a fixed step refused up front).
    #[error(
        "too many steps: t1 is not reached within {max_steps} steps (SolveOptions::max_steps; \
         stopped at t = {})",
        Num(*t)
    )]
    TooManySteps {
        /// The time reached.
        t: f64,
        /// The limit.
        max_steps: usize,
    },
    /// The workspace for states of length `dim` (the stages, the candidate, the error and the
    /// dense-output rows, a few dozen times `dim` numbers) is larger than the address space
    /// allows, or the allocator refused it.
    #[error("the solver workspace for states of length {dim} is too large to allocate")]
    WorkspaceTooLarge {
        /// The state length asked for.
        dim: usize,
    },
    /// An event function returned a non-finite value (see [`Events`](crate::Events)).
    #[error("event function {index} is not finite at t = {}", Num(*t))]
    NonFiniteEvent {
        /// The event function's index.
        index: usize,
        /// The time it was evaluated at.
        t: f64,
    },
    /// [`crate::StepView::interpolate`] was called but the observer declined dense output.
    #[error("dense output was not computed (Observer::wants_dense returned false)")]
    DenseOutputUnavailable,
}
