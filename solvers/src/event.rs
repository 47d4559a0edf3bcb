//! Events: the zero crossings of functions `g_i(t, y)`, located on each accepted step's dense
//! output, recorded, and (for a terminal event) ending the solve at the crossing. What counts
//! as a crossing and how it is located: [`Events`].

use std::ops::ControlFlow;

use crate::observer::DenseRows;
use crate::{Observer, Real, SolveError, Stats, StepView};

/// Which sign changes of an event function are events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Crossing {
    /// From negative to zero or positive.
    Rising,
    /// From positive to zero or negative.
    Falling,
    /// Either way.
    #[default]
    Either,
}

impl Crossing {
    fn admits(self, rising: bool) -> bool {
        match self {
            Crossing::Rising => rising,
            Crossing::Falling => !rising,
            Crossing::Either => true,
        }
    }
}

/// How one event function is watched: which crossings count, and whether the first one ends
/// the solve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventSpec {
    /// Which sign changes are events.
    pub crossing: Crossing,
    /// Whether the solve ends at this event's first crossing.
    pub terminal: bool,
}

impl EventSpec {
    /// An event that is recorded and lets the solve go on.
    pub fn record(crossing: Crossing) -> Self {
        EventSpec { crossing, terminal: false }
    }
    /// An event that ends the solve at its first crossing.
    pub fn terminal(crossing: Crossing) -> Self {
        EventSpec { crossing, terminal: true }
    }
}

/// One located crossing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventHit<T> {
    /// Which event function (its index in the specs given to [`Events::new`]).
    pub index: usize,
    /// The crossing time.
    pub t: T,
    /// `true` for a rising crossing, `false` for a falling one.
    pub rising: bool,
    /// Whether this crossing ended the solve.
    pub terminal: bool,
}

/// The outcome of [`Integrator::integrate_events`](crate::Integrator::integrate_events).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventSolve<T> {
    /// The time the state was left at: `t1`, a terminal event's time, or the end of the step
    /// at which the observer broke.
    pub t: T,
    /// The terminal crossing that ended the solve, if one did.
    pub stopped: Option<EventHit<T>>,
    /// The solve's statistics.
    pub stats: Stats,
}

