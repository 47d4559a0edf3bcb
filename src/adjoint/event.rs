//! Gradients through an event time: a neural ODE solved until an event function of its state
//! crosses zero, and a loss on the event time and the state there (Chen, Amos & Nickel,
//! "Learning neural event functions for ordinary differential equations", ICLR 2021;
//! torchdiffeq's `odeint_event`).
//!
//! The event time `t*` is defined implicitly by `g(t*, z(t*; θ)) = 0`. Differentiating,
//! `ġ · dt*/dθ + g_zᵀ ∂z(t*)/∂θ = 0` with `ġ = g_t + g_zᵀ f(t*, z*)`, the rate of `g` along the
//! solution. For a loss `L(t*, z*)`,
//!
//! ```text
//! dL/dθ = L_zᵀ (∂z(t*)/∂θ + f(t*, z*) dt*/dθ) + L_t dt*/dθ
//!       = a*ᵀ ∂z(t*)/∂θ,          a* = L_z − ((L_zᵀ f(t*, z*) + L_t) / ġ) g_z,
//! ```
//!
//! so one adjoint solve from `t*` with the terminal cotangent `a*` gives the total
//! derivatives with respect to θ, the initial state and `t0` (the event time's own
//! dependence included). A crossing with `ġ = 0` (tangential) has no derivative and is an
//! error.

use odeflow_solvers::{Crossing, EventSpec, Events, Integrator, Method, SolveOptions};

use super::engine::{forward_segment_to, Seg, SegEnd};
use super::{fail, ode_forward_here, AdjointConfig, GradStats, OdeSpec, OdeTape, Strategy};
use crate::error::{batch_size, check_finite, check_len, Error};
use crate::field::{Real, VectorField};
use crate::pool::on_pool;

/// A scalar event function `g(t, z)` of a neural ODE's whole state (`B × d`), with its
/// gradient. The solve ends where `g` crosses zero.
pub trait EventFunction<T> {
    /// Checks that the function applies to states of length `n` (called before a solve);
    /// default: any length.
    ///
    /// # Errors
    ///
    /// An [`Error`] saying why not.
    fn check(&self, n: usize) -> Result<(), Error> {
        let _ = n;
        Ok(())
    }
    /// `g(t, z)`.
    fn value(&self, t: T, z: &[T]) -> T;
    /// Writes `∂g/∂z` into `grad_z` (as long as `z`) and returns `∂g/∂t`.
    fn gradient(&self, t: T, z: &[T], grad_z: &mut [T]) -> T;
}

/// The affine event `g(t, z) = wᵀz − c`: the state reaching a hyperplane (a coordinate
/// reaching a level, with `w` a unit vector).
#[derive(Debug, Clone, PartialEq)]
pub struct HyperplaneEvent<T> {
    /// The normal `w` (as long as the state).
    pub w: Vec<T>,
    /// The level `c`.
    pub c: T,
}

impl<T: Real> EventFunction<T> for HyperplaneEvent<T> {
    /// `w` must be as long as the state, and `w` and `c` finite.
    fn check(&self, n: usize) -> Result<(), Error> {
        check_len("w", self.w.len(), n)?;
        if let Some(v) = self.w.iter().find(|v| !v.is_finite()) {
            let (name, value, expected) = ("w", v.to_f64c(), "finite (every entry)");
            return Err(Error::InvalidConfig { name, value, expected });
        }
        if !self.c.is_finite() {
            let (name, value, expected) = ("c", self.c.to_f64c(), "finite");
            return Err(Error::InvalidConfig { name, value, expected });
        }
        Ok(())
    }
    fn value(&self, _t: T, z: &[T]) -> T {
        self.w.iter().zip(z).fold(-self.c, |s, (&w, &z)| s + w * z)
    }
    fn gradient(&self, _t: T, _z: &[T], grad_z: &mut [T]) -> T {
        grad_z.copy_from_slice(&self.w);
        T::zero()
    }
}

/// A neural-ODE solve from `z(t0)` until an event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventOdeSpec<T> {
    /// The initial time.
    pub t0: T,
    /// The solve looks for the event up to `t_max` (before or after `t0`: the direction of
    /// integration); no crossing by then is an error.
    pub t_max: T,
    /// Which sign changes of `g` count.
    pub crossing: Crossing,
    /// The forward method.
    pub method: Method,
    /// The forward solver options.
    pub options: SolveOptions<T>,
}

