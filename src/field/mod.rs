//! Batched neural vector fields `f(t, z; θ)` with exact first- and second-order derivatives.
//!
//! A batch of `B` states of dimension `d` is one flat, sample-major buffer of length `B·d`
//! (row `i` is `z[i*d..(i+1)*d]`); `t` is shared by the batch; θ is one flat parameter vector.
//! Every method of [`VectorField`] writes into caller buffers and takes its scratch from a
//! workspace made once by [`VectorField::workspace`], so nothing allocates per call (a
//! workspace grows on first use when a call needs more room, e.g. the `d` tangent lanes of the
//! exact trace, and never again).
//!
//! What a continuous normalizing flow and its adjoint need, per sample `b` (`J = ∂f/∂z`):
//!
//! | call | computes |
//! |---|---|
//! | [`VectorField::eval`] | `f(t, z_b)` |
//! | [`VectorField::eval_div`] | `f` and `q_b = tr J` ([`Divergence::Exact`]) or `q_b = ε_bᵀ J ε_b` ([`Divergence::Hutchinson`]), optionally `‖J V‖²_F` (RNODE) |
//! | [`VectorField::jvp`] | `f` and `J v_b` |
//! | [`VectorField::vjp`] | `f`, `a_bᵀ J`, `Σ_b a_bᵀ ∂f/∂t`, `Σ_b a_bᵀ ∂f/∂θ` |
//! | [`VectorField::vjp_aug`] | `f`, `q`, and `∂Φ/∂z_b`, `∂Φ/∂t`, `∂Φ/∂θ` of `Φ = Σ_b [a_bᵀ f_b + c_b q_b]` |
//! | [`VectorField::vjp_aug_jac`] | the same for `Φ = Σ_b [a_bᵀ f_b + c_b q_b + w_b ‖J_b V_b‖²]`, and `‖J_b V_b‖²` (RNODE's Jacobian regularizer) |
//!
//! Fields provided:
//! - [`Mlp`]: FFJORD's ODEnet (`concat`, `concatsquash` or `ignore` time conditioning; tanh,
//!   softplus, SiLU, ELU), exact derivatives by a tangent pass stacked into the batch
//!   dimension and a reverse pass over it (equations on [`Mlp`]), batched GEMMs, rayon over
//!   fixed batch chunks with bit-identical results for any thread count.
//! - [`LinearField`]: `f = A z + b`, with hand-written exact derivatives.
//! - [`AutoDiffField`]: a user's `f`, written once generically over a [`DualScalar`], whose
//!   derivatives come from forward-mode dual ([`Dual`]) and hyper-dual ([`HyperDual`])
//!   numbers.
//! - [`CountingField`]: wraps any field and counts its calls ([`FieldStats`]).
//!
//! ```
//! use odeflow::field::{Divergence, Mlp, MlpConfig, VectorField};
//!
//! let mlp = Mlp::<f64>::new(&MlpConfig { dim: 2, hidden: vec![16, 16], ..Default::default() })?;
//! let z = [0.5, -1.0, 2.0, 0.25]; // B = 2 states of d = 2
//! let (mut f, mut q) = ([0.0; 4], [0.0; 2]);
//! let mut ws = mlp.workspace(2);
//! mlp.eval_div(0.3, &z, Divergence::Exact, &mut f, &mut q, None, &mut ws)?;
//!
//! // The exact divergence agrees with a central finite difference of f.
//! let h = 1e-5;
//! let (mut fp, mut fm) = ([0.0; 2], [0.0; 2]);
//! let mut fd = 0.0;
//! for i in 0..2 {
//!     let (mut zp, mut zm) = ([z[0], z[1]], [z[0], z[1]]);
//!     zp[i] += h;
//!     zm[i] -= h;
//!     let mut ws1 = mlp.workspace(1);
//!     mlp.eval(0.3, &zp, &mut fp, &mut ws1)?;
//!     mlp.eval(0.3, &zm, &mut fm, &mut ws1)?;
//!     fd += (fp[i] - fm[i]) / (2.0 * h);
//! }
//! assert!((q[0] - fd).abs() < 1e-8 * (1.0 + fd.abs()));
//! # Ok::<(), odeflow::field::FieldError>(())
//! ```