/// A set of `m` event functions `g_i(t, y)`, given as one function that writes all `m` values
/// (`g(t, y, out)`, `out.len() == m`), with their [`EventSpec`]s, and the crossings found by
/// the last solve ([`Events::hits`], with the state at each: [`Events::state`]).
///
/// The buffers grow on the first solve of a given size and are reused; a step without a
/// crossing allocates nothing, and a recorded crossing appends to two vectors.
///
/// # Crossings
///
/// After every accepted step from `t_a` to `t_b` the event functions are evaluated at the
/// step's end. Event `i` crosses in the step when `g_i` changes sign:
///
/// - *rising*: `g_i(t_a) < 0 ≤ g_i(t_b)`; *falling*: `g_i(t_a) > 0 ≥ g_i(t_b)`. The
///   direction is along the solve: backward in time, a function that grows as t decreases
///   rises.
/// - A value of exactly 0 at the step's start is no crossing: an event function that is 0 at
///   `t0` does not fire there, and one that touches 0 at a step's end and turns back fires
///   once, at the touch. (So a function that leaves an exact 0 and crosses back within the
///   same step is not seen there.)
/// - A solve restarted from a located event's state (on the zero or just past it, below)
///   does not meet that crossing again. After a reflection, though (a bounce: the velocity
///   reversed at the event), the state is just past the zero and heads back: a
///   [`Crossing::Either`] event fires again at once. Watch the direction the state arrives
///   from ([`Crossing::Falling`] for a ball meeting the ground).
/// - Two crossings of the same function inside one step cancel and go unseen, as in SciPy's
///   `solve_ivp` and diffrax: bound the step ([`SolveOptions::h_max`](crate::SolveOptions))
///   where events may come in pairs closer than a step.
///
/// The crossing time is the zero of `θ ↦ g_i(t_a + θh, u(θ))`, `u` the step's interpolant
/// ([`DenseOutput`](crate::DenseOutput)), found by the Illinois variant of regula falsi on
/// the bracket `[0, 1]`, with a bisection step whenever three iterations have not halved it,
/// until the bracket is 4 ε wide in θ (or its ends are the same time). The time reported is
/// the bracket's end on the far side of the crossing, so `g_i` at the reported time and state
/// has its new sign or is 0: the located event has happened. Its accuracy is the
/// interpolant's (the method's dense-output order), not the root finder's.
///
/// Within a step, crossings are taken in time order. Every crossing up to and including the
/// first terminal one is recorded; a terminal crossing ends the solve with the state at that
/// time (crossings at the same time as it are recorded too).
///
/// ```
/// use odeflow_solvers::{Crossing, EventSpec, Events, FnSystem, Integrator, Method, NoObserver,
///     SolveOptions};
///
/// // A ball dropped from 5 m: y = (height, velocity), y'' = −9.81. It lands at √(10/9.81).
/// let mut ball = FnSystem::new(2, |_t: f64, y: &[f64], dy: &mut [f64]| {
///     dy[0] = y[1];
///     dy[1] = -9.81;
/// });
/// let mut ground = Events::new(vec![EventSpec::terminal(Crossing::Falling)],
///     |_t: f64, y: &[f64], g: &mut [f64]| g[0] = y[0]);
/// let mut integ = Integrator::new(Method::Dopri5, SolveOptions::tol(1e-8, 1e-8)).unwrap();
/// let mut y = [5.0, 0.0];
/// let out = integ.integrate_events(&mut ball, 0.0, 10.0, &mut y, &mut ground, &mut NoObserver)
///     .unwrap();
/// assert!(out.stopped.is_some());
/// assert!((out.t - (10.0f64 / 9.81).sqrt()).abs() < 1e-12);
/// assert!(y[0] <= 0.0 && y[0] > -1e-12); // just past the ground, not through it
/// ```
#[derive(Debug, Clone)]
pub struct Events<T, G> {
    specs: Vec<EventSpec>,
    g: G,
    hits: Vec<EventHit<T>>,
    states: Vec<T>,
    dim: usize,
    g_old: Vec<T>,
    g_new: Vec<T>,
    g_probe: Vec<T>,
    y_probe: Vec<T>,
    y_saved: Vec<T>,
    found: Vec<(T, usize, bool)>,
    started: bool,
    error: Option<SolveError>,
}

impl<T: Real, G: FnMut(T, &[T], &mut [T])> Events<T, G> {
    /// Event functions `g` (writing `specs.len()` values) watched as `specs` say.
    pub fn new(specs: Vec<EventSpec>, g: G) -> Self {
        Events {
            specs,
            g,
            hits: Vec::new(),
            states: Vec::new(),
            dim: 0,
            g_old: Vec::new(),
            g_new: Vec::new(),
            g_probe: Vec::new(),
            y_probe: Vec::new(),
            y_saved: Vec::new(),
            found: Vec::new(),
            started: false,
            error: None,
        }
    }

    /// The specs, one per event function.
    pub fn specs(&self) -> &[EventSpec] {
        &self.specs
    }

    /// The crossings the last solve found, in time order (within a step, crossings at the same
    /// time in the order of their index).
    pub fn hits(&self) -> &[EventHit<T>] {
        &self.hits
    }

    /// The state at hit `k` (the dense output at its time), or `None` past the last hit.
    pub fn state(&self, k: usize) -> Option<&[T]> {
        if k >= self.hits.len() {
            return None;
        }
        let d = self.dim;
        self.states.get(k * d..(k + 1) * d)
    }

    /// Clears the last solve's hits and sizes the buffers for states of length `dim`, keeping
    /// `y0` to restore on error.
    pub(crate) fn begin(&mut self, y0: &[T]) {
        let m = self.specs.len();
        self.dim = y0.len();
        self.hits.clear();
        self.states.clear();
        for buf in [&mut self.g_old, &mut self.g_new, &mut self.g_probe] {
            buf.clear();
            buf.resize(m, T::zero());
        }
        self.y_probe.clear();
        self.y_probe.resize(self.dim, T::zero());
        self.y_saved.clear();
        self.y_saved.extend_from_slice(y0);
        self.found.clear();
        self.found.reserve(m);
        self.started = false;
        self.error = None;
    }

