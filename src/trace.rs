//! Divergence estimators for the instantaneous change of variables.
//!
//! A CNF advances the log-density with dℓ/dt = −tr(∂f/∂z). The trace is either computed
//! exactly (d tangent lanes per sample) or estimated by Hutchinson's identity
//! `tr(J) = E[εᵀ J ε]` for noise with `E[εεᵀ] = I`, with ε drawn once per solve and held fixed
//! during it (FFJORD), so the integrand is a smooth function of t and the adaptive solver
//! sees one ODE.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::field::{Divergence, Real};

/// The distribution of the Hutchinson noise ε.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Noise {
    /// ε ~ N(0, I): `Var[εᵀJε] = ‖J‖²_F + tr(J²)`.
    Gaussian,
    /// ε uniform on {−1, +1}ᵈ: `Var[εᵀJε] = ‖J‖²_F + tr(J²) − 2 Σ_i J_ii²`, the smaller
    /// variance of the two for the same cost.
    Rademacher,
}

/// How the CNF computes the divergence term tr(∂f/∂z).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TraceEstimator {
    /// The exact trace: costs 1 + d forward passes of the field per evaluation.
    #[default]
    Exact,
    /// Hutchinson's estimator εᵀ(∂f/∂z)ε with one noise draw per sample per solve: costs 2
    /// forward passes per evaluation whatever d, and is unbiased.
    Hutchinson(Noise),
}

impl TraceEstimator {
    /// Draws the noise for one solve of `batch × dim` states into `eps` (resized), or
    /// leaves it empty for the exact trace.
    pub fn draw<T: Real, R: Rng + ?Sized>(
        self,
        rng: &mut R,
        batch: usize,
        dim: usize,
        eps: &mut Vec<T>,
    ) {
        eps.clear();
        match self {
            TraceEstimator::Exact => {}
            TraceEstimator::Hutchinson(Noise::Gaussian) => {
                eps.extend((0..batch * dim).map(|_| T::from_f64c(StandardNormal.sample(&mut *rng))))
            }
            TraceEstimator::Hutchinson(Noise::Rademacher) => {
                eps.extend((0..batch * dim).map(|_| {
                    if rng.random::<bool>() {
                        T::one()
                    } else {
                        -T::one()
                    }
                }))
            }
        }
    }

    /// The [`Divergence`] request for a field call, given the noise drawn by
    /// [`TraceEstimator::draw`].
    pub fn divergence<T: Real>(self, eps: &[T]) -> Divergence<'_, T> {
        match self {
            TraceEstimator::Exact => Divergence::Exact,
            TraceEstimator::Hutchinson(_) => Divergence::Hutchinson(eps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn noise_has_unit_second_moment() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut eps: Vec<f64> = Vec::new();
        for noise in [Noise::Gaussian, Noise::Rademacher] {
            TraceEstimator::Hutchinson(noise).draw(&mut rng, 20_000, 2, &mut eps);
            assert_eq!(eps.len(), 40_000);
            let n = eps.len() as f64;
            let mean = eps.iter().sum::<f64>() / n;
            let m2 = eps.iter().map(|e| e * e).sum::<f64>() / n;
            // Standard error of the mean is 1/sqrt(n) = 0.005; of m2, sqrt(2/n) ≤ 0.0071.
            assert!(mean.abs() < 0.025, "{noise:?}: mean {mean}");
            assert!((m2 - 1.0).abs() < 0.036, "{noise:?}: E[ε²] = {m2}");
            // Off-diagonal moment E[ε₁ε₂] = 0 (independent coordinates).
            let m12 = eps.chunks(2).map(|e| e[0] * e[1]).sum::<f64>() / (n / 2.0);
            assert!(m12.abs() < 0.036, "{noise:?}: E[ε₁ε₂] = {m12}");
        }
        TraceEstimator::Exact.draw(&mut rng, 10, 2, &mut eps);
        assert!(eps.is_empty());
    }
}
