//! A solve's continuous solution: every accepted step's interpolant, kept to be evaluated at
//! any time afterwards.

use std::ops::ControlFlow;

use crate::observer::{hairer_eval, poly_eval, DenseRows};
use crate::{Observer, Real, SolveError, StepView};

/// The continuous solution `y(t)` of a solve, recorded as an [`Observer`]: each accepted
/// step's dense-output coefficients (the method's own interpolant,
/// [`DenseOutput`](crate::DenseOutput)), evaluated afterwards at any time of the solved span
/// by [`DenseSolution::eval`]: SciPy's `dense_output=True`, diffrax's `SaveAt(dense=True)`.
///
/// - Values at a time inside a step are the interpolant's, bit-identical to
///   [`Integrator::integrate_at`](crate::Integrator::integrate_at) at the same time; at a step
///   boundary and at the end they are the solver's states, exactly.
/// - A step that starts where the record ends (at the same time, in the same direction, of
///   the same dimension and method family) extends the record; any other step starts a new
///   one. So solves restarted from an event's time, with
///   a changed state (a bounce, an impulse), join into one piecewise solution, which is
///   continuous from the right (in the direction of integration) at each restart.
/// - It keeps `k·dim + 2` numbers per step for an interpolant of `k` rows (Dormand–Prince
///   5(4) and Tsitouras 5(4): 5, DOP853: 8, Bogacki–Shampine and the fixed-step methods'
///   Hermite cubic: 4), and grows its buffers as a vector does; after
///   [`DenseSolution::clear`] a solve of no more steps allocates nothing.
/// - A solve that fails leaves the steps it took before failing in the record.
/// - Recording costs, on Lorenz's system over t ∈ [0, 100] against the plain solve
///   (`cargo bench -p odeflow-solvers --bench events`, one run), +9% with Dormand–Prince 5(4)
///   at 1e-8 and +28% with DOP853 at 1e-10 (whose three dense-output stages are most of it).
///
/// ```
/// use odeflow_solvers::{problems::Harmonic, DenseSolution, Integrator, Method, SolveOptions};
///
/// let mut sol = DenseSolution::new();
/// let mut integ = Integrator::new(Method::Dopri5, SolveOptions::tol(1e-10, 1e-10)).unwrap();
/// let mut y = [1.0, 0.0]; // x = cos t
/// integ.integrate(&mut Harmonic { omega: 1.0 }, 0.0, 10.0, &mut y, &mut sol).unwrap();
/// let mut at = [0.0; 2];
/// sol.eval(2.5, &mut at).unwrap();
/// assert!((at[0] - 2.5f64.cos()).abs() < 1e-8);
/// assert!(sol.eval(10.5, &mut at).is_err()); // outside the solved span
/// ```
#[derive(Debug, Clone, Default)]
pub struct DenseSolution<T> {
    dim: usize,
    /// Whether the rows are in polynomial form (else Hairer's); one form per record.
    poly: bool,
    /// Rows of the interpolant per step.
    rows_per_step: usize,
    /// Each step's start time.
    starts: Vec<T>,
    /// Each step's θ scale (its h, or the whole step's h for one cut at an event).
    hs: Vec<T>,
    /// Each step's rows, `rows_per_step × dim`.
    rows: Vec<T>,
    /// The record's end time and state.
    t_end: Option<T>,
    y_end: Vec<T>,
    /// The last step came without dense output (an observer around this one declined it).
    unavailable: bool,
}

impl<T: Real> DenseSolution<T> {
    /// An empty record.
    pub fn new() -> Self {
        DenseSolution {
            dim: 0,
            poly: false,
            rows_per_step: 0,
            starts: Vec::new(),
            hs: Vec::new(),
            rows: Vec::new(),
            t_end: None,
            y_end: Vec::new(),
            unavailable: false,
        }
    }

    /// Forgets every step, keeping the memory.
    pub fn clear(&mut self) {
        self.starts.clear();
        self.hs.clear();
        self.rows.clear();
        self.y_end.clear();
        self.t_end = None;
        self.unavailable = false;
    }

    /// The span `(t_start, t_end)` recorded (in the direction of integration), or `None`.
    pub fn span(&self) -> Option<(T, T)> {
        Some((*self.starts.first()?, self.t_end?))
    }

