//! User-written fields with derivatives from forward-mode dual and hyper-dual numbers.
//!
//! A user writes `f(t, z)` once, generically over a [`DualScalar`]; [`AutoDiffField`] then
//! evaluates it on plain numbers (`f`), on [`Dual`] numbers (one directional derivative per
//! evaluation: JVP, the trace lanes, VJP by `d` JVPs) and on [`HyperDual`] numbers (one mixed
//! second derivative per evaluation: the gradient of the divergence). Cost per sample:
//! `f` 1, JVP or Hutchinson 1, exact trace `d`, VJP `d + 1` (dual); augmented VJP `d(d + 1)`
//! (exact) or `d + 1` (Hutchinson) hyper-dual evaluations: fine for the small `d` of known
//! velocity fields and density-transport tests, not for large `d` (write the derivatives by
//! hand there, as [`LinearField`](super::LinearField) does). Samples run sequentially.
//!
//! The dual types are our own (about 200 lines): a field that is generic over f32 and f64 and
//! over the derivative order needs only `+ − × ÷`, constants and a few elementary functions,
//! each defined once through its first and second derivatives ([`DualScalar::chain`]); the
//! `num-dual` crate would add a dependency with a newer MSRV (1.89) than the workspace's.

use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use super::error::{batch_of, check_len, FieldError};
use super::{check_aug_lens, AugmentedVjp, Divergence, JacobianTerm, Real, VectorField};

/// A scalar a user field is written over: plain `T`, [`Dual<T>`] or [`HyperDual<T>`].
///
/// Arithmetic with `Self` and with plain `T` constants, plus elementary functions defined
/// through [`DualScalar::chain`]: for `y = g(x)`,
/// `y = g(x₀) + g′(x₀)·ẋ` (dual) and, for a hyper-dual `x = x₀ + x₁ε₁ + x₂ε₂ + x₁₂ε₁ε₂`,
/// `y₁₂ = g′·x₁₂ + g″·x₁x₂`.
pub trait DualScalar<T: Real>:
    Copy
    + Send
    + Sync
    + std::fmt::Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + Add<T, Output = Self>
    + Sub<T, Output = Self>
    + Mul<T, Output = Self>
    + Div<T, Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
{
    /// The constant `x` (all derivative parts 0).
    fn cst(x: T) -> Self;
    /// The real (value) part.
    fn re(self) -> T;
    /// `g(self)` given `g(x₀)`, `g′(x₀)`, `g″(x₀)` at the real part `x₀`.
    fn chain(self, g: T, g1: T, g2: T) -> Self;

    /// `eˣ`.
    fn exp(self) -> Self {
        let e = self.re().exp();
        self.chain(e, e, e)
    }
    /// `eˣ − 1`.
    fn exp_m1(self) -> Self {
        let x = self.re();
        let e = x.exp();
        self.chain(x.exp_m1(), e, e)
    }
    /// `ln x`.
    fn ln(self) -> Self {
        let x = self.re();
        let r = x.recip();
        self.chain(x.ln(), r, -r * r)
    }
    /// `ln(1 + x)`.
    fn ln_1p(self) -> Self {
        let x = self.re();
        let r = (T::one() + x).recip();
        self.chain(x.ln_1p(), r, -r * r)
    }
    /// `√x`.
    fn sqrt(self) -> Self {
        let s = self.re().sqrt();
        let h = T::from_f64c(0.5) / s;
        self.chain(s, h, -h / (s * s) * T::from_f64c(0.5))
    }
    /// `sin x`.
    fn sin(self) -> Self {
        let (s, c) = self.re().sin_cos();
        self.chain(s, c, -s)
    }
    /// `cos x`.
    fn cos(self) -> Self {
        let (s, c) = self.re().sin_cos();
        self.chain(c, -s, -c)
    }
    /// `tanh x`.
    fn tanh(self) -> Self {
        let y = self.re().tanh();
        let d = T::one() - y * y;
        self.chain(y, d, -(y + y) * d)
    }
    /// `atan x`.
    fn atan(self) -> Self {
        let x = self.re();
        let r = (T::one() + x * x).recip();
        self.chain(x.atan(), r, -(x + x) * r * r)
    }
    /// `sigmoid(x) = 1/(1 + e^{−x})`.
    fn sigmoid(self) -> Self {
        let s = (T::one() + (-self.re()).exp()).recip();
        let d = s * (T::one() - s);
        self.chain(s, d, d * (T::one() - s - s))
    }
    /// `xⁿ`.
    fn powi(self, n: i32) -> Self {
        let x = self.re();
        let nf = T::from_f64c(f64::from(n));
        let g1 = if n == 0 { T::zero() } else { nf * x.powi(n - 1) };
        let g2 = if n == 0 || n == 1 { T::zero() } else { nf * (nf - T::one()) * x.powi(n - 2) };
        self.chain(x.powi(n), g1, g2)
    }
    /// `1/x`.
    fn recip(self) -> Self {
        let r = self.re().recip();
        self.chain(r, -r * r, (r + r) * r * r)
    }
}

