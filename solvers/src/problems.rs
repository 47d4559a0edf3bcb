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
