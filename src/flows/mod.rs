//! Discrete normalizing flows: invertible layers with tractable log-determinants, their
//! composition over a standard normal base, and the reverse-mode gradient of the
//! log-likelihood.
//!
//! # Conventions (the survey's change of variables)
//!
//! A flow is a bijection between a latent `z` and a data point `x` in ℝᵈ. The generative
//! direction is **forward**, `x = f(z)`; the normalizing direction is **inverse**,
//! `z = f⁻¹(x)`. Each call returns, per sample, the log-determinant *of the map it
//! computes*:
//!
//! - [`Flow::forward`]: `x = f(z)` and `log|det ∂x/∂z|`;
//! - [`Flow::inverse`]: `z = f⁻¹(x)` and `log|det ∂z/∂x| = −log|det ∂x/∂z|`.
//!
//! The density of the data is then (the survey's `p_X(x) = p_Z(z)·|det ∂z/∂x|`)
//!
//! ```text
//! log p_X(x) = log p_Z(f⁻¹(x)) + log|det ∂z/∂x|.
//! ```
//!
//! For a composition `f = f_K ∘ … ∘ f_1` (layer 1 acts first on `z`), the inverse runs
//! `h_K = x`, `h_{k−1} = f_k⁻¹(h_k)`, `z = h_0`, and the log-determinants add:
//! `log|det ∂z/∂x| = Σ_k log|det ∂h_{k−1}/∂h_k|`.
//!
//! # Layout
//!
//! Batches are flat, sample-major `B × d` buffers (row `b` is `buf[b*d..(b+1)*d]`), as
//! everywhere in odeflow. Parameters of a [`FlowModel`] are **one flat vector**; each layer
//! owns the range `offsets[k]..offsets[k+1]` of it and receives that slice as `theta` in
//! every call. This is why the [`Flow`] trait takes `theta` explicitly instead of owning
//! its parameters: the model's parameter vector, its gradient and the optimizer state are
//! then single contiguous buffers (see `design.md`).
//!
//! # Gradients
//!
//! [`Flow::inverse_vjp`] is the reverse-mode derivative of the density direction: for
//! cotangents `ḡ_z` (per output coordinate) and `ḡ_ℓ` (per sample) it returns the gradient of
//!
//! ```text
//! Φ = Σ_b [ ḡ_z,bᵀ z_b + ḡ_ℓ,b · log|det ∂z/∂x|(x_b) ]
//! ```
//!
//! with respect to the input `x` (overwritten) and the layer parameters θ (accumulated).
//! [`FlowModel::log_prob_vjp`] chains them into the gradient of `Σ_b w_b log p(x_b)`, which
//! [`FlowModel::nll_grad`] uses for maximum likelihood (the trainer is
//! [`crate::train::FlowTrainer`]). Every layer is checked against central finite differences
//! in `tests/flows.rs`.
//!
//! # Layers
//!
//! | layer | map | density (inverse) cost | forward log-det | params |
//! |---|---|---|---|---|
//! | [`ElementwiseAffine`] | `x = z ⊙ eˢ + t` | O(d) | `Σ s` | 2d |
//! | [`LuAffine`] | `x = P L U z + b` | O(d²) | `Σ s`, `U_ii = e^{s_i}` | d² + d |
//! | [`DenseAffine`] | `x = A z + b` | O(d³) (LU per call) | `log \|det A\|` | d² + d |
//! | [`RqSpline`] | `z_i = RQ_i(x_i)` (Neural Spline Flows) | O(d) | `−Σ log RQ'` | d(3K−1) |
//! | [`Permutation`] | `x_i = z_{π(i)}` | O(d) | 0 | 0 |
//! | [`Coupling`] (additive, affine) | `x_B = z_B ⊙ e^{s(z_A)} + t(z_A)` | one pass | `Σ s` | MLP |
//! | [`Coupling`] (spline) | `z_B = RQ(x_B; h(x_A))` | one pass (sampling: a quadratic) | `−Σ log RQ'` | MLP |
//! | [`Maf`] | `x_i = z_i e^{s_i(x_<i)} + μ_i(x_<i)` | one pass (sampling: d passes) | `Σ s` | MADE |
//! | [`MafSpline`] | `x_i = RQ⁻¹(z_i; h_i(x_<i))` | one pass (sampling: d passes) | `−Σ log RQ′` | MADE |
//! | [`Iaf`] | the inverse of [`Maf`] (or [`MafSpline`]) with the same θ | d passes (sampling: one) | minus the inverted layer's | MADE |
//! | [`Planar`] | `x = z + û tanh(wᵀz + b)` | 1-D root (Newton) | `log(1 + wᵀû tanh')` | 2d + 1 |
//! | [`Radial`] | `x = z + β(z − z₀)/(α + r)` | closed form | see there | d + 2 |
//! | [`InverseCdf`] | `x_i = F⁻¹(Φ(z_i); x_<i)` (tabulated density) | one pass (sampling: d 1-D roots) | `Σ log φ(z_i) − log p̂(x_i; x_<i)` | 0 |
//! | [`CnfFlow`] | `x = φ_{T→0}(z)`, a CNF block (ODE) | ODE solve (gradient: adjoint ODE) | `−∫ tr ∂f/∂z dt` | the fields' (+ ln T) |
//!
//! The learned 1×1 mixing of Glow is [`LuAffine::glow`] (random fixed permutation, unit
//! lower L, upper U with log-diagonal, no bias).
//!
//! # Example
//!
//! ```
//! use odeflow::flows::{Coupling, CouplingKind, FlowModel, Permutation};
//!
//! let d = 2;
//! let layers: Vec<Box<dyn odeflow::flows::Flow<f64>>> = vec![
//!     Box::new(Coupling::new(d, CouplingKind::Affine { scale_bound: 2.0 }, &[16], false)?),
//!     Box::new(Permutation::reverse(d)?),
//!     Box::new(Coupling::new(d, CouplingKind::Affine { scale_bound: 2.0 }, &[16], false)?),
//! ];
//! let mut model = FlowModel::new(layers, 7)?;
//! // Give the nets non-trivial weights (the last layers start at zero, i.e. the identity).
//! for (i, p) in model.params_mut().iter_mut().enumerate() {
//!     *p = 0.3 * ((i as f64) * 0.7).sin();
//! }
//! let z = [0.3, -1.2, 0.5, 0.8];
//! let (x, ld_f) = model.forward(&z)?;
//! let (z2, ld_i) = model.inverse(&x)?;
//! assert!(z.iter().zip(&z2).all(|(a, b)| (a - b).abs() < 1e-12));
//! assert!((ld_f[0] + ld_i[0]).abs() < 1e-12); // log|det ∂x/∂z| = −log|det ∂z/∂x|
//! # Ok::<(), odeflow::Error>(())
//! ```

