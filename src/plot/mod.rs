//! Figures with plotters: densities on a grid, point clouds, trajectories.
//!
//! Every function writes PNG or SVG by the file's extension ([`animate_points`] GIF, to a
//! path ending in `.gif`; another extension is a [`PlotError::UnsupportedFormat`] before
//! anything is drawn), through a temporary file renamed into place (an existing figure is
//! never left half-written). The path is resolved
//! as [`crate::io::write_atomically`] resolves it: through a symbolic link (or a chain of
//! them) the file at its end is replaced and the links stay links; a device or FIFO is
//! written in place; a directory is an error naming it.
//!
//! Bad input is refused before anything is drawn or written: a canvas side outside
//! 1..=[`MAX_CANVAS_SIDE`], an axis range given by the caller that is not finite with
//! `lo < hi` ([`PlotError::InvalidRange`]), a density grid with fewer than two cells per side
//! or the wrong number of values. Ranges the figures work out from data (the training curves)
//! skip non-finite values and always come out finite with positive width, and non-finite
//! points are left out of every figure: plotters loops forever on an infinite axis range and
//! panics on a NaN one.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::io::{
    create_temp, folder_of, replace_via, resolve_for_write, write_atomically, NpyError, WriteTarget,
};

mod model;

pub use model::{ModelFigures, MAX_GRID};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The largest width or height of a canvas, in pixels, that [`render`] and
/// [`animate_points`] accept (a bitmap canvas holds 3 bytes per pixel in memory).
pub const MAX_CANVAS_SIDE: u32 = 16_384;

/// What can go wrong drawing a figure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// The path's extension is not one the function writes: `.png` or `.svg` for a figure,
    /// `.gif` for an animation (compared ignoring case).
    #[error("{path}: unsupported figure format ({expected})")]
    UnsupportedFormat {
        /// The requested file.
        path: PathBuf,
        /// What the function writes, e.g. `"use .png or .svg"`.
        expected: &'static str,
    },
    /// The figure file, or its temporary file, could not be created, written or renamed
    /// into place (e.g. the folder is missing or not writable, the disk is full, or the path
    /// is a directory, [`std::io::ErrorKind::IsADirectory`]). Where the failure was at a
    /// path other than the figure's or its folder's (a link on the way, the folder of the file
    /// a link points to), the message names that path too.
    #[error("cannot write figure {path}: {source}")]
    Write {
        /// The requested file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The backend failed to draw the figure.
    #[error("cannot draw figure {path}: {message}")]
    Backend {
        /// The requested file.
        path: PathBuf,
        /// The backend's message.
        message: String,
    },
    /// An axis range given to a figure is not finite or has no positive width (`lo < hi`).
    #[error("{what} [{lo}, {hi}] is not a finite range of positive width")]
    InvalidRange {
        /// Which range, e.g. `"axis range"`.
        what: &'static str,
        /// Its lower end.
        lo: f64,
        /// Its upper end.
        hi: f64,
    },
    /// A density grid has fewer than two cells along a side.
    #[error("a density grid needs at least 2 cells per side, not {nx} × {ny}")]
    GridTooSmall {
        /// Cells along x.
        nx: usize,
        /// Cells along y.
        ny: usize,
    },
    /// A density grid's values do not fill it (one per cell).
    #[error("a {nx} × {ny} density grid has {len} values instead of {expected}")]
    GridValues {
        /// Cells along x.
        nx: usize,
        /// Cells along y.
        ny: usize,
        /// Values given.
        len: usize,
        /// Values needed, `nx · ny`.
        expected: usize,
    },
    /// The states of a trajectory figure do not all hold the same number of coordinates.
    #[error("trajectory state {index} has {len} coordinates but the first has {expected}")]
    StateLength {
        /// Index of the offending state (time).
        index: usize,
        /// Its number of coordinates.
        len: usize,
        /// The first state's number of coordinates.
        expected: usize,
    },
    /// A canvas side is zero or larger than [`MAX_CANVAS_SIDE`].
    #[error("a canvas of {width} × {height} pixels: each side must be 1 to {MAX_CANVAS_SIDE}")]
    CanvasSize {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
    /// An animation was asked for without any frame.
    #[error("{path}: an animation needs at least one frame")]
    NoFrames {
        /// The requested file.
        path: PathBuf,
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

    /// Checks that the grid can be drawn: both ranges finite with positive width, at least
    /// two cells per side, and one value per cell.
    pub fn validate(&self) -> Result<(), PlotError> {
        check_range("density grid x range", self.x_range)?;
        check_range("density grid y range", self.y_range)?;
        let (nx, ny) = (self.nx, self.ny);
        if nx < 2 || ny < 2 {
            return Err(PlotError::GridTooSmall { nx, ny });
        }
        match nx.checked_mul(ny) {
            Some(expected) if expected == self.values.len() => Ok(()),
            expected => Err(PlotError::GridValues {
                nx,
                ny,
                len: self.values.len(),
                expected: expected.unwrap_or(usize::MAX),
            }),
        }
    }
}

/// Checks that an axis range given by a caller is finite, with `lo < hi` and a finite width
/// (plotters loops forever on an infinite range and panics on a NaN one).
pub(crate) fn check_range(what: &'static str, (lo, hi): (f64, f64)) -> Result<(), PlotError> {
    if lo.is_finite() && hi.is_finite() && lo < hi && (hi - lo).is_finite() {
        Ok(())
    } else {
        Err(PlotError::InvalidRange { what, lo, hi })
    }
}

/// Checks a canvas size: each side 1 to [`MAX_CANVAS_SIDE`] pixels.
fn check_canvas((width, height): (u32, u32)) -> Result<(), PlotError> {
    if (1..=MAX_CANVAS_SIDE).contains(&width) && (1..=MAX_CANVAS_SIDE).contains(&height) {
        Ok(())
    } else {
        Err(PlotError::CanvasSize { width, height })
    }
}

/// Largest magnitude of a range worked out from data. Finite values beyond it are clamped
/// to it, which keeps the width of the range (and its margins) finite; such points lie far
/// outside the chart anyway.
const AXIS_LIMIT: f64 = 1e300;

/// An axis range around the finite values of `values`, widened on both sides by `margin`
/// times its width; `None` when no value is finite. The result is always finite with
/// `lo < hi`: values that are all equal get ±5 % of their magnitude (±1 around zero).
fn data_range(values: impl IntoIterator<Item = f64>, margin: f64) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .map(|v| v.clamp(-AXIS_LIMIT, AXIS_LIMIT))
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((v.min(lo), v.max(hi))),
        })?;
    if lo < hi {
        let pad = margin.clamp(0.0, 1.0) * (hi - lo);
        return Some((lo - pad, hi + pad));
    }
    let half = 0.05 * lo.abs();
    Some(if lo - half < lo + half { (lo - half, lo + half) } else { (lo - 1.0, lo + 1.0) })
}

