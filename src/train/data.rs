//! Data: FFJORD's 2-D toy distributions, user data from CSV or `.npy`, train/test splits and
//! seeded mini-batches.
//!
//! The toy sets follow FFJORD's `lib/toy_data.py` (and, for swissroll, circles and moons,
//! scikit-learn's `make_swiss_roll`, `make_circles`, `make_moons`, which it calls); the
//! definitions are on the variants of [`Toy`]. `U` is uniform on [0, 1), `N` standard normal.
//! Every draw comes from the caller's random generator, so a seed fixes the data.

use std::path::Path;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::Error;
use crate::field::Real;

/// FFJORD's 2-D toy distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Toy {
    /// scikit-learn's swiss roll with noise 1, coordinates (x, z), divided by 5:
    /// s = 1.5π(1 + 2U), (x, z) = (s cos s + N, s sin s + N) / 5.
    SwissRoll,
    /// Eight Gaussians of standard deviation 0.5 centred at 4·(cos kπ/4, sin kπ/4), all
    /// divided by 1.414: x = (N₂ · 0.5 + c_k) / 1.414, k uniform in 0..8.
    EightGaussians,
    /// Five arms: r = 1 + 0.3 N, τ = 0.1 N, angle φ = 2πk/5 + 0.25 e^r with k the arm
    /// (equal counts), x = 2 (r cos φ − τ sin φ, r sin φ + τ cos φ), rows shuffled.
    Pinwheel,
    /// scikit-learn's two circles (factor 0.5, noise 0.08), times 3: ⌊n/2⌋ points evenly on
    /// the circle of radius 3, the rest on radius 1.5, plus N(0, 0.24²) per coordinate.
    Circles,
    /// scikit-learn's two moons (noise 0.1), times 2, shifted by (−1, −0.2): the upper moon
    /// (cos s, sin s) and the lower (1 − cos s, 0.5 − sin s), s evenly on [0, π], plus
    /// N(0, 0.1²), then x ↦ 2x + (−1, −0.2).
    Moons,
    /// Two interleaved spirals: s = 3π √U, p = (−s cos s + U/2, s sin s + U/2), half the points
    /// p/3 and half −p/3, plus N(0, 0.1²).
    TwoSpirals,
    /// A checkerboard on [−4, 4)²: uniform on the 2×2 squares whose indices ⌊x/2⌋ + ⌊y/2⌋
    /// are even (x₁ = 4U − 2, x₂ = U − 2·Bernoulli + (⌊x₁⌋ mod 2), then times 2).
    Checkerboard,
    /// Four concentric rings of radii 3, 2.25, 1.5, 0.75 (points evenly spaced on each, about
    /// n/4 per ring), rows shuffled, plus N(0, 0.08²).
    Rings,
}

impl Toy {
    /// Every toy set, in FFJORD's order.
    pub const ALL: [Toy; 8] = [
        Toy::SwissRoll,
        Toy::EightGaussians,
        Toy::Pinwheel,
        Toy::Circles,
        Toy::Moons,
        Toy::TwoSpirals,
        Toy::Checkerboard,
        Toy::Rings,
    ];