impl<T: Real> DualScalar<T> for T {
    #[inline(always)]
    fn cst(x: T) -> Self {
        x
    }
    #[inline(always)]
    fn re(self) -> T {
        self
    }
    #[inline(always)]
    fn chain(self, g: T, _g1: T, _g2: T) -> Self {
        g
    }
}

/// A first-order dual number `re + eps·ε` (`ε² = 0`): `f(x + ẋε) = f(x) + f′(x)ẋ ε`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Dual<T> {
    /// Value.
    pub re: T,
    /// Directional derivative.
    pub eps: T,
}

impl<T> Dual<T> {
    /// `re + eps·ε`.
    pub fn new(re: T, eps: T) -> Self {
        Dual { re, eps }
    }
}

/// A hyper-dual number `re + e1·ε₁ + e2·ε₂ + e12·ε₁ε₂` (`ε₁² = ε₂² = 0`): seeding
/// `x = x₀ + u ε₁ + w ε₂` gives `f(x)₁₂ = uᵀ ∇²f(x₀) w`, an exact mixed second derivative.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HyperDual<T> {
    /// Value.
    pub re: T,
    /// Derivative along the first direction.
    pub e1: T,
    /// Derivative along the second direction.
    pub e2: T,
    /// Mixed second derivative.
    pub e12: T,
}

impl<T> HyperDual<T> {
    /// `re + e1·ε₁ + e2·ε₂ + e12·ε₁ε₂`.
    pub fn new(re: T, e1: T, e2: T, e12: T) -> Self {
        HyperDual { re, e1, e2, e12 }
    }
}

macro_rules! assign_ops {
    ($ty:ident) => {
        impl<T: Real> AddAssign for $ty<T> {
            #[inline(always)]
            fn add_assign(&mut self, o: Self) {
                *self = *self + o;
            }
        }
        impl<T: Real> SubAssign for $ty<T> {
            #[inline(always)]
            fn sub_assign(&mut self, o: Self) {
                *self = *self - o;
            }
        }
        impl<T: Real> MulAssign for $ty<T> {
            #[inline(always)]
            fn mul_assign(&mut self, o: Self) {
                *self = *self * o;
            }
        }
        impl<T: Real> DivAssign for $ty<T> {
            #[inline(always)]
            fn div_assign(&mut self, o: Self) {
                *self = *self / o;
            }
        }
        impl<T: Real> Add<T> for $ty<T> {
            type Output = Self;
            #[inline(always)]
            fn add(self, o: T) -> Self {
                self + <$ty<T> as DualScalar<T>>::cst(o)
            }
        }
        impl<T: Real> Sub<T> for $ty<T> {
            type Output = Self;
            #[inline(always)]
            fn sub(self, o: T) -> Self {
                self - <$ty<T> as DualScalar<T>>::cst(o)
            }
        }
    };
}

