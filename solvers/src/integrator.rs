//! The reusable integrator: one workspace, any number of solves.

use std::ops::Range;

use crate::event::Watch;
use crate::observer::{hairer_eval, poly_eval, DenseRows};
use crate::{
    Atol, DenseOutput, ErrorEstimator, EventSolve, Events, InitialStepOrder, Method, NoObserver,
    Observer, OdeSystem, PiController, Real, SolveError, SolveOptions, Stats, StepController,
    StepView, Tableau,
};

/// Nonzero coefficients of one linear combination: `(stage index, coefficient)`.
type Comb<T> = Vec<(usize, T)>;

/// The tableau converted to `T` once, with zero coefficients dropped.
#[derive(Debug, Clone)]
struct Coeffs<T> {
    stages: usize,
    total_stages: usize,
    c: Vec<T>,
    a: Vec<Comb<T>>,
    b: Comb<T>,
    e: Comb<T>,
    e3: Comb<T>,
    blended: bool,
    /// Rows of the dense output: Hairer `d_m` rows, or polynomial coefficients per power.
    dense_rows: Vec<Comb<T>>,
    poly: bool,
    fsal: bool,
    /// FSAL stage evaluated only after acceptance (its error coefficient is zero).
    lazy_last: bool,
    /// Per stage: its derivative reaches only later stage states (zero weight in the
    /// solution, the error estimates and the dense output; not stage 0, not the FSAL
    /// stage), so [`OdeSystem::rhs_active_part`] suffices.
    active_only: Vec<bool>,
    order: u8,
    error_order: Option<u8>,
}

fn comb<T: Real>(v: &[f64]) -> Comb<T> {
    v.iter()
        .enumerate()
        .filter(|(_, x)| x.abs() > 0.0)
        .map(|(j, &x)| (j, T::from_f64c(x)))
        .collect()
}

impl<T: Real> Coeffs<T> {
    fn new(tab: &Tableau) -> Self {
        let stages = tab.stages();
        let (e, e3, blended) = match tab.error {
            ErrorEstimator::None => (Vec::new(), Vec::new(), false),
            ErrorEstimator::Embedded { e } => (comb(e), Vec::new(), false),
            ErrorEstimator::Blended53 { e5, e3 } => (comb(e5), comb(e3), true),
        };
        let (dense_rows, poly, total_stages) = match tab.dense {
            DenseOutput::Hairer { d } => {
                let used = d
                    .iter()
                    .flat_map(|row| row.iter().enumerate().filter(|(_, x)| x.abs() > 0.0))
                    .map(|(j, _)| j + 1)
                    .max()
                    .unwrap_or(0)
                    .max(stages);
                (d.iter().map(|r| comb(r)).collect(), false, used)
            }
            DenseOutput::Polynomial { coeffs } => {
                let deg = coeffs.iter().map(|r| r.len()).max().unwrap_or(0);
                let rows = (0..deg)
                    .map(|p| {
                        let col: Vec<f64> =
                            coeffs.iter().map(|r| r.get(p).copied().unwrap_or(0.0)).collect();
                        comb(&col)
                    })
                    .collect();
                (rows, true, stages)
            }
        };
        let last = stages - 1;
        let lazy_last =
            tab.fsal && !e.iter().any(|&(j, _)| j == last) && !e3.iter().any(|&(j, _)| j == last);
        let b = comb(tab.b);
        let weighs = |i: usize| {
            [&b, &e, &e3].into_iter().chain(&dense_rows).any(|r| r.iter().any(|&(j, _)| j == i))
        };
        let active_only =
            (0..stages).map(|i| i > 0 && !(tab.fsal && i == last) && !weighs(i)).collect();
        Coeffs {
            stages,
            total_stages,
            c: tab.c.iter().map(|&x| T::from_f64c(x)).collect(),
            a: tab.a.iter().map(|r| comb(r)).collect(),
            b,
            e,
            e3,
            blended,
            dense_rows,
            poly,
            fsal: tab.fsal,
            lazy_last,
            active_only,
            order: tab.order,
            error_order: tab.error_order,
        }
    }

    /// `k = error_order + 1` (the order for a fixed-step method), as the controller sees it.
    fn k_order(&self) -> u8 {
        self.error_order.map_or(self.order, |q| q + 1)
    }

