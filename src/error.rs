//! The error type of the `odeflow` crate.

use odeflow_solvers::{Method, SolveError};

use crate::field::FieldError;
use crate::io::{CsvError, ModelFileError, NpyError};
use crate::plot::PlotError;
use crate::workprecision::Setting;

/// Everything that can go wrong in `odeflow`'s public API, with the numbers a caller acts
/// on. Errors of the parts (fields, solver, files, figures) are wrapped, not flattened, so
/// their own variants stay matchable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A batch buffer is not a whole number of `dim`-dimensional points.
    #[error("a batch of length {len} is not a whole number of {dim}-dimensional points")]
    BatchShape {
        /// Length of the buffer passed.
        len: usize,
        /// The model's dimension d.
        dim: usize,
    },
    /// An output or auxiliary buffer has the wrong length.
    #[error("buffer `{buffer}` has length {found}, expected {expected}")]
    BufferLength {
        /// The argument's name.
        buffer: &'static str,
        /// The length the call needs.
        expected: usize,
        /// The length passed.
        found: usize,
    },
    /// An input value is NaN or infinite.
    #[error("non-finite input value at index {index} (point {point})")]
    NonFiniteInput {
        /// Index into the flat input buffer.
        index: usize,
        /// The point (row) it belongs to.
        point: usize,
    },
    /// A parameter is NaN or infinite: one of the θ a flow or model was called with
    /// (refused before anything is evaluated), or one an optimizer step would produce (the
    /// step is then not taken). `index` is into that parameter vector.
    #[error("non-finite parameter {index} = {value} ({what})")]
    NonFiniteParameter {
        /// Where: `"in the layer's θ"`, `"in the model's parameters"`, `"would result from
        /// the Adam step, which was not taken"`.
        what: &'static str,
        /// Index into the parameter vector.
        index: usize,
        /// Its value (as f64).
        value: f64,
    },
    /// An Adam step would overflow a parameter's moments (a gradient whose square is not
    /// finite in the float type); the step is not taken.
    #[error("the Adam step was not taken: the moments of parameter {index} would overflow (gradient {gradient})")]
    MomentOverflow {
        /// Index into the parameter vector.
        index: usize,
        /// The parameter's gradient (as f64).
        gradient: f64,
    },
    /// A solve of a work-precision diagram
    /// ([`work_precision`](crate::workprecision::work_precision)) returned a NaN or infinite
    /// value; `method` and `setting` name the run that produced it.
    #[error(
        "the {method} solve at {setting} returned a non-finite value {value} at index {index}"
    )]
    NonFiniteSolution {
        /// The method of the failing run.
        method: Method,
        /// Its setting (rtol = atol, or the number of fixed steps).
        setting: Setting,
        /// The first offending index into the solution.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// A configuration value is out of range.
    #[error("invalid {name} = {value}: {expected}")]
    InvalidConfig {
        /// What was configured.
        name: &'static str,
        /// The value given (as f64).
        value: f64,
        /// What it must be.
        expected: &'static str,
    },
    /// Blocks of a chained flow disagree on the dimension.
    #[error("block {block} has dimension {found}, the flow has {expected}")]
    BlockDimension {
        /// The offending block.
        block: usize,
        /// The flow's dimension (the first block's).
        expected: usize,
        /// The block's dimension.
        found: usize,
    },
    /// An ODE solve failed (step-size underflow, too many steps, a non-finite state …);
    /// `block` is the CNF block whose solve failed.
    #[error("ODE solve in block {block} failed: {source}")]
    Solve {
        /// The block (0 for a single-block flow).
        block: usize,
        /// The solver's error, with its t and h.
        #[source]
        source: SolveError,
    },
    /// The backward (adjoint) solve failed: `source` carries the time t reached and the
    /// step size h (or the step limit); `segment` is the CNF block or the observation
    /// interval (`t_obs[segment − 1] → t_obs[segment]`, segment 0 starting at t0) it failed in.
    #[error("adjoint backward solve in segment {segment} failed: {source}")]
    AdjointSolve {
        /// The CNF block, or the observation interval of a neural-ODE solve.
        segment: usize,
        /// The solver's error, with its t and h.
        #[source]
        source: SolveError,
    },
    /// The adjoint's backward solver options
    /// ([`AdjointConfig::options`](crate::adjoint::AdjointConfig::options)) are out of range:
    /// a tolerance ≤ 0 or not finite, a bad step bound, a fixed-step backward method without
    /// a step size; refused before any solve.
    #[error("invalid adjoint backward solver options: {source}")]
    AdjointOptions {
        /// What the solver's check found.
        #[source]
        source: SolveError,
    },
    /// A gradient came out NaN or infinite (reported instead of returned).
    #[error("non-finite gradient {what}[{index}] = {value} (segment {segment})")]
    NonFiniteGradient {
        /// Which gradient: `"theta"`, `"x"` (initial state), `"t_end"`, `"t_obs"`, `"t0"`, or
        /// `"event"` (an event function's `(∂g/∂z, ∂g/∂t)` at the event).
        what: &'static str,
        /// The CNF block (for `theta`, `t_end`) or observation index; 0 otherwise.
        segment: usize,
        /// The first offending index into that gradient.
        index: usize,
        /// Its value (as f64).
        value: f64,
    },
    /// An event-terminated solve ([`ode_event_forward`](crate::adjoint::ode_event_forward))
    /// met no crossing of its event function by `t_max`.
    #[error("the event function did not cross zero before t_max = {t_max}")]
    NoEvent {
        /// The end of the search.
        t_max: f64,
    },
    /// The event function's rate along the solution at the event time, `ġ = g_t + g_zᵀ f`,
    /// is 0 or not finite: the crossing is tangential and the event time has no derivative.
    #[error("the event at t = {t} is tangential (the event function's rate along the solution is {rate}): the event time is not differentiable")]
    TangentialEvent {
        /// The event time.
        t: f64,
        /// `ġ` there.
        rate: f64,
    },
    /// A data set name is not one of the built-in toy sets.
    #[error("unknown data set '{name}' (expected one of swissroll, 8gaussians, pinwheel, circles, moons, 2spirals, checkerboard, rings)")]
    UnknownDataset {
        /// The name given.
        name: String,
    },
    /// The loss evaluated to NaN or infinity.
    #[error("non-finite loss {value}")]
    NonFiniteLoss {
        /// The loss value.
        value: f64,
    },
    /// Training stopped at `iteration` (1-based: the iteration that failed); the trainer
    /// keeps the state after iteration − 1, the last good one.
    #[error("training stopped at iteration {iteration}: {source}")]
    Training {
        /// The iteration that failed.
        iteration: u64,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A training-state file is unreadable, truncated, or for another model.
    #[error("training state {path}: {reason}")]
    StateFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A flow cannot do what was asked (e.g. the reverse-mode gradient of a direction it
    /// does not implement); `flow` names the layer, `what` the missing operation.
    #[error("flow '{flow}' does not support {what}")]
    Unsupported {
        /// The flow's name.
        flow: &'static str,
        /// The operation.
        what: &'static str,
    },
    /// A matrix of a flow is singular (or numerically so): the LU factorisation met a zero
    /// pivot in column `column`; `layer` is the flow's index in its composition.
    #[error("singular matrix in flow layer {layer}: zero pivot in column {column}")]
    SingularMatrix {
        /// The layer (0 for a flow used on its own).
        layer: usize,
        /// The column whose pivot vanished.
        column: usize,
    },
    /// An input lies outside the domain of a map (e.g. u ∉ [0, 1] for an inverse CDF), or a
    /// 1-D root find for an inverse did not converge; `index` is into the flat input buffer.
    #[error("input {value} at index {index} is outside the domain: {expected}")]
    OutOfDomain {
        /// Index into the flat input buffer.
        index: usize,
        /// The value (as f64).
        value: f64,
        /// What the domain is.
        expected: &'static str,
    },
    /// A vector-field call failed.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// Reading or writing an array file failed.
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// A CSV file of points is unreadable or malformed.
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// A model file is corrupt, foreign or does not fit its architecture.
    #[error(transparent)]
    ModelFile(#[from] ModelFileError),
    /// Drawing a figure failed.
    #[error(transparent)]
    Plot(#[from] PlotError),
}

/// Checks that every value of `x` is finite.
pub(crate) fn check_finite<T: num_traits::Float>(x: &[T], dim: usize) -> Result<(), Error> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFiniteInput { index, point: index / dim.max(1) }),
        None => Ok(()),
    }
}

/// Returns the number of points in a flat batch of `dim`-dimensional points.
pub(crate) fn batch_size(len: usize, dim: usize) -> Result<usize, Error> {
    if dim > 0 && len.is_multiple_of(dim) {
        Ok(len / dim)
    } else {
        Err(Error::BatchShape { len, dim })
    }
}

/// Checks an output buffer's length.
pub(crate) fn check_len(buffer: &'static str, found: usize, expected: usize) -> Result<(), Error> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::BufferLength { buffer, expected, found })
    }
}

/// A vector of `len` zeros, allocated fallibly: a length whose bytes exceed `isize::MAX`,
/// or an allocation the system refuses, is an [`Error::InvalidConfig`] naming `what`
/// instead of a capacity-overflow panic or an abort.
pub(crate) fn try_zeros<T: num_traits::Float>(
    len: usize,
    what: &'static str,
) -> Result<Vec<T>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::InvalidConfig {
        name: what,
        value: len as f64,
        expected: "a size whose buffer fits in memory",
    })?;
    v.resize(len, T::zero());
    Ok(v)
}
