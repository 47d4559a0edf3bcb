//! Gradients of losses through ODE solves: the continuous adjoint (backsolve or
//! checkpointed) and the exact gradient of the discrete solution.
//!
//! # The adjoint system
//!
//! A CNF block carries the augmented state `s = (z, ℓ)` with the field `F = (f, −q)`
//! (`q = tr ∂f/∂z` or the Hutchinson form `εᵀ(∂f/∂z)ε`, the same ε forward and backward)
//! from `t = 0` to `T`. For a loss `L(z(T), ℓ(T))` the cotangents `a_z = ∂L/∂z(t)`,
//! `a_ℓ = ∂L/∂ℓ(t)` and the parameter gradient `g` solve, backward from `T` to 0
//! (FFJORD's signs; `math.md`):
//!
//! ```text
//! dz/dt   = f(t, z)                          (backsolve only: z reconstructed)
//! da_z/dt = −∂Φ/∂z,   da_ℓ/dt = 0,   dg/dt = −∂Φ/∂θ,   Φ = a_zᵀ f(t, z) − a_ℓᵀ q(t, z)
//! a_z(T) = ∂L/∂z(T),  a_ℓ = ∂L/∂ℓ(T),  g(T) = 0
//! ⇒ ∂L/∂θ = g(0),  ∂L/∂x = a_z(0),  ∂L/∂T = a_z(T)ᵀ f(T, z(T)) − a_ℓᵀ q(T, z(T)).
//! ```
//!
//! `∂Φ/∂z`, `∂Φ/∂θ`, `f` and `q` come from one fused call,
//! [`VectorField::vjp_aug`]. Since `F` does not depend on ℓ, `a_ℓ` is constant and
//! neither ℓ nor `a_ℓ` is integrated: the backsolve state is the flat buffer
//! `[z (B·d) | a_z (B·d) | g (|θ|)]`, another [`OdeSystem`](crate::solvers::OdeSystem)
//! driven by the same [`Integrator`] backward in time. Chained
//! blocks are passed in reverse, block `k` from the forward's `z(T_k)`, carrying `a_z` (and
//! `a_ℓ`). A plain neural ODE (no ℓ) has `Φ = a_zᵀ f`; with observations at times `t_k` the
//! adjoint jumps by `∂L/∂z(t_k)` as the backward solve passes `t_k`, and
//! `∂L/∂t_k = (∂L/∂z(t_k))ᵀ f(t_k, z(t_k))`, `∂L/∂t_0 = −a_z(t_0)ᵀ f(t_0, z_0)`. A solve
//! that ends where an event function `g(t, z)` crosses zero ([`ode_event_grad`]) starts
//! the adjoint from `a* = L_z − ((L_zᵀ f + L_t)/ġ) g_z`, which carries the event time's own
//! dependence on θ, `z_0` and `t_0`.
//! `f(T, z(T))` and `q(T, z(T))` (and `f(t_k, z(t_k))`) are the derivative the forward
//! solve's last stage computed at that end point
//! ([`Integrator::end_derivative`](crate::solvers::Integrator::end_derivative)), kept with
//! the tape: the time gradients cost no evaluation there, which was one field call of the
//! ~29 of a W1 gradient (measured: 19.5 → 18.7 ms, medians of 8 alternated runs; the
//! evaluation also allocated a fresh field workspace).
//!
//! ℓ (forward) and `g` (backward) are quadratures, the systems' passive components: at a
//! stage whose derivative reaches only later stage states (Dormand–Prince 5(4)'s second,
//! DOP853's second to fifth: `b_i = 0` and no weight in the error estimate or the dense
//! output) the solver asks only for the rest
//! ([`OdeSystem::rhs_active_part`](crate::solvers::OdeSystem::rhs_active_part)), so the
//! forward evaluates `f` without the divergence there (a third of the exact 2-D trace's
//! cost) and the backward a VJP without the weight gradient (two thirds), and the discrete
//! replay takes a VJP of `f` alone at such a stage. The results are bit-identical; the
//! statistics count those calls (`n_rhs_active`). Measured on the W1 gradient after 300
//! iterations (checkpointed, dopri5 1e-5): 56.3 → 53.5 ms, medians of 8 alternated pairs of
//! 40-gradient runs on a noisy machine; the W2 log-density with DOP853 16–22% faster.
//!
//! # Strategies ([`Strategy`]) and what each trades
//!
//! | strategy | backward state | memory | accuracy |
//! |---|---|---|---|
//! | [`Strategy::Backsolve`] | `[z, a_z, g]` | O(1) in the steps | `z` is re-solved backward: unstable for contracting flows (dz/dt = −5z³ over T = 4 at tol 1e-4 blows up backward and fails with a step-size underflow; see the tests) |
//! | [`Strategy::Checkpointed`] | `[a_z, g]` | the forward's dense output, `(p+1)·B·d` per step | `z(t)` is read from the forward's own interpolant (order 4 for dopri5): no drift, and a shorter backward state |
//! | [`Strategy::Discrete`] | — (reverse sweep) | one `B·d` state per step | the exact gradient of the computed solution (discretise-then-optimise), the reference the other two converge to |
//!
//! The continuous strategies give the gradient of the exact flow to the backward tolerance;
//! the discrete one gives the gradient of the forward's discrete map to rounding, with the
//! recorded step sizes held constant (as is standard), except that the last step of a
//! segment ends at its end time (so `∂L/∂T` is that of the computed solution too).
//!
//! The **seminorm** ([`AdjointConfig::seminorm`], Kidger et al. 2021) leaves `g` out of the
//! backward error norm: `g` does not feed back into the dynamics, so its error does not
//! grow. It is *off* by default, because measured here it is not never-worse: the solver's
//! norm is one RMS over the chosen components, and with `|θ| ≫ 2·B·d` the full RMS over
//! `[z, a_z, g]` is already diluted by the many well-resolved components of `g` (the effect
//! the seminorm has against torchdiffeq's max-over-tensors norm). On FFJORD's toy net
//! (peer checkpoints at init, 300 and 1000 iterations; B = 64 and 512; tol 1e-3 … 1e-7) the
//! seminorm took fewer backward evaluations in 6 of 36 runs, the same in 17 and more in 13
//! (e.g. 50 vs 38 at 1000 iterations, B = 64, tol 1e-5), and was the more accurate in 19;
//! `tests/adjoint.rs` (`seminorm_…`) keeps a smaller version of this measurement. Where the
//! parameter cotangent is what limits the backward steps it does cut them: a small neural ODE
//! observed along a trajectory, checkpointed, 66 → 60, 84 → 66 and 102 → 78 backward
//! evaluations at 1e-6, 1e-7, 1e-8, with the gradient within the tolerance but 3–23× less
//! accurate than the full norm's (`seminorm_cuts_backward_evaluations_of_a_neural_ode`).
//!
//! # Accuracy against work, beside diffrax
//!
//! `examples/grad_work_precision.rs` sets the W1 gradient (FFJORD's toy net, batch 512,
//! dopri5, f64) beside diffrax's on the same four batches, as the relative 2-norm error of
//! the θ-gradient against a tight reference; at tight tolerances the two libraries' gradients
//! agree to 2e-10 (`tests/adjoint.rs`, `nll_gradient_matches_diffrax_reference`). After 300
//! training iterations (errors and NFE: means over the batches; time of one gradient: the
//! range over six alternated pairs of runs, each the median over the batches; 2026-11-29,
//! a noisy machine):
//!
//! | setting | error | NFE fwd / bwd | time |
//! |---|---|---|---|
//! | diffrax backsolve 1e-5 | 8.6e-5 | 55 / 37 | 115–145 ms |
//! | diffrax backsolve 2e-5 | 1.8e-4 | 55 / 32.5 | 102–115 ms |
//! | odeflow backsolve 1e-5 | 1.0e-4 | 50 / 32 | 44–56 ms |
//! | odeflow backsolve 2e-5 | 1.6e-4 | 38 / 30.5 | 39–46 ms |
//! | odeflow checkpointed 1e-5 | 1.1e-4 | 50 / 32 | 42–81 ms (median 46) |
//! | odeflow checkpointed, forward 5e-5, backward 5e-6 | 7.6e-5 | 32 / 32 | 39–44 ms |
//!
//! Per pair, the last row against diffrax's 1e-5: 2.69–3.33× (median 3.0×).
//!
//! After 300 iterations ℓ, not `z`, limits the forward's steps. Leaving it out of the
//! forward's error norm ([`AdjointConfig::forward_seminorm`]) takes 38 instead of 50 forward
//! evaluations at 1e-5 with the checkpointed gradient as accurate (1.06e-4 against 1.14e-4)
//! and the loss less so (1.1e-5 against 4.2e-6). Forward 2e-5 / backward 5e-6 with it gives
//! 7.8e-5 at 26 / 32 NFE, the cheapest setting measured at the accuracy of diffrax's 1e-5:
//! 35.9–39.4 ms against diffrax's 112.9–117.4 ms (2.91–3.25×, three more alternated pairs).
//! Backsolve and the discrete gradient lose accuracy with it (see its docs).
//!
//! With [`Strategy::Checkpointed`] the gradient's error follows the backward tolerance
//! (forward 1e-5, 2e-5 or 5e-5 with backward 5e-6: 6.9e-5, 6.9e-5, 7.6e-5), while the forward
//! tolerance sets the loss's error (4e-6 at 1e-5, 3e-5 at 5e-5) and the forward's cost: a
//! looser forward and a tighter backward solve
//! ([`AdjointConfig::with_backward_tolerances`], `odeflow train --adjoint-rtol`) is both
//! more accurate and cheaper than one tolerance for both. FFJORD's 1000-iteration toy run
//! (`examples/train_toy.rs`, checkpointed) reaches the same test NLL either way, 6% faster
//! with the split (46.4 vs 49.6 s, one run each). With
//! [`Strategy::Backsolve`] the forward tolerance bounds the gradient's error too (`z` is
//! re-solved backward from the forward's end state): forward 5e-5 gives 5.6–6.5e-4 whatever
//! the backward tolerance (2e-6 to 5e-5).
//!
//! ```
//! use odeflow::adjoint::{cnf_nll_grad, AdjointConfig};
//! use odeflow::cnf::{Cnf, CnfConfig};
//! use odeflow::field::LinearField;
//! use rand::SeedableRng;
//!
//! // f = A z with A = diag(0.3, −0.4): log p(x) = log N(e^{AT} x) + T tr A.
//! let field = LinearField::new(&[0.3, 0.0, 0.0, -0.4], &[0.0, 0.0]).unwrap();
//! let cfg = CnfConfig { rtol: 1e-10, atol: 1e-10, ..Default::default() };
//! let cnf = Cnf::new(field, 0.5, cfg).unwrap();
//! let x = [0.7, -1.2];
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! let (nll, grad) = cnf_nll_grad(&cnf, &x, &mut rng, &AdjointConfig::default()).unwrap();
//! // ∂L/∂T = uᵀ A u − tr A with u = e^{AT} x.
//! let u = [0.7 * (0.15f64).exp(), -1.2 * (-0.2f64).exp()];
//! let dl_dt = 0.3 * u[0] * u[0] - 0.4 * u[1] * u[1] + 0.1;
//! assert!((grad.t_end[0] - dl_dt).abs() < 1e-8);
//! // ∂L/∂A₁₁ = u₁ x₁ e^{0.3 T} T − T (the Fréchet derivative of e^{AT}, minus ∂(T tr A)).
//! assert!((grad.theta[0][0] - (u[0] * 0.7 * (0.15f64).exp() * 0.5 - 0.5)).abs() < 1e-8);
//! assert!(nll.is_finite() && grad.stats.backward.n_rhs > 0);
//! ```

