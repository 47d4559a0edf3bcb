//! Continuous normalizing flows: log-densities, sampling, trajectories, density transport.
//!
//! A CNF block moves a point with dz/dt = f(t, z) for t ∈ [0, T] and tracks the change of
//! log-density by the instantaneous change of variables (Chen et al. 2018, Thm. 1):
//!
//! ```text
//! d log p(z(t))/dt = −tr(∂f/∂z)(t, z(t)).
//! ```
//!
//! Conventions (FFJORD's, see `design.md`): time runs from 0 (data) to T (latent). For data x
//! the augmented state s = (z, ℓ) starts at (x, 0) and follows
//!
//! ```text
//! dz/dt = f(t, z),   dℓ/dt = −q(t, z),   q = tr(∂f/∂z)  or  εᵀ(∂f/∂z)ε  (Hutchinson),
//! ```
//!
//! and log p(x) = log N(z(T); 0, I) − ℓ(T). Sampling draws z(T) ~ N(0, I) and integrates
//! backward to t = 0. Blocks chain as FFJORD's `num_blocks`: block k runs over the global
//! times [o_k, o_k + T_k] with o_k = T_0 + … + T_{k−1}, and ℓ accumulates across them.
//!
//! The whole batch is one ODE state `[z (B·d) | ℓ (B)]` with one shared step size
//! ([`SolveMode::Batch`], as FFJORD), or every point is solved on its own with its own step
//! size, in parallel ([`SolveMode::PerSample`]), or chunks of points are
//! ([`SolveMode::Chunked`]).
//!
//! ```
//! use odeflow::cnf::{Cnf, CnfConfig};
//! use odeflow::field::LinearField;
//!
//! // f(z) = −z contracts space: the density of z(0) = x is that of N(0, e^{−2T} I) ...
//! let field = LinearField::new(&[-1.0, 0.0, 0.0, -1.0], &[0.0, 0.0]).unwrap();
//! let cnf = Cnf::new(field, 1.0, CnfConfig { rtol: 1e-9, atol: 1e-9, ..Default::default() }).unwrap();
//! let (logp, _stats) = cnf.log_prob(&[0.3, -0.2]).unwrap();
//! // ... whose log-density at x is log N(x e^{−T}; 0, I) − 2T.
//! let s = (-1.0f64).exp();
//! let exact = -(2.0 * std::f64::consts::PI).ln() - 0.5 * (0.13 * s * s) - 2.0;
//! assert!((logp[0] - exact).abs() < 1e-7);
//! ```

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use odeflow_solvers::{
    InitialStepOrder, Integrator, Method, NoObserver, OdeSystem, PiController, SolveError,
    SolveOptions, Stats,
};

use crate::error::{batch_size, check_finite, check_len, try_zeros, Error};
use crate::field::{Divergence, FieldError, Real, VectorField};
use crate::pool::on_pool;
use crate::spare_integrators::SpareIntegrators;
use crate::trace::TraceEstimator;

/// How the points of a batch are integrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SolveMode {
    /// One ODE state for the whole batch with one shared step size (FFJORD): every field
    /// evaluation is a batched GEMM pass, but the stiffest point sets the step for all.
    #[default]
    Batch,
    /// Each point is its own ODE with its own step size, solved in parallel over rayon:
    /// fewer evaluations for easy points, but each evaluation is a batch of one.
    PerSample,
    /// The batch is cut into chunks of this many points, each its own ODE with its own step
    /// size, solved in parallel: between the two above (GEMM-sized evaluations, and a hard
    /// point sets the step only for its own chunk).
    Chunked(usize),
}

/// The step-size rules of a CNF's solves, as a named pair of [`CnfConfig::controller`] and
/// `options.initial_step_order`: what model files, flow specs and the command line store.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Steps {
    /// Hairer's PI controller and first step (`dopri5.f`, `dop853.f`): the default.
    #[default]
    Hairer,
    /// The elementary controller (torchdiffeq's; diffrax's has the same form with the
    /// exponent 1/(k + 1)) and the first step with q = p + 1 (diffrax's; torchdiffeq's is
    /// Hairer's): the step rules FFJORD users know (see [`CnfConfig::controller`] for what
    /// it trades).
    Peers,
}

impl Steps {
    /// Sets `cfg`'s controller and first-step rule to these (other options untouched).
    pub fn apply<T: Real>(self, cfg: &mut CnfConfig<T>) {
        let (controller, order) = match self {
            Steps::Hairer => (PiController::default(), InitialStepOrder::Method),
            Steps::Peers => (PiController::elementary(), InitialStepOrder::MethodPlusOne),
        };
        cfg.controller = controller;
        cfg.options.initial_step_order = order;
    }