    /// FFJORD's name (`swissroll`, `8gaussians`, `pinwheel`, `circles`, `moons`, `2spirals`,
    /// `checkerboard`, `rings`).
    pub fn name(self) -> &'static str {
        match self {
            Toy::SwissRoll => "swissroll",
            Toy::EightGaussians => "8gaussians",
            Toy::Pinwheel => "pinwheel",
            Toy::Circles => "circles",
            Toy::Moons => "moons",
            Toy::TwoSpirals => "2spirals",
            Toy::Checkerboard => "checkerboard",
            Toy::Rings => "rings",
        }
    }

    /// Draws `n` points (`n × 2`, sample-major) from `rng`.
    ///
    /// ```
    /// use odeflow::train::Toy;
    /// use rand::SeedableRng;
    ///
    /// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    /// let x: Vec<f64> = Toy::Checkerboard.sample(1000, &mut rng);
    /// assert_eq!(x.len(), 2000);
    /// // Every point lies on a "black" square of the board.
    /// assert!(x.chunks(2).all(|p| ((p[0] / 2.0).floor() + (p[1] / 2.0).floor()) as i64 % 2 == 0));
    /// ```
    pub fn sample<T: Real, R: Rng + ?Sized>(self, n: usize, rng: &mut R) -> Vec<T> {
        let mut out = Vec::with_capacity(2 * n);
        self.sample_into(n, rng, &mut out);
        out
    }

    /// [`Toy::sample`] into `out` (cleared first; reuses its allocation).
    pub fn sample_into<T: Real, R: Rng + ?Sized>(self, n: usize, rng: &mut R, out: &mut Vec<T>) {
        let mut pts: Vec<[f64; 2]> = Vec::with_capacity(n);
        let nrm = |rng: &mut R| -> f64 { StandardNormal.sample(rng) };
        let tau = std::f64::consts::TAU;
        let pi = std::f64::consts::PI;
        match self {
            Toy::SwissRoll => {
                for _ in 0..n {
                    let s = 1.5 * pi * (1.0 + 2.0 * rng.random::<f64>());
                    let _height = 21.0 * rng.random::<f64>(); // the dropped y coordinate
                    let (nx, _ny, nz) = (nrm(rng), nrm(rng), nrm(rng));
                    pts.push([(s * s.cos() + nx) / 5.0, (s * s.sin() + nz) / 5.0]);
                }
            }
            Toy::EightGaussians => {
                let h = std::f64::consts::FRAC_1_SQRT_2;
                let centres = [
                    (1.0, 0.0),
                    (-1.0, 0.0),
                    (0.0, 1.0),
                    (0.0, -1.0),
                    (h, h),
                    (h, -h),
                    (-h, h),
                    (-h, -h),
                ];
                for _ in 0..n {
                    let (a, b) = (nrm(rng) * 0.5, nrm(rng) * 0.5);
                    let (cx, cy) = centres[rng.random_range(0..8usize)];
                    pts.push([(a + 4.0 * cx) / 1.414, (b + 4.0 * cy) / 1.414]);
                }
            }
            Toy::Pinwheel => {
                for i in 0..n {
                    let r = nrm(rng) * 0.3 + 1.0;
                    let tan = nrm(rng) * 0.1;
                    let angle = tau * (i % 5) as f64 / 5.0 + 0.25 * r.exp();
                    let (s, c) = angle.sin_cos();
                    pts.push([2.0 * (r * c - tan * s), 2.0 * (r * s + tan * c)]);
                }
                pts.shuffle(rng);
            }
            Toy::Circles => {
                let n_out = n / 2;
                let n_in = n - n_out;
                for (m, r) in [(n_out, 1.0), (n_in, 0.5)] {
                    for k in 0..m {
                        let (s, c) = (tau * k as f64 / m as f64).sin_cos();
                        pts.push([r * c, r * s]);
                    }
                }
                pts.shuffle(rng);
                for p in &mut pts {
                    p[0] = 3.0 * (p[0] + 0.08 * nrm(rng));
                    p[1] = 3.0 * (p[1] + 0.08 * nrm(rng));
                }
            }
            Toy::Moons => {
                let n_out = n / 2;
                let n_in = n - n_out;
                let lin =
                    |k: usize, m: usize| if m > 1 { pi * k as f64 / (m - 1) as f64 } else { 0.0 };
                for k in 0..n_out {
                    let (s, c) = lin(k, n_out).sin_cos();
                    pts.push([c, s]);
                }
                for k in 0..n_in {
                    let (s, c) = lin(k, n_in).sin_cos();
                    pts.push([1.0 - c, 1.0 - s - 0.5]);
                }
                pts.shuffle(rng);
                for p in &mut pts {
                    p[0] = 2.0 * (p[0] + 0.1 * nrm(rng)) - 1.0;
                    p[1] = 2.0 * (p[1] + 0.1 * nrm(rng)) - 0.2;
                }
            }
            Toy::TwoSpirals => {
                let half = n / 2;
                let mut arm = Vec::with_capacity(half);
                for _ in 0..half {
                    let s = rng.random::<f64>().sqrt() * 540.0 * tau / 360.0;
                    let x = -s.cos() * s + rng.random::<f64>() * 0.5;
                    let y = s.sin() * s + rng.random::<f64>() * 0.5;
                    arm.push([x, y]);
                }
                pts.extend(arm.iter().map(|p| [p[0] / 3.0, p[1] / 3.0]));
                pts.extend(arm.iter().map(|p| [-p[0] / 3.0, -p[1] / 3.0]));
                // FFJORD returns 2⌊n/2⌋ points; an odd n gets one more from the first arm.
                if pts.len() < n {
                    let s = rng.random::<f64>().sqrt() * 540.0 * tau / 360.0;
                    let x = -s.cos() * s + rng.random::<f64>() * 0.5;
                    let y = s.sin() * s + rng.random::<f64>() * 0.5;
                    pts.push([x / 3.0, y / 3.0]);
                }
                for p in &mut pts {
                    p[0] += 0.1 * nrm(rng);
                    p[1] += 0.1 * nrm(rng);
                }
            }
            Toy::Checkerboard => {
                for _ in 0..n {
                    let x1 = rng.random::<f64>() * 4.0 - 2.0;
                    let x2 = rng.random::<f64>() - 2.0 * f64::from(u8::from(rng.random::<bool>()));
                    let x2 = x2 + x1.floor().rem_euclid(2.0);
                    pts.push([2.0 * x1, 2.0 * x2]);
                }
            }
            Toy::Rings => {
                let q = n / 4;
                let counts = [q, q, q, n - 3 * q];
                for (ring, &m) in counts.iter().enumerate() {
                    let r = 3.0 * (1.0 - 0.25 * ring as f64);
                    for k in 0..m {
                        let (s, c) = (tau * k as f64 / m as f64).sin_cos();
                        pts.push([r * c, r * s]);
                    }
                }
                pts.shuffle(rng);
                for p in &mut pts {
                    p[0] += 0.08 * nrm(rng);
                    p[1] += 0.08 * nrm(rng);
                }
            }
        }
        out.clear();
        out.extend(pts.iter().flat_map(|p| [T::from_f64c(p[0]), T::from_f64c(p[1])]));
    }
}

