//! Monotone rational-quadratic splines (Durkan et al. 2019, "Neural Spline Flows") with
//! identity (linear) tails, and the elementwise spline flow.

use rand::RngCore;

use super::{c, check_dim, check_map, check_vjp, Flow, FlowWs};
use crate::error::{check_finite, check_len};
use crate::{Error, Real};

/// The most bins a spline may have (scratch lives on the stack).
pub const MAX_BINS: usize = 64;
/// The largest half-width B a spline may have: `f32::MAX / 2`, so that the interval's
/// width 2B is finite in f32 and f64 alike.
pub const MAX_BOUND: f64 = f32::MAX as f64 / 2.0;
const MIN_WIDTH: f64 = 1e-3;
const MIN_HEIGHT: f64 = 1e-3;
const MIN_DERIV: f64 = 1e-3;

/// Shape of a rational-quadratic spline: `bins` = K bins on `[−bound, bound]`, identity
/// outside. Its raw parameters are `3K − 1` numbers `[ŵ (K), ĥ (K), d̂ (K − 1)]`:
///
/// ```text
/// w_k = 2B (m_w + (1 − K m_w) softmax(ŵ)_k),   h_k likewise from ĥ (bin widths, heights),
/// δ_0 = δ_K = 1,   δ_k = m_d + softplus(d̂_{k−1} + c₀)  (c₀: δ = 1 at d̂ = 0),
/// knots x_k = −B + Σ_{j<k} w_j,  y_k = −B + Σ_{j<k} h_j;  in bin k, ξ = (x − x_k)/w_k,
/// s_k = h_k/w_k:
/// y = y_k + h_k [s_k ξ² + δ_k ξ(1−ξ)] / [s_k + (δ_{k+1} + δ_k − 2 s_k) ξ(1−ξ)],
/// dy/dx = s_k² [δ_{k+1} ξ² + 2 s_k ξ(1−ξ) + δ_k (1−ξ)²] / [s_k + (δ_{k+1} + δ_k − 2 s_k) ξ(1−ξ)]².
/// ```
///
/// (m_w = m_h = m_d = 10⁻³.) All-zero raw parameters give the identity. The inverse solves
/// the quadratic `a ξ² + b ξ + c = 0` in the bin of y (Durkan et al., eq. 6–8) with the
/// cancellation-free root `ξ = 2c / (−b − √(b² − 4ac))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RqShape {
    /// Number of bins K (1 ≤ K ≤ [`MAX_BINS`]).
    pub bins: usize,
    /// Half-width B of the spline's interval (0 < B ≤ [`MAX_BOUND`]).
    pub bound: f64,
}

impl RqShape {
    /// Checks K (1 ≤ K ≤ [`MAX_BINS`]) and B (0 < B ≤ [`MAX_BOUND`], so 2B is finite in
    /// either float type); [`Error::InvalidConfig`] otherwise.
    pub fn validate(&self) -> Result<(), Error> {
        if self.bins == 0 || self.bins > MAX_BINS {
            return Err(Error::InvalidConfig {
                name: "spline bins",
                value: self.bins as f64,
                expected: "1 ..= 64",
            });
        }
        if !(self.bound > 0.0 && self.bound <= MAX_BOUND) {
            return Err(Error::InvalidConfig {
                name: "spline bound",
                value: self.bound,
                expected: "> 0 and ≤ f32::MAX / 2 (so that 2·bound is finite)",
            });
        }
        Ok(())
    }

    /// Raw parameters per spline, `3K − 1` (0 for K = 0; saturating, never wrapping, for a
    /// shape that [`RqShape::validate`] refuses).
    pub fn n_params(&self) -> usize {
        self.bins.saturating_mul(3).saturating_sub(1)
    }

    /// Checks a public spline call: the shape, `raw` (and `g_raw`) of length
    /// [`RqShape::n_params`], a finite point.
    fn check_call<T: Real>(&self, raw: &[T], g_raw: Option<&[T]>, x: T) -> Result<(), Error> {
        self.validate()?;
        check_len("raw", raw.len(), self.n_params())?;
        if let Some(g) = g_raw {
            check_len("g_raw", g.len(), self.n_params())?;
        }
        check_finite(raw, raw.len())?;
        check_finite(&[x], 1)
    }
}