impl<T: Real> Add for Dual<T> {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Dual::new(self.re + o.re, self.eps + o.eps)
    }
}
impl<T: Real> Sub for Dual<T> {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Dual::new(self.re - o.re, self.eps - o.eps)
    }
}
impl<T: Real> Mul for Dual<T> {
    type Output = Self;
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Dual::new(self.re * o.re, self.re * o.eps + self.eps * o.re)
    }
}
impl<T: Real> Div for Dual<T> {
    type Output = Self;
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        let r = o.re.recip();
        Dual::new(self.re * r, (self.eps * o.re - self.re * o.eps) * r * r)
    }
}
impl<T: Real> Neg for Dual<T> {
    type Output = Self;
    #[inline(always)]
    fn neg(self) -> Self {
        Dual::new(-self.re, -self.eps)
    }
}
impl<T: Real> Mul<T> for Dual<T> {
    type Output = Self;
    #[inline(always)]
    fn mul(self, o: T) -> Self {
        Dual::new(self.re * o, self.eps * o)
    }
}
impl<T: Real> Div<T> for Dual<T> {
    type Output = Self;
    #[inline(always)]
    fn div(self, o: T) -> Self {
        Dual::new(self.re / o, self.eps / o)
    }
}
assign_ops!(Dual);

impl<T: Real> DualScalar<T> for Dual<T> {
    #[inline(always)]
    fn cst(x: T) -> Self {
        Dual::new(x, T::zero())
    }
    #[inline(always)]
    fn re(self) -> T {
        self.re
    }
    #[inline(always)]
    fn chain(self, g: T, g1: T, _g2: T) -> Self {
        Dual::new(g, g1 * self.eps)
    }
}

impl<T: Real> Add for HyperDual<T> {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        HyperDual::new(self.re + o.re, self.e1 + o.e1, self.e2 + o.e2, self.e12 + o.e12)
    }
}
impl<T: Real> Sub for HyperDual<T> {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        HyperDual::new(self.re - o.re, self.e1 - o.e1, self.e2 - o.e2, self.e12 - o.e12)
    }
}
impl<T: Real> Mul for HyperDual<T> {
    type Output = Self;
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        HyperDual::new(
            self.re * o.re,
            self.re * o.e1 + self.e1 * o.re,
            self.re * o.e2 + self.e2 * o.re,
            self.re * o.e12 + self.e1 * o.e2 + self.e2 * o.e1 + self.e12 * o.re,
        )
    }
}
impl<T: Real> Div for HyperDual<T> {
    type Output = Self;
    #[inline(always)]
    #[allow(clippy::suspicious_arithmetic_impl)] // x / y = x · (1/y), the hyper-dual quotient
    fn div(self, o: Self) -> Self {
        self * DualScalar::recip(o)
    }
}
impl<T: Real> Neg for HyperDual<T> {
    type Output = Self;
    #[inline(always)]
    fn neg(self) -> Self {
        HyperDual::new(-self.re, -self.e1, -self.e2, -self.e12)
    }
}
impl<T: Real> Mul<T> for HyperDual<T> {
    type Output = Self;
    #[inline(always)]
    fn mul(self, o: T) -> Self {
        HyperDual::new(self.re * o, self.e1 * o, self.e2 * o, self.e12 * o)
    }
}
impl<T: Real> Div<T> for HyperDual<T> {
    type Output = Self;
    #[inline(always)]
    #[allow(clippy::suspicious_arithmetic_impl)] // x / c = x · (1/c)
    fn div(self, o: T) -> Self {
        self * o.recip()
    }
}
assign_ops!(HyperDual);

