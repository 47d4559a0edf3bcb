//! Step-size control.

use crate::options::shown;
use crate::{Real, SolveError};

/// The verdict on a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision<T> {
    /// Accept the step; try `h_next` (magnitude) for the next one.
    Accept {
        /// Next step size (magnitude).
        h_next: T,
    },
    /// Reject the step and retry with `h_retry` (magnitude).
    Reject {
        /// Retry step size (magnitude).
        h_retry: T,
    },
}

/// Decides acceptance and the next step size from the scaled error norm
/// (`err ≤ 1` means within tolerance).
///
/// The integrator holds a controller to two rules whatever it decides: a step whose state is
/// not finite is never accepted (the solve fails with
/// [`SolveError::NonFinite`](crate::SolveError::NonFinite), as a fixed-step solve does), and
/// a step size in a [`Decision`] must be finite and positive (else
/// [`SolveError::InvalidControllerStep`](crate::SolveError::InvalidControllerStep)).
pub trait StepController<T: Real> {
    /// Forgets the history (called at the start of each solve).
    fn reset(&mut self);
    /// `err`: the error norm of a step of magnitude `h` (`err` may be `+∞` or NaN after an
    /// overflow; the controller must then reject); `k = error_order + 1`.
    fn decide(&mut self, err: T, h: T, k: u8) -> Decision<T>;
    /// Checks the settings for a method with `k = error_order + 1` (the order for a
    /// fixed-step method); called when an [`Integrator`](crate::Integrator) is built and at
    /// the start of every solve. Default: nothing to check.
    fn validate(&self, k: u8) -> Result<(), SolveError> {
        let _ = k;
        Ok(())
    }
}

/// The PI step-size controller of Hairer–Nørsett–Wanner I (§II.4, eq. (4.13) and the PI
/// variant of `dopri5.f`, after Gustafsson 1991):
///
/// ```text
/// fac = clamp(safety · err_n^(−β1) · err_{n−1}^(β2), fac_min, fac_max),   h_new = h · fac
/// ```
///
/// with `β1 = 1/k − 0.75·β2` (`k = error_order + 1`). After a rejection the next step may
/// not grow; a rejected step shrinks by `max(fac_min, safety·err^(−β1))`.
///
/// Defaults: `safety = 0.9` and, per method, the defaults of Hairer's codes: for `k ≤ 7`
/// those of `dopri5.f` (`fac_min = 0.2`, `fac_max = 10`, `β2 = 0.04`, so
/// `β1 = 0.2 − 0.75·0.04 = 0.17` for k = 5; Bosh3 and Tsit5 use the same), for DOP853
/// (k = 8) those of `dop853.f` (`fac_min = 0.333`, `fac_max = 6`, `β2 = 0`: the elementary
/// controller with exponent 1/8). On Arenstorf and Kepler, β2 = 0.04 cost DOP853 8% more
/// evaluations for no better error, which is why we follow Hairer there.
///
/// The settings are checked ([`StepController::validate`]) when an integrator is built and
/// at the start of every solve; one out of range is a [`SolveError::InvalidController`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PiController<T> {
    /// Safety factor, in (0, 1]. Default 0.9.
    pub safety: T,
    /// Smallest step factor, in (0, 1). `None` (default): 0.2, or 0.333 for DOP853.
    pub fac_min: Option<T>,
    /// Largest step factor, finite and > 1. `None` (default): 10, or 6 for DOP853.
    pub fac_max: Option<T>,
    /// The exponent β2 of the previous error (0 gives the elementary I controller), in
    /// `[0, 0.2]` (the bound of `dopri5.f` and `dop853.f`) and below `4/(3k)` so that
    /// `β1 = 1/k − 0.75·β2 > 0` (the current error must count: with `β1 ≤ 0` a rejected step
    /// would not shrink); for DOP853 (k = 8) that is below 1/6.
    /// `None` (default): the method's default from Hairer's codes, see above.
    pub beta2: Option<T>,
    err_old: T,
    last_rejected: bool,
}

impl<T: Real> Default for PiController<T> {
    fn default() -> Self {
        PiController {
            safety: T::from_f64c(0.9),
            fac_min: None,
            fac_max: None,
            beta2: None,
            err_old: T::from_f64c(1e-4),
            last_rejected: false,
        }
    }
}

