//! Adam with PyTorch's coupled weight decay, and learning-rate schedules.
//!
//! One step of [`Adam`] at step number `t = 1, 2, …` with gradient `g`, parameters `θ`,
//! learning rate `α_t` (from the [`LrSchedule`]), moments `m, v` (both 0 at the start):
//!
//! ```text
//! g ← g + λ θ                                  (coupled weight decay, as torch.optim.Adam)
//! m ← m + (1 − β₁)(g − m)                      (= β₁ m + (1 − β₁) g; PyTorch's lerp)
//! v ← β₂ v + (1 − β₂) g²
//! θ ← θ − (α_t / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
//! ```
//!
//! This is `torch.optim.Adam(params, lr, betas, eps, weight_decay)` operation for operation
//! (its single-tensor path: bias corrections and the step size in f64, the tensor arithmetic
//! in the parameters' precision, ε added after the square root of the *corrected* second
//! moment), so a run started from the same weights and gradients follows PyTorch's to
//! rounding.

use crate::error::Error;
use crate::field::Real;

/// A learning-rate schedule: the rate α_t used at step `t = 1, 2, …` given the base rate α.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LrSchedule {
    /// α_t = α.
    #[default]
    Constant,
    /// α_t = α · γ^⌊(t − 1) / every⌋ (PyTorch's `StepLR` stepped once per iteration).
    Step {
        /// Steps between decays (≥ 1).
        every: u64,
        /// Decay factor γ ∈ (0, 1].
        gamma: f64,
    },
    /// Cosine annealing from α to `min_lr` over `total` steps:
    /// α_t = min_lr + (α − min_lr)(1 + cos(π · min(t − 1, total) / total)) / 2
    /// (PyTorch's `CosineAnnealingLR` with `T_max = total`, held at `min_lr` after).
    Cosine {
        /// Length of the annealing in steps (≥ 1).
        total: u64,
        /// The final rate (0 ≤ min_lr ≤ α).
        min_lr: f64,
    },
    /// Linear warm-up over `warmup` steps, α_t = α · min(1, t / warmup), then constant.
    Warmup {
        /// Warm-up length in steps (≥ 1).
        warmup: u64,
    },
}

impl LrSchedule {
    /// The rate at step `t ≥ 1` for base rate `lr`.
    ///
    /// ```
    /// use odeflow::train::LrSchedule;
    /// let s = LrSchedule::Step { every: 10, gamma: 0.5 };
    /// assert_eq!(s.lr(1e-3, 10), 1e-3);
    /// assert_eq!(s.lr(1e-3, 11), 5e-4);
    /// let c = LrSchedule::Cosine { total: 100, min_lr: 0.0 };
    /// assert!((c.lr(1.0, 51) - 0.5).abs() < 1e-12);
    /// ```
    pub fn lr(&self, lr: f64, t: u64) -> f64 {
        let k = t.saturating_sub(1);
        match *self {
            LrSchedule::Constant => lr,
            LrSchedule::Step { every, gamma } => lr * gamma.powi((k / every.max(1)) as i32),
            LrSchedule::Cosine { total, min_lr } => {
                let total = total.max(1);
                let frac = k.min(total) as f64 / total as f64;
                min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())
            }
            LrSchedule::Warmup { warmup } => lr * (t as f64 / warmup.max(1) as f64).min(1.0),
        }
    }

    fn validate(&self, lr: f64) -> Result<(), Error> {
        let bad = |name, value, expected| Err(Error::InvalidConfig { name, value, expected });
        match *self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::Step { every, gamma } => {
                if every == 0 {
                    bad("schedule.every", 0.0, "≥ 1")
                } else if !(gamma > 0.0 && gamma <= 1.0) {
                    bad("schedule.gamma", gamma, "in (0, 1]")
                } else {
                    Ok(())
                }
            }
            LrSchedule::Cosine { total, min_lr } => {
                if total == 0 {
                    bad("schedule.total", 0.0, "≥ 1")
                } else if !(min_lr >= 0.0 && min_lr <= lr) {
                    bad("schedule.min_lr", min_lr, "in [0, lr]")
                } else {
                    Ok(())
                }
            }
            LrSchedule::Warmup { warmup } => {
                if warmup == 0 {
                    bad("schedule.warmup", 0.0, "≥ 1")
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Settings of [`Adam`]. Defaults are PyTorch's, with FFJORD's toy weight decay.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamConfig {
    /// Base learning rate α (finite, > 0). Default 1e-3.
    pub lr: f64,
    /// First-moment decay β₁ ∈ [0, 1). Default 0.9.
    pub beta1: f64,
    /// Second-moment decay β₂ ∈ [0, 1). Default 0.999.
    pub beta2: f64,
    /// ε added to the corrected √v (finite, > 0). Default 1e-8.
    pub eps: f64,
    /// Coupled (L2) weight decay λ ≥ 0, added to the gradient. Default 1e-5 (FFJORD's
    /// `train_toy.py`).
    pub weight_decay: f64,
    /// Learning-rate schedule. Default constant.
    pub schedule: LrSchedule,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-5,
            schedule: LrSchedule::Constant,
        }
    }
}

impl AdamConfig {
    /// Checks every field's range (see the field docs).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |name, value, expected| Err(Error::InvalidConfig { name, value, expected });
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", self.lr, "finite and > 0");
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return bad("beta1", self.beta1, "in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("beta2", self.beta2, "in [0, 1)");
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", self.eps, "finite and > 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", self.weight_decay, "finite and ≥ 0");
        }
        self.schedule.validate(self.lr)
    }
}