impl<T: Real> DualScalar<T> for HyperDual<T> {
    #[inline(always)]
    fn cst(x: T) -> Self {
        HyperDual::new(x, T::zero(), T::zero(), T::zero())
    }
    #[inline(always)]
    fn re(self) -> T {
        self.re
    }
    #[inline(always)]
    fn chain(self, g: T, g1: T, g2: T) -> Self {
        HyperDual::new(g, g1 * self.e1, g1 * self.e2, g1 * self.e12 + g2 * self.e1 * self.e2)
    }
}

/// A user's vector field `f(t, z): ℝ × ℝᵈ → ℝᵈ` for one sample, written once for any
/// [`DualScalar`] `D`. Wrap it in [`AutoDiffField`] to get a [`VectorField`].
///
/// ```
/// use odeflow::field::{AutoDiffField, Divergence, DualScalar, ScalarField, VectorField};
///
/// /// A rotation plus radial expansion: f = (−ω z₁ + a z₀, ω z₀ + a z₁); tr ∂f/∂z = 2a.
/// struct Swirl;
/// impl ScalarField<f64> for Swirl {
///     fn dim(&self) -> usize { 2 }
///     fn eval<D: DualScalar<f64>>(&self, t: D, z: &[D], out: &mut [D]) {
///         let a = t.sin() * 0.5;
///         out[0] = -z[1] * 3.0 + a * z[0];
///         out[1] = z[0] * 3.0 + a * z[1];
///     }
/// }
/// let field = AutoDiffField::new(Swirl);
/// let mut ws = field.workspace(1);
/// let (mut f, mut q) = ([0.0; 2], [0.0; 1]);
/// field.eval_div(1.0, &[0.3, -0.2], Divergence::Exact, &mut f, &mut q, None, &mut ws)?;
/// assert!((q[0] - 1.0f64.sin()).abs() < 1e-15);
/// # Ok::<(), odeflow::field::FieldError>(())
/// ```
pub trait ScalarField<T: Real>: Send + Sync {
    /// The state dimension `d`.
    fn dim(&self) -> usize;
    /// Writes `f(t, z)` into `out` (`z.len() == out.len() == d`).
    fn eval<D: DualScalar<T>>(&self, t: D, z: &[D], out: &mut [D]);
}

/// A [`VectorField`] from a [`ScalarField`] by forward-mode automatic differentiation, per
/// sample and sequentially (no parameters: `n_params() == 0`, θ-cotangents are empty).
///
/// With `J = ∂f/∂z` and unit vectors `e_k`:
/// - JVP `J v`: one [`Dual`] evaluation seeded `ż = v`;
/// - exact trace `Σ_i (J e_i)_i`: `d` dual evaluations; Hutchinson `εᵀ(Jε)`: one;
/// - VJP `(aᵀJ)_k = aᵀ(J e_k)`: `d` dual evaluations; `aᵀ∂f/∂t`: one, seeded `ṫ = 1`;
/// - augmented VJP: `∂q/∂x = Σ_i ∂²f_i/∂z_i∂x` (exact) or `εᵀ ∂(Jε)/∂x` (Hutchinson) from
///   [`HyperDual`] evaluations seeded `ε₁ = e_i` (or ε), `ε₂ = e_k` (x = z_k) or on `t`
///   (x = t); the `ε₂` part of the same evaluations gives `aᵀ∂f/∂x`;
/// - RNODE's Jacobian term ([`VectorField::vjp_aug_jac`]): from the same evaluations,
///   `‖J V‖² = Σ_lanes Σ_i (ε₁ part of f_i)²` and
///   `∂‖J V‖²/∂x = 2 Σ_lanes Σ_i (ε₁ part of f_i)·(ε₁ε₂ part of f_i)`.
#[derive(Debug, Clone)]
pub struct AutoDiffField<F> {
    field: F,
}

impl<F> AutoDiffField<F> {
    /// Wraps a user field.
    pub fn new(field: F) -> Self {
        AutoDiffField { field }
    }
    /// The wrapped field.
    pub fn inner(&self) -> &F {
        &self.field
    }
}