    /// The named rules `cfg` follows, if it follows one exactly.
    pub fn of<T: Real>(cfg: &CnfConfig<T>) -> Option<Steps> {
        [Steps::Hairer, Steps::Peers].into_iter().find(|s| {
            let mut c = cfg.clone();
            s.apply(&mut c);
            c == *cfg
        })
    }

    /// The name (`hairer` or `peers`).
    pub fn name(self) -> &'static str {
        match self {
            Steps::Hairer => "hairer",
            Steps::Peers => "peers",
        }
    }
}

impl std::str::FromStr for Steps {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hairer" => Ok(Steps::Hairer),
            "peers" => Ok(Steps::Peers),
            other => Err(format!("unknown step rules `{other}` (hairer or peers)")),
        }
    }
}

/// The solver settings of a CNF.
#[derive(Debug, Clone, PartialEq)]
pub struct CnfConfig<T> {
    /// The Runge–Kutta method. Default: Dopri5 (FFJORD's).
    pub method: Method,
    /// Relative tolerance (at least the machine epsilon of `T`). Default: 1e-5 (FFJORD's toy
    /// experiments).
    pub rtol: T,
    /// Absolute tolerance (> 0). Default: 1e-5.
    pub atol: T,
    /// Other solver options (first step, step bounds, maximum steps, fixed step); their
    /// `rtol`/`atol` are replaced by the two fields above. Default: the solver's defaults.
    pub options: SolveOptions<T>,
    /// The step-size controller of every solve of this CNF (forward, sampling and the
    /// adjoint's backward solves). Default: the solver's, Hairer's PI controller.
    ///
    /// [`PiController::elementary`] with [`InitialStepOrder::MethodPlusOne`] in `options`
    /// ([`Steps::Peers`]) takes the peers' steps. Measured on FFJORD's toy net at
    /// rtol = atol = 1e-5, against these defaults: 1000 training iterations 15% faster (f64
    /// 51.2 vs 60.0 s; more forward, fewer backward evaluations) to the same test NLL
    /// (2.8931); 10,000 samples with 32 instead of 44 evaluations, but a mean sample error
    /// of 6.6e-6 instead of 1.3e-6 (diffrax's own: 6.2e-6). At equal accuracy the two do
    /// about the same work (`examples/cnf_work_precision.rs`): the choice calibrates what a
    /// tolerance buys, and the default keeps the tighter calibration (the adjoint tests'
    /// bounds of 10 tolerance units between strategies hold with it, not with the other:
    /// 16 units at 1e-4).
    ///
    /// [`InitialStepOrder::MethodPlusOne`]: odeflow_solvers::InitialStepOrder::MethodPlusOne
    pub controller: PiController<T>,
    /// The divergence estimator. Default: exact.
    pub trace: TraceEstimator,
    /// Shared, chunked or per-sample steps. Default: [`SolveMode::Chunked`]`(512)`: on
    /// 10,000 points (peers.md W2) it was 1.25× faster than [`SolveMode::Batch`] at the same
    /// tolerance and accuracy (0.49 vs 0.62 s: 66 evaluations per chunk against the batch's
    /// 80, at about the same cost per point); a batch of up to 512 points is one state
    /// either way.
    pub mode: SolveMode,
    /// Seed of the Hutchinson noise for the methods that take no random generator
    /// ([`Cnf::log_prob`]); the `_into` twins take one. Default: 0.
    pub seed: u64,
}

impl<T: Real> Default for CnfConfig<T> {
    fn default() -> Self {
        CnfConfig {
            method: Method::Dopri5,
            rtol: T::from_f64c(1e-5),
            atol: T::from_f64c(1e-5),
            options: SolveOptions::default(),
            controller: PiController::default(),
            trace: TraceEstimator::Exact,
            mode: SolveMode::Chunked(512),
            seed: 0,
        }
    }
}

impl<T: Real> CnfConfig<T> {
    /// The solver options these settings stand for (`options` with `rtol` and `atol` set).
    pub fn solve_options(&self) -> SolveOptions<T> {
        SolveOptions { rtol: self.rtol, atol: self.atol.into(), ..self.options.clone() }
    }

    /// An integrator with these settings (method, options, controller).
    pub fn integrator(&self) -> Result<Integrator<T>, SolveError> {
        Integrator::with_controller(self.method, self.controller, self.solve_options())
    }
}