/// The normalised knots of one spline.
struct Knots<T> {
    w: [T; MAX_BINS],
    h: [T; MAX_BINS],
    /// δ_0 … δ_K.
    d: [T; MAX_BINS + 1],
    /// x_0 … x_K, y_0 … y_K.
    xk: [T; MAX_BINS + 1],
    yk: [T; MAX_BINS + 1],
    /// softmax probabilities (kept for the backward pass).
    pw: [T; MAX_BINS],
    ph: [T; MAX_BINS],
}

fn softmax<T: Real>(raw: &[T], p: &mut [T]) {
    let m = raw.iter().fold(T::neg_infinity(), |a, &v| a.max(v));
    let mut s = T::zero();
    for (pi, &r) in p.iter_mut().zip(raw) {
        *pi = (r - m).exp();
        s += *pi;
    }
    for pi in p.iter_mut() {
        *pi /= s;
    }
}

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

/// c₀ with softplus(c₀) = 1 − m_d.
fn c0<T: Real>() -> T {
    c(((1.0 - MIN_DERIV).exp() - 1.0).ln())
}

impl<T: Real> Knots<T> {
    fn new(shape: RqShape, raw: &[T]) -> Self {
        let k = shape.bins;
        let b: T = c(shape.bound);
        let two_b = b + b;
        let z = T::zero();
        let mut kn = Knots {
            w: [z; MAX_BINS],
            h: [z; MAX_BINS],
            d: [z; MAX_BINS + 1],
            xk: [z; MAX_BINS + 1],
            yk: [z; MAX_BINS + 1],
            pw: [z; MAX_BINS],
            ph: [z; MAX_BINS],
        };
        softmax(&raw[..k], &mut kn.pw[..k]);
        softmax(&raw[k..2 * k], &mut kn.ph[..k]);
        let (mw, mh): (T, T) = (c(MIN_WIDTH), c(MIN_HEIGHT));
        let kt: T = c(k as f64);
        kn.xk[0] = -b;
        kn.yk[0] = -b;
        for i in 0..k {
            kn.w[i] = two_b * (mw + (T::one() - kt * mw) * kn.pw[i]);
            kn.h[i] = two_b * (mh + (T::one() - kt * mh) * kn.ph[i]);
            kn.xk[i + 1] = kn.xk[i] + kn.w[i];
            kn.yk[i + 1] = kn.yk[i] + kn.h[i];
        }
        kn.xk[k] = b;
        kn.yk[k] = b;
        kn.d[0] = T::one();
        kn.d[k] = T::one();
        for i in 1..k {
            kn.d[i] = c::<T>(MIN_DERIV) + softplus(raw[2 * k + i - 1] + c0());
        }
        kn
    }

    fn bin(knots: &[T], k: usize, v: T) -> usize {
        let mut i = 0;
        while i + 1 < k && v >= knots[i + 1] {
            i += 1;
        }
        i
    }
}

/// `y = RQ(x)` and `log dy/dx` of one spline with raw parameters `raw` (identity tails).
///
/// Errors: a shape [`RqShape::validate`] refuses, `raw` not of length
/// [`RqShape::n_params`] ([`Error::BufferLength`]), a non-finite `raw` or `x`
/// ([`Error::NonFiniteInput`]).
///
/// ```
/// use odeflow::flows::{rq_eval, rq_inverse, RqShape};
///
/// let shape = RqShape { bins: 4, bound: 2.0 };
/// let raw = [0.3, -0.2, 0.1, 0.0, 0.5, -0.4, 0.2, 0.1, -0.3, 0.7, 0.2];
/// let (y, ld) = rq_eval(shape, &raw, 0.5)?;
/// let (x, ld_inv) = rq_inverse(shape, &raw, y)?;
/// assert!((x - 0.5f64).abs() < 1e-12 && (ld + ld_inv).abs() < 1e-12);
/// assert!(rq_eval(shape, &raw[..3], 0.5).is_err()); // 3K − 1 = 11 raw parameters
/// # Ok::<(), odeflow::Error>(())
/// ```
pub fn rq_eval<T: Real>(shape: RqShape, raw: &[T], x: T) -> Result<(T, T), Error> {
    shape.check_call(raw, None, x)?;
    Ok(eval_raw(shape, raw, x))
}

