//! A catalogue of reference problems with exact (or reference) solutions, shared by the
//! tests, the benchmarks and the examples.
//!
//! Their parameters are public fields and their exact solutions return plain numbers, to be
//! compared against: a parameter or buffer a solution cannot take is a bug in the calling
//! test, reported by a panic with a message (each `# Panics` section says when), not by a
//! `Result` that every comparison would unwrap. The systems themselves
//! ([`OdeSystem::rhs`]) are called by the integrators with buffers of length `dim()`.
#![allow(clippy::excessive_precision)]

use crate::{OdeSystem, Real};

/// Exponential decay `y' = −λ y` (component-wise, any dimension), exact `y(t) = y0·e^{−λt}`.
#[derive(Debug, Clone, Copy)]
pub struct ExpDecay {
    /// Dimension.
    pub dim: usize,
    /// Rate λ.
    pub lambda: f64,
}

impl ExpDecay {
    /// Exact solution at `t` from `y0` at 0.
    ///
    /// # Panics
    ///
    /// If `out` is not as long as `y0` (it would be filled only in part).
    pub fn exact<T: Real>(&self, y0: &[T], t: T, out: &mut [T]) {
        assert_eq!(out.len(), y0.len(), "ExpDecay::exact: out and y0 differ in length");
        let f = (-T::from_f64c(self.lambda) * t).exp();
        for (o, &y) in out.iter_mut().zip(y0) {
            *o = y * f;
        }
    }
}

impl<T: Real> OdeSystem<T> for ExpDecay {
    fn dim(&self) -> usize {
        self.dim
    }
    fn rhs(&mut self, _t: T, y: &[T], dy: &mut [T]) {
        let l = T::from_f64c(self.lambda);
        for (d, &v) in dy.iter_mut().zip(y) {
            *d = -l * v;
        }
    }
}

/// Harmonic oscillator `x'' = −ω² x` as `(x, v)`, exact `x = x0 cos ωt + v0/ω sin ωt`
/// (`x0 + v0·t` at ω = 0, a free particle).
#[derive(Debug, Clone, Copy)]
pub struct Harmonic {
    /// Angular frequency ω (finite; 0 is the free particle).
    pub omega: f64,
}

impl Harmonic {
    /// Exact solution at `t` from `y0 = (x0, v0)` at 0.
    ///
    /// # Panics
    ///
    /// If `y0` is not of length 2, or ω or `t` is not finite.
    pub fn exact<T: Real>(&self, y0: &[T], t: T) -> [T; 2] {
        assert_eq!(y0.len(), 2, "Harmonic::exact: y0 must be (x0, v0)");
        assert!(
            self.omega.is_finite() && t.is_finite(),
            "Harmonic::exact: omega = {} and t = {t} must be finite",
            self.omega
        );
        let w = T::from_f64c(self.omega);
        let wt = w * t;
        let (c, s) = (wt.cos(), wt.sin());
        // sin(ωt)/ω; where |ωt| is tiny (ω = 0 included, which divides 0 by 0) its series
        // `t·(1 − (ωt)²/6)`, exact to round-off there.
        let sin_over_w = if wt.abs() < T::from_f64c(1e-4) {
            t * (T::one() - wt * wt / T::from_f64c(6.0))
        } else {
            s / w
        };
        [y0[0] * c + y0[1] * sin_over_w, -y0[0] * w * s + y0[1] * c]
    }
}

impl<T: Real> OdeSystem<T> for Harmonic {
    fn dim(&self) -> usize {
        2
    }
    fn rhs(&mut self, _t: T, y: &[T], dy: &mut [T]) {
        let w = T::from_f64c(self.omega);
        dy[0] = y[1];
        dy[1] = -w * w * y[0];
    }
}

/// The linear system `y' = A y` with `A = [[−1, 2], [−2, −1]]` (a damped rotation), exact
/// `y(t) = e^{At} y0 = e^{−t} [[cos 2t, sin 2t], [−sin 2t, cos 2t]] y0`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Linear2;

