//! The machinery shared by the CNF and neural-ODE gradients: one *segment* is a solve of one
//! field over `[t_a, t_b]`; its forward pass keeps what the strategy needs, and its backward
//! pass carries the cotangent `a_z` from `t_b` back to `t_a`, accumulating `g_θ`.

use std::ops::{ControlFlow, Range};

use odeflow_solvers::{
    DenseOutput, EventHit, Events, Integrator, Method, Observer, OdeSystem, SolveError, Stats,
    StepView,
};

use super::{AdjointConfig, Strategy};
use crate::cnf::CnfDynamics;
use crate::field::{AugmentedVjp, Divergence, FieldError, Real, VectorField};

/// Why a segment failed (the caller adds the segment index and the direction).
#[derive(Debug)]
pub(crate) enum Fail {
    Solve(SolveError),
    Field(FieldError),
}

impl From<FieldError> for Fail {
    fn from(e: FieldError) -> Self {
        Fail::Field(e)
    }
}

/// One field over one time interval: `div = Some(_)` tracks ℓ with dℓ/dt = −q (a CNF
/// block); `None` is a plain neural ODE on `z`.
pub(crate) struct Seg<'a, T, F> {
    pub field: &'a F,
    pub div: Option<Divergence<'a, T>>,
    /// Batch size B.
    pub b: usize,
}

impl<T: Copy, F> Clone for Seg<'_, T, F> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Copy, F> Copy for Seg<'_, T, F> {}

impl<T: Real, F: VectorField<T>> Seg<'_, T, F> {
    fn n(&self) -> usize {
        self.b * self.field.dim()
    }
}

/// Accepted steps of a forward solve: per step its start time, its signed size and `nodes`
/// states of the `z` part (`n` values each): the step's start (discrete), or the dense-output
/// interpolant at `θ_j = j/(nodes − 1)` (checkpointed), which determines the interpolating
/// polynomial exactly.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepRecord<T> {
    pub t: Vec<T>,
    pub h: Vec<T>,
    pub data: Vec<T>,
    pub nodes: usize,
    pub n: usize,
    /// Lagrange denominators `Π_{i≠j} (θ_j − θ_i)`.
    denom: Vec<T>,
}

impl<T: Real> StepRecord<T> {
    fn new(nodes: usize, n: usize) -> Self {
        let m = nodes.max(2) - 1;
        let th = |j: usize| T::from_f64c(j as f64 / m as f64);
        let denom = (0..nodes)
            .map(|j| (0..nodes).filter(|&i| i != j).fold(T::one(), |p, i| p * (th(j) - th(i))))
            .collect();
        StepRecord { t: Vec::new(), h: Vec::new(), data: Vec::new(), nodes, n, denom }
    }

    pub fn len(&self) -> usize {
        self.t.len()
    }

    /// Values kept (for the memory report).
    pub fn values(&self) -> usize {
        self.data.len() + 2 * self.t.len()
    }

    fn step_data(&self, i: usize) -> &[T] {
        let per = self.nodes * self.n;
        &self.data[i * per..(i + 1) * per]
    }

    /// The index of the step containing `t` (clamped to the recorded range).
    fn locate(&self, t: T) -> usize {
        let dir = self.h.first().map_or(T::one(), |h| h.signum());
        let k = self.t.partition_point(|&ts| (ts - t) * dir <= T::zero());
        k.saturating_sub(1).min(self.len().saturating_sub(1))
    }

