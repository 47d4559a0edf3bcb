//! Linear flows: elementwise affine, LU-parametrised affine (and Glow's 1×1 mixing), dense
//! affine, and fixed permutations.

use rand::{Rng, RngCore};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{c, check_dim, check_map, check_vjp, Flow, FlowWs};
use crate::{Error, Real};

/// Elementwise affine flow (the survey's elementwise flow with an affine `f`):
///
/// ```text
/// x_i = z_i e^{s_i} + t_i,   log|det ∂x/∂z| = Σ_i s_i,   z_i = (x_i − t_i) e^{−s_i}.
/// ```
///
/// θ = `[s (d), t (d)]`, initialised to zero (the identity). O(d) both ways.
#[derive(Debug, Clone)]
pub struct ElementwiseAffine {
    dim: usize,
}

impl ElementwiseAffine {
    /// A `dim`-dimensional elementwise affine flow; errors if `dim` is 0.
    pub fn new(dim: usize) -> Result<Self, Error> {
        check_dim("elementwise-affine dim", dim, dim.checked_mul(2))?;
        Ok(ElementwiseAffine { dim })
    }
}

impl<T: Real> Flow<T> for ElementwiseAffine {
    fn name(&self) -> &'static str {
        "elementwise-affine"
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn n_params(&self) -> usize {
        2 * self.dim
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
        ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        let d = self.dim;
        let b = check_map(d, 2 * d, theta, z, x.len(), ld.len())?;
        let (s, t) = theta.split_at(d);
        let sum = s.iter().fold(T::zero(), |a, &v| a + v);
        let e = ws.take(d);
        for j in 0..d {
            e[j] = s[j].exp();
        }
        for i in 0..b {
            for j in 0..d {
                x[i * d + j] = z[i * d + j] * e[j] + t[j];
            }
            ld[i] = sum;
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
        let b = check_map(d, 2 * d, theta, x, z.len(), ld.len())?;
        let (s, t) = theta.split_at(d);
        let sum = s.iter().fold(T::zero(), |a, &v| a + v);
        let e = ws.take(d);
        for j in 0..d {
            e[j] = (-s[j]).exp();
        }
        for i in 0..b {
            for j in 0..d {
                z[i * d + j] = (x[i * d + j] - t[j]) * e[j];
            }
            ld[i] = -sum;
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
        let d = self.dim;
        let b = check_vjp(d, 2 * d, theta, x, z_cot, ld_cot, x_cot, theta_cot)?;
        let (s, t) = theta.split_at(d);
        let sum_l = ld_cot.iter().fold(T::zero(), |a, &v| a + v);
        let (gs, gt) = theta_cot.split_at_mut(d);
        for j in 0..d {
            let e = (-s[j]).exp();
            let (mut a, mut bsum) = (T::zero(), T::zero());
            for i in 0..b {
                let g = z_cot[i * d + j];
                let z = (x[i * d + j] - t[j]) * e;
                x_cot[i * d + j] = g * e;
                a += g * z;
                bsum += g;
            }
            gs[j] += -a - sum_l;
            gt[j] += -bsum * e;
        }
        Ok(())
    }
}

/// A fixed permutation of the coordinates: `x_i = z_{π(i)}`, `z_{π(i)} = x_i`, log-det 0,
/// no parameters. Used between coupling and autoregressive layers for mixing (survey §3.4:
/// "a permutation … is a volume-preserving invertible map").
#[derive(Debug, Clone)]
pub struct Permutation {
    perm: Vec<usize>,
}

impl Permutation {
    /// `π` given explicitly; errors unless it is a permutation of `0..perm.len()` with
    /// at least one entry.
    pub fn new(perm: Vec<usize>) -> Result<Self, Error> {
        check_dim("permutation dim", perm.len(), Some(0))?;
        let mut seen = vec![false; perm.len()];
        for &p in &perm {
            if p >= perm.len() || seen[p] {
                return Err(Error::InvalidConfig {
                    name: "permutation entry",
                    value: p as f64,
                    expected: "each of 0..d exactly once",
                });
            }
            seen[p] = true;
        }
        Ok(Permutation { perm })
    }

    /// The reversal `π(i) = d − 1 − i`; errors if `dim` is 0.
    pub fn reverse(dim: usize) -> Result<Self, Error> {
        check_dim("permutation dim", dim, Some(0))?;
        Ok(Permutation { perm: (0..dim).rev().collect() })
    }

    /// A uniformly random permutation drawn from ChaCha8 seeded by `seed` (Fisher–Yates);
    /// errors if `dim` is 0.
    pub fn random(dim: usize, seed: u64) -> Result<Self, Error> {
        check_dim("permutation dim", dim, Some(0))?;
        Ok(Permutation { perm: random_perm(dim, seed) })
    }

    /// The permutation π.
    pub fn perm(&self) -> &[usize] {
        &self.perm
    }
}

pub(crate) fn random_perm(dim: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p: Vec<usize> = (0..dim).collect();
    for i in (1..dim).rev() {
        let j = rng.random_range(0..=i);
        p.swap(i, j);
    }
    p
}

impl<T: Real> Flow<T> for Permutation {
    fn name(&self) -> &'static str {
        "permutation"
    }
    fn dim(&self) -> usize {
        self.perm.len()
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
        _ws: &mut FlowWs<T>,
    ) -> Result<(), Error> {
        let d = self.perm.len();
        let b = check_map(d, 0, theta, z, x.len(), ld.len())?;
        for i in 0..b {
            for j in 0..d {
                x[i * d + j] = z[i * d + self.perm[j]];
            }
        }
        ld.iter_mut().for_each(|v| *v = T::zero());
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
        let d = self.perm.len();
        let b = check_map(d, 0, theta, x, z.len(), ld.len())?;
        for i in 0..b {
            for j in 0..d {
                z[i * d + self.perm[j]] = x[i * d + j];
            }
        }
        ld.iter_mut().for_each(|v| *v = T::zero());
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
        let d = self.perm.len();
        let b = check_vjp(d, 0, theta, x, z_cot, ld_cot, x_cot, theta_cot)?;
        for i in 0..b {
            for j in 0..d {
                x_cot[i * d + j] = z_cot[i * d + self.perm[j]];
            }
        }
        Ok(())
    }
}

/// Affine flow with an LU-parametrised matrix (Kingma & Dhariwal 2018, Glow's invertible
/// 1×1 convolution):
///
/// ```text
/// x = P L U z + b,   L unit lower-triangular, U upper-triangular with U_ii = e^{s_i},
/// log|det ∂x/∂z| = Σ_i s_i,   z = U⁻¹ L⁻¹ Pᵀ (x − b)   (two triangular solves, O(d²)).
/// ```
///
/// `P` is fixed at construction (`(P v)_i = v_{π(i)}`). θ = `[L strictly lower (row-major,
/// d(d−1)/2), U strictly upper (row-major, d(d−1)/2), s (d), b (d, if biased)]`,
/// initialised at the identity (L = U = I, b = 0) plus `N(0, 0.01²)`-sized off-diagonal
/// noise so the layer mixes from the start. Density and sampling cost O(d²) per sample and
/// the log-determinant O(d), against O(d³) for [`DenseAffine`] (the survey's §3.3 claim).
#[derive(Debug, Clone)]
pub struct LuAffine {
    dim: usize,
    perm: Vec<usize>,
    bias: bool,
}

impl LuAffine {
    /// `x = P L U z + b` with the permutation `perm` (identity when `None`) and a bias if
    /// `bias`. Errors if `dim` is 0 or `perm` is not a permutation of `0..dim`.
    pub fn new(dim: usize, perm: Option<Vec<usize>>, bias: bool) -> Result<Self, Error> {
        check_dim("lu-affine dim", dim, dim.checked_mul(dim).and_then(|n| n.checked_add(dim)))?;
        let perm = match perm {
            Some(p) => {
                if p.len() != dim {
                    return Err(Error::BufferLength {
                        buffer: "perm",
                        expected: dim,
                        found: p.len(),
                    });
                }
                Permutation::new(p)?.perm
            }
            None => (0..dim).collect(),
        };
        Ok(LuAffine { dim, perm, bias })
    }

