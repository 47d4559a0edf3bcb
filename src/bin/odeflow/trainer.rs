//! The trainer of a `train` run, of either kind of model: a CNF, or a flow model with its
//! spec.

use std::ops::ControlFlow;
use std::path::Path;

use odeflow::field::Mlp;
use odeflow::flows::FlowSpec;
use odeflow::io::{save_cnf, save_flow};
use odeflow::train::{CnfTrainer, FlowTrainer, Progress, RunSummary};
use odeflow::Error;

/// The trainer of either kind of model.
pub(crate) enum Trainer {
    /// A CNF of MLP blocks.
    Cnf(Box<CnfTrainer<f64, Mlp<f64>>>),
    /// A discrete flow and its spec (for the model file).
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

    /// Trains to the configured iteration count, calling `callback` after each iteration.
    pub(crate) fn run(
        &mut self,
        callback: impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<RunSummary, Error> {
        match self {
            Trainer::Cnf(t) => t.run(callback),
            Trainer::Flow(t, _) => t.run(callback),
        }
    }

    /// Saves the training state and the model file.
    pub(crate) fn save(&self, state: &Path, model: &Path) -> Result<(), Error> {
        match self {
            Trainer::Cnf(t) => {
                t.save_state(state)?;
                save_cnf(model, t.cnf())
            }
            Trainer::Flow(t, spec) => {
                t.state().save(state)?;
                save_flow(model, spec, t.model())
            }
        }
    }
}
