//! `odeflow train`: trains a CNF or a flow model by maximum likelihood, new or resumed, and
//! writes the model, the training state, the log and the figures into the run folder.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use odeflow::io::{read_training_point, write_atomically, TrainingPoint};
use odeflow::plot::ModelFigures;
use odeflow::train::{DataSource, Dataset, LrSchedule, Progress, RunSummary, Toy};
use odeflow::Error;

use crate::figures::{plot_range, write_training_curves};
use crate::inputs::{check_memory, is_std_stream, loss_text, points_from, solve_bytes, with_path};
use crate::run_folder::{points_crc32, RunFolder};
use crate::train_args::TrainArgs;
use crate::trainer::{build_trainer, ModelChoices, ModelView, Trainer};
use crate::CliResult;

/// The first line of train_log.csv: the columns of [`log_row`].
const LOG_HEADER: &str =
    "iteration,loss,nll,test_nll,nfe_forward,nfe_backward,iter_seconds,elapsed_seconds,t_end\n";

/// Trains a CNF (or, with `--flow`, a flow: discrete, or RealNVP couplings with a CNF block)
/// and writes the model, the state, the log and the figures. `given` names the options given
/// on the command line, which `--resume` checks against the run's settings.
pub(crate) fn train(a: TrainArgs, given: &[String]) -> CliResult {
    // Holds the folder's lock until the training ends: a resumed run's from here, a new
    // run's from `start_run` on (once the trainer has accepted the settings).
    let mut folder = RunFolder::new(&a.out);
    let mut a = if a.resume {
        folder.lock_to_resume()?;
        resumed_settings(a, given, &folder.settings_file)?
    } else {
        a
    };
    let choices = ModelChoices::parse(&a)?;
    if !a.resume {
        // A cosine schedule keeps the length it started with (in run.json).
        if let LrSchedule::Cosine { total, .. } = choices.schedule {
            a.lr_schedule_length = Some(total);
        }
    }
    let (source, test) = load_data(&mut a, &folder.settings_file)?;
    let dim = source.dim();
    check_memory("--batch", a.batch, solve_bytes(dim))?;
    // An empty test set (a tiny file, --test-fraction 0, --test-points 0) means none.
    let test = (!test.is_empty()).then_some(test);
    let mut trainer = build_trainer(&a, &choices, source, test.clone(), &folder)?;
    if !a.resume {
        // Only now that the trainer has accepted the settings: a refused command leaves an
        // earlier run's run.json as it was, and writes nothing into --out.
        folder.start_run(&a)?;
    }
    let log = log_so_far(a.resume, &folder.log_file)?;
    let start_iter = trainer.iteration();
    if a.resume && start_iter >= a.iterations {
        println!(
            "the run in {} is at iteration {start_iter}, not below --iterations {}: nothing to \
             train (raise --iterations to continue it)",
            folder.out.display(),
            a.iterations
        );
        return Ok(());
    }
    let mut log = log_up_to(&log, start_iter);
    let run_start_nll = first_logged_nll(&log);
    let mut best = BestModel::new(&folder.best_model_file, a.resume, &log);
    let (result, first_nll) = run_with_progress(&mut trainer, &a, &mut log, &mut best);
    // A resumed run compares with the run's first batch, in its log.
    let first_nll = run_start_nll.or(first_nll);
    // Whatever happened, keep what was trained: the last good state, model and log.
    write_atomically(&folder.log_file, |w| std::io::Write::write_all(w, log.as_bytes()))?;
    trainer.save(&folder.state_file, &folder.model_file)?;
    let summary = result?;
    report(&summary, first_nll, &best, &folder);
    if summary.stopped || a.no_plot {
        return Ok(());
    }
    write_figures(&trainer, dim, test.as_ref(), &log, &folder.out)
}

/// The settings of the run to resume: those in its run.json (`settings_file`), with the
/// iteration count and the options about this process alone (`--out`, `--no-plot`,
/// `--quiet`) from `a`. Refuses an option in `given` (other than `--iterations`) whose value
/// differs from the run's: a resumed run keeps its settings.
fn resumed_settings(
    a: TrainArgs,
    given: &[String],
    settings_file: &Path,
) -> Result<TrainArgs, Box<dyn std::error::Error>> {
    // The run's settings come from its run.json; only the iteration count may change.
    let text = std::fs::read_to_string(settings_file)
        .map_err(|e| format!("{}: {e} (nothing to resume)", settings_file.display()))?;
    let saved: TrainArgs =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", settings_file.display()))?;
    // Options given again must say what the run has: a resumed run keeps its settings.
    let (now, then) = (serde_json::to_value(&a)?, serde_json::to_value(&saved)?);
    let same_data = || match (std::fs::canonicalize(&a.data), std::fs::canonicalize(&saved.data)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.data == saved.data,
    };
    let changed = given.iter().filter(|id| id.as_str() != "iterations").find(|id| {
        match now.get(id.as_str()) {
            None => false, // not a setting of the run (--out, --quiet, …)
            Some(_) if id.as_str() == "data" => !same_data(),
            Some(v) => then.get(id.as_str()) != Some(v),
        }
    });
    if let Some(id) = changed {
        return Err(format!(
            "--{} with --resume: a resumed run keeps the settings in {} (only --iterations may \
             change); start a new run in another --out to change them",
            id.replace('_', "-"),
            settings_file.display()
        )
        .into());
    }
    let iterations = a.iterations;
    Ok(TrainArgs {
        out: a.out,
        resume: true,
        overwrite: false,
        no_plot: a.no_plot,
        quiet: a.quiet,
        iterations,
        ..saved
    })
}

