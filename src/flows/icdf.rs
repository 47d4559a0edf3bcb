//! The inverse-CDF flow of a tabulated density (survey §1 "Inverse-CDF sampling" and §3.2):
//! a monotone interpolant of the CDF maps data to U(0, 1); composed with the normal
//! quantile it maps to N(0, 1) (the survey's `p_X → U([0,1]) → p_Z`), so it is a layer of a
//! [`super::FlowModel`]. In d dimensions it is the autoregressive chain of conditional CDFs
//! `z_i = F(x_i | x_{<i})` (lower-triangular Jacobian, `|det ∂u/∂x| = Π_i p(x_i | x_{<i}) =
//! p(x)`).

use rand::RngCore;

use super::{check_map, check_vjp, Flow, FlowWs};
use crate::{Error, Real};

/// A 1-D CDF interpolated from a tabulated density: knots `x_0 < … < x_n` with values
/// `q_k > 0`; `F_k` = cumulative trapezoid integral normalised to `F_n = 1`; between knots
/// the cubic Hermite interpolant of `(F_k, m_k)` with slopes `m_k = q_k / Σ` limited by
/// Fritsch & Carlson (1980) (`α² + β² ≤ 9` with `α = m_k/Δ_k`, `β = m_{k+1}/Δ_k`), which
/// makes `F` monotone and C¹. The density of the flow is `p̂ = F′` (exactly, so it
/// integrates to one), which equals the tabulated density at the knots wherever the
/// limiter is inactive.
#[derive(Debug, Clone)]
pub struct Cdf1d {
    x: Vec<f64>,
    f: Vec<f64>,
    m: Vec<f64>,
}

impl Cdf1d {
    /// Builds the CDF; errors unless the knots increase strictly, the values are finite
    /// and positive, and the table's total mass (trapezoid) is a positive normal finite
    /// number (a mass that underflows or overflows leaves no representable CDF).
    pub fn new(x: &[f64], q: &[f64]) -> Result<Self, Error> {
        if x.len() < 2 || q.len() != x.len() {
            return Err(Error::BufferLength {
                buffer: "density table",
                expected: x.len().max(2),
                found: q.len(),
            });
        }
        for k in 0..x.len() {
            if !x[k].is_finite() || (k > 0 && x[k] <= x[k - 1]) {
                return Err(Error::InvalidConfig {
                    name: "grid knot",
                    value: x[k],
                    expected: "finite and strictly increasing",
                });
            }
            if !(q[k].is_finite() && q[k] > 0.0) {
                return Err(Error::InvalidConfig {
                    name: "tabulated density",
                    value: q[k],
                    expected: "finite and > 0",
                });
            }
        }
        let n = x.len();
        let mut f = vec![0.0; n];
        for k in 1..n {
            f[k] = f[k - 1] + 0.5 * (q[k] + q[k - 1]) * (x[k] - x[k - 1]);
        }
        let total = f[n - 1];
        if !(total.is_normal() && total > 0.0) {
            return Err(Error::InvalidConfig {
                name: "tabulated density mass",
                value: total,
                expected: "a positive normal finite total (∫ q dx neither under- nor overflows)",
            });
        }
        f.iter_mut().for_each(|v| *v /= total);
        f[n - 1] = 1.0;
        let mut m: Vec<f64> = q.iter().map(|v| v / total).collect();
        if let Some(k) = m.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidConfig {
                name: "tabulated density",
                value: q[k],
                expected: "a density whose normalised value q / ∫ q dx is finite",
            });
        }
        for k in 0..n - 1 {
            let delta = (f[k + 1] - f[k]) / (x[k + 1] - x[k]);
            if delta <= 0.0 {
                // A segment whose mass rounds away next to F: flat, as Fritsch & Carlson
                // set the slopes of a flat segment (keeps F monotone and finite).
                m[k] = 0.0;
                m[k + 1] = 0.0;
                continue;
            }
            let (a, b) = (m[k] / delta, m[k + 1] / delta);
            let s = a * a + b * b;
            if s > 9.0 {
                let tau = 3.0 / s.sqrt();
                m[k] = tau * a * delta;
                m[k + 1] = tau * b * delta;
            }
        }
        Ok(Cdf1d { x: x.to_vec(), f, m })
    }

    /// The support `[x_0, x_n]`.
    pub fn support(&self) -> (f64, f64) {
        (self.x[0], self.x[self.x.len() - 1])
    }

    fn interval(&self, x: f64) -> usize {
        let n = self.x.len();
        match self.x.binary_search_by(|v| v.total_cmp(&x)) {
            Ok(k) => k.min(n - 2),
            Err(k) => k.saturating_sub(1).min(n - 2),
        }
    }

    /// `(F(x), F′(x), F″(x))` for x in the support (clamped outside).
    pub fn eval(&self, x: f64) -> (f64, f64, f64) {
        let (lo, hi) = self.support();
        let x = x.clamp(lo, hi);
        let k = self.interval(x);
        let h = self.x[k + 1] - self.x[k];
        let t = (x - self.x[k]) / h;
        let (f0, f1, m0, m1) = (self.f[k], self.f[k + 1], self.m[k] * h, self.m[k + 1] * h);
        let (t2, t3) = (t * t, t * t * t);
        let v = (2.0 * t3 - 3.0 * t2 + 1.0) * f0
            + (t3 - 2.0 * t2 + t) * m0
            + (-2.0 * t3 + 3.0 * t2) * f1
            + (t3 - t2) * m1;
        let d = ((6.0 * t2 - 6.0 * t) * f0
            + (3.0 * t2 - 4.0 * t + 1.0) * m0
            + (-6.0 * t2 + 6.0 * t) * f1
            + (3.0 * t2 - 2.0 * t) * m1)
            / h;
        let dd = ((12.0 * t - 6.0) * f0
            + (6.0 * t - 4.0) * m0
            + (-12.0 * t + 6.0) * f1
            + (6.0 * t - 2.0) * m1)
            / (h * h);
        (v, d, dd)
    }
}