mod engine;
mod event;

use rand::Rng;

use odeflow_solvers::{Integrator, Method, SolveError, SolveOptions, Stats};

use crate::cnf::{std_normal_log_prob, Cnf, CnfConfig};
use crate::error::{batch_size, check_finite, check_len, Error};
use crate::field::{Real, VectorField};
use crate::pool::on_pool;
use engine::{backward_segment, end_rate, forward_segment, Fail, Seg, SegTape};
pub use event::{
    ode_event_forward, ode_event_grad, EventFunction, EventGradient, EventOdeSpec, EventTape,
    HyperplaneEvent,
};

/// How the backward pass is computed (see the [module docs](self) for the trade-offs).
/// In flow specs (serde) the names are lowercase: `backsolve`, `checkpointed`, `discrete`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Solve `[z, a_z, g]` backward from the forward's end state: O(1) memory in the
    /// number of steps; `z` is reconstructed backward.
    #[default]
    Backsolve,
    /// Keep the forward's dense output and solve `[a_z, g]` backward with `z(t)` read from
    /// it: memory O(steps), no drift of `z`.
    Checkpointed,
    /// Reverse-mode through the forward's own Runge–Kutta steps: the exact gradient of the
    /// discrete solution (step sizes held constant); memory O(steps).
    Discrete,
}

