//! Fitting a neural ODE dy/dt = f(y; θ) to one observed trajectory (torchdiffeq's
//! `ode_demo.py`).
//!
//! Each iteration picks `batch_size` random start indices s_b of the observations
//! (t_i, y_i), i = 0..N−1, and integrates the batch of segments from ŷ_b(t_{s_b}) = y_{s_b}
//! over the next `batch_time − 1` observation intervals (the field is autonomous, so every
//! segment uses the relative times t_1 − t_0, …, as the demo does), and minimises
//!
//! ```text
//! L(θ) = (1 / (K·B·d)) Σ_{k<K} Σ_b Σ_j ℓ(ŷ_{b,j}(t_k) − y_{s_b+k, j}),   K = batch_time,
//! ```
//!
//! with ℓ = |·| (the demo's L1, [`NodeLoss::L1`]) or ½(·)² ([`NodeLoss::Mse`]). The
//! gradient comes from the adjoint's trajectory loss ([`crate::adjoint::ode_grad`]: the
//! adjoint jumps by ∂L/∂ŷ(t_k) at each observation). Adam updates θ.
//!
//! [`spiral`] generates the demo's data: dy/dt = (y³)ᵀ A, A = [[−0.1, 2], [−2, −0.1]],
//! y(0) = (2, 0), 1000 observations on [0, 25], optionally with Gaussian noise.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use odeflow_solvers::{FnSystem, Integrator, Method, SolveOptions};

use crate::adjoint::{ode_forward, ode_grad, AdjointConfig, OdeSpec};
use crate::error::Error;
use crate::field::{Real, VectorField};

use super::optim::{Adam, AdamConfig};
use super::state::TrainState;

/// One observed trajectory: times `t` (increasing) and states `y` (`t.len() × dim`).
#[derive(Debug, Clone, PartialEq)]
pub struct Observations<T> {
    /// Observation times, strictly increasing.
    pub t: Vec<T>,
    /// Observed states, sample-major (`t.len() × dim`).
    pub y: Vec<T>,
    /// The state dimension.
    pub dim: usize,
}

impl<T: Real> Observations<T> {
    /// Checks the shapes: at least two times, increasing, `y.len() = t.len()·dim`, all finite.
    pub fn validate(&self) -> Result<(), Error> {
        crate::error::check_len("y", self.y.len(), self.t.len() * self.dim)?;
        crate::error::check_finite(&self.y, self.dim)?;
        let ok = self.t.len() >= 2
            && self.t.iter().all(|t| t.is_finite())
            && self.t.windows(2).all(|w| w[1] > w[0]);
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidConfig {
                name: "t",
                value: self.t.len() as f64,
                expected: "at least two finite, strictly increasing times",
            })
        }
    }
}

/// torchdiffeq's spiral: dy/dt = (y³)ᵀ A with A = [[−0.1, 2.0], [−2.0, −0.1]] (row vector
/// times A, as the demo's `torch.mm(y**3, A)`), y(0) = (2, 0), observed at `n` evenly spaced
/// times on [0, `t_end`] (the demo: 1000 on [0, 25]), solved with dopri5 at rtol 1e-10,
/// atol 1e-12; then N(0, `noise`²) is added to every observed coordinate (seeded).
///
/// ```
/// let obs = odeflow::train::node::spiral::<f64>(1000, 25.0, 0.0, 0).unwrap();
/// assert_eq!((obs.t.len(), obs.y.len()), (1000, 2000));
/// assert_eq!(&obs.y[..2], &[2.0, 0.0]);
/// // The spiral decays: ‖y(25)‖ < ‖y(0)‖.
/// let last = &obs.y[1998..];
/// assert!(last[0].hypot(last[1]) < 1.0);
/// ```
pub fn spiral<T: Real>(
    n: usize,
    t_end: f64,
    noise: f64,
    seed: u64,
) -> Result<Observations<T>, Error> {
    if n < 2 || !(t_end > 0.0 && t_end.is_finite()) || !(noise >= 0.0 && noise.is_finite()) {
        return Err(Error::InvalidConfig {
            name: "spiral",
            value: n as f64,
            expected: "n ≥ 2, t_end > 0, noise ≥ 0",
        });
    }
    let a = [[-0.1, 2.0], [-2.0, -0.1]];
    let mut sys = FnSystem::new(2, move |_t: f64, y: &[f64], dy: &mut [f64]| {
        let (c0, c1) = (y[0].powi(3), y[1].powi(3));
        dy[0] = c0 * a[0][0] + c1 * a[1][0];
        dy[1] = c0 * a[0][1] + c1 * a[1][1];
    });
    let times: Vec<f64> = (0..n).map(|i| t_end * i as f64 / (n - 1) as f64).collect();
    let mut integ = Integrator::new(Method::Dopri5, SolveOptions::tol(1e-10, 1e-12))
        .map_err(|source| Error::Solve { block: 0, source })?;
    let mut y = [2.0, 0.0];
    let mut out = vec![0.0; 2 * (n - 1)];
    integ
        .integrate_at(&mut sys, 0.0, &times[1..], &mut y, &mut out)
        .map_err(|source| Error::Solve { block: 0, source })?;
    let mut ys = vec![2.0, 0.0];
    ys.extend_from_slice(&out);
    if noise > 0.0 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for v in &mut ys {
            let e: f64 = StandardNormal.sample(&mut rng);
            *v += noise * e;
        }
    }
    Ok(Observations {
        t: times.into_iter().map(T::from_f64c).collect(),
        y: ys.into_iter().map(T::from_f64c).collect(),
        dim: 2,
    })
}

