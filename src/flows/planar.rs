//! Planar and radial flows (Rezende & Mohamed 2015, "Variational inference with
//! normalizing flows"), with their invertibility constraints, inverses, and density
//! gradients through the inverse by the implicit function theorem.
//!
//! Both are `x = g(z; θ)` with a rank-one Jacobian update, so for the density direction
//! `z = g⁻¹(x)` the reverse mode needs `J⁻ᵀ c` (Sherman–Morrison, O(d)):
//!
//! ```text
//! Φ = z̄ᵀz + ℓ̄·log|det ∂z/∂x|,   log|det ∂z/∂x| = −L(z),  L = log|det ∂g/∂z|,
//! c = z̄ − ℓ̄ ∂L/∂z,   p = J⁻ᵀ c,   ∂Φ/∂x = p,   ∂Φ/∂θ = −ℓ̄ ∂L/∂θ − pᵀ ∂g/∂θ.
//! ```

use rand::{Rng, RngCore};

use super::{c, check_dim, check_map, check_vjp, Flow, FlowWs};
use crate::{Error, Real};

fn softplus<T: Real>(x: T) -> T {
    if x > c(20.0) {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).fold(T::zero(), |s, (&x, &y)| s + x * y)
}

/// Planar flow: `x = z + û tanh(wᵀz + b)`, with
///
/// ```text
/// û = u + (m(wᵀu) − wᵀu) w/‖w‖²,   m(a) = −1 + softplus(a)   (so wᵀû = m(wᵀu) > −1),
/// log|det ∂x/∂z| = log(1 + wᵀû tanh'(wᵀz + b)).
/// ```
///
/// The constraint `wᵀû > −1` makes the map invertible: with `a = wᵀz`, the scalar
/// `wᵀx = a + wᵀû tanh(a + b)` is strictly increasing in a, solved by safeguarded Newton
/// (bracket `[wᵀx − |wᵀû|, wᵀx + |wᵀû|]`), then `z = x − û tanh(a + b)`. θ = `[u (d), w (d),
/// b]`, initialised to `U(−0.1, 0.1)` (u, w) and 0 (b).
#[derive(Debug, Clone)]
pub struct Planar {
    dim: usize,
}

impl Planar {
    /// A `dim`-dimensional planar flow; errors if `dim` is 0.
    pub fn new(dim: usize) -> Result<Self, Error> {
        check_dim("planar dim", dim, dim.checked_mul(2).and_then(|n| n.checked_add(1)))?;
        Ok(Planar { dim })
    }

    /// û from (u, w) into `uh`; returns (wᵀu, wᵀû = m(wᵀu), ‖w‖²).
    fn u_hat<T: Real>(&self, theta: &[T], uh: &mut [T]) -> (T, T, T) {
        let d = self.dim;
        let (u, w) = (&theta[..d], &theta[d..2 * d]);
        let a = dot(w, u);
        let n = dot(w, w).max(T::min_positive_value());
        let m = -T::one() + softplus(a);
        for i in 0..d {
            uh[i] = u[i] + (m - a) * w[i] / n;
        }
        (a, m, n)
    }
}