/// One CNF block: a vector field and its integration time T.
#[derive(Debug, Clone)]
pub struct CnfBlock<T, F> {
    /// The vector field f(t, z).
    pub field: F,
    /// The integration time T > 0 (learnable in training, as FFJORD's `train_T`).
    pub t_end: T,
}

/// A continuous normalizing flow: one or more blocks, a standard normal base, a solver.
///
/// A model keeps up to four solver integrators (of states up to 2¹⁹ values) between its
/// solves and reuses their buffers (a training loop does not reallocate them every
/// iteration; on W4's d = 64 net a fresh backward integrator cost 10% of the backward pass).
/// Results do not depend on it; `clone` does not copy them.
#[derive(Debug, Clone)]
pub struct Cnf<T: Real, F> {
    blocks: Vec<CnfBlock<T, F>>,
    config: CnfConfig<T>,
    /// Integrators of earlier solves, reused by the next ones (not copied by `clone`).
    spare: SpareIntegrators<T>,
}

/// States of a batch along the flow at requested times (from [`Cnf::trajectory`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Trajectory<T> {
    /// The global times, in the order requested.
    pub times: Vec<T>,
    /// `states[i]` is the batch (`B × d`, sample-major) at `times[i]`.
    pub states: Vec<Vec<T>>,
    /// `delta_logp[i][b]` = `ℓ_b(times[i]) − ℓ_b(start)`: the log-density change along the
    /// path, so `log p_{times[i]}(z_b(times[i])) = log p_start(z_b(start)) + delta_logp[i][b]`.
    pub delta_logp: Vec<Vec<T>>,
    /// Solver statistics.
    pub stats: Stats,
}

/// log N(z; 0, I) of one point: −½ (d ln 2π + ‖z‖²).
pub fn std_normal_log_prob<T: Real>(z: &[T]) -> T {
    let d = T::from_usize(z.len()).unwrap_or_else(T::zero);
    let sq = z.iter().fold(T::zero(), |s, &v| s + v * v);
    -T::from_f64c(0.5) * (d * T::from_f64c((2.0 * std::f64::consts::PI).ln()) + sq)
}

impl<T: Real, F: VectorField<T>> Cnf<T, F> {
    /// A single-block CNF integrating over [0, `t_end`].
    pub fn new(field: F, t_end: T, config: CnfConfig<T>) -> Result<Self, Error> {
        Self::chain(vec![CnfBlock { field, t_end }], config)
    }

    /// A CNF of several blocks applied in order (data → block 0 → … → latent).
    pub fn chain(blocks: Vec<CnfBlock<T, F>>, config: CnfConfig<T>) -> Result<Self, Error> {
        let Some(first) = blocks.first() else {
            return Err(Error::InvalidConfig {
                name: "blocks",
                value: 0.0,
                expected: "at least one block",
            });
        };
        let dim = first.field.dim();
        for (k, b) in blocks.iter().enumerate() {
            if b.field.dim() != dim {
                return Err(Error::BlockDimension {
                    block: k,
                    expected: dim,
                    found: b.field.dim(),
                });
            }
            check_t_end(b.t_end)?;
        }
        check_total_time(blocks.iter().fold(T::zero(), |s, b| s + b.t_end))?;
        config.solve_options().validate().map_err(|source| Error::Solve { block: 0, source })?;
        if !config.method.is_adaptive() && config.options.h_fixed.is_none() {
            return Err(Error::Solve {
                block: 0,
                source: SolveError::MissingStepSize { method: config.method.name() },
            });
        }
        Ok(Cnf { blocks, config, spare: SpareIntegrators::default() })
    }

    /// The dimension d of a point.
    pub fn dim(&self) -> usize {
        self.blocks[0].field.dim()
    }

    /// The blocks, in order from data to latent.
    pub fn blocks(&self) -> &[CnfBlock<T, F>] {
        &self.blocks
    }

    /// The blocks, mutably (training updates their parameters and times). A time set here
    /// to a non-positive or non-finite value makes the next solve return an error.
    pub fn blocks_mut(&mut self) -> &mut [CnfBlock<T, F>] {
        &mut self.blocks
    }

    /// The solver settings.
    pub fn config(&self) -> &CnfConfig<T> {
        &self.config
    }

    /// Replaces the solver settings (validated).
    pub fn set_config(&mut self, config: CnfConfig<T>) -> Result<(), Error> {
        config.solve_options().validate().map_err(|source| Error::Solve { block: 0, source })?;
        self.config = config;
        Ok(())
    }