    /// `g` at (t, y) into `out`; an error naming the first non-finite value.
    fn eval(g: &mut G, t: T, y: &[T], out: &mut [T]) -> Result<(), SolveError> {
        g(t, y, out);
        match out.iter().position(|v| !v.is_finite()) {
            Some(index) => Err(SolveError::NonFiniteEvent { index, t: t.to_f64c() }),
            None => Ok(()),
        }
    }

    /// Processes one accepted step: records its crossings and returns the θ of the first
    /// terminal one.
    fn on_step(&mut self, step: &StepView<'_, T>) -> Result<Option<T>, SolveError> {
        if matches!(step.dense, DenseRows::None) {
            return Err(SolveError::DenseOutputUnavailable);
        }
        let Events {
            specs,
            g,
            hits,
            states,
            dim,
            g_old,
            g_new,
            g_probe,
            y_probe,
            found,
            started,
            ..
        } = self;
        if !*started {
            Self::eval(g, step.t_start, step.y_start, g_old)?;
            *started = true;
        }
        Self::eval(g, step.t_end, step.y_end, g_new)?;
        found.clear();
        for (i, spec) in specs.iter().enumerate() {
            let (a, b) = (g_old[i], g_new[i]);
            let rising = a < T::zero() && b >= T::zero();
            let falling = a > T::zero() && b <= T::zero();
            if !(rising || falling) || !spec.crossing.admits(rising) {
                continue;
            }
            let theta =
                if b == T::zero() { T::one() } else { locate(g, i, step, a, b, y_probe, g_probe)? };
            found.push((theta, i, rising));
        }
        std::mem::swap(g_old, g_new);
        // Time order (θ grows in the direction of integration); ties by index.
        found.sort_unstable_by(|x, y| {
            x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal).then(x.1.cmp(&y.1))
        });
        let mut stop: Option<T> = None;
        for &(theta, index, rising) in found.iter() {
            if stop.is_some_and(|s| theta > s) {
                break;
            }
            let terminal = specs[index].terminal && stop.is_none();
            hits.push(EventHit { index, t: time_at(step, theta), rising, terminal });
            let at = states.len();
            states.resize(at + *dim, T::zero());
            state_at(step, theta, &mut states[at..])?;
            if terminal {
                stop = Some(theta);
            }
        }
        Ok(stop)
    }

    /// The crossing that ended the solve, with its state.
    fn terminal_hit(&self) -> Option<(EventHit<T>, &[T])> {
        let k = self.hits.iter().rposition(|h| h.terminal)?;
        Some((self.hits[k], self.state(k)?))
    }
}

/// `t_a + θh`, exactly `t_b` at θ = 1.
fn time_at<T: Real>(step: &StepView<'_, T>, theta: T) -> T {
    if theta == T::one() {
        step.t_end
    } else {
        step.t_start + theta * step.h_dense
    }
}

/// The interpolant at θ, exactly the step's end points at θ = 0 and 1.
fn state_at<T: Real>(step: &StepView<'_, T>, theta: T, out: &mut [T]) -> Result<(), SolveError> {
    if theta == T::one() {
        out.copy_from_slice(step.y_end);
    } else if theta == T::zero() {
        out.copy_from_slice(step.y_start);
    } else {
        step.interpolate_theta(theta, out)?;
    }
    Ok(())
}

/// Most root-finding iterations per crossing: bisection alone narrows `[0, 1]` to 4 ε in 51,
/// and the safeguard halves the bracket at least every third iteration.
const MAX_ITERATIONS: usize = 160;

