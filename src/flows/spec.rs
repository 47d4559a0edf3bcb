//! A serialisable description of a discrete-flow architecture ([`FlowSpec`]), from which
//! [`FlowSpec::build`] makes the [`FlowModel`]. The command line (`odeflow train --flow`)
//! and the flow model files (`odeflow::io::model::save_flow`) both use it.

use serde::{Deserialize, Serialize};

use super::{Coupling, CouplingKind, Flow, FlowModel, Maf, Permutation, RqShape};
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
}

impl FlowKind {
    /// Every kind, in the order of the command line's help.
    pub const ALL: [FlowKind; 4] =
        [FlowKind::RealNvp, FlowKind::Nice, FlowKind::Maf, FlowKind::Nsf];

    /// The name used on the command line and in model files (`realnvp`, `nice`, `maf`,
    /// `nsf`).
    pub fn name(self) -> &'static str {
        match self {
            FlowKind::RealNvp => "realnvp",
            FlowKind::Nice => "nice",
            FlowKind::Maf => "maf",
            FlowKind::Nsf => "nsf",
        }
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

/// A discrete-flow architecture: enough to rebuild the layers of a [`FlowModel`] (its
/// parameters are stored separately). Serialises to JSON as, e.g.,
///
/// ```json
/// {"kind": "realnvp", "dim": 2, "layers": 8, "hidden": [64, 64],
///  "scale_bound": 3.0, "bins": 8, "bound": 4.0}
/// ```
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
    /// Dimension d of a point (≥ 2 for the coupling kinds, ≥ 1 for MAF).
    pub dim: usize,
    /// Number of flow layers (couplings or MAF layers; permutations not counted), ≥ 1.
    pub layers: usize,
    /// Hidden widths of each layer's conditioner network.
    pub hidden: Vec<usize>,
    /// Bound a of the log-scale, |s| < a (RealNVP and MAF; default 3).
    #[serde(default = "default_scale_bound")]
    pub scale_bound: f64,
    /// Spline bins K (NSF; default 8).
    #[serde(default = "default_bins")]
    pub bins: usize,
    /// Spline half-width B (NSF: identity outside `[−B, B]`; default 4).
    #[serde(default = "default_bound")]
    pub bound: f64,
}

impl FlowSpec {
    /// A spec with the default scale bound (3) and spline shape (8 bins on `[−4, 4]`).
    pub fn new(kind: FlowKind, dim: usize, layers: usize, hidden: Vec<usize>) -> Self {
        FlowSpec {
            kind,
            dim,
            layers,
            hidden,
            scale_bound: default_scale_bound(),
            bins: default_bins(),
            bound: default_bound(),
        }
    }

    /// The layers of the spec (no parameters; they live in the [`FlowModel`]).
    pub fn layers<T: Real>(&self) -> Result<Vec<Box<dyn Flow<T>>>, Error> {
        if self.layers == 0 {
            return Err(Error::InvalidConfig {
                name: "flow layers", value: 0.0, expected: "≥ 1"
            });
        }
        if self.dim < 2 && self.kind != FlowKind::Maf {
            return Err(Error::InvalidConfig {
                name: "flow dim",
                value: self.dim as f64,
                expected: "≥ 2 for a coupling flow",
            });
        }
        let coupling = match self.kind {
            FlowKind::RealNvp => Some(CouplingKind::Affine { scale_bound: self.scale_bound }),
            FlowKind::Nice => Some(CouplingKind::Additive),
            FlowKind::Nsf => Some(CouplingKind::RationalQuadratic(RqShape {
                bins: self.bins,
                bound: self.bound,
            })),
            FlowKind::Maf => None,
        };
        let bounded = matches!(self.kind, FlowKind::RealNvp | FlowKind::Maf);
        if bounded && !(self.scale_bound.is_finite() && self.scale_bound > 0.0) {
            return Err(Error::InvalidConfig {
                name: "scale_bound",
                value: self.scale_bound,
                expected: "finite and > 0",
            });
        }
        let mut layers: Vec<Box<dyn Flow<T>>> = Vec::new();
        for i in 0..self.layers {
            match coupling {
                Some(kind) => {
                    layers.push(Box::new(Coupling::new(self.dim, kind, &self.hidden, i % 2 == 1)?))
                }
                None => {
                    if i > 0 {
                        layers.push(Box::new(Permutation::reverse(self.dim)));
                    }
                    layers.push(Box::new(Maf::new(self.dim, &self.hidden, self.scale_bound)?));
                }
            }
        }
        Ok(layers)
    }

    /// Builds the model with its initial parameters drawn from a generator seeded with
    /// `seed` (see [`FlowModel::new`]): the same spec and seed give the same θ, bit for
    /// bit. Errors: a spec out of range ([`Error::InvalidConfig`]).
    pub fn build<T: Real>(&self, seed: u64) -> Result<FlowModel<T>, Error> {
        FlowModel::new(self.layers()?, seed)
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
        assert!("glow".parse::<FlowKind>().unwrap_err().contains("realnvp"));
        assert!(FlowSpec::new(FlowKind::RealNvp, 2, 0, vec![4]).build::<f64>(0).is_err());
        assert!(FlowSpec::new(FlowKind::Nice, 1, 2, vec![4]).build::<f64>(0).is_err());
    }
}
