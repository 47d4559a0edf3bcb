//! The trainer of a `train` run, of either kind of model (a CNF, or a flow model with its
//! spec), and how it is built from the run's settings: new, or resumed from its state.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use odeflow::adjoint::{AdjointConfig, Strategy};
use odeflow::cnf::{Cnf, CnfBlock, CnfConfig};
use odeflow::field::{Activation, Mlp, MlpConfig, TimeConditioning};
use odeflow::flows::{CnfBlockSpec, FlowKind, FlowModel, FlowSpec};
use odeflow::io::{save_cnf, save_cnf_at, save_flow, save_flow_at, TrainingPoint};
use odeflow::solvers::Method;
use odeflow::trace::TraceEstimator;
use odeflow::train::{
    AdamConfig, CnfTrainConfig, CnfTrainer, DataSource, Dataset, FlowTrainConfig, FlowTrainer,
    LrSchedule, Progress, RunSummary, TrainState,
};
use odeflow::Error;

use crate::inputs::adaptive_method;
use crate::run_folder::RunFolder;
use crate::train_args::TrainArgs;

/// The trainer of either kind of model.
pub(crate) enum Trainer {
    /// A CNF of MLP blocks.
    Cnf(Box<CnfTrainer<f64, Mlp<f64>>>),
    /// A flow (discrete, or with a CNF block) and its spec (for the model file).
    Flow(Box<FlowTrainer<f64>>, FlowSpec),
}

impl Trainer {
    /// The iteration the training is at (0 before the first).
    pub(crate) fn iteration(&self) -> u64 {
        match self {
            Trainer::Cnf(t) => t.iteration(),
            Trainer::Flow(t, _) => t.iteration(),
        }
    }

    /// Trains until the configured iterations are done or `callback` (called after each
    /// iteration, with the model as it is then) returns `Break`.
    pub(crate) fn run(
        &mut self,
        mut callback: impl FnMut(&Progress, ModelView<'_>) -> ControlFlow<()>,
    ) -> Result<RunSummary, Error> {
        match self {
            Trainer::Cnf(t) => t.run_inspecting(|p, t| callback(p, ModelView::Cnf(t.cnf()))),
            Trainer::Flow(t, spec) => {
                t.run_inspecting(|p, t| callback(p, ModelView::Flow(t.model(), spec)))
            }
        }
    }

    /// Saves the training state and the model file.
    pub(crate) fn save(&self, state: &Path, model: &Path) -> Result<(), Error> {
        match self {
            Trainer::Cnf(t) => t.save_state(state)?,
            Trainer::Flow(t, _) => t.state().save(state)?,
        }
        self.model().save(model)
    }

    /// The model as it is now.
    fn model(&self) -> ModelView<'_> {
        match self {
            Trainer::Cnf(t) => ModelView::Cnf(t.cnf()),
            Trainer::Flow(t, spec) => ModelView::Flow(t.model(), spec),
        }
    }
}

/// A trainer's model, to be saved.
pub(crate) enum ModelView<'a> {
    /// A CNF of MLP blocks.
    Cnf(&'a Cnf<f64, Mlp<f64>>),
    /// A flow model and its spec.
    Flow(&'a FlowModel<f64>, &'a FlowSpec),
}

impl ModelView<'_> {
    /// Writes the model file `path` (atomically).
    pub(crate) fn save(&self, path: &Path) -> Result<(), Error> {
        match self {
            ModelView::Cnf(cnf) => save_cnf(path, cnf),
            ModelView::Flow(model, spec) => save_flow(path, spec, model),
        }
    }

    /// Writes the model file `path` (atomically) marked with the training point `at`.
    pub(crate) fn save_at(&self, path: &Path, at: TrainingPoint) -> Result<(), Error> {
        match self {
            ModelView::Cnf(cnf) => save_cnf_at(path, cnf, at),
            ModelView::Flow(model, spec) => save_flow_at(path, spec, model, at),
        }
    }
}

/// The settings of a run that are given by name (`--activation`, `--time`, `--trace`,
/// `--method`, `--adjoint-method`, `--adjoint`), parsed before any data is loaded.
pub(crate) struct ModelChoices {
    /// The MLPs' activation.
    activation: Activation,
    /// How the MLPs take the time.
    time: TimeConditioning,
    /// The divergence estimator.
    trace: TraceEstimator,
    /// The solver method (an adaptive one).
    method: Method,
    /// The method of the adjoint's backward solve (an adaptive one; `None`: `method`).
    adjoint_method: Option<Method>,
    /// The gradient strategy.
    strategy: Strategy,
    /// The learning-rate schedule.
    pub(crate) schedule: LrSchedule,
}