    /// `z(t)` from the recorded interpolant (Lagrange form over the stored nodes).
    fn eval(&self, t: T, out: &mut [T]) {
        let i = self.locate(t);
        let theta = (t - self.t[i]) / self.h[i];
        let m = self.nodes - 1;
        let th = |j: usize| T::from_f64c(j as f64 / m as f64);
        let mut w = [T::zero(); 16];
        for (j, (wj, &den)) in w.iter_mut().zip(&self.denom).enumerate() {
            let num =
                (0..self.nodes).filter(|&k| k != j).fold(T::one(), |p, k| p * (theta - th(k)));
            *wj = num / den;
        }
        let data = self.step_data(i);
        let n = self.n;
        out.copy_from_slice(&data[..n]);
        out.iter_mut().for_each(|o| *o *= w[0]);
        for j in 1..self.nodes {
            let row = &data[j * n..(j + 1) * n];
            let wj = w[j];
            for (o, &r) in out.iter_mut().zip(row) {
                *o += wj * r;
            }
        }
    }
}

/// Degree of the method's dense-output polynomial in θ.
fn dense_degree(method: Method) -> usize {
    match method.tableau().dense {
        DenseOutput::Hairer { d } => 3 + d.len(),
        DenseOutput::Polynomial { coeffs } => coeffs.iter().map(|r| r.len()).max().unwrap_or(1),
    }
}

/// The forward-pass observer: keeps what the strategy needs of every accepted step.
struct Recorder<'r, T> {
    rec: &'r mut StepRecord<T>,
    dense: bool,
    scratch: Vec<T>,
}

impl<T: Real> Observer<T> for Recorder<'_, T> {
    fn wants_dense(&self) -> bool {
        self.dense
    }
    fn on_step(&mut self, step: &StepView<'_, T>) -> ControlFlow<()> {
        let n = self.rec.n;
        self.rec.t.push(step.t_start());
        self.rec.h.push(step.h());
        if !self.dense {
            self.rec.data.extend_from_slice(&step.y_start()[..n]);
            return ControlFlow::Continue(());
        }
        let m = self.rec.nodes - 1;
        for j in 0..=m {
            if j == 0 {
                self.rec.data.extend_from_slice(&step.y_start()[..n]);
            } else if j == m {
                self.rec.data.extend_from_slice(&step.y_end()[..n]);
            } else {
                let t = step.t_start() + step.h() * T::from_f64c(j as f64 / m as f64);
                // Dense output was requested, so this cannot fail.
                if step.interpolate(t, &mut self.scratch).is_err() {
                    return ControlFlow::Break(());
                }
                self.rec.data.extend_from_slice(&self.scratch[..n]);
            }
        }
        ControlFlow::Continue(())
    }
}

/// What a segment's forward pass keeps.
#[derive(Debug, Clone)]
pub(crate) struct SegTape<T> {
    pub t_a: T,
    pub t_b: T,
    /// `z(t_b)`.
    pub z_end: Vec<T>,
    pub rec: StepRecord<T>,
    /// The forward's method (the discrete replay's tableau, whatever the backward method).
    pub method: Method,
    /// The forward's derivative at `t_b` (`[f | dℓ/dt]` or `f`), when its solver computed it
    /// ([`Integrator::end_derivative`]): spares [`end_rate`] its evaluation.
    pub f_end: Option<Vec<T>>,
}

impl<T: Real> SegTape<T> {
    /// Numbers kept for the backward pass: the end state, the end derivative, the record.
    pub fn values(&self) -> usize {
        self.z_end.len() + self.f_end.as_ref().map_or(0, Vec::len) + self.rec.values()
    }
}

/// Where a forward segment ends: at a time, or at the first terminal crossing of events
/// (before a time), the segment then ending at the crossing's time and state.
pub(crate) enum SegEnd<'e, T, G> {
    /// At `t_b`.
    At(T),
    /// Where `events` stop the solve, by `t_max` at the latest.
    Event { t_max: T, events: &'e mut Events<T, G> },
}

/// The event type of a segment that ends at a time (any would do; none is called).
type NoEvent<T> = fn(T, &[T], &mut [T]);

