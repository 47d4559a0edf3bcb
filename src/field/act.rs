//! Activation functions with their first and second derivatives.

use super::Real;

/// The nonlinearity between layers, `h = σ(u)`, applied elementwise; σ′ and σ″ are exact.
///
/// With `s = sigmoid(u) = 1/(1 + e^{−u})`:
///
/// | variant | σ(u) | σ′(u) | σ″(u) |
/// |---|---|---|---|
/// | `Tanh` | tanh u | 1 − σ² | −2σ(1 − σ²) |
/// | `Softplus` | ln(1 + eᵘ) | s | s(1 − s) |
/// | `Silu` | u·s | s + u·s(1 − s) | s(1 − s)(2 + u(1 − 2s)) |
/// | `Elu` (α = 1) | u (u > 0), eᵘ − 1 (u ≤ 0) | 1, eᵘ | 0, eᵘ |
///
/// (ELU's σ″ jumps at 0; the second-order derivatives are those of the branch taken.)
///
/// In model files and flow specs (serde) the names are lowercase: `tanh`, `softplus`,
/// `silu`, `elu`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Activation {
    /// Hyperbolic tangent (FFJORD's default for the toy problems).
    #[default]
    Tanh,
    /// `ln(1 + eᵘ)`, evaluated stably as `max(u, 0) + ln(1 + e^{−|u|})`.
    Softplus,
    /// SiLU / swish, `u·sigmoid(u)`.
    Silu,
    /// ELU with α = 1.
    Elu,
}

/// `(sigmoid(u), e^{−|u|})` without overflow: `sigmoid(u) = 1/(1 + s)` (u ≥ 0) or
/// `s/(1 + s)` (u < 0) with `s = e^{−|u|} ∈ (0, 1]`.
#[inline(always)]
fn sigmoid_s<T: Real>(u: T) -> (T, T) {
    let s = (-u.abs()).exp_fast();
    let num = if u >= T::zero() { T::one() } else { s };
    (num / (T::one() + s), s)
}

/// `tanh u = sign(u)·(1 − e^{−2|u|})/(1 + e^{−2|u|})` (absolute error ≈ 1e-16 in f64).
#[inline(always)]
fn tanh_fast<T: Real>(u: T) -> T {
    let e = (-(u.abs() + u.abs())).exp_fast();
    let t = (T::one() - e) / (T::one() + e);
    if u < T::zero() {
        -t
    } else {
        t
    }
}

impl Activation {
    /// σ(u).
    #[inline(always)]
    pub fn value<T: Real>(self, u: T) -> T {
        self.value_d2(u).0
    }

    /// `(σ(u), σ′(u))`.
    #[inline(always)]
    pub fn value_d1<T: Real>(self, u: T) -> (T, T) {
        let (h, d1, _) = self.value_d2(u);
        (h, d1)
    }

    /// `(σ(u), σ′(u), σ″(u))`, branch-free for tanh, softplus and SiLU (vectorizable: see
    /// the `fastmath` module); ELU uses libm's `exp_m1`.
    #[inline(always)]
    pub fn value_d2<T: Real>(self, u: T) -> (T, T, T) {
        let one = T::one();
        let two = one + one;
        match self {
            Activation::Tanh => {
                let h = tanh_fast(u);
                let d1 = one - h * h;
                (h, d1, -two * h * d1)
            }
            Activation::Softplus => {
                let (sg, s) = sigmoid_s(u);
                (u.max(T::zero()) + s.ln_1p_unit(), sg, sg * (one - sg))
            }
            Activation::Silu => {
                let (sg, _) = sigmoid_s(u);
                let ds = sg * (one - sg);
                (u * sg, sg + u * ds, ds * (two + u * (one - two * sg)))
            }
            Activation::Elu => {
                if u > T::zero() {
                    (u, one, T::zero())
                } else {
                    let em1 = u.exp_m1();
                    (em1, em1 + one, em1 + one)
                }
            }
        }
    }
}
