//! Figures with plotters: densities on a grid, point clouds, trajectories.
//!
//! Every function writes PNG or SVG by the file's extension, through a temporary sibling
//! renamed into place (an existing figure is never left half-written).

use std::path::{Path, PathBuf};

mod model;

pub use model::ModelFigures;

use plotters::coord::Shift;
use plotters::prelude::*;

/// What can go wrong drawing a figure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// The extension is neither `.png` nor `.svg`.
    #[error("{path}: unsupported figure format (use .png or .svg)")]
    UnsupportedFormat {
        /// The requested file.
        path: PathBuf,
    },
    /// The backend failed to draw or to write the file.
    #[error("{path}: {message}")]
    Backend {
        /// The requested file.
        path: PathBuf,
        /// The backend's message.
        message: String,
    },
}

/// Values of a scalar function on a regular 2-D grid, e.g. a density.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid2 {
    /// Range of the first coordinate `[x_min, x_max]`.
    pub x_range: (f64, f64),
    /// Range of the second coordinate `[y_min, y_max]`.
    pub y_range: (f64, f64),
    /// Points along x (cell centres).
    pub nx: usize,
    /// Points along y (cell centres).
    pub ny: usize,
    /// `values[iy * nx + ix]` at (x_ix, y_iy).
    pub values: Vec<f64>,
}

impl Grid2 {
    /// The `nx · ny` cell centres of the grid, sample-major (x, y) pairs in the order of
    /// [`Grid2::values`]: x_i = x_min + (i + ½)·Δx.
    pub fn centres(x_range: (f64, f64), y_range: (f64, f64), nx: usize, ny: usize) -> Vec<f64> {
        let dx = (x_range.1 - x_range.0) / nx as f64;
        let dy = (y_range.1 - y_range.0) / ny as f64;
        let mut pts = Vec::with_capacity(2 * nx * ny);
        for iy in 0..ny {
            for ix in 0..nx {
                pts.push(x_range.0 + (ix as f64 + 0.5) * dx);
                pts.push(y_range.0 + (iy as f64 + 0.5) * dy);
            }
        }
        pts
    }

    /// Area of one cell, Δx·Δy; `Σ values · cell_area()` is the midpoint-rule integral.
    pub fn cell_area(&self) -> f64 {
        (self.x_range.1 - self.x_range.0) / self.nx as f64 * (self.y_range.1 - self.y_range.0)
            / self.ny as f64
    }
}

fn backend_err(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |message| PlotError::Backend { path: path.to_path_buf(), message }
}

