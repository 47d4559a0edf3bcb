//! Maximum-likelihood training of a [`Cnf`]: FFJORD's `train_toy.py` loop.
//!
//! Each iteration draws a batch x (B points) and the Hutchinson noise (if any) from the
//! seeded training generator, solves the CNF forward, and minimises
//!
//! ```text
//! L(θ, T) = −(1/B) Σ_b log p(x_b) + λ_K (1/B) Σ_b ∫₀ᵀ ‖f(t, z_b)‖² dt + λ_J (1/B) Σ_b ∫₀ᵀ ‖J ε_b‖² dt
//! ```
//!
//! (the last two are the optional RNODE regularizers of Finlay et al. 2020, "How to train
//! your neural ODE", each integrated along the solve as an extra ODE state of every block
//! and differentiated exactly by the same adjoint; ε_b is the solve's fixed Hutchinson noise,
//! and with the exact trace ε runs over the unit vectors, so the last term is ∫‖J‖²_F),
//! by one Adam step on all blocks' parameters θ_k
//! and, when [`CnfTrainConfig::train_t`] is set, on the time parameters τ_k with
//! T_k = τ_k² (FFJORD's `sqrt_end_time`; ∂L/∂τ = 2τ ∂L/∂T). Gradients come from the adjoint
//! ([`crate::adjoint`]).
//!
//! Every `test_every` iterations the mean NLL of the test set is evaluated at the test
//! tolerances, with the exact trace (FFJORD evaluates 2-D toys in eval mode, where its ODEfunc
//! always uses the brute-force divergence).
//!
//! A failed iteration (a non-finite loss or gradient, a failed solve) leaves the trainer
//! exactly as it was after the previous iteration (parameters, times, Adam, random
//! generator) and returns [`Error::Training`] naming the iteration.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::adjoint::{cnf_nll_grad, AdjointConfig};
use crate::cnf::Cnf;
use crate::error::Error;
use crate::field::{Real, VectorField};
use crate::trace::TraceEstimator;

use super::data::{DataSource, Dataset};
use super::optim::{Adam, AdamConfig};
use super::reg::{reg_loss, RegWeights};
use super::state::TrainState;

/// Settings of [`CnfTrainer`]; defaults are FFJORD's `train_toy.py` where it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct CnfTrainConfig<T> {
    /// Total iterations of a run (≥ 1). Default 1000.
    pub iterations: u64,
    /// Points per batch (≥ 1). Default 512 (the peers'; FFJORD's default is 100).
    pub batch_size: usize,
    /// The optimizer. Default Adam lr 1e-3, weight decay 1e-5 (FFJORD's).
    pub adam: AdamConfig,
    /// Learn the blocks' integration times T_k = τ_k² (FFJORD's `train_T`, default there
    /// `True`). Default `false` here: the peers' recorded runs keep T fixed.
    pub train_t: bool,
    /// Kinetic-energy weight λ_K ≥ 0 (RNODE): adds λ_K (1/B) Σ_b ∫‖f‖² to the loss,
    /// integrated as an extra state. Default 0.
    pub kinetic: f64,
    /// Jacobian-Frobenius weight λ_J ≥ 0 (RNODE): adds λ_J (1/B) Σ_b ∫‖J ε_b‖² dt to the loss
    /// (J = ∂f/∂z, ε_b the solve's Hutchinson noise; ∫‖J‖²_F with the exact trace),
    /// integrated as an extra state. Default 0.
    pub jacobian: f64,
    /// Evaluate the test NLL every this many iterations and after the last (0: never).
    /// Default 100.
    pub test_every: u64,
    /// Relative tolerance of the test solves (> 0). Default 1e-5 (FFJORD's `test_rtol`).
    pub test_rtol: f64,
    /// Absolute tolerance of the test solves (> 0). Default 1e-5.
    pub test_atol: f64,
    /// Test points per solve (0: the whole test set as one batch, as the peers; a chunk
    /// larger than the test set is the whole set). Default 0.
    pub test_batch: usize,
    /// Seed of the training generator (batches of toy sets, Hutchinson noise). Default 0.
    pub seed: u64,
    /// Save the training state here every `checkpoint_every` iterations (and after the
    /// last). Default `None`.
    pub checkpoint: Option<PathBuf>,
    /// Iterations between checkpoints (≥ 1 when `checkpoint` is set). Default 100.
    pub checkpoint_every: u64,
    /// How gradients are computed (strategy, seminorm, backward tolerances). Default:
    /// the adjoint's defaults (backsolve, full error norm, the forward's tolerances: as
    /// torchdiffeq's `odeint_adjoint`).
    pub adjoint: AdjointConfig<T>,
}

