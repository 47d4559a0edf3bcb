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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
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

#[inline(always)]
fn sigmoid<T: Real>(u: T) -> T {
    T::one() / (T::one() + (-u).exp())
}

impl Activation {
    /// σ(u).
    #[inline(always)]
    pub fn value<T: Real>(self, u: T) -> T {
        match self {
            Activation::Tanh => u.tanh(),
            Activation::Softplus => u.max(T::zero()) + (-u.abs()).exp().ln_1p(),
            Activation::Silu => u * sigmoid(u),
            Activation::Elu => {
                if u > T::zero() {
                    u
                } else {
                    u.exp_m1()
                }
            }
        }
    }

    /// `(σ(u), σ′(u))`.
    #[inline(always)]
    pub fn value_d1<T: Real>(self, u: T) -> (T, T) {
        let one = T::one();
        match self {
            Activation::Tanh => {
                let h = u.tanh();
                (h, one - h * h)
            }
            Activation::Softplus => (u.max(T::zero()) + (-u.abs()).exp().ln_1p(), sigmoid(u)),
            Activation::Silu => {
                let s = sigmoid(u);
                let ds = s * (one - s);
                (u * s, s + u * ds)
            }
            Activation::Elu => {
                if u > T::zero() {
                    (u, one)
                } else {
                    let em1 = u.exp_m1();
                    (em1, em1 + one)
                }
            }
        }
    }

    /// `(σ(u), σ′(u), σ″(u))`.
    #[inline(always)]
    pub fn value_d2<T: Real>(self, u: T) -> (T, T, T) {
        let one = T::one();
        let two = one + one;
        match self {
            Activation::Tanh => {
                let h = u.tanh();
                let d1 = one - h * h;
                (h, d1, -two * h * d1)
            }
            Activation::Softplus => {
                let s = sigmoid(u);
                (u.max(T::zero()) + (-u.abs()).exp().ln_1p(), s, s * (one - s))
            }
            Activation::Silu => {
                let s = sigmoid(u);
                let ds = s * (one - s);
                (u * s, s + u * ds, ds * (two + u * (one - two * s)))
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
