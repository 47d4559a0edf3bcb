//! The kinetic-energy regularizer of RNODE (Finlay et al. 2020) as an extra ODE state.
//!
//! The field of every block is wrapped as F(t, [z, e]) = [f(t, z), ‖f(t, z)‖²], so that
//! e(T) = ∫₀ᵀ ‖f(t, z(t))‖² dt is integrated along the log-density solve; the divergence is
//! that of the z-block (∂ė/∂e = 0, so tr ∂F/∂(z, e) = tr ∂f/∂z exactly; a Hutchinson estimate
//! uses the noise of the z coordinates only and ignores the e coordinate's). The adjoint of
//! [`crate::adjoint`] then needs nothing new: the loss
//!
//! ```text
//! L = −(1/B) Σ_b [log N(z_b(T)) − ℓ_b(T)] + λ_K (1/B) Σ_b e_b(T)
//! ```
//!
//! is a loss on the end state with ∂L/∂e_b(T) = λ_K / B, and the wrapped field's VJP
//! for a cotangent (a_z, a_e) is f's VJP for a_z + 2 a_e f (the gradient of a_e‖f‖²).
//!
//! The Jacobian-Frobenius regularizer ∫‖Jε‖² cannot be added the same way: its gradient
//! needs the reverse pass of the tangent Jε seeded by 2λ_J·Jε, which
//! [`VectorField`] does not offer (its `vjp_aug` seeds the tangent with c·ε only).

use crate::field::{AugmentedVjp, Divergence, FieldError, Real, VectorField};

/// f with the kinetic-energy state appended (dimension d + 1); reads the wrapped field's
/// parameters and never changes them.
#[derive(Debug)]
pub(crate) struct KineticField<'a, F> {
    pub(crate) inner: &'a F,
    /// An empty parameter view returned by `params_mut` (this wrapper is never optimised:
    /// the trainer updates the wrapped fields themselves).
    empty: Vec<()>,
}

impl<'a, F> KineticField<'a, F> {
    pub(crate) fn new(inner: &'a F) -> Self {
        KineticField { inner, empty: Vec::new() }
    }
}

/// Scratch: the inner field's workspace and the z-block buffers.
#[derive(Debug)]
pub(crate) struct KineticWs<T, W> {
    inner: W,
    z: Vec<T>,
    f: Vec<T>,
    v: Vec<T>,
    jv: Vec<T>,
    eps: Vec<T>,
    a: Vec<T>,
    zc: Vec<T>,
}

fn resize<T: Real>(v: &mut Vec<T>, n: usize) {
    v.resize(n, T::zero());
}

/// Gathers the first `d` of every `d + 1` values of `src` into `dst` (resized).
fn gather<T: Real>(src: &[T], d: usize, dst: &mut Vec<T>) {
    dst.clear();
    dst.extend(src.chunks_exact(d + 1).flat_map(|r| r[..d].iter().copied()));
}

fn batch(len: usize, d: usize) -> Result<usize, FieldError> {
    if len.is_multiple_of(d + 1) {
        Ok(len / (d + 1))
    } else {
        Err(FieldError::BatchShape { len, dim: d + 1 })
    }
}

fn check(buffer: &'static str, found: usize, expected: usize) -> Result<(), FieldError> {
    if found == expected {
        Ok(())
    } else {
        Err(FieldError::BufferLength { buffer, expected, found })
    }
}

/// Writes [f, ‖f‖²] into the augmented `out`.
fn scatter_f<T: Real>(d: usize, f: &[T], out: &mut [T]) {
    for (o, f) in out.chunks_exact_mut(d + 1).zip(f.chunks_exact(d)) {
        o[..d].copy_from_slice(f);
        o[d] = f.iter().fold(T::zero(), |s, &v| s + v * v);
    }
}

/// The inner divergence request: the exact trace, or the z-block of the noise.
fn prepare_div<'w, T: Real>(
    d: usize,
    div: Divergence<'_, T>,
    eps: &'w mut Vec<T>,
    b: usize,
) -> Result<Divergence<'w, T>, FieldError> {
    match div {
        Divergence::Exact => Ok(Divergence::Exact),
        Divergence::Hutchinson(e) => {
            check("eps", e.len(), b * (d + 1))?;
            gather(e, d, eps);
            Ok(Divergence::Hutchinson(eps))
        }
    }
}

/// `out` = a_z + 2 a_e f per sample.
fn cotangent<T: Real>(d: usize, a: &[T], f: &[T], out: &mut Vec<T>) {
    out.clear();
    let two = T::from_f64c(2.0);
    for (ab, fb) in a.chunks_exact(d + 1).zip(f.chunks_exact(d)) {
        let ae = ab[d];
        out.extend(ab[..d].iter().zip(fb).map(|(&x, &f)| x + two * ae * f));
    }
}