/// Integrates `state` (`[z | ℓ]` or `z`) over `[t_a, t_b]`, keeping what `adj.strategy`
/// needs (ℓ out of the error norm with `adj.forward_seminorm`).
pub(crate) fn forward_segment<T: Real, F: VectorField<T>>(
    seg: Seg<'_, T, F>,
    t_a: T,
    t_b: T,
    state: &mut [T],
    integ: &mut Integrator<T>,
    adj: &AdjointConfig<T>,
) -> Result<(Stats, SegTape<T>), Fail> {
    let (stats, tape, _) =
        forward_segment_to(seg, t_a, SegEnd::<T, NoEvent<T>>::At(t_b), state, integ, adj)?;
    Ok((stats, tape))
}

/// [`forward_segment`] to `end`: a time, or a terminal event (the crossing is returned; the
/// tape ends at its time, its last recorded step cut there). Not for the discrete strategy
/// with an event: it differentiates whole steps.
pub(crate) fn forward_segment_to<T: Real, F: VectorField<T>, G: FnMut(T, &[T], &mut [T])>(
    seg: Seg<'_, T, F>,
    t_a: T,
    end: SegEnd<'_, T, G>,
    state: &mut [T],
    integ: &mut Integrator<T>,
    adj: &AdjointConfig<T>,
) -> Result<(Stats, SegTape<T>, Option<EventHit<T>>), Fail> {
    let strategy = adj.strategy;
    let n = seg.n();
    let nodes = match strategy {
        Strategy::Backsolve | Strategy::Discrete => 1,
        Strategy::Checkpointed => dense_degree(integ.method()) + 1,
    };
    let mut rec = StepRecord::new(nodes, n);
    let mut stats = Stats::default();
    let mut f_end = None;
    let mut t_b = match &end {
        SegEnd::At(t_b) => *t_b,
        SegEnd::Event { t_max, .. } => *t_max,
    };
    let mut hit = None;
    if t_a.partial_cmp(&t_b) != Some(std::cmp::Ordering::Equal) {
        let mut ws = seg.field.workspace(seg.b);
        let mut sys = CnfDynamics {
            field: seg.field,
            div: seg.div.unwrap_or(Divergence::Exact),
            ws: &mut ws,
            n_z: n,
            track_logp: seg.div.is_some(),
            logp_in_norm: !adj.forward_seminorm,
            error: None,
        };
        let result = match strategy {
            Strategy::Backsolve => {
                let obs = &mut odeflow_solvers::NoObserver;
                run_to_end(integ, &mut sys, t_a, end, state, obs)
            }
            Strategy::Checkpointed | Strategy::Discrete => {
                let mut obs = Recorder {
                    rec: &mut rec,
                    dense: strategy == Strategy::Checkpointed,
                    scratch: vec![T::zero(); state.len()],
                };
                run_to_end(integ, &mut sys, t_a, end, state, &mut obs)
            }
        };
        (stats, t_b, hit) = match result {
            Ok(s) => s,
            Err(e) => return Err(sys.error.take().map_or(Fail::Solve(e), Fail::Field)),
        };
        if strategy != Strategy::Discrete {
            // (The discrete replay differentiates its own steps: no end-time evaluation.)
            f_end = integ.end_derivative().map(<[T]>::to_vec);
        }
        seg.field.recycle(ws);
    }
    let method = integ.method();
    Ok((stats, SegTape { t_a, t_b, z_end: state[..n].to_vec(), rec, method, f_end }, hit))
}

/// Runs a segment's solve to `end`: its statistics, the time it ended at and the terminal
/// crossing that ended it, if one did.
fn run_to_end<T: Real, S: OdeSystem<T>, G: FnMut(T, &[T], &mut [T]), O: Observer<T>>(
    integ: &mut Integrator<T>,
    sys: &mut S,
    t_a: T,
    end: SegEnd<'_, T, G>,
    state: &mut [T],
    obs: &mut O,
) -> Result<(Stats, T, Option<EventHit<T>>), SolveError> {
    match end {
        SegEnd::At(t_b) => Ok((integ.integrate(sys, t_a, t_b, state, obs)?, t_b, None)),
        SegEnd::Event { t_max, events } => {
            let out = integ.integrate_events(sys, t_a, t_max, state, events, obs)?;
            Ok((out.stats, out.t, out.stopped))
        }
    }
}