/// The error of a drawing call that failed. plotters' bitmap backend reports an I/O failure
/// only as the `Debug` text of its error (`… ImageError(IoError(Os { code: 28, … }))`), and
/// its error type is not re-exported, so an OS error code in that text is turned back into
/// the operating system's own message ([`PlotError::Write`]).
fn backend_error(path: &Path, message: String) -> PlotError {
    const OS: &str = "Os { code: ";
    let code = message.find(OS).and_then(|at| {
        let rest = &message[at + OS.len()..];
        let end = rest.find(|c: char| !c.is_ascii_digit() && c != '-')?;
        rest[..end].parse::<i32>().ok()
    });
    match code {
        Some(code) => PlotError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(code),
        },
        None => PlotError::Backend { path: path.to_path_buf(), message },
    }
}

fn write_err(path: &Path) -> impl Fn(std::io::Error) -> PlotError + '_ {
    move |source| PlotError::Write { path: path.to_path_buf(), source }
}

/// The [`PlotError::Write`] for the figure `path` of an error of resolving or writing it.
/// The operating system's error is kept as it is where the error was about `path` itself or
/// its folder; one about another path (a link in the chain, the folder of the file at its
/// end) is told with that path, so the message says where the write failed.
fn resolve_err(path: &Path) -> impl Fn(NpyError) -> PlotError + '_ {
    move |e| {
        let source = match e {
            NpyError::Io { path: p, source, .. } if p == path || p == folder_of(path) => source,
            NpyError::Io { ref source, .. } => std::io::Error::new(source.kind(), e.to_string()),
            other => std::io::Error::other(other.to_string()),
        };
        PlotError::Write { path: path.to_path_buf(), source }
    }
}