impl<T: Real> PiController<T> {
    /// The elementary (integral) controller, `β2 = 0`: `fac = safety·err^(−1/k)`, the other
    /// settings default. torchdiffeq's default controller is this one (exponent 1/5 for
    /// dopri5); diffrax's default has this form with the exponent 1/(k + 1).
    pub fn elementary() -> Self {
        PiController { beta2: Some(T::zero()), ..Default::default() }
    }

    /// The smallest step factor in effect for `k = error_order + 1`.
    pub fn fac_min(&self, k: u8) -> T {
        self.fac_min.unwrap_or_else(|| T::from_f64c(if k >= 8 { 0.333 } else { 0.2 }))
    }
    /// The largest step factor in effect for `k = error_order + 1`.
    pub fn fac_max(&self, k: u8) -> T {
        self.fac_max.unwrap_or_else(|| T::from_f64c(if k >= 8 { 6.0 } else { 10.0 }))
    }
    /// The exponent β2 in effect for `k = error_order + 1`.
    pub fn beta2(&self, k: u8) -> T {
        self.beta2.unwrap_or_else(|| T::from_f64c(if k >= 8 { 0.0 } else { 0.04 }))
    }
    /// The exponent β1 = 1/k − 0.75·β2 for `k = error_order + 1`.
    pub fn beta1(&self, k: u8) -> T {
        T::one() / T::from_f64c(f64::from(k)) - T::from_f64c(0.75) * self.beta2(k)
    }
}

impl<T: Real> StepController<T> for PiController<T> {
    fn reset(&mut self) {
        self.err_old = T::from_f64c(1e-4);
        self.last_rejected = false;
    }

    /// `safety` in (0, 1], `fac_min` in (0, 1), `fac_max` finite and > 1, `β2` in [0, 0.2]
    /// with `β1 = 1/k − 0.75·β2 > 0` (NaN fails every check).
    fn validate(&self, k: u8) -> Result<(), SolveError> {
        let bad = |name, x: T, expected| {
            Err(SolveError::InvalidController { name, value: shown(x), expected })
        };
        let (one, zero) = (T::one(), T::zero());
        if !(self.safety > zero && self.safety <= one) {
            return bad("safety", self.safety, "in (0, 1]");
        }
        let fac_min = self.fac_min(k);
        if !(fac_min > zero && fac_min < one) {
            return bad("fac_min", fac_min, "in (0, 1)");
        }
        let fac_max = self.fac_max(k);
        if !(fac_max > one && fac_max.is_finite()) {
            return bad("fac_max", fac_max, "finite and > 1");
        }
        let beta2 = self.beta2(k);
        if !(beta2 >= zero && beta2 <= T::from_f64c(0.2) && self.beta1(k) > zero) {
            return bad(
                "beta2",
                beta2,
                "in [0, 0.2] and below 4/(3k) (k = error order + 1; 1/6 for DOP853), so that \
                 beta1 = 1/k - 0.75 beta2 > 0",
            );
        }
        Ok(())
    }