/// [`rq_eval`] for a validated shape and `raw` of the right length (the layers' inner loop).
pub(crate) fn eval_raw<T: Real>(shape: RqShape, raw: &[T], x: T) -> (T, T) {
    let b: T = c(shape.bound);
    if x <= -b || x >= b {
        return (x, T::zero());
    }
    eval_kn(shape, &Knots::new(shape, raw), x)
}

fn eval_kn<T: Real>(shape: RqShape, kn: &Knots<T>, x: T) -> (T, T) {
    let b: T = c(shape.bound);
    if x <= -b || x >= b {
        return (x, T::zero());
    }
    let k = Knots::bin(&kn.xk, shape.bins, x);
    let (wk, hk, d0, d1) = (kn.w[k], kn.h[k], kn.d[k], kn.d[k + 1]);
    let s = hk / wk;
    let xi = (x - kn.xk[k]) / wk;
    let al = xi * (T::one() - xi);
    let num = hk * (s * xi * xi + d0 * al);
    let den = s + (d1 + d0 - s - s) * al;
    let om = T::one() - xi;
    let q = d1 * xi * xi + (s + s) * al + d0 * om * om;
    (kn.yk[k] + num / den, (s * s * q).ln() - (den * den).ln())
}

/// `x = RQ⁻¹(y)` and `log dx/dy = −log dy/dx(x)`. Errors as [`rq_eval`].
pub fn rq_inverse<T: Real>(shape: RqShape, raw: &[T], y: T) -> Result<(T, T), Error> {
    shape.check_call(raw, None, y)?;
    Ok(inverse_raw(shape, raw, y))
}

/// [`rq_inverse`] for a validated shape and `raw` of the right length.
pub(crate) fn inverse_raw<T: Real>(shape: RqShape, raw: &[T], y: T) -> (T, T) {
    let b: T = c(shape.bound);
    if y <= -b || y >= b {
        return (y, T::zero());
    }
    inverse_kn(shape, &Knots::new(shape, raw), y)
}

fn inverse_kn<T: Real>(shape: RqShape, kn: &Knots<T>, y: T) -> (T, T) {
    let b: T = c(shape.bound);
    if y <= -b || y >= b {
        return (y, T::zero());
    }
    let k = Knots::bin(&kn.yk, shape.bins, y);
    let (wk, hk, d0, d1) = (kn.w[k], kn.h[k], kn.d[k], kn.d[k + 1]);
    let s = hk / wk;
    let dy = y - kn.yk[k];
    let sum = d1 + d0 - s - s;
    let a = hk * (s - d0) + dy * sum;
    let bq = hk * d0 - dy * sum;
    let cq = -s * dy;
    let disc = (bq * bq - c::<T>(4.0) * a * cq).max(T::zero());
    let xi = (cq + cq) / (-bq - disc.sqrt());
    let xi = xi.max(T::zero()).min(T::one());
    let x = kn.xk[k] + xi * wk;
    let al = xi * (T::one() - xi);
    let den = s + sum * al;
    let om = T::one() - xi;
    let q = d1 * xi * xi + (s + s) * al + d0 * om * om;
    (x, (den * den).ln() - (s * s * q).ln())
}

/// Reverse mode of [`rq_eval`] at `x`: for `Φ = g_y·y + g_l·log dy/dx` returns `∂Φ/∂x` and
/// adds `∂Φ/∂raw` to `g_raw`. Errors as [`rq_eval`], and `g_raw` not of length
/// [`RqShape::n_params`] or non-finite cotangents (`g_raw` then unchanged).
pub fn rq_eval_vjp<T: Real>(
    shape: RqShape,
    raw: &[T],
    x: T,
    g_y: T,
    g_l: T,
    g_raw: &mut [T],
) -> Result<T, Error> {
    shape.check_call(raw, Some(g_raw), x)?;
    check_finite(&[g_y, g_l], 2)?;
    Ok(vjp_raw(shape, raw, x, g_y, g_l, g_raw))
}

