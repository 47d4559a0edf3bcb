//! Maximum-likelihood training of a discrete [`FlowModel`], mirroring [`super::CnfTrainer`]:
//! the same data sources, Adam, progress callback, test evaluation and resumable state.
//!
//! Each iteration draws a batch x (B points) from the seeded training generator and takes
//! one Adam step on the flat parameter vector θ for
//!
//! ```text
//! L(θ) = −(1/B) Σ_b log p(x_b),   log p(x) = log N(f⁻¹(x); 0, I) + log|det ∂f⁻¹/∂x|,
//! ```
//!
//! with ∂L/∂θ from [`FlowModel::nll_grad`] (exact reverse mode, layer by layer). A failed
//! iteration (a non-finite loss or gradient) leaves the trainer as it was after the
//! previous iteration and returns [`Error::Training`] naming the iteration.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::Error;
use crate::field::Real;
use crate::flows::{FlowModel, FlowWs};

use super::cnf::{Progress, RunSummary};
use super::data::{DataSource, Dataset};
use super::optim::{Adam, AdamConfig};
use super::state::TrainState;

/// Settings of [`FlowTrainer`].
#[derive(Debug, Clone, PartialEq)]
pub struct FlowTrainConfig {
    /// Adam iterations (default 1000, ≥ 1).
    pub iterations: u64,
    /// Points per batch B (default 512, ≥ 1).
    pub batch_size: usize,
    /// The optimizer (default: Adam, lr 1e-3, PyTorch's defaults).
    pub adam: AdamConfig,
    /// Evaluate the test NLL every this many iterations and at the last (default 100; 0:
    /// never during `run`).
    pub test_every: u64,
    /// Points per test chunk (default 0: the whole test set at once; a chunk larger than the
    /// test set is the whole set).
    pub test_batch: usize,
    /// Seed of the training generator (default 0).
    pub seed: u64,
    /// Save the training state here every `checkpoint_every` iterations (default none).
    pub checkpoint: Option<PathBuf>,
    /// Checkpoint period (default 100, ≥ 1 when `checkpoint` is set).
    pub checkpoint_every: u64,
}

impl Default for FlowTrainConfig {
    fn default() -> Self {
        FlowTrainConfig {
            iterations: 1000,
            batch_size: 512,
            adam: AdamConfig::default(),
            test_every: 100,
            test_batch: 0,
            seed: 0,
            checkpoint: None,
            checkpoint_every: 100,
        }
    }
}

impl FlowTrainConfig {
    /// Checks every field's range (see the field docs).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |name, value: f64, expected| Err(Error::InvalidConfig { name, value, expected });
        if self.iterations == 0 {
            return bad("iterations", 0.0, "≥ 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", 0.0, "≥ 1");
        }
        if self.checkpoint.is_some() && self.checkpoint_every == 0 {
            return bad("checkpoint_every", 0.0, "≥ 1");
        }
        self.adam.validate()
    }
}

/// Trains a [`FlowModel`] by maximum likelihood; see the [module docs](self). Reports
/// through the CNF trainer's [`Progress`] (its ODE fields, `nfe_*`, `kinetic`, `jacobian`
/// and `t_end`, are zero or empty here), so one callback serves both.
///
/// ```
/// use odeflow::flows::{Coupling, CouplingKind, Flow, FlowModel, Permutation};
/// use odeflow::train::{DataSource, Dataset, FlowTrainConfig, FlowTrainer, Toy};
///
/// let aff = CouplingKind::Affine { scale_bound: 2.0 };
/// let layers: Vec<Box<dyn Flow<f64>>> = vec![
///     Box::new(Coupling::new(2, aff, &[16], false)?),
///     Box::new(Coupling::new(2, aff, &[16], true)?),
/// ];
/// let model = FlowModel::new(layers, 0)?;
/// let test = Dataset::toy(Toy::Moons, 256, 7);
/// let cfg = FlowTrainConfig { iterations: 50, batch_size: 64, test_every: 50, ..Default::default() };
/// let mut trainer = FlowTrainer::new(model, DataSource::Toy(Toy::Moons), Some(test), cfg)?;
/// let before = trainer.test_nll()?;
/// let summary = trainer.run(|_| std::ops::ControlFlow::Continue(()))?;
/// let (_, after) = summary.last_test.unwrap();
/// assert!(after < before); // 50 Adam steps already lower the test NLL
/// # Ok::<(), odeflow::Error>(())
/// ```
#[derive(Debug)]
pub struct FlowTrainer<T: Real> {
    model: FlowModel<T>,
    data: DataSource<T>,
    test: Option<Dataset<T>>,
    cfg: FlowTrainConfig,
    adam: Adam<T>,
    rng: ChaCha8Rng,
    iteration: u64,
    batch: Vec<T>,
    grad: Vec<T>,
    ws: FlowWs<T>,
}