/// The pointwise loss of [`NodeFitter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NodeLoss {
    /// ℓ(r) = |r| (torchdiffeq's demo).
    #[default]
    L1,
    /// ℓ(r) = ½ r².
    Mse,
}

/// Settings of [`NodeFitter`]; defaults are the demo's where it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFitConfig<T> {
    /// Iterations of a run (≥ 1). Default 2000 (the demo's `niters`).
    pub iterations: u64,
    /// Segments per batch (≥ 1, at most the number of start indices). Default 20.
    pub batch_size: usize,
    /// Observations per segment, the start included (≥ 2). Default 10.
    pub batch_time: usize,
    /// The optimizer (the demo uses RMSprop lr 1e-3; here Adam, no weight decay). Default
    /// Adam lr 1e-3, weight decay 0.
    pub adam: AdamConfig,
    /// The pointwise loss. Default L1.
    pub loss: NodeLoss,
    /// Forward method. Default dopri5.
    pub method: Method,
    /// Forward tolerances (rtol at least the machine epsilon of `T`, atol > 0). Default
    /// rtol 1e-7, atol 1e-9 (torchdiffeq's defaults); in `f32`, whose epsilon is 1.19e-7,
    /// rtol is that epsilon instead.
    pub rtol: T,
    /// See `rtol`.
    pub atol: T,
    /// Gradient settings. Default: the adjoint's defaults (backsolve).
    pub adjoint: AdjointConfig<T>,
    /// Seed of the segment draws. Default 0.
    pub seed: u64,
}

impl<T: Real> Default for NodeFitConfig<T> {
    fn default() -> Self {
        NodeFitConfig {
            iterations: 2000,
            batch_size: 20,
            batch_time: 10,
            adam: AdamConfig { weight_decay: 0.0, ..Default::default() },
            loss: NodeLoss::L1,
            method: Method::Dopri5,
            rtol: T::from_f64c(1e-7).max(T::epsilon()),
            atol: T::from_f64c(1e-9),
            adjoint: AdjointConfig::default(),
            seed: 0,
        }
    }
}

/// What the progress callback of [`NodeFitter::run`] sees.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeProgress {
    /// The iteration just completed (1-based).
    pub iteration: u64,
    /// The batch loss L.
    pub loss: f64,
    /// Field evaluations of the forward solve.
    pub nfe_forward: usize,
    /// Evaluations of the backward pass (adjoint right-hand sides and end-point evaluations).
    pub nfe_backward: usize,
    /// Wall time of the iteration.
    pub iter_time: Duration,
}

