//! Model files: a CNF of MLP blocks as safetensors, loadable from PyTorch; discrete flows
//! (see [Flow files](#flow-files)).
//!
//! # Format (version 1)
//! A [safetensors](https://github.com/huggingface/safetensors) file. Tensors are named as
//! FFJORD's PyTorch `state_dict` names them (`train_tabular.py`, `build_model_tabular`), so
//! that `model.load_state_dict(safetensors.torch.load_file(path), strict=False)` works on an
//! FFJORD model of the same architecture, and the other way round:
//!
//! | tensor | shape | what |
//! |---|---|---|
//! | `chain.{k}.odefunc.odefunc.diffeq.layers.{i}._layer.weight` | `[out, in]` (`[out, in + 1]` for `concat`, time column first) | layer i of block k |
//! | `chain.{k}.odefunc.odefunc.diffeq.layers.{i}._layer.bias` | `[out]` | |
//! | `chain.{k}.odefunc.odefunc.diffeq.layers.{i}._hyper_bias.weight` | `[out, 1]` | `concatsquash` only |
//! | `chain.{k}.odefunc.odefunc.diffeq.layers.{i}._hyper_gate.weight` | `[out, 1]` | `concatsquash` only |
//! | `chain.{k}.odefunc.odefunc.diffeq.layers.{i}._hyper_gate.bias` | `[out]` | `concatsquash` only |
//! | `chain.{k}.sqrt_end_time` | `[1]` | √T of block k (FFJORD's `train_T` parametrization, T = τ²) |
//!
//! Tensors are `F64` or `F32` (either loads into either precision). The file's metadata
//! (`__metadata__`, string to string) holds `format` = `odeflow`, `format_version` = `1`,
//! and `architecture`, a JSON object:
//!
//! ```json
//! {"dim": 2, "hidden": [64, 64, 64], "activation": "tanh", "time": "concatsquash",
//!  "blocks": 1, "method": "dopri5", "rtol": 1e-5, "atol": 1e-5, "trace": "exact",
//!  "end_times": [0.5], "steps": "hairer"}
//! ```
//!
//! (`activation`: tanh, softplus, silu, elu; `time`: concat, concatsquash, ignore; `trace`:
//! exact, hutchinson-gaussian, hutchinson-rademacher; `end_times`: T of each block exactly,
//! used when it agrees with `sqrt_end_time²`, which PyTorch may have changed; `steps`:
//! hairer or peers, see [`Steps`], hairer when absent.) CNF files
//! also carry `model` = `cnf` (files without a `model` entry are read as CNFs). Files are
//! written atomically.
//!
//! # Flow files
//! A discrete flow ([`save_flow`], [`load_flow`]) is the same container with one tensor,
//! `params` (`[n_params]`, F64 or F32: the model's flat parameter vector), and the
//! metadata `format` = `odeflow`, `format_version` = `1`, `model` = `flow` and
//! `architecture` = the [`FlowSpec`] as JSON. Loading a file of one kind as the other
//! gives [`ModelFileError::Kind`]; [`load_model`] reads either.
//!
//! # Loading
//! Before a model is built, every size in its architecture (layers, blocks, dimension,
//! hidden widths, spline bins, and the parameter count they add up to, in checked
//! arithmetic) is checked against the number of F32/F64 values the file's tensors hold: an
//! architecture those values cannot back (an edited or corrupt header) gives
//! [`ModelFileError::ArchitectureTooLarge`] naming the field, before anything of its size is
//! allocated or looped over.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::cnf::{Cnf, CnfBlock, CnfConfig, Steps};
use crate::field::{Activation, Mlp, MlpConfig, Real, TimeConditioning, VectorField};
use crate::flows::{FlowModel, FlowSpec};
use crate::io::npy::read_file;
use crate::io::write_atomically;
use crate::solvers::Stats;
use crate::trace::{Noise, TraceEstimator};
use crate::Error;

/// The model-file format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// What can be wrong with a model file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelFileError {
    /// The file is not a readable safetensors file (truncated, corrupt, not safetensors).
    #[error("{path}: not a valid safetensors file ({reason})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A safetensors file, but not an odeflow model (no or foreign metadata).
    #[error("{path}: not an odeflow model file ({reason})")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// Written by a newer format than this build reads.
    #[error("{path}: model format version {found}, this build reads version {supported}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: String,
        /// The version this build reads.
        supported: u32,
    },
    /// An odeflow model file of the other kind (a CNF where a discrete flow was expected,
    /// or the other way round).
    #[error("{path}: a {found} model file, expected a {expected} model file")]
    Kind {
        /// The file.
        path: PathBuf,
        /// The kind in the file (`cnf` or `flow`).
        found: String,
        /// The kind the caller asked for.
        expected: &'static str,
    },
    /// A tensor is missing or has the wrong shape or type for the architecture.
    #[error("{path}: tensor `{name}`: {reason}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The architecture in the metadata describes more parameters than the file's tensors
    /// hold (an edited or corrupt header): refused before the model is built, so an absurd
    /// size cannot exhaust memory or time.
    #[error(
        "{path}: architecture `{field}` = {value} needs {} parameter values, but the \
         file's F32/F64 tensors hold {stored}",
        needed_text(.needed)
    )]
    ArchitectureTooLarge {
        /// The file.
        path: PathBuf,
        /// The offending field (`layers`, `dim`, `hidden[0]`, `cnf.blocks`, …), or the
        /// fields whose product is too large (`dim, layers, hidden`).
        field: String,
        /// Its value, as written (for several fields, their values in order).
        value: String,
        /// The fewest parameter values the field implies (`None`: more than `usize::MAX`).
        needed: Option<usize>,
        /// The number of F32/F64 values the file's tensors hold.
        stored: usize,
    },
}

fn needed_text(needed: &Option<usize>) -> String {
    match needed {
        Some(n) => format!("at least {n}"),
        None => format!("more than {}", usize::MAX),
    }
}

/// The architecture and solver settings stored in a model file's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    /// Dimension d of a point.
    pub dim: usize,
    /// Hidden widths of each block's MLP.
    pub hidden: Vec<usize>,
    /// `tanh`, `softplus`, `silu` or `elu`.
    pub activation: String,
    /// `concat`, `concatsquash` or `ignore`.
    pub time: String,
    /// Number of CNF blocks.
    pub blocks: usize,
    /// Solver method name (see `odeflow::solvers::Method`).
    pub method: String,
    /// Relative tolerance of the solves.
    pub rtol: f64,
    /// Absolute tolerance of the solves.
    pub atol: f64,
    /// `exact`, `hutchinson-gaussian` or `hutchinson-rademacher`.
    pub trace: String,
    /// The integration time T of each block, exactly (√T is also stored as the tensor
    /// `sqrt_end_time` for PyTorch; squaring it back loses the last bit). Used when it
    /// agrees with `sqrt_end_time²` to 1e-12, i.e. unless the tensor was edited elsewhere.
    #[serde(default)]
    pub end_times: Vec<f64>,
    /// The step-size rules (`hairer` or `peers`, see [`Steps`]); absent in older files:
    /// `hairer`. A config with other controller settings is saved as `hairer`.
    #[serde(default)]
    pub steps: Steps,
    /// The step size of a fixed-step method (`euler`, `midpoint`, `heun`, `rk4`); absent for
    /// an adaptive one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h_fixed: Option<f64>,
}