/// The settings of a gradient computation: a plain struct with `Default`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdjointConfig<T> {
    /// The strategy. Default [`Strategy::Backsolve`].
    pub strategy: Strategy,
    /// Leave the parameter cotangent `g` out of the backward error norm (a seminorm):
    /// `‖e‖ = RMS_i∈(z, a_z) e_i/(atol + rtol·|y_i|)` instead of the RMS over `(z, a_z, g)`.
    /// Default `false` (see the [module docs](self) for the measurement). Ignored by
    /// [`Strategy::Discrete`].
    pub seminorm: bool,
    /// Leave ℓ out of the forward solve's error norm (a CNF's log-density; a seminorm on
    /// the forward): the steps are chosen for `z` alone. Meant for
    /// [`Strategy::Checkpointed`], whose backward pass reads only `z(t)` from the forward
    /// (ℓ's cotangent `a_ℓ` is constant), so that ℓ's error reaches the loss value and not
    /// the gradient; backsolve (which re-solves `z` from the forward's end) and the discrete
    /// gradient lose accuracy with the larger steps. Default `false`: the loss then has the
    /// accuracy the tolerance asks for, as in the peers (see the [module docs](self) for
    /// the measurement). No effect on a neural ODE (no ℓ).
    pub forward_seminorm: bool,
    /// The backward method; `None` (default): the forward's. A fixed-step method needs a
    /// step size (`h_fixed`) in the backward options, or it is refused before any solve.
    /// Not used by [`Strategy::Discrete`] (it replays the forward's steps).
    pub method: Option<Method>,
    /// The backward solver options (rtol, atol, max steps, …); `None` (default): the
    /// forward's (for a CNF, [`CnfConfig::solve_options`](crate::cnf::CnfConfig::solve_options)).
    pub options: Option<SolveOptions<T>>,
}

impl<T> Default for AdjointConfig<T> {
    fn default() -> Self {
        AdjointConfig {
            strategy: Strategy::Backsolve,
            seminorm: false,
            forward_seminorm: false,
            method: None,
            options: None,
        }
    }
}

impl<T> AdjointConfig<T> {
    /// The default settings with the given strategy.
    pub fn with_strategy(strategy: Strategy) -> Self {
        AdjointConfig { strategy, ..Default::default() }
    }
}

