//! Affine autoregressive flows with a MADE conditioner (survey §3.5): MAF (Papamakarios et
//! al. 2017) and IAF (Kingma et al. 2016).
//!
//! Naming follows Papamakarios et al.: in MAF the shift and scale of coordinate i depend
//! on the **data** prefix `x_{<i}` (density in one pass, sampling sequential); in IAF on the
//! **latent** prefix `z_{<i}` (sampling in one pass, density sequential). The survey's
//! §3.5 "autoregressive flow" `x_i = f(z_i, h_i(z_{<i}))` is the IAF form in this naming.

use rand::RngCore;

use super::net::MaskedMlp;
use super::{c, check_map, check_vjp, Flow, FlowWs};
use crate::{Error, Real};

/// Masked autoregressive flow with affine transforms:
///
/// ```text
/// x_i = z_i e^{s_i(x_{<i})} + μ_i(x_{<i}),   s_i = a·tanh(ŝ_i/a),
/// z_i = (x_i − μ_i(x_{<i})) e^{−s_i(x_{<i})}            (inverse: one MADE pass),
/// log|det ∂x/∂z| = Σ_i s_i,
/// ```
///
/// where `(ŝ, μ)` are the two output blocks of a [`MaskedMlp::made`] network on `x`
/// (natural order; put a [`super::Permutation`] between layers to vary it). Sampling
/// (`forward`) is sequential: d MADE passes, coordinate i fixed by pass i.
#[derive(Debug, Clone)]
pub struct Maf {
    dim: usize,
    bound: f64,
    net: MaskedMlp,
}

impl Maf {
    /// A MAF layer of dimension `dim ≥ 1` with MADE hidden widths `hidden` and scale bound
    /// `scale_bound = a > 0`.
    pub fn new(dim: usize, hidden: &[usize], scale_bound: f64) -> Result<Self, Error> {
        if dim == 0 {
            return Err(Error::InvalidConfig { name: "maf dim", value: 0.0, expected: "≥ 1" });
        }
        if !(scale_bound.is_finite() && scale_bound > 0.0) {
            return Err(Error::InvalidConfig {
                name: "scale_bound",
                value: scale_bound,
                expected: "finite and > 0",
            });
        }
        Ok(Maf { dim, bound: scale_bound, net: MaskedMlp::made(dim, hidden, 2) })
    }

    /// The conditioner network.
    pub fn net(&self) -> &MaskedMlp {
        &self.net
    }

    /// ws: `[out (2bd), g_out (2bd), g_u (bd), xcur (bd)]`, net scratch in child 0.
    fn ws_len(&self, b: usize) -> usize {
        6 * b * self.dim
    }

    #[inline]
    fn s_mu<T: Real>(&self, out: &[T], r: usize, i: usize) -> (T, T) {
        let d = self.dim;
        let a: T = c(self.bound);
        (a * (out[r * 2 * d + i] / a).tanh(), out[r * 2 * d + d + i])
    }

    /// The one-pass map `z = g(x)` (MAF's inverse) with `ld = −Σ s`.
    fn one_pass<T: Real>(
        &self,
        theta: &[T],
        x: &[T],
        z: &mut [T],
        ld: &mut [T],
        ws: &mut FlowWs<T>,
    ) {
        let (d, b) = (self.dim, ld.len());
        let (buf, sub) = ws.split(self.ws_len(b), 0);
        let out = &mut buf[..2 * b * d];
        self.net.forward(theta, x, b, out, sub);
        for r in 0..b {
            let mut sum = T::zero();
            for i in 0..d {
                let (s, mu) = self.s_mu(out, r, i);
                z[r * d + i] = (x[r * d + i] - mu) * (-s).exp();
                sum += s;
            }
            ld[r] = -sum;
        }
    }

    /// The sequential map `x = g⁻¹(z)` (MAF's forward) with `ld = Σ s`.
    fn sequential<T: Real>(
        &self,
        theta: &[T],
        z: &[T],
        x: &mut [T],
        ld: &mut [T],
        ws: &mut FlowWs<T>,
    ) {
        let (d, b) = (self.dim, ld.len());
        let (buf, sub) = ws.split(self.ws_len(b), 0);
        let (out, rest) = buf.split_at_mut(2 * b * d);
        let xcur = &mut rest[3 * b * d..4 * b * d];
        xcur.iter_mut().for_each(|v| *v = T::zero());
        ld.iter_mut().for_each(|v| *v = T::zero());
        for i in 0..d {
            self.net.forward(theta, xcur, b, out, sub);
            for r in 0..b {
                let (s, mu) = self.s_mu(out, r, i);
                xcur[r * d + i] = z[r * d + i] * s.exp() + mu;
                ld[r] += s;
            }
        }
        x.copy_from_slice(xcur);
    }

