//! Work-precision diagrams: error against cost for solver methods and tolerances.
//!
//! For each method and each setting (a tolerance rtol = atol for adaptive methods, a number
//! of steps for fixed-step ones) the caller's solve runs `repeats` times; the row records the
//! error of its output against a reference (max |y − y_ref| over the output, and the RMS),
//! the function evaluations, the steps and the best wall time. Plotted as error against
//! time and against evaluations on log axes, one line per method, as DiffEqDevTools does.

use std::path::Path;
use std::time::Instant;

use plotters::coord::Shift;
use plotters::prelude::*;

use odeflow_solvers::{Method, Stats};

use crate::io::write_atomically;
use crate::plot::{render, Figure};
use crate::Error;

/// One solver setting: how hard the method works.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting {
    /// An adaptive method at rtol = atol = this value.
    Tolerance(f64),
    /// A fixed-step method with this many equal steps.
    Steps(usize),
}

impl Setting {
    /// The setting as a label, e.g. `tol=1e-6` or `steps=100`.
    pub fn label(&self) -> String {
        match self {
            Setting::Tolerance(t) => format!("tol={t:e}"),
            Setting::Steps(n) => format!("steps={n}"),
        }
    }
}

/// Spelt out for messages: `rtol = atol = 1e-6` or `100 fixed steps`.
impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setting::Tolerance(t) => write!(f, "rtol = atol = {t:e}"),
            Setting::Steps(n) => write!(f, "{n} fixed steps"),
        }
    }
}

/// One point of a work-precision diagram.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The method.
    pub method: Method,
    /// Its setting.
    pub setting: Setting,
    /// max_i |y_i − y_ref,i| over the compared output.
    pub max_error: f64,
    /// sqrt(mean_i (y_i − y_ref,i)²).
    pub rms_error: f64,
    /// Solver statistics of one run.
    pub stats: Stats,
    /// Best wall time over the repeats, in seconds.
    pub seconds: f64,
}

/// Runs `solve(method, setting)` for every method (adaptive ones with `tolerances`, fixed
/// ones with `steps`), `repeats` times each (at least once), and compares its output with
/// `reference` (same length). A non-finite value in `reference` is an
/// [`Error::NonFiniteInput`], one in a solution an [`Error::NonFiniteSolution`] naming the
/// method and setting that produced it (a NaN difference would otherwise drop out of the
/// maximum and plot as exact).
pub fn work_precision(
    methods: &[Method],
    tolerances: &[f64],
    steps: &[usize],
    repeats: usize,
    reference: &[f64],
    mut solve: impl FnMut(Method, Setting) -> Result<(Vec<f64>, Stats), Error>,
) -> Result<Vec<Row>, Error> {
    crate::error::check_finite(reference, 1)?;
    let mut rows = Vec::new();
    for &method in methods {
        let settings: Vec<Setting> = if method.is_adaptive() {
            tolerances.iter().map(|&t| Setting::Tolerance(t)).collect()
        } else {
            steps.iter().map(|&n| Setting::Steps(n)).collect()
        };
        for setting in settings {
            let mut best = f64::INFINITY;
            let mut last = None;
            for _ in 0..repeats.max(1) {
                let start = Instant::now();
                let result = solve(method, setting)?;
                best = best.min(start.elapsed().as_secs_f64());
                last = Some(result);
            }
            let Some((y, stats)) = last else { continue };
            if y.len() != reference.len() {
                return Err(Error::BufferLength {
                    buffer: "solution",
                    expected: reference.len(),
                    found: y.len(),
                });
            }
            if let Some(index) = y.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFiniteSolution { method, setting, index, value: y[index] });
            }
            let diffs = y.iter().zip(reference).map(|(a, b)| (a - b).abs());
            let max_error = diffs.clone().fold(0.0, f64::max);
            let rms_error = (diffs.map(|d| d * d).sum::<f64>() / y.len().max(1) as f64).sqrt();
            rows.push(Row { method, setting, max_error, rms_error, stats, seconds: best });
        }
    }
    Ok(rows)
}

/// The rows as CSV (header + one line per row).
pub fn to_csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "method,setting,value,max_error,rms_error,n_rhs,n_accepted,n_rejected,seconds\n",
    );
    for r in rows {
        let (kind, value) = match r.setting {
            Setting::Tolerance(t) => ("tolerance", format!("{t:e}")),
            Setting::Steps(n) => ("steps", n.to_string()),
        };
        s += &format!(
            "{},{kind},{value},{:e},{:e},{},{},{},{:e}\n",
            r.method,
            r.max_error,
            r.rms_error,
            r.stats.n_rhs,
            r.stats.n_accepted,
            r.stats.n_rejected,
            r.seconds
        );
    }
    s
}

