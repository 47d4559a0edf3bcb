//! RNODE's regularizers (Finlay et al. 2020, "How to train your neural ODE") as extra ODE
//! states: the kinetic energy ∫‖f‖² dt and the Jacobian-Frobenius term ∫‖J V‖² dt.
//!
//! The field of every block is wrapped as
//!
//! ```text
//! F(t, [z, e_K, e_J]) = [f(t, z), ‖f(t, z)‖², ‖J(t, z) V‖²],      J = ∂f/∂z,
//! ```
//!
//! each extra state present only when its weight is set, so that e_K(T) = ∫₀ᵀ ‖f‖² dt and
//! e_J(T) = ∫₀ᵀ ‖J V‖² dt are integrated along the log-density solve, by the same solver and
//! under the same error control. `V` is the solve's own divergence direction: with the
//! Hutchinson trace, the noise ε_b of the z coordinates, drawn once per solve and held fixed
//! (so ‖J ε_b‖², an unbiased estimate of ‖J‖²_F, comes from the tangent the divergence
//! already computes); with the exact trace, V = I and the state integrates ‖J‖²_F exactly
//! (the same `jac_sq` as [`VectorField::eval_div`]).
//!
//! The divergence is that of the z-block: ∂Ḟ/∂(e_K, e_J) = 0, so tr ∂F/∂(z, e) = tr ∂f/∂z
//! exactly; a Hutchinson estimate uses the noise of the z coordinates only and ignores the
//! e coordinates' (the wrapper defines q = ε_zᵀ J ε_z, and the adjoint differentiates that
//! same q). The adjoint of [`crate::adjoint`] then needs nothing new: the loss
//!
//! ```text
//! L = −(1/B) Σ_b [log N(z_b(T)) − ℓ_b(T)] + λ_K (1/B) Σ_b e_K,b(T) + λ_J (1/B) Σ_b e_J,b(T)
//! ```
//!
//! is a loss on the end state with ∂L/∂e_K,b(T) = λ_K / B and ∂L/∂e_J,b(T) = λ_J / B (F does
//! not depend on e, so these cotangents stay constant backward), and the wrapped field's
//! fused VJP for a cotangent (a_z, a_K, a_J) and a divergence cotangent c is that of
//!
//! ```text
//! Φ = a_zᵀ f + a_K ‖f‖² + a_J ‖J V‖² + c q
//! ```
//!
//! i.e. f's [`VectorField::vjp_aug_jac`] for the cotangent a_z + 2 a_K f (the gradient of
//! a_K ‖f‖²), the same c, and the Jacobian weight w = a_J, which seeds the reverse pass of
//! the tangent J V with 2 a_J J V. The gradient is therefore exact for every adjoint strategy
//! (backsolve, checkpointed, discrete) to the solver's tolerance.

use crate::field::{AugmentedVjp, Divergence, FieldError, JacobianTerm, Real, VectorField};

/// f with RNODE's states appended (dimension `d + m`, `m` = the number of regularizers on):
/// per sample `[z (d), e_K (if kinetic), e_J (if Jacobian)]`. Reads the wrapped field's
/// parameters and never changes them.
#[derive(Debug)]
pub(crate) struct RegField<'a, T, F> {
    inner: &'a F,
    kinetic: bool,
    /// The Jacobian state's direction for calls without a divergence request (`eval`,
    /// `vjp`): the block's z-noise (`B × d`) or the exact basis; calls with one (`eval_div`,
    /// `vjp_aug`) use the request's, which the CNF builds from the same noise. `None`: no
    /// Jacobian state.
    jac: Option<Divergence<'a, T>>,
}

impl<'a, T: Real, F: VectorField<T>> RegField<'a, T, F> {
    pub(crate) fn new(inner: &'a F, kinetic: bool, jac: Option<Divergence<'a, T>>) -> Self {
        RegField { inner, kinetic, jac }
    }

    /// The number of extra states per sample.
    fn m(&self) -> usize {
        usize::from(self.kinetic) + usize::from(self.jac.is_some())
    }

    /// The batch size of a `B × (d + m)` buffer.
    fn batch(&self, len: usize) -> Result<usize, FieldError> {
        let w = self.inner.dim() + self.m();
        if len.is_multiple_of(w) {
            Ok(len / w)
        } else {
            Err(FieldError::BatchShape { len, dim: w })
        }
    }

