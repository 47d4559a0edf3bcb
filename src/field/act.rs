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
/// (The division stays: a division-free reciprocal of `1 + e ∈ (1, 2]` by four Newton steps
/// made a toy-net VJP 6% slower; the division's latency hides behind independent elements.)
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

/// tanh's `(σ′, σ″) = (1 − h², −2h(1 − h²))` from `h = tanh u`: [`Activation::value_d2`]
/// takes them from here, so a caller that kept only `h` recomputes the same bits.
#[inline(always)]
pub(crate) fn tanh_derivatives<T: Real>(h: T) -> (T, T) {
    let one = T::one();
    let two = one + one;
    let d1 = one - h * h;
    (d1, -two * h * d1)
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
                let (d1, d2) = tanh_derivatives(h);
                (h, d1, d2)
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

#[cfg(test)]
mod tests {
    use super::Activation;

    /// The libm forms of the table on [`Activation`] (f64).
    fn reference(act: Activation, u: f64) -> (f64, f64, f64) {
        let s = 1.0 / (1.0 + (-u).exp());
        match act {
            Activation::Tanh => {
                let h = u.tanh();
                (h, 1.0 - h * h, -2.0 * h * (1.0 - h * h))
            }
            Activation::Softplus => (u.max(0.0) + (-u.abs()).exp().ln_1p(), s, s * (1.0 - s)),
            Activation::Silu => {
                let ds = s * (1.0 - s);
                (u * s, s + u * ds, ds * (2.0 + u * (1.0 - 2.0 * s)))
            }
            Activation::Elu => {
                if u > 0.0 {
                    (u, 1.0, 0.0)
                } else {
                    (u.exp_m1(), u.exp(), u.exp())
                }
            }
        }
    }

    /// σ, σ′, σ″ of every activation against libm over `[−40, 40]`, relative to
    /// `max(1, |value|)`: within 1e-15 in f64 (a few ulp: `exp_fast` is within 4 ulp of
    /// `exp`; observed 6.7e-16 for tanh, whose σ′ = 1 − σ² doubles σ's error) and 2e-6 in
    /// f32 (observed 3.6e-7).
    #[test]
    fn activations_match_libm() {
        for act in [Activation::Tanh, Activation::Softplus, Activation::Silu, Activation::Elu] {
            let (mut worst64, mut worst32) = (0.0f64, 0.0f64);
            for i in 0..=80_000 {
                let u = -40.0 + f64::from(i) / 1000.0;
                let want = reference(act, u);
                let got = act.value_d2(u);
                let got32 = act.value_d2(u as f32);
                let want32 = reference(act, f64::from(u as f32));
                for (g, w) in [(got.0, want.0), (got.1, want.1), (got.2, want.2)] {
                    worst64 = worst64.max((g - w).abs() / w.abs().max(1.0));
                }
                for (g, w) in [(got32.0, want32.0), (got32.1, want32.1), (got32.2, want32.2)] {
                    worst32 = worst32.max((f64::from(g) - w).abs() / w.abs().max(1.0));
                }
            }
            // SiLU's u·s(1 − s) terms carry s's error times |u| ≤ 40.
            let bound64 = if act == Activation::Silu { 2e-15 } else { 1e-15 };
            assert!(worst64 < bound64, "{act:?} f64: {worst64:e}");
            assert!(worst32 < 2e-6, "{act:?} f32: {worst32:e}");
        }
    }
}