/// The name of an activation in model files and on the command line.
pub fn activation_name(a: Activation) -> &'static str {
    match a {
        Activation::Softplus => "softplus",
        Activation::Silu => "silu",
        Activation::Elu => "elu",
        _ => "tanh",
    }
}

/// Parses an activation name (see [`activation_name`]).
pub fn parse_activation(s: &str) -> Option<Activation> {
    Some(match s {
        "tanh" => Activation::Tanh,
        "softplus" => Activation::Softplus,
        "silu" | "swish" => Activation::Silu,
        "elu" => Activation::Elu,
        _ => return None,
    })
}

/// The name of a time conditioning in model files and on the command line.
pub fn time_name(t: TimeConditioning) -> &'static str {
    match t {
        TimeConditioning::Concat => "concat",
        TimeConditioning::ConcatSquash => "concatsquash",
        TimeConditioning::Ignore => "ignore",
    }
}

/// Parses a time-conditioning name (see [`time_name`]).
pub fn parse_time(s: &str) -> Option<TimeConditioning> {
    Some(match s {
        "concat" => TimeConditioning::Concat,
        "concatsquash" => TimeConditioning::ConcatSquash,
        "ignore" => TimeConditioning::Ignore,
        _ => return None,
    })
}

/// The name of a divergence estimator in model files and on the command line.
pub fn trace_name(t: TraceEstimator) -> &'static str {
    match t {
        TraceEstimator::Exact => "exact",
        TraceEstimator::Hutchinson(Noise::Gaussian) => "hutchinson-gaussian",
        TraceEstimator::Hutchinson(Noise::Rademacher) => "hutchinson-rademacher",
    }
}

/// Parses a divergence-estimator name (see [`trace_name`]).
pub fn parse_trace(s: &str) -> Option<TraceEstimator> {
    Some(match s {
        "exact" => TraceEstimator::Exact,
        "hutchinson-gaussian" | "gaussian" => TraceEstimator::Hutchinson(Noise::Gaussian),
        "hutchinson-rademacher" | "rademacher" => TraceEstimator::Hutchinson(Noise::Rademacher),
        _ => return None,
    })
}

const PREFIX: &str = "odefunc.odefunc.diffeq.";

/// Where in a training run a model file was saved: the iteration and the model's test NLL
/// then. Kept in the file's metadata as `training` (JSON) by [`save_cnf_at`] and
/// [`save_flow_at`] (`odeflow train` marks its `best.safetensors` so), read back by
/// [`read_training_point`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainingPoint {
    /// The training iteration the model is from.
    pub iteration: u64,
    /// Its test NLL (finite).
    pub test_nll: f64,
}

/// Saves a CNF of MLP blocks (all of one architecture) to `path`, atomically.
pub fn save_cnf<T: Real>(path: impl AsRef<Path>, cnf: &Cnf<T, Mlp<T>>) -> Result<(), Error> {
    save_cnf_marked(path.as_ref(), cnf, None)
}

/// [`save_cnf`] with the [`TrainingPoint`] the model was saved at, in one atomic write.
pub fn save_cnf_at<T: Real>(
    path: impl AsRef<Path>,
    cnf: &Cnf<T, Mlp<T>>,
    at: TrainingPoint,
) -> Result<(), Error> {
    save_cnf_marked(path.as_ref(), cnf, Some(at))
}

fn save_cnf_marked<T: Real>(
    path: &Path,
    cnf: &Cnf<T, Mlp<T>>,
    at: Option<TrainingPoint>,
) -> Result<(), Error> {
    let first = cnf.blocks()[0].field.config();
    if let Some(k) = cnf.blocks().iter().position(|b| {
        b.field.config().hidden != first.hidden
            || b.field.config().activation != first.activation
            || b.field.config().time != first.time
    }) {
        return Err(Error::InvalidConfig {
            name: "blocks",
            value: k as f64,
            expected: "one architecture for all blocks",
        });
    }
    let cfg = cnf.config();
    let arch = Architecture {
        dim: first.dim,
        hidden: first.hidden.clone(),
        activation: activation_name(first.activation).into(),
        time: time_name(first.time).into(),
        blocks: cnf.blocks().len(),
        method: cfg.method.name().into(),
        rtol: cfg.rtol.to_f64c(),
        atol: cfg.atol.to_f64c(),
        trace: trace_name(cfg.trace).into(),
        end_times: cnf.blocks().iter().map(|b| b.t_end.to_f64c()).collect(),
        steps: Steps::of(cfg).unwrap_or_default(),
        h_fixed: cfg.options.h_fixed.filter(|_| !cfg.method.is_adaptive()).map(|h| h.to_f64c()),
    };
    let is_f64 = std::mem::size_of::<T>() == 8;
    let dtype = if is_f64 { Dtype::F64 } else { Dtype::F32 };
    let to_bytes = |v: &[T]| -> Vec<u8> {
        if is_f64 {
            v.iter().flat_map(|x| x.to_f64c().to_le_bytes()).collect()
        } else {
            v.iter().flat_map(|x| (x.to_f64c() as f32).to_le_bytes()).collect()
        }
    };
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (k, block) in cnf.blocks().iter().enumerate() {
        let params = block.field.params();
        for pb in block.field.blocks() {
            owned.push((
                format!("chain.{k}.{PREFIX}{}", pb.name),
                pb.shape.clone(),
                to_bytes(&params[pb.range()]),
            ));
        }
        owned.push((format!("chain.{k}.sqrt_end_time"), vec![1], to_bytes(&[block.t_end.sqrt()])));
    }
    let views = owned
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(dtype, shape.clone(), bytes).map(|v| (name.as_str(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(path, e))?;
    let arch = serde_json::to_string(&arch).unwrap_or_default();
    let bytes = serialize_model(views, "cnf", arch, at).map_err(|e| corrupt(path, e))?;
    write_atomically(path, |w| std::io::Write::write_all(w, &bytes))?;
    Ok(())
}

/// The bytes of a model file: `views` and the metadata (`format`, `format_version`,
/// `model`, `architecture`, and `training` if `at` is given), with the JSON header's keys
/// in sorted order, so that the same
/// model always gives the same bytes (safetensors writes the metadata in a hash map's
/// order, which changes from one map to the next). The header stays padded to a multiple
/// of 8 bytes with spaces, as safetensors pads it.
fn serialize_model<'a>(
    views: impl IntoIterator<Item = (&'a str, TensorView<'a>)>,
    model: &str,
    architecture: String,
    at: Option<TrainingPoint>,
) -> Result<Vec<u8>, String> {
    let mut metadata = HashMap::from([
        ("format".to_string(), "odeflow".to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        ("model".to_string(), model.to_string()),
        ("architecture".to_string(), architecture),
    ]);
    if let Some(at) = at {
        metadata.insert("training".into(), serde_json::to_string(&at).map_err(|e| e.to_string())?);
    }
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())?;
    let len: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or("no header")?;
    let n = usize::try_from(u64::from_le_bytes(len)).map_err(|e| e.to_string())?;
    let header = bytes.get(8..8 + n).ok_or("header past the end")?;
    // serde_json's maps are ordered by key (its `preserve_order` feature is off).
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let mut sorted = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    sorted.resize(sorted.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + sorted.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    out.extend_from_slice(&sorted);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> ModelFileError {
    ModelFileError::Corrupt { path: path.to_path_buf(), reason: e.to_string() }
}

/// Reads the architecture of a model file without building the model.
pub fn read_architecture(path: impl AsRef<Path>) -> Result<Architecture, Error> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    Ok(architecture(path, &bytes)?)
}

/// The [`TrainingPoint`] an odeflow model file (CNF or flow) was saved at, if it holds one
/// (files saved by [`save_cnf`] and [`save_flow`] do not). Errors: the file cannot be read,
/// is not an odeflow model file, or its `training` entry is not a training point.
pub fn read_training_point(path: impl AsRef<Path>) -> Result<Option<TrainingPoint>, Error> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    metadata(path, &bytes)?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(path, e))?;
    let Some(text) = meta.metadata().as_ref().and_then(|m| m.get("training")) else {
        return Ok(None);
    };
    let at: TrainingPoint = serde_json::from_str(text).map_err(|e| ModelFileError::Foreign {
        path: path.to_path_buf(),
        reason: format!("training JSON: {e}"),
    })?;
    Ok(Some(at))
}

