//! Integrators kept between the solves of one model, so that repeated solves (a training
//! loop, log-densities batch after batch) reuse their buffers.
//!
//! An integrator's workspace is about 17 state-sized buffers; the adjoint of W4's d = 64 net
//! carries a state of 200,000 values (z, a_z and 167,000 parameter cotangents), 27 MB of
//! buffers that a fresh integrator allocates, zero-fills and page-faults on every backward
//! pass: measured, 10% of that backward pass, on one core while the other waited.

use std::sync::Mutex;

use odeflow_solvers::{Integrator, Method, PiController, SolveError, SolveOptions};

use crate::field::Real;

/// How many integrators a model keeps (a forward and a backward one per strategy in use).
const KEEP: usize = 4;
/// The longest state whose integrator is kept (about 70 MB of f64 buffers): training
/// batches and W4's adjoint (200,000) are, a log-density of millions of points in one call
/// is not held on to.
const KEEP_MAX_DIM: usize = 1 << 19;

/// Integrators handed back after a solve, taken again by the next solve with the same
/// method. Results do not depend on reuse: every solve resets the step-size controller, and
/// the buffers are overwritten before they are read.
pub(crate) struct SpareIntegrators<T: Real>(Mutex<Vec<Integrator<T>>>);

impl<T: Real> Default for SpareIntegrators<T> {
    fn default() -> Self {
        SpareIntegrators(Mutex::new(Vec::new()))
    }
}

impl<T: Real> Clone for SpareIntegrators<T> {
    /// An empty set: a copy of a model does not copy its spare buffers.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<T: Real> std::fmt::Debug for SpareIntegrators<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |v| v.len());
        write!(f, "SpareIntegrators({n})")
    }
}

impl<T: Real> SpareIntegrators<T> {
    /// An integrator for `method` with `ctrl` and `opts` (validated), sized for states of
    /// length `dim` (0: left as it is): a kept one of the same method (preferring one already
    /// sized for `dim`), or a new one.
    pub(crate) fn take(
        &self,
        method: Method,
        ctrl: PiController<T>,
        opts: SolveOptions<T>,
        dim: usize,
    ) -> Result<Integrator<T>, SolveError> {
        let kept = self.0.lock().ok().and_then(|mut v| {
            let same = |g: &Integrator<T>| g.method() == method;
            let i = v
                .iter()
                .position(|g| same(g) && g.workspace_dim() == dim)
                .or_else(|| v.iter().position(same))?;
            Some(v.swap_remove(i))
        });
        let mut integ = match kept {
            Some(mut integ) => {
                integ.set_options(opts)?;
                *integ.controller_mut() = ctrl;
                integ
            }
            None => Integrator::with_controller(method, ctrl, opts)?,
        };
        if dim > 0 {
            integ.reserve(dim)?;
        }
        Ok(integ)
    }

    /// Keeps `integ` for a later [`SpareIntegrators::take`] (up to four are kept, each for a
    /// state of at most 2¹⁹ values).
    pub(crate) fn give(&self, integ: Integrator<T>) {
        if integ.workspace_dim() > KEEP_MAX_DIM {
            return;
        }
        if let Ok(mut v) = self.0.lock() {
            if v.len() < KEEP {
                v.push(integ);
            }
        }
    }
}