// Numeric kernels index several parallel slices with one loop variable; iterator zips
// would obscure the equations they implement.
#![allow(clippy::needless_range_loop)]

mod act;
mod autodiff;
mod counting;
mod error;
mod fastmath;
mod gemm;
mod linear;
mod mlp;

use error::check_len;

pub use act::Activation;
pub use autodiff::{AutoDiffField, AutoDiffWorkspace, Dual, DualScalar, HyperDual, ScalarField};
pub use counting::{CountingField, FieldStats};
pub use error::FieldError;
pub use fastmath::FastMath;
pub use gemm::{Gemm, Real};
pub use linear::LinearField;
pub(crate) use mlp::checked_net_params;
#[doc(hidden)]
pub use mlp::set_simd_dispatch;
pub use mlp::{Mlp, MlpConfig, MlpWorkspace, ParamBlock, TimeConditioning, MAX_CHUNK_SIZE};

/// Which divergence term `q_b` a call computes for each sample `b`.
///
/// - `Exact`: `q_b = tr(∂f/∂z)(t, z_b) = Σ_i ∂f_i/∂z_i`.
/// - `Hutchinson(ε)`: `q_b = ε_bᵀ (∂f/∂z)(t, z_b) ε_b` for the caller's noise `ε` (`B × d`,
///   sample-major, same layout as `z`); `E[q] = tr(∂f/∂z)` when `E[εεᵀ] = I` (Gaussian or
///   Rademacher). Hold ε fixed during a solve and pass the same ε to the adjoint.
#[derive(Debug, Clone, Copy)]
pub enum Divergence<'a, T> {
    /// The exact trace, `q_b = tr J_b` (d tangent lanes).
    Exact,
    /// The Hutchinson form `q_b = ε_bᵀ J_b ε_b` for the given noise buffer (`B × d`).
    Hutchinson(&'a [T]),
}

/// The outputs of [`VectorField::vjp_aug`]: the field, the divergence term, and the
/// gradients of `Φ = Σ_b [a_bᵀ f_b + c_b q_b]`.
///
/// All are overwritten. `theta_cot: None` skips the θ-gradient (saves the weight GEMMs).
#[derive(Debug)]
pub struct AugmentedVjp<'a, T> {
    /// `f(t, z_b)`, `B × d`.
    pub f: &'a mut [T],
    /// `q_b` (exact trace or Hutchinson form), length `B`.
    pub q: &'a mut [T],
    /// `∂Φ/∂z_b = a_bᵀ J_b + c_b ∂q_b/∂z_b`, `B × d`.
    pub z_cot: &'a mut [T],
    /// `∂Φ/∂θ = Σ_b [a_bᵀ ∂f_b/∂θ + c_b ∂q_b/∂θ]`, length `n_params`, or `None` to skip.
    pub theta_cot: Option<&'a mut [T]>,
}

/// The RNODE Jacobian term of [`VectorField::vjp_aug_jac`]: the weights `w_b` of
/// `‖J_b V_b‖²` in `Φ`, and the buffer that receives `‖J_b V_b‖²`.
///
/// `V_b` is set by the call's [`Divergence`]: `V_b = I` for [`Divergence::Exact`] (so
/// `‖J_b V_b‖² = ‖J_b‖²_F`, the squared Frobenius norm) and `V_b = ε_b` for
/// [`Divergence::Hutchinson`] (`‖J_b ε_b‖²`, an unbiased estimate of `‖J_b‖²_F` when
/// `E[εεᵀ] = I`): the same quantity as `jac_sq` of [`VectorField::eval_div`].
#[derive(Debug)]
pub struct JacobianTerm<'a, T> {
    /// The weights `w_b`, length `B`.
    pub w: &'a [T],
    /// `‖J_b V_b‖²`, length `B` (overwritten).
    pub jac_sq: &'a mut [T],
}