impl<T> Default for CnfTrainConfig<T> {
    fn default() -> Self {
        CnfTrainConfig {
            iterations: 1000,
            batch_size: 512,
            adam: AdamConfig::default(),
            train_t: false,
            kinetic: 0.0,
            jacobian: 0.0,
            test_every: 100,
            test_rtol: 1e-5,
            test_atol: 1e-5,
            test_batch: 0,
            seed: 0,
            checkpoint: None,
            checkpoint_every: 100,
            adjoint: AdjointConfig::default(),
        }
    }
}

impl<T: Real> CnfTrainConfig<T> {
    /// Checks every field's range (see the field docs).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |name, value: f64, expected| Err(Error::InvalidConfig { name, value, expected });
        if self.iterations == 0 {
            return bad("iterations", 0.0, "≥ 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", 0.0, "≥ 1");
        }
        for (name, v) in [("kinetic", self.kinetic), ("jacobian", self.jacobian)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(name, v, "finite and ≥ 0");
            }
        }
        for (name, v) in [("test_rtol", self.test_rtol), ("test_atol", self.test_atol)] {
            if !(v.is_finite() && v > 0.0) {
                return bad(name, v, "finite and > 0");
            }
        }
        if self.checkpoint.is_some() && self.checkpoint_every == 0 {
            return bad("checkpoint_every", 0.0, "≥ 1");
        }
        self.adjoint.validate()?;
        self.adam.validate()
    }
}

/// What the progress callback sees after each iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The iteration just completed (1-based).
    pub iteration: u64,
    /// The run's total iterations.
    pub iterations: u64,
    /// The training loss L of this iteration's batch (NLL plus regularizers).
    pub loss: f64,
    /// The batch's mean negative log-likelihood (the loss without regularizers).
    pub nll: f64,
    /// The batch mean of ∫‖f‖² (0 when its weight is 0).
    pub kinetic: f64,
    /// The batch mean of ∫‖J ε_b‖² dt (∫‖J‖²_F with the exact trace; 0 when its weight is 0).
    pub jacobian: f64,
    /// The test NLL, when it was evaluated after this iteration.
    pub test_nll: Option<f64>,
    /// Field evaluations of the forward solve.
    pub nfe_forward: usize,
    /// Right-hand-side calls of the backward solve (each a fused VJP, with the Jacobian
    /// regularizer's term when it is on; with the kinetic regularizer each also evaluates f
    /// once more) plus the end-point evaluations of the
    /// time gradients (one per block), as FFJORD counts backward NFE.
    pub nfe_backward: usize,
    /// Wall time of this iteration (gradient and update; the test NLL excluded).
    pub iter_time: Duration,
    /// Wall time since the run started (test NLL included).
    pub elapsed: Duration,
    /// The learning rate this iteration used.
    pub lr: f64,
    /// The blocks' integration times after the update.
    pub t_end: Vec<f64>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Iterations completed in total (including those of earlier runs before a resume).
    pub iteration: u64,
    /// Whether the callback asked to stop before `iterations` were done.
    pub stopped: bool,
    /// The last test NLL evaluated in this run, with its iteration.
    pub last_test: Option<(u64, f64)>,
    /// Wall time of this run.
    pub elapsed: Duration,
}

/// Trains a [`Cnf`] by maximum likelihood; see the [module docs](self).
///
/// ```
/// use odeflow::cnf::{Cnf, CnfConfig};
/// use odeflow::field::{Mlp, MlpConfig};
/// use odeflow::train::{CnfTrainConfig, CnfTrainer, DataSource, Dataset, Toy};
///
/// let mlp = Mlp::<f64>::new(&MlpConfig { hidden: vec![8], seed: 1, ..Default::default() })?;
/// let cnf = Cnf::new(mlp, 0.5, CnfConfig { rtol: 1e-4, atol: 1e-4, ..Default::default() })?;
/// let test = Dataset::toy(Toy::EightGaussians, 64, 7);
/// let cfg = CnfTrainConfig { iterations: 3, batch_size: 32, test_every: 3, ..Default::default() };
/// let mut trainer = CnfTrainer::new(cnf, DataSource::Toy(Toy::EightGaussians), Some(test), cfg)?;
/// let before = trainer.test_nll()?;
/// let summary = trainer.run(|p| {
///     assert!(p.loss.is_finite() && p.nfe_forward > 0 && p.nfe_backward > 0);
///     std::ops::ControlFlow::Continue(())
/// })?;
/// assert_eq!(summary.iteration, 3);
/// let (_, after) = summary.last_test.unwrap();
/// assert!(after.is_finite() && before.is_finite());
/// # Ok::<(), odeflow::Error>(())
/// ```
#[derive(Debug)]
pub struct CnfTrainer<T: Real, F: VectorField<T>> {
    cnf: Cnf<T, F>,
    data: DataSource<T>,
    test: Option<Dataset<T>>,
    cfg: CnfTrainConfig<T>,
    adam: Adam<T>,
    rng: ChaCha8Rng,
    iteration: u64,
    /// τ_k with T_k = τ_k² (only when `train_t`).
    tau: Vec<T>,
    batch: Vec<T>,
    grad: Vec<T>,
}

