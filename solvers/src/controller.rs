//! Step-size control.

use crate::Real;

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
pub trait StepController<T: Real> {
    /// Forgets the history (called at the start of each solve).
    fn reset(&mut self);
    /// `err`: the error norm of a step of magnitude `h` (`err` may be `+∞` or NaN after an
    /// overflow; the controller must then reject); `k = error_order + 1`.
    fn decide(&mut self, err: T, h: T, k: u8) -> Decision<T>;
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
/// Defaults: `safety = 0.9`, `fac_min = 0.2`, `fac_max = 10`, `β2 = 0.04` — exactly
/// Hairer's `dopri5.f` defaults (`BETA = 0.04`, `EXPO1 = 0.2 − 0.75·BETA = 0.17` for k = 5).
/// For DOP853 (k = 8) we keep the same β2 = 0.04 (Hairer's `dop853.f` default is 0; his
/// code notes that β ≈ 0.04 stabilises the step sequence).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PiController<T> {
    /// Safety factor (0, 1]. Default 0.9.
    pub safety: T,
    /// Smallest step factor, (0, 1). Default 0.2.
    pub fac_min: T,
    /// Largest step factor, > 1. Default 10.
    pub fac_max: T,
    /// The proportional memory exponent β2 (0 gives the elementary I controller). Default 0.04.
    pub beta2: T,
    err_old: T,
    last_rejected: bool,
}

impl<T: Real> Default for PiController<T> {
    fn default() -> Self {
        PiController {
            safety: T::from_f64c(0.9),
            fac_min: T::from_f64c(0.2),
            fac_max: T::from_f64c(10.0),
            beta2: T::from_f64c(0.04),
            err_old: T::from_f64c(1e-4),
            last_rejected: false,
        }
    }
}

impl<T: Real> PiController<T> {
    /// The exponent β1 = 1/k − 0.75·β2 for `k = error_order + 1`.
    pub fn beta1(&self, k: u8) -> T {
        T::one() / T::from_f64c(f64::from(k)) - T::from_f64c(0.75) * self.beta2
    }
}

impl<T: Real> StepController<T> for PiController<T> {
    fn reset(&mut self) {
        self.err_old = T::from_f64c(1e-4);
        self.last_rejected = false;
    }

    fn decide(&mut self, err: T, h: T, k: u8) -> Decision<T> {
        let h = h.abs();
        if !err.is_finite() {
            self.last_rejected = true;
            return Decision::Reject { h_retry: h * self.fac_min };
        }
        let beta1 = self.beta1(k);
        let fac11 = err.powf(beta1);
        // Inverse factor as in dopri5.f: fac = err^β1 / err_old^β2 / safety, clamped.
        let mut inv = fac11 * self.err_old.powf(-self.beta2) / self.safety;
        inv = inv.max(T::one() / self.fac_max).min(T::one() / self.fac_min);
        if err <= T::one() {
            self.err_old = err.max(T::from_f64c(1e-4));
            let mut h_next = h / inv;
            if self.last_rejected {
                h_next = h_next.min(h);
            }
            self.last_rejected = false;
            Decision::Accept { h_next }
        } else {
            self.last_rejected = true;
            let inv = (fac11 / self.safety).min(T::one() / self.fac_min);
            Decision::Reject { h_retry: h / inv }
        }
    }
}