/// Checks the buffers of a [`VectorField::vjp_aug`]/[`VectorField::vjp_aug_jac`] call on
/// `batch` points of dimension `d` for a field of `n_params` parameters: `a`, `c`, the
/// outputs, the Hutchinson noise and the Jacobian term's `w` and `jac_sq`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_aug_lens<T>(
    batch: usize,
    d: usize,
    n_params: usize,
    div: &Divergence<'_, T>,
    a: &[T],
    c: &[T],
    out: &AugmentedVjp<'_, T>,
    jac: Option<&JacobianTerm<'_, T>>,
) -> Result<(), FieldError> {
    check_len("a", a, batch * d)?;
    check_len("c", c, batch)?;
    check_len("f", out.f, batch * d)?;
    check_len("q", out.q, batch)?;
    check_len("z_cot", out.z_cot, batch * d)?;
    if let Some(th) = &out.theta_cot {
        check_len("theta_cot", th, n_params)?;
    }
    if let Divergence::Hutchinson(e) = div {
        check_len("eps", e, batch * d)?;
    }
    if let Some(j) = jac {
        check_len("w", j.w, batch)?;
        check_len("jac_sq", j.jac_sq, batch)?;
    }
    Ok(())
}

/// A batched vector field `f(t, z; θ): ℝ × ℝᵈ → ℝᵈ` with the derivatives a CNF and its
/// adjoint need.
///
/// Conventions for every method:
/// - `z` is `B × d`, sample-major; `B` is `z.len() / d` (an error if not a whole batch).
/// - Outputs are overwritten (never accumulated), including the θ-cotangent.
/// - Batch-summed quantities (`∂/∂t`, `∂/∂θ`) are `Σ_b` over the samples.
/// - Scratch comes from `ws`, made by [`VectorField::workspace`]; a workspace made for a
///   smaller batch grows on first use (one allocation), never per call after that.
/// - Buffer lengths are checked up front; a mismatch returns [`FieldError`] and writes
///   nothing.
pub trait VectorField<T: Real>: Send + Sync {
    /// Scratch for the calls, one per concurrent caller.
    type Workspace: Send;

    /// The state dimension `d`.
    fn dim(&self) -> usize;

    /// The number of parameters, `|θ|` (0 for fields without parameters).
    fn n_params(&self) -> usize;

    /// The flat parameter vector θ (layout documented by the implementing type).
    fn params(&self) -> &[T];

    /// The flat parameter vector θ, mutably (an optimizer updates it in place).
    fn params_mut(&mut self) -> &mut [T];

    /// A workspace for batches of up to `batch` samples (larger batches grow it once).
    fn workspace(&self, batch: usize) -> Self::Workspace;

    /// Hands back a workspace that is no longer needed, so that a later
    /// [`VectorField::workspace`] call may reuse it instead of allocating (a solve makes one
    /// workspace, and a training loop makes several solves per iteration: fresh buffers of a
    /// few megabytes each time cost their page faults again). The default drops it;
    /// [`Mlp`] keeps a few small ones.
    fn recycle(&self, ws: Self::Workspace) {
        drop(ws);
    }

    /// `f_b = f(t, z_b)` for every sample.
    fn eval(&self, t: T, z: &[T], f: &mut [T], ws: &mut Self::Workspace) -> Result<(), FieldError>;

    /// `f_b = f(t, z_b)` and the divergence term `q_b` (see [`Divergence`]); optionally
    /// `jac_sq_b = ‖J_b V_b‖²_F` with `V_b = I` (exact: the squared Frobenius norm of J) or
    /// `V_b = ε_b` (Hutchinson: `‖J_b ε_b‖²`, an unbiased estimate of `‖J_b‖²_F`, RNODE).
    #[allow(clippy::too_many_arguments)]
    fn eval_div(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        f: &mut [T],
        q: &mut [T],
        jac_sq: Option<&mut [T]>,
        ws: &mut Self::Workspace,
    ) -> Result<(), FieldError>;