// Numeric kernels index several parallel slices with one loop variable.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

mod autoregressive;
mod cnf_block;
mod coupling;
mod icdf;
mod linear;
mod net;
mod planar;
mod spec;
mod spline;

pub use autoregressive::{Autoregressive, Iaf, Maf, MafSpline};
pub use cnf_block::CnfFlow;
pub use coupling::{Coupling, CouplingKind};
pub use icdf::{normal_cdf, normal_quantile, Cdf1d, InverseCdf};
pub use linear::{DenseAffine, ElementwiseAffine, LuAffine, Permutation};
pub use planar::{Planar, Radial};
pub use spec::{CnfBlockSpec, FlowKind, FlowSpec};
pub use spline::{rq_eval, rq_eval_vjp, rq_inverse, RqShape, RqSpline, MAX_BINS, MAX_BOUND};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{batch_size, check_finite, check_len, try_zeros};
use crate::{Error, Real};

/// Scratch space of a flow call: one buffer that grows on first use (never shrinks) and
/// one child workspace per sub-layer. Make one per model with [`FlowModel::workspace`] (or
/// [`FlowWs::default`] for a single layer) and reuse it: after the first call of a given
/// batch size, calls do not allocate (except [`CnfFlow`], whose ODE solves allocate their
/// own buffers).
#[derive(Default)]
pub struct FlowWs<T> {
    pub(crate) buf: Vec<T>,
    pub(crate) idx: Vec<usize>,
    pub(crate) sub: Vec<FlowWs<T>>,
    /// A layer's own reusable state (a [`CnfFlow`] keeps its working copy of the CNF here,
    /// refreshed from θ on every call); a cache, so a clone starts without it.
    pub(crate) cache: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl<T: Clone> Clone for FlowWs<T> {
    fn clone(&self) -> Self {
        FlowWs { buf: self.buf.clone(), idx: self.idx.clone(), sub: self.sub.clone(), cache: None }
    }
}

impl<T> std::fmt::Debug for FlowWs<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowWs")
            .field("buf_len", &self.buf.len())
            .field("idx_len", &self.idx.len())
            .field("sub", &self.sub)
            .field("cache", &self.cache.is_some())
            .finish()
    }
}