/// A figure that can draw itself on any plotters backend.
pub trait Figure {
    /// Draws the figure on `area` (the whole canvas).
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Renders `figure` on a `width × height` canvas and writes it to `path` (PNG or SVG by
/// extension), atomically.
pub fn render(
    path: impl AsRef<Path>,
    size: (u32, u32),
    figure: &impl Figure,
) -> Result<(), PlotError> {
    let path = path.as_ref();
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = ext.ok_or_else(|| PlotError::UnsupportedFormat { path: path.to_path_buf() })?;
    let tmp = dir.join(format!(".{name}.tmp{}.{ext}", std::process::id()));
    let drawn = match ext.as_str() {
        "png" => {
            let root = BitMapBackend::new(&tmp, size).into_drawing_area();
            figure.draw(&root).and_then(|()| root.present().map_err(|e| e.to_string()))
        }
        "svg" => {
            let root = SVGBackend::new(&tmp, size).into_drawing_area();
            figure.draw(&root).and_then(|()| root.present().map_err(|e| e.to_string()))
        }
        _ => return Err(PlotError::UnsupportedFormat { path: path.to_path_buf() }),
    };
    let result = drawn.and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(backend_err(path))
}

/// Splits `area` into `n` panels side by side.
fn panels<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    n: usize,
) -> Vec<DrawingArea<DB, Shift>> {
    area.split_evenly((1, n.max(1)))
}

/// Heat maps of densities (one panel each, with a title), coloured by viridis on a shared
/// or per-panel scale.
#[derive(Debug, Clone)]
pub struct DensityPanels<'a> {
    /// The panels: title and grid.
    pub panels: Vec<(String, &'a Grid2)>,
    /// One colour scale for all panels (max over all) instead of one per panel.
    pub shared_scale: bool,
}

impl Figure for DensityPanels<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        area.fill(&WHITE).map_err(|e| e.to_string())?;
        let global_max = self
            .panels
            .iter()
            .flat_map(|(_, g)| g.values.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max);
        for (panel, (title, grid)) in panels(area, self.panels.len()).iter().zip(&self.panels) {
            let vmax = if self.shared_scale {
                global_max
            } else {
                grid.values.iter().copied().filter(|v| v.is_finite()).fold(0.0_f64, f64::max)
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(title, ("sans-serif", 18))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(36)
                .build_cartesian_2d(grid.x_range.0..grid.x_range.1, grid.y_range.0..grid.y_range.1)
                .map_err(|e| e.to_string())?;
            chart.configure_mesh().disable_mesh().draw().map_err(|e| e.to_string())?;
            let dx = (grid.x_range.1 - grid.x_range.0) / grid.nx as f64;
            let dy = (grid.y_range.1 - grid.y_range.0) / grid.ny as f64;
            let cells = (0..grid.ny).flat_map(|iy| (0..grid.nx).map(move |ix| (ix, iy)));
            chart
                .draw_series(cells.map(|(ix, iy)| {
                    let v = grid.values[iy * grid.nx + ix];
                    let u =
                        if vmax > 0.0 && v.is_finite() { (v / vmax).clamp(0.0, 1.0) } else { 0.0 };
                    let x0 = grid.x_range.0 + ix as f64 * dx;
                    let y0 = grid.y_range.0 + iy as f64 * dy;
                    Rectangle::new(
                        [(x0, y0), (x0 + dx, y0 + dy)],
                        ViridisRGB::get_color(u).filled(),
                    )
                }))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Point clouds, one panel each, with a title and fixed axis ranges.
#[derive(Debug, Clone)]
pub struct ScatterPanels<'a> {
    /// The panels: title and 2-D points (sample-major x, y pairs).
    pub panels: Vec<(String, &'a [f64])>,
    /// Axis range, the same on both axes.
    pub range: (f64, f64),
}

impl Figure for ScatterPanels<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        area.fill(&WHITE).map_err(|e| e.to_string())?;
        for (panel, (title, pts)) in panels(area, self.panels.len()).iter().zip(&self.panels) {
            let mut chart = ChartBuilder::on(panel)
                .caption(title, ("sans-serif", 18))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(36)
                .build_cartesian_2d(self.range.0..self.range.1, self.range.0..self.range.1)
                .map_err(|e| e.to_string())?;
            chart.configure_mesh().disable_mesh().draw().map_err(|e| e.to_string())?;
            chart
                .draw_series(
                    pts.chunks_exact(2)
                        .map(|p| Circle::new((p[0], p[1]), 2, BLUE.mix(0.4).filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Paths of points through time, drawn as lines from start (light) to end (dark), with
/// the end points marked.
#[derive(Debug, Clone)]
pub struct Trajectories<'a> {
    /// Title of the figure.
    pub title: String,
    /// Sample-major states at each time: `states[k]` holds all points (x, y pairs) at the
    /// k-th time; every entry has the same length.
    pub states: &'a [Vec<f64>],
    /// Axis range, the same on both axes.
    pub range: (f64, f64),
}

impl Figure for Trajectories<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        area.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(36)
            .build_cartesian_2d(self.range.0..self.range.1, self.range.0..self.range.1)
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().disable_mesh().draw().map_err(|e| e.to_string())?;
        let n = self.states.first().map_or(0, |s| s.len() / 2);
        for i in 0..n {
            let path: Vec<(f64, f64)> =
                self.states.iter().map(|s| (s[2 * i], s[2 * i + 1])).collect();
            chart
                .draw_series(LineSeries::new(path, BLUE.mix(0.35).stroke_width(1)))
                .map_err(|e| e.to_string())?;
        }
        if let Some(last) = self.states.last() {
            chart
                .draw_series(
                    last.chunks_exact(2).map(|p| Circle::new((p[0], p[1]), 2, RED.filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Training curves: loss and test NLL against iteration, and the forward and backward
/// function evaluations per iteration.
#[derive(Debug, Clone)]
pub struct TrainingCurves<'a> {
    /// (iteration, training loss) of every iteration.
    pub loss: &'a [(f64, f64)],
    /// (iteration, test NLL) where it was evaluated.
    pub test_nll: &'a [(f64, f64)],
    /// (iteration, forward NFE, backward NFE) of every iteration.
    pub nfe: &'a [(f64, f64, f64)],
}

impl Figure for TrainingCurves<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        area.fill(&WHITE).map_err(|e| e.to_string())?;
        let halves = panels(area, 2);
        let last = self.loss.last().map_or(1.0, |p| p.0).max(1.0);
        let finite = |v: &f64| v.is_finite();
        let ys: Vec<f64> = self
            .loss
            .iter()
            .map(|p| p.1)
            .chain(self.test_nll.iter().map(|p| p.1))
            .filter(finite)
            .collect();
        let (lo, hi) =
            ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo < hi {
            (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        } else {
            (lo - 1.0, lo + 1.0)
        };
        let mut chart = ChartBuilder::on(&halves[0])
            .caption("loss and test NLL", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..last, lo..hi)
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc("iteration").draw().map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(
                self.loss.iter().copied().filter(|p| p.1.is_finite()),
                BLUE.mix(0.6),
            ))
            .map_err(|e| e.to_string())?
            .label("training loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
        chart
            .draw_series(LineSeries::new(self.test_nll.iter().copied(), RED.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("test NLL")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        let top = self.nfe.iter().fold(1.0f64, |m, p| m.max(p.1).max(p.2)) * 1.1;
        let mut chart = ChartBuilder::on(&halves[1])
            .caption("function evaluations per iteration", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..last, 0.0..top)
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc("iteration").draw().map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(self.nfe.iter().map(|p| (p.0, p.1)), BLUE))
            .map_err(|e| e.to_string())?
            .label("forward")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
        chart
            .draw_series(LineSeries::new(self.nfe.iter().map(|p| (p.0, p.2)), GREEN))
            .map_err(|e| e.to_string())?
            .label("backward")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GREEN));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Writes an animated GIF of point clouds, one frame per entry (title, points), `delay_ms`
/// between frames, atomically.
pub fn animate_points(
    path: impl AsRef<Path>,
    size: (u32, u32),
    frames: &[(String, &[f64])],
    range: (f64, f64),
    delay_ms: u32,
) -> Result<(), PlotError> {
    let path = path.as_ref();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}.gif", std::process::id()));
    let result = (|| -> Result<(), String> {
        let root = BitMapBackend::gif(&tmp, size, delay_ms)
            .map_err(|e| e.to_string())?
            .into_drawing_area();
        for (title, pts) in frames {
            ScatterPanels { panels: vec![(title.clone(), pts)], range }.draw(&root)?;
            root.present().map_err(|e| e.to_string())?;
        }
        drop(root);
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(backend_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_png_and_svg_and_rejects_other_formats() {
        let dir = std::env::temp_dir().join(format!("odeflow-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pts = Grid2::centres((-2.0, 2.0), (-1.0, 1.0), 20, 10);
        let values: Vec<f64> = pts.chunks(2).map(|p| (-p[0] * p[0] - p[1] * p[1]).exp()).collect();
        let grid = Grid2 { x_range: (-2.0, 2.0), y_range: (-1.0, 1.0), nx: 20, ny: 10, values };
        assert!((grid.cell_area() - 0.04).abs() < 1e-15);
        let fig = DensityPanels {
            panels: vec![("a".into(), &grid), ("b".into(), &grid)],
            shared_scale: true,
        };
        render(dir.join("d.png"), (400, 200), &fig).unwrap();
        render(dir.join("d.svg"), (400, 200), &fig).unwrap();
        let png = std::fs::read(dir.join("d.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(std::fs::read_to_string(dir.join("d.svg")).unwrap().contains("<svg"));
        assert!(matches!(
            render(dir.join("d.jpg"), (10, 10), &fig),
            Err(PlotError::UnsupportedFormat { .. })
        ));
        let pts = [0.0, 0.0, 1.0, -1.0];
        let frames = vec![("a".to_string(), &pts[..]), ("b".to_string(), &pts[..2])];
        animate_points(dir.join("a.gif"), (100, 100), &frames, (-2.0, 2.0), 50).unwrap();
        assert_eq!(&std::fs::read(dir.join("a.gif")).unwrap()[..3], b"GIF");
        // No temporary files are left behind.
        let names: Vec<_> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