    /// The total integration time Σ T_k.
    pub fn total_time(&self) -> T {
        self.blocks.iter().fold(T::zero(), |s, b| s + b.t_end)
    }

    /// An integrator with the configured method, controller and options, sized for states
    /// of length `dim`: one kept from an earlier solve if there is one (hand it back with
    /// [`Cnf::give_integrator`]).
    pub(crate) fn take_integrator(&self, dim: usize) -> Result<Integrator<T>, SolveError> {
        let c = &self.config;
        self.spare.take(c.method, c.controller, c.solve_options(), dim)
    }

    /// An integrator for the adjoint's backward solves: `method` and `opts` (the adjoint's
    /// own, or the configured ones) with the configured controller, as
    /// [`Cnf::take_integrator`].
    pub(crate) fn take_integrator_with(
        &self,
        method: Method,
        opts: SolveOptions<T>,
        dim: usize,
    ) -> Result<Integrator<T>, SolveError> {
        self.spare.take(method, self.config.controller, opts, dim)
    }

    /// Keeps `integ` for the next solve.
    pub(crate) fn give_integrator(&self, integ: Integrator<T>) {
        self.spare.give(integ);
    }

    /// log p(x) for each point of the batch `x` (`B × d`), with the solver statistics;
    /// the Hutchinson noise (if any) comes from `config.seed`.
    pub fn log_prob(&self, x: &[T]) -> Result<(Vec<T>, Stats), Error> {
        let mut out = vec![T::zero(); batch_size(x.len(), self.dim())?];
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        let stats = self.log_prob_into(x, &mut out, &mut rng)?;
        Ok((out, stats))
    }

    /// log p(x) into `out` (length B): log N(z(T)) − ℓ(T), noise drawn from `rng`.
    pub fn log_prob_into<R: Rng + ?Sized>(
        &self,
        x: &[T],
        out: &mut [T],
        rng: &mut R,
    ) -> Result<Stats, Error> {
        self.log_density_at_into(T::zero(), x, out, rng)
    }

    /// The log-density of the flow's marginal at global time `t` ∈ [0, Σ T_k] at the points
    /// `y` (`B × d`): integrate y from t to the end, log p_t(y) = log N(z(T)) − ℓ(T).
    /// At t = 0 this is [`Cnf::log_prob`]; at t = Σ T_k it is the base density.
    pub fn log_density_at(&self, t: T, y: &[T]) -> Result<(Vec<T>, Stats), Error> {
        let mut out = vec![T::zero(); batch_size(y.len(), self.dim())?];
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        let stats = self.log_density_at_into(t, y, &mut out, &mut rng)?;
        Ok((out, stats))
    }

    /// In-place twin of [`Cnf::log_density_at`].
    pub fn log_density_at_into<R: Rng + ?Sized>(
        &self,
        t: T,
        y: &[T],
        out: &mut [T],
        rng: &mut R,
    ) -> Result<Stats, Error> {
        let d = self.dim();
        let b = batch_size(y.len(), d)?;
        check_len("out", out.len(), b)?;
        let mut z = vec![T::zero(); y.len()];
        let stats = self.transform_into(t, self.total_time(), y, &mut z, out, rng)?;
        for (lp, zb) in out.iter_mut().zip(z.chunks_exact(d)) {
            *lp = std_normal_log_prob(zb) - *lp;
        }
        Ok(stats)
    }

    /// Maps data to latent: z = z(Σ T_k) from z(0) = x, with Δℓ = ℓ(Σ T_k) (so
    /// log p(x) = log N(z) − Δℓ). Returns (z, Δℓ, statistics).
    pub fn forward(&self, x: &[T]) -> Result<(Vec<T>, Vec<T>, Stats), Error> {
        let mut z = vec![T::zero(); x.len()];
        let mut dl = vec![T::zero(); batch_size(x.len(), self.dim())?];
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        let stats =
            self.transform_into(T::zero(), self.total_time(), x, &mut z, &mut dl, &mut rng)?;
        Ok((z, dl, stats))
    }

    /// Maps latent to data: x = z(0) from z(Σ T_k) = z, with Δℓ = ℓ(0) − ℓ(Σ T_k) (so
    /// log p(x) = log N(z) + Δℓ). Returns (x, Δℓ, statistics).
    pub fn inverse(&self, z: &[T]) -> Result<(Vec<T>, Vec<T>, Stats), Error> {
        let mut x = vec![T::zero(); z.len()];
        let mut dl = vec![T::zero(); batch_size(z.len(), self.dim())?];
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        let stats =
            self.transform_into(self.total_time(), T::zero(), z, &mut x, &mut dl, &mut rng)?;
        Ok((x, dl, stats))
    }