impl<T: Real> FlowWs<T> {
    /// The first `n` entries of the scratch buffer (grown with zeros if shorter).
    pub(crate) fn take(&mut self, n: usize) -> &mut [T] {
        if self.buf.len() < n {
            self.buf.resize(n, T::zero());
        }
        &mut self.buf[..n]
    }

    /// The scratch buffer and child workspace `k` (created if missing), borrowed together.
    pub(crate) fn split(&mut self, n: usize, k: usize) -> (&mut [T], &mut FlowWs<T>) {
        if self.buf.len() < n {
            self.buf.resize(n, T::zero());
        }
        while self.sub.len() <= k {
            self.sub.push(FlowWs::default());
        }
        (&mut self.buf[..n], &mut self.sub[k])
    }
}

/// One invertible layer `x = f(z; θ)` on flat batches, with log-determinants and the
/// reverse-mode gradient of its density direction.
///
/// Sign conventions (see the [module docs](self)): `forward` returns
/// `log|det ∂x/∂z|`, `inverse` returns `log|det ∂z/∂x|`, and
/// `log p_X(x) = log p_Z(z) + log|det ∂z/∂x|`.
///
/// Every method checks the lengths (`theta.len() == n_params()`, the batch a whole number
/// of `dim()`-points, output buffers `B·d` and `B`) and the finiteness of θ
/// ([`Error::NonFiniteParameter`]) and of the input, and returns an [`Error`] instead of
/// panicking. The built-in layers refuse a dimension of 0 when they are made.
pub trait Flow<T: Real>: Send + Sync {
    /// A short name of the layer kind (for errors and reports).
    fn name(&self) -> &'static str;

    /// The dimension d.
    fn dim(&self) -> usize;

    /// The number of parameters (the length of `theta` in every call).
    fn n_params(&self) -> usize;

    /// Writes the initial parameters into `theta` (seeded draws from `rng`). Layers with a
    /// conditioner network zero its output layer, so they start as the identity map.
    /// `theta.len()` must be [`Flow::n_params`] ([`Error::BufferLength`] naming `"theta"`
    /// otherwise, with `theta` and `rng` untouched).
    fn init_params(&self, theta: &mut [T], rng: &mut dyn RngCore) -> Result<(), Error>;

