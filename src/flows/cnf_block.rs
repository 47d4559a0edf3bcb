//! A continuous normalizing flow block as a trainable [`Flow`] layer.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{check_map, check_vjp, Flow, FlowWs};
use crate::adjoint::{cnf_forward, AdjointConfig, Strategy};
use crate::cnf::Cnf;
use crate::field::VectorField;
use crate::trace::TraceEstimator;
use crate::{Error, Real};

/// A [`Cnf`] used as one **trainable** layer of a [`super::FlowModel`].
///
/// # Map and log-determinants
///
/// The CNF integrates data → latent on `[0, T]`; as a flow layer its **forward** (latent →
/// data) is the CNF's backward map and its **inverse** (data → latent) is the CNF's forward
/// map. With the CNF's increment `ℓ` (`dℓ/dt = −tr ∂f/∂z`, see [`crate::cnf`]):
///
/// ```text
/// forward:  x = φ_{T→0}(z),  log|det ∂x/∂z| = −∫₀ᵀ tr ∂f/∂z dt = −Δℓ   (Δℓ of Cnf::inverse),
/// inverse:  z = φ_{0→T}(x),  log|det ∂z/∂x| = +∫₀ᵀ tr ∂f/∂z dt = −ℓ(T)  (ℓ(T) of Cnf::forward).
/// ```
///
/// The log-determinants are those of the exact flow map to the solver's tolerance.
///
/// # Parameters
///
/// The layer's slice θ of the model's flat vector is
///
/// ```text
/// θ = [θ_f of block 0 | … | θ_f of block K−1 | ln T_0 … ln T_{K−1} (only with learned times)]
/// ```
///
/// with each block's field parameters in the layout of its [`VectorField::params`] and the
/// times as logarithms (so any real value is a valid time). Every call evaluates the field
/// with **the θ it is given**: the layer keeps a working copy of the wrapped CNF in the
/// call's [`FlowWs`] and copies θ into it (one copy of |θ| numbers per call, no other
/// allocation for it). The wrapped CNF is only the template: its architecture, solver
/// settings, and the initial parameters and times that [`Flow::init_params`] writes (so
/// the initial θ does not depend on the model's seed; seed the field instead).
///
/// # Gradients
///
/// [`Flow::inverse_vjp`] re-solves the forward map keeping what the adjoint strategy
/// needs ([`cnf_forward`]) and runs the adjoint ODE backward ([`crate::adjoint::CnfTape::backward`])
/// from the cotangents of the layers above: with
/// `Φ = Σ_b [z_cot_bᵀ z_b + ld_cot_b · log|det ∂z/∂x|_b] = Σ_b [z_cot_bᵀ z_b(T) − ld_cot_b ℓ_b(T)]`,
/// the adjoint starts from `∂Φ/∂z(T) = z_cot` and `∂Φ/∂ℓ(T) = −ld_cot`, and returns
/// `∂Φ/∂x`, `∂Φ/∂θ_f` of every block and `∂Φ/∂ln T_k = T_k ∂Φ/∂T_k`. A gradient through
/// the block thus costs two forward solves (the model's inverse pass and the re-solve) and
/// one backward solve. The adjoint's strategy and backward tolerances are the layer's
/// [`AdjointConfig`] (default: [`Strategy::Checkpointed`], the backward solve at the CNF's
/// own tolerances); set them with [`CnfFlow::with_adjoint`].
///
/// # Divergence and solve mode
///
/// Only the exact trace is supported: the [`Flow`] methods take no random generator, and
/// the density pass and its gradient must see the same Hutchinson noise, so
/// [`CnfFlow::new`] refuses a CNF configured with [`TraceEstimator::Hutchinson`]. The maps
/// follow the CNF's [`SolveMode`](crate::cnf::SolveMode); the gradient always solves the
/// batch as one state ([`cnf_forward`]), which for batches of up to one chunk (512 points
/// by default) is the same solve.
///
/// ```
/// use odeflow::cnf::{Cnf, CnfConfig};
/// use odeflow::field::{Mlp, MlpConfig, VectorField};
/// use odeflow::flows::{CnfFlow, Coupling, CouplingKind, Flow, FlowModel};
///
/// let mlp = Mlp::new(&MlpConfig { dim: 2, hidden: vec![8], ..Default::default() })?;
/// let cnf = Cnf::new(mlp, 0.5, CnfConfig { rtol: 1e-8, atol: 1e-8, ..Default::default() })?;
/// let block = CnfFlow::new(cnf)?.with_learned_time(true);
/// let n_field = block.cnf().blocks()[0].field.params().len();
/// assert_eq!(Flow::<f64>::n_params(&block), n_field + 1); // θ_f and ln T
/// let layers: Vec<Box<dyn Flow<f64>>> = vec![
///     Box::new(Coupling::new(2, CouplingKind::Affine { scale_bound: 2.0 }, &[8], false)?),
///     Box::new(block),
/// ];
/// let model = FlowModel::new(layers, 0)?;
/// let x = [0.3, -0.5, 1.0, 0.2];
/// let mut grad = vec![0.0; model.n_params()];
/// let nll = model.nll_grad(&x, &mut grad, &mut model.workspace())?;
/// assert!(nll.is_finite() && grad.iter().any(|g| *g != 0.0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct CnfFlow<T: Real, F: VectorField<T>> {
    cnf: Cnf<T, F>,
    adjoint: AdjointConfig<T>,
    learn_time: bool,
    /// Block k's field parameters are `θ[offsets[k]..offsets[k + 1]]`.
    offsets: Vec<usize>,
    /// Tells this layer's working copy in a workspace from another layer's.
    id: u64,
}

