//! The standard figures of a trained 2-D CNF (density beside data, samples, paths,
//! animation) or discrete flow (density beside data, samples).

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::cnf::Cnf;
use crate::field::VectorField;
use crate::flows::FlowModel;
use crate::plot::{
    animate_points, check_range, render, DensityPanels, Grid2, PlotError, ScatterPanels,
    Trajectories, FIGURE_FORMATS,
};
use crate::Error;

/// The largest [`ModelFigures::grid`]: a finer density grid than this shows nothing more on
/// a figure a few hundred pixels wide, and costs a log-density solve per cell.
pub const MAX_GRID: usize = 4096;

/// What to draw for a model.
#[derive(Debug, Clone)]
pub struct ModelFigures<'a> {
    /// Data points to show beside the model (sample-major 2-D), if any.
    pub data: Option<&'a [f64]>,
    /// Axis range on both axes: finite, with `lo < hi`.
    pub range: (f64, f64),
    /// Grid points per axis for the density: 2 to [`MAX_GRID`].
    pub grid: usize,
    /// Number of samples drawn from the model.
    pub samples: usize,
    /// Frames of the animation (and time points of the paths).
    pub frames: usize,
    /// Seed of the samples.
    pub seed: u64,
    /// Image format of the still figures: `"png"` or `"svg"` (the animation is a GIF).
    pub format: &'static str,
}

impl Default for ModelFigures<'_> {
    fn default() -> Self {
        ModelFigures {
            data: None,
            range: (-4.0, 4.0),
            grid: 120,
            samples: 2000,
            frames: 30,
            seed: 0,
            format: "png",
        }
    }
}