    /// Generative direction: `x = f(z)`, `logdet_b = log|det ∂x/∂z|(z_b)`.
    fn forward(
        &self,
        theta: &[T],
        z: &[T],
        x: &mut [T],
        logdet: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error>;

    /// Normalizing direction: `z = f⁻¹(x)`, `logdet_b = log|det ∂z/∂x|(x_b)`.
    fn inverse(
        &self,
        theta: &[T],
        x: &[T],
        z: &mut [T],
        logdet: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error>;

    /// Reverse mode of [`Flow::inverse`] at `x`: with `Φ = Σ_b [z_cotᵀ z_b + ld_cot_b ·
    /// log|det ∂z/∂x|(x_b)]`, writes `x_cot = ∂Φ/∂x` and **adds** `∂Φ/∂θ` to `theta_cot`.
    fn inverse_vjp(
        &self,
        theta: &[T],
        x: &[T],
        z_cot: &[T],
        ld_cot: &[T],
        x_cot: &mut [T],
        theta_cot: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error>;
}

/// Validates a map call (`theta`, input, output and log-det lengths, finite θ and input)
/// and returns the batch size B.
pub(crate) fn check_map<T: Real>(
    dim: usize,
    n_params: usize,
    theta: &[T],
    input: &[T],
    output_len: usize,
    ld_len: usize,
) -> Result<usize, Error> {
    check_len("theta", theta.len(), n_params)?;
    let b = batch_size(input.len(), dim)?;
    check_len("output", output_len, input.len())?;
    check_len("logdet", ld_len, b)?;
    check_finite_params(theta, "in the layer's θ")?;
    check_finite(input, dim)?;
    Ok(b)
}

/// Refuses a 0-dimensional layer, or one whose parameter count `n_params` (computed in
/// checked arithmetic) overflows: [`Error::InvalidConfig`] naming `name` (the layer's
/// dimension, e.g. `"planar dim"`).
pub(crate) fn check_dim(
    name: &'static str,
    dim: usize,
    n_params: Option<usize>,
) -> Result<(), Error> {
    if dim == 0 {
        return Err(Error::InvalidConfig { name, value: 0.0, expected: "≥ 1" });
    }
    if n_params.is_none() {
        return Err(Error::InvalidConfig {
            name,
            value: dim as f64,
            expected: "a dimension whose parameter count fits in usize",
        });
    }
    Ok(())
}

/// Checks that every parameter is finite ([`Error::NonFiniteParameter`] naming `what`
/// and the first bad index otherwise).
pub(crate) fn check_finite_params<T: Real>(theta: &[T], what: &'static str) -> Result<(), Error> {
    match theta.iter().position(|v| !v.is_finite()) {
        Some(index) => {
            Err(Error::NonFiniteParameter { what, index, value: theta[index].to_f64c() })
        }
        None => Ok(()),
    }
}

/// Validates a vjp call and returns the batch size B.
pub(crate) fn check_vjp<T: Real>(
    dim: usize,
    n_params: usize,
    theta: &[T],
    x: &[T],
    z_cot: &[T],
    ld_cot: &[T],
    x_cot: &[T],
    theta_cot: &[T],
) -> Result<usize, Error> {
    let b = check_map(dim, n_params, theta, x, x_cot.len(), ld_cot.len())?;
    check_len("z_cot", z_cot.len(), x.len())?;
    check_len("theta_cot", theta_cot.len(), n_params)?;
    check_finite(z_cot, dim)?;
    Ok(b)
}

/// `log N(z; 0, I) = −½ (d ln 2π + ‖z‖²)` of one point.
pub fn std_normal_log_prob<T: Real>(z: &[T]) -> T {
    crate::cnf::std_normal_log_prob(z)
}

/// `T` from an `f64` constant.
#[inline(always)]
pub(crate) fn c<T: Real>(x: f64) -> T {
    T::from_f64c(x)
}

/// A composition of flows over a standard normal base, with its parameters in one flat
/// vector:
///
/// ```text
/// x = f_K ∘ … ∘ f_1 (z),   z ~ N(0, I_d),
/// log p(x) = log N(z; 0, I) + Σ_k log|det ∂h_{k−1}/∂h_k|,   h_K = x, h_{k−1} = f_k⁻¹(h_k).
/// ```
///
/// Layer `k` (0-based, `f_{k+1}` above) owns `params()[offsets()[k]..offsets()[k+1]]`.
pub struct FlowModel<T: Real> {
    layers: Vec<Box<dyn Flow<T>>>,
    offsets: Vec<usize>,
    params: Vec<T>,
    dim: usize,
}

impl<T: Real> std::fmt::Debug for FlowModel<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.layers.iter().map(|l| l.name()).collect();
        f.debug_struct("FlowModel")
            .field("dim", &self.dim)
            .field("layers", &names)
            .field("n_params", &self.params.len())
            .finish()
    }
}

impl<T: Real> FlowModel<T> {
    /// Composes `layers` (the first acts first on z) and initialises every layer's
    /// parameters from a ChaCha8 generator seeded with `seed`. Errors: no layers, a
    /// 0-dimensional first layer, or a parameter vector too large to allocate
    /// ([`Error::InvalidConfig`]); layers of different dimensions ([`Error::BlockDimension`]).
    pub fn new(layers: Vec<Box<dyn Flow<T>>>, seed: u64) -> Result<Self, Error> {
        Self::with_params_buffer(layers, seed, Vec::new())
    }