impl<T: Real> AdjointConfig<T> {
    /// These settings with the backward solve at its own tolerances (torchdiffeq's
    /// `adjoint_rtol`, `adjoint_atol`): [`AdjointConfig::options`] becomes the solver options
    /// of `cnf` (the CNF's settings) with `rtol` and `atol` in their place, each `None`
    /// keeping the forward's; with both `None` the settings are returned unchanged. See the
    /// [module docs](self) for when a split pays.
    ///
    /// ```
    /// use odeflow::adjoint::{AdjointConfig, Strategy};
    /// use odeflow::cnf::CnfConfig;
    ///
    /// let cnf = CnfConfig::<f64> { rtol: 5e-5, atol: 5e-5, ..Default::default() };
    /// let adj = AdjointConfig::with_strategy(Strategy::Checkpointed)
    ///     .with_backward_tolerances(&cnf, Some(5e-6), None);
    /// let opts = adj.options.unwrap();
    /// assert_eq!((opts.rtol, opts.atol), (5e-6, 5e-5.into()));
    /// ```
    pub fn with_backward_tolerances(
        mut self,
        cnf: &CnfConfig<T>,
        rtol: Option<T>,
        atol: Option<T>,
    ) -> Self {
        if rtol.is_some() || atol.is_some() {
            let mut opts = cnf.solve_options();
            opts.rtol = rtol.unwrap_or(cnf.rtol);
            opts.atol = atol.unwrap_or(cnf.atol).into();
            self.options = Some(opts);
        }
        self
    }

    /// Refuses, before any solve, a fixed-step backward method ([`AdjointConfig::method`])
    /// that would find no step size in the backward options (its own, or the forward's
    /// `forward_opts`); the discrete strategy replays the forward's steps and takes neither.
    pub(crate) fn check_backward_step_size(
        &self,
        forward_method: Method,
        forward_opts: &SolveOptions<T>,
    ) -> Result<(), Error> {
        let method = self.method.unwrap_or(forward_method);
        let h_fixed = self.options.as_ref().unwrap_or(forward_opts).h_fixed;
        if self.strategy != Strategy::Discrete && !method.is_adaptive() && h_fixed.is_none() {
            let source = SolveError::MissingStepSize { method: method.name() };
            return Err(Error::AdjointOptions { source });
        }
        Ok(())
    }

    /// Checks the backward solver options' ranges (a tolerance ≤ 0 or not finite, a bad
    /// step bound), so that they are refused before any solve; the gradient functions call
    /// it first.
    pub fn validate(&self) -> Result<(), Error> {
        match &self.options {
            Some(opts) => opts.validate().map_err(|source| Error::AdjointOptions { source }),
            None => Ok(()),
        }
    }
}

/// Work statistics of one gradient: forward and backward solves, and field calls outside
/// the solvers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GradStats {
    /// The forward solve(s): right-hand-side calls (each a field evaluation with the
    /// divergence, but the `n_rhs_active` of them that evaluate `f` alone) and steps.
    pub forward: Stats,
    /// The backward pass: right-hand-side calls of the adjoint system (each one fused
    /// [`VectorField::vjp_aug`] or [`VectorField::vjp`]; the `n_rhs_active` of them without
    /// the parameter cotangent) and its steps; for [`Strategy::Discrete`], one VJP per
    /// replayed stage (`n_rhs_active`: those of `f` alone, at stages with `b_i = 0`) and
    /// one accepted step per replayed step.
    pub backward: Stats,
    /// Field evaluations outside the solvers: the discrete replay's forward stages and the
    /// end-point evaluations for the time gradients that the forward solve has not already
    /// made (an adaptive forward solve ends with `f` at its end time, which gives `∂L/∂T`
    /// and `∂L/∂t_k`; `∂L/∂t0` of a neural ODE takes one evaluation).
    pub extra_evals: usize,
    /// Numbers kept by the forward pass for the backward one (end states, checkpoints).
    pub tape_values: usize,
}

/// Gradients of a loss through a CNF (from [`CnfTape::backward`] or [`cnf_nll_grad`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CnfGradient<T> {
    /// `∂L/∂θ_k` for each block `k` (layout of the block's [`VectorField::params`]).
    pub theta: Vec<Vec<T>>,
    /// `∂L/∂T_k = a_z(T_k)ᵀ f_k(T_k, z) − a_ℓᵀ q_k(T_k, z)` for each block.
    pub t_end: Vec<T>,
    /// `∂L/∂x` (`B × d`).
    pub x: Vec<T>,
    /// Work statistics.
    pub stats: GradStats,
}

/// The forward pass of a CNF kept for the backward one: `z(T)`, `ℓ(T)` and, per strategy,
/// the block end states and checkpoints. Made by [`cnf_forward`].
#[derive(Debug)]
pub struct CnfTape<'a, T: Real, F> {
    cnf: &'a Cnf<T, F>,
    adj: AdjointConfig<T>,
    b: usize,
    eps: Vec<T>,
    z: Vec<T>,
    delta_logp: Vec<T>,
    segs: Vec<SegTape<T>>,
    forward: Stats,
}

/// Runs the forward log-density solve of `x` (`B × d`) through every block, keeping what
/// `adj.strategy` needs; the Hutchinson noise (one draw per block, as
/// [`Cnf::log_prob_into`] draws it) comes from `rng` and is reused by the backward pass.
///
/// The batch is always solved as one state with one step size (whatever
/// [`CnfConfig::mode`](crate::cnf::CnfConfig::mode)).
pub fn cnf_forward<'a, T: Real, F: VectorField<T>, R: Rng + ?Sized>(
    cnf: &'a Cnf<T, F>,
    x: &[T],
    rng: &mut R,
    adj: &AdjointConfig<T>,
) -> Result<CnfTape<'a, T, F>, Error> {
    let b = check_forward_input(cnf, x)?;
    let eps = draw_noise(cnf.config().trace, rng, cnf.blocks().len(), b, cnf.dim());
    cnf_forward_noise(cnf, x, eps, adj)
}