    /// Number of dense rows of `dim` values.
    fn n_dense_rows(&self) -> usize {
        if self.poly {
            self.dense_rows.len() + 1
        } else {
            4 + self.dense_rows.len()
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Workspace<T> {
    dim: usize,
    k: Vec<T>,
    y: Vec<T>,
    y_new: Vec<T>,
    y_stage: Vec<T>,
    err: Vec<T>,
    err3: Vec<T>,
    f_new: Vec<T>,
    dense: Vec<T>,
}

impl<T: Real> Workspace<T> {
    /// Resizes every buffer for states of length `dim` (its `dim` field is left to the
    /// caller); `None` on a size that overflows or an allocation refused, where `resize`
    /// would panic or abort.
    fn size(&mut self, co: &Coeffs<T>, dim: usize) -> Option<()> {
        // `Vec::resize`'s growth policy, with the allocation's failure reported.
        fn fit<T: Real>(v: &mut Vec<T>, n: usize) -> Option<()> {
            if n > v.len() {
                v.try_reserve(n - v.len()).ok()?;
            }
            v.resize(n, T::zero());
            Some(())
        }
        fit(&mut self.k, co.total_stages.checked_mul(dim)?)?;
        for v in [&mut self.y, &mut self.y_new, &mut self.y_stage, &mut self.err, &mut self.f_new] {
            fit(v, dim)?;
        }
        fit(&mut self.err3, if co.blended { dim } else { 0 })?;
        fit(&mut self.dense, co.n_dense_rows().checked_mul(dim)?)
    }
}

/// States up to this length use the fused scalar kernels (one pass over the state with the
/// stage sum innermost); longer ones use streaming axpy passes that vectorise.
const SMALL_DIM: usize = 32;

/// `out = base + h Σ_j a_j k_j` over the nonzero coefficients `(j, a_j)`, reading stage `j`
/// from `k[j·dim..(j+1)·dim]` (`out = h Σ a_j k_j` without a base).
#[inline(always)]
fn stage_comb<T: Real>(
    out: &mut [T],
    base: Option<&[T]>,
    h: T,
    coefs: &[(usize, T)],
    k: &[T],
    dim: usize,
) {
    macro_rules! fixed {
        ($($d:literal)*) => {
            match dim {
                $($d => return comb_fixed::<T, $d>(out, base, h, coefs, k),)*
                _ => {}
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8);
    stage_comb_dyn(out, base, h, coefs, k, dim)
}

/// [`stage_comb`] for states longer than 8 (kept out of line so that the hot loop of small
/// problems stays small enough for their right-hand side to be inlined).
#[inline(never)]
fn stage_comb_dyn<T: Real>(
    out: &mut [T],
    base: Option<&[T]>,
    h: T,
    coefs: &[(usize, T)],
    k: &[T],
    dim: usize,
) {
    let out = &mut out[..dim];
    if dim <= SMALL_DIM {
        // One pass, the (short) stage sum innermost: no per-stage setup at all.
        match base {
            Some(y) => {
                let y = &y[..dim];
                for n in 0..dim {
                    let mut acc = T::zero();
                    for &(j, a) in coefs {
                        acc += a * k[j * dim + n];
                    }
                    out[n] = y[n] + h * acc;
                }
            }
            None => {
                for (n, o) in out.iter_mut().enumerate() {
                    let mut acc = T::zero();
                    for &(j, a) in coefs {
                        acc += a * k[j * dim + n];
                    }
                    *o = h * acc;
                }
            }
        }
        return;
    }
    stage_comb_long(out, base, h, coefs, k, dim, 0..dim);
}

/// The long-state path of [`stage_comb`] on the components in `part` only (the others of
/// `out` are left as they are): streaming passes over up to four stages at a time
/// (vectorised). Each component gets the same operations whatever `part` is, so a stage
/// formed in parts has the bits of one formed whole.
#[inline(never)]
fn stage_comb_long<T: Real>(
    out: &mut [T],
    base: Option<&[T]>,
    h: T,
    coefs: &[(usize, T)],
    k: &[T],
    dim: usize,
    part: Range<usize>,
) {
    let out = &mut out[part.clone()];
    match base {
        Some(y) => out.copy_from_slice(&y[part.clone()]),
        None => out.iter_mut().for_each(|o| *o = T::zero()),
    }
    let len = part.len();
    let row = |j: usize| &k[j * dim + part.start..j * dim + part.end];
    for chunk in coefs.chunks(4) {
        match *chunk {
            [(j0, a0)] => {
                let (c0, x0) = (h * a0, row(j0));
                for (o, &v0) in out.iter_mut().zip(x0) {
                    *o += c0 * v0;
                }
            }
            [(j0, a0), (j1, a1)] => {
                let (c0, c1, x0, x1) = (h * a0, h * a1, row(j0), row(j1));
                for i in 0..len {
                    out[i] += c0 * x0[i] + c1 * x1[i];
                }
            }
            [(j0, a0), (j1, a1), (j2, a2)] => {
                let (c0, c1, c2) = (h * a0, h * a1, h * a2);
                let (x0, x1, x2) = (row(j0), row(j1), row(j2));
                for i in 0..len {
                    out[i] += c0 * x0[i] + c1 * x1[i] + c2 * x2[i];
                }
            }
            [(j0, a0), (j1, a1), (j2, a2), (j3, a3)] => {
                let (c0, c1, c2, c3) = (h * a0, h * a1, h * a2, h * a3);
                let (x0, x1, x2, x3) = (row(j0), row(j1), row(j2), row(j3));
                for i in 0..len {
                    out[i] += (c0 * x0[i] + c1 * x1[i]) + (c2 * x2[i] + c3 * x3[i]);
                }
            }
            _ => unreachable!("chunks(4) yields 1..=4 terms"),
        }
    }
}

/// [`stage_comb`] for a state of exactly `D` numbers: the terms are accumulated lane-wise in
/// a `[T; D]` (vectorised like a stack vector), one bounds check per stage.
#[inline(always)]
fn comb_fixed<T: Real, const D: usize>(
    out: &mut [T],
    base: Option<&[T]>,
    h: T,
    coefs: &[(usize, T)],
    k: &[T],
) {
    let acc = sum_fixed::<T, D>(coefs, k);
    let out = &mut out[..D];
    match base {
        Some(y) => {
            let y = &y[..D];
            for n in 0..D {
                out[n] = y[n] + h * acc[n];
            }
        }
        None => {
            for n in 0..D {
                out[n] = h * acc[n];
            }
        }
    }
}

/// `Σ_j a_j k_j` for states of exactly `D` numbers.
#[inline(always)]
fn sum_fixed<T: Real, const D: usize>(coefs: &[(usize, T)], k: &[T]) -> [T; D] {
    let mut acc = [T::zero(); D];
    let Some(&(last, _)) = coefs.last() else { return acc };
    // One bounds check for the whole combination (the indices ascend).
    let k = &k[..(last + 1) * D];
    for &(j, a) in coefs {
        let kj = &k[j * D..j * D + D];
        for n in 0..D {
            acc[n] += a * kj[n];
        }
    }
    acc
}

/// [`fused_error_norm`] for states of exactly `D` numbers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fixed_error_norm<T: Real, const D: usize>(
    co: &Coeffs<T>,
    k: &[T],
    h: T,
    y0: &[T],
    y1: &[T],
    range: Range<usize>,
    rtol: T,
    atol: &Atol<T>,
) -> T {
    let n = range.len();
    if n == 0 {
        return T::zero();
    }
    let e5 = sum_fixed::<T, D>(&co.e, k);
    let e3 = if co.blended { sum_fixed::<T, D>(&co.e3, k) } else { [T::zero(); D] };
    let (mut s5, mut s3) = (T::zero(), T::zero());
    for i in range {
        let ai = match atol {
            Atol::Scalar(a) => *a,
            Atol::PerComponent(v) => v[i],
        };
        let sk = ai + rtol * y0[i].abs().max(y1[i].abs());
        let r = h * e5[i] / sk;
        s5 += r * r;
        let r3 = h * e3[i] / sk;
        s3 += r3 * r3;
    }
    finish_norm(s5, s3, n, co.blended)
}

/// The error norm of a step for short states, fused: the error components
/// `e_n = h Σ_j e_j k_j[n]` are formed inside the norm loop (no error buffer pass).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fused_error_norm<T: Real>(
    co: &Coeffs<T>,
    k: &[T],
    dim: usize,
    h: T,
    y0: &[T],
    y1: &[T],
    range: Range<usize>,
    rtol: T,
    atol: &Atol<T>,
) -> T {
    macro_rules! fixed {
        ($($d:literal)*) => {
            match dim {
                $($d => return fixed_error_norm::<T, $d>(co, k, h, y0, y1, range, rtol, atol),)*
                _ => {}
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8);
    fused_error_norm_dyn(co, k, dim, h, y0, y1, range, rtol, atol)
}

/// [`fused_error_norm`] for states of 9 to `SMALL_DIM` numbers (out of line).
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn fused_error_norm_dyn<T: Real>(
    co: &Coeffs<T>,
    k: &[T],
    dim: usize,
    h: T,
    y0: &[T],
    y1: &[T],
    range: Range<usize>,
    rtol: T,
    atol: &Atol<T>,
) -> T {
    let n = range.len();
    if n == 0 {
        return T::zero();
    }
    let (mut s5, mut s3) = (T::zero(), T::zero());
    for i in range {
        let mut e5 = T::zero();
        for &(j, a) in &co.e {
            e5 += a * k[j * dim + i];
        }
        let ai = match atol {
            Atol::Scalar(a) => *a,
            Atol::PerComponent(v) => v[i],
        };
        let sk = ai + rtol * y0[i].abs().max(y1[i].abs());
        let r = h * e5 / sk;
        s5 += r * r;
        if co.blended {
            let mut e3 = T::zero();
            for &(j, a) in &co.e3 {
                e3 += a * k[j * dim + i];
            }
            let r3 = h * e3 / sk;
            s3 += r3 * r3;
        }
    }
    finish_norm(s5, s3, n, co.blended)
}

/// `sqrt(s5/n)`, or Hairer's blended DOP853 form `s5 / sqrt(n·(s5 + 0.01·s3))`.
#[inline(always)]
fn finish_norm<T: Real>(s5: T, s3: T, n: usize, blended: bool) -> T {
    let nf = T::from_f64c(n as f64);
    if blended {
        let mut deno = s5 + T::from_f64c(0.01) * s3;
        if deno <= T::zero() {
            deno = T::one();
        }
        s5 / (nf * deno).sqrt()
    } else {
        (s5 / nf).sqrt()
    }
}

/// Calls the right-hand side from an out-of-line frame: used for every call outside the
/// stage loop, so that the stage loop holds the only inlinable call site and a small
/// right-hand side gets inlined there (worth 20–30% on Arenstorf).
#[inline(never)]
fn rhs_outlined<T: Real, S: OdeSystem<T> + ?Sized>(sys: &mut S, t: T, y: &[T], dy: &mut [T]) {
    sys.rhs(t, y, dy)
}

/// Exact equality without tripping `clippy::float_cmp` (intended: landing on requested times).
#[inline]
fn same<T: Real>(a: T, b: T) -> bool {
    a.partial_cmp(&b) == Some(std::cmp::Ordering::Equal)
}

/// The scale `sk_i = atol_i + rtol·max(|y0_i|, |y1_i|)` and the RMS of `e_i/sk_i` over
/// `range` (HNW I, eq. (4.11)); with `e3`, Hairer's blended DOP853 norm.
#[inline(never)]
fn error_norm<T: Real>(
    e: &[T],
    e3: Option<&[T]>,
    y0: &[T],
    y1: &[T],
    range: Range<usize>,
    rtol: T,
    atol: &Atol<T>,
) -> T {
    let n = range.len();
    if n == 0 {
        return T::zero();
    }
    let (e, y0, y1) = (&e[range.clone()], &y0[range.clone()], &y1[range.clone()]);
    let mut s5 = T::zero();
    let mut s3 = T::zero();
    match (atol, e3) {
        (Atol::Scalar(a), None) => {
            for i in 0..n {
                let sk = *a + rtol * y0[i].abs().max(y1[i].abs());
                let r = e[i] / sk;
                s5 += r * r;
            }
        }
        (Atol::PerComponent(a), None) => {
            let a = &a[range.clone()];
            for i in 0..n {
                let sk = a[i] + rtol * y0[i].abs().max(y1[i].abs());
                let r = e[i] / sk;
                s5 += r * r;
            }
        }
        (atol, Some(e3)) => {
            let e3 = &e3[range.clone()];
            for i in 0..n {
                let ai = match atol {
                    Atol::Scalar(a) => *a,
                    Atol::PerComponent(a) => a[range.start + i],
                };
                let sk = ai + rtol * y0[i].abs().max(y1[i].abs());
                let r = e[i] / sk;
                s5 += r * r;
                let r3 = e3[i] / sk;
                s3 += r3 * r3;
            }
        }
    }
    finish_norm(s5, s3, n, e3.is_some())
}

/// A reusable explicit Runge–Kutta integrator. It owns every buffer a solve touches (stages
/// `s × dim`, candidate, error, dense-output rows), sized on the first solve and reused.
///
/// ```
/// use odeflow_solvers::{FnSystem, Integrator, Method, NoObserver, SolveOptions};
/// let mut sys = FnSystem::new(1, |_t: f64, y: &[f64], dy: &mut [f64]| dy[0] = -y[0]);
/// let mut integ = Integrator::new(Method::Dopri5, SolveOptions::tol(1e-8, 1e-10)).unwrap();
/// let mut y = [1.0];
/// let stats = integ.integrate(&mut sys, 0.0, 1.0, &mut y, &mut NoObserver).unwrap();
/// assert!((y[0] - (-1.0f64).exp()).abs() < 1e-8);
/// assert!(stats.n_accepted > 0);
/// ```
#[derive(Debug, Clone)]
pub struct Integrator<T: Real = f64, C: StepController<T> = PiController<T>> {
    method: Method,
    ctrl: C,
    opts: SolveOptions<T>,
    co: Coeffs<T>,
    ws: Workspace<T>,
    /// `Some(dim)` when `ws.k[..dim]` holds f at the end of the latest solve.
    end_f: Option<usize>,
}

impl<T: Real> Integrator<T, PiController<T>> {
    /// An integrator for `method` with the default [`PiController`]. Validates `opts`.
    pub fn new(method: Method, opts: SolveOptions<T>) -> Result<Self, SolveError> {
        Self::with_controller(method, PiController::default(), opts)
    }
}

impl<T: Real, C: StepController<T>> Integrator<T, C> {
    /// An integrator with a custom step-size controller. Validates `opts` and the
    /// controller's settings ([`StepController::validate`]); a fixed-step method without
    /// `opts.h_fixed` is an error.
    pub fn with_controller(
        method: Method,
        ctrl: C,
        opts: SolveOptions<T>,
    ) -> Result<Self, SolveError> {
        opts.validate()?;
        if !method.is_adaptive() && opts.h_fixed.is_none() {
            return Err(SolveError::MissingStepSize { method: method.name() });
        }
        let co = Coeffs::new(method.tableau());
        ctrl.validate(co.k_order())?;
        Ok(Integrator { method, ctrl, opts, co, ws: Workspace::default(), end_f: None })
    }

    /// `f(t, y)` at the end of the latest solve (the time it reached, the state it
    /// returned), when the solve computed it anyway: the first-same-as-last stage of the
    /// final step (Dopri5, Tsit5, Bosh3), the first stage of the step after it (DOP853), or
    /// the end derivative of a step with dense output. `None` when it did not (the
    /// fixed-step methods without dense output), before any solve and after a failed one.
    /// A caller that needs `f` at the end point (an adjoint's gradient with respect to the
    /// end time) saves an evaluation; the values are those an evaluation would give (the
    /// same call on the same `t` and `y`).
    pub fn end_derivative(&self) -> Option<&[T]> {
        self.end_f.map(|dim| &self.ws.k[..dim])
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The options.
    pub fn options(&self) -> &SolveOptions<T> {
        &self.opts
    }

    /// Replaces the options (validated; the workspace is kept).
    pub fn set_options(&mut self, opts: SolveOptions<T>) -> Result<(), SolveError> {
        opts.validate()?;
        if !self.method.is_adaptive() && opts.h_fixed.is_none() {
            return Err(SolveError::MissingStepSize { method: self.method.name() });
        }
        self.opts = opts;
        Ok(())
    }

    /// The step-size controller (its settings are checked again at the start of every solve).
    pub fn controller_mut(&mut self) -> &mut C {
        &mut self.ctrl
    }

    /// The state length the workspace is sized for (0 before the first solve or
    /// [`Integrator::reserve`]): a caller keeping integrators for reuse picks the one whose
    /// buffers already fit.
    pub fn workspace_dim(&self) -> usize {
        self.ws.dim
    }

    /// Sizes the workspace for states of length `dim` now (otherwise the first solve does).
    ///
    /// # Errors
    ///
    /// [`SolveError::WorkspaceTooLarge`] if the buffers' sizes overflow or the allocator
    /// refuses them (the workspace is then marked as sized for nothing, so the next call
    /// sizes every buffer again; buffers grown before the failure keep their memory). Unlike
    /// `Vec::reserve`, which panics on a capacity overflow, this sizes what a solve needs,
    /// and a solve reports the same error.
    pub fn reserve(&mut self, dim: usize) -> Result<(), SolveError> {
        let co = &self.co;
        let ws = &mut self.ws;
        if ws.dim == dim && !ws.y.is_empty() {
            return Ok(());
        }
        if ws.size(co, dim).is_none() {
            // Marked as sized for nothing: the next call resizes every buffer.
            ws.dim = 0;
            ws.y.clear();
            return Err(SolveError::WorkspaceTooLarge { dim });
        }
        ws.dim = dim;
        Ok(())
    }

    /// Integrates `y` from `t0` to `t1` in place (`t1 < t0` runs backward), calling `obs`
    /// after each accepted step. If the observer breaks, `y` is the state at the end of that
    /// step and the statistics so far are returned. On error `y` is left unchanged.
    pub fn integrate<S, O>(
        &mut self,
        sys: &mut S,
        t0: T,
        t1: T,
        y: &mut [T],
        obs: &mut O,
    ) -> Result<Stats, SolveError>
    where
        S: OdeSystem<T> + ?Sized,
        O: Observer<T> + ?Sized,
    {
        self.end_f = None;
        if same(t0, t1) {
            return Err(SolveError::EmptyInterval { t: t0.to_f64c() });
        }
        self.run(sys, t0, t1, y, obs, &[], &mut [])
    }

    /// Integrates from `t0` through the output times `times` (monotone in the direction of
    /// integration, none before `t0`), writing the state at `times[i]` into
    /// `out[i*dim..(i+1)*dim]` through dense output (times that coincide with a step's end
    /// are copied exactly); `y` ends at the last time. Dense output is computed only on steps
    /// that contain an output time, and the step sequence is the same as
    /// [`Integrator::integrate`]'s to the last time.
    ///
    /// ```
    /// use odeflow_solvers::{problems::Harmonic, Integrator, Method, SolveOptions};
    /// let osc = Harmonic { omega: 1.0 };
    /// let mut integ = Integrator::new(Method::Tsit5, SolveOptions::tol(1e-9, 1e-9)).unwrap();
    /// let times = [0.5, 1.0, 1.5];
    /// let (mut y, mut out) = ([1.0, 0.0], [0.0; 6]);
    /// integ.integrate_at(&mut { osc }, 0.0, &times, &mut y, &mut out).unwrap();
    /// assert!((out[2] - 1.0f64.cos()).abs() < 1e-8); // x(1) = cos 1
    /// ```
    pub fn integrate_at<S>(
        &mut self,
        sys: &mut S,
        t0: T,
        times: &[T],
        y: &mut [T],
        out: &mut [T],
    ) -> Result<Stats, SolveError>
    where
        S: OdeSystem<T> + ?Sized,
    {
        self.integrate_at_with(sys, t0, times, y, out, &mut NoObserver)
    }

    /// [`Integrator::integrate_at`] that also calls `obs` after each accepted step (a
    /// `Break` ends the solve; outputs after that point are left as they were).
    pub fn integrate_at_with<S, O>(
        &mut self,
        sys: &mut S,
        t0: T,
        times: &[T],
        y: &mut [T],
        out: &mut [T],
        obs: &mut O,
    ) -> Result<Stats, SolveError>
    where
        S: OdeSystem<T> + ?Sized,
        O: Observer<T> + ?Sized,
    {
        self.end_f = None;
        let dim = y.len();
        let Some(&t_end) = times.last() else {
            return Err(SolveError::EmptyInterval { t: t0.to_f64c() });
        };
        if out.len() != times.len() * dim {
            return Err(SolveError::DimensionMismatch {
                expected: times.len() * dim,
                found: out.len(),
            });
        }
        if same(t_end, t0) {
            // Every time equals t0 (monotonicity): the answer is y0.
            if sys.dim() != dim {
                return Err(SolveError::DimensionMismatch { expected: sys.dim(), found: dim });
            }
            if let Some(&t) = times.iter().find(|&&t| !same(t, t0)) {
                return Err(SolveError::InvalidTime { t: t.to_f64c() });
            }
            for chunk in out.chunks_exact_mut(dim.max(1)) {
                chunk.copy_from_slice(y);
            }
            return Ok(Stats::default());
        }
        let dir = (t_end - t0).signum();
        let mut prev = t0;
        for &t in times {
            if !t.is_finite() || (t - prev) * dir < T::zero() {
                return Err(SolveError::InvalidTime { t: t.to_f64c() });
            }
            prev = t;
        }
        self.run(sys, t0, t_end, y, obs, times, out)
    }

    /// Integrates `y` from `t0` toward `t1` watching the [`Events`]: every crossing is
    /// recorded ([`Events::hits`]), and the first crossing of a terminal event ends the solve
    /// with `y` the state at its time (the step's interpolant there). `obs` sees every
    /// accepted step, the last one cut at a terminal event's time. Dense output is computed on
    /// every step (free for Dormand–Prince 5(4) and Tsitouras 5(4); three more evaluations
    /// per step for DOP853, one, `f(t1, y1)`, for Bogacki–Shampine's and the fixed-step
    /// methods' Hermite interpolant where they do not already make it). See [`Events`] for
    /// what counts as a crossing and how it is located. A failed solve leaves `y` as it was,
    /// and the hits found before the failure in [`Events::hits`].
    ///
    /// Cost, measured on Lorenz's system over t ∈ [0, 100] against the plain solve
    /// (`cargo bench -p odeflow-solvers --bench events`, one run): dense output alone +3%
    /// (Dormand–Prince 5(4) at 1e-8) and +22% (DOP853 at 1e-10); two recorded events with
    /// 273 crossings +11% and +33%.
    ///
    /// # Errors
    ///
    /// Those of [`Integrator::integrate`], and [`SolveError::NonFiniteEvent`] if an event
    /// function returns NaN or ±∞. On error `y` is left unchanged.
    pub fn integrate_events<S, G, O>(
        &mut self,
        sys: &mut S,
        t0: T,
        t1: T,
        y: &mut [T],
        events: &mut Events<T, G>,
        obs: &mut O,
    ) -> Result<EventSolve<T>, SolveError>
    where
        S: OdeSystem<T> + ?Sized,
        G: FnMut(T, &[T], &mut [T]),
        O: Observer<T> + ?Sized,
    {
        events.begin(y);
        let mut watch = Watch { events: &mut *events, obs, t_reached: None };
        let result = self.integrate(sys, t0, t1, y, &mut watch);
        let t_reached = watch.t_reached;
        let stats = result?;
        let solve = events.finish(y, t1, t_reached, stats);
        if !matches!(solve, Ok(EventSolve { stopped: None, .. })) {
            // The state is the event's (or, on error, the start's), not the last step end's.
            self.end_f = None;
        }
        solve
    }

    #[allow(clippy::too_many_arguments)]
    fn run<S, O>(
        &mut self,
        sys: &mut S,
        t0: T,
        t1: T,
        y_io: &mut [T],
        obs: &mut O,
        times: &[T],
        out: &mut [T],
    ) -> Result<Stats, SolveError>
    where
        S: OdeSystem<T> + ?Sized,
        O: Observer<T> + ?Sized,
    {
        // ---- checks ----
        self.ctrl.validate(self.co.k_order())?;
        let dim = sys.dim();
        if y_io.len() != dim {
            return Err(SolveError::DimensionMismatch { expected: dim, found: y_io.len() });
        }
        if let Atol::PerComponent(a) = &self.opts.atol {
            if a.len() != dim {
                return Err(SolveError::DimensionMismatch { expected: dim, found: a.len() });
            }
        }
        let range = sys.error_components();
        if range.start > range.end || range.end > dim {
            return Err(SolveError::InvalidErrorComponents {
                start: range.start,
                end: range.end,
                dim,
            });
        }
        let passive = sys.passive_components();
        if passive.start > passive.end || passive.end > dim {
            return Err(SolveError::InvalidPassiveComponents {
                start: passive.start,
                end: passive.end,
                dim,
            });
        }
        // Intermediate stage states are formed on the active parts only (long states; a
        // short one is formed whole in one fused pass).
        let active: [Range<usize>; 2] = if passive.is_empty() || dim <= SMALL_DIM {
            [0..dim, dim..dim]
        } else {
            [0..passive.start, passive.end..dim]
        };
        if !t0.is_finite() {
            return Err(SolveError::InvalidTime { t: t0.to_f64c() });
        }
        if !t1.is_finite() {
            return Err(SolveError::InvalidTime { t: t1.to_f64c() });
        }
        if y_io.iter().any(|x| !x.is_finite()) {
            return Err(SolveError::NonFinite { t: t0.to_f64c() });
        }
        self.reserve(dim)?;

        let Integrator { ctrl, opts, co, ws, end_f, .. } = self;
        let co: &Coeffs<T> = co;
        let opts: &SolveOptions<T> = opts;
        let s = co.stages;
        let dir = (t1 - t0).signum();
        let span = (t1 - t0).abs();
        let h_max = opts.h_max.unwrap_or(span).min(span);
        let eps = T::epsilon();
        let mut stats = Stats::default();
        let mut out_idx = 0usize;
        let wants_dense = obs.wants_dense();
        let fixed = opts.h_fixed.is_some() || co.error_order.is_none();

        ws.y.copy_from_slice(y_io);
        // Outputs requested at t0 itself.
        while out_idx < times.len() && same(times[out_idx], t0) {
            out[out_idx * dim..(out_idx + 1) * dim].copy_from_slice(&ws.y);
            out_idx += 1;
        }

        // f(t0, y0) into stage 0.
        rhs_outlined(sys, t0, &ws.y, &mut ws.k[..dim]);
        stats.n_rhs += 1;
        if ws.k[..dim].iter().any(|x| !x.is_finite()) {
            return Err(SolveError::NonFinite { t: t0.to_f64c() });
        }

        // ---- step size ----
        let n_fixed: usize;
        let mut h: T;
        let mut h_fix = T::zero();
        if fixed {
            let hf = opts.h_fixed.unwrap_or(span).min(span);
            let ratio = (span / hf).to_f64c();
            // Steps of exactly hf; the last is shortened to land on t1 (a ratio within
            // round-off of an integer counts as that integer).
            let n = (ratio * (1.0 - 8.0 * f64::EPSILON)).ceil().max(1.0);
            if n > opts.max_steps as f64 {
                return Err(SolveError::TooManySteps {
                    t: t0.to_f64c(),
                    max_steps: opts.max_steps,
                });
            }
            n_fixed = n as usize;
            h_fix = hf * dir;
            h = h_fix;
        } else {
            n_fixed = 0;
            h = match opts.h0 {
                Some(h0) => h0.min(h_max) * dir,
                None => {
                    let h = initial_step(sys, co, ws, &range, opts, t0, dir, h_max);
                    stats.n_rhs += 1;
                    h
                }
            };
        }
        ctrl.reset();

        let mut t = t0;
        let mut k0_valid = true;
        let mut last = false;
        let mut n_attempts = 0usize;
        let mut saw_nonfinite = false;
        let k_order = co.k_order();

        loop {
            // ---- choose this step ----
            let t_next: T;
            if fixed {
                let i = stats.n_accepted;
                if i + 1 >= n_fixed {
                    t_next = t1;
                    last = true;
                } else {
                    t_next = t0 + T::from_f64c((i + 1) as f64) * h_fix;
                }
                h = t_next - t;
            } else {
                if n_attempts >= opts.max_steps {
                    return Err(SolveError::TooManySteps {
                        t: t.to_f64c(),
                        max_steps: opts.max_steps,
                    });
                }
                if h.abs() > h_max {
                    h = h_max * dir;
                }
                if (t + T::from_f64c(1.01) * h - t1) * dir >= T::zero() {
                    h = t1 - t;
                    last = true;
                }
                let tiny = T::from_f64c(0.1) * h.abs() <= eps * t.abs();
                if tiny || (!last && h.abs() < opts.h_min) || h.abs() <= T::min_positive_value() {
                    if saw_nonfinite {
                        return Err(SolveError::NonFinite { t: t.to_f64c() });
                    }
                    return Err(SolveError::StepSizeUnderflow { t: t.to_f64c(), h: h.to_f64c() });
                }
                t_next = if last { t1 } else { t + h };
            }
            n_attempts += 1;

            // ---- stages ----
            if !k0_valid {
                rhs_outlined(sys, t, &ws.y, &mut ws.k[..dim]);
                stats.n_rhs += 1;
                k0_valid = true;
            }
            let n_eval = if co.fsal && !co.lazy_last {
                s
            } else if co.fsal {
                s - 1
            } else {
                s
            };
            for i in 1..n_eval {
                let (done, rest) = ws.k.split_at_mut(i * dim);
                if co.fsal && i == s - 1 {
                    stage_comb(&mut ws.y_new, Some(&ws.y), h, &co.a[i], done, dim);
                } else if active[0].len() == dim {
                    stage_comb(&mut ws.y_stage, Some(&ws.y), h, &co.a[i], done, dim);
                } else {
                    for part in active.iter().filter(|p| !p.is_empty()) {
                        let (y, a) = (Some(&ws.y[..]), &co.a[i]);
                        stage_comb_long(&mut ws.y_stage, y, h, a, done, dim, part.clone());
                    }
                }
                let target: &[T] = if co.fsal && i == s - 1 { &ws.y_new } else { &ws.y_stage };
                let ti = if co.fsal && i == s - 1 { t_next } else { t + co.c[i] * h };
                if co.active_only[i] {
                    sys.rhs_active_part(ti, target, &mut rest[..dim]);
                    stats.n_rhs_active += 1;
                } else {
                    sys.rhs(ti, target, &mut rest[..dim]);
                }
            }
            stats.n_rhs += n_eval - 1;
            if !co.fsal || co.lazy_last {
                stage_comb(&mut ws.y_new, Some(&ws.y), h, &co.b, &ws.k, dim);
            }

            // ---- error ----
            let finite = ws.y_new.iter().all(|x| x.is_finite());
            let accept: bool;
            let mut h_next = h.abs();
            if fixed {
                if !finite {
                    return Err(SolveError::NonFinite { t: t.to_f64c() });
                }
                accept = true;
            } else {
                let err = if !finite {
                    T::nan()
                } else if dim <= SMALL_DIM {
                    let (k, y0, y1) = (&ws.k[..], &ws.y[..dim], &ws.y_new[..dim]);
                    fused_error_norm(co, k, dim, h, y0, y1, range.clone(), opts.rtol, &opts.atol)
                } else {
                    // The error estimate only where the norm reads it.
                    stage_comb_long(&mut ws.err, None, h, &co.e, &ws.k, dim, range.clone());
                    let e3 = if co.blended {
                        stage_comb_long(&mut ws.err3, None, h, &co.e3, &ws.k, dim, range.clone());
                        Some(&ws.err3[..])
                    } else {
                        None
                    };
                    error_norm(&ws.err, e3, &ws.y, &ws.y_new, range.clone(), opts.rtol, &opts.atol)
                };
                if !err.is_finite() {
                    saw_nonfinite = true;
                }
                let name;
                (accept, h_next, name) = match ctrl.decide(err, h, k_order) {
                    crate::Decision::Accept { h_next: hn } => (true, hn, "h_next"),
                    crate::Decision::Reject { h_retry } => (false, h_retry, "h_retry"),
                };
                // Whatever a (custom) controller says: a non-finite state is never accepted
                // (the error a fixed step gives), and its step size must be one. (A step that
                // underflowed to 0 goes on to the step-size underflow check.)
                if accept && !finite {
                    return Err(SolveError::NonFinite { t: t.to_f64c() });
                }
                if !(h_next.is_finite() && h_next >= T::zero()) {
                    let value = h_next.to_f64c();
                    return Err(SolveError::InvalidControllerStep { name, value, t: t.to_f64c() });
                }
            }

            if !accept {
                stats.n_rejected += 1;
                h = h_next * dir;
                last = false;
                continue;
            }
            stats.n_accepted += 1;
            saw_nonfinite = false;

            // ---- accepted: f(t_next, y_new) ----
            let pending_inside =
                out_idx < times.len() && (times[out_idx] - t_next) * dir < T::zero();
            let need_dense = wants_dense || pending_inside;
            if co.fsal && co.lazy_last {
                let (_, rest) = ws.k.split_at_mut((s - 1) * dim);
                rhs_outlined(sys, t_next, &ws.y_new, &mut rest[..dim]);
                stats.n_rhs += 1;
            }
            let mut have_f_new = co.fsal;
            if !co.fsal && need_dense {
                rhs_outlined(sys, t_next, &ws.y_new, &mut ws.f_new);
                stats.n_rhs += 1;
                have_f_new = true;
            }

            // ---- dense output ----
            let dense = if need_dense {
                stats.n_rhs += build_dense(sys, co, ws, t, h, dim);
                if co.poly {
                    DenseRows::Poly(&ws.dense[..])
                } else {
                    DenseRows::Hairer(&ws.dense[..])
                }
            } else {
                DenseRows::None
            };

            // ---- outputs ----
            while out_idx < times.len() && (times[out_idx] - t_next) * dir <= T::zero() {
                let slot = &mut out[out_idx * dim..(out_idx + 1) * dim];
                let tau = times[out_idx];
                if same(tau, t_next) {
                    slot.copy_from_slice(&ws.y_new);
                } else {
                    let theta = (tau - t) / h;
                    match dense {
                        DenseRows::Hairer(r) => hairer_eval(r, dim, theta, slot),
                        DenseRows::Poly(r) => poly_eval(r, dim, theta, slot),
                        DenseRows::None => unreachable!("dense output computed when needed"),
                    }
                }
                out_idx += 1;
            }

            let view = StepView {
                t_start: t,
                t_end: t_next,
                h,
                h_dense: h,
                y_start: &ws.y,
                y_end: &ws.y_new,
                dense,
            };
            let flow = obs.on_step(&view);

            // ---- advance ----
            std::mem::swap(&mut ws.y, &mut ws.y_new);
            t = t_next;
            if have_f_new {
                if co.fsal {
                    if dim <= SMALL_DIM {
                        // A plain loop: a memmove call costs more than the copy itself here.
                        let (first, rest) = ws.k.split_at_mut((s - 1) * dim);
                        for (a, b) in first[..dim].iter_mut().zip(&rest[..dim]) {
                            *a = *b;
                        }
                    } else {
                        ws.k.copy_within((s - 1) * dim..s * dim, 0);
                    }
                } else {
                    ws.k[..dim].copy_from_slice(&ws.f_new);
                }
                k0_valid = true;
            } else {
                k0_valid = false;
            }
            if last || flow.is_break() {
                break;
            }
            if !fixed {
                h = h_next * dir;
            }
        }
        y_io.copy_from_slice(&ws.y);
        *end_f = k0_valid.then_some(dim);
        Ok(stats)
    }
}

/// Fills `ws.dense` for the accepted step (t, h) with `ws.y` = y0 and `ws.y_new` = y1, and
/// f(t+h, y1) in the FSAL stage or `ws.f_new`. Returns the number of extra RHS calls.
#[inline(never)]
fn build_dense<T: Real, S: OdeSystem<T> + ?Sized>(
    sys: &mut S,
    co: &Coeffs<T>,
    ws: &mut Workspace<T>,
    t: T,
    h: T,
    dim: usize,
) -> usize {
    let mut extra = 0;
    // Dense-only stages (DOP853's 14–16).
    for i in co.stages..co.total_stages {
        let (done, rest) = ws.k.split_at_mut(i * dim);
        stage_comb(&mut ws.y_stage, Some(&ws.y), h, &co.a[i], done, dim);
        sys.rhs(t + co.c[i] * h, &ws.y_stage, &mut rest[..dim]);
        extra += 1;
    }
    let d = &mut ws.dense;
    if co.poly {
        d[..dim].copy_from_slice(&ws.y);
        for (p, row) in co.dense_rows.iter().enumerate() {
            stage_comb(&mut d[(p + 1) * dim..(p + 2) * dim], None, h, row, &ws.k, dim);
        }
    } else {
        let f0 = &ws.k[..dim];
        let f1 =
            if co.fsal { &ws.k[(co.stages - 1) * dim..co.stages * dim] } else { &ws.f_new[..] };
        let (r1, rest) = d.split_at_mut(dim);
        let (r2, rest) = rest.split_at_mut(dim);
        let (r3, rest) = rest.split_at_mut(dim);
        let (r4, rest) = rest.split_at_mut(dim);
        for i in 0..dim {
            let y0 = ws.y[i];
            let delta = ws.y_new[i] - y0;
            let bspl = h * f0[i] - delta;
            r1[i] = y0;
            r2[i] = delta;
            r3[i] = bspl;
            r4[i] = delta - h * f1[i] - bspl;
        }
        for (m, row) in co.dense_rows.iter().enumerate() {
            stage_comb(&mut rest[m * dim..(m + 1) * dim], None, h, row, &ws.k, dim);
        }
    }
    extra
}

/// Hairer's automatic initial step (HNW I, §II.4, "Starting step size"), in the RMS norm
/// over the error components: `h0 = 0.01·‖y0‖/‖f0‖`, one explicit Euler step to estimate
/// the second derivative, then `h1 = (0.01 / max(‖f0‖, ‖y''‖))^(1/q)` (`q` from
/// [`SolveOptions::initial_step_order`]) and
/// `h = min(100·h0, h1, h_max)`. Uses one RHS call. Needs `f0` in stage 0.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn initial_step<T: Real, S: OdeSystem<T> + ?Sized>(
    sys: &mut S,
    co: &Coeffs<T>,
    ws: &mut Workspace<T>,
    range: &Range<usize>,
    opts: &SolveOptions<T>,
    t0: T,
    dir: T,
    h_max: T,
) -> T {
    let dim = ws.dim;
    let n = range.len().max(1);
    let nf = T::from_f64c(n as f64);
    let sk = |i: usize, y: T| -> T {
        let a = match &opts.atol {
            Atol::Scalar(a) => *a,
            Atol::PerComponent(v) => v[i],
        };
        a + opts.rtol * y.abs()
    };
    let (f0, rest) = ws.k.split_at_mut(dim);
    let mut dnf = T::zero();
    let mut dny = T::zero();
    for i in range.clone() {
        let s = sk(i, ws.y[i]);
        dnf += (f0[i] / s) * (f0[i] / s);
        dny += (ws.y[i] / s) * (ws.y[i] / s);
    }
    dnf = (dnf / nf).sqrt();
    dny = (dny / nf).sqrt();
    let small = T::from_f64c(1e-5);
    let mut h = if dnf <= small || dny <= small {
        T::from_f64c(1e-6)
    } else {
        T::from_f64c(0.01) * dny / dnf
    };
    h = h.min(h_max);
    for ((ys, &y), &f) in ws.y_stage.iter_mut().zip(&ws.y).zip(f0.iter()) {
        *ys = y + h * dir * f;
    }
    let f1 = &mut rest[..dim];
    sys.rhs_error_part(t0 + h * dir, &ws.y_stage, f1);
    let mut der2 = T::zero();
    for i in range.clone() {
        let s = sk(i, ws.y[i]);
        let d = (f1[i] - f0[i]) / s;
        der2 += d * d;
    }
    der2 = (der2 / nf).sqrt() / h;
    let der12 = der2.abs().max(dnf);
    let q = match opts.initial_step_order {
        InitialStepOrder::Method => co.order,
        InitialStepOrder::MethodPlusOne => co.order + 1,
    };
    let p = T::from_f64c(f64::from(q));
    let h1 = if der12 <= T::from_f64c(1e-15) {
        (h * T::from_f64c(1e-3)).max(T::from_f64c(1e-6))
    } else {
        (T::from_f64c(0.01) / der12).powf(T::one() / p)
    };
    let h = (T::from_f64c(100.0) * h).min(h1).min(h_max);
    if h.is_finite() && h > T::zero() {
        h * dir
    } else {
        T::from_f64c(1e-6).min(h_max) * dir
    }
}

/// Solves `y(t1)` from `y(t0) = y0` in one call (allocates the state and a workspace; use an
/// [`Integrator`] on hot paths).
///
/// ```
/// use odeflow_solvers::{solve, FnSystem, Method, SolveOptions};
/// let mut osc = FnSystem::new(2, |_t: f64, y: &[f64], dy: &mut [f64]| {
///     dy[0] = y[1];
///     dy[1] = -y[0];
/// });
/// let opts = SolveOptions::tol(1e-10, 1e-10);
/// let (y, _stats) = solve(Method::Dop853, &mut osc, 0.0, std::f64::consts::PI, &[1.0, 0.0], &opts).unwrap();
/// assert!((y[0] + 1.0).abs() < 1e-8 && y[1].abs() < 1e-8);
/// ```
pub fn solve<T: Real, S: OdeSystem<T> + ?Sized>(
    method: Method,
    sys: &mut S,
    t0: T,
    t1: T,
    y0: &[T],
    opts: &SolveOptions<T>,
) -> Result<(Vec<T>, Stats), SolveError> {
    let mut y = y0.to_vec();
    let stats = solve_into(method, sys, t0, t1, &mut y, opts)?;
    Ok((y, stats))
}

/// In-place twin of [`solve`]: integrates `y` from `t0` to `t1`.
pub fn solve_into<T: Real, S: OdeSystem<T> + ?Sized>(
    method: Method,
    sys: &mut S,
    t0: T,
    t1: T,
    y: &mut [T],
    opts: &SolveOptions<T>,
) -> Result<Stats, SolveError> {
    let mut integ = Integrator::new(method, opts.clone())?;
    integ.integrate(sys, t0, t1, y, &mut NoObserver)
}

/// Compile-time check that the public types are `Send + Sync`.
#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<X: Send + Sync>() {}
    is::<Integrator<f64>>();
    is::<Integrator<f32>>();
    is::<SolveError>();
    is::<Stats>();
}