    /// [`FlowModel::new`] filling `params` (empty, perhaps with capacity reserved by the
    /// caller before it built the layers) with the parameters.
    pub(crate) fn with_params_buffer(
        layers: Vec<Box<dyn Flow<T>>>,
        seed: u64,
        mut params: Vec<T>,
    ) -> Result<Self, Error> {
        let Some(first) = layers.first() else {
            return Err(Error::InvalidConfig {
                name: "layers",
                value: 0.0,
                expected: "at least one layer",
            });
        };
        let dim = first.dim();
        if dim == 0 {
            return Err(Error::InvalidConfig {
                name: "flow dim",
                value: 0.0,
                expected: "≥ 1 (the first layer is 0-dimensional)",
            });
        }
        let mut offsets = vec![0usize];
        for (k, l) in layers.iter().enumerate() {
            if l.dim() != dim {
                return Err(Error::BlockDimension { block: k, expected: dim, found: l.dim() });
            }
            let end = offsets[k].checked_add(l.n_params()).ok_or(Error::InvalidConfig {
                name: "flow parameters",
                value: f64::INFINITY,
                expected: "a total count that fits in usize",
            })?;
            offsets.push(end);
        }
        let n = offsets[layers.len()];
        params.clear();
        params.try_reserve_exact(n).map_err(|_| Error::InvalidConfig {
            name: "flow parameters",
            value: n as f64,
            expected: "a parameter vector that fits in memory",
        })?;
        params.resize(n, T::zero());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (k, l) in layers.iter().enumerate() {
            l.init_params(&mut params[offsets[k]..offsets[k + 1]], &mut rng)?;
        }
        Ok(FlowModel { layers, offsets, params, dim })
    }

    /// The dimension d.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The layers, first acting first on z.
    pub fn layers(&self) -> &[Box<dyn Flow<T>>] {
        &self.layers
    }

    /// Layer `k` owns `params()[offsets()[k]..offsets()[k + 1]]`.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// The number of parameters.
    pub fn n_params(&self) -> usize {
        self.params.len()
    }

    /// All parameters, one flat vector.
    pub fn params(&self) -> &[T] {
        &self.params
    }

    /// All parameters, mutable (the optimizer steps this).
    pub fn params_mut(&mut self) -> &mut [T] {
        &mut self.params
    }

    /// A workspace for any batch size (grows on first use).
    pub fn workspace(&self) -> FlowWs<T> {
        FlowWs::default()
    }

    fn theta(&self, k: usize) -> &[T] {
        &self.params[self.offsets[k]..self.offsets[k + 1]]
    }

    fn tag(k: usize, e: Error) -> Error {
        match e {
            Error::SingularMatrix { column, .. } => Error::SingularMatrix { layer: k, column },
            e => e,
        }
    }

    /// `x = f(z)` and `logdet_b = log|det ∂x/∂z|` of the whole composition, into caller
    /// buffers.
    pub fn forward_into(
        &self,
        z: &[T],
        x: &mut [T],
        logdet: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        let d = self.dim;
        let b = check_map(d, 0, &[], z, x.len(), logdet.len())?;
        check_finite_params(&self.params, "in the model's parameters")?;
        let n = b * d;
        x.copy_from_slice(z);
        logdet.iter_mut().for_each(|v| *v = T::zero());
        for k in 0..self.layers.len() {
            let (buf, sub) = ws.split(n + b, k);
            let (h, ld) = buf.split_at_mut(n);
            h.copy_from_slice(x);
            self.layers[k].forward(self.theta(k), h, x, ld, sub).map_err(|e| Self::tag(k, e))?;
            for (a, v) in logdet.iter_mut().zip(ld.iter()) {
                *a += *v;
            }
        }
        Ok(())
    }

    /// Allocating twin of [`FlowModel::forward_into`]: returns `(x, log|det ∂x/∂z|)`.
    pub fn forward(&self, z: &[T]) -> Result<(Vec<T>, Vec<T>), Error> {
        let b = batch_size(z.len(), self.dim)?;
        let (mut x, mut ld) = (vec![T::zero(); z.len()], vec![T::zero(); b]);
        self.forward_into(z, &mut x, &mut ld, &mut self.workspace())?;
        Ok((x, ld))
    }