/// `a_zᵀ f(t, z) − Σ_b a_ℓ,b q_b(t, z)` (the rate of change of the loss as the segment's end
/// moves) and whether it took a field evaluation: none when `known` holds the forward's
/// derivative at `(t, z)` (`[f | dℓ/dt]` with `dℓ/dt = −q`, or `f`), which gives the same
/// bits as the evaluation (the solver made that very call).
pub(crate) fn end_rate<T: Real, F: VectorField<T>>(
    seg: Seg<'_, T, F>,
    t: T,
    z: &[T],
    known: Option<&[T]>,
    a_z: &[T],
    a_l: &[T],
) -> Result<(T, bool), Fail> {
    if let Some(k) = known.filter(|k| k.len() == z.len() + seg.div.map_or(0, |_| seg.b)) {
        let (f, dl) = k.split_at(z.len());
        let mut dot = T::zero();
        for (&al, &r) in a_l.iter().zip(dl) {
            dot -= al * -r; // q = −dℓ/dt exactly: the same products as below
        }
        for (&a, &fv) in a_z.iter().zip(f) {
            dot += a * fv;
        }
        return Ok((dot, false));
    }
    let mut ws = seg.field.workspace(seg.b);
    let mut f = vec![T::zero(); z.len()];
    let mut dot = T::zero();
    match seg.div {
        Some(div) => {
            let mut q = vec![T::zero(); seg.b];
            seg.field.eval_div(t, z, div, &mut f, &mut q, None, &mut ws)?;
            for (&al, &qb) in a_l.iter().zip(&q) {
                dot -= al * qb;
            }
        }
        None => seg.field.eval(t, z, &mut f, &mut ws)?,
    }
    for (&a, &fv) in a_z.iter().zip(&f) {
        dot += a * fv;
    }
    seg.field.recycle(ws);
    Ok((dot, true))
}

/// Result of a segment's backward pass.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BackOut<T> {
    pub stats: Stats,
    /// Field evaluations outside the backward solver (discrete replay's forward stages).
    pub extra_evals: usize,
    /// Discrete strategy only: ∂L/∂t_a and ∂L/∂t_b of the discrete solution (the steps
    /// start at fixed offsets from t_a and the last one ends at t_b). Zero otherwise.
    pub dt_a: T,
    pub dt_b: T,
}