    /// Maps latent to data without the log-density: x = z(0) from z(Σ T_k) = z, only the
    /// state integrated (what [`Cnf::sample`] does with its draws; use it to push given base
    /// draws, e.g. another library's, through the flow). Returns (x, statistics).
    pub fn inverse_state(&self, z: &[T]) -> Result<(Vec<T>, Stats), Error> {
        let mut x = vec![T::zero(); z.len()];
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        let stats = self.transform(self.total_time(), T::zero(), z, &mut x, None, &mut rng)?;
        Ok((x, stats))
    }

    /// Draws `n` points from the flow: z ~ N(0, I) from `rng`, integrated back to t = 0.
    /// Only the state is integrated (no divergence), a third of the work of
    /// [`Cnf::sample_with_log_prob`] for the exact 2-D trace.
    pub fn sample<R: Rng + ?Sized>(&self, n: usize, rng: &mut R) -> Result<(Vec<T>, Stats), Error> {
        let z = normal_draws(n, self.dim(), rng)?;
        self.inverse_state(&z)
    }

    /// Draws `n` points and their log-densities log p(x) = log N(z) + Δℓ in one solve.
    pub fn sample_with_log_prob<R: Rng + ?Sized>(
        &self,
        n: usize,
        rng: &mut R,
    ) -> Result<(Vec<T>, Vec<T>, Stats), Error> {
        let d = self.dim();
        let z = normal_draws(n, d, rng)?;
        let mut x = try_zeros(z.len(), "n")?;
        let mut logp = try_zeros(n, "n")?;
        let stats =
            self.transform_into(self.total_time(), T::zero(), &z, &mut x, &mut logp, rng)?;
        for (lp, zb) in logp.iter_mut().zip(z.chunks_exact(d)) {
            *lp += std_normal_log_prob(zb);
        }
        Ok((x, logp, stats))
    }

    /// Integrates the batch `y` (`B × d`) from global time `t_from` to `t_to` (either
    /// direction), writing the end states into `out` and ℓ(t_to) − ℓ(t_from) into
    /// `delta_logp` (length B). The general form of every map above.
    pub fn transform_into<R: Rng + ?Sized>(
        &self,
        t_from: T,
        t_to: T,
        y: &[T],
        out: &mut [T],
        delta_logp: &mut [T],
        rng: &mut R,
    ) -> Result<Stats, Error> {
        self.transform(t_from, t_to, y, out, Some(delta_logp), rng)
    }

    /// [`Cnf::transform_into`], with the log-density left out when `delta_logp` is `None`.
    fn transform<R: Rng + ?Sized>(
        &self,
        t_from: T,
        t_to: T,
        y: &[T],
        out: &mut [T],
        delta_logp: Option<&mut [T]>,
        rng: &mut R,
    ) -> Result<Stats, Error> {
        let d = self.dim();
        let b = batch_size(y.len(), d)?;
        check_len("out", out.len(), y.len())?;
        if let Some(dl) = &delta_logp {
            check_len("delta_logp", dl.len(), b)?;
        }
        check_finite(y, d)?;
        self.check_span(t_from)?;
        self.check_span(t_to)?;
        let track = delta_logp.is_some();
        let eps = if track { self.draw_noise(b, rng) } else { Vec::new() };
        let per_point = d + usize::from(track);
        match self.config.mode {
            SolveMode::Batch => {
                let mut state = vec![T::zero(); b * per_point];
                state[..b * d].copy_from_slice(y);
                let stats = self.run(t_from, t_to, &mut state, track, &eps, &[], &mut [])?;
                out.copy_from_slice(&state[..b * d]);
                if let Some(dl) = delta_logp {
                    dl.copy_from_slice(&state[b * d..]);
                }
                Ok(stats)
            }
            SolveMode::PerSample | SolveMode::Chunked(_) => {
                let chunk = if let SolveMode::Chunked(c) = self.config.mode { c } else { 1 };
                let mut scratch;
                let dl = match delta_logp {
                    Some(dl) => dl,
                    None => {
                        scratch = vec![T::zero(); b];
                        &mut scratch[..]
                    }
                };
                self.run_chunked(chunk, t_from, t_to, y, out, dl, track, &eps)
            }
        }
    }