/// Loads the run's data: a toy set, drawn fresh each iteration (its test set drawn once), or
/// a file of points split into a training and a test set. A new run records the file's full
/// path and the CRC-32 of its points in `a` (for run.json); a resumed run refuses points
/// that changed since the run started (`settings_file` names its run.json in the message).
/// Returns the training data and the test set (which may be empty).
fn load_data(
    a: &mut TrainArgs,
    settings_file: &Path,
) -> Result<(DataSource<f64>, Dataset<f64>), Box<dyn std::error::Error>> {
    if let Ok(toy) = a.data.to_ascii_lowercase().parse::<Toy>() {
        check_memory("--test-points", a.test_points, solve_bytes(2))?;
        return Ok((
            DataSource::Toy(toy),
            Dataset::toy(toy, a.test_points, a.seed.wrapping_add(1)),
        ));
    }
    let path = PathBuf::from(&a.data);
    let path = path.as_path();
    if !path.exists() && !is_std_stream(path) {
        return Err(format!(
            "--data {:?}: no such file, nor a toy set ({})",
            a.data,
            Toy::ALL.map(|t| t.name()).join(", ")
        )
        .into());
    }
    // A new run keeps the file's full path, so that --resume finds it from any working
    // directory.
    // (Not `-`: a file of that name in the working directory is not standard input.)
    if !a.resume && !is_std_stream(path) {
        if let Ok(full) = std::fs::canonicalize(path) {
            a.data = full.to_string_lossy().into_owned();
        }
    }
    let points = points_from(path, None)?;
    let crc = points_crc32(points.cols, &points.data);
    match a.data_crc32 {
        Some(saved) if a.resume && saved != crc => {
            return Err(format!(
                "--data {}: its points changed since the run started (CRC-32 {crc:08x}, {} says \
                 {saved:08x}); resume with the data the run was trained on, or start a new run",
                path.display(),
                settings_file.display()
            )
            .into())
        }
        None if a.resume => eprintln!(
            "odeflow: note: {} keeps no checksum of the data (a run started by an older \
             odeflow): {} is resumed unchecked",
            settings_file.display(),
            path.display()
        ),
        _ => a.data_crc32 = Some(crc),
    }
    let all = Dataset::new(points.cols, points.data).map_err(|e| with_path(path, e))?;
    let (tr, te) = all.split(a.test_fraction, a.seed).map_err(|e| with_path(path, e))?;
    Ok((DataSource::Dataset { data: tr, seed: a.seed }, te))
}

/// The training log so far: a resumed run's train_log.csv (`log_file`) if it has one, else
/// only the header. The log keeps every iteration; a resumed run appends to its rows.
fn log_so_far(resume: bool, log_file: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let mut log = if resume && log_file.exists() {
        std::fs::read_to_string(log_file).map_err(|e| {
            format!(
                "cannot read the run's training log {}: {e} (move it away to resume without it)",
                log_file.display()
            )
        })?
    } else {
        String::new()
    };
    if log.is_empty() {
        log.push_str(LOG_HEADER);
    }
    Ok(log)
}