/// The model kind (`cnf` when the file has no `model` entry, as files written before flow
/// files existed) and the architecture JSON of an odeflow model file.
fn metadata(path: &Path, bytes: &[u8]) -> Result<(String, String), ModelFileError> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(path, e))?;
    let foreign =
        |reason: &str| ModelFileError::Foreign { path: path.to_path_buf(), reason: reason.into() };
    let info = meta.metadata().as_ref().ok_or_else(|| foreign("no metadata"))?;
    if info.get("format").map(String::as_str) != Some("odeflow") {
        return Err(foreign("metadata has no format = odeflow"));
    }
    let version = info.get("format_version").cloned().unwrap_or_default();
    if version != FORMAT_VERSION.to_string() {
        return Err(ModelFileError::Version {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let kind = info.get("model").cloned().unwrap_or_else(|| "cnf".to_string());
    if kind != "cnf" && kind != "flow" {
        return Err(foreign(&format!("unknown model kind {kind:?} (cnf, flow)")));
    }
    let arch =
        info.get("architecture").ok_or_else(|| foreign("no architecture in the metadata"))?;
    Ok((kind, arch.clone()))
}

/// The metadata's architecture JSON, parsed, after checking the model kind.
fn parsed_architecture<A: serde::de::DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    expected: &'static str,
) -> Result<A, ModelFileError> {
    let (kind, arch) = metadata(path, bytes)?;
    if kind != expected {
        return Err(ModelFileError::Kind { path: path.to_path_buf(), found: kind, expected });
    }
    serde_json::from_str(&arch).map_err(|e| ModelFileError::Foreign {
        path: path.to_path_buf(),
        reason: format!("architecture JSON: {e}"),
    })
}

fn architecture(path: &Path, bytes: &[u8]) -> Result<Architecture, ModelFileError> {
    parsed_architecture(path, bytes, "cnf")
}

/// Reads tensor `name` of shape `shape` (F64 or F32) into precision `T`; every value must
/// be finite.
fn read_tensor<T: Real>(
    path: &Path,
    tensors: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
) -> Result<Vec<T>, ModelFileError> {
    let bad = |name: &str, reason: String| ModelFileError::Tensor {
        path: path.to_path_buf(),
        name: name.into(),
        reason,
    };
    let view = tensors.tensor(name).map_err(|_| bad(name, "missing".into()))?;
    if view.shape() != shape {
        return Err(bad(
            name,
            format!("shape {:?}, the architecture needs {shape:?}", view.shape()),
        ));
    }
    let data = view.data();
    let values: Vec<T> = match view.dtype() {
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| T::from_f64c(f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
            .collect(),
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| T::from_f64c(f64::from(f32::from_le_bytes(c.try_into().unwrap_or([0; 4])))))
            .collect(),
        other => return Err(bad(name, format!("dtype {other:?}, expected F32 or F64"))),
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(bad(name, format!("non-finite value at index {i}")));
    }
    Ok(values)
}

/// The number of F32/F64 values the file's tensors hold, from the header's shapes (checked
/// products; the data is not read). Every parameter of a model is one of these values (a
/// tensor of another type is refused when read), so this bounds every size of an
/// architecture before anything is built: a file of n bytes backs at most n/4 parameters.
fn stored_values(path: &Path, bytes: &[u8]) -> Result<usize, ModelFileError> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(path, e))?;
    meta.tensors()
        .values()
        .filter(|info| matches!(info.dtype, Dtype::F64 | Dtype::F32))
        .try_fold(0usize, |sum, info| {
            info.shape.iter().try_fold(1usize, |n, &s| n.checked_mul(s))?.checked_add(sum)
        })
        .ok_or_else(|| corrupt(path, "tensor sizes overflow"))
}

/// Checks sizes of an architecture against the `stored` parameter values of the file at
/// `path`, naming the field that asks for more.
struct Budget<'a> {
    path: &'a Path,
    stored: usize,
}

impl Budget<'_> {
    /// Refuses `field` = `value` when it implies `needed` values (`None`: more than
    /// `usize::MAX`) and the file holds fewer.
    fn check(
        &self,
        field: &str,
        value: &dyn std::fmt::Display,
        needed: Option<usize>,
    ) -> Result<(), ModelFileError> {
        match needed {
            Some(n) if n <= self.stored => Ok(()),
            _ => Err(ModelFileError::ArchitectureTooLarge {
                path: self.path.to_path_buf(),
                field: field.into(),
                value: value.to_string(),
                needed,
                stored: self.stored,
            }),
        }
    }

    /// A size each unit of which carries at least one parameter value (a layer, a block, a
    /// hidden unit's bias, a coordinate's output bias).
    fn count(&self, field: &str, n: usize) -> Result<(), ModelFileError> {
        self.check(field, &n, Some(n))
    }

    /// Hidden widths `hidden` (field `{prefix}hidden[i]`): each unit has a bias.
    fn widths(&self, prefix: &str, hidden: &[usize]) -> Result<(), ModelFileError> {
        for (i, &h) in hidden.iter().enumerate() {
            self.count(&format!("{prefix}hidden[{i}]"), h)?;
        }
        Ok(())
    }
}

/// Refuses a flow spec whose sizes the file's tensors do not back, before it is built:
/// first each size on its own (every layer, CNF block, hidden unit, coordinate and spline
/// bin carries at least one parameter value), then the whole count ([`FlowSpec::checked_n_params`]).
fn check_flow_sizes(path: &Path, bytes: &[u8], spec: &FlowSpec) -> Result<(), ModelFileError> {
    use crate::flows::FlowKind;
    let budget = Budget { path, stored: stored_values(path, bytes)? };
    budget.count("layers", spec.layers)?;
    budget.count("dim", spec.dim)?;
    // The fields the whole count depends on, for the message.
    let mut fields = vec![("dim", spec.dim.to_string()), ("layers", spec.layers.to_string())];
    if !matches!(spec.kind, FlowKind::Planar | FlowKind::Radial) {
        budget.widths("", &spec.hidden)?;
        fields.push(("hidden", format!("{:?}", spec.hidden)));
    }
    if spec.kind == FlowKind::Nsf {
        budget.count("bins", spec.bins)?;
        fields.push(("bins", spec.bins.to_string()));
    }
    if spec.kind == FlowKind::RealNvpCnf {
        let cnf = spec.cnf.clone().unwrap_or_default();
        budget.count("cnf.blocks", cnf.blocks)?;
        budget.widths("cnf.", &cnf.hidden)?;
        fields.push(("cnf.hidden", format!("{:?}", cnf.hidden)));
        fields.push(("cnf.blocks", cnf.blocks.to_string()));
    }
    let (names, values): (Vec<&str>, Vec<String>) = fields.into_iter().unzip();
    budget.check(&names.join(", "), &values.join(", "), spec.checked_n_params())
}