    /// Writes `[f, ‖f‖² (kinetic), jac_sq (Jacobian)]` per sample into the augmented `out`.
    fn scatter_f(&self, f: &[T], jsq: &[T], out: &mut [T]) {
        let d = self.inner.dim();
        let w = d + self.m();
        for (b, (o, fb)) in out.chunks_exact_mut(w).zip(f.chunks_exact(d)).enumerate() {
            o[..d].copy_from_slice(fb);
            let mut k = d;
            if self.kinetic {
                o[k] = fb.iter().fold(T::zero(), |s, &v| s + v * v);
                k += 1;
            }
            if self.jac.is_some() {
                o[k] = jsq[b];
            }
        }
    }

    /// The inner cotangent `a_z + 2 a_K f` (`a_z` alone without the kinetic state) into
    /// `out`, and `a_J` into `w` (with the Jacobian state).
    fn cotangent(&self, a: &[T], f: &[T], out: &mut Vec<T>, w: &mut Vec<T>) {
        let d = self.inner.dim();
        let width = d + self.m();
        out.clear();
        w.clear();
        let two = T::from_f64c(2.0);
        for (b, ab) in a.chunks_exact(width).enumerate() {
            if self.kinetic {
                let ak = ab[d];
                out.extend(
                    ab[..d].iter().zip(&f[b * d..(b + 1) * d]).map(|(&x, &f)| x + two * ak * f),
                );
            } else {
                out.extend_from_slice(&ab[..d]);
            }
            if self.jac.is_some() {
                w.push(ab[width - 1]);
            }
        }
    }

    /// Writes the z-block cotangent into the augmented `out`, 0 for the extra states.
    fn scatter_zc(&self, zc: &[T], out: &mut [T]) {
        let d = self.inner.dim();
        for (o, c) in out.chunks_exact_mut(d + self.m()).zip(zc.chunks_exact(d)) {
            o[..d].copy_from_slice(c);
            o[d..].fill(T::zero());
        }
    }

    /// The inner divergence request: the exact trace, or the z-block of the noise.
    fn prepare_div<'w>(
        &self,
        div: Divergence<'_, T>,
        eps: &'w mut Vec<T>,
        b: usize,
    ) -> Result<Divergence<'w, T>, FieldError> {
        let d = self.inner.dim();
        match div {
            Divergence::Exact => Ok(Divergence::Exact),
            Divergence::Hutchinson(e) => {
                check("eps", e.len(), b * (d + self.m()))?;
                gather(e, d, d + self.m(), eps);
                Ok(Divergence::Hutchinson(eps))
            }
        }
    }
}

/// Scratch: the inner field's workspace and the z-block buffers.
#[derive(Debug)]
pub(crate) struct RegWs<T, W> {
    inner: W,
    z: Vec<T>,
    f: Vec<T>,
    v: Vec<T>,
    jv: Vec<T>,
    eps: Vec<T>,
    a: Vec<T>,
    w: Vec<T>,
    zc: Vec<T>,
    q: Vec<T>,
    jsq: Vec<T>,
    c0: Vec<T>,
}

fn resize<T: Real>(v: &mut Vec<T>, n: usize) {
    v.resize(n, T::zero());
}

/// Gathers the first `d` of every `width` values of `src` into `dst` (resized).
fn gather<T: Real>(src: &[T], d: usize, width: usize, dst: &mut Vec<T>) {
    dst.clear();
    dst.extend(src.chunks_exact(width).flat_map(|r| r[..d].iter().copied()));
}

fn check(buffer: &'static str, found: usize, expected: usize) -> Result<(), FieldError> {
    if found == expected {
        Ok(())
    } else {
        Err(FieldError::BufferLength { buffer, expected, found })
    }
}