/// The lines of `log` up to the row of `iteration`, where a resumed run starts: the rows
/// after it (logged past the last checkpoint by a run that was killed) are trained again.
fn log_up_to(log: &str, iteration: u64) -> String {
    log.lines()
        .take_while(|l| {
            l.split(',').next().and_then(|i| i.parse::<u64>().ok()).is_none_or(|i| i <= iteration)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The model of the lowest test NLL so far, kept in best.safetensors: a model that overfits,
/// or a run whose learning rate carries it past its optimum, ends worse than it was.
struct BestModel {
    /// Where the model is kept.
    file: PathBuf,
    /// The iteration and test NLL of the model in `file`, if any.
    best: Option<(u64, f64)>,
    /// The first error writing `file` (training goes on without it).
    failed: Option<String>,
}

impl BestModel {
    /// Keeps the best model in `file`. A resumed run whose `file` exists starts from the
    /// training point written into it (a run killed after writing it may have logged
    /// nothing since its checkpoint); a file of an older odeflow without one, from the best
    /// test NLL of `log` (the rows up to the run's state).
    fn new(file: &Path, resume: bool, log: &str) -> Self {
        let best = if resume && file.exists() {
            match read_training_point(file) {
                Ok(Some(at)) => Some((at.iteration, at.test_nll)),
                _ => best_logged_test_nll(log),
            }
        } else {
            None
        };
        BestModel { file: file.to_path_buf(), best, failed: None }
    }

    /// After an evaluation of the test NLL `nll` at `iteration`: writes `model` if `nll` is
    /// finite and below the best so far (the earliest model keeps a tie).
    fn offer(&mut self, iteration: u64, nll: f64, model: ModelView<'_>) {
        if !nll.is_finite() || self.best.is_some_and(|(_, b)| nll >= b) || self.failed.is_some() {
            return;
        }
        match model.save_at(&self.file, TrainingPoint { iteration, test_nll: nll }) {
            Ok(()) => self.best = Some((iteration, nll)),
            Err(e) => self.failed = Some(e.to_string()),
        }
    }
}

/// The iteration and value of the lowest finite test NLL in a training log (the earliest
/// of equal ones), if it has one.
fn best_logged_test_nll(log: &str) -> Option<(u64, f64)> {
    let mut best: Option<(u64, f64)> = None;
    for row in log.lines().skip(1) {
        let mut fields = row.split(',');
        let it = fields.next().and_then(|f| f.parse::<u64>().ok());
        let nll = fields.nth(2).and_then(|f| f.parse::<f64>().ok());
        if let (Some(it), Some(v)) = (it, nll) {
            if v.is_finite() && best.is_none_or(|(_, b)| v < b) {
                best = Some((it, v));
            }
        }
    }
    best
}

/// The NLL of the first batch in a training log (its first row's `nll`), if it has one.
fn first_logged_nll(log: &str) -> Option<f64> {
    let row = log.lines().nth(1)?;
    row.split(',').nth(2)?.parse().ok()
}

/// Trains to `--iterations`, showing a progress bar (with `--quiet`, a line per test NLL
/// instead) and appending a row per iteration to `log`. Ctrl-C stops the training after the
/// iteration at hand (a second one exits at once). Returns what the trainer returned, and
/// the NLL of this run's first batch (its loss without regularizers), if it trained one.
fn run_with_progress(
    trainer: &mut Trainer,
    a: &TrainArgs,
    log: &mut String,
    best: &mut BestModel,
) -> (Result<RunSummary, Error>, Option<f64>) {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while saving falls back to the default (immediate exit).
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    let bar = if a.quiet { ProgressBar::hidden() } else { ProgressBar::new(a.iterations) };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(trainer.iteration());
    let mut last_test = None;
    let mut first_nll = None;
    let result = trainer.run(|p, model| {
        first_nll.get_or_insert(p.nll);
        if let Some(t) = p.test_nll {
            last_test = Some(t);
            best.offer(p.iteration, t, model);
            if a.quiet {
                println!("iteration {}: test NLL {}", p.iteration, loss_text(t));
            }
        }
        bar.set_message(progress_message(p, last_test));
        bar.set_position(p.iteration);
        log.push_str(&log_row(p));
        if stop.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    bar.finish();
    (result, first_nll)
}

/// The progress bar's message after an iteration: its loss, the last test NLL (`-` before
/// the first), the evaluations of the forward and backward solves, and the iteration rate.
fn progress_message(p: &Progress, last_test: Option<f64>) -> String {
    let rate = if p.iter_time.as_secs_f64() > 0.0 { 1.0 / p.iter_time.as_secs_f64() } else { 0.0 };
    format!(
        "loss {} | test NLL {} | NFE {}/{} | {rate:.1} it/s",
        loss_text(p.loss),
        last_test.map_or("-".to_string(), loss_text),
        p.nfe_forward,
        p.nfe_backward
    )
}

/// An iteration's row of train_log.csv, in the columns of [`LOG_HEADER`] (the test NLL empty
/// where none was evaluated, the blocks' integration times separated by `;`).
fn log_row(p: &Progress) -> String {
    // first_logged_nll reads the nll column back.
    let t_end: Vec<String> = p.t_end.iter().map(|t| t.to_string()).collect();
    format!(
        "{},{},{},{},{},{},{},{},{}\n",
        p.iteration,
        p.loss,
        p.nll,
        p.test_nll.map_or(String::new(), |t| t.to_string()),
        p.nfe_forward,
        p.nfe_backward,
        p.iter_time.as_secs_f64(),
        p.elapsed.as_secs_f64(),
        t_end.join(";")
    )
}

/// Prints the summary line of a run (trained or stopped, its last test NLL, the files
/// written), and a warning if the test NLL ended above the NLL of the run's first batch
/// ([`went_the_wrong_way`]).
fn report(summary: &RunSummary, first_nll: Option<f64>, best: &BestModel, folder: &RunFolder) {
    println!(
        "{} at iteration {} in {:.1} s{}; wrote {}, {}, {}",
        if summary.stopped { "stopped (state saved; continue with --resume)" } else { "trained" },
        summary.iteration,
        summary.elapsed.as_secs_f64(),
        summary
            .last_test
            .map_or(String::new(), |(i, t)| format!(", test NLL {} (iteration {i})", loss_text(t))),
        folder.model_file.display(),
        folder.state_file.display(),
        folder.log_file.display()
    );
    if let Some((it, nll)) = best.best {
        println!("best test NLL {} at iteration {it}: {}", loss_text(nll), best.file.display());
    }
    if let Some(e) = &best.failed {
        eprintln!("odeflow: warning: the best model was not kept: {e}");
    }
    if let (Some(start), Some((_, end))) = (first_nll, summary.last_test) {
        if went_the_wrong_way(start, end) {
            eprintln!(
                "odeflow: warning: the test NLL ended at {}, above the NLL of this run's first \
                 batch ({}): the training diverged; a new run with a smaller --lr may help",
                loss_text(end),
                loss_text(start)
            );
        }
    }
}

/// Whether a run whose first batch's NLL (its mean, without regularizers) was `start` and
/// whose last test NLL is `end` made its model worse: `end` above `start` by more than
/// 1 + 5% of |start| nats per point (beyond the two estimates' sampling noise, which grows
/// with the spread of the NLL, and so with its size), or not a number. Maximum likelihood
/// training that works lowers the NLL; this is what a too-large learning rate does.
fn went_the_wrong_way(start: f64, end: f64) -> bool {
    end.is_nan() || end > start + 1.0 + 0.05 * start.abs()
}

/// Writes the figures of a trained run into `out`: for `dim` = 2 the model's (beside the
/// test set, if any), then the training curves of `log` (training.png).
fn write_figures(
    trainer: &Trainer,
    dim: usize,
    test: Option<&Dataset<f64>>,
    log: &str,
    out: &Path,
) -> CliResult {
    if dim == 2 {
        let shown = test.map_or(&[][..], |t| t.as_slice());
        let figures = ModelFigures {
            data: test.map(|t| t.as_slice()),
            range: plot_range(shown),
            ..Default::default()
        };
        let written = match trainer {
            Trainer::Cnf(t) => figures.write(t.cnf(), out)?,
            Trainer::Flow(t, _) => figures.write_flow(t.model(), out)?,
        };
        for p in written {
            println!("wrote {}", p.display());
        }
    }
    let path = write_training_curves(log, out, "png")?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_logged_nll_is_the_first_rows() {
        let log =
            format!("{LOG_HEADER}1,6.5,6.25,,14,14,0.1,0.1,0.5\n2,1e66,1e66,,14,14,0.1,0.2,0.5\n");
        assert_eq!(first_logged_nll(&log), Some(6.25));
        assert_eq!(first_logged_nll(LOG_HEADER), None);
        assert_eq!(first_logged_nll(""), None);
    }

    #[test]
    fn the_best_logged_test_nll_is_the_lowest_finite_and_earliest() {
        let row = |i: u64, t: &str| format!("{i},3,3,{t},14,14,0.1,0.1,0.5\n");
        let log = [row(1, ""), row(2, "3.5"), row(3, "NaN"), row(4, "3.25"), row(5, "3.25")];
        let log = format!("{LOG_HEADER}{}", log.concat());
        assert_eq!(best_logged_test_nll(&log), Some((4, 3.25)));
        assert_eq!(best_logged_test_nll(&format!("{LOG_HEADER}{}", row(1, "inf"))), None);
        assert_eq!(best_logged_test_nll(LOG_HEADER), None);
    }

    #[test]
    fn a_run_went_the_wrong_way_when_its_test_nll_ends_well_above_its_start() {
        assert!(!went_the_wrong_way(6.0, 3.1)); // trained
        assert!(!went_the_wrong_way(6.0, 7.2)); // within 1 + 5% of 6 (sampling noise)
        assert!(went_the_wrong_way(6.0, 7.4));
        assert!(went_the_wrong_way(6.0, 1e66) && went_the_wrong_way(6.0, f64::NAN));
        assert!(went_the_wrong_way(6.0, f64::INFINITY));
        // The margin follows the NLL's size, negative NLLs (densities above 1) included.
        assert!(!went_the_wrong_way(-100.0, -95.5) && went_the_wrong_way(-100.0, -93.0));
        assert!(!went_the_wrong_way(91.0, 96.0) && went_the_wrong_way(91.0, 97.0));
    }
}