impl<T: Real> FlowTrainer<T> {
    /// A trainer at iteration 0: Adam fresh, the generator seeded with `cfg.seed`.
    /// An empty `test` set counts as none (no test NLL is evaluated); an empty training set
    /// is an [`Error::InvalidConfig`] naming `data`.
    pub fn new(
        model: FlowModel<T>,
        data: DataSource<T>,
        test: Option<Dataset<T>>,
        cfg: FlowTrainConfig,
    ) -> Result<Self, Error> {
        cfg.validate()?;
        data.check_not_empty()?;
        // An empty test set has no mean NLL: it counts as none (no test evaluations).
        let test = test.filter(|t| !t.is_empty());
        for (name, d) in
            [("data", data.dim()), ("test", test.as_ref().map_or(model.dim(), |t| t.dim()))]
        {
            if d != model.dim() {
                return Err(Error::InvalidConfig {
                    name,
                    value: d as f64,
                    expected: "points of the flow's dimension",
                });
            }
        }
        let n = model.n_params();
        let adam = Adam::new(cfg.adam.clone(), n)?;
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let ws = model.workspace();
        Ok(FlowTrainer {
            model,
            data,
            test,
            cfg,
            adam,
            rng,
            iteration: 0,
            batch: Vec::new(),
            grad: vec![T::zero(); n],
            ws,
        })
    }

    /// A trainer continuing from `state` (parameters, Adam moments, iteration, generator),
    /// bit for bit.
    pub fn resume(
        model: FlowModel<T>,
        data: DataSource<T>,
        test: Option<Dataset<T>>,
        cfg: FlowTrainConfig,
        state: TrainState<T>,
    ) -> Result<Self, Error> {
        let mut tr = Self::new(model, data, test, cfg)?;
        let np = tr.model.n_params();
        for (what, found) in
            [("parameters", state.params.len()), ("Adam moments", state.adam_m.len())]
        {
            if found != np {
                return Err(Error::StateFile {
                    path: PathBuf::new(),
                    reason: format!("{what}: {found} values, this model needs {np}"),
                });
            }
        }
        tr.adam = Adam::from_state(tr.cfg.adam.clone(), state.adam_m, state.adam_v, state.adam_t)?;
        tr.model.params_mut().copy_from_slice(&state.params);
        tr.iteration = state.iteration;
        tr.rng = state.rng;
        Ok(tr)
    }

    /// The full training state (no time parameters).
    pub fn state(&self) -> TrainState<T> {
        let (m, v) = self.adam.moments();
        TrainState {
            iteration: self.iteration,
            params: self.model.params().to_vec(),
            tau: Vec::new(),
            adam_m: m.to_vec(),
            adam_v: v.to_vec(),
            adam_t: self.adam.t(),
            rng: self.rng.clone(),
        }
    }

    /// The model being trained.
    pub fn model(&self) -> &FlowModel<T> {
        &self.model
    }

    /// The trained model.
    pub fn into_model(self) -> FlowModel<T> {
        self.model
    }

    /// Iterations completed.
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// The settings.
    pub fn config(&self) -> &FlowTrainConfig {
        &self.cfg
    }