/// Fits a neural ODE to [`Observations`]; see the [module docs](self).
///
/// ```
/// use odeflow::field::{Mlp, MlpConfig, TimeConditioning};
/// use odeflow::train::node::{spiral, NodeFitConfig, NodeFitter};
///
/// let obs = spiral::<f64>(200, 5.0, 0.0, 0)?;
/// let mlp = Mlp::new(&MlpConfig { hidden: vec![16], time: TimeConditioning::Ignore, ..Default::default() })?;
/// let cfg = NodeFitConfig { iterations: 5, rtol: 1e-5, atol: 1e-6, ..Default::default() };
/// let mut fit = NodeFitter::new(mlp, obs, cfg)?;
/// let before = fit.trajectory_error(200)?;
/// fit.run(|p| { assert!(p.loss.is_finite()); std::ops::ControlFlow::Continue(()) })?;
/// assert!(fit.trajectory_error(200)?.is_finite() && before.is_finite());
/// # Ok::<(), odeflow::Error>(())
/// ```
#[derive(Debug)]
pub struct NodeFitter<T: Real, F: VectorField<T>> {
    field: F,
    obs: Observations<T>,
    cfg: NodeFitConfig<T>,
    adam: Adam<T>,
    rng: ChaCha8Rng,
    iteration: u64,
}

impl<T: Real, F: VectorField<T>> NodeFitter<T, F> {
    /// A fitter at iteration 0.
    pub fn new(field: F, obs: Observations<T>, cfg: NodeFitConfig<T>) -> Result<Self, Error> {
        obs.validate()?;
        if field.dim() != obs.dim {
            return Err(Error::InvalidConfig {
                name: "dim",
                value: obs.dim as f64,
                expected: "the field's dimension",
            });
        }
        let starts = obs.t.len().saturating_sub(cfg.batch_time);
        if cfg.batch_time < 2
            || cfg.batch_size == 0
            || cfg.batch_size > starts
            || cfg.iterations == 0
        {
            return Err(Error::InvalidConfig {
                name: "batch_size",
                value: cfg.batch_size as f64,
                expected:
                    "1 ≤ batch_size ≤ observations − batch_time, batch_time ≥ 2, iterations ≥ 1",
            });
        }
        SolveOptions::tol(cfg.rtol, cfg.atol)
            .validate()
            .map_err(|source| Error::Solve { block: 0, source })?;
        let adam = Adam::new(cfg.adam.clone(), field.n_params())?;
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        Ok(NodeFitter { field, obs, cfg, adam, rng, iteration: 0 })
    }

    /// The field being fitted.
    pub fn field(&self) -> &F {
        &self.field
    }

    /// The fitted field.
    pub fn into_field(self) -> F {
        self.field
    }

    /// Iterations completed.
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// The state (parameters, Adam, iteration, generator) for saving and resuming.
    pub fn state(&self) -> TrainState<T> {
        let (m, v) = self.adam.moments();
        TrainState {
            iteration: self.iteration,
            params: self.field.params().to_vec(),
            tau: Vec::new(),
            adam_m: m.to_vec(),
            adam_v: v.to_vec(),
            adam_t: self.adam.t(),
            rng: self.rng.clone(),
        }
    }

    /// Restores a state from [`NodeFitter::state`].
    pub fn restore(&mut self, state: TrainState<T>) -> Result<(), Error> {
        let n = self.field.n_params();
        if state.params.len() != n || state.adam_m.len() != n || !state.tau.is_empty() {
            return Err(Error::StateFile {
                path: std::path::PathBuf::new(),
                reason: format!("{} parameters, this field has {n}", state.params.len()),
            });
        }
        self.adam =
            Adam::from_state(self.cfg.adam.clone(), state.adam_m, state.adam_v, state.adam_t)?;
        self.field.params_mut().copy_from_slice(&state.params);
        self.iteration = state.iteration;
        self.rng = state.rng;
        Ok(())
    }

    fn spec(&self, k: usize) -> OdeSpec<T> {
        let t0 = self.obs.t[0];
        OdeSpec {
            t0: T::zero(),
            t_obs: self.obs.t[1..k].iter().map(|&t| t - t0).collect(),
            method: self.cfg.method,
            options: SolveOptions::tol(self.cfg.rtol, self.cfg.atol),
        }
    }

    /// One iteration: draw segments, gradient, Adam step. On error nothing changes and the
    /// error is [`Error::Training`] naming the iteration.
    pub fn step(&mut self) -> Result<NodeProgress, Error> {
        let it = self.iteration + 1;
        let start = Instant::now();
        let rng_before = self.rng.clone();
        match self.step_inner() {
            Ok((loss, nf, nb)) => {
                self.iteration = it;
                Ok(NodeProgress {
                    iteration: it,
                    loss,
                    nfe_forward: nf,
                    nfe_backward: nb,
                    iter_time: start.elapsed(),
                })
            }
            Err(e) => {
                self.rng = rng_before;
                Err(Error::Training { iteration: it, source: Box::new(e) })
            }
        }
    }