/// Writes the z-block cotangent into the augmented `out`, 0 for e.
fn scatter_zc<T: Real>(d: usize, zc: &[T], out: &mut [T]) {
    for (o, c) in out.chunks_exact_mut(d + 1).zip(zc.chunks_exact(d)) {
        o[..d].copy_from_slice(c);
        o[d] = T::zero();
    }
}

impl<T: Real, F: VectorField<T>> VectorField<T> for KineticField<'_, F> {
    type Workspace = KineticWs<T, F::Workspace>;

    fn dim(&self) -> usize {
        self.inner.dim() + 1
    }

    fn n_params(&self) -> usize {
        self.inner.n_params()
    }

    fn params(&self) -> &[T] {
        self.inner.params()
    }

    fn params_mut(&mut self) -> &mut [T] {
        // Read-only view (see `empty`); never called by the CNF or the adjoint.
        let _ = &mut self.empty;
        &mut []
    }

    fn workspace(&self, batch: usize) -> Self::Workspace {
        KineticWs {
            inner: self.inner.workspace(batch),
            z: Vec::new(),
            f: Vec::new(),
            v: Vec::new(),
            jv: Vec::new(),
            eps: Vec::new(),
            a: Vec::new(),
            zc: Vec::new(),
        }
    }

    fn eval(&self, t: T, z: &[T], f: &mut [T], ws: &mut Self::Workspace) -> Result<(), FieldError> {
        let b = batch(z.len(), self.inner.dim())?;
        check("f", f.len(), z.len())?;
        let d = self.inner.dim();
        gather(z, d, &mut ws.z);
        resize(&mut ws.f, b * d);
        self.inner.eval(t, &ws.z, &mut ws.f, &mut ws.inner)?;
        scatter_f(d, &ws.f, f);
        Ok(())
    }

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
        let b = batch(z.len(), self.inner.dim())?;
        check("f", f.len(), z.len())?;
        let d = self.inner.dim();
        gather(z, d, &mut ws.z);
        resize(&mut ws.f, b * d);
        let mut eps = std::mem::take(&mut ws.eps);
        let r = prepare_div(d, div, &mut eps, b)
            .and_then(|dv| self.inner.eval_div(t, &ws.z, dv, &mut ws.f, q, jac_sq, &mut ws.inner));
        ws.eps = eps;
        r?;
        scatter_f(d, &ws.f, f);
        Ok(())
    }

    fn jvp(
        &self,
        t: T,
        z: &[T],
        v: &[T],
        f: &mut [T],
        jv: &mut [T],
        ws: &mut Self::Workspace,
    ) -> Result<(), FieldError> {
        let b = batch(z.len(), self.inner.dim())?;
        for (name, len) in [("v", v.len()), ("f", f.len()), ("jv", jv.len())] {
            check(name, len, z.len())?;
        }
        let d = self.inner.dim();
        gather(z, d, &mut ws.z);
        gather(v, d, &mut ws.v);
        resize(&mut ws.f, b * d);
        resize(&mut ws.jv, b * d);
        self.inner.jvp(t, &ws.z, &ws.v, &mut ws.f, &mut ws.jv, &mut ws.inner)?;
        scatter_f(d, &ws.f, f);
        let two = T::from_f64c(2.0);
        for ((o, fb), jb) in
            jv.chunks_exact_mut(d + 1).zip(ws.f.chunks_exact(d)).zip(ws.jv.chunks_exact(d))
        {
            o[..d].copy_from_slice(jb);
            // d‖f‖² = 2 fᵀ J v.
            o[d] = two * fb.iter().zip(jb).fold(T::zero(), |s, (&x, &y)| s + x * y);
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
        let b = batch(z.len(), self.inner.dim())?;
        for (name, len) in [("a", a.len()), ("f", f.len()), ("z_cot", z_cot.len())] {
            check(name, len, z.len())?;
        }
        let d = self.inner.dim();
        gather(z, d, &mut ws.z);
        resize(&mut ws.f, b * d);
        self.inner.eval(t, &ws.z, &mut ws.f, &mut ws.inner)?;
        cotangent(d, a, &ws.f, &mut ws.a);
        resize(&mut ws.zc, b * d);
        let mut fz = std::mem::take(&mut ws.v);
        resize(&mut fz, b * d);
        let r = self.inner.vjp(t, &ws.z, &ws.a, &mut fz, &mut ws.zc, theta_cot, &mut ws.inner);
        ws.v = fz;
        let dt = r?;
        scatter_f(d, &ws.f, f);
        scatter_zc(d, &ws.zc, z_cot);
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
        let b = batch(z.len(), self.inner.dim())?;
        for (name, len) in [("a", a.len()), ("f", out.f.len()), ("z_cot", out.z_cot.len())] {
            check(name, len, z.len())?;
        }
        let d = self.inner.dim();
        gather(z, d, &mut ws.z);
        resize(&mut ws.f, b * d);
        self.inner.eval(t, &ws.z, &mut ws.f, &mut ws.inner)?;
        cotangent(d, a, &ws.f, &mut ws.a);
        resize(&mut ws.zc, b * d);
        let mut fz = std::mem::take(&mut ws.v);
        resize(&mut fz, b * d);
        let mut eps = std::mem::take(&mut ws.eps);
        let AugmentedVjp { f, q, z_cot, theta_cot } = out;
        let r = prepare_div(d, div, &mut eps, b).and_then(|dv| {
            let inner_out = AugmentedVjp { f: &mut fz, q, z_cot: &mut ws.zc, theta_cot };
            self.inner.vjp_aug(t, &ws.z, dv, &ws.a, c, inner_out, &mut ws.inner)
        });
        ws.eps = eps;
        ws.v = fz;
        let dt = r?;
        scatter_f(d, &ws.f, f);
        scatter_zc(d, &ws.zc, z_cot);
        Ok(dt)
    }
}

