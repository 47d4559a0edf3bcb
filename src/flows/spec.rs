//! A serialisable description of a flow architecture ([`FlowSpec`]), from which
//! [`FlowSpec::build`] makes the [`FlowModel`]. The command line (`odeflow train --flow`)
//! and the flow model files (`odeflow::io::model::save_flow`) both use it.

use serde::{Deserialize, Serialize};

use super::{
    CnfFlow, Coupling, CouplingKind, Flow, FlowModel, Iaf, LuAffine, Maf, Permutation, Planar,
    Radial, RqShape,
};
use crate::adjoint::{AdjointConfig, Strategy};
use crate::cnf::{Cnf, CnfBlock, CnfConfig, Steps};
use crate::field::checked_net_params;
use crate::field::{Activation, Mlp, MlpConfig, TimeConditioning};
use crate::solvers::Method;
use crate::{Error, Real};

/// The family of a [`FlowSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowKind {
    /// RealNVP: affine couplings ([`CouplingKind::Affine`]) alternating the conditioning half.
    RealNvp,
    /// NICE: additive couplings ([`CouplingKind::Additive`]) alternating the conditioning
    /// half (volume-preserving: NICE without its final scaling layer).
    Nice,
    /// MAF: masked autoregressive layers ([`Maf`]) with a reversal between consecutive
    /// layers.
    Maf,
    /// NSF: rational-quadratic spline couplings ([`CouplingKind::RationalQuadratic`])
    /// alternating the conditioning half (Neural Spline Flows, coupling variant).
    Nsf,
    /// IAF: inverse autoregressive layers ([`Iaf`], affine) with a reversal between
    /// consecutive layers: one-pass sampling, a d-pass density.
    Iaf,
    /// Glow-style steps: a learned LU-parametrised 1×1 mixing ([`LuAffine::glow`], its
    /// fixed permutation seeded by the step's index) followed by an affine coupling.
    Glow,
    /// Planar flows ([`Planar`]); `hidden` is not used.
    Planar,
    /// Radial flows ([`Radial`]); `hidden` is not used.
    Radial,
    /// RealNVP couplings followed, at the data end, by one trainable CNF ([`CnfFlow`] of
    /// FFJORD MLP blocks, set by [`FlowSpec::cnf`]): `x = φ_CNF(couplings(z))`.
    #[serde(rename = "realnvp+cnf")]
    RealNvpCnf,
}

impl FlowKind {
    /// Every kind, in the order of the command line's help.
    pub const ALL: [FlowKind; 9] = [
        FlowKind::RealNvp,
        FlowKind::Nice,
        FlowKind::Maf,
        FlowKind::Nsf,
        FlowKind::Iaf,
        FlowKind::Glow,
        FlowKind::Planar,
        FlowKind::Radial,
        FlowKind::RealNvpCnf,
    ];

    /// The name used on the command line and in model files (`realnvp`, `nice`, `maf`,
    /// `nsf`, `iaf`, `glow`, `planar`, `radial`, `realnvp+cnf`).
    pub fn name(self) -> &'static str {
        match self {
            FlowKind::RealNvp => "realnvp",
            FlowKind::Nice => "nice",
            FlowKind::Maf => "maf",
            FlowKind::Nsf => "nsf",
            FlowKind::Iaf => "iaf",
            FlowKind::Glow => "glow",
            FlowKind::Planar => "planar",
            FlowKind::Radial => "radial",
            FlowKind::RealNvpCnf => "realnvp+cnf",
        }
    }

    /// Whether the kind is built of couplings (which need d ≥ 2).
    fn coupled(self) -> bool {
        matches!(
            self,
            FlowKind::RealNvp
                | FlowKind::Nice
                | FlowKind::Nsf
                | FlowKind::Glow
                | FlowKind::RealNvpCnf
        )
    }

    /// Whether the kind has a bounded log-scale (`scale_bound`).
    fn bounded(self) -> bool {
        matches!(
            self,
            FlowKind::RealNvp
                | FlowKind::Maf
                | FlowKind::Iaf
                | FlowKind::Glow
                | FlowKind::RealNvpCnf
        )
    }
}

impl std::fmt::Display for FlowKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FlowKind {
    type Err = String;
    /// Parses a [`FlowKind::name`]; the error lists the known names.
    fn from_str(s: &str) -> Result<Self, String> {
        FlowKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = FlowKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown flow {s:?} (one of {})", names.join(", "))
        })
    }
}