impl ModelFigures<'_> {
    /// Checks the settings before any solve: `range` finite with `lo < hi`
    /// ([`PlotError::InvalidRange`]), `grid` from 2 to [`MAX_GRID`] ([`Error::InvalidConfig`]),
    /// `format` `"png"` or `"svg"` ([`PlotError::UnsupportedFormat`], naming the density
    /// figure in `dir`), at least one sample ([`Error::InvalidConfig`]).
    /// [`ModelFigures::write`] and [`ModelFigures::write_flow`] call it.
    pub fn validate(&self, dir: &Path) -> Result<(), Error> {
        if !matches!(self.format, "png" | "svg") {
            let path = dir.join(format!("density.{}", self.format));
            return Err(PlotError::UnsupportedFormat { path, expected: FIGURE_FORMATS }.into());
        }
        check_range("axis range", self.range)?;
        if !(2..=MAX_GRID).contains(&self.grid) {
            return Err(Error::InvalidConfig {
                name: "grid",
                value: self.grid as f64,
                expected: "from 2 to 4096 points per axis",
            });
        }
        if self.samples == 0 {
            return Err(Error::InvalidConfig {
                name: "samples",
                value: 0.0,
                expected: "at least 1 (the samples, their paths and the animation)",
            });
        }
        Ok(())
    }

    /// Draws into `dir` (still figures in [`ModelFigures::format`], PNG shown here):
    /// `density.png` (data, learned density, samples), `trajectories.png`
    /// (paths of samples from the base at t = T to t = 0 and of a grid of points from t = 0
    /// to T) and `flow.gif` (the samples moving from the base to the data). Needs d = 2 and
    /// valid settings ([`ModelFigures::validate`]).
    pub fn write<F: VectorField<f64>>(
        &self,
        cnf: &Cnf<f64, F>,
        dir: &Path,
    ) -> Result<Vec<PathBuf>, Error> {
        self.validate(dir)?;
        if cnf.dim() != 2 {
            return Err(Error::InvalidConfig {
                name: "dim",
                value: cnf.dim() as f64,
                expected: "2 for the figures",
            });
        }
        let (lo, hi) = self.range;
        let n = self.grid;
        let (logp, _) = cnf.log_prob(&Grid2::centres(self.range, self.range, n, n))?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let (samples, _) = cnf.sample(self.samples, &mut rng)?;
        let mut paths = self.density_and_samples(dir, &logp, &samples)?;

        let t_end = cnf.total_time();
        let steps = self.frames.max(2);
        let times_back: Vec<f64> =
            (0..=steps).rev().map(|k| t_end * k as f64 / steps as f64).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(1));
        let z: Vec<f64> = (0..2 * self.samples.min(500))
            .map(|_| rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng))
            .collect();
        let back = cnf.trajectory(t_end, &z, &times_back)?;
        let traj_path = dir.join(format!("trajectories.{}", self.format));
        render(
            &traj_path,
            (560, 560),
            &Trajectories {
                title: "samples: base (t = T) → data (t = 0)".into(),
                states: &back.states,
                range: self.range,
            },
        )?;
        paths.push(traj_path);

        let k = 12;
        let grid_pts: Vec<f64> = Grid2::centres((lo * 0.8, hi * 0.8), (lo * 0.8, hi * 0.8), k, k);
        let times_fwd: Vec<f64> = (0..=steps).map(|k| t_end * k as f64 / steps as f64).collect();
        let fwd = cnf.trajectory(0.0, &grid_pts, &times_fwd)?;
        let grid_path = dir.join(format!("grid_trajectories.{}", self.format));
        render(
            &grid_path,
            (560, 560),
            &Trajectories {
                title: "grid: data (t = 0) → base (t = T)".into(),
                states: &fwd.states,
                range: self.range,
            },
        )?;
        paths.push(grid_path);

        let frames: Vec<(String, &[f64])> = back
            .times
            .iter()
            .zip(&back.states)
            .map(|(t, s)| (format!("t = {t:.3}"), s.as_slice()))
            .collect();
        let gif_path = dir.join("flow.gif");
        animate_points(&gif_path, (480, 480), &frames, self.range, 80)?;
        paths.push(gif_path);
        Ok(paths)
    }

    /// Draws a discrete flow into `dir`: `density.png` and `samples.png` as for a CNF (a
    /// discrete flow has no trajectories, so neither `trajectories.png` nor `flow.gif`).
    /// Needs d = 2 and valid settings ([`ModelFigures::validate`]).
    pub fn write_flow(&self, model: &FlowModel<f64>, dir: &Path) -> Result<Vec<PathBuf>, Error> {
        self.validate(dir)?;
        if model.dim() != 2 {
            return Err(Error::InvalidConfig {
                name: "dim",
                value: model.dim() as f64,
                expected: "2 for the figures",
            });
        }
        let n = self.grid;
        let logp = model.log_prob(&Grid2::centres(self.range, self.range, n, n))?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let samples = model.sample(self.samples, &mut rng)?;
        self.density_and_samples(dir, &logp, &samples)
    }

    /// `samples.png` (beside the data, if any) and `density.png` from the log-densities on
    /// the `grid × grid` centres and the samples.
    fn density_and_samples(
        &self,
        dir: &Path,
        logp: &[f64],
        samples: &[f64],
    ) -> Result<Vec<PathBuf>, Error> {
        let n = self.grid;
        let density = Grid2 {
            x_range: self.range,
            y_range: self.range,
            nx: n,
            ny: n,
            values: logp.iter().map(|l| l.exp()).collect(),
        };
        let mut paths = Vec::new();
        let density_path = dir.join(format!("density.{}", self.format));
        match self.data {
            Some(data) => {
                let scatter = ScatterPanels {
                    panels: vec![("data".into(), data), ("samples".into(), samples)],
                    range: self.range,
                };
                render(dir.join(format!("samples.{}", self.format)), (1000, 500), &scatter)?;
                paths.push(dir.join(format!("samples.{}", self.format)));
            }
            None => {
                let scatter =
                    ScatterPanels { panels: vec![("samples".into(), samples)], range: self.range };
                render(dir.join(format!("samples.{}", self.format)), (500, 500), &scatter)?;
                paths.push(dir.join(format!("samples.{}", self.format)));
            }
        }
        let mass = density.values.iter().sum::<f64>() * density.cell_area();
        let title = format!("learned density (mass on the plot {mass:.3})");
        render(
            &density_path,
            (560, 560),
            &DensityPanels { panels: vec![(title, &density)], shared_scale: false },
        )?;
        paths.push(density_path);
        Ok(paths)
    }
}