    /// The number of steps recorded.
    pub fn n_steps(&self) -> usize {
        self.starts.len()
    }

    /// The state dimension (0 before anything is recorded).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Each recorded step's start time, in the direction of integration.
    pub fn step_starts(&self) -> &[T] {
        &self.starts
    }

    /// Writes `y(t)` into `out`.
    ///
    /// # Errors
    ///
    /// [`SolveError::InvalidTime`] if `t` is not finite or lies outside the recorded span
    /// (or nothing is recorded), [`SolveError::DimensionMismatch`] if `out` is not as long as
    /// the state, [`SolveError::DenseOutputUnavailable`] if the solve ran with dense output
    /// declined (by an observer wrapping this one).
    pub fn eval(&self, t: T, out: &mut [T]) -> Result<(), SolveError> {
        if self.unavailable {
            return Err(SolveError::DenseOutputUnavailable);
        }
        let Some((t0, t1)) = self.span().filter(|_| t.is_finite()) else {
            return Err(SolveError::InvalidTime { t: t.to_f64c() });
        };
        if out.len() != self.dim {
            return Err(SolveError::DimensionMismatch { expected: self.dim, found: out.len() });
        }
        let dir = if t1 >= t0 { T::one() } else { -T::one() };
        if (t - t0) * dir < T::zero() || (t - t1) * dir > T::zero() {
            return Err(SolveError::InvalidTime { t: t.to_f64c() });
        }
        if t == t1 {
            out.copy_from_slice(&self.y_end);
            return Ok(());
        }
        // The last step starting at or before t: a boundary time reads the later step's
        // start, its exact state.
        let i = self.starts.partition_point(|&s| (s - t) * dir <= T::zero()) - 1;
        let n = self.dim;
        let size = self.rows_per_step * n;
        let rows = &self.rows[i * size..(i + 1) * size];
        let theta = (t - self.starts[i]) / self.hs[i];
        if self.poly {
            poly_eval(rows, n, theta, out);
        } else {
            hairer_eval(rows, n, theta, out);
        }
        Ok(())
    }

    /// Evaluates at each of `times`, into `out[k·dim..(k+1)·dim]` for time `k`.
    ///
    /// # Errors
    ///
    /// Those of [`DenseSolution::eval`] (at the first bad time; earlier rows are written), and
    /// [`SolveError::DimensionMismatch`] if `out` is not `times.len()·dim` long.
    pub fn eval_many(&self, times: &[T], out: &mut [T]) -> Result<(), SolveError> {
        let n = self.dim;
        if Some(out.len()) != times.len().checked_mul(n) {
            return Err(SolveError::DimensionMismatch {
                expected: times.len().saturating_mul(n),
                found: out.len(),
            });
        }
        for (k, &t) in times.iter().enumerate() {
            self.eval(t, &mut out[k * n..(k + 1) * n])?;
        }
        Ok(())
    }
}

impl<T: Real> Observer<T> for DenseSolution<T> {
    fn on_step(&mut self, step: &StepView<'_, T>) -> ControlFlow<()> {
        let (rows, poly) = match step.dense {
            DenseRows::Hairer(r) => (r, false),
            DenseRows::Poly(r) => (r, true),
            // Only where a wrapping observer declined dense output: nothing can be kept, and
            // evaluations say so (the solve goes on).
            DenseRows::None => {
                self.clear();
                self.unavailable = true;
                return ControlFlow::Continue(());
            }
        };
        let n = step.y_start.len();
        let per_step = rows.len().checked_div(n).unwrap_or(0);
        // (By the interpolant's step: a step cut at an event can have length 0.)
        let same_direction =
            self.hs.last().is_some_and(|&h| (h > T::zero()) == (step.h_dense > T::zero()));
        let continues = self.t_end == Some(step.t_start)
            && same_direction
            && self.dim == n
            && self.poly == poly
            && self.rows_per_step == per_step;
        if !continues {
            // (After a step without dense output the record is empty: t_end is None.)
            self.clear();
            self.dim = n;
            self.poly = poly;
            self.rows_per_step = per_step;
        }
        self.starts.push(step.t_start);
        self.hs.push(step.h_dense);
        self.rows.extend_from_slice(rows);
        self.y_end.clear();
        self.y_end.extend_from_slice(step.y_end);
        self.t_end = Some(step.t_end);
        ControlFlow::Continue(())
    }
}