impl ModelChoices {
    /// Parses the named settings of `a`; the first one that is not known, in the order of
    /// the fields, is the error.
    pub(crate) fn parse(a: &TrainArgs) -> Result<Self, Box<dyn std::error::Error>> {
        let activation = parse_or(
            "activation",
            &a.activation,
            odeflow::io::model::parse_activation(&a.activation),
        )?;
        let time = parse_or("time conditioning", &a.time, odeflow::io::model::parse_time(&a.time))?;
        let trace = parse_or("trace", &a.trace, odeflow::io::model::parse_trace(&a.trace))?;
        let method = adaptive_method(&a.method).map_err(|e| format!("--method: {e}"))?;
        let adjoint_method = match &a.adjoint_method {
            Some(name) => {
                let m: Method = name.parse()?;
                if !m.is_adaptive() {
                    return Err(format!(
                        "--adjoint-method {name}: the backward solve needs an adaptive method \
                         (no step size is given for a fixed-step one)"
                    )
                    .into());
                }
                Some(m)
            }
            None => None,
        };
        let strategy = match a.adjoint.as_str() {
            "backsolve" => Strategy::Backsolve,
            "checkpointed" => Strategy::Checkpointed,
            "discrete" => Strategy::Discrete,
            other => {
                return Err(format!(
                    "unknown adjoint {other:?} (backsolve, checkpointed, discrete)"
                )
                .into())
            }
        };
        let schedule = lr_schedule(a)?;
        Ok(ModelChoices { activation, time, trace, method, adjoint_method, strategy, schedule })
    }
}