/// The rows as a JSON array of objects (the CSV's columns).
pub fn to_json(rows: &[Row]) -> String {
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let (kind, value) = match r.setting {
                Setting::Tolerance(t) => ("tolerance", serde_json::json!(t)),
                Setting::Steps(n) => ("steps", serde_json::json!(n)),
            };
            serde_json::json!({
                "method": r.method.name(), "setting": kind, "value": value,
                "max_error": r.max_error, "rms_error": r.rms_error, "n_rhs": r.stats.n_rhs,
                "n_accepted": r.stats.n_accepted, "n_rejected": r.stats.n_rejected, "seconds": r.seconds,
            })
        })
        .collect();
    serde_json::to_string_pretty(&items).unwrap_or_default()
}

/// Writes the rows as `<stem>.csv`, `<stem>.json` and the diagram `<stem>.png` (and
/// `.svg`) in `dir`, atomically; returns the paths written.
pub fn write_all(
    dir: &Path,
    stem: &str,
    title: &str,
    rows: &[Row],
) -> Result<Vec<std::path::PathBuf>, Error> {
    let csv = dir.join(format!("{stem}.csv"));
    let json = dir.join(format!("{stem}.json"));
    write_atomically(&csv, |w| std::io::Write::write_all(w, to_csv(rows).as_bytes()))?;
    write_atomically(&json, |w| std::io::Write::write_all(w, to_json(rows).as_bytes()))?;
    let mut paths = vec![csv, json];
    for ext in ["png", "svg"] {
        let p = dir.join(format!("{stem}.{ext}"));
        render(&p, (1100, 480), &Diagram { title: title.to_string(), rows })?;
        paths.push(p);
    }
    Ok(paths)
}

/// The work-precision diagram: error against time and against evaluations.
pub struct Diagram<'a> {
    /// Title over both panels.
    pub title: String,
    /// The points.
    pub rows: &'a [Row],
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