/// Adam over one flat parameter vector (or several slices laid end to end), with PyTorch's
/// coupled weight decay; equations in the [module docs](self).
///
/// ```
/// use odeflow::train::{Adam, AdamConfig};
///
/// // Minimise ½‖θ‖²: the gradient is θ itself.
/// let mut theta = vec![1.0f64, -2.0];
/// let mut adam = Adam::new(AdamConfig { lr: 0.1, weight_decay: 0.0, ..Default::default() }, 2)?;
/// for _ in 0..200 {
///     let g = theta.clone();
///     adam.step(&mut theta, &g)?;
/// }
/// assert!(theta.iter().all(|x| x.abs() < 0.05));
/// assert_eq!(adam.t(), 200);
/// # Ok::<(), odeflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Adam<T> {
    cfg: AdamConfig,
    m: Vec<T>,
    v: Vec<T>,
    t: u64,
}

impl<T: Real> Adam<T> {
    /// A fresh optimizer for `n` parameters (moments zero, step 0). Validates `cfg`, also
    /// for the scalar type: `lr`, `eps` and `weight_decay` must stay finite in T, and `lr`
    /// and `eps` positive (an f32 `eps` of 1e-50 rounds to 0), else [`Error::InvalidConfig`].
    pub fn new(cfg: AdamConfig, n: usize) -> Result<Self, Error> {
        Self::validate_for_t(&cfg)?;
        Ok(Adam { cfg, m: vec![T::zero(); n], v: vec![T::zero(); n], t: 0 })
    }

    /// An optimizer resumed from saved moments and step count (see [`Adam::moments`]).
    /// Errors: `cfg` as in [`Adam::new`]; `m` and `v` of different lengths
    /// ([`Error::BufferLength`]); a non-finite `m`, a non-finite or negative `v`, or
    /// `t = u64::MAX` (no next step) ([`Error::InvalidConfig`]).
    pub fn from_state(cfg: AdamConfig, m: Vec<T>, v: Vec<T>, t: u64) -> Result<Self, Error> {
        Self::validate_for_t(&cfg)?;
        if m.len() != v.len() {
            return Err(Error::BufferLength { buffer: "v", expected: m.len(), found: v.len() });
        }
        let bad = |name, value: f64, expected| Err(Error::InvalidConfig { name, value, expected });
        if let Some(x) = m.iter().find(|x| !x.is_finite()) {
            return bad("adam m", x.to_f64c(), "finite first moments");
        }
        if let Some(x) = v.iter().find(|x| !(x.is_finite() && **x >= T::zero())) {
            return bad("adam v", x.to_f64c(), "finite second moments ≥ 0");
        }
        if t == u64::MAX {
            return bad("adam t", t as f64, "a step count below u64::MAX");
        }
        Ok(Adam { cfg, m, v, t })
    }

    /// [`AdamConfig::validate`], and the values the step casts to T finite (and `lr`, `eps`
    /// positive) in T.
    fn validate_for_t(cfg: &AdamConfig) -> Result<(), Error> {
        cfg.validate()?;
        for (name, v, positive) in [
            ("lr", cfg.lr, true),
            ("eps", cfg.eps, true),
            ("weight_decay", cfg.weight_decay, false),
        ] {
            let t = T::from_f64c(v);
            if !t.is_finite() || (positive && t <= T::zero()) {
                let expected = if positive {
                    "finite and > 0 in the parameters' float type"
                } else {
                    "finite in the parameters' float type"
                };
                return Err(Error::InvalidConfig { name, value: v, expected });
            }
        }
        Ok(())
    }

    /// The settings.
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    /// The number of parameters.
    pub fn len(&self) -> usize {
        self.m.len()
    }

    /// Whether the optimizer has no parameters.
    pub fn is_empty(&self) -> bool {
        self.m.is_empty()
    }

    /// Steps taken so far (`t` of the last step; 0 before the first).
    pub fn t(&self) -> u64 {
        self.t
    }