impl<T: Real, F: VectorField<T>> CnfTrainer<T, F> {
    /// A trainer at iteration 0: Adam fresh, the generator seeded with `cfg.seed`, τ_k = √T_k.
    /// An empty `test` set counts as none (no test NLL is evaluated); an empty training set
    /// is an [`Error::InvalidConfig`] naming `data`.
    pub fn new(
        cnf: Cnf<T, F>,
        data: DataSource<T>,
        test: Option<Dataset<T>>,
        cfg: CnfTrainConfig<T>,
    ) -> Result<Self, Error> {
        cfg.validate()?;
        data.check_not_empty()?;
        // An empty test set has no mean NLL: it counts as none (no test evaluations).
        let test = test.filter(|t| !t.is_empty());
        for (name, d) in
            [("data", data.dim()), ("test", test.as_ref().map_or(cnf.dim(), |t| t.dim()))]
        {
            if d != cnf.dim() {
                return Err(Error::InvalidConfig {
                    name,
                    value: d as f64,
                    expected: "points of the flow's dimension",
                });
            }
        }
        let tau: Vec<T> = if cfg.train_t {
            cnf.blocks().iter().map(|b| b.t_end.sqrt()).collect()
        } else {
            Vec::new()
        };
        let n = n_params(&cnf) + tau.len();
        let adam = Adam::new(cfg.adam.clone(), n)?;
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        Ok(CnfTrainer {
            cnf,
            data,
            test,
            cfg,
            adam,
            rng,
            iteration: 0,
            tau,
            batch: Vec::new(),
            grad: vec![T::zero(); n],
        })
    }

    /// A trainer continuing from `state` (from [`CnfTrainer::state`] or a file): the
    /// parameters, times, Adam moments, iteration and generator are restored, so the run
    /// continues bit for bit as if it had not stopped.
    pub fn resume(
        cnf: Cnf<T, F>,
        data: DataSource<T>,
        test: Option<Dataset<T>>,
        cfg: CnfTrainConfig<T>,
        state: TrainState<T>,
    ) -> Result<Self, Error> {
        let mut tr = Self::new(cnf, data, test, cfg)?;
        tr.restore(state)?;
        Ok(tr)
    }

    /// Replaces the trainer's state by `state` (checked against the model's sizes).
    pub fn restore(&mut self, state: TrainState<T>) -> Result<(), Error> {
        let np = n_params(&self.cnf);
        let mismatch = |what: &str, expected: usize, found: usize| Error::StateFile {
            path: PathBuf::new(),
            reason: format!("{what}: {found} values, this model needs {expected}"),
        };
        if state.params.len() != np {
            return Err(mismatch("parameters", np, state.params.len()));
        }
        if state.tau.len() != self.tau.len() {
            return Err(mismatch("time parameters", self.tau.len(), state.tau.len()));
        }
        let n = np + self.tau.len();
        if state.adam_m.len() != n {
            return Err(mismatch("Adam moments", n, state.adam_m.len()));
        }
        self.adam =
            Adam::from_state(self.cfg.adam.clone(), state.adam_m, state.adam_v, state.adam_t)?;
        let mut off = 0;
        for blk in self.cnf.blocks_mut() {
            let p = blk.field.params_mut();
            p.copy_from_slice(&state.params[off..off + p.len()]);
            off += p.len();
        }
        self.tau = state.tau;
        self.apply_tau();
        self.iteration = state.iteration;
        self.rng = state.rng;
        Ok(())
    }

    /// The full training state (see [`TrainState`]).
    pub fn state(&self) -> TrainState<T> {
        let (m, v) = self.adam.moments();
        TrainState {
            iteration: self.iteration,
            params: self
                .cnf
                .blocks()
                .iter()
                .flat_map(|b| b.field.params().iter().copied())
                .collect(),
            tau: self.tau.clone(),
            adam_m: m.to_vec(),
            adam_v: v.to_vec(),
            adam_t: self.adam.t(),
            rng: self.rng.clone(),
        }
    }