/// The zero of `g_i` on the step's interpolant between θ = 0 (value `ga`) and θ = 1 (value
/// `gb`, of the other sign and nonzero): Illinois regula falsi with a bisection safeguard. The
/// returned θ is the bracket's end on `gb`'s side (or an exact zero).
fn locate<T: Real, G: FnMut(T, &[T], &mut [T])>(
    g: &mut G,
    i: usize,
    step: &StepView<'_, T>,
    ga: T,
    gb: T,
    y: &mut [T],
    gv: &mut [T],
) -> Result<T, SolveError> {
    let two = T::one() + T::one();
    let half = T::one() / two;
    let tol = T::from_f64c(4.0) * T::epsilon();
    let new_positive = gb > T::zero();
    let (mut a, mut b) = (T::zero(), T::one());
    let (mut fa, mut fb) = (ga, gb);
    // Which end the last iterate replaced: -1 the old side (a), +1 the new side (b).
    let mut side = 0i8;
    let mut width_before = T::one();
    for iter in 0..MAX_ITERATIONS {
        if b - a <= tol || time_at(step, a) == time_at(step, b) {
            break;
        }
        let bisect = iter % 3 == 2 && b - a > half * width_before;
        if iter % 3 == 2 {
            width_before = b - a;
        }
        let mut c = b - fb * (b - a) / (fb - fa);
        if bisect || !(c > a && c < b) {
            c = a + half * (b - a);
            if !(c > a && c < b) {
                break; // a and b are adjacent numbers
            }
        }
        state_at(step, c, y)?;
        Events::<T, G>::eval(g, time_at(step, c), y, gv)?;
        let fc = gv[i];
        if fc == T::zero() {
            return Ok(c);
        }
        if (fc > T::zero()) == new_positive {
            b = c;
            fb = fc;
            if side == 1 {
                fa *= half;
            }
            side = 1;
        } else {
            a = c;
            fa = fc;
            if side == -1 {
                fb *= half;
            }
            side = -1;
        }
    }
    Ok(b)
}

/// The observer [`Integrator::integrate_events`](crate::Integrator::integrate_events) runs:
/// the events first, then the caller's observer (on a terminal step, the step cut at the
/// event).
pub(crate) struct Watch<'a, T, G, O: ?Sized> {
    pub(crate) events: &'a mut Events<T, G>,
    pub(crate) obs: &'a mut O,
    pub(crate) t_reached: Option<T>,
}

impl<T: Real, G: FnMut(T, &[T], &mut [T]), O: Observer<T> + ?Sized> Observer<T>
    for Watch<'_, T, G, O>
{
    fn wants_dense(&self) -> bool {
        true
    }

    fn on_step(&mut self, step: &StepView<'_, T>) -> ControlFlow<()> {
        self.t_reached = Some(step.t_end);
        match self.events.on_step(step) {
            Err(e) => {
                self.events.error = Some(e);
                ControlFlow::Break(())
            }
            Ok(None) => self.obs.on_step(step),
            Ok(Some(theta)) => {
                let t_end = time_at(step, theta);
                self.t_reached = Some(t_end);
                let Some((_, y_end)) = self.events.terminal_hit() else {
                    return ControlFlow::Break(());
                };
                let cut = StepView { t_end, h: t_end - step.t_start, y_end, ..*step };
                let _ = self.obs.on_step(&cut);
                ControlFlow::Break(())
            }
        }
    }
}

impl<T: Real, G: FnMut(T, &[T], &mut [T])> Events<T, G> {
    /// Ends a solve: the error an event function raised (with `y` restored to the start), or
    /// the terminal hit (with `y` set to its state).
    pub(crate) fn finish(
        &mut self,
        y: &mut [T],
        t1: T,
        t_reached: Option<T>,
        stats: Stats,
    ) -> Result<EventSolve<T>, SolveError> {
        if let Some(e) = self.error.take() {
            y.copy_from_slice(&self.y_saved);
            return Err(e);
        }
        if let Some((hit, state)) = self.terminal_hit() {
            y.copy_from_slice(state);
            return Ok(EventSolve { t: hit.t, stopped: Some(hit), stats });
        }
        Ok(EventSolve { t: t_reached.unwrap_or(t1), stopped: None, stats })
    }
}