impl Linear2 {
    /// The matrix A (row-major).
    pub const A: [[f64; 2]; 2] = [[-1.0, 2.0], [-2.0, -1.0]];
    /// The matrix exponential `e^{At}` (row-major).
    pub fn expm(t: f64) -> [[f64; 2]; 2] {
        let (e, c, s) = ((-t).exp(), (2.0 * t).cos(), (2.0 * t).sin());
        [[e * c, e * s], [-e * s, e * c]]
    }
    /// Exact solution at `t` from `y0` at 0.
    ///
    /// # Panics
    ///
    /// If `y0` is not of length 2.
    pub fn exact<T: Real>(y0: &[T], t: T) -> [T; 2] {
        assert_eq!(y0.len(), 2, "Linear2::exact: y0 must have length 2");
        let m = Self::expm(t.to_f64c());
        let (a, b) = (y0[0].to_f64c(), y0[1].to_f64c());
        [T::from_f64c(m[0][0] * a + m[0][1] * b), T::from_f64c(m[1][0] * a + m[1][1] * b)]
    }
}

impl<T: Real> OdeSystem<T> for Linear2 {
    fn dim(&self) -> usize {
        2
    }
    fn rhs(&mut self, _t: T, y: &[T], dy: &mut [T]) {
        let a = Self::A;
        dy[0] = T::from_f64c(a[0][0]) * y[0] + T::from_f64c(a[0][1]) * y[1];
        dy[1] = T::from_f64c(a[1][0]) * y[0] + T::from_f64c(a[1][1]) * y[1];
    }
}

/// A non-autonomous scalar problem `y' = y·cos t`, exact `y = y0·e^{sin t}` (tests that the
/// stage times `t + c_i h` are right).
#[derive(Debug, Clone, Copy, Default)]
pub struct NonAutonomous;

impl NonAutonomous {
    /// Exact solution at `t` from `y0` at 0.
    pub fn exact<T: Real>(y0: T, t: T) -> T {
        y0 * t.sin().exp()
    }
}

impl<T: Real> OdeSystem<T> for NonAutonomous {
    fn dim(&self) -> usize {
        1
    }
    fn rhs(&mut self, t: T, y: &[T], dy: &mut [T]) {
        dy[0] = y[0] * t.cos();
    }
}

/// The restricted three-body problem of Arenstorf (HNW I, §II.0, eq. (0.1)): a periodic
/// orbit of a light body around the Earth and the Moon, `μ = 0.012277471`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Arenstorf;

impl Arenstorf {
    /// Mass ratio μ.
    pub const MU: f64 = 0.012277471;
    /// Initial state `(x, y, x', y')`.
    pub const Y0: [f64; 4] = [0.994, 0.0, 0.0, -2.00158510637908252240537862224];
    /// The period `T`.
    pub const PERIOD: f64 = 17.0652165601579625588917206249;
}

impl<T: Real> OdeSystem<T> for Arenstorf {
    fn dim(&self) -> usize {
        4
    }
    #[inline]
    fn rhs(&mut self, _t: T, y: &[T], dy: &mut [T]) {
        let (y, dy) = (&y[..4], &mut dy[..4]);
        let mu = T::from_f64c(Self::MU);
        let mup = T::one() - mu;
        let (y1, y2, y3, y4) = (y[0], y[1], y[2], y[3]);
        let d1 = ((y1 + mu) * (y1 + mu) + y2 * y2).powf(T::from_f64c(1.5));
        let d2 = ((y1 - mup) * (y1 - mup) + y2 * y2).powf(T::from_f64c(1.5));
        dy[0] = y3;
        dy[1] = y4;
        dy[2] = y1 + T::from_f64c(2.0) * y4 - mup * (y1 + mu) / d1 - mu * (y1 - mup) / d2;
        dy[3] = y2 - T::from_f64c(2.0) * y3 - mup * y2 / d1 - mu * y2 / d2;
    }
}

/// The Arenstorf problem, its initial state and its period.
pub fn arenstorf() -> (Arenstorf, [f64; 4], f64) {
    (Arenstorf, Arenstorf::Y0, Arenstorf::PERIOD)
}

/// The Lorenz system `x' = σ(y − x)`, `y' = x(ρ − z) − y`, `z' = xy − βz` with the classic
/// `σ = 10, ρ = 28, β = 8/3`; no closed form, compare against a tight DOP853 solve.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lorenz;