    /// Runs the inverse through every layer, keeping the intermediate states
    /// `h_K = x, …, h_0 = z` in the workspace (needed by the gradient). Returns B.
    fn inverse_keep(&self, x: &[T], ws: &mut FlowWs<T>) -> Result<usize, Error> {
        let d = self.dim;
        let kk = self.layers.len();
        let b = check_map(d, 0, &[], x, x.len(), batch_size(x.len(), d)?)?;
        check_finite_params(&self.params, "in the model's parameters")?;
        let n = b * d;
        // buf: h_0 … h_K (K+1 blocks of n), then the K per-layer log-dets (K·b).
        let (buf, _) = ws.split((kk + 1) * n + kk * b + 2 * n, 0);
        buf[kk * n..(kk + 1) * n].copy_from_slice(x);
        for k in (0..kk).rev() {
            let (hs, rest) = ws.buf.split_at_mut((kk + 1) * n);
            let (lo, hi) = hs.split_at_mut((k + 1) * n);
            let ld = &mut rest[k * b..(k + 1) * b];
            while ws.sub.len() <= k {
                ws.sub.push(FlowWs::default());
            }
            self.layers[k]
                .inverse(self.theta(k), &hi[..n], &mut lo[k * n..], ld, &mut ws.sub[k])
                .map_err(|e| Self::tag(k, e))?;
        }
        Ok(b)
    }

    /// `z = f⁻¹(x)` and `logdet_b = log|det ∂z/∂x|`, into caller buffers.
    pub fn inverse_into(
        &self,
        x: &[T],
        z: &mut [T],
        logdet: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        let b = batch_size(x.len(), self.dim)?;
        check_len("output", z.len(), x.len())?;
        check_len("logdet", logdet.len(), b)?;
        let b = self.inverse_keep(x, ws)?;
        let (n, kk) = (b * self.dim, self.layers.len());
        z.copy_from_slice(&ws.buf[..n]);
        logdet.iter_mut().for_each(|v| *v = T::zero());
        for k in 0..kk {
            let ld = &ws.buf[(kk + 1) * n + k * b..(kk + 1) * n + (k + 1) * b];
            for (a, v) in logdet.iter_mut().zip(ld) {
                *a += *v;
            }
        }
        Ok(())
    }

    /// Allocating twin of [`FlowModel::inverse_into`]: returns `(z, log|det ∂z/∂x|)`.
    pub fn inverse(&self, x: &[T]) -> Result<(Vec<T>, Vec<T>), Error> {
        let b = batch_size(x.len(), self.dim)?;
        let (mut z, mut ld) = (vec![T::zero(); x.len()], vec![T::zero(); b]);
        self.inverse_into(x, &mut z, &mut ld, &mut self.workspace())?;
        Ok((z, ld))
    }

    /// `log p(x_b) = log N(z_b) + log|det ∂z/∂x|(x_b)` into `out` (length B).
    pub fn log_prob_into(&self, x: &[T], out: &mut [T], ws: &mut FlowWs<T>) -> Result<(), Error> {
        let b = batch_size(x.len(), self.dim)?;
        check_len("out", out.len(), b)?;
        self.inverse_keep(x, ws)?;
        let (d, n, kk) = (self.dim, b * self.dim, self.layers.len());
        for i in 0..b {
            let mut s = std_normal_log_prob(&ws.buf[i * d..(i + 1) * d]);
            for k in 0..kk {
                s += ws.buf[(kk + 1) * n + k * b + i];
            }
            out[i] = s;
        }
        Ok(())
    }

    /// Allocating twin of [`FlowModel::log_prob_into`].
    pub fn log_prob(&self, x: &[T]) -> Result<Vec<T>, Error> {
        let mut out = vec![T::zero(); batch_size(x.len(), self.dim)?];
        self.log_prob_into(x, &mut out, &mut self.workspace())?;
        Ok(out)
    }

    /// Draws `n` points: `z ~ N(0, I)` from `rng`, `x = f(z)`. Errors: `n · dim` values
    /// too many to allocate ([`Error::InvalidConfig`] naming `n`), and those of
    /// [`FlowModel::forward_into`].
    pub fn sample<R: rand::Rng + ?Sized>(&self, n: usize, rng: &mut R) -> Result<Vec<T>, Error> {
        Ok(self.sample_with_log_prob(n, rng)?.0)
    }