/// Total derivatives of a loss on an event time and the state there.
#[derive(Debug, Clone, PartialEq)]
pub struct EventGradient<T> {
    /// `dL/dθ`.
    pub theta: Vec<T>,
    /// `dL/dz(t0)` (`B × d`).
    pub y0: Vec<T>,
    /// `dL/dt0`.
    pub t0: T,
    /// The terminal cotangent `a* = L_z − ((L_zᵀ f + L_t)/ġ) g_z` the adjoint started from.
    pub cotangent: Vec<T>,
    /// Work statistics: `forward` counts the forward solve (both, the event search and the
    /// solve to `t*`, for the discrete strategy) and, for backsolve and checkpointed, the
    /// evaluation of `f(t*, z*)` they keep; `extra_evals` those of [`OdeTape::backward`], and
    /// for the discrete strategy one more, `f(t*, z*)` for `ġ`.
    pub stats: GradStats,
}

/// The forward pass of an event-terminated solve, kept for the backward one (with the event
/// function it was made with). Made by [`ode_event_forward`].
#[derive(Debug)]
pub struct EventTape<'a, T, F, E> {
    t_event: T,
    event: &'a E,
    /// The located state of the event search (on the zero or just past it) where it is not
    /// the tape's end state (the discrete strategy's second solve).
    located: Option<Vec<T>>,
    tape: OdeTape<'a, T, F>,
    search: odeflow_solvers::Stats,
}

/// Solves `dz/dt = f(t, z)` from `y0` at `spec.t0` until `event` crosses zero (located on the
/// dense output, [`odeflow_solvers::Events`]), keeping what `adj.strategy` needs as it goes:
/// the adjoint's tape ends at the event, its last step cut there (backsolve keeps the state
/// at `t*`, checkpointed the interpolant of each step). The discrete strategy differentiates
/// the solver's whole steps, so its search keeps nothing and a second solve, from `t0` to
/// `t*`, makes its tape (twice the forward work).
///
/// # Errors
///
/// [`Error::NoEvent`] if `g` does not cross by `t_max`; what
/// [`EventFunction::check`] finds; the errors of [`ode_forward`](super::ode_forward), and a
/// non-finite event value as [`Error::Solve`].
pub fn ode_event_forward<'a, T, F, E>(
    field: &'a F,
    spec: &EventOdeSpec<T>,
    y0: &[T],
    event: &'a E,
    adj: &AdjointConfig<T>,
) -> Result<EventTape<'a, T, F, E>, Error>
where
    T: Real,
    F: VectorField<T>,
    E: EventFunction<T> + Sync,
{
    on_pool(|| {
        adj.validate()?;
        adj.check_backward_step_size(spec.method, &spec.options)?;
        let d = field.dim();
        let b = batch_size(y0.len(), d)?;
        check_finite(y0, d)?;
        event.check(y0.len())?;
        for (name, t) in [("t0", spec.t0), ("t_max", spec.t_max)] {
            if !t.is_finite() {
                let expected = "finite";
                return Err(Error::InvalidConfig { name, value: t.to_f64c(), expected });
            }
        }
        let solve = |source| Error::Solve { block: 0, source };
        let mut integ = Integrator::new(spec.method, spec.options.clone()).map_err(solve)?;
        integ.reserve(y0.len()).map_err(solve)?;
        let mut events = Events::new(
            vec![EventSpec { crossing: spec.crossing, terminal: true }],
            |t, z: &[T], g: &mut [T]| g[0] = event.value(t, z),
        );
        // The discrete strategy differentiates whole steps: its search keeps nothing, and a
        // second solve to t* makes its tape. The others keep their tape as they search.
        let discrete = adj.strategy == Strategy::Discrete;
        let search_adj =
            if discrete { AdjointConfig::with_strategy(Strategy::Backsolve) } else { adj.clone() };
        let mut state = y0.to_vec();
        let end = SegEnd::Event { t_max: spec.t_max, events: &mut events };
        let seg = Seg { field, div: None, b };
        let (mut stats, mut seg_tape, hit) =
            forward_segment_to(seg, spec.t0, end, &mut state, &mut integ, &search_adj)
                .map_err(|e| fail(e, 0, false))?;
        let Some(hit) = hit else {
            return Err(Error::NoEvent { t_max: spec.t_max.to_f64c() });
        };
        let ode = OdeSpec {
            t0: spec.t0,
            t_obs: vec![hit.t],
            method: spec.method,
            options: spec.options.clone(),
        };
        if discrete {
            let tape = ode_forward_here(field, &ode, y0, adj)?;
            let located = Some(state);
            return Ok(EventTape { t_event: hit.t, event, located, tape, search: stats });
        }
        // f(t*, z*), which no solver stage computed at the cut state: the backward pass
        // reads it twice (ġ, and the observation's time gradient).
        let mut f = vec![T::zero(); state.len()];
        let mut ws = field.workspace(b);
        field.eval(hit.t, &state, &mut f, &mut ws)?;
        field.recycle(ws);
        stats.n_rhs += 1;
        seg_tape.f_end = Some(f);
        let tape = OdeTape {
            field,
            spec: ode,
            adj: adj.clone(),
            b,
            y0: y0.to_vec(),
            states: state,
            segs: vec![seg_tape],
            forward: stats,
        };
        let search = odeflow_solvers::Stats::default();
        Ok(EventTape { t_event: hit.t, event, located: None, tape, search })
    })
}