impl Lorenz {
    /// The usual initial state `(1, 1, 1)`.
    pub const Y0: [f64; 3] = [1.0, 1.0, 1.0];
}

impl<T: Real> OdeSystem<T> for Lorenz {
    fn dim(&self) -> usize {
        3
    }
    #[inline]
    fn rhs(&mut self, _t: T, y: &[T], dy: &mut [T]) {
        let (y, dy) = (&y[..3], &mut dy[..3]);
        let (s, r, b) = (T::from_f64c(10.0), T::from_f64c(28.0), T::from_f64c(8.0 / 3.0));
        dy[0] = s * (y[1] - y[0]);
        dy[1] = y[0] * (r - y[2]) - y[1];
        dy[2] = y[0] * y[1] - b * y[2];
    }
}

/// The Kepler two-body problem `q'' = −q/|q|³` (GM = 1, semi-major axis 1, period 2π) with
/// eccentricity `e`, started at perihelion; the exact solution comes from Kepler's equation
/// `E − e sin E = t` (solved by Newton's method to round-off). Class D of DETEST.
#[derive(Debug, Clone, Copy)]
pub struct Kepler {
    /// Eccentricity, in [0, 1).
    pub e: f64,
}

impl Kepler {
    /// The exact state `(x, y, x', y')` at time `t` (`t = 0` is the initial state).
    ///
    /// # Panics
    ///
    /// If `e` is not in [0, 1) (no closed orbit: Kepler's equation as solved here and the
    /// factor `sqrt(1 − e²)` need an ellipse), or `t` is not finite.
    pub fn exact(&self, t: f64) -> [f64; 4] {
        let e = self.e;
        assert!((0.0..1.0).contains(&e), "Kepler::exact: eccentricity e = {e} is not in [0, 1)");
        assert!(t.is_finite(), "Kepler::exact: t = {t} is not finite");
        let mut ea = t;
        for _ in 0..60 {
            let step = (ea - e * ea.sin() - t) / (1.0 - e * ea.cos());
            ea -= step;
            if step.abs() <= 1e-16 * ea.abs().max(1.0) {
                break;
            }
        }
        let (s, c) = ea.sin_cos();
        let r = 1.0 - e * c;
        let q = (1.0 - e * e).sqrt();
        [c - e, q * s, -s / r, q * c / r]
    }
}

impl<T: Real> OdeSystem<T> for Kepler {
    fn dim(&self) -> usize {
        4
    }
    #[inline]
    fn rhs(&mut self, _t: T, y: &[T], dy: &mut [T]) {
        let (y, dy) = (&y[..4], &mut dy[..4]);
        let r2 = y[0] * y[0] + y[1] * y[1];
        let r3 = r2 * r2.sqrt();
        dy[0] = y[2];
        dy[1] = y[3];
        dy[2] = -y[0] / r3;
        dy[3] = -y[1] / r3;
    }
}

/// The logistic equation `y' = y(1 − y)`, exact `y = 1/(1 + (1/y0 − 1)e^{−t})`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logistic;

impl Logistic {
    /// Exact solution at `t` from `y0` at 0.
    pub fn exact<T: Real>(y0: T, t: T) -> T {
        T::one() / (T::one() + (T::one() / y0 - T::one()) * (-t).exp())
    }
}

impl<T: Real> OdeSystem<T> for Logistic {
    fn dim(&self) -> usize {
        1
    }
    fn rhs(&mut self, _t: T, y: &[T], dy: &mut [T]) {
        dy[0] = y[0] * (T::one() - y[0]);
    }
}

/// A batch of `batch` two-dimensional states driven by one fixed random MLP
/// `f(x) = W2 tanh(W1 x + b1) + b2` (2 → `hidden` → 2), written with flat loops: the shape of
/// a CNF solve (one flat state of `2·batch` numbers, sample-major). Autonomous. The weights
/// are drawn from a fixed SplitMix64 stream (`seed`), uniform in `[-1, 1]` for the first
/// layer and `[-1, 1]/sqrt(hidden)` for the second, so every run sees the same field.
#[derive(Debug, Clone)]
pub struct MlpBatch {
    /// Number of states.
    pub batch: usize,
    /// Hidden width.
    pub hidden: usize,
    w1: Vec<f64>,
    b1: Vec<f64>,
    w2: Vec<f64>,
    b2: [f64; 2],
}