    /// The states and log-density changes of the batch `x` at the global `times` (sorted,
    /// all on one side of `t_start`, in the direction of integration), starting from
    /// `x` at `t_start`. Uses dense output: the steps are those of the solve to the last
    /// time, whatever the number of output times. Always solves the batch as one state.
    pub fn trajectory(&self, t_start: T, x: &[T], times: &[T]) -> Result<Trajectory<T>, Error> {
        let d = self.dim();
        let b = batch_size(x.len(), d)?;
        check_finite(x, d)?;
        self.check_span(t_start)?;
        for &t in times {
            self.check_span(t)?;
        }
        let Some(&t_last) = times.last() else {
            return Err(Error::InvalidConfig {
                name: "times",
                value: 0.0,
                expected: "at least one output time",
            });
        };
        let forward = t_last >= t_start;
        let monotone = times.windows(2).all(|w| if forward { w[0] <= w[1] } else { w[0] >= w[1] });
        let same_side = times.iter().all(|&t| if forward { t >= t_start } else { t <= t_start });
        if !(monotone && same_side) {
            return Err(Error::InvalidConfig {
                name: "times",
                value: t_last.to_f64c(),
                expected: "sorted in the direction of integration, none before the start",
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        let eps = self.draw_noise(b, &mut rng);
        let n = b * (d + 1);
        let mut state = vec![T::zero(); n];
        state[..b * d].copy_from_slice(x);
        let mut out = vec![T::zero(); times.len() * n];
        let stats = self.run(t_start, t_last, &mut state, true, &eps, times, &mut out)?;
        // (Not `chunks_exact(n)`: an empty batch has n = 0.)
        let (states, delta_logp) = (0..times.len())
            .map(|k| {
                let s = &out[k * n..(k + 1) * n];
                (s[..b * d].to_vec(), s[b * d..].to_vec())
            })
            .unzip();
        Ok(Trajectory { times: times.to_vec(), states, delta_logp, stats })
    }

    /// Checks `t ∈ [0, total_time()]`, after the blocks' times themselves (which
    /// [`Cnf::blocks_mut`] may have changed since [`Cnf::chain`] checked them).
    fn check_span(&self, t: T) -> Result<(), Error> {
        for b in &self.blocks {
            check_t_end(b.t_end)?;
        }
        let total = self.total_time();
        check_total_time(total)?;
        if t.is_finite() && t >= T::zero() && t <= total {
            Ok(())
        } else {
            Err(Error::InvalidConfig {
                name: "time",
                value: t.to_f64c(),
                expected: "within [0, total_time()]",
            })
        }
    }

    /// One noise buffer per block (`blocks × B × d`), or empty for the exact trace.
    fn draw_noise<R: Rng + ?Sized>(&self, b: usize, rng: &mut R) -> Vec<T> {
        let d = self.dim();
        let mut all = Vec::new();
        let mut one = Vec::new();
        for _ in &self.blocks {
            self.config.trace.draw(rng, b, d, &mut one);
            all.extend_from_slice(&one);
        }
        all
    }

    /// Integrates the augmented state `[z | ℓ]` (or `z` alone if not `track_logp`) of B
    /// points from `t_from` to `t_to` through the blocks, writing the whole state at each of
    /// `times` into `out` (`times.len()` states). `eps` holds one noise buffer per block (or
    /// is empty).
    /// Runs on a worker of the rayon pool ([`on_pool`]).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        t_from: T,
        t_to: T,
        state: &mut [T],
        track_logp: bool,
        eps: &[T],
        times: &[T],
        out: &mut [T],
    ) -> Result<Stats, Error> {
        on_pool(|| self.run_here(t_from, t_to, state, track_logp, eps, times, out))
    }

    /// [`Cnf::run`] on the calling thread.
    #[allow(clippy::too_many_arguments)]
    fn run_here(
        &self,
        t_from: T,
        t_to: T,
        state: &mut [T],
        track_logp: bool,
        eps: &[T],
        times: &[T],
        out: &mut [T],
    ) -> Result<Stats, Error> {
        let d = self.dim();
        let b = state.len() / (d + usize::from(track_logp));
        let n = state.len();
        let forward = t_to >= t_from;
        let mut stats = Stats::default();
        let mut integ =
            self.take_integrator(n).map_err(|source| Error::Solve { block: 0, source })?;
        let mut local_times: Vec<T> = Vec::with_capacity(times.len());
        let mut next_out = 0;
        let mut offset = T::zero();
        let offsets: Vec<T> = self
            .blocks
            .iter()
            .map(|blk| {
                let o = offset;
                offset += blk.t_end;
                o
            })
            .collect();
        let order: Vec<usize> = if forward {
            (0..self.blocks.len()).collect()
        } else {
            (0..self.blocks.len()).rev().collect()
        };
        for k in order {
            let blk = &self.blocks[k];
            check_t_end(blk.t_end)?;
            let (lo, hi) = (offsets[k], offsets[k] + blk.t_end);
            // This block's part of [t_from, t_to], in the direction of travel.
            let (a, z) = if forward {
                (t_from.max(lo), t_to.min(hi))
            } else {
                (t_from.min(hi), t_to.max(lo))
            };
            let inside = |t: T| if forward { t <= z } else { t >= z };
            // Outputs at the block's start need no solve; the rest go to dense output.
            while next_out < times.len()
                && (if forward { times[next_out] <= a } else { times[next_out] >= a })
            {
                out[next_out * n..(next_out + 1) * n].copy_from_slice(state);
                next_out += 1;
            }
            let empty = if forward { a >= z } else { a <= z };
            if empty {
                continue;
            }
            let first_out = next_out;
            while next_out < times.len() && inside(times[next_out]) {
                next_out += 1;
            }
            local_times.clear();
            local_times.extend(times[first_out..next_out].iter().map(|&t| t - lo));
            let block_eps = if eps.is_empty() { eps } else { &eps[k * b * d..(k + 1) * b * d] };
            let mut ws = blk.field.workspace(b);
            let mut sys = CnfDynamics {
                field: &blk.field,
                div: self.config.trace.divergence(block_eps),
                ws: &mut ws,
                n_z: b * d,
                track_logp,
                logp_in_norm: true,
                error: None,
            };
            let solve_err = |e: SolveError, sys: &mut CnfDynamics<'_, T, F>| match sys.error.take()
            {
                Some(field_err) => Error::Field(field_err),
                None => Error::Solve { block: k, source: e },
            };
            let (a_loc, z_loc) = (a - lo, z - lo);
            let reached = if local_times.is_empty() {
                a_loc
            } else {
                let s = integ
                    .integrate_at(
                        &mut sys,
                        a_loc,
                        &local_times,
                        state,
                        &mut out[first_out * n..next_out * n],
                    )
                    .map_err(|e| solve_err(e, &mut sys))?;
                stats += s;
                local_times[local_times.len() - 1]
            };
            let more = if forward { reached < z_loc } else { reached > z_loc };
            if more {
                let s = integ
                    .integrate(&mut sys, reached, z_loc, state, &mut NoObserver)
                    .map_err(|e| solve_err(e, &mut sys))?;
                stats += s;
            }
            blk.field.recycle(ws);
        }
        // Output times at the very end (t_to itself when no block was left to run).
        while next_out < times.len() {
            out[next_out * n..(next_out + 1) * n].copy_from_slice(state);
            next_out += 1;
        }
        self.give_integrator(integ);
        Ok(stats)
    }

    /// [`SolveMode::PerSample`] and [`SolveMode::Chunked`]: the batch is cut into chunks of
    /// `chunk` points (the last may be shorter), each its own ODE `[z | ℓ]` with its own step
    /// sizes, solved in parallel over rayon. Each chunk's solve depends only on its points,
    /// so results do not depend on the number of threads.
    #[allow(clippy::too_many_arguments)]
    fn run_chunked(
        &self,
        chunk: usize,
        t_from: T,
        t_to: T,
        y: &[T],
        out: &mut [T],
        delta_logp: &mut [T],
        track_logp: bool,
        eps: &[T],
    ) -> Result<Stats, Error> {
        let d = self.dim();
        let b = delta_logp.len();
        let chunk = chunk.clamp(1, b.max(1));
        let n_blocks = self.blocks.len();
        out.par_chunks_mut(chunk * d)
            .zip(delta_logp.par_chunks_mut(chunk))
            .zip(y.par_chunks(chunk * d))
            .enumerate()
            .map(|(i, ((o, dl), yi))| {
                let m = dl.len();
                let mut state = vec![T::zero(); m * (d + usize::from(track_logp))];
                state[..m * d].copy_from_slice(yi);
                // This chunk's rows of every block's noise.
                let mut my_eps =
                    Vec::with_capacity(if eps.is_empty() { 0 } else { n_blocks * m * d });
                if !eps.is_empty() {
                    for k in 0..n_blocks {
                        let start = (k * b + i * chunk) * d;
                        my_eps.extend_from_slice(&eps[start..start + m * d]);
                    }
                }
                let stats =
                    self.run(t_from, t_to, &mut state, track_logp, &my_eps, &[], &mut [])?;
                o.copy_from_slice(&state[..m * d]);
                if track_logp {
                    dl.copy_from_slice(&state[m * d..]);
                }
                Ok(stats)
            })
            .try_reduce(Stats::default, |mut s1, s2| {
                s1 += s2;
                Ok(s1)
            })
    }
}

/// `n` points of `d` standard normal draws from `rng`; an error rather than an abort when
/// they cannot be held (`n·d` overflows, or the allocation fails).
fn normal_draws<T: Real, R: Rng + ?Sized>(
    n: usize,
    d: usize,
    rng: &mut R,
) -> Result<Vec<T>, Error> {
    let mut z = try_zeros(n.checked_mul(d).ok_or_else(|| too_many_points(n))?, "n")?;
    z.iter_mut().for_each(|v| *v = T::from_f64c(StandardNormal.sample(&mut *rng)));
    Ok(z)
}

fn too_many_points(n: usize) -> Error {
    Error::InvalidConfig {
        name: "n",
        value: n as f64,
        expected: "a number of points whose values fit in memory",
    }
}

/// The blocks' times must add up to a finite total (two blocks of 1e308 do not).
fn check_total_time<T: Real>(total: T) -> Result<(), Error> {
    if total.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            name: "total time",
            value: total.to_f64c(),
            expected: "the blocks' t_end summing to a finite number",
        })
    }
}