/// Refuses a CNF architecture whose sizes the file's tensors do not back, before anything
/// is allocated: `blocks`, `dim` and each hidden width on their own, then the whole count
/// (each block's MLP and its `sqrt_end_time`). `≤`, not `=`: a PyTorch `state_dict` may
/// hold other tensors too.
fn check_cnf_sizes(
    path: &Path,
    bytes: &[u8],
    arch: &Architecture,
    time: TimeConditioning,
) -> Result<(), ModelFileError> {
    let budget = Budget { path, stored: stored_values(path, bytes)? };
    budget.count("blocks", arch.blocks)?;
    budget.count("dim", arch.dim)?;
    budget.widths("", &arch.hidden)?;
    let mlp = MlpConfig { dim: arch.dim, hidden: arch.hidden.clone(), time, ..Default::default() };
    let needed = mlp.checked_n_params().and_then(|n| n.checked_add(1)?.checked_mul(arch.blocks));
    let value = format!("{}, {:?}, {}, {}", arch.dim, arch.hidden, arch.time, arch.blocks);
    budget.check("dim, hidden, time, blocks", &value, needed)
}

/// Loads a CNF saved by [`save_cnf`] (or written by PyTorch in the same format), in
/// precision `T` whatever the file's. Its solver settings come with it: a file whose rtol is
/// below `T`'s machine epsilon (an f64 model at rtol 1e-7, loaded in f32) is refused with
/// [`SolveError::ToleranceBelowPrecision`](crate::solvers::SolveError::ToleranceBelowPrecision)
/// (load it in f64, or save it at another rtol).
pub fn load_cnf<T: Real>(path: impl AsRef<Path>) -> Result<Cnf<T, Mlp<T>>, Error> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let arch = architecture(path, &bytes)?;
    let bad = |name: &str, reason: String| ModelFileError::Tensor {
        path: path.to_path_buf(),
        name: name.into(),
        reason,
    };
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(path, e))?;
    let read = |name: &str, shape: &[usize]| read_tensor::<T>(path, &tensors, name, shape);
    let activation = parse_activation(&arch.activation)
        .ok_or_else(|| bad("architecture", format!("unknown activation {:?}", arch.activation)))?;
    let time = parse_time(&arch.time)
        .ok_or_else(|| bad("architecture", format!("unknown time {:?}", arch.time)))?;
    let trace = parse_trace(&arch.trace)
        .ok_or_else(|| bad("architecture", format!("unknown trace {:?}", arch.trace)))?;
    let method: crate::solvers::Method =
        arch.method.parse().map_err(|e| bad("architecture", format!("{e}")))?;
    let h_fixed = match arch.h_fixed {
        _ if method.is_adaptive() => None,
        Some(h) if h.is_finite() && h > 0.0 => Some(T::from_f64c(h)),
        h => {
            return Err(bad(
                "architecture",
                format!(
                    "method {} takes fixed steps, and h_fixed is {} (a finite step > 0 is needed)",
                    method.name(),
                    h.map_or("missing".into(), |h| h.to_string())
                ),
            )
            .into())
        }
    };
    if arch.blocks == 0 {
        return Err(bad("architecture", "zero blocks".into()).into());
    }
    check_cnf_sizes(path, &bytes, &arch, time)?;
    let cfg = MlpConfig {
        dim: arch.dim,
        hidden: arch.hidden.clone(),
        activation,
        time,
        ..Default::default()
    };
    let mut blocks = Vec::with_capacity(arch.blocks);
    for k in 0..arch.blocks {
        let mut mlp = Mlp::<T>::new(&cfg).map_err(|e| bad("architecture", e.to_string()))?;
        for pb in mlp.blocks().to_vec() {
            let values = read(&format!("chain.{k}.{PREFIX}{}", pb.name), &pb.shape)?;
            mlp.params_mut()[pb.range()].copy_from_slice(&values);
        }
        let tau = read(&format!("chain.{k}.sqrt_end_time"), &[1])?[0].to_f64c();
        let t_end = match arch.end_times.get(k) {
            Some(&t) if ((t - tau * tau) / t).abs() < 1e-12 => t,
            _ => tau * tau,
        };
        blocks.push(CnfBlock { field: mlp, t_end: T::from_f64c(t_end) });
    }
    let mut config = CnfConfig {
        method,
        rtol: T::from_f64c(arch.rtol),
        atol: T::from_f64c(arch.atol),
        trace,
        ..Default::default()
    };
    arch.steps.apply(&mut config);
    config.options.h_fixed = h_fixed;
    Cnf::chain(blocks, config)
}

/// Saves a discrete flow to `path`, atomically: the flat parameter vector as one tensor
/// `params` (`[n_params]`, F64 or F32 by `T`) and the metadata `format` = `odeflow`,
/// `format_version`, `model` = `flow` and `architecture` = `spec` as JSON (see
/// [`FlowSpec`]). Errors: `model` is not what `spec` builds (a different dimension or
/// parameter count; [`Error::InvalidConfig`]).
pub fn save_flow<T: Real>(
    path: impl AsRef<Path>,
    spec: &FlowSpec,
    model: &FlowModel<T>,
) -> Result<(), Error> {
    save_flow_marked(path.as_ref(), spec, model, None)
}

/// [`save_flow`] with the [`TrainingPoint`] the model was saved at, in one atomic write.
pub fn save_flow_at<T: Real>(
    path: impl AsRef<Path>,
    spec: &FlowSpec,
    model: &FlowModel<T>,
    at: TrainingPoint,
) -> Result<(), Error> {
    save_flow_marked(path.as_ref(), spec, model, Some(at))
}

fn save_flow_marked<T: Real>(
    path: &Path,
    spec: &FlowSpec,
    model: &FlowModel<T>,
    at: Option<TrainingPoint>,
) -> Result<(), Error> {
    let n = spec.layers::<T>()?.iter().map(|l| l.n_params()).sum::<usize>();
    if n != model.n_params() || spec.dim != model.dim() {
        return Err(Error::InvalidConfig {
            name: "flow spec",
            value: model.n_params() as f64,
            expected: "the parameter count and dimension of the spec's model",
        });
    }
    let is_f64 = std::mem::size_of::<T>() == 8;
    let dtype = if is_f64 { Dtype::F64 } else { Dtype::F32 };
    let bytes: Vec<u8> = if is_f64 {
        model.params().iter().flat_map(|x| x.to_f64c().to_le_bytes()).collect()
    } else {
        model.params().iter().flat_map(|x| (x.to_f64c() as f32).to_le_bytes()).collect()
    };
    let view =
        TensorView::new(dtype, vec![model.n_params()], &bytes).map_err(|e| corrupt(path, e))?;
    let arch = serde_json::to_string(spec).unwrap_or_default();
    let out =
        serialize_model([("params", view)], "flow", arch, at).map_err(|e| corrupt(path, e))?;
    write_atomically(path, |w| std::io::Write::write_all(w, &out))?;
    Ok(())
}