/// SplitMix64 → uniform in [-1, 1).
fn splitmix(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

impl MlpBatch {
    /// A batch of `batch` states through a fixed random 2 → `hidden` → 2 MLP.
    pub fn new(batch: usize, hidden: usize, seed: u64) -> Self {
        Self::with_gain(batch, hidden, seed, 1.0)
    }

    /// As [`MlpBatch::new`] with both layers' weights multiplied by `gain` (a larger gain
    /// gives a more nonlinear, faster field).
    pub fn with_gain(batch: usize, hidden: usize, seed: u64, gain: f64) -> Self {
        let mut s = seed;
        let w1 = (0..2 * hidden).map(|_| gain * splitmix(&mut s)).collect();
        let b1 = (0..hidden).map(|_| splitmix(&mut s)).collect();
        let scale = gain / (hidden as f64).sqrt();
        let w2 = (0..2 * hidden).map(|_| scale * splitmix(&mut s)).collect();
        let b2 = [0.1 * splitmix(&mut s), 0.1 * splitmix(&mut s)];
        MlpBatch { batch, hidden, w1, b1, w2, b2 }
    }

    /// A reproducible initial state: `batch` points uniform in `[-2, 2]²`.
    pub fn initial_state(&self, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..2 * self.batch).map(|_| 2.0 * splitmix(&mut s)).collect()
    }

    /// Writes `f(y)` for the whole batch into `dy` (the same code serves every caller).
    ///
    /// # Panics
    ///
    /// If `y` or `dy` is not of length `2·batch` (a shorter `dy` would be filled only in
    /// part, or not at all).
    #[inline]
    pub fn eval(&self, y: &[f64], dy: &mut [f64]) {
        let n = 2 * self.batch;
        assert!(
            y.len() == n && dy.len() == n,
            "MlpBatch::eval: y and dy have lengths {} and {}, expected 2·batch = {n}",
            y.len(),
            dy.len()
        );
        let h = self.hidden;
        let (w1, b1, w2) = (&self.w1[..2 * h], &self.b1[..h], &self.w2[..2 * h]);
        let (w2a, w2b) = w2.split_at(h);
        for (x, d) in y.chunks_exact(2).zip(dy.chunks_exact_mut(2)) {
            let (x0, x1) = (x[0], x[1]);
            let (mut acc0, mut acc1) = (self.b2[0], self.b2[1]);
            for j in 0..h {
                let a = (w1[2 * j] * x0 + w1[2 * j + 1] * x1 + b1[j]).tanh();
                acc0 += w2a[j] * a;
                acc1 += w2b[j] * a;
            }
            d[0] = acc0;
            d[1] = acc1;
        }
    }
}