impl<T: Real> Flow<T> for Planar {
    fn name(&self) -> &'static str {
        "planar"
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn n_params(&self) -> usize {
        2 * self.dim + 1
    }
    fn init_params(&self, theta: &mut [T], rng: &mut dyn RngCore) -> Result<(), Error> {
        crate::error::check_len("theta", theta.len(), Flow::<T>::n_params(self))?;
        for v in theta.iter_mut() {
            *v = c(0.1 * (2.0 * rng.random::<f64>() - 1.0));
        }
        theta[2 * self.dim] = T::zero();
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
        let d = self.dim;
        let b = check_map(d, 2 * d + 1, theta, z, x.len(), ld.len())?;
        let uh = ws.take(d);
        let (_, beta, _) = self.u_hat(theta, uh);
        let (w, bias) = (&theta[d..2 * d], theta[2 * d]);
        for r in 0..b {
            let zr = &z[r * d..(r + 1) * d];
            let t = (dot(w, zr) + bias).tanh();
            for i in 0..d {
                x[r * d + i] = zr[i] + uh[i] * t;
            }
            ld[r] = (T::one() + beta * (T::one() - t * t)).ln();
        }
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
        let d = self.dim;
        let b = check_map(d, 2 * d + 1, theta, x, z.len(), ld.len())?;
        let uh = ws.take(d);
        let (_, beta, _) = self.u_hat(theta, uh);
        let (w, bias) = (&theta[d..2 * d], theta[2 * d]);
        for r in 0..b {
            let xr = &x[r * d..(r + 1) * d];
            let a = solve_planar(dot(w, xr), beta, bias).ok_or(Error::OutOfDomain {
                index: r * d,
                value: xr[0].to_f64c(),
                expected: "a point whose planar-flow inverse converges",
            })?;
            let t = (a + bias).tanh();
            for i in 0..d {
                z[r * d + i] = xr[i] - uh[i] * t;
            }
            ld[r] = -(T::one() + beta * (T::one() - t * t)).ln();
        }
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
        let d = self.dim;
        let b = check_vjp(d, 2 * d + 1, theta, x, z_cot, ld_cot, x_cot, theta_cot)?;
        let buf = ws.take(4 * d);
        let (uh, rest) = buf.split_at_mut(d);
        let (g_uh, rest) = rest.split_at_mut(d);
        let (g_w, z) = rest.split_at_mut(d);
        let z = &mut z[..d];
        let (a_wu, beta, n) = self.u_hat(theta, uh);
        let (u, w, bias) = (&theta[..d], &theta[d..2 * d], theta[2 * d]);
        g_uh.iter_mut().for_each(|v| *v = T::zero());
        g_w.iter_mut().for_each(|v| *v = T::zero());
        let (mut g_beta, mut g_b) = (T::zero(), T::zero());
        let one = T::one();
        for r in 0..b {
            let xr = &x[r * d..(r + 1) * d];
            let a = solve_planar(dot(w, xr), beta, bias).ok_or(Error::OutOfDomain {
                index: r * d,
                value: xr[0].to_f64c(),
                expected: "a point whose planar-flow inverse converges",
            })?;
            let t = (a + bias).tanh();
            for i in 0..d {
                z[i] = xr[i] - uh[i] * t;
            }
            let h1 = one - t * t;
            let h2 = -c::<T>(2.0) * t * h1;
            let dd = one + h1 * beta;
            let gl = ld_cot[r];
            let gz = &z_cot[r * d..(r + 1) * d];
            // c = z̄ − ℓ̄ ∂L/∂z, ∂L/∂z = (h''β/D) w;  p = c − ψ (ûᵀc)/D, ψ = h' w.
            let k = gl * h2 * beta / dd;
            let p = &mut x_cot[r * d..(r + 1) * d];
            for i in 0..d {
                p[i] = gz[i] - k * w[i];
            }
            let uc = dot(uh, p);
            for i in 0..d {
                p[i] -= h1 * w[i] * uc / dd;
            }
            let pu = dot(p, uh);
            // ∂Φ/∂θ = −ℓ̄ ∂L/∂θ − pᵀ∂g/∂θ, g = z + û h(wᵀz + b).
            for i in 0..d {
                g_uh[i] -= p[i] * t;
                g_w[i] -= (k + pu * h1) * z[i];
            }
            g_b -= k + pu * h1;
            g_beta -= gl * h1 / dd;
        }
        // û = u + κ w/n (κ = m(a) − a, a = wᵀu), β = m(a): back to u and w.
        let mp = sigmoid(a_wu);
        let kappa = beta - a_wu;
        let gw_dot = dot(g_uh, w);
        let (gu, rest) = theta_cot.split_at_mut(d);
        let (gwt, gb) = rest.split_at_mut(d);
        for j in 0..d {
            gu[j] += g_uh[j] + (gw_dot / n) * (mp - one) * w[j] + g_beta * mp * w[j];
            gwt[j] += g_w[j]
                + g_beta * mp * u[j]
                + (gw_dot / n) * (mp - one) * u[j]
                + kappa * g_uh[j] / n
                - c::<T>(2.0) * kappa * gw_dot * w[j] / (n * n);
        }
        gb[0] += g_b;
        Ok(())
    }
}