impl<T: Real, F: VectorField<T>, E: EventFunction<T> + Sync> EventTape<'_, T, F, E> {
    /// The event time `t*`.
    pub fn t_event(&self) -> T {
        self.t_event
    }

    /// The state at the event time (`B × d`), the one the loss and its gradient see: the
    /// located state, except with the discrete strategy, whose second solve to `t*` ends
    /// within the solver's tolerance of the zero on either side (to continue past the event,
    /// restart from [`EventTape::located_state`]).
    pub fn state(&self) -> &[T] {
        self.tape.states()
    }

    /// The state the event search located (`B × d`): on the zero or just past it, so a solve
    /// restarted from `(t*, located_state)` does not meet this crossing again (see
    /// [`odeflow_solvers::Events`]).
    pub fn located_state(&self) -> &[T] {
        self.located.as_deref().unwrap_or(self.tape.states())
    }

    /// The forward statistics (the event search and, for the discrete strategy, the solve to
    /// `t*`, together).
    pub fn forward_stats(&self) -> odeflow_solvers::Stats {
        let mut s = self.search;
        s += self.tape.forward_stats();
        s
    }

    /// Total derivatives of a loss `L(t*, z*)` given `∂L/∂z*` (`B × d`) and `∂L/∂t*`, through
    /// the event time's dependence on θ and the initial state (the module docs give the
    /// formula).
    ///
    /// # Errors
    ///
    /// [`Error::TangentialEvent`] if `g`'s rate along the solution at `t*` is 0 or not
    /// finite;
    /// [`Error::NonFiniteGradient`] (`"event"`) if the event function's gradient is not
    /// finite there; [`Error::BufferLength`] / [`Error::NonFiniteInput`] for a bad `dl_dz`,
    /// [`Error::InvalidConfig`] for a non-finite `dl_dt`; the errors of [`OdeTape::backward`].
    pub fn backward(&self, dl_dz: &[T], dl_dt: T) -> Result<EventGradient<T>, Error> {
        on_pool(|| {
            let field = self.tape.field;
            let d = field.dim();
            let z = self.tape.states();
            let n = z.len();
            check_len("dl_dz", dl_dz.len(), n)?;
            check_finite(dl_dz, d)?;
            if !dl_dt.is_finite() {
                let (name, value, expected) = ("dl_dt", dl_dt.to_f64c(), "finite");
                return Err(Error::InvalidConfig { name, value, expected });
            }
            let t = self.t_event;
            // f(t*, z*): kept by the forward (backsolve, checkpointed), else one evaluation.
            let known = self.tape.segs.last().and_then(|s| s.f_end.as_deref());
            let mut f = vec![T::zero(); n];
            let mut evaluated = 0;
            match known.filter(|k| k.len() == n) {
                Some(k) => f.copy_from_slice(k),
                None => {
                    let mut ws = field.workspace(n / d.max(1));
                    field.eval(t, z, &mut f, &mut ws)?;
                    field.recycle(ws);
                    evaluated = 1;
                }
            }
            let mut g_z = vec![T::zero(); n];
            let g_t = self.event.gradient(t, z, &mut g_z);
            // ∂g/∂z then ∂g/∂t, as one vector for the report.
            let bad = g_z.iter().chain([&g_t]).position(|v| !v.is_finite());
            if let Some(index) = bad {
                let value = if index < n { g_z[index] } else { g_t }.to_f64c();
                return Err(Error::NonFiniteGradient { what: "event", segment: 0, index, value });
            }
            let dot = |a: &[T], b: &[T]| a.iter().zip(b).fold(T::zero(), |s, (&x, &y)| s + x * y);
            let rate = g_t + dot(&g_z, &f);
            if !(rate.is_finite() && rate != T::zero()) {
                return Err(Error::TangentialEvent { t: t.to_f64c(), rate: rate.to_f64c() });
            }
            let s = (dot(dl_dz, &f) + dl_dt) / rate;
            let cotangent: Vec<T> = dl_dz.iter().zip(&g_z).map(|(&l, &g)| l - s * g).collect();
            let grad = self.tape.backward_here(&cotangent)?;
            let mut stats = grad.stats;
            stats.forward += self.search;
            stats.extra_evals += evaluated;
            Ok(EventGradient { theta: grad.theta, y0: grad.y0, t0: grad.t0, cotangent, stats })
        })
    }
}

