//! What `train` and `plot` both draw from: the plotted range around the data, and the
//! figure of a training log's curves.

use std::path::{Path, PathBuf};

use odeflow::plot::{render, TrainingCurves};

/// A symmetric plot range around the data (10% margin), or ±4.
pub(crate) fn plot_range(data: &[f64]) -> (f64, f64) {
    let half = 1.1 * data.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if half > 0.0 && half.is_finite() {
        (-half, half)
    } else {
        (-4.0, 4.0)
    }
}

/// Draws the curves of the training log `log` (train_log.csv's text) into
/// `folder/training.{format}` (`png` or `svg`); returns the file's path.
pub(crate) fn write_training_curves(
    log: &str,
    folder: &Path,
    format: &str,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let (loss, test_nll, nfe) = training_curves(log);
    let path = folder.join(format!("training.{format}"));
    render(&path, (1100, 420), &TrainingCurves { loss: &loss, test_nll: &test_nll, nfe: &nfe })?;
    Ok(path)
}

/// A training log's curves: (iteration, loss), (iteration, test NLL) and (iteration,
/// forward NFE, backward NFE).
type Curves = (Vec<(f64, f64)>, Vec<(f64, f64)>, Vec<(f64, f64, f64)>);

/// The loss, test NLL and NFE series of a training log.
fn training_curves(log: &str) -> Curves {
    let (mut loss, mut test, mut nfe) = (Vec::new(), Vec::new(), Vec::new());
    for line in log.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        let Some(it) = num(0) else { continue };
        if let Some(l) = num(1) {
            loss.push((it, l));
        }
        if let Some(t) = num(3) {
            test.push((it, t));
        }
        if let (Some(a), Some(b)) = (num(4), num(5)) {
            nfe.push((it, a, b));
        }
    }
    (loss, test, nfe)
}