/// Carries `a_z` from `t_b` to `t_a` through the segment (`a_l`: the constant cotangent of
/// ℓ, length B, ignored without divergence), adding the segment's `∂L/∂θ` into `g`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_segment<T: Real, F: VectorField<T>>(
    seg: Seg<'_, T, F>,
    tape: &SegTape<T>,
    a_z: &mut [T],
    a_l: &[T],
    g: &mut [T],
    adj: &AdjointConfig<T>,
    integ: &mut Integrator<T>,
) -> Result<BackOut<T>, Fail> {
    let mut out = BackOut::default();
    if tape.t_a.partial_cmp(&tape.t_b) == Some(std::cmp::Ordering::Equal) {
        if adj.strategy == Strategy::Discrete {
            // The discrete solution over an empty segment is its start; stretched to length
            // h, its first step moves the end by h·[f | −q] + O(h²) whatever the method, so
            // ∂L/∂t_b = a_zᵀ f − a_ℓᵀ q = −∂L/∂t_a (the other strategies take the rates at
            // the observations themselves).
            let known = tape.f_end.as_deref();
            let (rate, evaluated) = end_rate(seg, tape.t_b, &tape.z_end, known, a_z, a_l)?;
            out.dt_b = rate;
            out.dt_a = -rate;
            out.extra_evals += usize::from(evaluated);
        }
        return Ok(out);
    }
    let n = seg.n();
    let p = seg.field.n_params();
    let c: Vec<T> = if seg.div.is_some() { a_l.iter().map(|&v| -v).collect() } else { Vec::new() };
    let mut ws = seg.field.workspace(seg.b);
    match adj.strategy {
        Strategy::Backsolve => {
            let mut y = vec![T::zero(); 2 * n + p];
            y[..n].copy_from_slice(&tape.z_end);
            y[n..2 * n].copy_from_slice(a_z);
            let mut sys = BacksolveSys {
                seg,
                ws: &mut ws,
                c: &c,
                q: vec![T::zero(); seg.b],
                n,
                seminorm: adj.seminorm,
                error: None,
            };
            out.stats = match integ.integrate(
                &mut sys,
                tape.t_b,
                tape.t_a,
                &mut y,
                &mut odeflow_solvers::NoObserver,
            ) {
                Ok(s) => s,
                Err(e) => return Err(sys.error.take().map_or(Fail::Solve(e), Fail::Field)),
            };
            a_z.copy_from_slice(&y[n..2 * n]);
            add_into(g, &y[2 * n..]);
        }
        Strategy::Checkpointed => {
            let mut y = vec![T::zero(); n + p];
            y[..n].copy_from_slice(a_z);
            let mut sys = InterpSys {
                seg,
                ws: &mut ws,
                rec: &tape.rec,
                c: &c,
                q: vec![T::zero(); seg.b],
                z: vec![T::zero(); n],
                f: vec![T::zero(); n],
                n,
                seminorm: adj.seminorm,
                error: None,
            };
            out.stats = match integ.integrate(
                &mut sys,
                tape.t_b,
                tape.t_a,
                &mut y,
                &mut odeflow_solvers::NoObserver,
            ) {
                Ok(s) => s,
                Err(e) => return Err(sys.error.take().map_or(Fail::Solve(e), Fail::Field)),
            };
            a_z.copy_from_slice(&y[..n]);
            add_into(g, &y[n..]);
        }
        Strategy::Discrete => {
            discrete_backward(seg, tape, a_z, a_l, &c, g, tape.method, &mut ws, &mut out)?;
        }
    }
    seg.field.recycle(ws);
    Ok(out)
}

fn add_into<T: Real>(g: &mut [T], x: &[T]) {
    for (gi, &xi) in g.iter_mut().zip(x) {
        *gi += xi;
    }
}

/// `Φ = Σ_b [a_bᵀ f_b + c_b q_b]` (or `Σ_b a_bᵀ f_b` without divergence): writes `f`, `q`,
/// `∂Φ/∂z` and (if given a buffer) `∂Φ/∂θ`, returns `∂Φ/∂t`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn phi_vjp<T: Real, F: VectorField<T>>(
    seg: Seg<'_, T, F>,
    t: T,
    z: &[T],
    a: &[T],
    c: &[T],
    f: &mut [T],
    q: &mut [T],
    z_cot: &mut [T],
    theta_cot: Option<&mut [T]>,
    ws: &mut F::Workspace,
) -> Result<T, FieldError> {
    match seg.div {
        Some(div) => {
            seg.field.vjp_aug(t, z, div, a, c, AugmentedVjp { f, q, z_cot, theta_cot }, ws)
        }
        None => seg.field.vjp(t, z, a, f, z_cot, theta_cot, ws),
    }
}

/// The backsolve adjoint on `[z (n) | a_z (n) | g_θ (P)]`:
/// `dz/dt = f`, `da_z/dt = −∂Φ/∂z`, `dg/dt = −∂Φ/∂θ` with `Φ = a_zᵀ f − a_ℓᵀ q`
/// (`a_ℓ` is constant, so it and ℓ stay out of the state).
struct BacksolveSys<'a, 'w, T: Real, F: VectorField<T>> {
    seg: Seg<'a, T, F>,
    ws: &'w mut F::Workspace,
    c: &'w [T],
    q: Vec<T>,
    n: usize,
    seminorm: bool,
    error: Option<FieldError>,
}