/// A loss on an event time and the state there, and its total derivatives in one call:
/// `loss(t*, z*, dl_dz)` writes `∂L/∂z*` into `dl_dz` (zeroed) and returns `(L, ∂L/∂t*)`.
/// Returns `(L, t*, gradient)`.
///
/// ```
/// use odeflow::adjoint::{ode_event_grad, AdjointConfig, EventOdeSpec, HyperplaneEvent};
/// use odeflow::field::LinearField;
/// use odeflow::solvers::{Crossing, Method, SolveOptions};
///
/// // dz/dt = a z (a = −0.5) from z0 = 2 until z = 1: t* = ln(1/2)/a = 2 ln 2, and with
/// // L = t*, dL/da = −ln(1/2)/a² and dL/dz0 = −1/(a z0).
/// let field = LinearField::new(&[-0.5], &[0.0]).unwrap();
/// let spec = EventOdeSpec {
///     t0: 0.0,
///     t_max: 10.0,
///     crossing: Crossing::Falling,
///     method: Method::Dopri5,
///     options: SolveOptions::tol(1e-10, 1e-10),
/// };
/// let level = HyperplaneEvent { w: vec![1.0], c: 1.0 };
/// let loss = |t: f64, _z: &[f64], _dz: &mut [f64]| (t, 1.0);
/// let (l, t, g) =
///     ode_event_grad(&field, &spec, &[2.0], &level, &AdjointConfig::default(), loss).unwrap();
/// let ln2 = 2f64.ln();
/// assert!((t - 2.0 * ln2).abs() < 1e-8 && (l - t).abs() < 1e-15);
/// assert!((g.theta[0] - 4.0 * ln2).abs() < 1e-7); // ∂/∂a (θ = (a, b)): −ln(1/2)/a²
/// assert!((g.y0[0] - 1.0).abs() < 1e-7); // −1/(a z0) = 1
/// ```
pub fn ode_event_grad<T, F, E>(
    field: &F,
    spec: &EventOdeSpec<T>,
    y0: &[T],
    event: &E,
    adj: &AdjointConfig<T>,
    loss: impl FnOnce(T, &[T], &mut [T]) -> (T, T),
) -> Result<(T, T, EventGradient<T>), Error>
where
    T: Real,
    F: VectorField<T>,
    E: EventFunction<T> + Sync,
{
    let tape = ode_event_forward(field, spec, y0, event, adj)?;
    let mut dl = vec![T::zero(); tape.state().len()];
    let (l, dl_dt) = loss(tape.t_event, tape.state(), &mut dl);
    if !l.is_finite() {
        return Err(Error::NonFiniteLoss { value: l.to_f64c() });
    }
    let grad = tape.backward(&dl, dl_dt)?;
    Ok((l, tape.t_event, grad))
}