    fn decide(&mut self, err: T, h: T, k: u8) -> Decision<T> {
        let h = h.abs();
        let (fac_min, fac_max) = (self.fac_min(k), self.fac_max(k));
        if !err.is_finite() {
            self.last_rejected = true;
            return Decision::Reject { h_retry: h * fac_min };
        }
        let beta1 = self.beta1(k);
        let fac11 = err.powf(beta1);
        // Inverse factor as in dopri5.f: fac = err^β1 / err_old^β2 / safety, clamped.
        let beta2 = self.beta2(k);
        // err_old^(−β2); skip the pow call for the elementary controller (β2 = 0).
        let memory = if beta2 > T::zero() { self.err_old.powf(-beta2) } else { T::one() };
        let mut inv = fac11 * memory / self.safety;
        inv = inv.max(T::one() / fac_max).min(T::one() / fac_min);
        if err <= T::one() {
            self.err_old = err.max(T::from_f64c(1e-4));
            // Finite, as the integrator requires (a step near the top of the range may grow
            // past it; the integrator clamps to h_max anyway).
            let mut h_next = (h / inv).min(T::max_value());
            if self.last_rejected {
                h_next = h_next.min(h);
            }
            self.last_rejected = false;
            Decision::Accept { h_next }
        } else {
            self.last_rejected = true;
            let inv = (fac11 / self.safety).min(T::one() / fac_min);
            Decision::Reject { h_retry: h / inv }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are Hairer's: dopri5.f (SAFE = 0.9, FAC1 = 0.2, FAC2 = 10, BETA = 0.04,
    /// EXPO1 = 0.17) and dop853.f (FAC1 = 0.333, FAC2 = 6, BETA = 0, EXPO1 = 1/8).
    #[test]
    fn defaults_match_hairer() {
        let c = PiController::<f64>::default();
        assert!((c.safety - 0.9).abs() < 1e-15 && (c.fac_min(5) - 0.2).abs() < 1e-15);
        assert!((c.fac_max(5) - 10.0).abs() < 1e-15);
        assert!((c.fac_min(8) - 0.333).abs() < 1e-15 && (c.fac_max(8) - 6.0).abs() < 1e-15);
        assert!((c.beta1(5) - 0.17).abs() < 1e-15 && (c.beta2(5) - 0.04).abs() < 1e-15);
        assert!((c.beta1(8) - 0.125).abs() < 1e-15 && c.beta2(8).abs() < 1e-15);
    }

    /// The elementary controller has no memory: the same error gives the same factor
    /// `safety·err^(−1/k)` whatever came before.
    #[test]
    fn elementary_controller_is_memoryless() {
        let mut c = PiController::<f64>::elementary();
        assert!(c.beta2(5).abs() < 1e-300);
        assert!((c.beta1(5) - 0.2).abs() < 1e-15);
        let want = 0.9 * 0.5f64.powf(-0.2);
        for prior in [1e-3, 0.9] {
            c.reset();
            let _ = c.decide(prior, 1.0, 5);
            match c.decide(0.5, 1.0, 5) {
                Decision::Accept { h_next } => assert!((h_next - want).abs() < 1e-12),
                d => panic!("{d:?}"),
            }
        }
    }

    /// A step near the top of the floating-point range grows to the largest finite number,
    /// not to +∞ (which the integrator refuses from any controller).
    #[test]
    fn next_step_stays_finite() {
        let mut c = PiController::<f64>::default();
        assert_eq!(c.decide(0.0, 1e308, 5), Decision::Accept { h_next: f64::MAX });
        let mut c = PiController::<f32>::default();
        assert_eq!(c.decide(0.0, 1e38, 5), Decision::Accept { h_next: f32::MAX });
    }

    /// One decision computed by hand from the formula of dopri5.f.
    #[test]
    fn accept_reject_factors() {
        let mut c = PiController::<f64>::default();
        // First step, err = 0.5: fac = 0.5^0.17 / 1e-4^0.04 / 0.9, h_new = h / fac.
        let want = 1.0 / (0.5f64.powf(0.17) / 1e-4f64.powf(0.04) / 0.9);
        match c.decide(0.5, 1.0, 5) {
            Decision::Accept { h_next } => assert!((h_next - want).abs() < 1e-12),
            d => panic!("{d:?}"),
        }
        // Rejection with err = 2: shrink by min(1/fac_min, 2^0.17/0.9).
        match c.decide(2.0, 1.0, 5) {
            Decision::Reject { h_retry } => {
                assert!((h_retry - 0.9 / 2f64.powf(0.17)).abs() < 1e-12)
            }
            d => panic!("{d:?}"),
        }
        // After a rejection the next accepted step may not grow.
        match c.decide(1e-6, 1.0, 5) {
            Decision::Accept { h_next } => assert!(h_next <= 1.0),
            d => panic!("{d:?}"),
        }
        // A huge error shrinks by at most fac_min; NaN rejects.
        assert_eq!(c.decide(1e30, 1.0, 5), Decision::Reject { h_retry: 0.2 });
        assert!(matches!(c.decide(f64::NAN, 1.0, 5), Decision::Reject { .. }));
        // Zero error grows by fac_max.
        c.reset();
        assert_eq!(c.decide(0.0, 1.0, 5), Decision::Accept { h_next: 10.0 });
    }
}