    /// The mean NLL `−(1/N) Σ log p(x)` of the test set; an [`Error::InvalidConfig`] if
    /// the trainer has no test set.
    pub fn test_nll(&mut self) -> Result<f64, Error> {
        let Some(test) = &self.test else {
            return Err(Error::InvalidConfig { name: "test", value: 0.0, expected: "a test set" });
        };
        let d = self.model.dim();
        let chunk = match self.cfg.test_batch {
            0 => test.len(),
            c => c.min(test.len()),
        };
        let mut out = vec![T::zero(); chunk];
        let mut sum = 0.0;
        for xs in test.as_slice().chunks(chunk * d) {
            let b = xs.len() / d;
            self.model.log_prob_into(xs, &mut out[..b], &mut self.ws)?;
            sum -= out[..b].iter().map(|v| v.to_f64c()).sum::<f64>();
        }
        Ok(sum / test.len() as f64)
    }

    /// One training iteration (the next batch, gradient, Adam step). On error the trainer
    /// is left as before the call and the error is [`Error::Training`] with the iteration.
    pub fn step(&mut self) -> Result<Progress, Error> {
        let it = self.iteration + 1;
        let wrap = |e: Error| Error::Training { iteration: it, source: Box::new(e) };
        let start = Instant::now();
        let rng_before = self.rng.clone();
        if let Err(e) =
            self.data.batch(self.iteration, self.cfg.batch_size, &mut self.rng, &mut self.batch)
        {
            self.rng = rng_before;
            return Err(wrap(e));
        }
        let lr = self.adam.next_lr();
        let result =
            self.model.nll_grad(&self.batch, &mut self.grad, &mut self.ws).and_then(|nll| {
                let v = nll.to_f64c();
                if !v.is_finite() {
                    return Err(Error::NonFiniteLoss { value: v });
                }
                if let Some(index) = self.grad.iter().position(|g| !g.is_finite()) {
                    return Err(Error::NonFiniteGradient {
                        what: "theta",
                        segment: 0,
                        index,
                        value: self.grad[index].to_f64c(),
                    });
                }
                Ok(v)
            });
        let nll = match result {
            Ok(v) => v,
            Err(e) => {
                self.rng = rng_before;
                return Err(wrap(e));
            }
        };
        if let Err(e) = self.adam.step(self.model.params_mut(), &self.grad) {
            // Adam refuses a step that would leave a parameter non-finite, changing nothing:
            // the trainer too is as before the call.
            self.rng = rng_before;
            return Err(wrap(e));
        }
        self.iteration = it;
        Ok(Progress {
            iteration: it,
            iterations: self.cfg.iterations,
            loss: nll,
            nll,
            kinetic: 0.0,
            jacobian: 0.0,
            test_nll: None,
            nfe_forward: 0,
            nfe_backward: 0,
            iter_time: start.elapsed(),
            elapsed: Duration::ZERO,
            lr,
            t_end: Vec::new(),
        })
    }

    /// Runs until `config().iterations` are done or `callback` returns `Break`, evaluating
    /// the test NLL and saving checkpoints as configured.
    pub fn run(
        &mut self,
        mut callback: impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<RunSummary, Error> {
        self.run_inspecting(|p, _| callback(p))
    }

    /// [`run`](Self::run) with a callback that also sees the trainer after each iteration
    /// (its `model()`, `state()`): to keep the model of the best test NLL, say.
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
                    self.state().save(path)?;
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

/// Trains `model` by maximum likelihood in one call: [`FlowTrainer::new`] then
/// [`FlowTrainer::run`] with `callback`; returns the trained model and the run's summary.
/// The discrete-flow counterpart of building a [`super::CnfTrainer`] and running it.
pub fn train_flow<T: Real>(
    model: FlowModel<T>,
    data: DataSource<T>,
    test: Option<Dataset<T>>,
    cfg: FlowTrainConfig,
    callback: impl FnMut(&Progress) -> ControlFlow<()>,
) -> Result<(FlowModel<T>, RunSummary), Error> {
    let mut tr = FlowTrainer::new(model, data, test, cfg)?;
    let summary = tr.run(callback)?;
    Ok((tr.into_model(), summary))
}