impl<T: Real, F: VectorField<T>> VectorField<T> for RegField<'_, T, F> {
    type Workspace = RegWs<T, F::Workspace>;

    fn dim(&self) -> usize {
        self.inner.dim() + self.m()
    }

    fn n_params(&self) -> usize {
        self.inner.n_params()
    }

    fn params(&self) -> &[T] {
        self.inner.params()
    }

    fn params_mut(&mut self) -> &mut [T] {
        // A read-only view: the trainer updates the wrapped fields themselves; never called
        // by the CNF or the adjoint.
        &mut []
    }

    fn workspace(&self, batch: usize) -> Self::Workspace {
        RegWs {
            inner: self.inner.workspace(batch),
            z: Vec::new(),
            f: Vec::new(),
            v: Vec::new(),
            jv: Vec::new(),
            eps: Vec::new(),
            a: Vec::new(),
            w: Vec::new(),
            zc: Vec::new(),
            q: Vec::new(),
            jsq: Vec::new(),
            c0: Vec::new(),
        }
    }

    fn recycle(&self, ws: Self::Workspace) {
        self.inner.recycle(ws.inner);
    }

    fn eval(&self, t: T, z: &[T], f: &mut [T], ws: &mut Self::Workspace) -> Result<(), FieldError> {
        let b = self.batch(z.len())?;
        check("f", f.len(), z.len())?;
        let d = self.inner.dim();
        gather(z, d, d + self.m(), &mut ws.z);
        resize(&mut ws.f, b * d);
        match self.jac {
            Some(v) => {
                resize(&mut ws.q, b);
                resize(&mut ws.jsq, b);
                self.inner.eval_div(
                    t,
                    &ws.z,
                    v,
                    &mut ws.f,
                    &mut ws.q,
                    Some(&mut ws.jsq),
                    &mut ws.inner,
                )?;
            }
            None => self.inner.eval(t, &ws.z, &mut ws.f, &mut ws.inner)?,
        }
        self.scatter_f(&ws.f, &ws.jsq, f);
        Ok(())
    }

    /// `jac_sq`, when asked for, is the z-block's `‖J V‖²` (the regularizer's quantity), not
    /// that of the augmented field.
    fn eval_div(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        f: &mut [T],
        q: &mut [T],
        jac_sq: Option<&mut [T]>,
        ws: &mut Self::Workspace,
    ) -> Result<(), FieldError> {
        let b = self.batch(z.len())?;
        check("f", f.len(), z.len())?;
        if let Some(s) = &jac_sq {
            check("jac_sq", s.len(), b)?;
        }
        let d = self.inner.dim();
        gather(z, d, d + self.m(), &mut ws.z);
        resize(&mut ws.f, b * d);
        resize(&mut ws.jsq, b);
        let want_sq = self.jac.is_some() || jac_sq.is_some();
        let mut eps = std::mem::take(&mut ws.eps);
        let r = self.prepare_div(div, &mut eps, b).and_then(|dv| {
            let sq = if want_sq { Some(&mut ws.jsq[..]) } else { None };
            self.inner.eval_div(t, &ws.z, dv, &mut ws.f, q, sq, &mut ws.inner)
        });
        ws.eps = eps;
        r?;
        if let Some(s) = jac_sq {
            s.copy_from_slice(&ws.jsq);
        }
        self.scatter_f(&ws.f, &ws.jsq, f);
        Ok(())
    }

    /// Unsupported with the Jacobian state (its directional derivative is a second
    /// derivative of f no [`VectorField`] method offers); never called by the CNF or the
    /// adjoint.
    fn jvp(
        &self,
        t: T,
        z: &[T],
        v: &[T],
        f: &mut [T],
        jv: &mut [T],
        ws: &mut Self::Workspace,
    ) -> Result<(), FieldError> {
        if self.jac.is_some() {
            return Err(FieldError::Unsupported { op: "jvp of the Jacobian-regularizer state" });
        }
        let b = self.batch(z.len())?;
        for (name, len) in [("v", v.len()), ("f", f.len()), ("jv", jv.len())] {
            check(name, len, z.len())?;
        }
        let d = self.inner.dim();
        let width = d + self.m();
        gather(z, d, width, &mut ws.z);
        gather(v, d, width, &mut ws.v);
        resize(&mut ws.f, b * d);
        resize(&mut ws.jv, b * d);
        self.inner.jvp(t, &ws.z, &ws.v, &mut ws.f, &mut ws.jv, &mut ws.inner)?;
        self.scatter_f(&ws.f, &ws.jsq, f);
        let two = T::from_f64c(2.0);
        for ((o, fb), jb) in
            jv.chunks_exact_mut(width).zip(ws.f.chunks_exact(d)).zip(ws.jv.chunks_exact(d))
        {
            o[..d].copy_from_slice(jb);
            if self.kinetic {
                // d‖f‖² = 2 fᵀ J v.
                o[d] = two * fb.iter().zip(jb).fold(T::zero(), |s, (&x, &y)| s + x * y);
            }
        }
        Ok(())
    }

    fn vjp(
        &self,
        t: T,
        z: &[T],
        a: &[T],
        f: &mut [T],
        z_cot: &mut [T],
        theta_cot: Option<&mut [T]>,
        ws: &mut Self::Workspace,
    ) -> Result<T, FieldError> {
        let b = self.batch(z.len())?;
        for (name, len) in [("a", a.len()), ("f", f.len()), ("z_cot", z_cot.len())] {
            check(name, len, z.len())?;
        }
        let d = self.inner.dim();
        gather(z, d, d + self.m(), &mut ws.z);
        resize(&mut ws.f, b * d);
        if self.kinetic {
            self.inner.eval(t, &ws.z, &mut ws.f, &mut ws.inner)?;
        }
        self.cotangent(a, &ws.f, &mut ws.a, &mut ws.w);
        resize(&mut ws.zc, b * d);
        let mut fz = std::mem::take(&mut ws.v);
        resize(&mut fz, b * d);
        let r = match self.jac {
            Some(v) => {
                // Φ = a′ᵀ f + a_J ‖J V‖² (no divergence term: c = 0).
                resize(&mut ws.q, b);
                resize(&mut ws.jsq, b);
                ws.c0.clear();
                ws.c0.resize(b, T::zero());
                let out = AugmentedVjp { f: &mut fz, q: &mut ws.q, z_cot: &mut ws.zc, theta_cot };
                let jac = JacobianTerm { w: &ws.w, jac_sq: &mut ws.jsq };
                self.inner.vjp_aug_jac(t, &ws.z, v, &ws.a, &ws.c0, jac, out, &mut ws.inner)
            }
            None => self.inner.vjp(t, &ws.z, &ws.a, &mut fz, &mut ws.zc, theta_cot, &mut ws.inner),
        };
        ws.v = fz;
        let dt = r?;
        let src = if self.kinetic { &ws.f } else { &ws.v };
        self.scatter_f(src, &ws.jsq, f);
        self.scatter_zc(&ws.zc, z_cot);
        Ok(dt)
    }

    fn vjp_aug(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        a: &[T],
        c: &[T],
        out: AugmentedVjp<'_, T>,
        ws: &mut Self::Workspace,
    ) -> Result<T, FieldError> {
        let b = self.batch(z.len())?;
        for (name, len) in [("a", a.len()), ("f", out.f.len()), ("z_cot", out.z_cot.len())] {
            check(name, len, z.len())?;
        }
        let d = self.inner.dim();
        gather(z, d, d + self.m(), &mut ws.z);
        resize(&mut ws.f, b * d);
        if self.kinetic {
            // f for the kinetic cotangent 2 a_K f.
            self.inner.eval(t, &ws.z, &mut ws.f, &mut ws.inner)?;
        }
        self.cotangent(a, &ws.f, &mut ws.a, &mut ws.w);
        resize(&mut ws.zc, b * d);
        resize(&mut ws.jsq, b);
        let mut fz = std::mem::take(&mut ws.v);
        resize(&mut fz, b * d);
        let mut eps = std::mem::take(&mut ws.eps);
        let AugmentedVjp { f, q, z_cot, theta_cot } = out;
        let r = self.prepare_div(div, &mut eps, b).and_then(|dv| {
            let inner_out = AugmentedVjp { f: &mut fz, q, z_cot: &mut ws.zc, theta_cot };
            if self.jac.is_some() {
                let jac = JacobianTerm { w: &ws.w, jac_sq: &mut ws.jsq };
                self.inner.vjp_aug_jac(t, &ws.z, dv, &ws.a, c, jac, inner_out, &mut ws.inner)
            } else {
                self.inner.vjp_aug(t, &ws.z, dv, &ws.a, c, inner_out, &mut ws.inner)
            }
        });
        ws.eps = eps;
        ws.v = fz;
        let dt = r?;
        let src = if self.kinetic { &ws.f } else { &ws.v };
        self.scatter_f(src, &ws.jsq, f);
        self.scatter_zc(&ws.zc, z_cot);
        Ok(dt)
    }
}