    /// The first and second moments `(m, v)`.
    pub fn moments(&self) -> (&[T], &[T]) {
        (&self.m, &self.v)
    }

    /// The learning rate the next step will use, α_{t+1}.
    pub fn next_lr(&self) -> f64 {
        self.cfg.schedule.lr(self.cfg.lr, self.t.saturating_add(1))
    }

    /// One step on the flat vector `params` with gradient `grad` (same length as the
    /// optimizer). A non-finite gradient is refused before anything changes, and so is a
    /// step that would make a parameter non-finite ([`Error::NonFiniteParameter`], e.g. a
    /// huge learning rate) or its moments ([`Error::MomentOverflow`], a gradient whose
    /// square overflows): parameters, moments and `t` are then as before the call.
    pub fn step(&mut self, params: &mut [T], grad: &[T]) -> Result<(), Error> {
        self.step_slices(&mut [params], &[grad])
    }

    /// One step on several parameter slices laid end to end (e.g. each block's θ, then the
    /// times), with their gradients in the same order; total length as the optimizer's.
    /// Errors as [`Adam::step`].
    pub fn step_slices(&mut self, params: &mut [&mut [T]], grads: &[&[T]]) -> Result<(), Error> {
        let n: usize = params.iter().map(|p| p.len()).sum();
        if n != self.m.len() {
            return Err(Error::BufferLength { buffer: "params", expected: self.m.len(), found: n });
        }
        if params.len() != grads.len() || params.iter().zip(grads).any(|(p, g)| p.len() != g.len())
        {
            let found = grads.iter().map(|g| g.len()).sum();
            return Err(Error::BufferLength { buffer: "grads", expected: n, found });
        }
        if let Some((index, g)) =
            grads.iter().flat_map(|g| g.iter()).enumerate().find(|(_, g)| !g.is_finite())
        {
            let value = g.to_f64c();
            return Err(Error::NonFiniteGradient { what: "params", segment: 0, index, value });
        }
        let Some(step) = self.t.checked_add(1) else {
            let value = self.t as f64;
            return Err(Error::InvalidConfig { name: "adam t", value, expected: "< u64::MAX" });
        };
        let c = &self.cfg;
        let t = step as f64;
        let lr = c.schedule.lr(c.lr, step);
        // Scalars as PyTorch computes them (Python floats, i.e. f64), then cast.
        let bias1 = 1.0 - c.beta1.powf(t);
        let bias2_sqrt = (1.0 - c.beta2.powf(t)).sqrt();
        let step_size = T::from_f64c(lr / bias1);
        let (wd, one_m_b1) = (T::from_f64c(c.weight_decay), T::from_f64c(1.0 - c.beta1));
        let (b2, one_m_b2) = (T::from_f64c(c.beta2), T::from_f64c(1.0 - c.beta2));
        let (b2s, eps) = (T::from_f64c(bias2_sqrt), T::from_f64c(c.eps));
        let decay = c.weight_decay != 0.0;
        // (m, v, θ) after the step from (m, v, θ) and the gradient.
        let update = |m: T, v: T, th: T, gr: T| {
            let gr = if decay { gr + th * wd } else { gr };
            // torch.lerp(m, g, w) for w < 0.5: m + w (g − m).
            let m = m + one_m_b1 * (gr - m);
            let v = v * b2 + one_m_b2 * gr * gr;
            let denom = v.sqrt() / b2s + eps;
            // torch.addcdiv(θ, m, denom, value = −step): θ + (−step · m) / denom.
            (m, v, th + (-step_size * m) / denom)
        };
        // First pass: check that every updated parameter and moment is finite, changing
        // nothing (no copy to roll back to); second pass: the same arithmetic, stored. (A
        // gradient whose square overflows makes v = ∞ while θ stays finite: a state that
        // `from_state` refuses, and a parameter frozen for good.)
        let mut i = 0;
        for (p, g) in params.iter().zip(grads) {
            for (&th, &gr) in p.iter().zip(g.iter()) {
                let (m, v, th) = update(self.m[i], self.v[i], th, gr);
                if !th.is_finite() {
                    return Err(Error::NonFiniteParameter {
                        what: "would result from the Adam step, which was not taken",
                        index: i,
                        value: th.to_f64c(),
                    });
                }
                if !(m.is_finite() && v.is_finite()) {
                    return Err(Error::MomentOverflow { index: i, gradient: gr.to_f64c() });
                }
                i += 1;
            }
        }
        let mut i = 0;
        for (p, g) in params.iter_mut().zip(grads) {
            for (th, &gr) in p.iter_mut().zip(g.iter()) {
                (self.m[i], self.v[i], *th) = update(self.m[i], self.v[i], *th, gr);
                i += 1;
            }
        }
        self.t = step;
        Ok(())
    }
}