/// Loads a discrete flow saved by [`save_flow`], in precision `T` whatever the file's;
/// returns its spec and the model. A CNF file gives [`ModelFileError::Kind`].
pub fn load_flow<T: Real>(path: impl AsRef<Path>) -> Result<(FlowSpec, FlowModel<T>), Error> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let spec: FlowSpec = parsed_architecture(path, &bytes, "flow")?;
    flow_from_bytes(path, &bytes, spec)
}

fn flow_from_bytes<T: Real>(
    path: &Path,
    bytes: &[u8],
    spec: FlowSpec,
) -> Result<(FlowSpec, FlowModel<T>), Error> {
    check_flow_sizes(path, bytes, &spec)?;
    let mut model = spec.build::<T>(0).map_err(|e| ModelFileError::Tensor {
        path: path.to_path_buf(),
        name: "architecture".into(),
        reason: e.to_string(),
    })?;
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| corrupt(path, e))?;
    let values = read_tensor::<T>(path, &tensors, "params", &[model.n_params()])?;
    model.params_mut().copy_from_slice(&values);
    Ok((spec, model))
}

/// A model file of either kind, as [`load_model`] returns it.
#[derive(Debug)]
pub enum Model<T: Real> {
    /// A continuous normalizing flow (a [`save_cnf`] file).
    Cnf(Cnf<T, Mlp<T>>),
    /// A discrete flow and its spec (a [`save_flow`] file).
    Flow(FlowSpec, FlowModel<T>),
}

impl<T: Real> Model<T> {
    /// `cnf` or `flow`.
    pub fn kind(&self) -> &'static str {
        match self {
            Model::Cnf(_) => "cnf",
            Model::Flow(..) => "flow",
        }
    }

    /// The dimension d.
    pub fn dim(&self) -> usize {
        match self {
            Model::Cnf(c) => c.dim(),
            Model::Flow(_, f) => f.dim(),
        }
    }

    /// The log-densities of the points `x` (sample-major), and the solver statistics
    /// (`None` for a discrete flow, which solves no ODE).
    pub fn log_prob(&self, x: &[T]) -> Result<(Vec<T>, Option<Stats>), Error> {
        match self {
            Model::Cnf(c) => c.log_prob(x).map(|(l, s)| (l, Some(s))),
            Model::Flow(_, f) => Ok((f.log_prob(x)?, None)),
        }
    }

    /// Draws `n` points from `rng` (base draws `z ~ N(0, I)`, then the flow), with the
    /// solver statistics (`None` for a discrete flow).
    pub fn sample<R: rand::Rng + ?Sized>(
        &self,
        n: usize,
        rng: &mut R,
    ) -> Result<(Vec<T>, Option<Stats>), Error> {
        match self {
            Model::Cnf(c) => c.sample(n, rng).map(|(x, s)| (x, Some(s))),
            Model::Flow(_, f) => Ok((f.sample(n, rng)?, None)),
        }
    }

    /// Draws `n` points and their log-densities, with the solver statistics (`None` for a
    /// discrete flow).
    pub fn sample_with_log_prob<R: rand::Rng + ?Sized>(
        &self,
        n: usize,
        rng: &mut R,
    ) -> Result<(Vec<T>, Vec<T>, Option<Stats>), Error> {
        match self {
            Model::Cnf(c) => c.sample_with_log_prob(n, rng).map(|(x, l, s)| (x, l, Some(s))),
            Model::Flow(_, f) => f.sample_with_log_prob(n, rng).map(|(x, l)| (x, l, None)),
        }
    }
}