/// Per-sample scratch of an [`AutoDiffField`]: inputs and outputs in each number type.
#[derive(Debug, Clone)]
pub struct AutoDiffWorkspace<T> {
    zd: Vec<Dual<T>>,
    fd: Vec<Dual<T>>,
    zh: Vec<HyperDual<T>>,
    fh: Vec<HyperDual<T>>,
}

// Dual and hyper-dual passes of one sample.
impl<F> AutoDiffField<F> {
    /// `(f(t, z_b + s·dir), its directional derivative)` into `ws.fd` with one dual pass.
    fn dual_pass<T: Real>(
        &self,
        t: Dual<T>,
        z: &[T],
        dir: Option<&[T]>,
        k: Option<usize>,
        ws: &mut AutoDiffWorkspace<T>,
    ) where
        F: ScalarField<T>,
    {
        for (i, zi) in ws.zd.iter_mut().enumerate() {
            let e = match (dir, k) {
                (Some(v), _) => v[i],
                (None, Some(k)) if k == i => T::one(),
                _ => T::zero(),
            };
            *zi = Dual::new(z[i], e);
        }
        self.field.eval(t, &ws.zd, &mut ws.fd);
    }

    /// Hyper-dual pass: ε₁ along `dir1` (or e_{i1}), ε₂ along z_{k2} or along t.
    fn hyper_pass<T: Real>(
        &self,
        t: T,
        z: &[T],
        dir1: Result<&[T], usize>,
        var2: Option<usize>,
        ws: &mut AutoDiffWorkspace<T>,
    ) where
        F: ScalarField<T>,
    {
        let (o, zr) = (T::one(), T::zero());
        for (i, zi) in ws.zh.iter_mut().enumerate() {
            let e1 = match dir1 {
                Ok(v) => v[i],
                Err(i1) => {
                    if i1 == i {
                        o
                    } else {
                        zr
                    }
                }
            };
            let e2 = if var2 == Some(i) { o } else { zr };
            *zi = HyperDual::new(z[i], e1, e2, zr);
        }
        let th = HyperDual::new(t, zr, if var2.is_none() { o } else { zr }, zr);
        self.field.eval(th, &ws.zh, &mut ws.fh);
    }

    /// The batch size of `z`, after checking that `ws` was made for this dimension.
    fn check_batch<T: Real>(&self, z: &[T], ws: &AutoDiffWorkspace<T>) -> Result<usize, FieldError>
    where
        F: ScalarField<T>,
    {
        if ws.zd.len() != self.field.dim() {
            return Err(FieldError::WorkspaceMismatch);
        }
        batch_of(z.len(), self.field.dim())
    }
}

impl<T: Real, F: ScalarField<T>> VectorField<T> for AutoDiffField<F> {
    type Workspace = AutoDiffWorkspace<T>;

    fn dim(&self) -> usize {
        self.field.dim()
    }

    fn n_params(&self) -> usize {
        0
    }

    fn params(&self) -> &[T] {
        &[]
    }

    fn params_mut(&mut self) -> &mut [T] {
        &mut []
    }

    fn workspace(&self, _batch: usize) -> AutoDiffWorkspace<T> {
        let d = self.field.dim();
        AutoDiffWorkspace {
            zd: vec![Dual::default(); d],
            fd: vec![Dual::default(); d],
            zh: vec![HyperDual::default(); d],
            fh: vec![HyperDual::default(); d],
        }
    }

    fn eval(
        &self,
        t: T,
        z: &[T],
        f: &mut [T],
        ws: &mut AutoDiffWorkspace<T>,
    ) -> Result<(), FieldError> {
        let d = self.field.dim();
        let batch = self.check_batch(z, ws)?;
        check_len("f", f, batch * d)?;
        for (zb, fb) in z.chunks_exact(d).zip(f.chunks_exact_mut(d)) {
            self.field.eval(t, zb, fb);
        }
        Ok(())
    }