    /// Draws `n` points and their log-densities `log p(x) = log N(z) − log|det ∂x/∂z|`
    /// (no inverse pass needed). Errors as [`FlowModel::sample`].
    pub fn sample_with_log_prob<R: rand::Rng + ?Sized>(
        &self,
        n: usize,
        rng: &mut R,
    ) -> Result<(Vec<T>, Vec<T>), Error> {
        let d = self.dim;
        let len = n.checked_mul(d).ok_or(Error::InvalidConfig {
            name: "n",
            value: n as f64,
            expected: "a number of points whose n·dim values fit in memory",
        })?;
        let mut z = try_zeros::<T>(len, "n·dim")?;
        z.iter_mut().for_each(|v| *v = c(StandardNormal.sample(&mut *rng)));
        let (mut x, mut ld) = (try_zeros(len, "n·dim")?, try_zeros(n, "n")?);
        self.forward_into(&z, &mut x, &mut ld, &mut self.workspace())?;
        for i in 0..n {
            ld[i] = std_normal_log_prob(&z[i * d..(i + 1) * d]) - ld[i];
        }
        Ok((x, ld))
    }

    /// Reverse mode of the log-density: with `Φ = Σ_b w_b log p(x_b)`, writes
    /// `x_cot = ∂Φ/∂x` (B·d) and `theta_cot = ∂Φ/∂θ` (overwritten, `n_params()`), and
    /// returns `Φ`. The chain: `∂Φ/∂h_0 = −w_b z_b` (the base), then each layer's
    /// [`Flow::inverse_vjp`] with `ld_cot = w` from layer 1 up to layer K.
    pub fn log_prob_vjp(
        &self,
        x: &[T],
        w: &[T],
        x_cot: &mut [T],
        theta_cot: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<T, Error> {
        let d = self.dim;
        let b = batch_size(x.len(), d)?;
        check_len("w", w.len(), b)?;
        check_len("x_cot", x_cot.len(), x.len())?;
        check_len("theta_cot", theta_cot.len(), self.params.len())?;
        check_finite(w, 1)?;
        self.inverse_keep(x, ws)?;
        let (n, kk) = (b * d, self.layers.len());
        theta_cot.iter_mut().for_each(|v| *v = T::zero());
        let base = (kk + 1) * n + kk * b;
        let mut phi = T::zero();
        {
            let (hs, rest) = ws.buf.split_at_mut(base);
            let cot = &mut rest[..n];
            for i in 0..b {
                let zi = &hs[i * d..(i + 1) * d];
                let mut s = std_normal_log_prob(zi);
                for k in 0..kk {
                    s += hs[(kk + 1) * n + k * b + i];
                }
                phi += w[i] * s;
                for j in 0..d {
                    cot[i * d + j] = -w[i] * zi[j];
                }
            }
        }
        for k in 0..kk {
            let (hs, rest) = ws.buf.split_at_mut(base);
            let (c_in, c_out) = rest[..2 * n].split_at_mut(n);
            let (lo, hi) = (self.offsets[k], self.offsets[k + 1]);
            self.layers[k]
                .inverse_vjp(
                    &self.params[lo..hi],
                    &hs[(k + 1) * n..(k + 2) * n],
                    c_in,
                    w,
                    c_out,
                    &mut theta_cot[lo..hi],
                    &mut ws.sub[k],
                )
                .map_err(|e| Self::tag(k, e))?;
            c_in.copy_from_slice(c_out);
        }
        x_cot.copy_from_slice(&ws.buf[base..base + n]);
        Ok(phi)
    }

    /// The mean negative log-likelihood `L = −(1/B) Σ_b log p(x_b)` and its gradient
    /// `∂L/∂θ` (into `grad`, overwritten); `ws` is reused across calls. An empty batch has
    /// no mean: [`Error::InvalidConfig`] naming `batch`.
    pub fn nll_grad(&self, x: &[T], grad: &mut [T], ws: &mut FlowWs<T>) -> Result<T, Error> {
        let b = batch_size(x.len(), self.dim)?;
        if b == 0 {
            return Err(Error::InvalidConfig {
                name: "batch",
                value: 0.0,
                expected: "≥ 1 point (an empty batch has no mean NLL)",
            });
        }
        // Scratch for w and ∂Φ/∂x in the child workspace after the layers' (taken out
        // for the call and put back, so nothing allocates after the first call).
        let kk = self.layers.len();
        ws.split(0, kk);
        let mut extra = std::mem::take(&mut ws.sub[kk]);
        let buf = extra.take(b + x.len());
        let (w, xc) = buf.split_at_mut(b);
        w.iter_mut().for_each(|v| *v = -T::one() / c::<T>(b as f64));
        let phi = self.log_prob_vjp(x, w, xc, grad, ws);
        ws.sub[kk] = extra;
        let phi = phi?;
        Ok(phi)
    }
}