/// The standard normal CDF Φ(z) = ½ erfc(−z/√2).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// The standard normal quantile Φ⁻¹(u) for u in (0, 1): Acklam's rational approximation
/// (relative error 1.15·10⁻⁹) refined by two Halley steps on erfc, to about 1 ulp of the
/// true quantile of u.
pub fn normal_quantile(u: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] =
        [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    if u <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if u >= 1.0 {
        return f64::INFINITY;
    }
    let pl = 0.02425;
    let mut x = if u < pl {
        let q = (-2.0 * u.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if u <= 1.0 - pl {
        let q = u - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - u).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    for _ in 0..2 {
        let e = normal_cdf(x) - u;
        let g = e * (2.0 * std::f64::consts::PI).sqrt() * (0.5 * x * x).exp();
        x -= g / (1.0 + 0.5 * x * g);
    }
    x
}

/// The most coordinates an [`InverseCdf`] may have (its per-point scratch lives on the
/// stack, and coordinate i mixes 2^{i−1} conditionals).
const MAX_DIM: usize = 16;

fn log_phi(z: f64) -> f64 {
    -0.5 * (z * z + (2.0 * std::f64::consts::PI).ln())
}

/// The autoregressive inverse-CDF flow of a density tabulated on a tensor grid
/// (`axes[i]` = the knots of coordinate i; `values` row-major over the axes, all > 0):
///
/// ```text
/// inverse (normalizing):  u_i = F(x_i | x_{<i}),  z_i = Φ⁻¹(u_i),
/// log|det ∂z/∂x| = Σ_i [log p̂(x_i | x_{<i}) − log φ(z_i)],
/// forward (sampling):     u_i = Φ(z_i),  x_i = F⁻¹(u_i | x_{<i})  (coordinate after coordinate).
/// ```
///
/// With the N(0, I) base of a [`super::FlowModel`] the model density is exactly
/// `p̂(x) = Π_i p̂(x_i | x_{<i})`. The conditionals come from the marginal tables
/// `M_i(x_{≤i}) = ∫ p dx_{>i}` (trapezoid): at grid points of `x_{<i}` the conditional is
/// the [`Cdf1d`] of `M_i(g, ·)`; between them it is the multilinear mixture of the `2^{i−1}`
/// surrounding conditionals (a mixture of CDFs: monotone, and a normalised density for every
/// `x_{<i}`). For d = 1 this is the 1-D inverse-CDF flow. No trainable parameters; points
/// outside the grid give [`Error::OutOfDomain`]. Costs `2^{i−1}` CDF evaluations for
/// coordinate i (meant for small d).
#[derive(Debug, Clone)]
pub struct InverseCdf {
    axes: Vec<Vec<f64>>,
    /// `levels[i][flat index of g_{<i}]`: the conditional CDF of x_i at grid point g.
    levels: Vec<Vec<Cdf1d>>,
}

impl InverseCdf {
    /// The 1-D flow of the density tabulated as `q` on the knots `x`.
    pub fn one_d(x: &[f64], q: &[f64]) -> Result<Self, Error> {
        Self::new(vec![x.to_vec()], q)
    }

    /// The d-dimensional autoregressive flow (d = `axes.len()`). Errors: no axis or more
    /// than 16, an axis of fewer than two knots ([`Error::InvalidConfig`]), `values` not
    /// of the grid's size ([`Error::BufferLength`]), and the [`Cdf1d::new`] errors of the
    /// conditionals.
    pub fn new(axes: Vec<Vec<f64>>, values: &[f64]) -> Result<Self, Error> {
        if axes.is_empty() || axes.len() > MAX_DIM {
            return Err(Error::InvalidConfig {
                name: "inverse-cdf dim",
                value: axes.len() as f64,
                expected: "1 ..= 16 axes",
            });
        }
        if let Some(a) = axes.iter().find(|a| a.len() < 2) {
            return Err(Error::InvalidConfig {
                name: "inverse-cdf axis knots",
                value: a.len() as f64,
                expected: "≥ 2 knots on every axis",
            });
        }
        let n = axes.iter().try_fold(1usize, |n, a| n.checked_mul(a.len()));
        if n != Some(values.len()) {
            return Err(Error::BufferLength {
                buffer: "values",
                expected: n.unwrap_or(usize::MAX),
                found: values.len(),
            });
        }
        // Marginals, from the full table down: marg[i] has the first i + 1 axes.
        let d = axes.len();
        let mut marg: Vec<Vec<f64>> = vec![Vec::new(); d];
        marg[d - 1] = values.to_vec();
        for i in (0..d - 1).rev() {
            let inner = axes[i + 1].len();
            let ax = &axes[i + 1];
            let outer = marg[i + 1].len() / inner;
            let mut m = vec![0.0; outer];
            for (o, mo) in m.iter_mut().enumerate() {
                let row = &marg[i + 1][o * inner..(o + 1) * inner];
                for k in 1..inner {
                    *mo += 0.5 * (row[k] + row[k - 1]) * (ax[k] - ax[k - 1]);
                }
            }
            marg[i] = m;
        }
        let mut levels = Vec::with_capacity(d);
        for i in 0..d {
            let len = axes[i].len();
            let rows = marg[i].len() / len;
            let mut tabs = Vec::with_capacity(rows);
            for g in 0..rows {
                tabs.push(Cdf1d::new(&axes[i], &marg[i][g * len..(g + 1) * len])?);
            }
            levels.push(tabs);
        }
        Ok(InverseCdf { axes, levels })
    }

    fn d(&self) -> usize {
        self.axes.len()
    }

    /// Cell and fraction of x along axis i, or None outside the grid.
    fn locate(&self, i: usize, x: f64) -> Option<(usize, f64)> {
        let ax = &self.axes[i];
        let n = ax.len();
        if !(x >= ax[0] && x <= ax[n - 1]) {
            return None;
        }
        let k = match ax.binary_search_by(|v| v.total_cmp(&x)) {
            Ok(k) => k.min(n - 2),
            Err(k) => (k - 1).min(n - 2),
        };
        Some((k, (x - ax[k]) / (ax[k + 1] - ax[k])))
    }

    /// Visits the 2^i mixture corners of coordinate i given the cells of x_{<i}: calls
    /// `f(table, weight, corner bits)`.
    fn corners(&self, i: usize, cells: &[(usize, f64)], mut f: impl FnMut(&Cdf1d, f64, usize)) {
        for bits in 0..(1usize << i) {
            let (mut idx, mut w) = (0usize, 1.0);
            for j in 0..i {
                let (k, t) = cells[j];
                let up = (bits >> j) & 1;
                idx = idx * self.axes[j].len() + k + up;
                w *= if up == 1 { t } else { 1.0 - t };
            }
            f(&self.levels[i][idx], w, bits);
        }
    }

    fn out_of_grid(index: usize, value: f64) -> Error {
        Error::OutOfDomain { index, value, expected: "inside the tabulated grid" }
    }

    /// The normalizing map of one point: z, Σ log-det; `cells` is scratch of length d.
    fn normalize(
        &self,
        x: &[f64],
        z: &mut [f64],
        cells: &mut [(usize, f64)],
        base: usize,
    ) -> Result<f64, Error> {
        let mut ld = 0.0;
        for i in 0..self.d() {
            cells[i] = self.locate(i, x[i]).ok_or_else(|| Self::out_of_grid(base + i, x[i]))?;
            let (mut u, mut p) = (0.0, 0.0);
            self.corners(i, cells, |tab, w, _| {
                let (f, df, _) = tab.eval(x[i]);
                u += w * f;
                p += w * df;
            });
            let u = u.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON / 2.0);
            z[i] = normal_quantile(u);
            ld += p.ln() - log_phi(z[i]);
        }
        Ok(ld)
    }
}

impl<T: Real> Flow<T> for InverseCdf {
    fn name(&self) -> &'static str {
        "inverse-cdf"
    }
    fn dim(&self) -> usize {
        self.d()
    }
    fn n_params(&self) -> usize {
        0
    }
    fn init_params(&self, theta: &mut [T], _rng: &mut dyn RngCore) -> Result<(), Error> {
        crate::error::check_len("theta", theta.len(), Flow::<T>::n_params(self))?;
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
        let d = self.d();
        let b = check_map(d, 0, theta, z, x.len(), ld.len())?;
        let _ = ws; // tables only; the per-point scratch lives on the stack
        let mut cells = [(0usize, 0.0f64); 16];
        if d > cells.len() {
            return Err(Error::InvalidConfig {
                name: "inverse-cdf dim",
                value: d as f64,
                expected: "≤ 16",
            });
        }
        for r in 0..b {
            let mut sum = 0.0;
            for i in 0..d {
                let zi = z[r * d + i].to_f64c();
                let u = normal_cdf(zi);
                // Solve Σ_c w_c F_c(x) = u on the axis by Newton with bisection.
                let ax = &self.axes[i];
                let (mut lo, mut hi) = (ax[0], ax[ax.len() - 1]);
                let mut xi = 0.5 * (lo + hi);
                let mut p;
                for _ in 0..200 {
                    let (mut fu, mut fp) = (0.0, 0.0);
                    self.corners(i, &cells[..i], |tab, w, _| {
                        let (f, df, _) = tab.eval(xi);
                        fu += w * f;
                        fp += w * df;
                    });
                    let e = fu - u;
                    if e == 0.0 {
                        break;
                    }
                    if e > 0.0 {
                        hi = xi;
                    } else {
                        lo = xi;
                    }
                    let newton = if fp > 0.0 { xi - e / fp } else { f64::NAN };
                    if (newton - xi).abs() <= 4.0 * f64::EPSILON * (1.0 + xi.abs()) {
                        xi = newton;
                        break;
                    }
                    xi = if newton > lo && newton < hi { newton } else { 0.5 * (lo + hi) };
                    if hi - lo <= 4.0 * f64::EPSILON * (1.0 + xi.abs()) {
                        break;
                    }
                }
                // The density at the final point.
                p = 0.0;
                self.corners(i, &cells[..i], |tab, w, _| p += w * tab.eval(xi).1);
                x[r * d + i] = T::from_f64c(xi);
                cells[i] = self.locate(i, xi).ok_or_else(|| Self::out_of_grid(r * d + i, xi))?;
                sum += log_phi(zi) - p.ln();
            }
            ld[r] = T::from_f64c(sum);
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
        let d = self.d();
        let b = check_map(d, 0, theta, x, z.len(), ld.len())?;
        if d > 16 {
            return Err(Error::InvalidConfig {
                name: "inverse-cdf dim",
                value: d as f64,
                expected: "≤ 16",
            });
        }
        let mut cells = [(0usize, 0.0f64); 16];
        let (mut xb, mut zb) = ([0.0f64; 16], [0.0f64; 16]);
        for r in 0..b {
            for i in 0..d {
                xb[i] = x[r * d + i].to_f64c();
            }
            let l = self.normalize(&xb[..d], &mut zb[..d], &mut cells[..d], r * d)?;
            for i in 0..d {
                z[r * d + i] = T::from_f64c(zb[i]);
            }
            ld[r] = T::from_f64c(l);
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
        let d = self.d();
        let b = check_vjp(d, 0, theta, x, z_cot, ld_cot, x_cot, theta_cot)?;
        if d > 16 {
            return Err(Error::InvalidConfig {
                name: "inverse-cdf dim",
                value: d as f64,
                expected: "≤ 16",
            });
        }
        let mut cells = [(0usize, 0.0f64); 16];
        let mut xb = [0.0f64; 16];
        let mut g = [0.0f64; 16];
        for r in 0..b {
            for i in 0..d {
                xb[i] = x[r * d + i].to_f64c();
                g[i] = 0.0;
            }
            let gl = ld_cot[r].to_f64c();
            for i in 0..d {
                cells[i] =
                    self.locate(i, xb[i]).ok_or_else(|| Self::out_of_grid(r * d + i, xb[i]))?;
                // u = Σ w F, p = Σ w F′, p′ = Σ w F″, and their derivatives in x_j (j < i)
                // through the multilinear weights.
                let (mut u, mut p, mut dp) = (0.0, 0.0, 0.0);
                let mut du = [0.0f64; 16];
                let mut dpj = [0.0f64; 16];
                let xi = xb[i];
                let cells_i = &cells[..i];
                let axes = &self.axes;
                self.corners(i, cells_i, |tab, w, bits| {
                    let (f, df, ddf) = tab.eval(xi);
                    u += w * f;
                    p += w * df;
                    dp += w * ddf;
                    for j in 0..i {
                        let (k, _) = cells_i[j];
                        let up = (bits >> j) & 1;
                        let h = axes[j][k + 1] - axes[j][k];
                        // ∂w/∂x_j = w / (t or 1 − t) · (±1/h), computed without dividing.
                        let mut wo = 1.0;
                        for (l, &(_, tl)) in cells_i.iter().enumerate() {
                            if l != j {
                                wo *= if (bits >> l) & 1 == 1 { tl } else { 1.0 - tl };
                            }
                        }
                        let dw = if up == 1 { wo / h } else { -wo / h };
                        du[j] += dw * f;
                        dpj[j] += dw * df;
                    }
                });
                let u = u.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON / 2.0);
                let z = normal_quantile(u);
                let phi = log_phi(z).exp();
                // Φ ∋ z̄_i z_i + ℓ̄ (log p − log φ(z_i)); ∂/∂z_i of −log φ = z_i.
                let gz = z_cot[r * d + i].to_f64c() + gl * z;
                // z = Φ⁻¹(u): ∂z/∂x_i = p/φ, ∂z/∂x_j = du_j/φ.
                g[i] += gz * p / phi + gl * dp / p;
                for j in 0..i {
                    g[j] += gz * du[j] / phi + gl * dpj[j] / p;
                }
            }
            for i in 0..d {
                x_cot[r * d + i] = T::from_f64c(g[i]);
            }
        }
        Ok(())
    }
}
