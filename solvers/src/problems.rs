//! A catalogue of reference problems with exact (or reference) solutions, shared by the
//! tests, the benchmarks and the examples.
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
    pub fn exact<T: Real>(&self, y0: &[T], t: T, out: &mut [T]) {
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

/// Harmonic oscillator `x'' = −ω² x` as `(x, v)`, exact `x = x0 cos ωt + v0/ω sin ωt`.
#[derive(Debug, Clone, Copy)]
pub struct Harmonic {
    /// Angular frequency ω.
    pub omega: f64,
}

impl Harmonic {
    /// Exact solution at `t` from `y0 = (x0, v0)` at 0.
    pub fn exact<T: Real>(&self, y0: &[T], t: T) -> [T; 2] {
        let w = T::from_f64c(self.omega);
        let (c, s) = ((w * t).cos(), (w * t).sin());
        [y0[0] * c + y0[1] / w * s, -y0[0] * w * s + y0[1] * c]
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
    pub fn exact<T: Real>(y0: &[T], t: T) -> [T; 2] {
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
    pub fn exact(&self, t: f64) -> [f64; 4] {
        let e = self.e;
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
    #[inline]
    pub fn eval(&self, y: &[f64], dy: &mut [f64]) {
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