/// The batch size of `x`, after checking it (finite, whole points) and the blocks' times.
fn check_forward_input<T: Real, F: VectorField<T>>(
    cnf: &Cnf<T, F>,
    x: &[T],
) -> Result<usize, Error> {
    let d = cnf.dim();
    let b = batch_size(x.len(), d)?;
    check_finite(x, d)?;
    for blk in cnf.blocks() {
        if !(blk.t_end.is_finite() && blk.t_end > T::zero()) {
            return Err(Error::InvalidConfig {
                name: "t_end",
                value: blk.t_end.to_f64c(),
                expected: "finite and > 0",
            });
        }
    }
    Ok(b)
}

/// The Hutchinson noise of a forward solve as [`cnf_forward`] draws it: one `B × dim` draw
/// per block, concatenated (empty for the exact trace).
pub(crate) fn draw_noise<T: Real, R: Rng + ?Sized>(
    trace: crate::trace::TraceEstimator,
    rng: &mut R,
    n_blocks: usize,
    b: usize,
    dim: usize,
) -> Vec<T> {
    let mut eps = Vec::new();
    let mut one = Vec::new();
    for _ in 0..n_blocks {
        trace.draw(rng, b, dim, &mut one);
        eps.extend_from_slice(&one);
    }
    eps
}

/// [`cnf_forward`] with the noise given (from [`draw_noise`], `blocks × B × d`, or empty for
/// the exact trace).
pub(crate) fn cnf_forward_noise<'a, T: Real, F: VectorField<T>>(
    cnf: &'a Cnf<T, F>,
    x: &[T],
    eps: Vec<T>,
    adj: &AdjointConfig<T>,
) -> Result<CnfTape<'a, T, F>, Error> {
    on_pool(|| cnf_forward_here(cnf, x, eps, adj))
}

/// [`cnf_forward_noise`] on the calling thread.
fn cnf_forward_here<'a, T: Real, F: VectorField<T>>(
    cnf: &'a Cnf<T, F>,
    x: &[T],
    eps: Vec<T>,
    adj: &AdjointConfig<T>,
) -> Result<CnfTape<'a, T, F>, Error> {
    adj.validate()?;
    let d = cnf.dim();
    let b = check_forward_input(cnf, x)?;
    let cfg = cnf.config();
    adj.check_backward_step_size(cfg.method, &cfg.solve_options())?;
    let want = match cfg.trace {
        crate::trace::TraceEstimator::Exact => 0,
        _ => cnf.blocks().len() * b * d,
    };
    check_len("eps", eps.len(), want)?;
    let n = b * d;
    let mut integ =
        cnf.take_integrator(n + b).map_err(|source| Error::Solve { block: 0, source })?;
    let mut state = vec![T::zero(); n + b];
    state[..n].copy_from_slice(x);
    let mut segs = Vec::with_capacity(cnf.blocks().len());
    let mut forward = Stats::default();
    for (k, blk) in cnf.blocks().iter().enumerate() {
        let seg = Seg { field: &blk.field, div: Some(block_div(cnf, &eps, k, n)), b };
        let (s, tape) = forward_segment(seg, T::zero(), blk.t_end, &mut state, &mut integ, adj)
            .map_err(|e| fail(e, k, false))?;
        forward += s;
        segs.push(tape);
    }
    cnf.give_integrator(integ);
    Ok(CnfTape {
        cnf,
        adj: adj.clone(),
        b,
        eps,
        z: state[..n].to_vec(),
        delta_logp: state[n..].to_vec(),
        segs,
        forward,
    })
}

fn block_div<'e, T: Real, F: VectorField<T>>(
    cnf: &Cnf<T, F>,
    eps: &'e [T],
    k: usize,
    n: usize,
) -> crate::field::Divergence<'e, T> {
    let e = if eps.is_empty() { eps } else { &eps[k * n..(k + 1) * n] };
    cnf.config().trace.divergence(e)
}

fn fail(e: Fail, segment: usize, backward: bool) -> Error {
    match e {
        Fail::Field(e) => Error::Field(e),
        Fail::Solve(source) if backward => Error::AdjointSolve { segment, source },
        Fail::Solve(source) => Error::Solve { block: segment, source },
    }
}

fn check_grad<T: Real>(what: &'static str, segment: usize, g: &[T]) -> Result<(), Error> {
    match g.iter().position(|v| !v.is_finite()) {
        Some(index) => {
            Err(Error::NonFiniteGradient { what, segment, index, value: g[index].to_f64c() })
        }
        None => Ok(()),
    }
}