/// Loads a model file of either kind (a CNF from [`save_cnf`] or a discrete flow from
/// [`save_flow`]), by the `model` entry of its metadata (files without one are CNFs).
pub fn load_model<T: Real>(path: impl AsRef<Path>) -> Result<Model<T>, Error> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let (kind, _) = metadata(path, &bytes)?;
    if kind == "flow" {
        let spec: FlowSpec = parsed_architecture(path, &bytes, "flow")?;
        let (spec, model) = flow_from_bytes(path, &bytes, spec)?;
        Ok(Model::Flow(spec, model))
    } else {
        Ok(Model::Cnf(load_cnf(path)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::NpyError;

    /// A file path in a fresh folder of its own; the folder and all in it go when this drops.
    struct TmpPath {
        path: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl std::ops::Deref for TmpPath {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.path
        }
    }

    impl AsRef<Path> for TmpPath {
        fn as_ref(&self) -> &Path {
            &self.path
        }
    }

    fn tmp(name: &str) -> TmpPath {
        // One folder per file: tests run concurrently in one process.
        let dir = tempfile::Builder::new().prefix("odeflow-model-").tempdir().unwrap();
        TmpPath { path: dir.path().join(name), _dir: dir }
    }

    fn model(time: TimeConditioning) -> Cnf<f64, Mlp<f64>> {
        let cfg = MlpConfig {
            dim: 2,
            hidden: vec![8, 8],
            time,
            activation: Activation::Softplus,
            seed: 3,
            ..Default::default()
        };
        let blocks = (0..2)
            .map(|k| CnfBlock {
                field: Mlp::new(&MlpConfig { seed: k, ..cfg.clone() }).unwrap(),
                t_end: 0.3 + k as f64,
            })
            .collect();
        let config = CnfConfig {
            rtol: 1e-6,
            atol: 1e-7,
            trace: TraceEstimator::Hutchinson(Noise::Rademacher),
            ..Default::default()
        };
        Cnf::chain(blocks, config).unwrap()
    }

    #[test]
    fn save_and_load_give_identical_log_densities() {
        for time in
            [TimeConditioning::ConcatSquash, TimeConditioning::Concat, TimeConditioning::Ignore]
        {
            let cnf = model(time);
            let path = tmp(&format!("m-{}.safetensors", time_name(time)));
            save_cnf(&path, &cnf).unwrap();
            let loaded: Cnf<f64, Mlp<f64>> = load_cnf(&path).unwrap();
            assert_eq!(loaded.blocks().len(), 2);
            assert_eq!(loaded.config(), cnf.config());
            for (a, b) in loaded.blocks().iter().zip(cnf.blocks()) {
                assert_eq!(a.field.params(), b.field.params());
                assert!((a.t_end - b.t_end).abs() < 1e-15);
            }
            let x = [0.3, -0.4, 1.2, 0.8];
            assert_eq!(loaded.log_prob(&x).unwrap().0, cnf.log_prob(&x).unwrap().0);
            // An f64 file loads in f32 too.
            let l32: Cnf<f32, Mlp<f32>> = load_cnf(&path).unwrap();
            assert_eq!(
                l32.blocks()[1].field.params()[0].to_bits(),
                (cnf.blocks()[1].field.params()[0] as f32).to_bits()
            );
        }
        // Unless its rtol asks for more than f32's precision: then the loader says so.
        let mut cnf = model(TimeConditioning::ConcatSquash);
        cnf.set_config(CnfConfig { rtol: 1e-7, ..cnf.config().clone() }).unwrap();
        let path = tmp("m-rtol-1e-7.safetensors");
        save_cnf(&path, &cnf).unwrap();
        let err = load_cnf::<f32>(&path).map(|_| ()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Solve {
                    source: crate::solvers::SolveError::ToleranceBelowPrecision {
                        scalar: "f32",
                        ..
                    },
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// The step rules travel with the model: `peers` saved, `peers` loaded; a file without
    /// the field (older format) loads with `hairer`.
    #[test]
    fn step_rules_are_saved_and_loaded() {
        let mut cnf = model(TimeConditioning::ConcatSquash);
        let mut cfg = cnf.config().clone();
        Steps::Peers.apply(&mut cfg);
        cnf.set_config(cfg).unwrap();
        let path = tmp("peers.safetensors");
        save_cnf(&path, &cnf).unwrap();
        let loaded: Cnf<f64, Mlp<f64>> = load_cnf(&path).unwrap();
        assert_eq!(loaded.config(), cnf.config());
        assert_eq!(Steps::of(loaded.config()), Some(Steps::Peers));
        let old: Architecture = serde_json::from_str(
            r#"{"dim": 2, "hidden": [8], "activation": "tanh", "time": "concatsquash",
                "blocks": 1, "method": "dopri5", "rtol": 1e-5, "atol": 1e-5, "trace": "exact"}"#,
        )
        .unwrap();
        assert_eq!(old.steps, Steps::Hairer);
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let cnf = model(TimeConditioning::ConcatSquash);
        let path = tmp("good.safetensors");
        save_cnf(&path, &cnf).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let truncated = tmp("truncated.safetensors");
        std::fs::write(&truncated, &bytes[..bytes.len() - 16]).unwrap();
        assert!(matches!(
            load_cnf::<f64>(&truncated),
            Err(Error::ModelFile(ModelFileError::Corrupt { .. }))
        ));
        let garbage = tmp("garbage.safetensors");
        std::fs::write(&garbage, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}").unwrap();
        assert!(matches!(
            load_cnf::<f64>(&garbage),
            Err(Error::ModelFile(ModelFileError::Corrupt { .. }))
        ));
        // A valid safetensors file without odeflow metadata.
        let data = 1.0f64.to_le_bytes();
        let foreign_bytes = safetensors::serialize(
            [("w", TensorView::new(Dtype::F64, vec![1], &data).unwrap())],
            None,
        )
        .unwrap();
        let foreign = tmp("foreign.safetensors");
        std::fs::write(&foreign, foreign_bytes).unwrap();
        let err = load_cnf::<f64>(&foreign).unwrap_err();
        assert!(matches!(err, Error::ModelFile(ModelFileError::Foreign { .. })), "{err}");
        assert!(matches!(
            load_cnf::<f64>(tmp("missing.safetensors")),
            Err(Error::Npy(NpyError::Io { .. }))
        ));
        // Saving over an existing file replaces it whole (no temporary files left).
        save_cnf(&path, &cnf).unwrap();
        let leftovers = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp"))
            .count();
        assert_eq!(leftovers, 0);
    }

    fn trained_flow(kind: crate::flows::FlowKind) -> (FlowSpec, FlowModel<f64>) {
        let spec = FlowSpec::new(kind, 2, 3, vec![8, 8]);
        let mut model = spec.build::<f64>(4).unwrap();
        // Non-trivial weights (the conditioners' last layers start at zero).
        for (i, p) in model.params_mut().iter_mut().enumerate() {
            *p = 0.2 * ((i as f64) * 0.37).sin();
        }
        (spec, model)
    }

    /// The same model gives the same bytes, whatever order the hash map of safetensors'
    /// metadata takes (it changes from map to map, so ten saves would differ without the
    /// sorted header); the header is sorted, padded to 8 bytes, and loads back.
    #[test]
    fn the_same_model_saves_to_the_same_bytes() {
        let cnf = model(TimeConditioning::ConcatSquash);
        let (spec, flow) = trained_flow(crate::flows::FlowKind::RealNvp);
        let (a, b) = (tmp("a.safetensors"), tmp("b.safetensors"));
        save_cnf(&a, &cnf).unwrap();
        save_flow(&b, &spec, &flow).unwrap();
        let (first_cnf, first_flow) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        for _ in 0..10 {
            save_cnf(&a, &cnf).unwrap();
            save_flow(&b, &spec, &flow).unwrap();
            assert!(std::fs::read(&a).unwrap() == first_cnf);
            assert!(std::fs::read(&b).unwrap() == first_flow);
        }
        let n = u64::from_le_bytes(first_cnf[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header = std::str::from_utf8(&first_cnf[8..8 + n]).unwrap();
        let meta = header.find("\"__metadata__\"").unwrap();
        let keys: Vec<usize> = ["architecture", "format", "format_version", "model"]
            .iter()
            .map(|k| meta + header[meta..].find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{header}");
        let loaded: Cnf<f64, Mlp<f64>> = load_cnf(&a).unwrap();
        assert_eq!(loaded.config(), cnf.config());
        // A training point rides along in the metadata, and only where it is given.
        assert_eq!(read_training_point(&a).unwrap(), None);
        let at = TrainingPoint { iteration: 35, test_nll: 3.1950851912698 };
        save_cnf_at(&a, &cnf, at).unwrap();
        save_flow_at(&b, &spec, &flow, at).unwrap();
        assert_eq!(read_training_point(&a).unwrap(), Some(at));
        assert_eq!(read_training_point(&b).unwrap(), Some(at));
        assert_eq!(load_flow::<f64>(&b).unwrap().1.params(), flow.params());
    }

    #[test]
    fn flow_round_trip_gives_identical_log_densities() {
        use crate::flows::FlowKind;
        let x = [0.3, -0.4, 1.2, 0.8, -2.0, 0.1];
        for kind in FlowKind::ALL {
            let (spec, model) = trained_flow(kind);
            let path = tmp(&format!("flow-{kind}.safetensors"));
            save_flow(&path, &spec, &model).unwrap();
            let (spec2, loaded) = load_flow::<f64>(&path).unwrap();
            assert_eq!(spec2, spec);
            assert_eq!(loaded.params(), model.params(), "{kind}");
            let (a, b) = (loaded.log_prob(&x).unwrap(), model.log_prob(&x).unwrap());
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{kind}"
            );
            match load_model::<f64>(&path).unwrap() {
                Model::Flow(s, m) => {
                    assert_eq!(s, spec);
                    assert_eq!(m.params(), model.params());
                }
                Model::Cnf(_) => panic!("a flow file loaded as a CNF"),
            }
            // An f64 file loads in f32 too.
            let (_, l32) = load_flow::<f32>(&path).unwrap();
            assert_eq!(l32.params()[1].to_bits(), (model.params()[1] as f32).to_bits());
        }
        // A hybrid whose CNF block is not the default: its settings survive the file.
        let mut spec = FlowSpec::new(crate::flows::FlowKind::RealNvpCnf, 2, 2, vec![8]);
        spec.cnf = Some(crate::flows::CnfBlockSpec {
            hidden: vec![5],
            activation: Activation::Softplus,
            time: TimeConditioning::Concat,
            blocks: 2,
            t_end: 0.3,
            train_t: true,
            method: crate::solvers::Method::Tsit5,
            rtol: 1e-7,
            atol: 1e-8,
            adjoint: crate::adjoint::Strategy::Discrete,
            adjoint_rtol: Some(1e-9),
            adjoint_atol: Some(1e-10),
            steps: Steps::Peers,
            adjoint_method: Some(crate::solvers::Method::Dopri5),
            seminorm: true,
            forward_seminorm: true,
        });
        let mut model = spec.build::<f64>(9).unwrap();
        for (i, p) in model.params_mut().iter_mut().enumerate() {
            *p += 0.1 * ((i as f64) * 0.91).cos();
        }
        let path = tmp("flow-hybrid-custom.safetensors");
        save_flow(&path, &spec, &model).unwrap();
        let (spec2, loaded) = load_flow::<f64>(&path).unwrap();
        assert_eq!(spec2, spec);
        assert_eq!(loaded.log_prob(&x).unwrap(), model.log_prob(&x).unwrap());
    }

    #[test]
    fn kind_mismatch_and_bad_flow_files_give_clear_errors() {
        let (spec, model) = trained_flow(crate::flows::FlowKind::RealNvp);
        let flow_path = tmp("kind-flow.safetensors");
        save_flow(&flow_path, &spec, &model).unwrap();
        let cnf_path = tmp("kind-cnf.safetensors");
        save_cnf(&cnf_path, &self::model(TimeConditioning::ConcatSquash)).unwrap();
        let err = load_cnf::<f64>(&flow_path).unwrap_err();
        assert!(matches!(err, Error::ModelFile(ModelFileError::Kind { .. })), "{err}");
        assert!(err.to_string().contains("a flow model file, expected a cnf"), "{err}");
        let err = load_flow::<f64>(&cnf_path).unwrap_err();
        assert!(err.to_string().contains("a cnf model file, expected a flow"), "{err}");
        assert!(matches!(load_model::<f64>(&cnf_path).unwrap(), Model::Cnf(_)));
        // A spec that does not match the model is refused at saving.
        let other = FlowSpec::new(crate::flows::FlowKind::RealNvp, 2, 2, vec![8, 8]);
        assert!(save_flow(tmp("mismatch.safetensors"), &other, &model).is_err());
        // Truncated: corrupt.
        let bytes = std::fs::read(&flow_path).unwrap();
        let truncated = tmp("flow-truncated.safetensors");
        std::fs::write(&truncated, &bytes[..bytes.len() - 8]).unwrap();
        assert!(matches!(
            load_flow::<f64>(&truncated),
            Err(Error::ModelFile(ModelFileError::Corrupt { .. }))
        ));
        // A params tensor of the wrong length for the architecture: shorter than the
        // architecture needs is refused before building, naming the field (a width the
        // file cannot back on its own) or the sizes (the whole count); longer, when read.
        let meta = HashMap::from([
            ("format".to_string(), "odeflow".to_string()),
            ("format_version".to_string(), "1".to_string()),
            ("model".to_string(), "flow".to_string()),
            ("architecture".to_string(), serde_json::to_string(&spec).unwrap()),
        ]);
        let n = model.n_params();
        for len in [3, n - 1, n + 1] {
            let zeros = vec![0u8; 8 * len];
            let wrong = safetensors::serialize(
                [("params", TensorView::new(Dtype::F64, vec![len], &zeros).unwrap())],
                Some(meta.clone()),
            )
            .unwrap();
            let wrong_path = tmp(&format!("flow-wrong-{len}.safetensors"));
            std::fs::write(&wrong_path, wrong).unwrap();
            let err = load_flow::<f64>(&wrong_path).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&format!("flow-wrong-{len}.safetensors")), "{msg}");
            match (len, err) {
                (3, Error::ModelFile(ModelFileError::ArchitectureTooLarge { field, .. })) => {
                    assert_eq!(field, "hidden[0]", "{msg}")
                }
                (
                    l,
                    Error::ModelFile(ModelFileError::ArchitectureTooLarge {
                        field,
                        needed,
                        stored,
                        ..
                    }),
                ) if l == n - 1 => {
                    assert_eq!(
                        (field.as_str(), needed, stored),
                        ("dim, layers, hidden", Some(n), l)
                    )
                }
                (l, Error::ModelFile(ModelFileError::Tensor { name, .. })) if l == n + 1 => {
                    assert_eq!(name, "params", "{msg}")
                }
                (l, e) => panic!("length {l}: {e}"),
            }
        }
    }

    #[test]
    fn cnf_files_without_a_model_entry_still_load_as_cnfs() {
        let cnf = model(TimeConditioning::ConcatSquash);
        let path = tmp("old-cnf.safetensors");
        save_cnf(&path, &cnf).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut info = meta.metadata().clone().unwrap();
        assert_eq!(info.remove("model").as_deref(), Some("cnf"));
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let views: Vec<(String, TensorView<'_>)> = st.tensors();
        let old = safetensors::serialize(views, Some(info)).unwrap();
        std::fs::write(&path, old).unwrap();
        let x = [0.3, -0.4];
        assert_eq!(
            load_cnf::<f64>(&path).unwrap().log_prob(&x).unwrap().0,
            cnf.log_prob(&x).unwrap().0
        );
        assert!(matches!(load_model::<f64>(&path).unwrap(), Model::Cnf(_)));
        assert!(matches!(
            load_flow::<f64>(&path),
            Err(Error::ModelFile(ModelFileError::Kind { .. }))
        ));
    }

    /// The size formulas the loader checks files against are the built models' counts,
    /// for every kind, so a valid file is never refused (and the bound is tight).
    #[test]
    fn size_formulas_match_the_built_models() {
        use crate::flows::{CnfBlockSpec, FlowKind};
        for time in
            [TimeConditioning::ConcatSquash, TimeConditioning::Concat, TimeConditioning::Ignore]
        {
            for (dim, hidden) in [(1, vec![]), (2, vec![8]), (3, vec![5, 7, 2])] {
                let cfg = MlpConfig { dim, hidden: hidden.clone(), time, ..Default::default() };
                let n = Mlp::<f64>::new(&cfg).unwrap().params().len();
                assert_eq!(cfg.checked_n_params(), Some(n), "{time:?} {dim} {hidden:?}");
            }
        }
        let mut checked = 0;
        for kind in FlowKind::ALL {
            for dim in [1, 2, 3, 5] {
                for layers in [1, 2, 3] {
                    for hidden in [vec![], vec![4], vec![8, 3]] {
                        let mut spec = FlowSpec::new(kind, dim, layers, hidden);
                        let mut variants = vec![spec.clone()];
                        if kind == FlowKind::Nsf {
                            spec.bins = 2;
                            variants.push(spec.clone());
                        }
                        if kind == FlowKind::RealNvpCnf {
                            spec.cnf = Some(CnfBlockSpec {
                                hidden: vec![6, 3],
                                time: TimeConditioning::Concat,
                                blocks: 2,
                                train_t: true,
                                ..Default::default()
                            });
                            variants.push(spec.clone());
                            spec.cnf = None;
                            variants.push(spec.clone());
                        }
                        for spec in variants {
                            let Ok(model) = spec.build::<f64>(0) else { continue };
                            assert_eq!(spec.checked_n_params(), Some(model.n_params()), "{spec:?}");
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 100, "{checked} specs built");
        // Sizes whose count overflows give None, not a wrapped count.
        let huge = usize::MAX / 2;
        let mlp = MlpConfig {
            dim: 2,
            hidden: vec![huge, 3],
            time: TimeConditioning::Ignore,
            ..Default::default()
        };
        assert_eq!(mlp.checked_n_params(), None);
        assert_eq!(FlowSpec::new(FlowKind::Glow, huge, 1, vec![]).checked_n_params(), None);
        assert_eq!(FlowSpec::new(FlowKind::Maf, 4, huge, vec![huge]).checked_n_params(), None);
    }

    /// Writes `src`'s tensors to a new file `name` with the architecture JSON changed by
    /// `edit`; returns its path.
    fn with_architecture(
        src: &Path,
        name: &str,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> TmpPath {
        let bytes = std::fs::read(src).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut info = meta.metadata().clone().unwrap();
        let mut arch: serde_json::Value = serde_json::from_str(&info["architecture"]).unwrap();
        edit(&mut arch);
        info.insert("architecture".into(), arch.to_string());
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let out = safetensors::serialize(st.tensors(), Some(info)).unwrap();
        let path = tmp(name);
        std::fs::write(&path, out).unwrap();
        path
    }

    /// Loads `path` (as either kind) and checks it is refused at once as too large, naming
    /// the file and `field`.
    fn assert_refused(path: &Path, field: &str) {
        let start = std::time::Instant::now();
        let err = load_model::<f64>(path).map(|m| m.kind()).unwrap_err();
        let msg = err.to_string();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(msg.contains(&name) && msg.contains(&format!("`{field}`")), "{msg}");
        match err {
            Error::ModelFile(ModelFileError::ArchitectureTooLarge { field: f, stored, .. }) => {
                assert_eq!(f, field, "{msg}");
                assert!(stored > 0 && stored < 100_000, "{msg}");
            }
            e => panic!("{name}: {e}"),
        }
        // Nothing was built: a check of the header's numbers only.
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{name}: {:?}",
            start.elapsed()
        );
    }

    /// An architecture edited to absurd sizes is refused, naming the file and the field,
    /// before anything of that size is allocated or looped over (the old loader aborted on
    /// the allocation, looped for hours, or was killed for memory).
    #[test]
    fn absurd_sizes_in_the_architecture_are_refused_before_building() {
        use crate::flows::FlowKind;
        use serde_json::json;
        let big = json!(1_000_000_000_000u64);
        let cnf = tmp("absurd-cnf.safetensors");
        save_cnf(&cnf, &model(TimeConditioning::ConcatSquash)).unwrap();
        let p = with_architecture(&cnf, "cnf-hidden.safetensors", |a| {
            a["hidden"] = json!([100_000_000_000u64])
        });
        assert_refused(&p, "hidden[0]");
        assert!(matches!(
            load_cnf::<f64>(&p),
            Err(Error::ModelFile(ModelFileError::ArchitectureTooLarge { .. }))
        ));
        let p = with_architecture(&cnf, "cnf-blocks.safetensors", |a| a["blocks"] = big.clone());
        assert_refused(&p, "blocks");
        let p = with_architecture(&cnf, "cnf-dim.safetensors", |a| a["dim"] = big.clone());
        assert_refused(&p, "dim");
        // Each size backed on its own, their product not.
        let p = with_architecture(&cnf, "cnf-wide.safetensors", |a| a["hidden"] = json!([90, 90]));
        assert_refused(&p, "dim, hidden, time, blocks");

        let (spec, flow) = trained_flow(FlowKind::RealNvp);
        let realnvp = tmp("absurd-realnvp.safetensors");
        save_flow(&realnvp, &spec, &flow).unwrap();
        let p = with_architecture(&realnvp, "flow-dim.safetensors", |a| a["dim"] = big.clone());
        assert_refused(&p, "dim");
        let p = with_architecture(&realnvp, "flow-hidden.safetensors", |a| {
            a["hidden"] = json!([100_000_000_000u64])
        });
        assert_refused(&p, "hidden[0]");
        let p =
            with_architecture(&realnvp, "flow-layers.safetensors", |a| a["layers"] = big.clone());
        assert_refused(&p, "layers");
        let p = with_architecture(&realnvp, "flow-many.safetensors", |a| a["layers"] = json!(50));
        assert_refused(&p, "dim, layers, hidden");
        let (spec, flow) = trained_flow(FlowKind::Nsf);
        let nsf = tmp("absurd-nsf.safetensors");
        save_flow(&nsf, &spec, &flow).unwrap();
        let p = with_architecture(&nsf, "nsf-bins.safetensors", |a| a["bins"] = big.clone());
        assert_refused(&p, "bins");

        let mut spec = FlowSpec::new(FlowKind::RealNvpCnf, 2, 2, vec![8, 8]);
        spec.cnf.as_mut().unwrap().hidden = vec![8, 8];
        let hybrid_model = spec.build::<f64>(1).unwrap();
        let hybrid = tmp("absurd-hybrid.safetensors");
        save_flow(&hybrid, &spec, &hybrid_model).unwrap();
        let p = with_architecture(&hybrid, "hybrid-blocks.safetensors", |a| {
            a["cnf"]["blocks"] = big.clone()
        });
        assert_refused(&p, "cnf.blocks");
        let p =
            with_architecture(&hybrid, "hybrid-layers.safetensors", |a| a["layers"] = big.clone());
        assert_refused(&p, "layers");
        let p = with_architecture(&hybrid, "hybrid-cnf-hidden.safetensors", |a| {
            a["cnf"]["hidden"] = json!([8, 100_000_000_000u64])
        });
        assert_refused(&p, "cnf.hidden[1]");

        // Fields a kind does not use are not checked: a planar file with an absurd (unused)
        // conditioner width, or a non-hybrid flow with a stray `cnf`, still loads.
        let (spec, flow) = trained_flow(FlowKind::Planar);
        let planar = tmp("absurd-planar.safetensors");
        save_flow(&planar, &spec, &flow).unwrap();
        let p = with_architecture(&planar, "planar-hidden.safetensors", |a| {
            a["hidden"] = json!([100_000_000_000u64])
        });
        assert_eq!(load_flow::<f64>(&p).unwrap().1.params(), flow.params());
        let p = with_architecture(&realnvp, "realnvp-cnf.safetensors", |a| {
            a["cnf"] = json!({"blocks": 1_000_000_000_000u64})
        });
        assert!(load_flow::<f64>(&p).is_ok());
    }

    /// The size check counts what backs parameters and no more than the architecture
    /// needs: an F32 file loads, and so does a PyTorch `state_dict` with tensors of its
    /// own (buffers such as FFJORD's `_num_evals`, of any type).
    #[test]
    fn f32_files_and_extra_tensors_pass_the_size_check() {
        let cfg = MlpConfig { dim: 2, hidden: vec![8], seed: 1, ..Default::default() };
        let cnf32 = Cnf::new(Mlp::<f32>::new(&cfg).unwrap(), 0.5, CnfConfig::default()).unwrap();
        let path = tmp("f32.safetensors");
        save_cnf(&path, &cnf32).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(stored_values(&path, &bytes).unwrap(), cnf32.blocks()[0].field.n_params() + 1);
        let loaded: Cnf<f32, Mlp<f32>> = load_cnf(&path).unwrap();
        assert_eq!(loaded.blocks()[0].field.params(), cnf32.blocks()[0].field.params());

        let cnf = model(TimeConditioning::Concat);
        save_cnf(&path, &cnf).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut views = st.tensors();
        let (one, count) = (1.0f32.to_le_bytes(), 7i64.to_le_bytes());
        views.push((
            "chain.0.odefunc._num_evals".into(),
            TensorView::new(Dtype::F32, vec![], &one).unwrap(),
        ));
        views.push(("steps".into(), TensorView::new(Dtype::I64, vec![1], &count).unwrap()));
        let extra = tmp("extra.safetensors");
        std::fs::write(&extra, safetensors::serialize(views, meta.metadata().clone()).unwrap())
            .unwrap();
        let loaded: Cnf<f64, Mlp<f64>> = load_cnf(&extra).unwrap();
        let x = [0.3, -0.4];
        assert_eq!(loaded.log_prob(&x).unwrap().0, cnf.log_prob(&x).unwrap().0);
    }
}