    /// Reverse mode of the one-pass map at `x`: `Φ = Σ z_cotᵀ z + ld_cot·(−Σ s)`; writes
    /// `x_cot` and adds to `theta_cot` if given.
    fn one_pass_vjp<T: Real>(
        &self,
        theta: &[T],
        x: &[T],
        z_cot: &[T],
        ld_cot: &[T],
        x_cot: &mut [T],
        theta_cot: Option<&mut [T]>,
        ws: &mut FlowWs<T>,
    ) {
        let (d, b) = (self.dim, ld_cot.len());
        let (buf, sub) = ws.split(self.ws_len(b), 0);
        let (out, rest) = buf.split_at_mut(2 * b * d);
        let (g_out, rest) = rest.split_at_mut(2 * b * d);
        let gu = &mut rest[..b * d];
        self.net.forward(theta, x, b, out, sub);
        let a: T = c(self.bound);
        for r in 0..b {
            for i in 0..d {
                let (s, mu) = self.s_mu(out, r, i);
                let e = (-s).exp();
                let g = z_cot[r * d + i];
                let z = (x[r * d + i] - mu) * e;
                let q = s / a;
                g_out[r * 2 * d + i] = (-g * z - ld_cot[r]) * (T::one() - q * q);
                g_out[r * 2 * d + d + i] = -g * e;
                x_cot[r * d + i] = g * e;
            }
        }
        self.net.backward(theta, x, b, g_out, Some(&mut *gu), theta_cot, sub);
        for k in 0..b * d {
            x_cot[k] += gu[k];
        }
    }
}

impl<T: Real> Flow<T> for Maf {
    fn name(&self) -> &'static str {
        "maf"
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn n_params(&self) -> usize {
        self.net.n_params()
    }
    fn init_params(&self, theta: &mut [T], rng: &mut dyn RngCore) {
        self.net.init(theta, rng, true);
    }
    fn forward(
        &self,
        theta: &[T],
        z: &[T],
        x: &mut [T],
        ld: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        check_map(self.dim, self.net.n_params(), theta, z, x.len(), ld.len())?;
        self.sequential(theta, z, x, ld, ws);
        Ok(())
    }
    fn inverse(
        &self,
        theta: &[T],
        x: &[T],
        z: &mut [T],
        ld: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        check_map(self.dim, self.net.n_params(), theta, x, z.len(), ld.len())?;
        self.one_pass(theta, x, z, ld, ws);
        Ok(())
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
        check_vjp(self.dim, self.net.n_params(), theta, x, z_cot, ld_cot, x_cot, theta_cot)?;
        self.one_pass_vjp(theta, x, z_cot, ld_cot, x_cot, Some(theta_cot), ws);
        Ok(())
    }
}

/// Inverse autoregressive flow: the inverse of a [`Maf`] with the same parameters,
///
/// ```text
/// x = g(z):  x_i = (z_i − μ_i(z_{<i})) e^{−s_i(z_{<i})}     (sampling: one MADE pass),
/// log|det ∂x/∂z| = −Σ_i s_i(z),   z = g⁻¹(x) sequential (d passes),
/// ```
///
/// i.e. Kingma et al.'s `x = σ(z_{<i}) z_i + m(z_{<i})` with `σ = e^{−s}`, `m = −μ e^{−s}`.
/// `Iaf::new(maf).forward == maf.inverse` and vice versa (tested on separately computed
/// outputs: the one-pass and the sequential maps are different code).
///
/// Its density gradient ([`Flow::inverse_vjp`], through the sequential inverse) uses the
/// implicit function theorem: with `u = g⁻¹(x)`, `J = ∂g/∂u` lower-triangular with
/// `J_ii = e^{−s_i}`, `∂Φ/∂x = J⁻ᵀ c` (c the explicit cotangent of u) solved by back
/// substitution, one MADE vector-Jacobian product per coordinate (d in all), and
/// `∂Φ/∂θ = −(J⁻ᵀc)ᵀ ∂g/∂θ` plus the explicit θ-dependence of the log-det.
#[derive(Debug, Clone)]
pub struct Iaf {
    maf: Maf,
}