impl<T: Real, F: VectorField<T>> CnfTape<'_, T, F> {
    /// `z(T)` (`B × d`), the latent end states.
    pub fn z(&self) -> &[T] {
        &self.z
    }

    /// `ℓ(T)` (length B), so `log p(x) = log N(z(T)) − ℓ(T)`.
    pub fn delta_logp(&self) -> &[T] {
        &self.delta_logp
    }

    /// `log p(x_b) = log N(z_b(T); 0, I) − ℓ_b(T)` for every point.
    pub fn log_prob(&self) -> Vec<T> {
        let d = self.cnf.dim();
        self.z
            .chunks_exact(d)
            .zip(&self.delta_logp)
            .map(|(z, &l)| std_normal_log_prob(z) - l)
            .collect()
    }

    /// The forward statistics.
    pub fn forward_stats(&self) -> Stats {
        self.forward
    }

    /// The gradients of a loss `L(z(T), ℓ(T))` given `∂L/∂z(T)` (`B × d`) and `∂L/∂ℓ(T)`
    /// (length B): solves the adjoint system backward through the blocks (see the
    /// [module docs](self)).
    ///
    /// Errors: a buffer of the wrong length or a non-finite cotangent; a backward solve
    /// that fails ([`Error::AdjointSolve`], with its t and h); a gradient that comes out
    /// non-finite ([`Error::NonFiniteGradient`]).
    pub fn backward(&self, dl_dz: &[T], dl_dl: &[T]) -> Result<CnfGradient<T>, Error> {
        on_pool(|| self.backward_here(dl_dz, dl_dl))
    }

    /// [`CnfTape::backward`] on the calling thread.
    fn backward_here(&self, dl_dz: &[T], dl_dl: &[T]) -> Result<CnfGradient<T>, Error> {
        let d = self.cnf.dim();
        let (b, n) = (self.b, self.b * d);
        check_len("dl_dz", dl_dz.len(), n)?;
        check_len("dl_dl", dl_dl.len(), b)?;
        check_finite(dl_dz, d)?;
        check_finite(dl_dl, 1)?;
        let cfg = self.cnf.config();
        // The discrete replay takes the forward's tableau from the tape and no backward
        // settings: its (unused) integrator is the forward's kind.
        let own = self.adj.strategy != Strategy::Discrete;
        let method = self.adj.method.filter(|_| own).unwrap_or(cfg.method);
        let opts = self.adj.options.clone().filter(|_| own).unwrap_or_else(|| cfg.solve_options());
        // The adjoint state's length, to size the integrator (the discrete replay uses none).
        let state_len = match self.adj.strategy {
            Strategy::Backsolve => 2 * n + self.cnf.blocks()[0].field.n_params(),
            Strategy::Checkpointed => n + self.cnf.blocks()[0].field.n_params(),
            Strategy::Discrete => 0,
        };
        let mut integ = self
            .cnf
            .take_integrator_with(method, opts, state_len)
            .map_err(|source| Error::AdjointSolve { segment: 0, source })?;
        let nb = self.cnf.blocks().len();
        let mut a_z = dl_dz.to_vec();
        let mut theta: Vec<Vec<T>> = Vec::with_capacity(nb);
        let mut t_end = vec![T::zero(); nb];
        let mut stats = GradStats { forward: self.forward, ..Default::default() };
        for (k, blk) in self.cnf.blocks().iter().enumerate().rev() {
            let seg = Seg { field: &blk.field, div: Some(block_div(self.cnf, &self.eps, k, n)), b };
            let tape = &self.segs[k];
            stats.tape_values += tape.values();
            if self.adj.strategy != Strategy::Discrete {
                let known = tape.f_end.as_deref();
                let (rate, evaluated) = end_rate(seg, blk.t_end, &tape.z_end, known, &a_z, dl_dl)
                    .map_err(|e| fail(e, k, true))?;
                t_end[k] = rate;
                stats.extra_evals += usize::from(evaluated);
            }
            let mut g = vec![T::zero(); blk.field.n_params()];
            let out = backward_segment(seg, tape, &mut a_z, dl_dl, &mut g, &self.adj, &mut integ)
                .map_err(|e| fail(e, k, true))?;
            if self.adj.strategy == Strategy::Discrete {
                t_end[k] = out.dt_b;
            }
            stats.backward += out.stats;
            stats.extra_evals += out.extra_evals;
            check_grad("theta", k, &g)?;
            theta.push(g);
        }
        self.cnf.give_integrator(integ);
        theta.reverse();
        check_grad("t_end", 0, &t_end)?;
        check_grad("x", 0, &a_z)?;
        Ok(CnfGradient { theta, t_end, x: a_z, stats })
    }
}

/// The mean negative log-likelihood `L = −(1/B) Σ_b log p(x_b)` of the batch `x` and its
/// gradients (θ and T of every block, `x`): one forward solve and one backward pass with
/// `∂L/∂z(T) = z(T)/B`, `∂L/∂ℓ(T) = 1/B`. The noise (Hutchinson) comes from `rng`.
pub fn cnf_nll_grad<T: Real, F: VectorField<T>, R: Rng + ?Sized>(
    cnf: &Cnf<T, F>,
    x: &[T],
    rng: &mut R,
    adj: &AdjointConfig<T>,
) -> Result<(T, CnfGradient<T>), Error> {
    if x.is_empty() {
        // The mean over no points is not a number.
        return Err(Error::InvalidConfig {
            name: "batch",
            value: 0.0,
            expected: "at least one point (the loss is a mean over the batch)",
        });
    }
    let tape = cnf_forward(cnf, x, rng, adj)?;
    let bf = T::from_usize(tape.b).unwrap_or_else(T::one);
    let nll = -tape.log_prob().iter().fold(T::zero(), |s, &v| s + v) / bf;
    let dl_dz: Vec<T> = tape.z.iter().map(|&z| z / bf).collect();
    let dl_dl = vec![T::one() / bf; tape.b];
    let grad = tape.backward(&dl_dz, &dl_dl)?;
    Ok((nll, grad))
}