/// Solves `a + β tanh(a + b) = s` for a (β > −1, so the left side is increasing).
fn solve_planar<T: Real>(s: T, beta: T, bias: T) -> Option<T> {
    let (mut lo, mut hi) = (s - beta.abs(), s + beta.abs());
    let f = |a: T| a + beta * (a + bias).tanh() - s;
    if f(lo) > T::zero() || f(hi) < T::zero() {
        return None;
    }
    let mut a = s - beta * (s + bias).tanh();
    a = a.max(lo).min(hi);
    for _ in 0..200 {
        let fa = f(a);
        if fa == T::zero() {
            return Some(a);
        }
        if fa > T::zero() {
            hi = a;
        } else {
            lo = a;
        }
        let t = (a + bias).tanh();
        let df = T::one() + beta * (T::one() - t * t);
        let mut next = a - fa / df;
        if !(next > lo && next < hi) {
            next = (lo + hi) * c(0.5);
        }
        if (next - a).abs() <= T::epsilon() * (T::one() + a.abs()) {
            return Some(next);
        }
        a = next;
    }
    Some(a)
}

/// Radial flow: `x = z + β h(α, r)(z − z₀)`, `r = ‖z − z₀‖`, `h = 1/(α + r)`, with
///
/// ```text
/// α = softplus(α̂) > 0,   β = −α + softplus(β̂) ≥ −α   (the invertibility constraint),
/// log|det ∂x/∂z| = (d − 1) log(1 + βh) + log(1 + βh + βh′r) = (d − 1) log(1 + βh) + log(1 + αβh²).
/// ```
///
/// Inverse in closed form: `ρ = ‖x − z₀‖ = r (1 + β/(α + r))` gives
/// `r = ½[−(α + β − ρ) + √((α + β − ρ)² + 4αρ)]` and `z − z₀ = (x − z₀)/(1 + β/(α + r))`.
/// θ = `[z₀ (d), α̂, β̂]`, initialised to `z₀ ~ U(−0.1, 0.1)`, α̂ = 0, β̂ = 0.
#[derive(Debug, Clone)]
pub struct Radial {
    dim: usize,
}

impl Radial {
    /// A `dim`-dimensional radial flow; errors if `dim` is 0.
    pub fn new(dim: usize) -> Result<Self, Error> {
        check_dim("radial dim", dim, dim.checked_add(2))?;
        Ok(Radial { dim })
    }

    fn ab<T: Real>(&self, theta: &[T]) -> (T, T) {
        let d = self.dim;
        let alpha = softplus(theta[d]);
        (alpha, -alpha + softplus(theta[d + 1]))
    }

    /// r from ρ (the closed-form inverse).
    fn r_of_rho<T: Real>(alpha: T, beta: T, rho: T) -> T {
        let q = alpha + beta - rho;
        let four: T = c(4.0);
        let disc = (q * q + four * alpha * rho).sqrt();
        // Cancellation-free root of r² + q r − αρ = 0.
        if q > T::zero() {
            c::<T>(2.0) * alpha * rho / (q + disc)
        } else {
            (disc - q) * c(0.5)
        }
    }
}

