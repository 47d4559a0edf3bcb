//! A continuous normalizing flow block as a [`Flow`] layer.

use rand::RngCore;

use super::{check_map, Flow, FlowWs};
use crate::cnf::Cnf;
use crate::field::VectorField;
use crate::{Error, Real};

/// A [`Cnf`] used as one layer of a [`super::FlowModel`]. The CNF integrates data → latent
/// on `[0, T]`; as a flow layer its **forward** (latent → data) is [`Cnf::inverse`] and its
/// **inverse** (data → latent) is [`Cnf::forward`]. With the CNF's increment `Δℓ`:
///
/// ```text
/// forward:  x = φ_{T→0}(z),  log|det ∂x/∂z| = −Δℓ   (Cnf::inverse: log p(x) = log N(z) + Δℓ),
/// inverse:  z = φ_{0→T}(x),  log|det ∂z/∂x| = −Δℓ   (Cnf::forward: log p(x) = log N(z) − Δℓ).
/// ```
///
/// The log-determinants are exact only with the exact trace (`TraceEstimator::Exact`) and
/// to the solver's tolerance.
///
/// **Gap:** the block has no trainable parameters in a [`super::FlowModel`]
/// (`n_params() = 0`; its field's parameters stay inside the [`Cnf`]) and
/// [`Flow::inverse_vjp`] returns [`Error::Unsupported`]: the adjoint module's CNF gradient
/// (`odeflow::adjoint`) starts from a loss on the *final* latent state and log-density
/// increment of a whole CNF, and does not take an arbitrary cotangent on `z` from the layers
/// above, which a composed model needs. Train a CNF with [`crate::train::CnfTrainer`] and
/// compose it frozen.
pub struct CnfFlow<T: Real, F: VectorField<T>> {
    cnf: Cnf<T, F>,
}

impl<T: Real, F: VectorField<T>> CnfFlow<T, F> {
    /// Wraps `cnf`.
    pub fn new(cnf: Cnf<T, F>) -> Self {
        CnfFlow { cnf }
    }

    /// The wrapped CNF.
    pub fn cnf(&self) -> &Cnf<T, F> {
        &self.cnf
    }
}

impl<T: Real, F: VectorField<T>> Flow<T> for CnfFlow<T, F>
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
        0
    }
    fn init_params(&self, _theta: &mut [T], _rng: &mut dyn RngCore) {}
    fn forward(
        &self,
        theta: &[T],
        z: &[T],
        x: &mut [T],
        ld: &mut [T],
        _ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        check_map(self.cnf.dim(), 0, theta, z, x.len(), ld.len())?;
        let (xx, dl, _) = self.cnf.inverse(z)?;
        x.copy_from_slice(&xx);
        for (l, v) in ld.iter_mut().zip(dl) {
            *l = -v;
        }
        Ok(())
    }
    fn inverse(
        &self,
        theta: &[T],
        x: &[T],
        z: &mut [T],
        ld: &mut [T],
        _ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        check_map(self.cnf.dim(), 0, theta, x, z.len(), ld.len())?;
        let (zz, dl, _) = self.cnf.forward(x)?;
        z.copy_from_slice(&zz);
        for (l, v) in ld.iter_mut().zip(dl) {
            *l = -v;
        }
        Ok(())
    }
    fn inverse_vjp(
        &self,
        _theta: &[T],
        _x: &[T],
        _z_cot: &[T],
        _ld_cot: &[T],
        _x_cot: &mut [T],
        _theta_cot: &mut [T],
        _ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        Err(Error::Unsupported { flow: "cnf", what: "the density gradient inside a FlowModel" })
    }
}