/// [`rq_eval_vjp`] for a validated shape and `raw`, `g_raw` of the right length.
pub(crate) fn vjp_raw<T: Real>(
    shape: RqShape,
    raw: &[T],
    x: T,
    g_y: T,
    g_l: T,
    g_raw: &mut [T],
) -> T {
    let bnd: T = c(shape.bound);
    if x <= -bnd || x >= bnd {
        return g_y;
    }
    vjp_kn(shape, &Knots::new(shape, raw), raw, x, g_y, g_l, g_raw)
}

fn vjp_kn<T: Real>(
    shape: RqShape,
    kn: &Knots<T>,
    raw: &[T],
    x: T,
    g_y: T,
    g_l: T,
    g_raw: &mut [T],
) -> T {
    let bnd: T = c(shape.bound);
    if x <= -bnd || x >= bnd {
        return g_y;
    }
    let kk = shape.bins;
    let k = Knots::bin(&kn.xk, kk, x);
    let (wk, hk, d0, d1) = (kn.w[k], kn.h[k], kn.d[k], kn.d[k + 1]);
    let one = T::one();
    let two: T = c(2.0);
    let s = hk / wk;
    let xi = (x - kn.xk[k]) / wk;
    let al = xi * (one - xi);
    let alp = one - two * xi;
    let om = one - xi;
    let sum = d1 + d0 - two * s;
    let num = hk * (s * xi * xi + d0 * al);
    let den = s + sum * al;
    let q = d1 * xi * xi + two * s * al + d0 * om * om;
    // Partials of num, den, q.
    let (n_xi, n_s, n_h, n_d0) =
        (hk * (two * s * xi + d0 * alp), hk * xi * xi, s * xi * xi + d0 * al, hk * al);
    let (e_xi, e_s, e_d0, e_d1) = (sum * alp, one - two * al, al, al);
    let (q_xi, q_s, q_d0, q_d1) =
        (two * d1 * xi + two * s * alp - two * d0 * om, two * al, om * om, xi * xi);
    let den2 = den * den;
    // y = y_k + num/den;  ld = 2 ln s + ln q − 2 ln den.
    let dy = |n: T, e: T| (n * den - num * e) / den2;
    let g_xi = g_y * dy(n_xi, e_xi) + g_l * (q_xi / q - two * e_xi / den);
    let g_s = g_y * dy(n_s, e_s) + g_l * (two / s + q_s / q - two * e_s / den);
    let g_hk_direct = g_y * dy(n_h, T::zero());
    let g_d0 = g_y * dy(n_d0, e_d0) + g_l * (q_d0 / q - two * e_d0 / den);
    let g_d1 = g_y * dy(T::zero(), e_d1) + g_l * (q_d1 / q - two * e_d1 / den);
    // ξ = (x − x_k)/w_k, s = h_k/w_k.
    let g_x = g_xi / wk;
    let g_xk = -g_xi / wk;
    let g_wk = -g_xi * xi / wk - g_s * s / wk;
    let g_hk = g_hk_direct + g_s / wk;
    // Knots: x_k = −B + Σ_{j<k} w_j, y_k = −B + Σ_{j<k} h_j (g_{y_k} = g_y).
    let mut gw = [T::zero(); MAX_BINS];
    let mut gh = [T::zero(); MAX_BINS];
    for j in 0..k {
        gw[j] += g_xk;
        gh[j] += g_y;
    }
    gw[k] += g_wk;
    gh[k] += g_hk;
    // w = 2B (m + (1 − K m) p): softmax backward.
    let kt: T = c(kk as f64);
    let fw = (bnd + bnd) * (one - kt * c::<T>(MIN_WIDTH));
    let fh = (bnd + bnd) * (one - kt * c::<T>(MIN_HEIGHT));
    let dotw = (0..kk).fold(T::zero(), |a, j| a + kn.pw[j] * gw[j]);
    let doth = (0..kk).fold(T::zero(), |a, j| a + kn.ph[j] * gh[j]);
    for j in 0..kk {
        g_raw[j] += fw * kn.pw[j] * (gw[j] - dotw);
        g_raw[kk + j] += fh * kn.ph[j] * (gh[j] - doth);
    }
    // δ_i = m + softplus(d̂_{i−1} + c₀) for 1 ≤ i ≤ K − 1.
    if k >= 1 {
        g_raw[2 * kk + k - 1] += g_d0 * sigmoid(raw[2 * kk + k - 1] + c0());
    }
    if k + 1 < kk {
        g_raw[2 * kk + k] += g_d1 * sigmoid(raw[2 * kk + k] + c0());
    }
    g_x
}