/// A neural-ODE solve `dz/dt = f(t, z; θ)` from `z(t0)` observed at `t_obs`.
#[derive(Debug, Clone, PartialEq)]
pub struct OdeSpec<T> {
    /// The initial time.
    pub t0: T,
    /// The observation times, monotone in the direction of integration (either way), none
    /// before `t0`; at least one. Repeats (and `t0` itself) are allowed.
    pub t_obs: Vec<T>,
    /// The forward method.
    pub method: Method,
    /// The forward solver options.
    pub options: SolveOptions<T>,
}

/// Gradients of a loss on the observed states of a neural ODE.
#[derive(Debug, Clone, PartialEq)]
pub struct OdeGradient<T> {
    /// `∂L/∂θ`.
    pub theta: Vec<T>,
    /// `∂L/∂z(t0)` (`B × d`).
    pub y0: Vec<T>,
    /// `∂L/∂t0 = −a_z(t0)ᵀ f(t0, z(t0))`.
    pub t0: T,
    /// `∂L/∂t_k = (∂L/∂z(t_k))ᵀ f(t_k, z(t_k))`, one per observation.
    pub t_obs: Vec<T>,
    /// Work statistics.
    pub stats: GradStats,
}

/// The forward pass of a neural ODE kept for the backward one. Made by [`ode_forward`].
#[derive(Debug)]
pub struct OdeTape<'a, T, F> {
    field: &'a F,
    spec: OdeSpec<T>,
    adj: AdjointConfig<T>,
    b: usize,
    y0: Vec<T>,
    states: Vec<T>,
    segs: Vec<SegTape<T>>,
    forward: Stats,
}

/// Solves `dz/dt = f(t, z)` from `y0` (`B × d`) at `spec.t0` through the observation
/// times (one solve per interval, so every `t_k` is a step end), keeping what
/// `adj.strategy` needs.
pub fn ode_forward<'a, T: Real, F: VectorField<T>>(
    field: &'a F,
    spec: &OdeSpec<T>,
    y0: &[T],
    adj: &AdjointConfig<T>,
) -> Result<OdeTape<'a, T, F>, Error> {
    on_pool(|| ode_forward_here(field, spec, y0, adj))
}

/// [`ode_forward`] on the calling thread.
fn ode_forward_here<'a, T: Real, F: VectorField<T>>(
    field: &'a F,
    spec: &OdeSpec<T>,
    y0: &[T],
    adj: &AdjointConfig<T>,
) -> Result<OdeTape<'a, T, F>, Error> {
    adj.validate()?;
    adj.check_backward_step_size(spec.method, &spec.options)?;
    let d = field.dim();
    let b = batch_size(y0.len(), d)?;
    check_finite(y0, d)?;
    let invalid = |t: T| Error::InvalidConfig {
        name: "t_obs",
        value: t.to_f64c(),
        expected: "finite, monotone in the direction of integration, none before t0",
    };
    let Some(&last) = spec.t_obs.last() else {
        return Err(Error::InvalidConfig { name: "t_obs", value: 0.0, expected: "at least one" });
    };
    if !spec.t0.is_finite() {
        return Err(invalid(spec.t0));
    }
    let dir = if last >= spec.t0 { T::one() } else { -T::one() };
    let mut prev = spec.t0;
    for &t in &spec.t_obs {
        if !t.is_finite() || (t - prev) * dir < T::zero() {
            return Err(invalid(t));
        }
        prev = t;
    }
    let n = b * d;
    let mut integ = Integrator::new(spec.method, spec.options.clone())
        .map_err(|source| Error::Solve { block: 0, source })?;
    integ.reserve(n).map_err(|source| Error::Solve { block: 0, source })?;
    let mut state = y0.to_vec();
    let mut states = Vec::with_capacity(spec.t_obs.len() * n);
    let mut segs = Vec::with_capacity(spec.t_obs.len());
    let mut forward = Stats::default();
    let mut t_a = spec.t0;
    let seg = Seg { field, div: None, b };
    for (k, &t_b) in spec.t_obs.iter().enumerate() {
        let (s, tape) = forward_segment(seg, t_a, t_b, &mut state, &mut integ, adj)
            .map_err(|e| fail(e, k, false))?;
        forward += s;
        states.extend_from_slice(&state);
        segs.push(tape);
        t_a = t_b;
    }
    Ok(OdeTape {
        field,
        spec: spec.clone(),
        adj: adj.clone(),
        b,
        y0: y0.to_vec(),
        states,
        segs,
        forward,
    })
}