fn default_scale_bound() -> f64 {
    3.0
}
fn default_bins() -> usize {
    8
}
fn default_bound() -> f64 {
    4.0
}

/// The solver method as its name (`dopri5`, …) in JSON.
mod method_name {
    use crate::solvers::Method;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &Method, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(m.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Method, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// An optional solver method as its name in JSON (`None`: the field is left out).
mod method_name_opt {
    use crate::solvers::Method;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &Option<Method>, s: S) -> Result<S::Ok, S::Error> {
        match m {
            Some(m) => super::method_name::serialize(m, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Method>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(name) => name.parse().map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The CNF part of a [`FlowKind::RealNvpCnf`] spec: one [`CnfFlow`] of `blocks` FFJORD MLP
/// blocks with the exact trace. Every field has a default (serde fills missing ones), so
/// `{}` is FFJORD's toy CNF. JSON:
///
/// ```json
/// {"hidden": [64, 64, 64], "activation": "tanh", "time": "concatsquash", "blocks": 1,
///  "t_end": 0.5, "train_t": false, "method": "dopri5", "rtol": 1e-5, "atol": 1e-5,
///  "adjoint": "checkpointed", "steps": "hairer"}
/// ```
///
/// The adjoint's optional settings appear only when set: `"adjoint_rtol"`, `"adjoint_atol"`,
/// `"adjoint_method"` (a method name), `"seminorm": true`, `"forward_seminorm": true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CnfBlockSpec {
    /// Hidden widths of each block's MLP (default `[64, 64, 64]`, each ≥ 1).
    pub hidden: Vec<usize>,
    /// The MLP's activation (default tanh).
    pub activation: Activation,
    /// The MLP's time conditioning (default concatsquash).
    pub time: TimeConditioning,
    /// Number of chained CNF blocks (default 1, ≥ 1).
    pub blocks: usize,
    /// Initial integration time T of each block (default 0.5, finite and > 0).
    pub t_end: f64,
    /// Learn the times (as `ln T` in θ; default `false`).
    pub train_t: bool,
    /// The solver method (default dopri5; a fixed-step method is refused, having no step
    /// size here).
    #[serde(with = "method_name")]
    pub method: Method,
    /// Relative tolerance of the solves (default 1e-5, > 0).
    pub rtol: f64,
    /// Absolute tolerance of the solves (default 1e-5, > 0).
    pub atol: f64,
    /// The gradient's strategy (default checkpointed).
    pub adjoint: Strategy,
    /// Relative tolerance of the adjoint's backward solve (default `None`: `rtol`; > 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjoint_rtol: Option<f64>,
    /// Absolute tolerance of the adjoint's backward solve (default `None`: `atol`; > 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjoint_atol: Option<f64>,
    /// The step-size rules of the solves (default `hairer`; see [`Steps`]).
    pub steps: Steps,
    /// The adjoint's backward method ([`AdjointConfig::method`]; default `None`: `method`;
    /// a fixed-step method is refused, as for `method`). Not used by the discrete strategy.
    #[serde(skip_serializing_if = "Option::is_none", with = "method_name_opt")]
    pub adjoint_method: Option<Method>,
    /// Leave the parameter cotangent out of the backward error norm
    /// ([`AdjointConfig::seminorm`]; default `false`).
    #[serde(skip_serializing_if = "is_false")]
    pub seminorm: bool,
    /// Leave ℓ out of the forward solve's error norm ([`AdjointConfig::forward_seminorm`];
    /// default `false`).
    #[serde(skip_serializing_if = "is_false")]
    pub forward_seminorm: bool,
}

impl Default for CnfBlockSpec {
    fn default() -> Self {
        CnfBlockSpec {
            hidden: vec![64, 64, 64],
            activation: Activation::Tanh,
            time: TimeConditioning::ConcatSquash,
            blocks: 1,
            t_end: 0.5,
            train_t: false,
            method: Method::Dopri5,
            rtol: 1e-5,
            atol: 1e-5,
            adjoint: Strategy::Checkpointed,
            adjoint_rtol: None,
            adjoint_atol: None,
            steps: Steps::Hairer,
            adjoint_method: None,
            seminorm: false,
            forward_seminorm: false,
        }
    }
}

impl CnfBlockSpec {
    /// The layer, its MLP block `k` seeded with `seed + k` (PyTorch's initialisation).
    pub fn build<T: Real>(&self, dim: usize, seed: u64) -> Result<CnfFlow<T, Mlp<T>>, Error> {
        if self.blocks == 0 {
            return Err(Error::InvalidConfig { name: "cnf blocks", value: 0.0, expected: "≥ 1" });
        }
        let blocks = (0..self.blocks)
            .map(|k| {
                let cfg = MlpConfig {
                    dim,
                    hidden: self.hidden.clone(),
                    activation: self.activation,
                    time: self.time,
                    seed: seed.wrapping_add(k as u64),
                    ..Default::default()
                };
                Ok(CnfBlock { field: Mlp::new(&cfg)?, t_end: T::from_f64c(self.t_end) })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let mut config = CnfConfig {
            method: self.method,
            rtol: T::from_f64c(self.rtol),
            atol: T::from_f64c(self.atol),
            ..Default::default()
        };
        self.steps.apply(&mut config);
        let mut adjoint = AdjointConfig::with_strategy(self.adjoint).with_backward_tolerances(
            &config,
            self.adjoint_rtol.map(T::from_f64c),
            self.adjoint_atol.map(T::from_f64c),
        );
        adjoint.method = self.adjoint_method;
        adjoint.seminorm = self.seminorm;
        adjoint.forward_seminorm = self.forward_seminorm;
        adjoint.validate()?;
        adjoint.check_backward_step_size(config.method, &config.solve_options())?;
        Ok(CnfFlow::new(Cnf::chain(blocks, config)?)?
            .with_learned_time(self.train_t)
            .with_adjoint(adjoint))
    }
}

/// A flow architecture: enough to rebuild the layers of a [`FlowModel`] (its parameters
/// are stored separately). Serialises to JSON as, e.g.,
///
/// ```json
/// {"kind": "realnvp", "dim": 2, "layers": 8, "hidden": [64, 64],
///  "scale_bound": 3.0, "bins": 8, "bound": 4.0}
/// ```
///
/// and a hybrid as `{"kind": "realnvp+cnf", …, "cnf": {…}}` (see [`CnfBlockSpec`]).
///
/// ```
/// use odeflow::flows::{FlowKind, FlowSpec};
///
/// let spec = FlowSpec::new(FlowKind::Maf, 2, 3, vec![16, 16]);
/// let a = spec.build::<f64>(5)?;
/// let b = spec.build::<f64>(5)?;
/// assert_eq!(a.params(), b.params()); // same spec and seed, same initial θ
/// assert_eq!(a.dim(), 2);
/// # Ok::<(), odeflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowSpec {
    /// The family.
    pub kind: FlowKind,
    /// Dimension d of a point (≥ 2 for the coupling kinds, ≥ 1 for the others).
    pub dim: usize,
    /// Number of flow layers (couplings, MAF or IAF layers, Glow steps, planar or radial
    /// maps; permutations and the CNF block not counted), ≥ 1.
    pub layers: usize,
    /// Hidden widths of each layer's conditioner network (not used by planar and radial).
    pub hidden: Vec<usize>,
    /// Bound a of the log-scale, |s| < a (RealNVP, MAF, IAF, Glow, the hybrid's couplings;
    /// default 3).
    #[serde(default = "default_scale_bound")]
    pub scale_bound: f64,
    /// Spline bins K (NSF; default 8).
    #[serde(default = "default_bins")]
    pub bins: usize,
    /// Spline half-width B (NSF: identity outside `[−B, B]`; default 4).
    #[serde(default = "default_bound")]
    pub bound: f64,
    /// The CNF block of [`FlowKind::RealNvpCnf`] (`None` for the other kinds; for the
    /// hybrid, `None` means [`CnfBlockSpec::default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<CnfBlockSpec>,
}

impl FlowSpec {
    /// A spec with the default scale bound (3) and spline shape (8 bins on `[−4, 4]`), and
    /// for [`FlowKind::RealNvpCnf`] the default CNF block ([`CnfBlockSpec::default`]).
    pub fn new(kind: FlowKind, dim: usize, layers: usize, hidden: Vec<usize>) -> Self {
        FlowSpec {
            kind,
            dim,
            layers,
            hidden,
            scale_bound: default_scale_bound(),
            bins: default_bins(),
            bound: default_bound(),
            cnf: (kind == FlowKind::RealNvpCnf).then(CnfBlockSpec::default),
        }
    }

    /// The number of parameters of the model this spec builds, in checked arithmetic and
    /// without building it (`None` if it overflows `usize`): the layouts of the layers in
    /// this module (conditioners `[n_in, hidden…, n_out]` with a weight matrix and a bias
    /// per layer, Glow's `d²` LU values, planar `2d + 1`, radial `d + 2`, a hybrid's CNF
    /// blocks and learned times; permutations have none). Model files check their
    /// architecture with it before anything of its size is allocated.
    pub fn checked_n_params(&self) -> Option<usize> {
        let mut n = self.layer_n_params()?.checked_mul(self.layers)?;
        if self.kind == FlowKind::RealNvpCnf {
            let cnf = self.cnf.clone().unwrap_or_default();
            n =
                n.checked_add(Self::cnf_block_n_params(self.dim, &cnf)?.checked_mul(cnf.blocks)?)?;
        }
        Some(n)
    }

    /// The parameters of one layer (a coupling, MAF or IAF layer, Glow step, planar or
    /// radial map), `None` on overflow.
    fn layer_n_params(&self) -> Option<usize> {
        let d = self.dim;
        // A coupling layer with k conditioner outputs per transformed coordinate: it
        // conditions on ⌊d/2⌋ coordinates and transforms the other d − ⌊d/2⌋ (at either
        // end, by the layer's parity: the same count).
        let coupling = |k: usize| {
            let m = d / 2;
            checked_net_params(m, &self.hidden, k.checked_mul(d - m)?, 1)
        };
        match self.kind {
            FlowKind::RealNvp | FlowKind::RealNvpCnf => coupling(2),
            FlowKind::Nice => coupling(1),
            FlowKind::Nsf => coupling(self.bins.checked_mul(3)?.saturating_sub(1)),
            FlowKind::Maf | FlowKind::Iaf => {
                checked_net_params(d, &self.hidden, d.checked_mul(2)?, 1)
            }
            FlowKind::Glow => d.checked_mul(d)?.checked_add(coupling(2)?),
            FlowKind::Planar => d.checked_mul(2)?.checked_add(1),
            FlowKind::Radial => d.checked_add(2),
        }
    }

    /// The parameters of one block of a hybrid's CNF (its MLP, and ln T if learned),
    /// `None` on overflow.
    fn cnf_block_n_params(dim: usize, cnf: &CnfBlockSpec) -> Option<usize> {
        let mlp =
            MlpConfig { dim, hidden: cnf.hidden.clone(), time: cnf.time, ..Default::default() };
        mlp.checked_n_params()?.checked_add(usize::from(cnf.train_t))
    }

    /// [`FlowSpec::checked_n_params`] for a model over `T`, as an error naming the field that
    /// makes it too large: the count must not overflow and its bytes must fit in
    /// `isize::MAX` (the most a `Vec` can hold).
    fn n_params_for<T>(&self) -> Result<usize, Error> {
        let max = isize::MAX as usize / std::mem::size_of::<T>().max(1);
        let fits = |n: Option<usize>| n.filter(|&n| n <= max);
        let too_large = |name, value: f64| Error::InvalidConfig {
            name,
            value,
            expected: "small enough that the model's parameter vector fits in memory",
        };
        let widest = |h: &[usize]| h.iter().copied().max().unwrap_or(0) as f64;
        let Some(per_layer) = fits(self.layer_n_params()) else {
            // Name what makes one layer too large: the dimension alone, or the widths.
            let linear = FlowSpec { hidden: Vec::new(), cnf: None, ..self.clone() };
            return Err(match fits(linear.layer_n_params()) {
                None => too_large("flow dim", self.dim as f64),
                Some(_) => too_large("flow hidden width", widest(&self.hidden)),
            });
        };
        let mut n = fits(per_layer.checked_mul(self.layers))
            .ok_or_else(|| too_large("flow layers", self.layers as f64))?;
        if self.kind == FlowKind::RealNvpCnf {
            let cnf = self.cnf.clone().unwrap_or_default();
            let Some(block) = fits(Self::cnf_block_n_params(self.dim, &cnf)) else {
                let linear = CnfBlockSpec { hidden: Vec::new(), ..cnf.clone() };
                return Err(match fits(Self::cnf_block_n_params(self.dim, &linear)) {
                    None => too_large("flow dim", self.dim as f64),
                    Some(_) => too_large("cnf hidden width", widest(&cnf.hidden)),
                });
            };
            n = fits(block.checked_mul(cnf.blocks).and_then(|b| b.checked_add(n)))
                .ok_or_else(|| too_large("cnf blocks", cnf.blocks as f64))?;
        }
        Ok(n)
    }

    /// The layers of the spec (no parameters; they live in the [`FlowModel`]), a CNF
    /// block's MLPs seeded with 0 (see [`FlowSpec::build`]).
    pub fn layers<T: Real>(&self) -> Result<Vec<Box<dyn Flow<T>>>, Error> {
        self.layers_seeded(0)
    }

    fn layers_seeded<T: Real>(&self, seed: u64) -> Result<Vec<Box<dyn Flow<T>>>, Error> {
        if self.layers == 0 {
            return Err(Error::InvalidConfig {
                name: "flow layers", value: 0.0, expected: "≥ 1"
            });
        }
        if self.dim == 0 || (self.dim < 2 && self.kind.coupled()) {
            return Err(Error::InvalidConfig {
                name: "flow dim",
                value: self.dim as f64,
                expected: "≥ 2 for a coupling flow, ≥ 1 otherwise",
            });
        }
        if self.hidden.contains(&0) {
            return Err(Error::InvalidConfig {
                name: "flow hidden width",
                value: 0.0,
                expected: "≥ 1 (each hidden layer of a conditioner)",
            });
        }
        if self.kind.bounded() && !(self.scale_bound.is_finite() && self.scale_bound > 0.0) {
            return Err(Error::InvalidConfig {
                name: "scale_bound",
                value: self.scale_bound,
                expected: "finite and > 0",
            });
        }
        let d = self.dim;
        let affine = CouplingKind::Affine { scale_bound: self.scale_bound };
        let mut layers: Vec<Box<dyn Flow<T>>> = Vec::new();
        for i in 0..self.layers {
            let odd = i % 2 == 1;
            match self.kind {
                FlowKind::RealNvp | FlowKind::RealNvpCnf => {
                    layers.push(Box::new(Coupling::new(d, affine, &self.hidden, odd)?))
                }
                FlowKind::Nice => layers.push(Box::new(Coupling::new(
                    d,
                    CouplingKind::Additive,
                    &self.hidden,
                    odd,
                )?)),
                FlowKind::Nsf => layers.push(Box::new(Coupling::new(
                    d,
                    CouplingKind::RationalQuadratic(RqShape { bins: self.bins, bound: self.bound }),
                    &self.hidden,
                    odd,
                )?)),
                FlowKind::Maf | FlowKind::Iaf => {
                    if i > 0 {
                        layers.push(Box::new(Permutation::reverse(d)?));
                    }
                    if self.kind == FlowKind::Maf {
                        layers.push(Box::new(Maf::new(d, &self.hidden, self.scale_bound)?));
                    } else {
                        layers.push(Box::new(Iaf::new(d, &self.hidden, self.scale_bound)?));
                    }
                }
                FlowKind::Glow => {
                    // The permutation is part of the architecture, not of θ: seeded by the
                    // step, so a loaded file rebuilds the same one.
                    layers.push(Box::new(LuAffine::glow(d, i as u64)?));
                    layers.push(Box::new(Coupling::new(d, affine, &self.hidden, odd)?));
                }
                FlowKind::Planar => layers.push(Box::new(Planar::new(d)?)),
                FlowKind::Radial => layers.push(Box::new(Radial::new(d)?)),
            }
        }
        if self.kind == FlowKind::RealNvpCnf {
            let cnf = self.cnf.clone().unwrap_or_default();
            layers.push(Box::new(cnf.build::<T>(d, seed)?));
        }
        Ok(layers)
    }

    /// Builds the model with its initial parameters drawn from a generator seeded with
    /// `seed` (see [`FlowModel::new`]; a CNF block's MLPs are seeded with `seed` too): the
    /// same spec and seed give the same θ, bit for bit. Errors: a spec out of range
    /// ([`Error::InvalidConfig`], or the CNF's own errors), including sizes whose parameter
    /// vector cannot be allocated (the error names the field: `flow dim`, `flow hidden
    /// width`, `flow layers`, `cnf hidden width`, `cnf blocks`; or `flow parameters` when
    /// the system refuses the memory). The parameter vector is reserved before any layer
    /// is built.
    pub fn build<T: Real>(&self, seed: u64) -> Result<FlowModel<T>, Error> {
        let n = self.n_params_for::<T>()?;
        let mut params = Vec::new();
        params.try_reserve_exact(n).map_err(|_| Error::InvalidConfig {
            name: "flow parameters",
            value: n as f64,
            expected: "a parameter vector that fits in memory",
        })?;
        FlowModel::with_params_buffer(self.layers_seeded(seed)?, seed, params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_builds_deterministically_and_round_trips_as_json() {
        for kind in FlowKind::ALL {
            let spec = FlowSpec::new(kind, 3, 2, vec![8]);
            let a = spec.build::<f64>(1).unwrap();
            let b = spec.build::<f64>(1).unwrap();
            assert_eq!(a.params(), b.params(), "{kind}");
            assert!(a.n_params() > 0, "{kind}");
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<FlowSpec>(&json).unwrap(), spec);
            assert_eq!(kind.name().parse::<FlowKind>().unwrap(), kind);
        }
        assert!("flowpp".parse::<FlowKind>().unwrap_err().contains("realnvp+cnf"));
        assert!(FlowSpec::new(FlowKind::RealNvp, 2, 0, vec![4]).build::<f64>(0).is_err());
        assert!(FlowSpec::new(FlowKind::Nice, 1, 2, vec![4]).build::<f64>(0).is_err());
        assert!(FlowSpec::new(FlowKind::Glow, 1, 2, vec![4]).build::<f64>(0).is_err());
        assert!(FlowSpec::new(FlowKind::Planar, 1, 2, vec![]).build::<f64>(0).is_ok());
    }

    #[test]
    fn a_zero_hidden_width_is_refused() {
        for kind in [FlowKind::RealNvp, FlowKind::Maf, FlowKind::Nsf] {
            let err = FlowSpec::new(kind, 2, 2, vec![8, 0]).build::<f64>(0).unwrap_err();
            assert!(err.to_string().contains("hidden width"), "{kind}: {err}");
        }
        // No hidden layer (a linear conditioner) is a width list, not a zero width.
        assert!(FlowSpec::new(FlowKind::RealNvp, 2, 2, vec![]).build::<f64>(0).is_ok());
    }

    /// Sizes the parameter vector cannot hold are errors naming the field (they used to
    /// abort on the allocation or panic with "capacity overflow").
    #[test]
    fn oversized_specs_are_refused_naming_the_field() {
        let name = |spec: FlowSpec| match spec.build::<f64>(0) {
            Err(Error::InvalidConfig { name, .. }) => name,
            other => panic!("{spec:?}: {other:?}"),
        };
        let spec = |kind, dim, layers, hidden| FlowSpec::new(kind, dim, layers, hidden);
        // Counts that overflow usize or isize::MAX bytes.
        assert_eq!(name(spec(FlowKind::Planar, 1 << 62, 1, vec![])), "flow dim");
        assert_eq!(name(spec(FlowKind::Glow, 1 << 33, 1, vec![4])), "flow dim");
        assert_eq!(name(spec(FlowKind::RealNvp, 2, 2, vec![1 << 62])), "flow hidden width");
        assert_eq!(name(spec(FlowKind::Maf, 2, 2, vec![1 << 40, 1 << 40])), "flow hidden width");
        assert_eq!(name(spec(FlowKind::RealNvp, 2, 1 << 62, vec![8])), "flow layers");
        let mut hybrid = spec(FlowKind::RealNvpCnf, 2, 1, vec![4]);
        hybrid.cnf.as_mut().unwrap().hidden = vec![1 << 62];
        assert_eq!(name(hybrid.clone()), "cnf hidden width");
        hybrid.cnf.as_mut().unwrap().hidden = vec![4];
        hybrid.cnf.as_mut().unwrap().blocks = 1 << 62;
        assert_eq!(name(hybrid), "cnf blocks");
        // Representable counts beyond any address space (above 2⁵⁷ bytes, the reach of
        // five-level paging, so no kernel can grant them, whatever its overcommit setting):
        // the reservation of the parameter vector fails before any layer is built.
        assert_eq!(name(spec(FlowKind::RealNvp, 2, 2, vec![1 << 53])), "flow parameters");
        assert_eq!(name(spec(FlowKind::RealNvp, 2, 1 << 50, vec![8])), "flow parameters");
        assert_eq!(name(spec(FlowKind::Glow, 1 << 28, 1, vec![4])), "flow parameters");
        // f32 halves the bytes: the same count may be refused for f64 only.
        let s = spec(FlowKind::Planar, 1 << 59, 1, vec![]);
        assert!(matches!(s.n_params_for::<f64>(), Err(Error::InvalidConfig { .. })));
        assert_eq!(s.n_params_for::<f32>().unwrap(), (1 << 60) + 1);
        assert_eq!(s.n_params_for::<f32>().ok(), s.checked_n_params());
    }

    #[test]
    fn hybrid_spec_carries_its_cnf_block() {
        let mut spec = FlowSpec::new(FlowKind::RealNvpCnf, 2, 2, vec![8]);
        let cnf = spec.cnf.as_mut().unwrap();
        cnf.hidden = vec![6];
        cnf.train_t = true;
        cnf.t_end = 0.8;
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains(r#""kind":"realnvp+cnf""#) && json.contains(r#""method":"dopri5""#));
        assert!(json.contains(r#""adjoint":"checkpointed""#), "{json}");
        assert!(!json.contains("adjoint_rtol"), "unset backward tolerances are not written");
        assert_eq!(serde_json::from_str::<FlowSpec>(&json).unwrap(), spec);
        // Backward tolerances of its own: kept in the JSON, refused at build when not > 0.
        let mut split = spec.clone();
        split.cnf.as_mut().unwrap().adjoint_rtol = Some(1e-7);
        let json = serde_json::to_string(&split).unwrap();
        assert!(json.contains(r#""adjoint_rtol":1e-7"#), "{json}");
        assert_eq!(serde_json::from_str::<FlowSpec>(&json).unwrap(), split);
        assert!(split.build::<f64>(3).is_ok());
        split.cnf.as_mut().unwrap().adjoint_atol = Some(0.0);
        let err = split.build::<f64>(3).unwrap_err();
        assert!(matches!(err, Error::AdjointOptions { .. }), "{err}");
        let m = spec.build::<f64>(3).unwrap();
        let layers = m.layers();
        assert_eq!(layers.len(), 3);
        assert_eq!(layers[2].name(), "cnf");
        // The CNF block: an MLP 2 → 6 → 2 (concatsquash: 6·2 + 4·6 + 2·6 + 4·2) and ln T.
        let n_cnf = m.offsets()[3] - m.offsets()[2];
        assert_eq!(n_cnf, 12 + 24 + 12 + 8 + 1);
        assert!((m.params()[m.n_params() - 1] - 0.8f64.ln()).abs() < 1e-15);
        // The CNF's initial weights follow the seed.
        assert_ne!(m.params(), spec.build::<f64>(4).unwrap().params());
        // Missing CNF fields take their defaults; an unknown method is a parse error.
        let partial =
            r#"{"kind":"realnvp+cnf","dim":2,"layers":1,"hidden":[4],"cnf":{"rtol":1e-6}}"#;
        let p: FlowSpec = serde_json::from_str(partial).unwrap();
        assert_eq!(p.cnf.as_ref().unwrap().hidden, vec![64, 64, 64]);
        let bad = partial.replace(r#""rtol":1e-6"#, r#""method":"nope""#);
        assert!(serde_json::from_str::<FlowSpec>(&bad).is_err());
        // A fixed-step method has no step size here: refused.
        let mut fixed = spec.clone();
        fixed.cnf.as_mut().unwrap().method = Method::Rk4;
        assert!(fixed.build::<f64>(0).is_err());
        // So is a fixed-step backward method.
        let mut fixed = spec.clone();
        fixed.cnf.as_mut().unwrap().adjoint_method = Some(Method::Rk4);
        assert!(matches!(fixed.build::<f64>(0), Err(Error::AdjointOptions { .. })));
        // The adjoint settings a default spec leaves out of its JSON, and read back when set.
        let json = serde_json::to_string(&spec).unwrap();
        assert!(!json.contains("seminorm") && !json.contains("adjoint_method"), "{json}");
        let mut custom = spec.clone();
        let c = custom.cnf.as_mut().unwrap();
        (c.adjoint_method, c.seminorm, c.forward_seminorm) = (Some(Method::Tsit5), true, true);
        let json = serde_json::to_string(&custom).unwrap();
        assert!(json.contains(r#""adjoint_method":"tsit5""#), "{json}");
        assert_eq!(serde_json::from_str::<FlowSpec>(&json).unwrap(), custom);
    }
}