    fn eval_div(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        f: &mut [T],
        q: &mut [T],
        mut jac_sq: Option<&mut [T]>,
        ws: &mut AutoDiffWorkspace<T>,
    ) -> Result<(), FieldError> {
        let d = self.field.dim();
        let batch = self.check_batch(z, ws)?;
        check_len("f", f, batch * d)?;
        check_len("q", q, batch)?;
        if let Divergence::Hutchinson(e) = div {
            check_len("eps", e, batch * d)?;
        }
        if let Some(s) = &jac_sq {
            check_len("jac_sq", s, batch)?;
        }
        let td = Dual::new(t, T::zero());
        for b in 0..batch {
            let zb = &z[b * d..(b + 1) * d];
            let (mut qb, mut sq) = (T::zero(), T::zero());
            match div {
                Divergence::Exact => {
                    for i in 0..d {
                        self.dual_pass(td, zb, None, Some(i), ws);
                        qb += ws.fd[i].eps;
                        sq += ws.fd.iter().fold(T::zero(), |s, x| s + x.eps * x.eps);
                    }
                }
                Divergence::Hutchinson(e) => {
                    let eb = &e[b * d..(b + 1) * d];
                    self.dual_pass(td, zb, Some(eb), None, ws);
                    for i in 0..d {
                        qb += eb[i] * ws.fd[i].eps;
                        sq += ws.fd[i].eps * ws.fd[i].eps;
                    }
                }
            }
            for i in 0..d {
                f[b * d + i] = ws.fd[i].re;
            }
            q[b] = qb;
            if let Some(s) = jac_sq.as_deref_mut() {
                s[b] = sq;
            }
        }
        Ok(())
    }