    /// Saves [`CnfTrainer::state`] to `path`, atomically.
    pub fn save_state(&self, path: impl AsRef<std::path::Path>) -> Result<(), Error> {
        self.state().save(path)
    }

    /// The flow being trained.
    pub fn cnf(&self) -> &Cnf<T, F> {
        &self.cnf
    }

    /// The trained flow.
    pub fn into_cnf(self) -> Cnf<T, F> {
        self.cnf
    }

    /// Iterations completed.
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// The settings.
    pub fn config(&self) -> &CnfTrainConfig<T> {
        &self.cfg
    }

    /// Sets the total number of iterations (to extend a finished run).
    pub fn set_iterations(&mut self, iterations: u64) {
        self.cfg.iterations = iterations.max(1);
    }

    /// The mean NLL of the test set at the test tolerances with the exact trace;
    /// an [`Error::InvalidConfig`] if the trainer has no test set.
    pub fn test_nll(&mut self) -> Result<f64, Error> {
        let Some(test) = &self.test else {
            return Err(Error::InvalidConfig { name: "test", value: 0.0, expected: "a test set" });
        };
        let saved = self.cnf.config().clone();
        let mut cnf_cfg = saved.clone();
        cnf_cfg.rtol = T::from_f64c(self.cfg.test_rtol);
        cnf_cfg.atol = T::from_f64c(self.cfg.test_atol);
        cnf_cfg.trace = TraceEstimator::Exact;
        self.cnf.set_config(cnf_cfg)?;
        let d = self.cnf.dim();
        let chunk = match self.cfg.test_batch {
            0 => test.len(),
            c => c.min(test.len()),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0); // not drawn from by the exact trace
        let mut out = vec![T::zero(); chunk];
        let mut result = Ok(0.0);
        for xs in test.as_slice().chunks(chunk * d) {
            let b = xs.len() / d;
            match self.cnf.log_prob_into(xs, &mut out[..b], &mut rng) {
                Ok(_) => {
                    if let Ok(sum) = &mut result {
                        *sum -= out[..b].iter().map(|v| v.to_f64c()).sum::<f64>();
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.cnf.set_config(saved)?;
        result.map(|s| s / test.len() as f64)
    }

    /// One training iteration (the next batch, gradient, Adam step). On error the trainer
    /// is left as before the call and the error is [`Error::Training`] with the iteration.
    pub fn step(&mut self) -> Result<Progress, Error> {
        let it = self.iteration + 1;
        let wrap = |e: Error| Error::Training { iteration: it, source: Box::new(e) };
        let start = Instant::now();
        let rng_before = self.rng.clone();
        let result = self.step_inner();
        let (info, lr): (StepInfo, f64) = match result {
            Ok(v) => v,
            Err(e) => {
                self.rng = rng_before;
                return Err(wrap(e));
            }
        };
        self.iteration = it;
        Ok(Progress {
            iteration: it,
            iterations: self.cfg.iterations,
            loss: info.loss,
            nll: info.nll,
            kinetic: info.kinetic,
            jacobian: info.jacobian,
            test_nll: None,
            nfe_forward: info.nfe_forward,
            nfe_backward: info.nfe_backward,
            iter_time: start.elapsed(),
            elapsed: Duration::ZERO,
            lr,
            t_end: self.cnf.blocks().iter().map(|b| b.t_end.to_f64c()).collect(),
        })
    }

    fn step_inner(&mut self) -> Result<(StepInfo, f64), Error> {
        let it = self.iteration;
        // Non-finite parameters (e.g. from a restored state) are named as such, not as
        // the non-finite solve they would cause.
        let mut off = 0;
        for blk in self.cnf.blocks() {
            let p = blk.field.params();
            if let Some(i) = p.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFiniteParameter {
                    what: "in the model's parameters",
                    index: off + i,
                    value: p[i].to_f64c(),
                });
            }
            off += p.len();
        }
        self.data.batch(it, self.cfg.batch_size, &mut self.rng, &mut self.batch)?;
        let weights = RegWeights {
            kinetic: (self.cfg.kinetic > 0.0).then_some(self.cfg.kinetic),
            jacobian: (self.cfg.jacobian > 0.0).then_some(self.cfg.jacobian),
        };
        let (loss, nll, kinetic, jacobian, g) = if weights != RegWeights::default() {
            let r =
                reg_loss(&self.cnf, &self.batch, &mut self.rng, weights, &self.cfg.adjoint, true)?;
            let g = r.grad.ok_or(Error::NonFiniteLoss { value: f64::NAN })?;
            (r.loss, r.nll, r.kinetic, r.jacobian, g)
        } else {
            let (nll, g) = cnf_nll_grad(&self.cnf, &self.batch, &mut self.rng, &self.cfg.adjoint)?;
            (nll.to_f64c(), nll.to_f64c(), 0.0, 0.0, g)
        };
        if !loss.is_finite() {
            return Err(Error::NonFiniteLoss { value: loss });
        }
        let mut off = 0;
        for gk in &g.theta {
            self.grad[off..off + gk.len()].copy_from_slice(gk);
            off += gk.len();
        }
        if self.cfg.train_t {
            // ∂L/∂τ = 2τ ∂L/∂T.
            for (k, &dt) in g.t_end.iter().enumerate() {
                self.grad[off + k] = T::from_f64c(2.0) * self.tau[k] * dt;
            }
        }
        let info = StepInfo {
            loss,
            nll,
            kinetic,
            jacobian,
            nfe_forward: g.stats.forward.n_rhs,
            nfe_backward: g.stats.backward.n_rhs + g.stats.extra_evals,
        };
        let lr = self.adam.next_lr();
        // Check before touching anything, so a failure keeps the previous state.
        let old: Vec<T> = if self.cfg.train_t { self.tau.clone() } else { Vec::new() };
        {
            let mut slices: Vec<&mut [T]> =
                self.cnf.blocks_mut().iter_mut().map(|b| b.field.params_mut()).collect();
            if self.cfg.train_t {
                slices.push(&mut self.tau);
            }
            let mut grads: Vec<&[T]> = Vec::with_capacity(slices.len());
            let mut off = 0;
            for s in &slices {
                grads.push(&self.grad[off..off + s.len()]);
                off += s.len();
            }
            self.adam.step_slices(&mut slices, &grads)?;
        }
        if self.tau.iter().any(|t| !(t.is_finite() && *t != T::zero())) {
            // τ = 0 would make T = 0; keep the old times (the next iteration's solve would fail).
            self.tau = old;
        }
        self.apply_tau();
        Ok((info, lr))
    }

    fn apply_tau(&mut self) {
        if self.tau.is_empty() {
            return;
        }
        for (b, &t) in self.cnf.blocks_mut().iter_mut().zip(&self.tau) {
            b.t_end = t * t;
        }
    }

    /// Runs until `config().iterations` are done or `callback` returns `Break` (after
    /// that iteration completes), evaluating the test NLL and saving checkpoints as
    /// configured. On a failed iteration it returns [`Error::Training`] and the trainer keeps
    /// the last good state (its checkpoint file, if any, is left as last saved).
    pub fn run(
        &mut self,
        mut callback: impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<RunSummary, Error> {
        self.run_inspecting(|p, _| callback(p))
    }

    /// [`run`](Self::run) with a callback that also sees the trainer after each iteration
    /// (its `cnf()`, `state()`): to keep the model of the best test NLL, say.
    pub fn run_inspecting(
        &mut self,
        mut callback: impl FnMut(&Progress, &Self) -> ControlFlow<()>,
    ) -> Result<RunSummary, Error> {
        let start = Instant::now();
        let mut last_test = None;
        while self.iteration < self.cfg.iterations {
            let mut p = self.step()?;
            let it = p.iteration;
            let last = it == self.cfg.iterations;
            if self.test.is_some()
                && self.cfg.test_every > 0
                && (it % self.cfg.test_every == 0 || last)
            {
                let v = self
                    .test_nll()
                    .map_err(|e| Error::Training { iteration: it, source: Box::new(e) })?;
                p.test_nll = Some(v);
                last_test = Some((it, v));
            }
            if let Some(path) = &self.cfg.checkpoint {
                if it % self.cfg.checkpoint_every == 0 || last {
                    self.save_state(path)?;
                }
            }
            p.elapsed = start.elapsed();
            if callback(&p, self).is_break() {
                return Ok(RunSummary {
                    iteration: it,
                    stopped: !last,
                    last_test,
                    elapsed: start.elapsed(),
                });
            }
        }
        Ok(RunSummary {
            iteration: self.iteration,
            stopped: false,
            last_test,
            elapsed: start.elapsed(),
        })
    }
}

/// What one gradient evaluation reports.
struct StepInfo {
    loss: f64,
    nll: f64,
    kinetic: f64,
    jacobian: f64,
    nfe_forward: usize,
    nfe_backward: usize,
}

fn n_params<T: Real, F: VectorField<T>>(cnf: &Cnf<T, F>) -> usize {
    cnf.blocks().iter().map(|b| b.field.n_params()).sum()
}