    /// `f_b` and the Jacobian–vector product `jv_b = (∂f/∂z)(t, z_b) v_b` (`v`, `jv`: `B × d`).
    fn jvp(
        &self,
        t: T,
        z: &[T],
        v: &[T],
        f: &mut [T],
        jv: &mut [T],
        ws: &mut Self::Workspace,
    ) -> Result<(), FieldError>;

    /// Vector–Jacobian products for cotangents `a` (`B × d`): writes `f_b`,
    /// `z_cot_b = a_bᵀ ∂f/∂z(t, z_b)` and, unless `None`, `theta_cot = Σ_b a_bᵀ ∂f_b/∂θ`
    /// (overwritten); returns `Σ_b a_bᵀ ∂f_b/∂t`.
    #[allow(clippy::too_many_arguments)]
    fn vjp(
        &self,
        t: T,
        z: &[T],
        a: &[T],
        f: &mut [T],
        z_cot: &mut [T],
        theta_cot: Option<&mut [T]>,
        ws: &mut Self::Workspace,
    ) -> Result<T, FieldError>;

    /// The fused forward + reverse pass of the CNF adjoint: for `Φ = Σ_b [a_bᵀ f_b + c_b q_b]`
    /// with `q` as in `div` (same noise as the forward solve), writes `f`, `q`,
    /// `∂Φ/∂z_b` and (unless `None`) `∂Φ/∂θ` into `out`, and returns `∂Φ/∂t`.
    ///
    /// `a`: `B × d`; `c`: length `B`. With `c = 0` this is [`VectorField::vjp`] plus `q`.
    #[allow(clippy::too_many_arguments)]
    fn vjp_aug(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        a: &[T],
        c: &[T],
        out: AugmentedVjp<'_, T>,
        ws: &mut Self::Workspace,
    ) -> Result<T, FieldError>;

    /// [`VectorField::vjp_aug`] with RNODE's Jacobian term: for
    ///
    /// ```text
    /// Φ = Σ_b [a_bᵀ f_b + c_b q_b + w_b ‖J_b V_b‖²]      (J_b = ∂f/∂z at (t, z_b))
    /// ```
    ///
    /// with `q` and `V` as in `div` (`V_b = I` exact, `ε_b` Hutchinson; see
    /// [`JacobianTerm`]), writes `f`, `q`, `∂Φ/∂z_b` and (unless `None`) `∂Φ/∂θ` into `out`,
    /// `‖J_b V_b‖²` into `jac.jac_sq`, and returns `∂Φ/∂t`. With `w = 0` the outputs in `out`
    /// equal [`VectorField::vjp_aug`]'s.
    ///
    /// Its derivative is a reverse pass over the tangent `J V`: `∂(w‖J V‖²)/∂x =
    /// 2w (J V)ᵀ ∂(J V)/∂x`, i.e. the tangent's output cotangent is seeded with `2 w_b J_b V_b`
    /// beside the divergence's `c_b V_b`.
    ///
    /// The default returns [`FieldError::Unsupported`]; [`Mlp`], [`LinearField`],
    /// [`AutoDiffField`] and [`CountingField`] implement it.
    #[allow(clippy::too_many_arguments)]
    fn vjp_aug_jac(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        a: &[T],
        c: &[T],
        jac: JacobianTerm<'_, T>,
        out: AugmentedVjp<'_, T>,
        ws: &mut Self::Workspace,
    ) -> Result<T, FieldError> {
        let _ = (t, z, div, a, c, jac, out, ws);
        Err(FieldError::Unsupported { op: "vjp_aug_jac" })
    }
}

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<X: Send + Sync>() {}
    #[test]
    fn public_types_are_send_sync() {
        assert_send_sync::<super::Mlp<f32>>();
        assert_send_sync::<super::Mlp<f64>>();
        assert_send_sync::<super::MlpWorkspace<f64>>();
        assert_send_sync::<super::LinearField<f64>>();
        assert_send_sync::<super::MlpConfig>();
        assert_send_sync::<super::FieldError>();
        assert_send_sync::<super::CountingField<super::Mlp<f32>>>();
        assert_send_sync::<super::AutoDiffWorkspace<f64>>();
    }
}