    fn jvp(
        &self,
        t: T,
        z: &[T],
        v: &[T],
        f: &mut [T],
        jv: &mut [T],
        ws: &mut AutoDiffWorkspace<T>,
    ) -> Result<(), FieldError> {
        let d = self.field.dim();
        let batch = self.check_batch(z, ws)?;
        check_len("v", v, batch * d)?;
        check_len("f", f, batch * d)?;
        check_len("jv", jv, batch * d)?;
        for b in 0..batch {
            let r = b * d..(b + 1) * d;
            self.dual_pass(Dual::new(t, T::zero()), &z[r.clone()], Some(&v[r]), None, ws);
            for i in 0..d {
                f[b * d + i] = ws.fd[i].re;
                jv[b * d + i] = ws.fd[i].eps;
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
        ws: &mut AutoDiffWorkspace<T>,
    ) -> Result<T, FieldError> {
        let d = self.field.dim();
        let batch = self.check_batch(z, ws)?;
        check_len("a", a, batch * d)?;
        check_len("f", f, batch * d)?;
        check_len("z_cot", z_cot, batch * d)?;
        if let Some(th) = &theta_cot {
            check_len("theta_cot", th, 0)?;
        }
        let mut t_cot = T::zero();
        for b in 0..batch {
            let zb = &z[b * d..(b + 1) * d];
            let ab = &a[b * d..(b + 1) * d];
            let dot =
                |fd: &[Dual<T>]| fd.iter().zip(ab).fold(T::zero(), |s, (x, &y)| s + x.eps * y);
            for k in 0..d {
                self.dual_pass(Dual::new(t, T::zero()), zb, None, Some(k), ws);
                z_cot[b * d + k] = dot(&ws.fd);
            }
            self.dual_pass(Dual::new(t, T::one()), zb, None, None, ws);
            t_cot += dot(&ws.fd);
            for i in 0..d {
                f[b * d + i] = ws.fd[i].re;
            }
        }
        Ok(t_cot)
    }

    fn vjp_aug(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        a: &[T],
        c: &[T],
        out: AugmentedVjp<'_, T>,
        ws: &mut AutoDiffWorkspace<T>,
    ) -> Result<T, FieldError> {
        self.aug(t, z, div, a, c, None, out, ws)
    }

    fn vjp_aug_jac(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        a: &[T],
        c: &[T],
        jac: JacobianTerm<'_, T>,
        out: AugmentedVjp<'_, T>,
        ws: &mut AutoDiffWorkspace<T>,
    ) -> Result<T, FieldError> {
        self.aug(t, z, div, a, c, Some(jac), out, ws)
    }
}

impl<F> AutoDiffField<F> {
    /// [`VectorField::vjp_aug`] (`jac: None`) and [`VectorField::vjp_aug_jac`] by hyper-dual
    /// passes (see [`AutoDiffField`]).
    #[allow(clippy::too_many_arguments)]
    fn aug<T: Real>(
        &self,
        t: T,
        z: &[T],
        div: Divergence<'_, T>,
        a: &[T],
        c: &[T],
        jac: Option<JacobianTerm<'_, T>>,
        out: AugmentedVjp<'_, T>,
        ws: &mut AutoDiffWorkspace<T>,
    ) -> Result<T, FieldError>
    where
        F: ScalarField<T>,
    {
        let d = self.field.dim();
        let batch = self.check_batch(z, ws)?;
        check_aug_lens(batch, d, 0, &div, a, c, &out, jac.as_ref())?;
        let AugmentedVjp { f, q, z_cot, .. } = out;
        let (w, mut jac_sq) = match jac {
            Some(JacobianTerm { w, jac_sq }) => (w, Some(jac_sq)),
            None => (&[][..], None),
        };
        let want_jac = jac_sq.is_some();
        let two = T::one() + T::one();
        let mut t_cot = T::zero();
        for b in 0..batch {
            let zb = &z[b * d..(b + 1) * d];
            let ab = &a[b * d..(b + 1) * d];
            let cb = c[b];
            let wb = if want_jac { w[b] } else { T::zero() };
            // Variables: z_0..z_{d−1}, then t (var2 = None).
            for var in 0..=d {
                let var2 = (var < d).then_some(var);
                let (mut dq, mut qb, mut da) = (T::zero(), T::zero(), T::zero());
                // ‖J V‖² and its derivative in the variable, summed over the lanes.
                let (mut sq, mut dsq) = (T::zero(), T::zero());
                let mut lane = |fh: &[HyperDual<T>]| {
                    for x in fh {
                        sq += x.e1 * x.e1;
                        dsq += two * x.e1 * x.e12;
                    }
                };
                match div {
                    Divergence::Exact => {
                        for i in 0..d {
                            self.hyper_pass(t, zb, Err(i), var2, ws);
                            dq += ws.fh[i].e12;
                            qb += ws.fh[i].e1;
                            lane(&ws.fh);
                        }
                    }
                    Divergence::Hutchinson(e) => {
                        let eb = &e[b * d..(b + 1) * d];
                        self.hyper_pass(t, zb, Ok(eb), var2, ws);
                        for i in 0..d {
                            dq += eb[i] * ws.fh[i].e12;
                            qb += eb[i] * ws.fh[i].e1;
                        }
                        lane(&ws.fh);
                    }
                }
                for i in 0..d {
                    da += ab[i] * ws.fh[i].e2;
                }
                let mut g = da + cb * dq;
                if want_jac {
                    g += wb * dsq;
                }
                match var2 {
                    Some(k) => z_cot[b * d + k] = g,
                    None => {
                        t_cot += g;
                        q[b] = qb;
                        if let Some(s) = jac_sq.as_deref_mut() {
                            s[b] = sq;
                        }
                        for i in 0..d {
                            f[b * d + i] = ws.fh[i].re;
                        }
                    }
                }
            }
        }
        Ok(t_cot)
    }
}