impl std::fmt::Display for Toy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Toy {
    type Err = Error;
    /// Parses FFJORD's names (see [`Toy::name`]).
    fn from_str(s: &str) -> Result<Self, Error> {
        Toy::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| Error::UnknownDataset { name: s.to_string() })
    }
}

/// A finite data set of `len()` points in `dim` dimensions, one flat sample-major buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset<T> {
    dim: usize,
    data: Vec<T>,
}

impl<T: Real> Dataset<T> {
    /// A data set from a flat sample-major buffer of at least one point; every value must
    /// be finite.
    pub fn new(dim: usize, data: Vec<T>) -> Result<Self, Error> {
        if crate::error::batch_size(data.len(), dim)? == 0 {
            return Err(Error::InvalidConfig { name: "data", value: 0.0, expected: "≥ 1 point" });
        }
        crate::error::check_finite(&data, dim)?;
        Ok(Dataset { dim, data })
    }

    /// `n` points of a toy set drawn with the seed `seed` (ChaCha8). `n = 0` gives an empty
    /// set: a test set that counts as none, which the trainers refuse as training data.
    pub fn toy(toy: Toy, n: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Dataset { dim: 2, data: toy.sample(n, &mut rng) }
    }

    /// Reads a `.npy` file holding an `n × dim` float array.
    pub fn from_npy(path: impl AsRef<Path>, dim: usize) -> Result<Self, Error> {
        let (_, data) = crate::io::read_npy_matrix(path, dim)?;
        Self::new(dim, data.into_iter().map(T::from_f64c).collect())
    }

    /// Reads a CSV file of points ([`crate::io::read_csv`]: one point per line, an optional
    /// header, `#` comments; every row the same number of columns, every value finite —
    /// otherwise the error names the line and column).
    pub fn from_csv(path: impl AsRef<Path>) -> Result<Self, Error> {
        let points = crate::io::read_csv(path, None)?;
        Self::new(points.cols, points.data.into_iter().map(T::from_f64c).collect())
    }

    /// The dimension of a point.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The number of points.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }

    /// Whether there are no points.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The flat buffer (`len() × dim()`).
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }

    /// Point `i`, or `None` if `i ≥ len()` (as [`slice::get`]).
    pub fn row(&self, i: usize) -> Option<&[T]> {
        (i < self.len()).then(|| self.row_in(i))
    }

    /// Point `i < len()`.
    fn row_in(&self, i: usize) -> &[T] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Splits into (train, test) with `round(test_fraction · len)` test points chosen by a
    /// seeded shuffle; both keep the original order of their points. An error if
    /// `test_fraction` is outside `[0, 1)` or leaves no training point. The test set may be
    /// empty (a small fraction of a small set): it then counts as none in the trainers.
    pub fn split(&self, test_fraction: f64, seed: u64) -> Result<(Self, Self), Error> {
        if !(0.0..1.0).contains(&test_fraction) {
            return Err(Error::InvalidConfig {
                name: "test_fraction",
                value: test_fraction,
                expected: "in [0, 1)",
            });
        }
        let n = self.len();
        let n_test = (test_fraction * n as f64).round() as usize;
        if n_test >= n {
            // Nothing left to train on (a fraction near 1 of a small set).
            return Err(Error::InvalidConfig {
                name: "test_fraction",
                value: test_fraction,
                expected: "a fraction that leaves at least one training point",
            });
        }
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let mut is_test = vec![false; n];
        idx[..n_test].iter().for_each(|&i| is_test[i] = true);
        let (mut tr, mut te) = (Vec::new(), Vec::new());
        for (i, &test) in is_test.iter().enumerate() {
            if test { &mut te } else { &mut tr }.extend_from_slice(self.row_in(i));
        }
        Ok((Dataset { dim: self.dim, data: tr }, Dataset { dim: self.dim, data: te }))
    }
}