impl Iaf {
    /// An IAF layer of dimension `dim ≥ 1` (see [`Maf::new`]).
    pub fn new(dim: usize, hidden: &[usize], scale_bound: f64) -> Result<Self, Error> {
        Ok(Iaf { maf: Maf::new(dim, hidden, scale_bound)? })
    }

    /// The IAF that inverts `maf` (same parameter layout).
    pub fn from_maf(maf: Maf) -> Self {
        Iaf { maf }
    }
}

impl<T: Real> Flow<T> for Iaf {
    fn name(&self) -> &'static str {
        "iaf"
    }
    fn dim(&self) -> usize {
        self.maf.dim
    }
    fn n_params(&self) -> usize {
        self.maf.net.n_params()
    }
    fn init_params(&self, theta: &mut [T], rng: &mut dyn RngCore) {
        self.maf.net.init(theta, rng, true);
    }
    fn forward(
        &self,
        theta: &[T],
        z: &[T],
        x: &mut [T],
        ld: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        check_map(self.maf.dim, self.maf.net.n_params(), theta, z, x.len(), ld.len())?;
        self.maf.one_pass(theta, z, x, ld, ws);
        Ok(())
    }
    fn inverse(
        &self,
        theta: &[T],
        x: &[T],
        z: &mut [T],
        ld: &mut [T],
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        check_map(self.maf.dim, self.maf.net.n_params(), theta, x, z.len(), ld.len())?;
        self.maf.sequential(theta, x, z, ld, ws);
        Ok(())
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
        let d = self.maf.dim;
        let b = check_vjp(d, self.maf.net.n_params(), theta, x, z_cot, ld_cot, x_cot, theta_cot)?;
        let n = b * d;
        // buf: u, cvec, v, vt, q, sdiag (n each), then −ld_cot and zeros (b each).
        let (buf, sub) = ws.split(6 * n + 2 * b, 0);
        let (u, rest) = buf.split_at_mut(n);
        let (cv, rest) = rest.split_at_mut(n);
        let (v, rest) = rest.split_at_mut(n);
        let (vt, rest) = rest.split_at_mut(n);
        let (q, rest) = rest.split_at_mut(n);
        let (sd, rest) = rest.split_at_mut(n);
        let (nl, zeros) = rest.split_at_mut(b);
        // u = g⁻¹(x); the log-det Σ s(u) is MAF's −(one-pass log-det) at u.
        self.maf.sequential(theta, x, u, nl, sub);
        for r in 0..b {
            nl[r] = -ld_cot[r];
            zeros[r] = T::zero();
        }
        // Explicit part: c = z_cot + ∂(ℓ̄ Σ s(u))/∂u, θ gets ∂(ℓ̄ Σ s)/∂θ directly.
        vt.iter_mut().for_each(|w| *w = T::zero());
        self.maf.one_pass_vjp(theta, u, vt, nl, cv, Some(&mut *theta_cot), sub);
        for k in 0..n {
            cv[k] += z_cot[k];
        }
        // Diagonal J_ii = e^{−s_i(u)}: s from the one-pass map's log-det pieces.
        {
            let (bufm, subm) = sub.split(self.maf.ws_len(b), 0);
            let out = &mut bufm[..2 * n];
            self.maf.net.forward(theta, u, b, out, subm);
            for r in 0..b {
                for i in 0..d {
                    sd[r * d + i] = self.maf.s_mu(out, r, i).0;
                }
            }
        }
        // Back substitution Jᵀ v = c.
        v.iter_mut().for_each(|w| *w = T::zero());
        for i in (0..d).rev() {
            if i + 1 < d {
                for r in 0..b {
                    for j in 0..d {
                        vt[r * d + j] = if j > i { v[r * d + j] } else { T::zero() };
                    }
                }
                self.maf.one_pass_vjp(theta, u, vt, zeros, q, None, sub);
            } else {
                q.iter_mut().for_each(|w| *w = T::zero());
            }
            for r in 0..b {
                v[r * d + i] = (cv[r * d + i] - q[r * d + i]) * sd[r * d + i].exp();
            }
        }
        // θ: −vᵀ ∂g/∂θ.
        for k in 0..n {
            vt[k] = -v[k];
        }
        self.maf.one_pass_vjp(theta, u, vt, zeros, q, Some(theta_cot), sub);
        x_cot.copy_from_slice(v);
        Ok(())
    }
}