impl<T: Real> Flow<T> for Radial {
    fn name(&self) -> &'static str {
        "radial"
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn n_params(&self) -> usize {
        self.dim + 2
    }
    fn init_params(&self, theta: &mut [T], rng: &mut dyn RngCore) -> Result<(), Error> {
        crate::error::check_len("theta", theta.len(), Flow::<T>::n_params(self))?;
        for v in theta.iter_mut() {
            *v = c(0.1 * (2.0 * rng.random::<f64>() - 1.0));
        }
        theta[self.dim] = T::zero();
        theta[self.dim + 1] = T::zero();
        Ok(())
    }
    fn forward(
        &self,
        theta: &[T],
        z: &[T],
        x: &mut [T],
        ld: &mut [T],
        _ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        let d = self.dim;
        let b = check_map(d, d + 2, theta, z, x.len(), ld.len())?;
        let (alpha, beta) = self.ab(theta);
        let z0 = &theta[..d];
        let dm1: T = c((d - 1) as f64);
        for r in 0..b {
            let zr = &z[r * d..(r + 1) * d];
            let rad = zr.iter().zip(z0).fold(T::zero(), |s, (&a, &o)| s + (a - o) * (a - o)).sqrt();
            let h = T::one() / (alpha + rad);
            for i in 0..d {
                x[r * d + i] = zr[i] + beta * h * (zr[i] - z0[i]);
            }
            ld[r] = dm1 * (T::one() + beta * h).ln() + (T::one() + alpha * beta * h * h).ln();
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
        let d = self.dim;
        let b = check_map(d, d + 2, theta, x, z.len(), ld.len())?;
        let (alpha, beta) = self.ab(theta);
        let z0 = &theta[..d];
        let dm1: T = c((d - 1) as f64);
        for r in 0..b {
            let xr = &x[r * d..(r + 1) * d];
            let rho = xr.iter().zip(z0).fold(T::zero(), |s, (&a, &o)| s + (a - o) * (a - o)).sqrt();
            let rad = Self::r_of_rho(alpha, beta, rho);
            let h = T::one() / (alpha + rad);
            let f = T::one() + beta * h;
            for i in 0..d {
                z[r * d + i] = z0[i] + (xr[i] - z0[i]) / f;
            }
            ld[r] = -(dm1 * f.ln() + (T::one() + alpha * beta * h * h).ln());
        }
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
        let d = self.dim;
        let b = check_vjp(d, d + 2, theta, x, z_cot, ld_cot, x_cot, theta_cot)?;
        let (alpha, beta) = self.ab(theta);
        let z0 = &theta[..d];
        let v = ws.take(d);
        let one = T::one();
        let two: T = c(2.0);
        let dm1: T = c((d - 1) as f64);
        let (mut g_alpha, mut g_beta) = (T::zero(), T::zero());
        for r in 0..b {
            let xr = &x[r * d..(r + 1) * d];
            let rho = xr.iter().zip(z0).fold(T::zero(), |s, (&a, &o)| s + (a - o) * (a - o)).sqrt();
            let rad = Self::r_of_rho(alpha, beta, rho).max(T::min_positive_value());
            let h = one / (alpha + rad);
            let a1 = one + beta * h;
            let a2 = one + alpha * beta * h * h;
            for i in 0..d {
                v[i] = (xr[i] - z0[i]) / a1;
            }
            let gl = ld_cot[r];
            let gz = &z_cot[r * d..(r + 1) * d];
            // L = (d−1) ln A1 + ln A2; ∂L/∂h, then h = 1/(α + r).
            let l_h = dm1 * beta / a1 + two * alpha * beta * h / a2;
            let l_r = -l_h * h * h;
            // c = z̄ − ℓ̄ ∂L/∂z, ∂L/∂z = l_r v/r;  J = A1 I + k v vᵀ, k = −βh²/r (symmetric).
            let p = &mut x_cot[r * d..(r + 1) * d];
            for i in 0..d {
                p[i] = gz[i] - gl * l_r * v[i] / rad;
            }
            let k = -beta * h * h / rad;
            let vc = dot(v, p);
            for i in 0..d {
                p[i] = p[i] / a1 - k / (a1 * a2) * vc * v[i];
            }
            let pv = dot(p, v);
            // −ℓ̄ ∂L/∂θ (z fixed): ∂L/∂z₀ = −l_r v/r; ∂L/∂α = βh²/A2 − l_h h²;
            // ∂L/∂β = (d−1)h/A1 + αh²/A2.
            // −pᵀ∂g/∂θ, g = z + βh v: ∂/∂z₀ = −βh p + βh²(pᵀv) v/r; ∂/∂α = −βh² pᵀv; ∂/∂β = h pᵀv.
            for i in 0..d {
                theta_cot[i] -=
                    gl * (-l_r * v[i] / rad) + (-beta * h * p[i] + beta * h * h * pv * v[i] / rad);
            }
            g_alpha -= gl * (beta * h * h / a2 - l_h * h * h) + (-beta * h * h * pv);
            g_beta -= gl * (dm1 * h / a1 + alpha * h * h / a2) + h * pv;
        }
        // α = softplus(α̂), β = −α + softplus(β̂).
        let (sa, sb) = (sigmoid(theta[d]), sigmoid(theta[d + 1]));
        theta_cot[d] += sa * (g_alpha - g_beta);
        theta_cot[d + 1] += sb * g_beta;
        Ok(())
    }
}