    /// Glow's learned 1×1 mixing: a seeded random `P`, no bias; errors if `dim` is 0.
    pub fn glow(dim: usize, seed: u64) -> Result<Self, Error> {
        check_dim("lu-affine dim", dim, dim.checked_mul(dim).and_then(|n| n.checked_add(dim)))?;
        Ok(LuAffine { dim, perm: random_perm(dim, seed), bias: false })
    }

    fn n_tri(&self) -> usize {
        self.dim * (self.dim - 1) / 2
    }

    /// Index of `L_ij` (i > j) in θ.
    #[inline]
    fn li(i: usize, j: usize) -> usize {
        i * (i - 1) / 2 + j
    }

    /// Index of `U_ij` (i < j) in θ's U block: row i holds d − 1 − i entries.
    #[inline]
    fn ui(&self, i: usize, j: usize) -> usize {
        let d = self.dim;
        self.n_tri() + i * (2 * d - i - 1) / 2 + (j - i - 1)
    }

    fn s_off(&self) -> usize {
        2 * self.n_tri()
    }

    /// Row i of L's strict lower part, `L_{i,0..i}` (contiguous in θ).
    #[inline]
    fn l_row<T>(theta: &[T], i: usize) -> &[T] {
        &theta[i * i.saturating_sub(1) / 2..][..i]
    }