fn check_t_end<T: Real>(t_end: T) -> Result<(), Error> {
    if t_end.is_finite() && t_end > T::zero() {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            name: "t_end",
            value: t_end.to_f64c(),
            expected: "finite and > 0",
        })
    }
}

/// The augmented CNF dynamics on `[z (B·d) | ℓ (B)]`: dz/dt = f(t, z), dℓ/dt = −q(t, z);
/// or on `z` alone (dz/dt = f) when the log-density is not tracked.
///
/// The field's workspace is borrowed, so evaluations allocate nothing. A field error (which
/// the checks before a solve rule out) is kept and the derivative set to NaN, so the solver
/// stops with `NonFinite` and the caller reports the field's error instead.
pub(crate) struct CnfDynamics<'a, T: Real, F: VectorField<T>> {
    pub(crate) field: &'a F,
    pub(crate) div: Divergence<'a, T>,
    pub(crate) ws: &'a mut F::Workspace,
    pub(crate) n_z: usize,
    pub(crate) track_logp: bool,
    /// ℓ counts in the error norm (false: a seminorm over `z` alone).
    pub(crate) logp_in_norm: bool,
    pub(crate) error: Option<FieldError>,
}

impl<T: Real, F: VectorField<T>> OdeSystem<T> for CnfDynamics<'_, T, F> {
    fn dim(&self) -> usize {
        if self.track_logp {
            self.n_z + self.n_z / self.field.dim()
        } else {
            self.n_z
        }
    }

    fn rhs(&mut self, t: T, y: &[T], dy: &mut [T]) {
        self.eval(t, y, dy, self.track_logp);
    }

    /// ℓ is a quadrature: the right-hand side reads only z.
    fn passive_components(&self) -> std::ops::Range<usize> {
        self.n_z..self.dim()
    }

    fn error_components(&self) -> std::ops::Range<usize> {
        if self.logp_in_norm {
            0..self.dim()
        } else {
            0..self.n_z
        }
    }

    /// Without ℓ in the norm, the step-size probe needs `dz/dt = f` alone.
    fn rhs_error_part(&mut self, t: T, y: &[T], dy: &mut [T]) {
        self.eval(t, y, dy, self.track_logp && self.logp_in_norm);
    }

    /// `dz/dt = f` alone, without the divergence (`dℓ` is left as it was).
    fn rhs_active_part(&mut self, t: T, y: &[T], dy: &mut [T]) {
        self.eval(t, y, dy, false);
    }
}

impl<T: Real, F: VectorField<T>> CnfDynamics<'_, T, F> {
    /// The right-hand side, with `dℓ/dt = −q` only if `logp` (which needs `track_logp`).
    fn eval(&mut self, t: T, y: &[T], dy: &mut [T], logp: bool) {
        let (z, _) = y.split_at(self.n_z);
        let (dz, dl) = dy.split_at_mut(self.n_z);
        let result = if logp {
            self.field.eval_div(t, z, self.div, dz, dl, None, self.ws).map(|()| {
                dl.iter_mut().for_each(|v| *v = -*v);
            })
        } else {
            self.field.eval(t, z, dz, self.ws)
        };
        match result {
            Ok(()) => {}
            Err(e) => {
                self.error.get_or_insert(e);
                dy.fill(T::nan());
            }
        }
    }
}