/// Writes the figure `path` through `draw`, which writes the image to the path it is given:
/// a new, empty temporary file whose name ends in `.{ext}` (plotters picks the image format
/// by the extension). Where `path` goes is decided as [`crate::io::write_atomically`]
/// decides it:
///
/// - a regular file, or nothing yet, at the end of the chain of symbolic links from `path`
///   (`path` itself where it is no link): the temporary file is made in that file's folder,
///   synced, given the replaced file's permissions and renamed onto it; the links stay
///   links, and a dangling link gets its target created;
/// - a device, FIFO or socket (or a `/proc` descriptor link): the figure is drawn into a
///   temporary file in [`std::env::temp_dir`] and its bytes are written to `path` in place;
/// - a directory: an error ([`std::io::ErrorKind::IsADirectory`]) naming `path`.
///
/// Every error is a [`PlotError::Write`] naming `path` (or `draw`'s own error); the
/// temporary file is removed whatever happens.
fn write_figure(
    path: &Path,
    ext: &str,
    draw: impl FnOnce(&Path) -> Result<(), PlotError>,
) -> Result<(), PlotError> {
    let suffix = format!("tmp.{ext}");
    match resolve_for_write(path).map_err(resolve_err(path))? {
        WriteTarget::File(target) => replace_via(
            &target,
            &suffix,
            |tmp, file| {
                // The backend opens the temporary file again by its path.
                drop(file);
                draw(tmp)
            },
            resolve_err(path),
        ),
        WriteTarget::Special => {
            let name = path.file_name().unwrap_or(OsStr::new("figure"));
            let (tmp, file) =
                create_temp(&std::env::temp_dir(), name, &suffix).map_err(resolve_err(path))?;
            drop(file);
            let result = draw(&tmp).and_then(|()| {
                let mut image = std::fs::File::open(&tmp).map_err(write_err(path))?;
                write_atomically(path, |w| std::io::copy(&mut image, w).map(drop))
                    .map_err(resolve_err(path))
            });
            let _ = std::fs::remove_file(&tmp);
            result
        }
    }
}

/// What [`render`] writes, for [`PlotError::UnsupportedFormat`].
pub(crate) const FIGURE_FORMATS: &str = "use .png or .svg";

/// A figure that can draw itself on any plotters backend.
pub trait Figure {
    /// Checks the figure's inputs (ranges, grid shapes) before anything is drawn or written;
    /// [`render`] calls it first. The default accepts everything.
    fn validate(&self) -> Result<(), PlotError> {
        Ok(())
    }

    /// Draws the figure on `area` (the whole canvas).
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Renders `figure` on a `width × height` canvas and writes it to `path` (PNG or SVG by
/// extension), atomically. The figure is validated ([`Figure::validate`]) and the size
/// checked before any file is created; a file that cannot be written is reported with its
/// path and the operating system's message ([`PlotError::Write`]).
///
/// Through a symbolic link (or a chain of them) the file at its end gets the figure, by a
/// temporary file in that file's folder renamed onto it, and the links stay links; a
/// dangling link gets its target created. A device or FIFO is written in place. A directory
/// is refused ([`PlotError::Write`] with [`std::io::ErrorKind::IsADirectory`]).
pub fn render(
    path: impl AsRef<Path>,
    size: (u32, u32),
    figure: &impl Figure,
) -> Result<(), PlotError> {
    let path = path.as_ref();
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let svg = match ext.as_deref() {
        Some("png") => false,
        Some("svg") => true,
        _ => {
            return Err(PlotError::UnsupportedFormat {
                path: path.to_path_buf(),
                expected: FIGURE_FORMATS,
            })
        }
    };
    check_canvas(size)?;
    figure.validate()?;
    if svg {
        write_figure(path, "svg", |tmp| write_svg(path, tmp, size, figure))
    } else {
        write_figure(path, "png", |tmp| write_png(path, tmp, size, figure))
    }
}

/// Draws `figure` as a PNG into the file `tmp` (errors name `path`).
fn write_png(
    path: &Path,
    tmp: &Path,
    size: (u32, u32),
    figure: &impl Figure,
) -> Result<(), PlotError> {
    let root = BitMapBackend::new(tmp, size).into_drawing_area();
    figure.draw(&root).map_err(|m| backend_error(path, m))?;
    root.present().map_err(|e| backend_error(path, e.to_string()))
}

/// Draws `figure` as an SVG in memory and writes it to the file `tmp` (errors name `path`).
fn write_svg(
    path: &Path,
    tmp: &Path,
    size: (u32, u32),
    figure: &impl Figure,
) -> Result<(), PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        figure.draw(&root).map_err(|m| backend_error(path, m))?;
        root.present().map_err(|e| backend_error(path, e.to_string()))?;
    }
    std::fs::write(tmp, svg).map_err(write_err(path))
}

/// Splits `area` into `n` panels side by side.
fn panels<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    n: usize,
) -> Vec<DrawingArea<DB, Shift>> {
    area.split_evenly((1, n.max(1)))
}

