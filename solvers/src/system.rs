//! The right-hand side of an ODE system `dy/dt = f(t, y)` on one flat buffer.

use std::ops::Range;

use crate::{Real, SolveError};

/// `dy/dt = f(t, y)` on one flat buffer; a batch of B states of dimension d is one buffer of
/// B·d numbers.
pub trait OdeSystem<T: Real = f64> {
    /// Length of the state.
    fn dim(&self) -> usize;
    /// Writes f(t, y) into `dy` (`y.len() == dy.len() == dim()`). Should not allocate: it is
    /// called once per stage.
    fn rhs(&mut self, t: T, y: &[T], dy: &mut [T]);
    /// The components the adaptive error norm sees (the rest are integrated but not
    /// error-controlled: a seminorm, as the adjoint wants for its parameter cotangent).
    /// Must lie within `0..dim()` (else [`SolveError::InvalidErrorComponents`]). An empty
    /// range turns error control off (every step is accepted, growing to `h_max`): meant
    /// only for a system whose controlled part is empty, such as the adjoint of an empty
    /// batch, whose parameter cotangent then has derivative zero.
    fn error_components(&self) -> Range<usize> {
        0..self.dim()
    }
    /// Components that `rhs` never reads (its output does not depend on them): a quadrature
    /// riding along with the solve, such as the adjoint's parameter cotangent
    /// `dg/dt = −∂Φ/∂θ(t, z, a)`. The integrators form them only in each step's solution
    /// (`y + h Σ b_i k_i`), not in the intermediate stage states `y + h Σ_j a_ij k_j`, which
    /// saves most of the solver's own work on a long quadrature; the results are
    /// bit-identical to declaring none. Default: none. Must lie within `0..dim()`.
    fn passive_components(&self) -> Range<usize> {
        0..0
    }
    /// Writes at least the [`error_components`](Self::error_components) of f(t, y) into `dy`
    /// (the others may be left with any value). The integrators call it where nothing else
    /// is read: the initial-step heuristic's probe `f(t₀ + h₀, y₀ + h₀ f₀)`, which only
    /// enters the norms of `f₁ − f₀`. A system whose error components cost less alone
    /// overrides it: the adjoint with the seminorm skips its parameter cotangent (the
    /// weight-gradient GEMMs, a third of a VJP). It counts as one evaluation in the
    /// statistics. Default: [`rhs`](Self::rhs).
    fn rhs_error_part(&mut self, t: T, y: &[T], dy: &mut [T]) {
        self.rhs(t, y, dy)
    }
    /// Writes at least the components outside
    /// [`passive_components`](Self::passive_components) of f(t, y) into `dy` (the passive
    /// ones may be left with any value). The integrators call it for the stages whose
    /// derivative reaches nothing but later stage states: a zero weight in the solution
    /// (`b_i = 0`), in the error estimate and in the dense output, and not the FSAL stage
    /// (Dormand–Prince 5(4)'s stage 2, DOP853's stages 2–5). Such a stage's quadrature
    /// derivative is never read, so a system whose passive part costs extra skips it: a
    /// CNF's divergence (two thirds of an evaluation with the exact 2-D trace), the
    /// adjoint's weight gradient. A solve's results are bit-identical to calling
    /// [`rhs`](Self::rhs) there (as long as `rhs` honours the passive range); the call
    /// counts as one evaluation in [`Stats::n_rhs`](crate::Stats::n_rhs) and in
    /// [`Stats::n_rhs_active`](crate::Stats::n_rhs_active). Default: [`rhs`](Self::rhs).
    fn rhs_active_part(&mut self, t: T, y: &[T], dy: &mut [T]) {
        self.rhs(t, y, dy)
    }
}

impl<T: Real, S: OdeSystem<T> + ?Sized> OdeSystem<T> for &mut S {
    fn dim(&self) -> usize {
        (**self).dim()
    }
    fn rhs(&mut self, t: T, y: &[T], dy: &mut [T]) {
        (**self).rhs(t, y, dy)
    }
    fn error_components(&self) -> Range<usize> {
        (**self).error_components()
    }
    fn passive_components(&self) -> Range<usize> {
        (**self).passive_components()
    }
    fn rhs_error_part(&mut self, t: T, y: &[T], dy: &mut [T]) {
        (**self).rhs_error_part(t, y, dy)
    }
    fn rhs_active_part(&mut self, t: T, y: &[T], dy: &mut [T]) {
        (**self).rhs_active_part(t, y, dy)
    }
}

/// An [`OdeSystem`] from a closure `|t, y, dy| …`.
///
/// ```
/// use odeflow_solvers::{FnSystem, OdeSystem};
/// let mut decay = FnSystem::new(1, |_t: f64, y: &[f64], dy: &mut [f64]| dy[0] = -y[0]);
/// let mut dy = [0.0];
/// decay.rhs(0.0, &[2.0], &mut dy);
/// assert_eq!(dy, [-2.0]);
/// ```
#[derive(Debug, Clone)]
pub struct FnSystem<F> {
    dim: usize,
    f: F,
    error_components: Option<Range<usize>>,
}

impl<F> FnSystem<F> {
    /// A system of dimension `dim` with right-hand side `f(t, y, dy)`.
    pub fn new(dim: usize, f: F) -> Self {
        FnSystem { dim, f, error_components: None }
    }
    /// Restricts the error norm to `range` (a seminorm); see [`OdeSystem::error_components`].
    ///
    /// # Errors
    ///
    /// [`SolveError::InvalidErrorComponents`] if `range` does not lie within `0..dim`, or is
    /// empty while `dim > 0` (that would turn error control off: no component measured).
    ///
    /// ```
    /// use odeflow_solvers::FnSystem;
    /// let f = |_t: f64, y: &[f64], dy: &mut [f64]| dy.copy_from_slice(y);
    /// assert!(FnSystem::new(2, f).with_error_components(0..1).is_ok());
    /// assert_eq!(
    ///     FnSystem::new(2, f).with_error_components(1..1).err().map(|e| e.to_string()),
    ///     Some("invalid error components 1..1 for a state of dimension 2".into())
    /// );
    /// ```
    pub fn with_error_components(mut self, range: Range<usize>) -> Result<Self, SolveError> {
        let dim = self.dim;
        if range.start > range.end || range.end > dim || (range.is_empty() && dim > 0) {
            let (start, end) = (range.start, range.end);
            return Err(SolveError::InvalidErrorComponents { start, end, dim });
        }
        self.error_components = Some(range);
        Ok(self)
    }
}

impl<T: Real, F: FnMut(T, &[T], &mut [T])> OdeSystem<T> for FnSystem<F> {
    fn dim(&self) -> usize {
        self.dim
    }
    #[inline]
    fn rhs(&mut self, t: T, y: &[T], dy: &mut [T]) {
        (self.f)(t, y, dy)
    }
    fn error_components(&self) -> Range<usize> {
        self.error_components.clone().unwrap_or(0..self.dim)
    }
}