/// The regularized loss of one batch and its gradients.
#[derive(Debug, Clone)]
pub(crate) struct KineticLoss<T> {
    /// L = nll + λ_K · kinetic.
    pub(crate) loss: f64,
    /// −(1/B) Σ log p(x_b).
    pub(crate) nll: f64,
    /// (1/B) Σ_b ∫‖f‖².
    pub(crate) kinetic: f64,
    /// ∂L/∂θ_k and ∂L/∂T_k (None when only the value was asked for).
    pub(crate) grad: Option<crate::adjoint::CnfGradient<T>>,
}

/// L = −(1/B) Σ_b log p(x_b) + λ_K (1/B) Σ_b ∫₀ᵀ ‖f‖² dt for the batch `x` (`B × d`), and
/// (if `with_grad`) its gradients by the adjoint on the wrapped fields; the Hutchinson noise
/// (B × (d + 1) per block, the last coordinate unused) comes from `rng`.
pub(crate) fn kinetic_loss<T: Real, F: VectorField<T>, R: rand::Rng + ?Sized>(
    cnf: &crate::cnf::Cnf<T, F>,
    x: &[T],
    rng: &mut R,
    lambda: f64,
    adj: &crate::adjoint::AdjointConfig<T>,
    with_grad: bool,
) -> Result<KineticLoss<T>, crate::Error> {
    use crate::cnf::{std_normal_log_prob, Cnf, CnfBlock};
    let d = cnf.dim();
    let b = crate::error::batch_size(x.len(), d)?;
    let blocks: Vec<_> = cnf
        .blocks()
        .iter()
        .map(|blk| CnfBlock { field: KineticField::new(&blk.field), t_end: blk.t_end })
        .collect();
    let aug = Cnf::chain(blocks, cnf.config().clone())?;
    let mut xa = Vec::with_capacity(b * (d + 1));
    for p in x.chunks_exact(d) {
        xa.extend_from_slice(p);
        xa.push(T::zero());
    }
    let tape = crate::adjoint::cnf_forward(&aug, &xa, rng, adj)?;
    let (z, dl) = (tape.z(), tape.delta_logp());
    let bf = b as f64;
    let (mut nll, mut kin) = (0.0, 0.0);
    for (zb, &l) in z.chunks_exact(d + 1).zip(dl) {
        nll -= (std_normal_log_prob(&zb[..d]) - l).to_f64c();
        kin += zb[d].to_f64c();
    }
    let (nll, kin) = (nll / bf, kin / bf);
    let grad = if with_grad {
        let inv_b = T::one() / T::from_usize(b).unwrap_or_else(T::one);
        let lam = T::from_f64c(lambda) * inv_b;
        let mut dl_dz = Vec::with_capacity(z.len());
        for zb in z.chunks_exact(d + 1) {
            dl_dz.extend(zb[..d].iter().map(|&v| v * inv_b));
            dl_dz.push(lam);
        }
        let dl_dl = vec![inv_b; b];
        Some(tape.backward(&dl_dz, &dl_dl)?)
    } else {
        None
    };
    Ok(KineticLoss { loss: nll + lambda * kin, nll, kinetic: kin, grad })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adjoint::AdjointConfig;
    use crate::cnf::{Cnf, CnfConfig};
    use crate::field::{LinearField, Mlp, MlpConfig};
    use crate::trace::{Noise, TraceEstimator};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// f = A z with A = diag(a₁, a₂): ∫₀ᵀ ‖A e^{At} x‖² dt = Σ_i a_i x_i² (e^{2 a_i T} − 1) / 2.
    #[test]
    fn kinetic_energy_of_a_linear_field() {
        let (a1, a2, t) = (0.3, -0.7, 0.8);
        let field = LinearField::new(&[a1, 0.0, 0.0, a2], &[0.0, 0.0]).unwrap();
        let cfg = CnfConfig { rtol: 1e-11, atol: 1e-11, ..Default::default() };
        let cnf = Cnf::new(field, t, cfg).unwrap();
        let x = [0.5, -1.5, 2.0, 0.25];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let r = kinetic_loss(&cnf, &x, &mut rng, 0.0, &AdjointConfig::default(), false).unwrap();
        let e = |xi: f64, a: f64| a * xi * xi * ((2.0 * a * t).exp() - 1.0) / 2.0;
        let want = 0.5 * (e(0.5, a1) + e(-1.5, a2) + e(2.0, a1) + e(0.25, a2));
        assert!((r.kinetic - want).abs() < 1e-9, "{} vs {want}", r.kinetic);
        // The NLL is the plain CNF's.
        let (lp, _) = cnf.log_prob(&x).unwrap();
        assert!((r.nll + (lp[0] + lp[1]) / 2.0).abs() < 1e-9);
    }

    /// The gradient of NLL + λ∫‖f‖² (θ and T, chained blocks) against central differences,
    /// exact and Hutchinson divergence, at tolerance 1e-10.
    #[test]
    fn regularized_gradient_matches_finite_differences() {
        for trace in [TraceEstimator::Exact, TraceEstimator::Hutchinson(Noise::Rademacher)] {
            let mk = |seed| {
                Mlp::<f64>::new(&MlpConfig { hidden: vec![6], seed, ..Default::default() }).unwrap()
            };
            let cfg = CnfConfig { rtol: 1e-10, atol: 1e-10, trace, ..Default::default() };
            let blocks = vec![
                crate::cnf::CnfBlock { field: mk(1), t_end: 0.4 },
                crate::cnf::CnfBlock { field: mk(2), t_end: 0.3 },
            ];
            let mut cnf = Cnf::chain(blocks, cfg).unwrap();
            let x = [0.3, -0.8, 1.1, 0.4, -0.2, 0.9];
            let lam = 0.7;
            let adj = AdjointConfig::default();
            let loss = |c: &Cnf<f64, Mlp<f64>>| {
                let mut rng = ChaCha8Rng::seed_from_u64(3);
                kinetic_loss(c, &x, &mut rng, lam, &adj, false).unwrap().loss
            };
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let g = kinetic_loss(&cnf, &x, &mut rng, lam, &adj, true).unwrap().grad.unwrap();
            // The regularizer's part of the gradient is not negligible at the tested entries.
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let g0 = kinetic_loss(&cnf, &x, &mut rng, 0.0, &adj, true).unwrap().grad.unwrap();
            assert!((g.theta[0][0] - g0.theta[0][0]).abs() > 1e-3 * g0.theta[0][0].abs());
            assert!((g.t_end[1] - g0.t_end[1]).abs() > 1e-3 * g0.t_end[1].abs());
            let h = 1e-5;
            for (k, idx) in [(0usize, 0usize), (0, 7), (1, 3), (1, 20)] {
                let p0 = cnf.blocks()[k].field.params()[idx];
                cnf.blocks_mut()[k].field.params_mut()[idx] = p0 + h;
                let lp = loss(&cnf);
                cnf.blocks_mut()[k].field.params_mut()[idx] = p0 - h;
                let lm = loss(&cnf);
                cnf.blocks_mut()[k].field.params_mut()[idx] = p0;
                let fd = (lp - lm) / (2.0 * h);
                let rel = (g.theta[k][idx] - fd).abs() / fd.abs().max(1e-3);
                assert!(rel < 1e-5, "{trace:?} θ[{k}][{idx}]: adjoint {} fd {fd}", g.theta[k][idx]);
            }
            for k in 0..2 {
                let t0 = cnf.blocks()[k].t_end;
                cnf.blocks_mut()[k].t_end = t0 + h;
                let lp = loss(&cnf);
                cnf.blocks_mut()[k].t_end = t0 - h;
                let lm = loss(&cnf);
                cnf.blocks_mut()[k].t_end = t0;
                let fd = (lp - lm) / (2.0 * h);
                assert!(
                    (g.t_end[k] - fd).abs() / fd.abs().max(1e-3) < 1e-5,
                    "{trace:?} T[{k}]: {} vs {fd}",
                    g.t_end[k]
                );
            }
        }
    }
}
