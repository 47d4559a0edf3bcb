//! Observing accepted steps, with dense output.

use std::ops::ControlFlow;

use crate::{Real, SolveError};

/// Sees every accepted step; return `ControlFlow::Break(())` to end the solve early (the
/// state is then the step's end point).
pub trait Observer<T: Real> {
    /// Whether [`StepView::interpolate`] will be used; `false` lets DOP853 skip its three
    /// dense-output stages and the fixed-step methods skip `f(t1, y1)`. Default `true`.
    fn wants_dense(&self) -> bool {
        true
    }
    /// Called after each accepted step.
    fn on_step(&mut self, step: &StepView<'_, T>) -> ControlFlow<()>;
}

/// An observer that does nothing and wants no dense output.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl<T: Real> Observer<T> for NoObserver {
    fn wants_dense(&self) -> bool {
        false
    }
    #[inline]
    fn on_step(&mut self, _step: &StepView<'_, T>) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// An observer from a closure `|step: &StepView<T>| -> ControlFlow<()>` (wants dense output).
#[derive(Debug, Clone, Copy)]
pub struct FnObserver<F>(pub F);

impl<T: Real, F: FnMut(&StepView<'_, T>) -> ControlFlow<()>> Observer<T> for FnObserver<F> {
    fn on_step(&mut self, step: &StepView<'_, T>) -> ControlFlow<()> {
        (self.0)(step)
    }
}

/// The dense-output coefficients of one accepted step (rows of `dim` values each).
#[derive(Debug, Clone, Copy)]
pub(crate) enum DenseRows<'a, T> {
    /// Hairer's form: rows r1…rm.
    Hairer(&'a [T]),
    /// Polynomial form: rows q0 = y0, q1…qm with y(θ) = Σ_p θ^p q_p.
    Poly(&'a [T]),
    /// Not computed.
    None,
}

/// One accepted step from `t_start` to `t_end = t_start + h` (h < 0 backward).
#[derive(Debug, Clone, Copy)]
pub struct StepView<'a, T> {
    pub(crate) t_start: T,
    pub(crate) t_end: T,
    pub(crate) h: T,
    /// The step size the interpolant's θ is measured in: `h`, except in a step cut short at
    /// an event (where `t_end` is the event time and the rows are the whole step's).
    pub(crate) h_dense: T,
    pub(crate) y_start: &'a [T],
    pub(crate) y_end: &'a [T],
    pub(crate) dense: DenseRows<'a, T>,
}

impl<'a, T: Real> StepView<'a, T> {
    /// Start time of the step.
    pub fn t_start(&self) -> T {
        self.t_start
    }
    /// End time of the step.
    pub fn t_end(&self) -> T {
        self.t_end
    }
    /// Signed step size `t_end − t_start` (as taken by the method; the last step of a solve
    /// ends exactly at t1).
    pub fn h(&self) -> T {
        self.h
    }
    /// State at `t_start`.
    pub fn y_start(&self) -> &'a [T] {
        self.y_start
    }
    /// State at `t_end`.
    pub fn y_end(&self) -> &'a [T] {
        self.y_end
    }
    /// Writes the dense-output interpolant at `t` into `out` (`t` should lie in the step;
    /// outside it the polynomial extrapolates). See [`DenseOutput`](crate::DenseOutput) for
    /// the formulas.
    ///
    /// # Errors
    ///
    /// [`SolveError::InvalidTime`] if `t` is not finite (NaN or infinite: nothing to
    /// extrapolate to), [`SolveError::DimensionMismatch`] if `out` is not as long as the
    /// state, [`SolveError::DenseOutputUnavailable`] if the observer declined dense output.
    pub fn interpolate(&self, t: T, out: &mut [T]) -> Result<(), SolveError> {
        let n = self.y_start.len();
        if out.len() != n {
            return Err(SolveError::DimensionMismatch { expected: n, found: out.len() });
        }
        if !t.is_finite() {
            return Err(SolveError::InvalidTime { t: t.to_f64c() });
        }
        self.interpolate_theta((t - self.t_start) / self.h_dense, out)
    }

    /// The interpolant at `t_start + θ·h_dense` (`out` as long as the state), or
    /// [`SolveError::DenseOutputUnavailable`].
    pub(crate) fn interpolate_theta(&self, theta: T, out: &mut [T]) -> Result<(), SolveError> {
        let n = out.len();
        match self.dense {
            DenseRows::Hairer(rows) => hairer_eval(rows, n, theta, out),
            DenseRows::Poly(rows) => poly_eval(rows, n, theta, out),
            DenseRows::None => return Err(SolveError::DenseOutputUnavailable),
        }
        Ok(())
    }
}

/// Evaluates Hairer's nested form `r1 + θ(r2 + (1−θ)(r3 + θ(r4 + …)))`.
pub(crate) fn hairer_eval<T: Real>(rows: &[T], n: usize, theta: T, out: &mut [T]) {
    if n == 0 {
        return; // an empty state: nothing to interpolate
    }
    let m = rows.len() / n;
    let th1 = T::one() - theta;
    let last = &rows[(m - 1) * n..m * n];
    out.copy_from_slice(last);
    for r in (0..m - 1).rev() {
        let mult = if r % 2 == 0 { theta } else { th1 };
        let row = &rows[r * n..(r + 1) * n];
        for (o, &x) in out.iter_mut().zip(row) {
            *o = x + mult * *o;
        }
    }
}

/// Evaluates `Σ_p θ^p q_p` by Horner's rule.
pub(crate) fn poly_eval<T: Real>(rows: &[T], n: usize, theta: T, out: &mut [T]) {
    if n == 0 {
        return; // an empty state: nothing to interpolate
    }
    let m = rows.len() / n;
    out.copy_from_slice(&rows[(m - 1) * n..m * n]);
    for r in (0..m - 1).rev() {
        let row = &rows[r * n..(r + 1) * n];
        for (o, &x) in out.iter_mut().zip(row) {
            *o = x + theta * *o;
        }
    }
}