/// Elementwise rational-quadratic spline flow: one spline per coordinate with its own
/// `3K − 1` parameters (θ = d blocks of [`RqShape::n_params`]), the identity outside
/// `[−B, B]`. As in Neural Spline Flows the spline is evaluated in the **normalizing**
/// direction (closed form, so the density and its gradient need no root):
///
/// ```text
/// inverse:  z_i = RQ_i(x_i),   log|det ∂z/∂x| = Σ_i log RQ_i'(x_i);
/// forward:  x_i = RQ_i⁻¹(z_i)  (a quadratic per coordinate),  log|det ∂x/∂z| = −Σ_i log RQ_i'(x_i).
/// ```
///
/// Initialised to zero (the identity).
#[derive(Debug, Clone)]
pub struct RqSpline {
    dim: usize,
    shape: RqShape,
}

impl RqSpline {
    /// A `dim`-dimensional elementwise spline flow of shape `shape`; errors if `dim` is 0
    /// or the shape is out of range ([`RqShape::validate`]).
    pub fn new(dim: usize, shape: RqShape) -> Result<Self, Error> {
        shape.validate()?;
        check_dim("rq-spline dim", dim, dim.checked_mul(shape.n_params()))?;
        Ok(RqSpline { dim, shape })
    }
}

impl<T: Real> Flow<T> for RqSpline {
    fn name(&self) -> &'static str {
        "rq-spline"
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn n_params(&self) -> usize {
        self.dim * self.shape.n_params()
    }
    fn init_params(&self, theta: &mut [T], _rng: &mut dyn RngCore) -> Result<(), Error> {
        crate::error::check_len("theta", theta.len(), Flow::<T>::n_params(self))?;
        theta.iter_mut().for_each(|v| *v = T::zero());
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
        let (d, np) = (self.dim, self.shape.n_params());
        let b = check_map(d, d * np, theta, z, x.len(), ld.len())?;
        ld.iter_mut().for_each(|v| *v = T::zero());
        for i in 0..d {
            let kn = Knots::new(self.shape, &theta[i * np..(i + 1) * np]);
            for r in 0..b {
                let (v, l) = inverse_kn(self.shape, &kn, z[r * d + i]);
                x[r * d + i] = v;
                ld[r] += l;
            }
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
        let (d, np) = (self.dim, self.shape.n_params());
        let b = check_map(d, d * np, theta, x, z.len(), ld.len())?;
        ld.iter_mut().for_each(|v| *v = T::zero());
        for i in 0..d {
            let kn = Knots::new(self.shape, &theta[i * np..(i + 1) * np]);
            for r in 0..b {
                let (v, l) = eval_kn(self.shape, &kn, x[r * d + i]);
                z[r * d + i] = v;
                ld[r] += l;
            }
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
        _ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        let (d, np) = (self.dim, self.shape.n_params());
        let b = check_vjp(d, d * np, theta, x, z_cot, ld_cot, x_cot, theta_cot)?;
        for i in 0..d {
            let raw = &theta[i * np..(i + 1) * np];
            let kn = Knots::new(self.shape, raw);
            for r in 0..b {
                let k = r * d + i;
                x_cot[k] = vjp_kn(
                    self.shape,
                    &kn,
                    raw,
                    x[k],
                    z_cot[k],
                    ld_cot[r],
                    &mut theta_cot[i * np..(i + 1) * np],
                );
            }
        }
        Ok(())
    }
}