impl Figure for Diagram<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        area.fill(&WHITE).map_err(|e| e.to_string())?;
        let area = area.titled(&self.title, ("sans-serif", 20)).map_err(|e| e.to_string())?;
        let panels = area.split_evenly((1, 2));
        let positive = |v: f64| if v > 0.0 && v.is_finite() { Some(v) } else { None };
        let errs: Vec<f64> = self.rows.iter().filter_map(|r| positive(r.max_error)).collect();
        let (emin, emax) = bounds(&errs);
        let mut methods: Vec<Method> = self.rows.iter().map(|r| r.method).collect();
        methods.dedup();
        for (panel, x_is_time) in panels.iter().zip([true, false]) {
            let xs: Vec<f64> = self
                .rows
                .iter()
                .filter_map(|r| positive(if x_is_time { r.seconds } else { r.stats.n_rhs as f64 }))
                .collect();
            let (xmin, xmax) = bounds(&xs);
            let mut chart = ChartBuilder::on(panel)
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d((xmin..xmax).log_scale(), (emin..emax).log_scale())
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc(if x_is_time { "time (s)" } else { "function evaluations" })
                .y_desc("max |error|")
                .x_label_formatter(&|v| format!("{v:.0e}"))
                .y_label_formatter(&|v| format!("{v:.0e}"))
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, m) in methods.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                let pts: Vec<(f64, f64)> = self
                    .rows
                    .iter()
                    .filter(|r| r.method == *m)
                    .filter_map(|r| {
                        let x = if x_is_time { r.seconds } else { r.stats.n_rhs as f64 };
                        Some((positive(x)?, positive(r.max_error)?))
                    })
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(m.name())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A log-axis range around the positive values (a decade of margin), or [1e-16, 1].
fn bounds(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    if lo.is_finite() && hi > 0.0 {
        // Kept finite and positive at the extremes: an infinite or zero end of a log axis
        // would never finish drawing.
        ((lo / 3.0).max(f64::MIN_POSITIVE), (hi * 3.0).min(f64::MAX))
    } else {
        (1e-16, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use odeflow_solvers::problems::Harmonic;

    #[test]
    fn diagram_bounds_stay_finite_and_positive() {
        for v in [vec![1e308, 1e-3], vec![5e-324, 1.0], vec![f64::MAX]] {
            let (lo, hi) = bounds(&v);
            assert!(lo > 0.0 && hi.is_finite() && lo < hi, "{v:?}: ({lo}, {hi})");
        }
        assert_eq!(bounds(&[]), (1e-16, 1.0));
    }
    use odeflow_solvers::{solve, FnSystem, SolveOptions};

    /// A NaN in a solution or in the reference is an error: it dropped out of the maximum
    /// (`max_error` 0, a failed solve plotted as exact). A solution's error names the method
    /// and setting of the run that produced it (the earlier runs were fine).
    #[test]
    fn non_finite_solutions_and_references_are_errors() {
        let run = |reference: &[f64], y: Vec<f64>| {
            work_precision(&[Method::Dopri5], &[1e-6], &[], 1, reference, |_, _| {
                Ok((y.clone(), Stats::default()))
            })
        };
        for (y, at) in
            [(vec![f64::NAN, f64::NAN], 0), (vec![1.0, f64::NAN], 1), (vec![f64::INFINITY, 2.0], 0)]
        {
            let err = run(&[1.0, 2.0], y).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::NonFiniteSolution {
                        method: Method::Dopri5,
                        setting: Setting::Tolerance(t),
                        index,
                        ..
                    } if t.to_bits() == 1e-6f64.to_bits() && index == at
                ),
                "{err}"
            );
        }
        // Only the third run fails: RK4 with 40 steps, after DOPRI5 at two tolerances and
        // RK4 with 10 steps.
        let err = work_precision(
            &[Method::Dopri5, Method::Rk4],
            &[1e-3, 1e-6],
            &[10, 40],
            1,
            &[1.0, 2.0],
            |_, s| match s {
                Setting::Steps(40) => Ok((vec![1.0, f64::INFINITY], Stats::default())),
                _ => Ok((vec![1.0, 2.0], Stats::default())),
            },
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::NonFiniteSolution {
                    method: Method::Rk4,
                    setting: Setting::Steps(40),
                    index: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "the rk4 solve at 40 fixed steps returned a non-finite value inf at index 1"
        );
        let err = run(&[1.0, 2.0], vec![1.0, f64::NAN]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the dopri5 solve at rtol = atol = 1e-6 returned a non-finite value NaN at index 1"
        );
        let err = run(&[f64::NAN, 2.0], vec![1.0, 2.0]).unwrap_err();
        assert!(matches!(err, Error::NonFiniteInput { index: 0, .. }), "{err}");
        assert_eq!(
            run(&[1.0, 2.0], vec![1.0, 2.5]).unwrap()[0].max_error.to_bits(),
            0.5f64.to_bits()
        );
    }

    /// On the harmonic oscillator the error falls as the tolerance (or step) shrinks, and
    /// the cost rises; the files are written.
    #[test]
    fn diagram_of_the_harmonic_oscillator() {
        let t1 = 10.0;
        let reference = Harmonic { omega: 1.0 }.exact(&[1.0, 0.0], t1).to_vec();
        let rows = work_precision(
            &[Method::Dopri5, Method::Dop853, Method::Rk4],
            &[1e-4, 1e-7, 1e-10],
            &[50, 200, 800],
            1,
            &reference,
            |m, s| {
                let opts = match s {
                    Setting::Tolerance(t) => SolveOptions::tol(t, t),
                    Setting::Steps(n) => SolveOptions::fixed(t1 / n as f64),
                };
                let mut sys = FnSystem::new(2, |_t: f64, y: &[f64], dy: &mut [f64]| {
                    dy[0] = y[1];
                    dy[1] = -y[0];
                });
                let (y, stats) = solve(m, &mut sys, 0.0, t1, &[1.0, 0.0], &opts)
                    .map_err(|source| Error::Solve { block: 0, source })?;
                Ok((y, stats))
            },
        )
        .unwrap();
        assert_eq!(rows.len(), 9);
        for w in rows.chunks(3) {
            assert!(w[0].max_error > w[1].max_error && w[1].max_error > w[2].max_error, "{w:?}");
            assert!(w[0].stats.n_rhs < w[2].stats.n_rhs);
        }
        let tmp = tempfile::Builder::new().prefix("odeflow-wp-").tempdir().unwrap();
        let dir = tmp.path();
        let paths = write_all(dir, "harmonic", "harmonic oscillator", &rows).unwrap();
        let csv = std::fs::read_to_string(&paths[0]).unwrap();
        assert_eq!(csv.lines().count(), 10);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&paths[1]).unwrap()).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 9);
        assert!(std::fs::metadata(&paths[2]).unwrap().len() > 1000);
    }
}