impl<T: Real, F: VectorField<T>> OdeSystem<T> for BacksolveSys<'_, '_, T, F> {
    fn dim(&self) -> usize {
        2 * self.n + self.seg.field.n_params()
    }
    fn rhs(&mut self, t: T, y: &[T], dy: &mut [T]) {
        self.eval(t, y, dy, true);
    }
    fn error_components(&self) -> Range<usize> {
        if self.seminorm {
            0..2 * self.n
        } else {
            0..self.dim()
        }
    }
    /// `g_θ` is a quadrature: the right-hand side never reads it.
    fn passive_components(&self) -> Range<usize> {
        2 * self.n..self.dim()
    }
    /// With the seminorm, the step-size probe needs `(dz, da_z)` only: a VJP without `∂Φ/∂θ`
    /// (`dg` is left as it was).
    fn rhs_error_part(&mut self, t: T, y: &[T], dy: &mut [T]) {
        self.eval(t, y, dy, !self.seminorm);
    }
    /// A VJP without `∂Φ/∂θ` (the weight-gradient GEMMs) where `dg` is never read.
    fn rhs_active_part(&mut self, t: T, y: &[T], dy: &mut [T]) {
        self.eval(t, y, dy, false);
    }
}

impl<T: Real, F: VectorField<T>> BacksolveSys<'_, '_, T, F> {
    /// The right-hand side, with `dg` only if `theta`.
    fn eval(&mut self, t: T, y: &[T], dy: &mut [T], theta: bool) {
        let n = self.n;
        let (z, rest) = y.split_at(n);
        let a = &rest[..n];
        let (dz, rest) = dy.split_at_mut(n);
        let (da, dg) = rest.split_at_mut(n);
        let dg = if theta { Some(dg) } else { None };
        match phi_vjp(self.seg, t, z, a, self.c, dz, &mut self.q, da, dg, self.ws) {
            Ok(_) => {
                da.iter_mut().for_each(|v| *v = -*v);
                if theta {
                    dy[2 * n..].iter_mut().for_each(|v| *v = -*v);
                }
            }
            Err(e) => {
                self.error.get_or_insert(e);
                dy.fill(T::nan());
            }
        }
    }
}

/// The checkpointed adjoint on `[a_z (n) | g_θ (P)]` with `z(t)` read from the forward
/// pass's recorded interpolant (it cannot drift).
struct InterpSys<'a, 'w, T: Real, F: VectorField<T>> {
    seg: Seg<'a, T, F>,
    ws: &'w mut F::Workspace,
    rec: &'w StepRecord<T>,
    c: &'w [T],
    q: Vec<T>,
    z: Vec<T>,
    f: Vec<T>,
    n: usize,
    seminorm: bool,
    error: Option<FieldError>,
}

impl<T: Real, F: VectorField<T>> OdeSystem<T> for InterpSys<'_, '_, T, F> {
    fn dim(&self) -> usize {
        self.n + self.seg.field.n_params()
    }
    fn rhs(&mut self, t: T, y: &[T], dy: &mut [T]) {
        self.eval(t, y, dy, true);
    }
    fn error_components(&self) -> Range<usize> {
        if self.seminorm {
            0..self.n
        } else {
            0..self.dim()
        }
    }
    /// `g_θ` is a quadrature: the right-hand side never reads it.
    fn passive_components(&self) -> Range<usize> {
        self.n..self.dim()
    }
    /// With the seminorm, the step-size probe needs `da_z` only: a VJP without `∂Φ/∂θ`.
    fn rhs_error_part(&mut self, t: T, y: &[T], dy: &mut [T]) {
        self.eval(t, y, dy, !self.seminorm);
    }
    /// A VJP without `∂Φ/∂θ` (the weight-gradient GEMMs) where `dg` is never read.
    fn rhs_active_part(&mut self, t: T, y: &[T], dy: &mut [T]) {
        self.eval(t, y, dy, false);
    }
}