/// The working copy of a layer's CNF kept in its workspace.
struct Working<T: Real, F> {
    owner: u64,
    cnf: Cnf<T, F>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl<T: Real, F: VectorField<T>> std::fmt::Debug for CnfFlow<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CnfFlow")
            .field("dim", &self.cnf.dim())
            .field("blocks", &self.cnf.blocks().len())
            .field("field_params", &self.offsets.last())
            .field("learn_time", &self.learn_time)
            .field("adjoint", &self.adjoint)
            .finish()
    }
}

impl<T: Real, F: VectorField<T> + Clone> CnfFlow<T, F> {
    /// Wraps `cnf` as a layer whose parameters are its fields' (times fixed), with the
    /// default adjoint ([`Strategy::Checkpointed`]). Errors: a CNF with the Hutchinson
    /// estimator ([`Error::Unsupported`]; see the [type docs](CnfFlow)).
    pub fn new(cnf: Cnf<T, F>) -> Result<Self, Error> {
        if cnf.config().trace != TraceEstimator::Exact {
            return Err(Error::Unsupported {
                flow: "cnf",
                what: "the Hutchinson trace estimator inside a FlowModel (the Flow API \
                       passes no random generator, and the density pass and its gradient \
                       must see the same noise): use TraceEstimator::Exact",
            });
        }
        let mut offsets = vec![0];
        for blk in cnf.blocks() {
            offsets.push(offsets[offsets.len() - 1] + blk.field.n_params());
        }
        Ok(CnfFlow {
            cnf,
            adjoint: AdjointConfig::with_strategy(Strategy::Checkpointed),
            learn_time: false,
            offsets,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Learn the blocks' times too (as `ln T_k` at the end of θ), or keep them fixed at
    /// the template's (default).
    pub fn with_learned_time(mut self, learn: bool) -> Self {
        self.learn_time = learn;
        self
    }

    /// Sets the gradient's strategy and backward solver settings.
    pub fn with_adjoint(mut self, adjoint: AdjointConfig<T>) -> Self {
        self.adjoint = adjoint;
        self
    }

    /// The template CNF (architecture, solver settings, initial θ and times).
    pub fn cnf(&self) -> &Cnf<T, F> {
        &self.cnf
    }

    /// The gradient's settings.
    pub fn adjoint(&self) -> &AdjointConfig<T> {
        &self.adjoint
    }

    /// Whether the times are parameters.
    pub fn learns_time(&self) -> bool {
        self.learn_time
    }

    /// A copy of the template carrying the parameters `theta` (this layer's slice of a
    /// model's θ): e.g. the trained CNF, for its trajectories. Errors: `theta` of the wrong
    /// length.
    pub fn to_cnf(&self, theta: &[T]) -> Result<Cnf<T, F>, Error> {
        crate::error::check_len("theta", theta.len(), self.n_params_())?;
        let mut cnf = self.cnf.clone();
        self.load(theta, &mut cnf)?;
        Ok(cnf)
    }

    fn n_field(&self) -> usize {
        self.offsets[self.offsets.len() - 1]
    }

    fn n_params_(&self) -> usize {
        self.n_field() + if self.learn_time { self.cnf.blocks().len() } else { 0 }
    }

    /// Copies θ into `cnf` (same architecture as the template): fields and, if learned,
    /// the times `T_k = exp(θ_T,k)`. Errors: a time that is not finite and positive
    /// ([`Error::InvalidConfig`] naming `t_end`).
    fn load(&self, theta: &[T], cnf: &mut Cnf<T, F>) -> Result<(), Error> {
        let n_field = self.n_field();
        for (k, blk) in cnf.blocks_mut().iter_mut().enumerate() {
            blk.field.params_mut().copy_from_slice(&theta[self.offsets[k]..self.offsets[k + 1]]);
            if self.learn_time {
                blk.t_end = theta[n_field + k].exp();
                if !(blk.t_end.is_finite() && blk.t_end > T::zero()) {
                    return Err(Error::InvalidConfig {
                        name: "t_end",
                        value: blk.t_end.to_f64c(),
                        expected: "finite and > 0 (T = exp θ of a learned time)",
                    });
                }
            }
        }
        Ok(())
    }

    /// The layer's working CNF, taken out of `ws` (a fresh copy of the template the first
    /// time, or when `ws` held another layer's), refreshed from θ. Put it back with
    /// [`CnfFlow::put_back`].
    fn take(&self, theta: &[T], ws: &mut FlowWs<T>) -> Result<Box<Working<T, F>>, Error>
    where
        F: 'static,
    {
        let mut w = match ws.cache.take().and_then(|b| b.downcast::<Working<T, F>>().ok()) {
            Some(w) if w.owner == self.id => w,
            _ => Box::new(Working { owner: self.id, cnf: self.cnf.clone() }),
        };
        let r = self.load(theta, &mut w.cnf);
        match r {
            Ok(()) => Ok(w),
            Err(e) => {
                Self::put_back(ws, w);
                Err(e)
            }
        }
    }

    fn put_back(ws: &mut FlowWs<T>, w: Box<Working<T, F>>)
    where
        F: 'static,
    {
        ws.cache = Some(w);
    }

    /// `out = φ(y)` from global time `t_from` to `t_to` with `ld = −(ℓ(t_to) − ℓ(t_from))`.
    fn map(
        &self,
        theta: &[T],
        to_latent: bool,
        y: &[T],
        out: &mut [T],
        ld: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error>
    where
        F: 'static,
    {
        check_map(self.cnf.dim(), self.n_params_(), theta, y, out.len(), ld.len())?;
        let w = self.take(theta, ws)?;
        let total = w.cnf.total_time();
        let (from, to) = if to_latent { (T::zero(), total) } else { (total, T::zero()) };
        // The exact trace draws no noise: the generator is never used.
        let mut rng = ChaCha8Rng::seed_from_u64(w.cnf.config().seed);
        let r = w.cnf.transform_into(from, to, y, out, ld, &mut rng);
        Self::put_back(ws, w);
        r?;
        ld.iter_mut().for_each(|v| *v = -*v);
        Ok(())
    }
}

impl<T: Real, F: VectorField<T> + Clone + 'static> Flow<T> for CnfFlow<T, F>
where
    Cnf<T, F>: Send + Sync,
{
    fn name(&self) -> &'static str {
        "cnf"
    }
    fn dim(&self) -> usize {
        self.cnf.dim()
    }
    fn n_params(&self) -> usize {
        self.n_params_()
    }
    /// The template's field parameters and (if learned) `ln T_k`; `rng` is not used.
    fn init_params(&self, theta: &mut [T], _rng: &mut dyn RngCore) -> Result<(), Error> {
        crate::error::check_len("theta", theta.len(), Flow::<T>::n_params(self))?;
        let n_field = self.n_field();
        for (k, blk) in self.cnf.blocks().iter().enumerate() {
            theta[self.offsets[k]..self.offsets[k + 1]].copy_from_slice(blk.field.params());
            if self.learn_time {
                theta[n_field + k] = blk.t_end.ln();
            }
        }
        Ok(())
    }
    fn forward(
        &self,
        theta: &[T],
        z: &[T],
        x: &mut [T],
        ld: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        self.map(theta, false, z, x, ld, ws)
    }
    fn inverse(
        &self,
        theta: &[T],
        x: &[T],
        z: &mut [T],
        ld: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        self.map(theta, true, x, z, ld, ws)
    }
    fn inverse_vjp(
        &self,
        theta: &[T],
        x: &[T],
        z_cot: &[T],
        ld_cot: &[T],
        x_cot: &mut [T],
        theta_cot: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        let n_params = self.n_params_();
        let b = check_vjp(self.cnf.dim(), n_params, theta, x, z_cot, ld_cot, x_cot, theta_cot)?;
        let w = self.take(theta, ws)?;
        let grad = {
            // Φ = Σ z_cotᵀ z(T) + ld_cot·(−ℓ(T)): ∂Φ/∂ℓ(T) = −ld_cot.
            let dl_dl = ws.take(b);
            for (a, &c) in dl_dl.iter_mut().zip(ld_cot) {
                *a = -c;
            }
            let mut rng = ChaCha8Rng::seed_from_u64(w.cnf.config().seed);
            cnf_forward(&w.cnf, x, &mut rng, &self.adjoint).and_then(|t| t.backward(z_cot, dl_dl))
        };
        let result = grad.map(|grad| {
            x_cot.copy_from_slice(&grad.x);
            for (k, g) in grad.theta.iter().enumerate() {
                let own = &mut theta_cot[self.offsets[k]..self.offsets[k + 1]];
                for (a, &v) in own.iter_mut().zip(g) {
                    *a += v;
                }
            }
            if self.learn_time {
                // ∂Φ/∂ln T = T ∂Φ/∂T.
                let n_field = self.n_field();
                for (k, blk) in w.cnf.blocks().iter().enumerate() {
                    theta_cot[n_field + k] += blk.t_end * grad.t_end[k];
                }
            }
        });
        Self::put_back(ws, w);
        result
    }
}
