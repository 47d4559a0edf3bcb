//! A wrapper that counts the calls made to a field.

use std::sync::atomic::{AtomicU64, Ordering};

use super::error::FieldError;
use super::{AugmentedVjp, Divergence, JacobianTerm, Real, VectorField};

/// Work statistics of a field: how many batched calls of each kind were made, and how many
/// samples they covered (a call on a batch of B counts once in `n_*` and B in `n_samples`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FieldStats {
    /// [`VectorField::eval`] calls.
    pub n_eval: u64,
    /// [`VectorField::eval_div`] calls.
    pub n_eval_div: u64,
    /// [`VectorField::jvp`] calls.
    pub n_jvp: u64,
    /// [`VectorField::vjp`] calls.
    pub n_vjp: u64,
    /// [`VectorField::vjp_aug`] and [`VectorField::vjp_aug_jac`] calls (the same fused pass).
    pub n_vjp_aug: u64,
    /// Samples over all calls, `Σ_calls B`.
    pub n_samples: u64,
}

/// Wraps a [`VectorField`] and counts every call that returns `Ok` (the counters are atomics,
/// so the wrapper stays `Sync` and the counts cannot drift from the calls made).
#[derive(Debug, Default)]
pub struct CountingField<F> {
    inner: F,
    counts: [AtomicU64; 6],
}

impl<F> CountingField<F> {
    /// Wraps `inner` with all counters at 0.
    pub fn new(inner: F) -> Self {
        CountingField { inner, counts: Default::default() }
    }

    /// The wrapped field.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    /// The wrapped field, mutably (e.g. to update parameters).
    pub fn inner_mut(&mut self) -> &mut F {
        &mut self.inner
    }

    /// The counts so far.
    pub fn stats(&self) -> FieldStats {
        let c = |i: usize| self.counts[i].load(Ordering::Relaxed);
        FieldStats {
            n_eval: c(0),
            n_eval_div: c(1),
            n_jvp: c(2),
            n_vjp: c(3),
            n_vjp_aug: c(4),
            n_samples: c(5),
        }
    }

    /// Sets every counter to 0.
    pub fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn count<R>(
        &self,
        kind: usize,
        samples: usize,
        r: Result<R, FieldError>,
    ) -> Result<R, FieldError> {
        if r.is_ok() {
            self.counts[kind].fetch_add(1, Ordering::Relaxed);
            self.counts[5].fetch_add(samples as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: Real, F: VectorField<T>> VectorField<T> for CountingField<F> {
    type Workspace = F::Workspace;

    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn n_params(&self) -> usize {
        self.inner.n_params()
    }

    fn params(&self) -> &[T] {
        self.inner.params()
    }

    fn params_mut(&mut self) -> &mut [T] {
        self.inner.params_mut()
    }

    fn workspace(&self, batch: usize) -> F::Workspace {
        self.inner.workspace(batch)
    }

    fn recycle(&self, ws: F::Workspace) {
        self.inner.recycle(ws);
    }

    fn eval(&self, t: T, z: &[T], f: &mut [T], ws: &mut F::Workspace) -> Result<(), FieldError> {
        let b = z.len() / self.inner.dim().max(1);
        self.count(0, b, self.inner.eval(t, z, f, ws))
    }

    fn eval_div(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        f: &mut [T],
        q: &mut [T],
        jac_sq: Option<&mut [T]>,
        ws: &mut F::Workspace,
    ) -> Result<(), FieldError> {
        let b = z.len() / self.inner.dim().max(1);
        self.count(1, b, self.inner.eval_div(t, z, div, f, q, jac_sq, ws))
    }

    fn jvp(
        &self,
        t: T,
        z: &[T],
        v: &[T],
        f: &mut [T],
        jv: &mut [T],
        ws: &mut F::Workspace,
    ) -> Result<(), FieldError> {
        let b = z.len() / self.inner.dim().max(1);
        self.count(2, b, self.inner.jvp(t, z, v, f, jv, ws))
    }

    fn vjp(
        &self,
        t: T,
        z: &[T],
        a: &[T],
        f: &mut [T],
        z_cot: &mut [T],
        theta_cot: Option<&mut [T]>,
        ws: &mut F::Workspace,
    ) -> Result<T, FieldError> {
        let b = z.len() / self.inner.dim().max(1);
        self.count(3, b, self.inner.vjp(t, z, a, f, z_cot, theta_cot, ws))
    }

    fn vjp_aug(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        a: &[T],
        c: &[T],
        out: AugmentedVjp<'_, T>,
        ws: &mut F::Workspace,
    ) -> Result<T, FieldError> {
        let b = z.len() / self.inner.dim().max(1);
        self.count(4, b, self.inner.vjp_aug(t, z, div, a, c, out, ws))
    }

    fn vjp_aug_jac(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        a: &[T],
        c: &[T],
        jac: JacobianTerm<'_, T>,
        out: AugmentedVjp<'_, T>,
        ws: &mut F::Workspace,
    ) -> Result<T, FieldError> {
        let b = z.len() / self.inner.dim().max(1);
        self.count(4, b, self.inner.vjp_aug_jac(t, z, div, a, c, jac, out, ws))
    }
}