impl<T: Real, F: VectorField<T>> InterpSys<'_, '_, T, F> {
    /// The right-hand side, with `dg` only if `theta`.
    fn eval(&mut self, t: T, y: &[T], dy: &mut [T], theta: bool) {
        let n = self.n;
        self.rec.eval(t, &mut self.z);
        let a = &y[..n];
        let (da, dg) = dy.split_at_mut(n);
        let dg = if theta { Some(dg) } else { None };
        match phi_vjp(self.seg, t, &self.z, a, self.c, &mut self.f, &mut self.q, da, dg, self.ws) {
            Ok(_) => {
                let end = if theta { dy.len() } else { n };
                dy[..end].iter_mut().for_each(|v| *v = -*v);
            }
            Err(e) => {
                self.error.get_or_insert(e);
                dy.fill(T::nan());
            }
        }
    }
}

/// Reverse-mode differentiation of the recorded explicit RK steps, last step first.
///
/// Step `(t, h)` from `y₀`: `Z_i = y₀ + h Σ_{j<i} a_ij K_j`, `K_i = f(t + c_i h, Z_i)`,
/// `y₁ = y₀ + h Σ_i b_i K_i` (and `ℓ₁ = ℓ₀ − h Σ_i b_i q_i`). Given `ȳ₁` and the constant
/// `ā_ℓ`: `K̄_i = h b_i ȳ₁ + h Σ_{j>i} a_ji Z̄_j`, `(Z̄_i, θ̄_i, t̄_i) = VJP of
/// Φ_i = K̄_iᵀ f − h b_i ā_ℓᵀ q at (t_i, Z_i)`, `ȳ₀ = ȳ₁ + Σ_i Z̄_i`, and
/// `h̄ = ȳ₁ᵀ Σ b_i K_i + Σ_i [Z̄_iᵀ Σ_j a_ij K_j + c_i t̄_i − b_i ā_ℓᵀ q_i]`, `t̄ = Σ_i t̄_i`.
/// Stages after the last nonzero `b_i` (the FSAL stage) are skipped; the stages are
/// re-evaluated from the recorded `y₀` (one evaluation each but the last, whose `K` the
/// VJP returns), then one VJP per stage (of `f` alone where `b_i = 0`).
#[allow(clippy::too_many_arguments)]
fn discrete_backward<T: Real, F: VectorField<T>>(
    seg: Seg<'_, T, F>,
    tape: &SegTape<T>,
    a_z: &mut [T],
    a_l: &[T],
    c: &[T],
    g: &mut [T],
    method: Method,
    ws: &mut F::Workspace,
    out: &mut BackOut<T>,
) -> Result<(), Fail> {
    let tab = method.tableau();
    let n = seg.n();
    let p = seg.field.n_params();
    // Stages after the last nonzero weight do not affect y₁ (the FSAL stage).
    let s = tab.b.iter().rposition(|&x| x.abs() > 0.0).map_or(0, |i| i + 1);
    let conv = |x: f64| T::from_f64c(x);
    let bw: Vec<T> = tab.b[..s].iter().map(|&x| conv(x)).collect();
    let cn: Vec<T> = tab.c[..s].iter().map(|&x| conv(x)).collect();
    let am: Vec<Vec<T>> = tab.a[..s].iter().map(|r| r.iter().map(|&x| conv(x)).collect()).collect();
    let mut zs = vec![T::zero(); s * n];
    let mut ks = vec![T::zero(); s * n];
    let mut kbar = vec![T::zero(); s * n];
    let mut acc = vec![T::zero(); n];
    let mut zbar = vec![T::zero(); n];
    let mut fscr = vec![T::zero(); n];
    let mut qscr = vec![T::zero(); seg.b];
    let mut thscr = vec![T::zero(); p];
    let mut cstage = vec![T::zero(); c.len()];
    let n_steps = tape.rec.len();
    let mut sum_tbar = T::zero();
    let mut hbar_last = T::zero();
    for step in (0..n_steps).rev() {
        let (t, h) = (tape.rec.t[step], tape.rec.h[step]);
        let y0 = tape.rec.step_data(step);
        // Re-run the stages.
        for i in 0..s {
            let (done, rest) = ks.split_at_mut(i * n);
            let zi = &mut zs[i * n..(i + 1) * n];
            zi.copy_from_slice(y0);
            for (j, &aij) in am[i].iter().enumerate() {
                if aij.abs() > T::zero() {
                    let w = h * aij;
                    for (z, &k) in zi.iter_mut().zip(&done[j * n..(j + 1) * n]) {
                        *z += w * k;
                    }
                }
            }
            // The last stage's K feeds no later stage; its VJP below returns it.
            if i + 1 < s {
                seg.field.eval(t + cn[i] * h, zi, &mut rest[..n], ws)?;
                out.extra_evals += 1;
            }
        }
        // Reverse them.
        let mut hbar = T::zero();
        for i in 0..s {
            let w = h * bw[i];
            for (kbv, &a) in kbar[i * n..(i + 1) * n].iter_mut().zip(a_z.iter()) {
                *kbv = w * a;
            }
        }
        acc.copy_from_slice(a_z);
        for i in (0..s).rev() {
            for (cs, &cv) in cstage.iter_mut().zip(c) {
                *cs = h * bw[i] * cv;
            }
            let ti = t + cn[i] * h;
            // A stage with b_i = 0 (Dormand–Prince's second) leaves q out of Φ_i: a plain
            // VJP of f, without the divergence's reverse pass.
            let weighted = bw[i] != T::zero();
            let seg_i = if weighted { seg } else { Seg { div: None, ..seg } };
            let tbar = phi_vjp(
                seg_i,
                ti,
                &zs[i * n..(i + 1) * n],
                &kbar[i * n..(i + 1) * n],
                &cstage,
                &mut fscr,
                &mut qscr,
                &mut zbar,
                Some(&mut thscr),
                ws,
            )?;
            out.stats.n_rhs += 1;
            out.stats.n_rhs_active += usize::from(!weighted);
            // y₁ = y₀ + h Σ b_i K_i: explicit h-dependence (K_i = f from the VJP).
            hbar += bw[i] * a_z.iter().zip(&fscr).fold(T::zero(), |s, (&a, &k)| s + a * k);
            add_into(g, &thscr);
            add_into(&mut acc, &zbar);
            let (kb_lo, _) = kbar.split_at_mut(i * n);
            for (j, &aij) in am[i].iter().enumerate() {
                if aij.abs() > T::zero() {
                    let w = h * aij;
                    let kj = &ks[j * n..(j + 1) * n];
                    let mut dot = T::zero();
                    for ((kbv, &zb), &k) in kb_lo[j * n..(j + 1) * n].iter_mut().zip(&zbar).zip(kj)
                    {
                        *kbv += w * zb;
                        dot += zb * k;
                    }
                    hbar += aij * dot;
                }
            }
            hbar += cn[i] * tbar;
            if seg_i.div.is_some() {
                // ℓ₁ = ℓ₀ − h Σ b_i q_i: explicit h-dependence.
                let lq = a_l.iter().zip(&qscr).fold(T::zero(), |s, (&al, &qb)| s + al * qb);
                hbar -= bw[i] * lq;
            }
            sum_tbar += tbar;
        }
        a_z.copy_from_slice(&acc);
        if step == n_steps - 1 {
            hbar_last = hbar;
        }
        out.stats.n_accepted += 1;
    }
    out.dt_b = hbar_last;
    out.dt_a = sum_tbar - hbar_last;
    Ok(())
}