    /// Row i of U's strict upper part, `U_{i,i+1..d}` (contiguous in θ).
    #[inline]
    fn u_row<'a, T>(&self, theta: &'a [T], i: usize) -> &'a [T] {
        let d = self.dim;
        let start = self.n_tri() + i * (2 * d - i - 1) / 2;
        &theta[start..start + (d - i - 1)]
    }
}

/// `Σ_k a_k b_k` over the shorter of the two slices.
#[inline]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).fold(T::zero(), |s, (&x, &y)| s + x * y)
}

impl<T: Real> Flow<T> for LuAffine {
    fn name(&self) -> &'static str {
        "lu-affine"
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn n_params(&self) -> usize {
        self.dim * self.dim + if self.bias { self.dim } else { 0 }
    }
    fn init_params(&self, theta: &mut [T], rng: &mut dyn RngCore) -> Result<(), Error> {
        crate::error::check_len("theta", theta.len(), Flow::<T>::n_params(self))?;
        theta.iter_mut().for_each(|v| *v = T::zero());
        for v in &mut theta[..self.s_off()] {
            *v = c(0.01 * (2.0 * rng.random::<f64>() - 1.0));
        }
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
        let b = check_map(d, Flow::<T>::n_params(self), theta, z, x.len(), ld.len())?;
        let so = self.s_off();
        let sum = theta[so..so + d].iter().fold(T::zero(), |a, &v| a + v);
        for r in 0..b {
            let zi = &z[r * d..(r + 1) * d];
            let xi = &mut x[r * d..(r + 1) * d];
            // v = U z (into xi), then w = L v computed bottom-up in place, then x = P w + b.
            for i in 0..d {
                xi[i] = theta[so + i].exp() * zi[i] + dot(self.u_row(theta, i), &zi[i + 1..]);
            }
            for i in (0..d).rev() {
                xi[i] += dot(Self::l_row(theta, i), &xi[..i]);
            }
            // x = P w: x_i = w_{π(i)}.
            permute_in_place(xi, &self.perm);
            if self.bias {
                for i in 0..d {
                    xi[i] += theta[so + d + i];
                }
            }
            ld[r] = sum;
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
        let b = check_map(d, Flow::<T>::n_params(self), theta, x, z.len(), ld.len())?;
        let so = self.s_off();
        let sum = theta[so..so + d].iter().fold(T::zero(), |a, &v| a + v);
        for r in 0..b {
            let zi = &mut z[r * d..(r + 1) * d];
            self.solve(theta, &x[r * d..(r + 1) * d], zi, None);
            ld[r] = -sum;
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
        let np = Flow::<T>::n_params(self);
        let b = check_vjp(d, np, theta, x, z_cot, ld_cot, x_cot, theta_cot)?;
        let so = self.s_off();
        let buf = ws.take(3 * d);
        let (w, rest) = buf.split_at_mut(d);
        let (z, gw) = rest.split_at_mut(d);
        let sum_l = ld_cot.iter().fold(T::zero(), |a, &v| a + v);
        for r in 0..b {
            // Forward: y = Pᵀ(x − b), w = L⁻¹ y, z = U⁻¹ w.
            self.solve(theta, &x[r * d..(r + 1) * d], z, Some(w));
            let gz = &z_cot[r * d..(r + 1) * d];
            // gw = U⁻ᵀ gz (forward substitution on Uᵀ, lower).
            for i in 0..d {
                let mut a = gz[i];
                for j in 0..i {
                    a -= theta[self.ui(j, i)] * gw[j];
                }
                gw[i] = a / theta[so + i].exp();
            }
            // ∂Φ/∂U = −gw zᵀ (upper part); U_ii = e^{s_i} ⇒ ∂/∂s_i = −gw_i z_i e^{s_i}.
            for i in 0..d {
                theta_cot[so + i] -= gw[i] * z[i] * theta[so + i].exp();
                for j in i + 1..d {
                    theta_cot[self.ui(i, j)] -= gw[i] * z[j];
                }
            }
            // gy = L⁻ᵀ gw (back substitution on Lᵀ, unit upper), into gx (then unpermuted).
            let gx = &mut x_cot[r * d..(r + 1) * d];
            for i in (0..d).rev() {
                let mut a = gw[i];
                for j in i + 1..d {
                    a -= theta[Self::li(j, i)] * gx[j];
                }
                gx[i] = a;
            }
            // ∂Φ/∂L = −gy wᵀ (strictly lower).
            for i in 1..d {
                for j in 0..i {
                    theta_cot[Self::li(i, j)] -= gx[i] * w[j];
                }
            }
            // y = Pᵀ(x − b): y_{π(i)} = x_i − b_i ⇒ gx_i = gy_{π(i)}.
            gw.copy_from_slice(gx);
            for i in 0..d {
                gx[i] = gw[self.perm[i]];
            }
            if self.bias {
                for i in 0..d {
                    theta_cot[so + d + i] -= gx[i];
                }
            }
        }
        // log|det ∂z/∂x| = −Σ s.
        for i in 0..d {
            theta_cot[so + i] -= sum_l;
        }
        Ok(())
    }
}

impl LuAffine {
    /// z = U⁻¹ L⁻¹ Pᵀ (x − b) for one point; `w_out` receives L⁻¹ Pᵀ (x − b) if given.
    fn solve<T: Real>(&self, theta: &[T], x: &[T], z: &mut [T], w_out: Option<&mut [T]>) {
        let d = self.dim;
        let so = self.s_off();
        for i in 0..d {
            let bi = if self.bias { theta[so + d + i] } else { T::zero() };
            z[self.perm[i]] = x[i] - bi;
        }
        for i in 0..d {
            z[i] -= dot(Self::l_row(theta, i), &z[..i]);
        }
        if let Some(w) = w_out {
            w.copy_from_slice(z);
        }
        for i in (0..d).rev() {
            z[i] = (z[i] - dot(self.u_row(theta, i), &z[i + 1..])) / theta[so + i].exp();
        }
    }
}

/// `v ← P v` with `(P v)_i = v_{π(i)}`, by following cycles (no scratch).
fn permute_in_place<T: Copy>(v: &mut [T], perm: &[usize]) {
    let d = v.len();
    // Mark visited by a bit set on the stack for small d, else follow cycles with a
    // leader test (O(d²) worst case but allocation-free).
    for start in 0..d {
        // `start` leads its cycle iff it is the smallest index in it.
        let mut j = perm[start];
        let mut leader = true;
        while j != start {
            if j < start {
                leader = false;
                break;
            }
            j = perm[j];
        }
        if !leader {
            continue;
        }
        let first = v[start];
        let mut i = start;
        loop {
            let next = perm[i];
            if next == start {
                v[i] = first;
                break;
            }
            v[i] = v[next];
            i = next;
        }
    }
}

/// Dense affine flow (survey §3.3): `x = A z + b` with `A` a free `d × d` matrix,
///
/// ```text
/// log|det ∂x/∂z| = log|det A|,   z = A⁻¹ (x − b),
/// ```
///
/// both by an LU factorisation with partial pivoting of `A` on every call: O(d³) per call
/// plus O(d²) per sample. θ = `[A (row-major, d²), b (d)]`, initialised to `I + N(0, 0.01²)`.
/// A (numerically) singular `A` gives [`Error::SingularMatrix`], a non-finite entry
/// [`Error::NonFiniteParameter`].
#[derive(Debug, Clone)]
pub struct DenseAffine {
    dim: usize,
}

impl DenseAffine {
    /// A `dim`-dimensional dense affine flow; errors if `dim` is 0.
    pub fn new(dim: usize) -> Result<Self, Error> {
        check_dim("dense-affine dim", dim, dim.checked_mul(dim).and_then(|n| n.checked_add(dim)))?;
        Ok(DenseAffine { dim })
    }
}

/// In-place LU with partial pivoting of the row-major `d × d` matrix `a`: `P A = L U`
/// (`piv[i]` = the original row now in row i). Returns `log|det A|`, or the failing column.
pub(crate) fn lu_factor<T: Real>(a: &mut [T], piv: &mut [usize], d: usize) -> Result<T, usize> {
    for (i, p) in piv.iter_mut().enumerate() {
        *p = i;
    }
    let mut logdet = T::zero();
    let mut scale = T::zero();
    for v in a.iter() {
        scale = scale.max(v.abs());
    }
    let tiny = scale * T::epsilon() * c(d as f64);
    for k in 0..d {
        let mut p = k;
        for i in k + 1..d {
            if a[i * d + k].abs() > a[p * d + k].abs() {
                p = i;
            }
        }
        let pivot = a[p * d + k];
        if pivot.abs() <= tiny || pivot.is_nan() {
            return Err(k);
        }
        if p != k {
            for j in 0..d {
                a.swap(k * d + j, p * d + j);
            }
            piv.swap(k, p);
        }
        logdet += pivot.abs().ln();
        for i in k + 1..d {
            let f = a[i * d + k] / pivot;
            a[i * d + k] = f;
            for j in k + 1..d {
                let u = a[k * d + j];
                a[i * d + j] -= f * u;
            }
        }
    }
    Ok(logdet)
}

/// Solves `A y = r` from the factors of [`lu_factor`] (y overwritten).
pub(crate) fn lu_solve<T: Real>(lu: &[T], piv: &[usize], d: usize, r: &[T], y: &mut [T]) {
    for i in 0..d {
        let mut a = r[piv[i]];
        for j in 0..i {
            a -= lu[i * d + j] * y[j];
        }
        y[i] = a;
    }
    for i in (0..d).rev() {
        let mut a = y[i];
        for j in i + 1..d {
            a -= lu[i * d + j] * y[j];
        }
        y[i] = a / lu[i * d + i];
    }
}

/// Solves `Aᵀ y = r` from the factors of [`lu_factor`]: `Uᵀ Lᵀ P y = r`.
pub(crate) fn lu_solve_t<T: Real>(
    lu: &[T],
    piv: &[usize],
    d: usize,
    r: &[T],
    t: &mut [T],
    y: &mut [T],
) {
    for i in 0..d {
        let mut a = r[i];
        for j in 0..i {
            a -= lu[j * d + i] * t[j];
        }
        t[i] = a / lu[i * d + i];
    }
    for i in (0..d).rev() {
        let mut a = t[i];
        for j in i + 1..d {
            a -= lu[j * d + i] * t[j];
        }
        t[i] = a;
    }
    for i in 0..d {
        y[piv[i]] = t[i];
    }
}

impl<T: Real> Flow<T> for DenseAffine {
    fn name(&self) -> &'static str {
        "dense-affine"
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn n_params(&self) -> usize {
        self.dim * self.dim + self.dim
    }
    fn init_params(&self, theta: &mut [T], rng: &mut dyn RngCore) -> Result<(), Error> {
        crate::error::check_len("theta", theta.len(), Flow::<T>::n_params(self))?;
        let d = self.dim;
        theta.iter_mut().for_each(|v| *v = T::zero());
        for i in 0..d {
            for j in 0..d {
                let e = if i == j { 1.0 } else { 0.0 };
                theta[i * d + j] = c(e + 0.01 * (2.0 * rng.random::<f64>() - 1.0));
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
        let d = self.dim;
        let b = check_map(d, d * d + d, theta, z, x.len(), ld.len())?;
        let (a, bias) = theta.split_at(d * d);
        let logdet = self.factor(a, ws)?;
        for r in 0..b {
            for i in 0..d {
                let mut s = bias[i];
                for j in 0..d {
                    s += a[i * d + j] * z[r * d + j];
                }
                x[r * d + i] = s;
            }
            ld[r] = logdet;
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
        let b = check_map(d, d * d + d, theta, x, z.len(), ld.len())?;
        let bias = &theta[d * d..];
        let logdet = self.factor(&theta[..d * d], ws)?;
        let (lu, rest) = ws.buf.split_at_mut(d * d);
        let r_buf = &mut rest[..d];
        let piv = &ws.idx[..d];
        for r in 0..b {
            for i in 0..d {
                r_buf[i] = x[r * d + i] - bias[i];
            }
            lu_solve(lu, piv, d, r_buf, &mut z[r * d..(r + 1) * d]);
            ld[r] = -logdet;
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
        let b = check_vjp(d, d * d + d, theta, x, z_cot, ld_cot, x_cot, theta_cot)?;
        let bias = &theta[d * d..];
        self.factor(&theta[..d * d], ws)?;
        let piv = &ws.idx[..d];
        let (lu, rest) = ws.buf.split_at_mut(d * d);
        let (r_buf, rest) = rest.split_at_mut(d);
        let (z, rest) = rest.split_at_mut(d);
        let (t, rest) = rest.split_at_mut(d);
        let e = &mut rest[..d];
        let sum_l = ld_cot.iter().fold(T::zero(), |a, &v| a + v);
        let (ga, gb) = theta_cot.split_at_mut(d * d);
        for r in 0..b {
            for i in 0..d {
                r_buf[i] = x[r * d + i] - bias[i];
            }
            lu_solve(lu, piv, d, r_buf, z);
            // gx = A⁻ᵀ gz;  ∂Φ/∂A = −gx zᵀ;  ∂Φ/∂b = −gx.
            let gx = &mut x_cot[r * d..(r + 1) * d];
            lu_solve_t(lu, piv, d, &z_cot[r * d..(r + 1) * d], t, gx);
            for i in 0..d {
                gb[i] -= gx[i];
                for j in 0..d {
                    ga[i * d + j] -= gx[i] * z[j];
                }
            }
        }
        // log|det ∂z/∂x| = −log|det A| ⇒ ∂/∂A = −A⁻ᵀ per unit of ld_cot: column j of A⁻ᵀ
        // is A⁻ᵀ e_j; (A⁻ᵀ)_ij = (A⁻¹)_ji.
        if sum_l != T::zero() {
            for j in 0..d {
                r_buf.iter_mut().for_each(|v| *v = T::zero());
                r_buf[j] = T::one();
                lu_solve_t(lu, piv, d, r_buf, t, e);
                for i in 0..d {
                    ga[i * d + j] -= sum_l * e[i];
                }
            }
        }
        Ok(())
    }
}

impl DenseAffine {
    /// Factors `A` into `ws.buf[..d²]` (scratch behind it: 4d; pivots in `ws.idx`) and
    /// returns `log|det A|`.
    fn factor<T: Real>(&self, a: &[T], ws: &mut FlowWs<T>) -> Result<T, Error> {
        let d = self.dim;
        let buf = ws.take(d * d + 4 * d);
        buf[..d * d].copy_from_slice(a);
        ws.idx.resize(d, 0);
        lu_factor(&mut ws.buf[..d * d], &mut ws.idx, d)
            .map_err(|column| Error::SingularMatrix { layer: 0, column })
    }
}