impl<T: Real, F: VectorField<T>> OdeTape<'_, T, F> {
    /// The states at the observation times, `t_obs.len() × B × d`.
    pub fn states(&self) -> &[T] {
        &self.states
    }

    /// The forward statistics.
    pub fn forward_stats(&self) -> Stats {
        self.forward
    }

    /// The gradients of a loss `L(z(t_1), …, z(t_K))` given `∂L/∂z(t_k)` for every
    /// observation (`K × B × d`, the layout of [`OdeTape::states`]): the adjoint jumps by
    /// `∂L/∂z(t_k)` at each `t_k` and is solved backward between them.
    pub fn backward(&self, dl_dz: &[T]) -> Result<OdeGradient<T>, Error> {
        on_pool(|| self.backward_here(dl_dz))
    }

    /// [`OdeTape::backward`] on the calling thread.
    fn backward_here(&self, dl_dz: &[T]) -> Result<OdeGradient<T>, Error> {
        let d = self.field.dim();
        let (b, n) = (self.b, self.b * d);
        let k_obs = self.spec.t_obs.len();
        check_len("dl_dz", dl_dz.len(), k_obs * n)?;
        check_finite(dl_dz, d)?;
        let discrete = self.adj.strategy == Strategy::Discrete;
        // As for a CNF: the discrete replay takes no backward settings.
        let method = self.adj.method.filter(|_| !discrete).unwrap_or(self.spec.method);
        let opts = self.adj.options.clone().filter(|_| !discrete);
        let opts = opts.unwrap_or_else(|| self.spec.options.clone());
        let mut integ = Integrator::new(method, opts)
            .map_err(|source| Error::AdjointSolve { segment: 0, source })?;
        let seg = Seg { field: self.field, div: None, b };
        let mut a_z = vec![T::zero(); n];
        let mut g = vec![T::zero(); self.field.n_params()];
        let mut t_obs = vec![T::zero(); k_obs];
        let mut t0 = T::zero();
        let mut stats = GradStats { forward: self.forward, ..Default::default() };
        for k in (0..k_obs).rev() {
            let jump = &dl_dz[k * n..(k + 1) * n];
            let tape = &self.segs[k];
            stats.tape_values += tape.values();
            for (a, &j) in a_z.iter_mut().zip(jump) {
                *a += j;
            }
            if !discrete {
                let known = tape.f_end.as_deref();
                let (rate, evaluated) = end_rate(seg, tape.t_b, &tape.z_end, known, jump, &[])
                    .map_err(|e| fail(e, k, true))?;
                t_obs[k] = rate;
                stats.extra_evals += usize::from(evaluated);
            }
            let out = backward_segment(seg, tape, &mut a_z, &[], &mut g, &self.adj, &mut integ)
                .map_err(|e| fail(e, k, true))?;
            stats.backward += out.stats;
            stats.extra_evals += out.extra_evals;
            if discrete {
                t_obs[k] += out.dt_b;
                if k > 0 {
                    t_obs[k - 1] += out.dt_a;
                } else {
                    t0 += out.dt_a;
                }
            }
        }
        if !discrete {
            let (rate, evaluated) = end_rate(seg, self.spec.t0, &self.y0, None, &a_z, &[])
                .map_err(|e| fail(e, 0, true))?;
            t0 = -rate;
            stats.extra_evals += usize::from(evaluated);
        }
        check_grad("theta", 0, &g)?;
        check_grad("x", 0, &a_z)?;
        check_grad("t_obs", 0, &t_obs)?;
        check_grad("t0", 0, &[t0])?;
        Ok(OdeGradient { theta: g, y0: a_z, t0, t_obs, stats })
    }
}

/// A loss on the observed states of a neural ODE and its gradients in one call: `loss`
/// receives the states (`K × B × d`) and writes `∂L/∂z(t_k)` into its second argument
/// (zeroed, same layout), returning `L`.
///
/// ```
/// use odeflow::adjoint::{ode_grad, AdjointConfig, OdeSpec};
/// use odeflow::field::LinearField;
/// use odeflow::solvers::{Method, SolveOptions};
///
/// // dz/dt = a z + b in 1-D (θ = (a, b) = (−0.5, 0)), z(0) = 2, L = ½ z(1)²:
/// // z(1) = 2e^a, so ∂L/∂a = z(1)·2e^a = 4e^{2a}, ∂L/∂z0 = z(1) e^a, ∂L/∂t₁ = z(1)·a z(1).
/// let field = LinearField::new(&[-0.5], &[0.0]).unwrap();
/// let spec = OdeSpec {
///     t0: 0.0,
///     t_obs: vec![1.0],
///     method: Method::Dopri5,
///     options: SolveOptions::tol(1e-10, 1e-10),
/// };
/// let loss = |z: &[f64], dz: &mut [f64]| {
///     dz[0] = z[0];
///     0.5 * z[0] * z[0]
/// };
/// let (l, g) = ode_grad(&field, &spec, &[2.0], &AdjointConfig::default(), loss).unwrap();
/// let e = (-0.5f64).exp();
/// assert!((l - 2.0 * e * e).abs() < 1e-9);
/// assert!((g.theta[0] - 4.0 * e * e).abs() < 1e-8);
/// assert!((g.y0[0] - 2.0 * e * e).abs() < 1e-8);
/// assert!((g.t_obs[0] + 0.5 * 4.0 * e * e).abs() < 1e-8);
/// ```
pub fn ode_grad<T: Real, F: VectorField<T>>(
    field: &F,
    spec: &OdeSpec<T>,
    y0: &[T],
    adj: &AdjointConfig<T>,
    loss: impl FnOnce(&[T], &mut [T]) -> T,
) -> Result<(T, OdeGradient<T>), Error> {
    let tape = ode_forward(field, spec, y0, adj)?;
    let mut dl = vec![T::zero(); tape.states.len()];
    let l = loss(&tape.states, &mut dl);
    let grad = tape.backward(&dl)?;
    Ok((l, grad))
}

/// Compile-time check that the public types are `Send + Sync`.
#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<X: Send + Sync>() {}
    is::<Strategy>();
    is::<AdjointConfig<f64>>();
    is::<AdjointConfig<f32>>();
    is::<GradStats>();
    is::<CnfGradient<f64>>();
    is::<OdeGradient<f64>>();
    is::<OdeSpec<f64>>();
    is::<CnfTape<'static, f64, crate::field::Mlp<f64>>>();
    is::<OdeTape<'static, f64, crate::field::Mlp<f64>>>();
}