/// Where training batches come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource<T> {
    /// A fresh batch of the toy distribution every iteration (as FFJORD's `train_toy.py`),
    /// drawn from the training random generator.
    Toy(Toy),
    /// Shuffled epochs over a finite data set: the points are visited in a random order
    /// that is a function of `(seed, epoch)` only, and iteration k takes positions
    /// [k·B, (k + 1)·B) of the endless sequence of epochs, so batch k needs no other state.
    Dataset {
        /// The training points.
        data: Dataset<T>,
        /// Seed of the epoch permutations.
        seed: u64,
    },
}

impl<T: Real> DataSource<T> {
    /// The dimension of a point.
    pub fn dim(&self) -> usize {
        match self {
            DataSource::Toy(_) => 2,
            DataSource::Dataset { data, .. } => data.dim(),
        }
    }

    /// The trainers' check: a training set of at least one point (a toy set always has).
    pub(crate) fn check_not_empty(&self) -> Result<(), Error> {
        match self {
            DataSource::Dataset { data, .. } if data.is_empty() => Err(Error::InvalidConfig {
                name: "data",
                value: 0.0,
                expected: "a training set of ≥ 1 point",
            }),
            _ => Ok(()),
        }
    }

    /// Writes batch number `iteration` (0-based) of `batch` points into `out` (resized).
    /// Toy sets draw from `rng`; finite data sets do not touch it.
    ///
    /// Errors ([`Error::InvalidConfig`]): an empty data set (nothing to draw from), a batch
    /// whose positions `iteration · batch + k` pass `u64::MAX`, or `batch · dim` values too
    /// many to allocate; `out` is then unchanged.
    ///
    /// ```
    /// use odeflow::train::{DataSource, Dataset};
    /// use rand::SeedableRng;
    ///
    /// let data = Dataset::new(1, vec![0.0f64, 1.0, 2.0, 3.0, 4.0])?;
    /// let src = DataSource::Dataset { data, seed: 3 };
    /// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    /// let (mut a, mut b) = (Vec::new(), Vec::new());
    /// src.batch(0, 5, &mut rng, &mut a)?;
    /// a.sort_by(f64::total_cmp);
    /// assert_eq!(a, [0.0, 1.0, 2.0, 3.0, 4.0]); // one epoch visits every point once
    /// src.batch(1, 5, &mut rng, &mut b)?; // the next epoch, in another order
    /// b.sort_by(f64::total_cmp);
    /// assert_eq!(a, b);
    /// # Ok::<(), odeflow::Error>(())
    /// ```
    pub fn batch<R: Rng + ?Sized>(
        &self,
        iteration: u64,
        batch: usize,
        rng: &mut R,
        out: &mut Vec<T>,
    ) -> Result<(), Error> {
        let bad = |name, value: f64, expected| Err(Error::InvalidConfig { name, value, expected });
        let Some(len) = batch.checked_mul(self.dim()) else {
            return bad("batch", batch as f64, "batch · dim values that fit in memory");
        };
        if out.try_reserve_exact(len.saturating_sub(out.len())).is_err() {
            return bad("batch", batch as f64, "batch · dim values that fit in memory");
        }
        match self {
            DataSource::Toy(toy) => toy.sample_into(batch, rng, out),
            DataSource::Dataset { data, seed } => {
                if data.is_empty() {
                    return bad("data", 0.0, "a training set of ≥ 1 point to draw batches from");
                }
                let n = data.len() as u64;
                let range = u64::try_from(batch).ok().and_then(|b| {
                    let start = iteration.checked_mul(b)?;
                    Some(start..start.checked_add(b)?)
                });
                let Some(range) = range else {
                    return bad(
                        "iteration",
                        iteration as f64,
                        "an iteration whose batch positions iteration · batch + k fit in u64",
                    );
                };
                out.clear();
                let mut epoch = u64::MAX;
                let mut perm: Vec<usize> = Vec::new();
                for pos in range {
                    let e = pos / n;
                    if e != epoch {
                        epoch = e;
                        perm = epoch_permutation(data.len(), *seed, e);
                    }
                    out.extend_from_slice(data.row_in(perm[(pos % n) as usize]));
                }
            }
        }
        Ok(())
    }
}

/// The visiting order of epoch `epoch`: a shuffle of 0..n seeded by (seed, epoch).
fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut p: Vec<usize> = (0..n).collect();
    p.shuffle(&mut rng);
    p
}