    fn step_inner(&mut self) -> Result<(f64, usize, usize), Error> {
        let d = self.obs.dim;
        let (b, k) = (self.cfg.batch_size, self.cfg.batch_time);
        let starts = sample(&mut self.rng, self.obs.t.len() - k, b).into_vec();
        let mut y0 = Vec::with_capacity(b * d);
        for &s in &starts {
            y0.extend_from_slice(&self.obs.y[s * d..(s + 1) * d]);
        }
        let spec = self.spec(k);
        let scale = T::one() / T::from_usize(k * b * d).unwrap_or_else(T::one);
        let obs = &self.obs.y;
        let kind = self.cfg.loss;
        let (loss, g) = ode_grad(&self.field, &spec, &y0, &self.cfg.adjoint, |states, dl| {
            // states: (K − 1) × B × d at t_1..t_{K−1}; the t_0 term is zero (ŷ(t_0) = y_s).
            let mut l = T::zero();
            for kk in 1..k {
                for (bi, &s) in starts.iter().enumerate() {
                    for j in 0..d {
                        let at = ((kk - 1) * b + bi) * d + j;
                        let r = states[at] - obs[(s + kk) * d + j];
                        let (v, dv) = match kind {
                            NodeLoss::L1 => (r.abs(), r.signum()),
                            NodeLoss::Mse => (T::from_f64c(0.5) * r * r, r),
                        };
                        l += v;
                        dl[at] = dv * scale;
                    }
                }
            }
            l * scale
        })?;
        let loss = loss.to_f64c();
        if !loss.is_finite() {
            return Err(Error::NonFiniteLoss { value: loss });
        }
        self.adam.step(self.field.params_mut(), &g.theta)?;
        Ok((loss, g.stats.forward.n_rhs, g.stats.backward.n_rhs + g.stats.extra_evals))
    }

    /// Runs until `iterations` are done or `callback` breaks.
    pub fn run(
        &mut self,
        mut callback: impl FnMut(&NodeProgress) -> ControlFlow<()>,
    ) -> Result<u64, Error> {
        while self.iteration < self.cfg.iterations {
            let p = self.step()?;
            if callback(&p).is_break() {
                break;
            }
        }
        Ok(self.iteration)
    }

    /// The mean L1 error over every segment of the data: from each start index s (all
    /// N − batch_time of them, solved as one batch) over the next `batch_time − 1`
    /// observations, mean |ŷ(t_{s+k}) − y_{s+k}| over segments, k = 1..batch_time − 1 and
    /// coordinates: the training loss on the whole trajectory rather than a batch.
    pub fn segment_error(&self) -> Result<f64, Error> {
        let d = self.obs.dim;
        let k = self.cfg.batch_time;
        let nb = self.obs.t.len() - k;
        let spec = self.spec(k);
        let y0 = &self.obs.y[..nb * d];
        let tape = ode_forward(&self.field, &spec, y0, &AdjointConfig::default())?;
        let pred = tape.states();
        let mut sum = 0.0;
        for kk in 1..k {
            let p = &pred[(kk - 1) * nb * d..kk * nb * d];
            let y = &self.obs.y[kk * d..(kk + nb) * d];
            sum += p.iter().zip(y).map(|(a, b)| (*a - *b).abs().to_f64c()).sum::<f64>();
        }
        Ok(sum / ((k - 1) * nb * d) as f64)
    }

    /// The demo's test: integrate the fitted field from the first observation through the
    /// first `n` observation times (all of them if `n` is larger) and return the mean
    /// |ŷ(t_i) − y_i| over i = 1..n − 1 and every coordinate.
    pub fn trajectory_error(&self, n: usize) -> Result<f64, Error> {
        let d = self.obs.dim;
        let n = n.clamp(2, self.obs.t.len());
        let spec = self.spec(n);
        let tape = ode_forward(&self.field, &spec, &self.obs.y[..d], &AdjointConfig::default())?;
        let pred = tape.states();
        let sum: f64 =
            pred.iter().zip(&self.obs.y[d..n * d]).map(|(p, y)| (*p - *y).abs().to_f64c()).sum();
        Ok(sum / ((n - 1) * d) as f64)
    }
}