/// Whether both coordinates of a point are finite.
fn finite_point(p: &(f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

/// Heat maps of densities (one panel each, with a title), coloured by viridis on a shared
/// or per-panel scale. Every grid must pass [`Grid2::validate`].
#[derive(Debug, Clone)]
pub struct DensityPanels<'a> {
    /// The panels: title and grid.
    pub panels: Vec<(String, &'a Grid2)>,
    /// One colour scale for all panels (max over all) instead of one per panel.
    pub shared_scale: bool,
}

impl Figure for DensityPanels<'_> {
    fn validate(&self) -> Result<(), PlotError> {
        self.panels.iter().try_for_each(|(_, grid)| grid.validate())
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        self.validate().map_err(|e| e.to_string())?;
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

/// Point clouds, one panel each, with a title and fixed axis ranges. Points with a
/// non-finite coordinate are left out.
#[derive(Debug, Clone)]
pub struct ScatterPanels<'a> {
    /// The panels: title and 2-D points (sample-major x, y pairs).
    pub panels: Vec<(String, &'a [f64])>,
    /// Axis range, the same on both axes; finite with `lo < hi`.
    pub range: (f64, f64),
}

impl Figure for ScatterPanels<'_> {
    fn validate(&self) -> Result<(), PlotError> {
        check_range("axis range", self.range)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        self.validate().map_err(|e| e.to_string())?;
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
                        .map(|p| (p[0], p[1]))
                        .filter(finite_point)
                        .map(|p| Circle::new(p, 2, BLUE.mix(0.4).filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Paths of points through time, drawn as lines from start (light) to end (dark), with
/// the end points marked. Non-finite positions are left out of the paths and marks.
#[derive(Debug, Clone)]
pub struct Trajectories<'a> {
    /// Title of the figure.
    pub title: String,
    /// Sample-major states at each time: `states[k]` holds all points (x, y pairs) at the
    /// k-th time; every entry has the same length.
    pub states: &'a [Vec<f64>],
    /// Axis range, the same on both axes; finite with `lo < hi`.
    pub range: (f64, f64),
}

impl Figure for Trajectories<'_> {
    fn validate(&self) -> Result<(), PlotError> {
        check_range("axis range", self.range)?;
        let expected = self.states.first().map_or(0, Vec::len);
        match self.states.iter().position(|s| s.len() != expected) {
            Some(index) => {
                Err(PlotError::StateLength { index, len: self.states[index].len(), expected })
            }
            None => Ok(()),
        }
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        self.validate().map_err(|e| e.to_string())?;
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
                self.states.iter().map(|s| (s[2 * i], s[2 * i + 1])).filter(finite_point).collect();
            chart
                .draw_series(LineSeries::new(path, BLUE.mix(0.35).stroke_width(1)))
                .map_err(|e| e.to_string())?;
        }
        if let Some(last) = self.states.last() {
            chart
                .draw_series(
                    last.chunks_exact(2)
                        .map(|p| (p[0], p[1]))
                        .filter(finite_point)
                        .map(|p| Circle::new(p, 2, RED.filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Training curves: loss and test NLL against iteration, and the forward and backward
/// function evaluations per iteration.
///
/// Points with a non-finite coordinate (a NaN loss, say) are left out, and the axis ranges
/// are worked out from the finite ones only. A panel with no finite point at all (the log of
/// a run that failed at its first iteration has only a header) is drawn empty, with the
/// text "no finite values", so that the figure is still written.
#[derive(Debug, Clone)]
pub struct TrainingCurves<'a> {
    /// (iteration, training loss) of every iteration.
    pub loss: &'a [(f64, f64)],
    /// (iteration, test NLL) where it was evaluated.
    pub test_nll: &'a [(f64, f64)],
    /// (iteration, forward NFE, backward NFE) of every iteration.
    pub nfe: &'a [(f64, f64, f64)],
}

impl TrainingCurves<'_> {
    /// The finite points of the four series: loss, test NLL, forward NFE, backward NFE.
    fn finite_series(&self) -> [Vec<(f64, f64)>; 4] {
        let keep = |pts: &mut dyn Iterator<Item = (f64, f64)>| pts.filter(finite_point).collect();
        [
            keep(&mut self.loss.iter().copied()),
            keep(&mut self.test_nll.iter().copied()),
            keep(&mut self.nfe.iter().map(|p| (p.0, p.1))),
            keep(&mut self.nfe.iter().map(|p| (p.0, p.2))),
        ]
    }

    /// The axis ranges of the figure, `[iterations, loss and NLL, NFE]`: from 0 (or the first
    /// iteration, if negative) to the last iteration (at least 1); the finite losses and NLLs
    /// with 5 % margins (`[0, 1]` if there are none); 0 (or the smallest NFE, if negative) to
    /// the largest NFE (at least 1), plus 10 % headroom. Always finite with `lo < hi`.
    fn ranges(&self) -> [(f64, f64); 3] {
        let [loss, test, fwd, bwd] = self.finite_series();
        let iterations = [&loss, &test, &fwd, &bwd].into_iter().flatten().map(|p| p.0);
        let x = data_range(iterations.chain([0.0, 1.0]), 0.0).unwrap_or((0.0, 1.0));
        let y = data_range(loss.iter().chain(&test).map(|p| p.1), 0.05).unwrap_or((0.0, 1.0));
        let (lo, hi) = data_range(fwd.iter().chain(&bwd).map(|p| p.1).chain([0.0, 1.0]), 0.0)
            .unwrap_or((0.0, 1.0));
        [x, y, (lo, hi + 0.1 * (hi - lo))]
    }
}

/// One panel of line series against iteration, with a legend; an empty chart with the text
/// "no finite values" when every series is empty.
fn curve_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    (x, y): ((f64, f64), (f64, f64)),
    series: &[(&str, &[(f64, f64)], ShapeStyle)],
) -> Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(50)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("iteration").draw().map_err(|e| e.to_string())?;
    if series.iter().all(|(_, pts, _)| pts.is_empty()) {
        let style =
            ("sans-serif", 20).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center));
        let centre = (0.5 * (x.0 + x.1), 0.5 * (y.0 + y.1));
        chart
            .draw_series(std::iter::once(Text::new("no finite values", centre, style)))
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    for &(label, pts, style) in series {
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

impl Figure for TrainingCurves<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        area.fill(&WHITE).map_err(|e| e.to_string())?;
        let halves = panels(area, 2);
        let [loss, test, fwd, bwd] = self.finite_series();
        let [x, y, nfe] = self.ranges();
        curve_panel(
            &halves[0],
            "loss and test NLL",
            (x, y),
            &[
                ("training loss", &loss, BLUE.mix(0.6).into()),
                ("test NLL", &test, RED.stroke_width(2)),
            ],
        )?;
        curve_panel(
            &halves[1],
            "function evaluations per iteration",
            (x, nfe),
            &[("forward", &fwd, BLUE.into()), ("backward", &bwd, GREEN.into())],
        )
    }
}

/// Writes an animated GIF of point clouds, one frame per entry (title, points), `delay_ms`
/// between frames, atomically. Needs at least one frame and a valid `range` (as for
/// [`ScatterPanels`]); points with a non-finite coordinate are left out. The file is always
/// a GIF, so `path` must end in `.gif` (any case): another extension is a
/// [`PlotError::UnsupportedFormat`], refused before anything else is checked or written.
/// Symbolic links, devices and directories are treated as by [`render`].
pub fn animate_points(
    path: impl AsRef<Path>,
    size: (u32, u32),
    frames: &[(String, &[f64])],
    range: (f64, f64),
    delay_ms: u32,
) -> Result<(), PlotError> {
    let path = path.as_ref();
    if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gif")) {
        return Err(PlotError::UnsupportedFormat {
            path: path.to_path_buf(),
            expected: "an animation is written as GIF: use .gif",
        });
    }
    check_canvas(size)?;
    check_range("axis range", range)?;
    if frames.is_empty() {
        return Err(PlotError::NoFrames { path: path.to_path_buf() });
    }
    write_figure(path, "gif", |tmp| {
        let root = BitMapBackend::gif(tmp, size, delay_ms)
            .map_err(|e| backend_error(path, e.to_string()))?
            .into_drawing_area();
        for (title, pts) in frames {
            ScatterPanels { panels: vec![(title.clone(), pts)], range }
                .draw(&root)
                .map_err(|m| backend_error(path, m))?;
            root.present().map_err(|e| backend_error(path, e.to_string()))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_png_and_svg_and_rejects_other_formats() {
        let tmp = tempfile::Builder::new().prefix("odeflow-plot-").tempdir().unwrap();
        let dir = tmp.path();
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
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    /// A fresh, empty temporary folder for one test, removed when the guard drops.
    fn fresh_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(&format!("odeflow-plot-{name}-")).tempdir().unwrap()
    }

    fn assert_proper((lo, hi): (f64, f64), what: &str) {
        assert!(
            lo.is_finite() && hi.is_finite() && lo < hi && (hi - lo).is_finite(),
            "{what}: {lo}..{hi}"
        );
    }

    #[test]
    fn data_ranges_are_finite_with_positive_width_whatever_the_values() {
        assert_eq!(data_range([], 0.05), None);
        assert_eq!(data_range([f64::NAN, f64::INFINITY, f64::NEG_INFINITY], 0.05), None);
        // Non-finite values are skipped, not folded into the range.
        assert_eq!(data_range([1.0, f64::NAN, 3.0, f64::INFINITY], 0.0), Some((1.0, 3.0)));
        assert_eq!(data_range([1.0, 3.0], 0.5), Some((0.0, 4.0)));
        // Equal values: ±5 % of the magnitude, ±1 around zero.
        assert_eq!(data_range([2.0, 2.0], 0.05), Some((1.9, 2.1)));
        assert_eq!(data_range([0.0], 0.05), Some((-1.0, 1.0)));
        let cases: [&[f64]; 6] = [
            &[1e20],
            &[-f64::MAX, f64::MAX],
            &[f64::MAX],
            &[f64::MIN_POSITIVE / 4.0],
            &[1.0, 1.0 + f64::EPSILON],
            &[-1e300, 1e300, 5.0],
        ];
        for values in cases {
            let range = data_range(values.iter().copied(), 0.05).unwrap();
            assert_proper(range, &format!("{values:?}"));
        }
    }

    #[test]
    fn training_curve_ranges_are_finite_without_finite_values() {
        let nan = f64::NAN;
        let inf = f64::INFINITY;
        let cases = [
            // The log of a run that failed at its first iteration: a header only.
            TrainingCurves { loss: &[], test_nll: &[], nfe: &[] },
            TrainingCurves {
                loss: &[(1.0, nan), (2.0, nan)],
                test_nll: &[(1.0, nan)],
                nfe: &[(1.0, nan, nan)],
            },
            TrainingCurves {
                loss: &[(1.0, inf), (2.0, -inf)],
                test_nll: &[],
                nfe: &[(1.0, inf, 3.0)],
            },
            TrainingCurves {
                loss: &[(inf, 1.0), (nan, 2.0)],
                test_nll: &[],
                nfe: &[(inf, 10.0, 20.0)],
            },
            TrainingCurves {
                loss: &[(1.0, 5.0)],
                test_nll: &[(1.0, 5.0)],
                nfe: &[(1.0, 7.0, 7.0)],
            },
        ];
        for curves in cases {
            for (range, what) in curves.ranges().into_iter().zip(["x", "loss", "nfe"]) {
                assert_proper(range, &format!("{what} of {curves:?}"));
            }
        }
        let empty = TrainingCurves { loss: &[], test_nll: &[], nfe: &[] };
        assert_eq!(empty.ranges(), [(0.0, 1.0), (0.0, 1.0), (0.0, 1.1)]);
        // A NaN loss is skipped: the range is that of the finite losses and test NLLs.
        let some = TrainingCurves {
            loss: &[(0.0, 4.0), (1.0, nan), (2.0, 2.0)],
            test_nll: &[(2.0, 3.0), (3.0, inf)],
            nfe: &[(0.0, 20.0, 30.0), (3.0, nan, 40.0)],
        };
        let [x, y, nfe] = some.ranges();
        assert_eq!(x, (0.0, 3.0));
        assert!((y.0 - 1.9).abs() < 1e-12 && (y.1 - 4.1).abs() < 1e-12, "{y:?}");
        assert!(nfe.0.abs() < 1e-12 && (nfe.1 - 44.0).abs() < 1e-9, "{nfe:?}");
    }

    /// Runs `f` on another thread and fails the test if it takes more than a minute (a
    /// plotters layout that never finishes shows as a failure, not a test that hangs).
    fn within_a_minute<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(60)).expect("drawing did not finish")
    }

    #[test]
    fn training_curves_without_finite_values_are_drawn_empty_and_finish() {
        let tmp = fresh_dir("curves");
        let dir = tmp.path();
        let nan = f64::NAN;
        type Series = (Vec<(f64, f64)>, Vec<(f64, f64)>, Vec<(f64, f64, f64)>);
        let cases: Vec<(&str, Series)> = vec![
            ("header_only", (vec![], vec![], vec![])),
            ("all_nan", (vec![(1.0, nan), (2.0, nan)], vec![(2.0, nan)], vec![(1.0, nan, nan)])),
            ("inf", (vec![(1.0, f64::INFINITY)], vec![], vec![(f64::INFINITY, 1.0, 2.0)])),
        ];
        for (name, (loss, test, nfe)) in cases {
            for ext in ["svg", "png"] {
                let path = dir.join(format!("{name}.{ext}"));
                let (loss, test, nfe, p) = (loss.clone(), test.clone(), nfe.clone(), path.clone());
                within_a_minute(move || {
                    let curves = TrainingCurves { loss: &loss, test_nll: &test, nfe: &nfe };
                    render(&p, (1100, 420), &curves)
                })
                .unwrap_or_else(|e| panic!("{name}.{ext}: {e}"));
                assert!(std::fs::metadata(&path).unwrap().len() > 0, "{}", path.display());
            }
            let svg = std::fs::read_to_string(dir.join(format!("{name}.svg"))).unwrap();
            assert!(svg.contains("no finite values"), "{name}: {svg}");
        }
        // With finite points the curves are drawn, without the notice.
        let loss = [(0.0, 2.0), (1.0, nan), (2.0, 1.0)];
        let nfe = [(0.0, 20.0, 30.0), (2.0, 26.0, 35.0)];
        let path = dir.join("finite.svg");
        render(&path, (1100, 420), &TrainingCurves { loss: &loss, test_nll: &[], nfe: &nfe })
            .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(!svg.contains("no finite values") && svg.contains("training loss"), "{svg}");
    }

    #[test]
    fn degenerate_ranges_grids_and_sizes_are_refused_before_writing() {
        let tmp = fresh_dir("refused");
        let dir = tmp.path();
        let pts = [0.0, 0.0, 1.0, 1.0];
        let states = vec![pts.to_vec(), pts.to_vec()];
        for range in
            [(0.0, 0.0), (1.0, -1.0), (f64::NAN, 1.0), (-f64::INFINITY, 1.0), (-f64::MAX, f64::MAX)]
        {
            let scatter = ScatterPanels { panels: vec![("a".into(), &pts[..])], range };
            let err = render(dir.join("s.png"), (100, 100), &scatter).unwrap_err();
            assert!(matches!(err, PlotError::InvalidRange { what: "axis range", .. }), "{err}");
            assert!(err.to_string().contains("not a finite range of positive width"), "{err}");
            let traj = Trajectories { title: "t".into(), states: &states, range };
            let err = render(dir.join("t.svg"), (100, 100), &traj).unwrap_err();
            assert!(matches!(err, PlotError::InvalidRange { .. }), "{err}");
            let frames = vec![("a".to_string(), &pts[..])];
            let err = animate_points(dir.join("a.gif"), (50, 50), &frames, range, 10).unwrap_err();
            assert!(matches!(err, PlotError::InvalidRange { .. }), "{err}");
            // Drawing directly on a backend refuses too (instead of hanging or panicking).
            let mut svg = String::new();
            let root = SVGBackend::with_string(&mut svg, (100, 100)).into_drawing_area();
            assert!(scatter.draw(&root).unwrap_err().contains("axis range"));
        }
        let ragged = vec![pts.to_vec(), vec![0.0, 0.0]];
        let traj = Trajectories { title: "t".into(), states: &ragged, range: (-2.0, 2.0) };
        assert!(matches!(
            render(dir.join("t.png"), (100, 100), &traj),
            Err(PlotError::StateLength { index: 1, len: 2, expected: 4 })
        ));
        let grid = |nx: usize, ny: usize, x_range: (f64, f64), len: usize| Grid2 {
            x_range,
            y_range: (-1.0, 1.0),
            nx,
            ny,
            values: vec![1.0; len],
        };
        let bad = [
            (grid(1, 5, (0.0, 1.0), 5), "GridTooSmall"),
            (grid(5, 0, (0.0, 1.0), 0), "GridTooSmall"),
            (grid(3, 3, (0.0, 1.0), 8), "GridValues"),
            (grid(3, 3, (1.0, 1.0), 9), "InvalidRange"),
            (grid(3, 3, (0.0, f64::NAN), 9), "InvalidRange"),
        ];
        for (g, want) in &bad {
            let fig = DensityPanels { panels: vec![("d".into(), g)], shared_scale: true };
            let err = render(dir.join("d.png"), (100, 100), &fig).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{want}: {err:?}");
        }
        assert!(grid(2, 2, (0.0, 1.0), 4).validate().is_ok());
        let scatter = ScatterPanels { panels: vec![("a".into(), &pts[..])], range: (-1.0, 1.0) };
        for size in [(0, 100), (100, 0), (MAX_CANVAS_SIDE + 1, 10)] {
            assert!(matches!(
                render(dir.join("s.png"), size, &scatter),
                Err(PlotError::CanvasSize { .. })
            ));
        }
        assert!(matches!(
            animate_points(dir.join("a.gif"), (50, 50), &[], (-1.0, 1.0), 10),
            Err(PlotError::NoFrames { .. })
        ));
        // Nothing was written, not even a temporary file.
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
    }

    /// `animate_points` writes a GIF whatever it is asked for, so a path that does not end
    /// in `.gif` (in any case) is refused, naming the path and the format, before anything
    /// else is checked or written: an existing `keep.png` is left as it was.
    #[test]
    fn animations_are_refused_unless_the_path_ends_in_gif() {
        let tmp = fresh_dir("animext");
        let dir = tmp.path();
        let keep = dir.join("keep.png");
        std::fs::write(&keep, b"not touched").unwrap();
        let pts = [0.0, 0.0, 0.5, -0.5];
        let frames = vec![("a".to_string(), &pts[..])];
        for name in ["keep.png", "a.svg", "a.jpg", "a", "agif", "a.gif.png", ".gif"] {
            let path = dir.join(name);
            for (frames, range) in [(&frames[..], (-1.0, 1.0)), (&[][..], (1.0, -1.0))] {
                let err = animate_points(&path, (50, 50), frames, range, 10).unwrap_err();
                assert!(
                    matches!(&err, PlotError::UnsupportedFormat { path: p, .. } if *p == path),
                    "{name}: {err:?}"
                );
                assert_eq!(
                    err.to_string(),
                    format!(
                        "{}: unsupported figure format (an animation is written as GIF: use .gif)",
                        path.display()
                    )
                );
            }
        }
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);
        assert_eq!(std::fs::read(&keep).unwrap(), b"not touched");
        for name in ["b.gif", "c.GIF", "d.Gif"] {
            animate_points(dir.join(name), (50, 50), &frames, (-1.0, 1.0), 10).unwrap();
            assert_eq!(&std::fs::read(dir.join(name)).unwrap()[..3], b"GIF", "{name}");
        }
    }

    #[test]
    fn model_figure_settings_are_checked() {
        let dir = Path::new("figs");
        assert!(ModelFigures::default().validate(dir).is_ok());
        for range in [(0.0, 0.0), (4.0, -4.0), (f64::NAN, f64::NAN), (-f64::INFINITY, 4.0)] {
            let err = ModelFigures { range, ..Default::default() }.validate(dir).unwrap_err();
            assert!(
                matches!(err, crate::Error::Plot(PlotError::InvalidRange { .. })),
                "{range:?}: {err}"
            );
        }
        for grid in [0, 1, MAX_GRID + 1] {
            let err = ModelFigures { grid, ..Default::default() }.validate(dir).unwrap_err();
            assert!(matches!(err, crate::Error::InvalidConfig { name: "grid", .. }), "{err}");
        }
        let err = ModelFigures { format: "jpg", ..Default::default() }.validate(dir).unwrap_err();
        assert!(err.to_string().contains("density.jpg"), "{err}");
        // No samples to draw (it panicked in the trajectory of an empty batch).
        let err = ModelFigures { samples: 0, ..Default::default() }.validate(dir).unwrap_err();
        assert!(matches!(err, crate::Error::InvalidConfig { name: "samples", .. }), "{err}");
    }

    #[test]
    fn unwritable_paths_are_reported_with_the_path_and_the_os_message() {
        let tmp = fresh_dir("missing");
        let dir = tmp.path();
        let scatter =
            ScatterPanels { panels: vec![("a".into(), &[0.0, 0.0][..])], range: (-1.0, 1.0) };
        let frames = vec![("a".to_string(), &[0.0, 0.0][..])];
        let missing = dir.join("no-such-folder");
        for name in ["f.png", "f.svg", "f.gif"] {
            let path = missing.join(name);
            let err = if name.ends_with("gif") {
                animate_points(&path, (50, 50), &frames, (-1.0, 1.0), 10)
            } else {
                render(&path, (100, 100), &scatter)
            }
            .unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, PlotError::Write { .. }), "{msg}");
            let want = format!("cannot write figure {}: ", path.display());
            assert!(msg.starts_with(&want) && msg.contains("(os error"), "{msg}");
            assert!(!msg.contains("Os {") && !msg.contains("IoError"), "{msg}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_folder_without_write_permission_is_reported_in_plain_words() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = fresh_dir("readonly");
        let dir = tmp.path();
        let locked = dir.join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        // Root ignores permissions: then there is nothing to test.
        let writable = std::fs::File::create(locked.join("probe")).is_ok();
        let mut messages = Vec::new();
        if !writable {
            let scatter =
                ScatterPanels { panels: vec![("a".into(), &[0.0, 0.0][..])], range: (-1.0, 1.0) };
            for name in ["f.png", "f.svg"] {
                let path = locked.join(name);
                let err = render(&path, (100, 100), &scatter).unwrap_err();
                messages.push((path, err.to_string()));
            }
        }
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        if writable {
            eprintln!("skipped: this user can write into a read-only folder (root)");
            return;
        }
        for (path, msg) in messages {
            let want =
                format!("cannot write figure {}: Permission denied (os error 13)", path.display());
            assert_eq!(msg, want);
        }
    }

    #[test]
    fn a_bitmap_backend_io_error_is_turned_into_the_os_message() {
        let path = Path::new("/x/y.png");
        let debug = "backend error: Drawing backend error: ImageError(IoError(Os { code: 28, \
                     kind: StorageFull, message: \"No space left on device\" }))";
        let err = backend_error(path, debug.to_string());
        let want = std::io::Error::from_raw_os_error(28);
        assert_eq!(err.to_string(), format!("cannot write figure /x/y.png: {want}"));
        assert!(
            matches!(&err, PlotError::Write { source, .. } if source.raw_os_error() == Some(28))
        );
        let err = backend_error(path, "Font loading error: no font".to_string());
        assert_eq!(err.to_string(), "cannot draw figure /x/y.png: Font loading error: no font");
    }
}