impl OdeSystem<f64> for MlpBatch {
    fn dim(&self) -> usize {
        2 * self.batch
    }
    #[inline]
    fn rhs(&mut self, _t: f64, y: &[f64], dy: &mut [f64]) {
        self.eval(y, dy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{solve, Method, SolveOptions};
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// Runs `f`, which must panic with a message containing `want`.
    fn panics_with(want: &str, f: impl FnOnce()) {
        let payload = catch_unwind(AssertUnwindSafe(f)).expect_err(want);
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(msg.contains(want), "{msg:?} does not contain {want:?}");
    }

    /// ω = 0 is the free particle `x0 + v0·t` (it gave NaN, 0/0), and ω near 0 approaches it;
    /// a solve of the same system agrees.
    #[test]
    fn harmonic_at_zero_frequency_is_a_free_particle() {
        let y0 = [1.0f64, 2.0];
        let free = Harmonic { omega: 0.0 }.exact(&y0, 3.0);
        assert!((free[0] - 7.0).abs() < 1e-15 && (free[1] - 2.0).abs() < 1e-15, "{free:?}");
        for omega in [1e-300, -1e-300, 1e-9, 1e-6] {
            let near = Harmonic { omega }.exact(&y0, 3.0);
            assert!((near[0] - 7.0).abs() < 1e-10 && (near[1] - 2.0).abs() < 1e-10, "{near:?}");
        }
        // Where the series is used (|ωt| < 1e-4) it agrees with sin(ωt)/ω to round-off.
        for (omega, t) in [(1e-5, 9.99), (0.5, 1.9e-4), (-2.0, 4.9e-5)] {
            let x = Harmonic { omega }.exact(&y0, t)[0];
            let direct = (omega * t).cos() + 2.0 * (omega * t).sin() / omega;
            assert!((x - direct).abs() <= 4.0 * f64::EPSILON * direct.abs(), "{x} vs {direct}");
        }
        let f32_free = Harmonic { omega: 0.0 }.exact(&[1.0f32, 2.0], 3.0);
        assert!((f32_free[0] - 7.0).abs() < 1e-6, "{f32_free:?}");
        let mut sys = Harmonic { omega: 0.0 };
        let (y, _) =
            solve(Method::Dopri5, &mut sys, 0.0, 3.0, &y0, &SolveOptions::tol(1e-8, 1e-8)).unwrap();
        assert!((y[0] - free[0]).abs() < 1e-7 && (y[1] - free[1]).abs() < 1e-7, "{y:?}");
        // A usual frequency is unchanged: x = cos t for (1, 0).
        let one = Harmonic { omega: 1.0 }.exact(&[1.0, 0.0], 2.0);
        assert!((one[0] - 2f64.cos()).abs() < 1e-15 && (one[1] + 2f64.sin()).abs() < 1e-15);
    }

    /// The exact solutions refuse what they cannot take, with a message (a short `y0`
    /// panicked on an index; e ≥ 1 gave NaN; a short output buffer was filled in part).
    #[test]
    fn exact_solutions_refuse_bad_input() {
        panics_with("Harmonic::exact: y0 must be (x0, v0)", || {
            Harmonic { omega: 1.0 }.exact(&[1.0], 0.5);
        });
        panics_with("Harmonic::exact: y0 must be (x0, v0)", || {
            Harmonic { omega: 1.0 }.exact(&[1.0, 0.0, 0.0], 0.5);
        });
        panics_with("omega = NaN and t = 0.5 must be finite", || {
            Harmonic { omega: f64::NAN }.exact(&[1.0, 0.0], 0.5);
        });
        panics_with("Linear2::exact: y0 must have length 2", || {
            Linear2::exact(&[1.0], 0.5);
        });
        panics_with("ExpDecay::exact: out and y0 differ in length", || {
            ExpDecay { dim: 2, lambda: 1.0 }.exact(&[1.0, 2.0], 0.5, &mut [0.0]);
        });
        for e in [2.0, 1.0, -0.1, f64::NAN, f64::INFINITY] {
            panics_with("is not in [0, 1)", || {
                Kepler { e }.exact(1.0);
            });
        }
        panics_with("Kepler::exact: t = inf is not finite", || {
            Kepler { e: 0.5 }.exact(f64::INFINITY);
        });
        // In range: the perihelion start (1 − e, 0, 0, sqrt((1 + e)/(1 − e))).
        let y0 = Kepler { e: 0.0 }.exact(0.0);
        assert!((y0[0] - 1.0).abs() < 1e-15 && (y0[3] - 1.0).abs() < 1e-15, "{y0:?}");
    }

    /// `MlpBatch::eval` with a buffer of the wrong length panics with the lengths (a short
    /// `dy` was silently left unwritten); the right lengths fill the whole of `dy`.
    #[test]
    fn mlp_batch_eval_checks_its_buffers() {
        let mlp = MlpBatch::new(3, 4, 7);
        let y = mlp.initial_state(1);
        panics_with("y and dy have lengths 6 and 5, expected 2·batch = 6", || {
            mlp.eval(&y, &mut [0.0; 5]);
        });
        panics_with("y and dy have lengths 6 and 0", || mlp.eval(&y, &mut []));
        panics_with("y and dy have lengths 4 and 4", || mlp.eval(&y[..4], &mut [0.0; 4]));
        let mut dy = [f64::NAN; 6];
        mlp.eval(&y, &mut dy);
        assert!(dy.iter().all(|v| v.is_finite()), "{dy:?}");
    }
}