/// Which of RNODE's states a regularized loss integrates, and their weights: `None` leaves a
/// state out; `Some(λ)` integrates it and adds `λ (1/B) Σ_b e_b(T)` to the loss (`Some(0.0)`
/// only measures it).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct RegWeights {
    /// λ_K of ∫‖f‖² dt.
    pub(crate) kinetic: Option<f64>,
    /// λ_J of ∫‖J V‖² dt.
    pub(crate) jacobian: Option<f64>,
}

/// The regularized loss of one batch and its gradients.
#[derive(Debug, Clone)]
pub(crate) struct RegLoss<T> {
    /// L = nll + λ_K · kinetic + λ_J · jacobian.
    pub(crate) loss: f64,
    /// −(1/B) Σ log p(x_b).
    pub(crate) nll: f64,
    /// (1/B) Σ_b ∫‖f‖² (0 when not integrated).
    pub(crate) kinetic: f64,
    /// (1/B) Σ_b ∫‖J V_b‖² (0 when not integrated).
    pub(crate) jacobian: f64,
    /// ∂L/∂θ_k, ∂L/∂T_k and ∂L/∂x (`B × d`) (None when only the value was asked for).
    pub(crate) grad: Option<crate::adjoint::CnfGradient<T>>,
}

/// L = −(1/B) Σ_b log p(x_b) + λ_K (1/B) Σ_b ∫₀ᵀ ‖f‖² dt + λ_J (1/B) Σ_b ∫₀ᵀ ‖J V_b‖² dt for the
/// batch `x` (`B × d`), and (if `with_grad`) its gradients by the adjoint on the wrapped
/// fields (see the [module docs](self)). The Hutchinson noise (`B × (d + m)` per block, the
/// extra coordinates unused) comes from `rng`, drawn as [`crate::adjoint::cnf_forward`]
/// draws it for the augmented flow; its z-block is V of the Jacobian state.
pub(crate) fn reg_loss<T: Real, F: VectorField<T>, R: rand::Rng + ?Sized>(
    cnf: &crate::cnf::Cnf<T, F>,
    x: &[T],
    rng: &mut R,
    weights: RegWeights,
    adj: &crate::adjoint::AdjointConfig<T>,
    with_grad: bool,
) -> Result<RegLoss<T>, crate::Error> {
    use crate::adjoint::{cnf_forward_noise, draw_noise};
    use crate::cnf::{std_normal_log_prob, Cnf, CnfBlock};
    let d = cnf.dim();
    let b = crate::error::batch_size(x.len(), d)?;
    let (kin_on, jac_on) = (weights.kinetic.is_some(), weights.jacobian.is_some());
    let m = usize::from(kin_on) + usize::from(jac_on);
    let width = d + m;
    let trace = cnf.config().trace;
    let nb = cnf.blocks().len();
    let eps = draw_noise(trace, rng, nb, b, width);
    let mut zeps = Vec::new();
    gather(&eps, d, width, &mut zeps);
    let blocks: Vec<_> = cnf
        .blocks()
        .iter()
        .enumerate()
        .map(|(k, blk)| {
            let v = jac_on.then(|| {
                if zeps.is_empty() {
                    Divergence::Exact
                } else {
                    trace.divergence(&zeps[k * b * d..(k + 1) * b * d])
                }
            });
            CnfBlock { field: RegField::new(&blk.field, kin_on, v), t_end: blk.t_end }
        })
        .collect();
    let aug = Cnf::chain(blocks, cnf.config().clone())?;
    let mut xa = Vec::with_capacity(b * width);
    for p in x.chunks_exact(d) {
        xa.extend_from_slice(p);
        xa.extend(std::iter::repeat_n(T::zero(), m));
    }
    let tape = cnf_forward_noise(&aug, &xa, eps, adj)?;
    let (z, dl) = (tape.z(), tape.delta_logp());
    let bf = b as f64;
    let (mut nll, mut kin, mut jac) = (0.0, 0.0, 0.0);
    for (zb, &l) in z.chunks_exact(width).zip(dl) {
        nll -= (std_normal_log_prob(&zb[..d]) - l).to_f64c();
        if kin_on {
            kin += zb[d].to_f64c();
        }
        if jac_on {
            jac += zb[width - 1].to_f64c();
        }
    }
    let (nll, kin, jac) = (nll / bf, kin / bf, jac / bf);
    let (lam_k, lam_j) = (weights.kinetic.unwrap_or(0.0), weights.jacobian.unwrap_or(0.0));
    let grad = if with_grad {
        let inv_b = T::one() / T::from_usize(b).unwrap_or_else(T::one);
        let mut dl_dz = Vec::with_capacity(z.len());
        for zb in z.chunks_exact(width) {
            dl_dz.extend(zb[..d].iter().map(|&v| v * inv_b));
            if kin_on {
                dl_dz.push(T::from_f64c(lam_k) * inv_b);
            }
            if jac_on {
                dl_dz.push(T::from_f64c(lam_j) * inv_b);
            }
        }
        let dl_dl = vec![inv_b; b];
        let mut g = tape.backward(&dl_dz, &dl_dl)?;
        let mut gx = Vec::with_capacity(b * d);
        gather(&g.x, d, width, &mut gx);
        g.x = gx;
        Some(g)
    } else {
        None
    };
    Ok(RegLoss { loss: nll + lam_k * kin + lam_j * jac, nll, kinetic: kin, jacobian: jac, grad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adjoint::{draw_noise, AdjointConfig, Strategy};
    use crate::cnf::{Cnf, CnfBlock, CnfConfig};
    use crate::field::{LinearField, Mlp, MlpConfig};
    use crate::trace::{Noise, TraceEstimator};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const KIN: RegWeights = RegWeights { kinetic: Some(0.0), jacobian: None };
    const JAC: RegWeights = RegWeights { kinetic: None, jacobian: Some(0.0) };
    const BOTH: RegWeights = RegWeights { kinetic: Some(0.0), jacobian: Some(0.0) };

    fn value<F: VectorField<f64>>(
        cnf: &Cnf<f64, F>,
        x: &[f64],
        w: RegWeights,
        seed: u64,
    ) -> RegLoss<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        reg_loss(cnf, x, &mut rng, w, &AdjointConfig::default(), false).unwrap()
    }

    /// The z-block of the noise `reg_loss` draws for one block with `m` extra states.
    fn z_noise(trace: TraceEstimator, seed: u64, b: usize, d: usize, m: usize) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let eps = draw_noise(trace, &mut rng, 1, b, d + m);
        let mut z = Vec::new();
        gather(&eps, d, d + m, &mut z);
        z
    }

    /// f = A z with A = diag(a₁, a₂): ∫₀ᵀ ‖A e^{At} x‖² dt = Σ_i a_i x_i² (e^{2 a_i T} − 1) / 2,
    /// alone and beside the Jacobian state (∫‖J‖²_F = T (a₁² + a₂²), exact trace).
    #[test]
    fn kinetic_energy_of_a_linear_field() {
        let (a1, a2, t) = (0.3, -0.7, 0.8);
        let field = LinearField::new(&[a1, 0.0, 0.0, a2], &[0.0, 0.0]).unwrap();
        let cfg = CnfConfig { rtol: 1e-11, atol: 1e-11, ..Default::default() };
        let cnf = Cnf::new(field, t, cfg).unwrap();
        let x = [0.5, -1.5, 2.0, 0.25];
        let e = |xi: f64, a: f64| a * xi * xi * ((2.0 * a * t).exp() - 1.0) / 2.0;
        let want = 0.5 * (e(0.5, a1) + e(-1.5, a2) + e(2.0, a1) + e(0.25, a2));
        let (lp, _) = cnf.log_prob(&x).unwrap();
        for w in [KIN, BOTH] {
            let r = value(&cnf, &x, w, 0);
            assert!((r.kinetic - want).abs() < 1e-9, "{} vs {want}", r.kinetic);
            // The NLL is the plain CNF's.
            assert!((r.nll + (lp[0] + lp[1]) / 2.0).abs() < 1e-9);
            let jac = if w.jacobian.is_some() { t * (a1 * a1 + a2 * a2) } else { 0.0 };
            assert!((r.jacobian - jac).abs() < 1e-12 * jac.max(1.0), "{} vs {jac}", r.jacobian);
        }
    }

    /// A linear field has the constant Jacobian J = A, so ∫₀ᵀ ‖A V‖² dt = T ‖A V‖² exactly:
    /// T ‖A‖²_F (exact trace) or the batch mean of T ‖A ε_b‖² over the solve's noise (Gaussian
    /// and Rademacher; the noise is redrawn here from the same seed). Observed error ≲ 1e-15
    /// relative (the state's rate is constant, so every step integrates it exactly).
    #[test]
    fn jacobian_state_of_a_linear_field_is_t_times_a_v_squared() {
        let am = [0.3, 0.5, -0.2, -0.7];
        let field = LinearField::new(&am, &[0.1, -0.3]).unwrap();
        let t = 0.8;
        let x = [0.5, -1.5, 2.0, 0.25, -0.3, 0.9];
        for trace in [
            TraceEstimator::Exact,
            TraceEstimator::Hutchinson(Noise::Gaussian),
            TraceEstimator::Hutchinson(Noise::Rademacher),
        ] {
            let cfg = CnfConfig { rtol: 1e-8, atol: 1e-8, trace, ..Default::default() };
            let cnf = Cnf::new(field.clone(), t, cfg).unwrap();
            for (w, m) in [(JAC, 1), (BOTH, 2)] {
                let r = value(&cnf, &x, w, 5);
                let want = match trace {
                    TraceEstimator::Exact => t * am.iter().map(|a| a * a).sum::<f64>(),
                    _ => {
                        let e = z_noise(trace, 5, 3, 2, m);
                        let sq = |v: &[f64]| {
                            (am[0] * v[0] + am[1] * v[1]).powi(2)
                                + (am[2] * v[0] + am[3] * v[1]).powi(2)
                        };
                        t * e.chunks_exact(2).map(sq).sum::<f64>() / 3.0
                    }
                };
                let err = (r.jacobian - want).abs() / want;
                eprintln!("linear {trace:?} m={m}: ∫‖AV‖² relative error {err:e}");
                assert!(err < 1e-12, "{trace:?} m={m}: {} vs {want} ({err:e})", r.jacobian);
            }
        }
    }

    /// An MLP (ConcatSquash: J varies along the path and in t): the integrated state against
    /// an independent quadrature of ‖J(t, z(t)) V‖² (`eval_div`'s `jac_sq`) along the plain
    /// CNF's reference trajectory (dense output at 1e-11), composite 5-point Gauss–Legendre on
    /// 8 panels. Observed relative error ~1e-11; bound 1e-8.
    #[test]
    fn jacobian_state_of_an_mlp_matches_quadrature_along_the_trajectory() {
        let mlp = Mlp::<f64>::new(&MlpConfig { hidden: vec![8, 8], seed: 4, ..Default::default() })
            .unwrap();
        let t_end = 0.6;
        let x = [0.4, -1.1, 1.3, 0.2, -0.6, 0.8];
        let (b, d) = (3, 2);
        let gl = [
            (-0.906_179_845_938_664, 0.236_926_885_056_189_1),
            (-0.538_469_310_105_683_1, 0.478_628_670_499_366_5),
            (0.0, 0.568_888_888_888_888_9),
            (0.538_469_310_105_683_1, 0.478_628_670_499_366_5),
            (0.906_179_845_938_664, 0.236_926_885_056_189_1),
        ];
        let panels = 8;
        let h = t_end / panels as f64;
        let mut nodes = Vec::new();
        for k in 0..panels {
            for &(xi, wi) in &gl {
                nodes.push((h * k as f64 + 0.5 * h * (xi + 1.0), 0.5 * h * wi));
            }
        }
        for trace in [TraceEstimator::Exact, TraceEstimator::Hutchinson(Noise::Gaussian)] {
            let cfg = CnfConfig { rtol: 1e-11, atol: 1e-11, trace, ..Default::default() };
            let cnf = Cnf::new(mlp.clone(), t_end, cfg).unwrap();
            let r = value(&cnf, &x, JAC, 9);
            let times: Vec<f64> = nodes.iter().map(|n| n.0).collect();
            let traj = cnf.trajectory(0.0, &x, &times).unwrap();
            let e = z_noise(trace, 9, b, d, 1);
            let div = trace.divergence(&e);
            let mut ws = mlp.workspace(b);
            let (mut f, mut q, mut sq) = (vec![0.0; b * d], vec![0.0; b], vec![0.0; b]);
            let mut want = 0.0;
            for ((tn, wn), z) in nodes.iter().zip(&traj.states) {
                mlp.eval_div(*tn, z, div, &mut f, &mut q, Some(&mut sq), &mut ws).unwrap();
                want += wn * sq.iter().sum::<f64>() / b as f64;
            }
            let err = (r.jacobian - want).abs() / want;
            eprintln!(
                "mlp {trace:?}: ∫‖JV‖² = {want:.6}, state vs quadrature relative error {err:e}"
            );
            assert!(err < 1e-8, "{trace:?}: state {} vs quadrature {want} ({err:e})", r.jacobian);
        }
    }

    /// The wrapper's own fused VJP with the Jacobian term is not offered (the default's
    /// error), and its jvp refuses the Jacobian state rather than return a wrong rate.
    #[test]
    fn wrapper_refuses_what_it_cannot_differentiate() {
        let field = LinearField::new(&[0.3, 0.5, -0.2, -0.7], &[0.0, 0.0]).unwrap();
        let reg = RegField::new(&field, true, Some(Divergence::Exact));
        let mut ws = reg.workspace(1);
        let (z, mut f, mut jv) = ([0.1; 4], [0.0; 4], [0.0; 4]);
        assert!(matches!(
            reg.jvp(0.0, &z, &z, &mut f, &mut jv, &mut ws),
            Err(FieldError::Unsupported { .. })
        ));
        let (mut q, mut zc, mut sq) = ([0.0; 1], [0.0; 4], [0.0; 1]);
        let out = AugmentedVjp { f: &mut f, q: &mut q, z_cot: &mut zc, theta_cot: None };
        let jac = JacobianTerm { w: &[1.0], jac_sq: &mut sq };
        assert!(matches!(
            reg.vjp_aug_jac(0.0, &z, Divergence::Exact, &z, &[0.0], jac, out, &mut ws),
            Err(FieldError::Unsupported { op: "vjp_aug_jac" })
        ));
    }

    /// The gradient of NLL + λ_K ∫‖f‖² + λ_J ∫‖J V‖² (θ and T of two chained blocks, and x)
    /// against central differences (h = 1e-5) at rtol = atol = 1e-10: every adjoint strategy,
    /// exact and Hutchinson (Rademacher; Gaussian with backsolve), the Jacobian state alone
    /// and with the kinetic one. Relative error (floor 1e-3 on the denominator) < 1e-5;
    /// observed ≲ 3e-7. The regularizers' part of the gradient is checked not negligible.
    #[test]
    fn regularized_gradient_matches_finite_differences() {
        let mk = |seed| {
            Mlp::<f64>::new(&MlpConfig { hidden: vec![6], seed, ..Default::default() }).unwrap()
        };
        let x = [0.3, -0.8, 1.1, 0.4, -0.2, 0.9];
        let cases = [
            (Strategy::Backsolve, TraceEstimator::Exact),
            (Strategy::Backsolve, TraceEstimator::Hutchinson(Noise::Rademacher)),
            (Strategy::Backsolve, TraceEstimator::Hutchinson(Noise::Gaussian)),
            (Strategy::Checkpointed, TraceEstimator::Exact),
            (Strategy::Checkpointed, TraceEstimator::Hutchinson(Noise::Rademacher)),
            (Strategy::Discrete, TraceEstimator::Exact),
            (Strategy::Discrete, TraceEstimator::Hutchinson(Noise::Rademacher)),
        ];
        let mut worst: f64 = 0.0;
        for (strategy, trace) in cases {
            let adj = AdjointConfig::with_strategy(strategy);
            let cfg = CnfConfig { rtol: 1e-10, atol: 1e-10, trace, ..Default::default() };
            let blocks =
                vec![CnfBlock { field: mk(1), t_end: 0.4 }, CnfBlock { field: mk(2), t_end: 0.3 }];
            let mut cnf = Cnf::chain(blocks, cfg).unwrap();
            for w in [
                RegWeights { kinetic: None, jacobian: Some(0.9) },
                RegWeights { kinetic: Some(0.7), jacobian: Some(0.9) },
            ] {
                let ctx = format!("{strategy:?} {trace:?} {w:?}");
                let grad = |c: &Cnf<f64, Mlp<f64>>, w: RegWeights| {
                    let mut rng = ChaCha8Rng::seed_from_u64(3);
                    reg_loss(c, &x, &mut rng, w, &adj, true).unwrap().grad.unwrap()
                };
                let g = grad(&cnf, w);
                // λ_J's part is not negligible at the tested entries.
                let g0 = grad(&cnf, RegWeights { jacobian: Some(0.0), ..w });
                assert!((g.theta[0][0] - g0.theta[0][0]).abs() > 1e-3 * g0.theta[0][0].abs());
                assert!((g.t_end[1] - g0.t_end[1]).abs() > 1e-3 * g0.t_end[1].abs());
                let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
                let dx: Vec<f64> = g.x.iter().zip(&g0.x).map(|(a, b)| a - b).collect();
                assert!(norm(&dx) > 1e-3 * norm(&g0.x), "{ctx}");
                let loss = |c: &Cnf<f64, Mlp<f64>>, x: &[f64]| {
                    let mut rng = ChaCha8Rng::seed_from_u64(3);
                    reg_loss(c, x, &mut rng, w, &adj, false).unwrap().loss
                };
                let h = 1e-5;
                let mut cmp = |what: String, got: f64, fd: f64| {
                    let rel = (got - fd).abs() / fd.abs().max(1e-3);
                    worst = worst.max(rel);
                    assert!(rel < 1e-5, "{ctx} {what}: adjoint {got} fd {fd} (rel {rel:e})");
                };
                for (k, idx) in [(0usize, 0usize), (0, 7), (1, 3), (1, 20)] {
                    let p0 = cnf.blocks()[k].field.params()[idx];
                    cnf.blocks_mut()[k].field.params_mut()[idx] = p0 + h;
                    let lp = loss(&cnf, &x);
                    cnf.blocks_mut()[k].field.params_mut()[idx] = p0 - h;
                    let lm = loss(&cnf, &x);
                    cnf.blocks_mut()[k].field.params_mut()[idx] = p0;
                    cmp(format!("θ[{k}][{idx}]"), g.theta[k][idx], (lp - lm) / (2.0 * h));
                }
                for k in 0..2 {
                    let t0 = cnf.blocks()[k].t_end;
                    cnf.blocks_mut()[k].t_end = t0 + h;
                    let lp = loss(&cnf, &x);
                    cnf.blocks_mut()[k].t_end = t0 - h;
                    let lm = loss(&cnf, &x);
                    cnf.blocks_mut()[k].t_end = t0;
                    cmp(format!("T[{k}]"), g.t_end[k], (lp - lm) / (2.0 * h));
                }
                for i in [0, 3, 5] {
                    let (mut xp, mut xm) = (x, x);
                    xp[i] += h;
                    xm[i] -= h;
                    let fd = (loss(&cnf, &xp) - loss(&cnf, &xm)) / (2.0 * h);
                    cmp(format!("x[{i}]"), g.x[i], fd);
                }
            }
        }
        eprintln!("worst relative error of the regularized gradient: {worst:e}");
    }
}