/// `--lr-schedule` (see its help), checked against `--lr`; a cosine is as long as the run's
/// first `--iterations` (kept in run.json).
fn lr_schedule(a: &TrainArgs) -> Result<LrSchedule, Box<dyn std::error::Error>> {
    let spec = a.lr_schedule.as_str();
    let fail = |why: String| -> Box<dyn std::error::Error> {
        format!(
            "--lr-schedule {spec}: {why} (constant, cosine, cosine:MIN_LR, step:EVERY:GAMMA, \
             warmup:STEPS)"
        )
        .into()
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let number = |text: &str| text.parse::<f64>().map_err(|e| fail(format!("{text:?}: {e}")));
    let count = |text: &str| text.parse::<u64>().map_err(|e| fail(format!("{text:?}: {e}")));
    let schedule = match parts.as_slice() {
        ["constant"] => LrSchedule::Constant,
        ["cosine", rest @ ..] if rest.len() <= 1 => {
            let total = match a.lr_schedule_length {
                Some(total) => total,
                // A resumed run's length comes from its run.json (written with it).
                None if a.resume => return Err(fail("run.json does not say its length".into())),
                None => a.iterations,
            };
            LrSchedule::Cosine { total, min_lr: rest.first().map_or(Ok(0.0), |m| number(m))? }
        }
        ["step", every, gamma] => LrSchedule::Step { every: count(every)?, gamma: number(gamma)? },
        ["warmup", steps] => LrSchedule::Warmup { warmup: count(steps)? },
        _ => return Err(fail("not a schedule".into())),
    };
    // (A bad --lr, or --iterations 0 under a cosine, is the trainer's to report, under its
    // own name.)
    let zero_length = matches!(schedule, LrSchedule::Cosine { total: 0, .. });
    if a.lr.is_finite() && a.lr > 0.0 && !zero_length {
        let adam = AdamConfig { lr: a.lr, schedule, ..Default::default() };
        adam.validate().map_err(|e| fail(e.to_string()))?;
    }
    Ok(schedule)
}

/// The optimizer's settings: `--lr`, `--weight-decay`, `--lr-schedule`.
fn adam_config(a: &TrainArgs, choices: &ModelChoices) -> AdamConfig {
    let (lr, weight_decay, schedule) = (a.lr, a.weight_decay, choices.schedule);
    AdamConfig { lr, weight_decay, schedule, ..Default::default() }
}

/// `parsed`, or the error that `value` is no known `what`.
fn parse_or<T>(
    what: &'static str,
    value: &str,
    parsed: Option<T>,
) -> Result<T, Box<dyn std::error::Error>> {
    parsed.ok_or_else(|| format!("unknown {what} {value:?}").into())
}

/// Builds the run's trainer: a flow model's with `--flow`, else a CNF's. A resumed run's
/// trainer starts from the state in `folder`; a new run's is only built (its caller then
/// starts the run in `folder`, once the trainer has accepted the settings, so that a
/// refused command writes nothing there).
pub(crate) fn build_trainer(
    a: &TrainArgs,
    choices: &ModelChoices,
    source: DataSource<f64>,
    test: Option<Dataset<f64>>,
    folder: &RunFolder,
) -> Result<Trainer, Box<dyn std::error::Error>> {
    match &a.flow {
        Some(name) => flow_trainer(name, a, choices, source, test, folder),
        None => cnf_trainer(a, choices, source, test, folder),
    }
}

/// The trainer of the flow model `--flow name` ([`flow_spec`]), new or resumed.
fn flow_trainer(
    name: &str,
    a: &TrainArgs,
    choices: &ModelChoices,
    source: DataSource<f64>,
    test: Option<Dataset<f64>>,
    folder: &RunFolder,
) -> Result<Trainer, Box<dyn std::error::Error>> {
    let spec = flow_spec(name, a, choices, source.dim())?;
    let model = spec.build::<f64>(a.seed)?;
    let cfg = FlowTrainConfig {
        iterations: a.iterations,
        batch_size: a.batch,
        adam: adam_config(a, choices),
        test_every: a.test_every,
        seed: a.seed,
        checkpoint: checkpoint_file(a, folder),
        checkpoint_every: a.checkpoint_every.max(1),
        ..Default::default()
    };
    let tr = if a.resume {
        let state = TrainState::load(&folder.state_file)?;
        FlowTrainer::resume(model, source, test, cfg, state)
            .map_err(|e| state_error(&folder.state_file, e))?
    } else {
        FlowTrainer::new(model, source, test, cfg)?
    };
    Ok(Trainer::Flow(Box::new(tr), spec))
}

/// The spec of the flow model `--flow name` for `dim`-D data, once the options it cannot
/// take are refused ([`refuse_cnf_options`]).
fn flow_spec(
    name: &str,
    a: &TrainArgs,
    choices: &ModelChoices,
    dim: usize,
) -> Result<FlowSpec, Box<dyn std::error::Error>> {
    let kind: FlowKind = name.parse()?;
    refuse_cnf_options(kind, name, a, choices)?;
    let mut spec = FlowSpec::new(kind, dim, a.layers, a.hidden.clone());
    if kind == FlowKind::RealNvpCnf {
        spec.cnf = Some(CnfBlockSpec {
            hidden: a.hidden.clone(),
            activation: choices.activation,
            time: choices.time,
            // (`max`: a run.json of an older version may hold 0, trained as 1.)
            blocks: a.blocks.max(1),
            t_end: a.t_end,
            train_t: a.train_t,
            method: choices.method,
            rtol: a.rtol,
            atol: a.atol,
            adjoint: choices.strategy,
            adjoint_rtol: a.adjoint_rtol,
            adjoint_atol: a.adjoint_atol,
            steps: a.steps,
            adjoint_method: choices.adjoint_method,
            seminorm: a.seminorm,
            forward_seminorm: a.forward_seminorm,
        });
    }
    Ok(spec)
}

/// Refuses the options of a `--flow name` run (of `kind`) that apply to a CNF only: the CNF
/// options with a purely discrete kind, the regularizers with any kind, and a trace other
/// than exact (a discrete flow has no divergence; a flow's CNF block needs the exact one).
fn refuse_cnf_options(
    kind: FlowKind,
    name: &str,
    a: &TrainArgs,
    choices: &ModelChoices,
) -> Result<(), Box<dyn std::error::Error>> {
    let cnf_flags = [
        ("--adjoint-method", a.adjoint_method.is_some()),
        ("--seminorm", a.seminorm),
        ("--forward-seminorm", a.forward_seminorm),
        ("--train-t", a.train_t),
    ];
    if let Some((flag, _)) = cnf_flags.iter().find(|(_, set)| *set && kind != FlowKind::RealNvpCnf)
    {
        return Err(format!(
            "{flag} applies to a CNF (a CNF run or --flow realnvp+cnf), not to --flow {name}"
        )
        .into());
    }
    // RNODE's regularizers are integrated along a CNF run's own solve only.
    let regularizers = [("--kinetic", a.kinetic), ("--jacobian", a.jacobian)];
    if let Some((flag, _)) = regularizers.iter().find(|(_, w)| *w != 0.0) {
        return Err(format!("{flag} applies to a CNF run, not to --flow {name}").into());
    }
    if kind != FlowKind::RealNvpCnf && choices.trace != TraceEstimator::Exact {
        return Err(format!(
            "--trace {} applies to a CNF (a discrete flow has no divergence to estimate), not \
             to --flow {name}",
            a.trace
        )
        .into());
    }
    if kind == FlowKind::RealNvpCnf && choices.trace != TraceEstimator::Exact {
        return Err(format!(
            "--flow {kind}: the CNF block of a flow model needs --trace exact (the density \
             pass and its gradient must see the same noise), not {}",
            a.trace
        )
        .into());
    }
    Ok(())
}

/// The trainer of a CNF of `--blocks` MLP blocks, new or resumed.
fn cnf_trainer(
    a: &TrainArgs,
    choices: &ModelChoices,
    source: DataSource<f64>,
    test: Option<Dataset<f64>>,
    folder: &RunFolder,
) -> Result<Trainer, Box<dyn std::error::Error>> {
    let blocks = cnf_blocks(a, choices, source.dim())?;
    let mut solver = CnfConfig {
        method: choices.method,
        rtol: a.rtol,
        atol: a.atol,
        trace: choices.trace,
        ..Default::default()
    };
    a.steps.apply(&mut solver);
    let adjoint = adjoint_config(a, choices, &solver)?;
    let cnf = Cnf::chain(blocks, solver)?;
    let cfg = CnfTrainConfig {
        iterations: a.iterations,
        batch_size: a.batch,
        adam: adam_config(a, choices),
        train_t: a.train_t,
        kinetic: a.kinetic,
        jacobian: a.jacobian,
        test_every: a.test_every,
        seed: a.seed,
        checkpoint: checkpoint_file(a, folder),
        checkpoint_every: a.checkpoint_every.max(1),
        adjoint,
        ..Default::default()
    };
    let tr = if a.resume {
        let state = TrainState::load(&folder.state_file)?;
        CnfTrainer::resume(cnf, source, test, cfg, state)
            .map_err(|e| state_error(&folder.state_file, e))?
    } else {
        CnfTrainer::new(cnf, source, test, cfg)?
    };
    Ok(Trainer::Cnf(Box::new(tr)))
}

/// The CNF's blocks for `dim`-D data: `--blocks` MLPs, the k-th seeded `--seed` + k, each
/// integrated to `--t-end`.
fn cnf_blocks(
    a: &TrainArgs,
    choices: &ModelChoices,
    dim: usize,
) -> Result<Vec<CnfBlock<f64, Mlp<f64>>>, Error> {
    let mlp_cfg = MlpConfig {
        dim,
        hidden: a.hidden.clone(),
        activation: choices.activation,
        time: choices.time,
        ..Default::default()
    };
    // (`max`: a run.json of an older version may hold 0, trained as 1.)
    (0..a.blocks.max(1))
        .map(|k| {
            Ok(CnfBlock {
                field: Mlp::new(&MlpConfig {
                    seed: a.seed.wrapping_add(k as u64),
                    ..mlp_cfg.clone()
                })?,
                t_end: a.t_end,
            })
        })
        .collect()
}

/// The gradient's settings: `--adjoint` with its backward tolerances (default: those of
/// `solver`), `--adjoint-method` and the seminorms, validated.
fn adjoint_config(
    a: &TrainArgs,
    choices: &ModelChoices,
    solver: &CnfConfig<f64>,
) -> Result<AdjointConfig<f64>, Error> {
    let mut adjoint = AdjointConfig::with_strategy(choices.strategy).with_backward_tolerances(
        solver,
        a.adjoint_rtol,
        a.adjoint_atol,
    );
    adjoint.method = choices.adjoint_method;
    adjoint.seminorm = a.seminorm;
    adjoint.forward_seminorm = a.forward_seminorm;
    adjoint.validate()?;
    Ok(adjoint)
}

/// Where the trainer saves its checkpoints: the run's state file, unless
/// `--checkpoint-every 0` (then only at the end).
fn checkpoint_file(a: &TrainArgs, folder: &RunFolder) -> Option<PathBuf> {
    (a.checkpoint_every > 0).then(|| folder.state_file.clone())
}

/// A resumed run's state error, with the state file's path in a mismatch (the trainer
/// knows no path).
fn state_error(state_file: &Path, e: Error) -> Box<dyn std::error::Error> {
    match e {
        Error::StateFile { reason, .. } => format!(
            "{}: {reason} (do the run's settings and data still match its run.json?)",
            state_file.display()
        )
        .into(),
        e => e.into(),
    }
}
