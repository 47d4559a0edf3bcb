//! The odeflow command line: train, evaluate, sample, plot and benchmark continuous
//! normalizing flows and discrete flows (`train --flow realnvp|nice|maf|nsf|iaf|glow|planar|
//! radial`), and hybrids of RealNVP couplings with a trainable CNF block (`--flow realnvp+cnf`).
//!
//! Thin by design: it parses arguments, calls the library, and reports. Every error is
//! printed as one message naming the problem, with exit code 1 (2 for usage errors); files
//! are written atomically, so a failed command leaves existing outputs as they were.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use odeflow::cnf::{Cnf, CnfConfig, Steps};
use odeflow::field::Mlp;
use odeflow::io::{load_model, Model};
use odeflow::plot::ModelFigures;
use odeflow::solvers::{problems, Method, OdeSystem, SolveOptions, Stats};
use odeflow::workprecision::{work_precision, write_all, Setting};
use odeflow::Error;
use rand::SeedableRng;

mod figures;
mod inputs;
mod run_folder;
mod train;
mod train_args;
mod trainer;

use figures::{plot_range, write_training_curves};
use inputs::{
    adaptive_method, check_memory, count, count2, create_dir, distinct_output,
    output_folder_exists, points_from, positive, relative_tolerance, repeats, solve_bytes, status,
    table_format, training_log, with_path, write_table,
};
use train::train;
use train_args::TrainArgs;

#[derive(Parser)]
#[command(
    name = "odeflow",
    version,
    about = "Continuous normalizing flows, discrete flows and neural ODEs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a CNF, or with --flow a flow model, by maximum likelihood (with no arguments:
    /// a CNF on 8gaussians, figures to ./out).
    Train(Box<TrainArgs>),
    /// Log-densities of points under a model (CSV out: one log p per point).
    Logprob(LogprobArgs),
    /// Draw points from a model (CSV or .npy by the output's extension).
    Sample(SampleArgs),
    /// Figures of a 2-D model: density beside data, samples, and for a CNF trajectories and
    /// an animated GIF.
    Plot(PlotArgs),
    /// Work-precision table and diagram for solver methods and tolerances.
    Bench(BenchArgs),
}

/// Solver settings that override those saved in the model (CNF models and the CNF block of
/// a realnvp+cnf flow; a discrete flow solves no ODE, and ignores them).
#[derive(Args, Clone)]
struct SolverArgs {
    /// Solver method, an adaptive one (bosh3, dopri5, tsit5, dop853); CNF models and CNF
    /// blocks only, like --rtol and --atol.
    #[arg(long, value_parser = adaptive_method)]
    method: Option<Method>,
    /// Relative tolerance (finite, at least 2.2e-16: the machine epsilon of f64).
    #[arg(long, value_parser = relative_tolerance)]
    rtol: Option<f64>,
    /// Absolute tolerance (finite, > 0).
    #[arg(long, value_parser = positive)]
    atol: Option<f64>,
    /// Step-size rules: hairer or peers (see `odeflow train --help`).
    #[arg(long)]
    steps: Option<Steps>,
}

#[derive(Args)]
struct LogprobArgs {
    /// Model file (safetensors, from `odeflow train`: a CNF or a discrete flow).
    #[arg(long)]
    model: PathBuf,
    /// Points: CSV (one point per line, optional header) or .npy [n, d]; `-` reads them from
    /// standard input.
    #[arg(long)]
    input: PathBuf,
    /// Output: CSV (column `log_prob`; .csv, .txt or no extension) or .npy (shape [n]); `-`
    /// writes CSV to standard output.
    #[arg(long, default_value = "logprob.csv")]
    output: PathBuf,
    #[command(flatten)]
    solver: SolverArgs,
}

#[derive(Args)]
struct SampleArgs {
    /// Model file (a CNF or a discrete flow).
    #[arg(long)]
    model: PathBuf,
    /// Number of points.
    #[arg(short, long, default_value_t = 1000, value_parser = count)]
    n: usize,
    /// Output file: .csv (or .txt, or no extension) or .npy; `-` writes CSV to standard output.
    #[arg(long, default_value = "samples.csv")]
    output: PathBuf,
    /// Seed of the base draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the log-density of each sample (a column `log_prob` in CSV).
    #[arg(long)]
    with_log_prob: bool,
    #[command(flatten)]
    solver: SolverArgs,
}

#[derive(Args)]
struct PlotArgs {
    /// Model file (a CNF or a discrete flow).
    #[arg(long)]
    model: PathBuf,
    /// Data to show beside the model (CSV or .npy; `-`: standard input).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Half-width of the plotted square, > 0 (default: from the data, else 4).
    #[arg(long, value_parser = positive)]
    range: Option<f64>,
    /// Grid points per axis of the density (at least 2).
    #[arg(long, default_value_t = 120, value_parser = count2)]
    grid: usize,
    /// Number of samples shown (at least 1).
    #[arg(long, default_value_t = 2000, value_parser = count)]
    samples: usize,
    /// Seed of the samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image format of the figures: png or svg (the animation is always a GIF).
    #[arg(long, default_value = "png", value_parser = ["png", "svg"])]
    format: String,
    /// A training log (`train_log.csv` of `odeflow train`) to draw the training curves of
    /// (default: the one beside the model, if any).
    #[arg(long)]
    log: Option<PathBuf>,
    #[command(flatten)]
    solver: SolverArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Built-in problem: arenstorf (one period), lorenz (t = 1), kepler (one orbit, e = 0.5),
    /// or `model` (the log-density solve of --model on --points).
    #[arg(long, default_value = "arenstorf")]
    problem: String,
    /// Model file (for --problem model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Points (for --problem model; default: 1000 samples of the model).
    #[arg(long)]
    points: Option<PathBuf>,
    /// Methods, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "bosh3,dopri5,tsit5,dop853")]
    methods: Vec<Method>,
    /// Tolerances (rtol = atol) for adaptive methods, comma-separated (each at least
    /// 2.2e-16, the machine epsilon of f64).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1e-3,1e-4,1e-5,1e-6,1e-7,1e-8,1e-9,1e-10",
        value_parser = relative_tolerance
    )]
    tols: Vec<f64>,
    /// Step counts for fixed-step methods, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,300,1000,3000,10000",
        value_parser = count
    )]
    steps: Vec<usize>,
    /// Runs per point (the best time is kept; 1 to 1000).
    #[arg(long, default_value_t = 3, value_parser = repeats)]
    repeats: usize,
    /// Output folder (work_precision.csv, .json, .png, .svg).
    #[arg(long, default_value = "out")]
    out: PathBuf,
}

fn main() -> ExitCode {
    // Writing to a closed pipe (`odeflow bench | head -1`) ends the process quietly, as for
    // any Unix filter, instead of panicking in `println!`.
    #[cfg(unix)]
    // SAFETY: the first call in main, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The options given on the command line (not defaulted), for `train --resume`.
    let given: Vec<String> = match matches.subcommand() {
        Some(("train", m)) => m
            .ids()
            .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
            .map(|id| id.to_string())
            .collect(),
        _ => Vec::new(),
    };
    let result = match cli.command {
        Command::Train(a) => train(*a, &given),
        Command::Logprob(a) => logprob(a),
        Command::Sample(a) => sample(a),
        Command::Plot(a) => plot(a),
        Command::Bench(a) => bench(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut shown = e.to_string();
            eprintln!("odeflow: error: {shown}");
            let mut source = std::error::Error::source(&*e);
            while let Some(s) = source {
                // Most messages already end with their cause's: print only what is new.
                let text = s.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                    shown = text;
                }
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

/// Loads a model of either kind and applies the solver overrides (to a CNF, or to the CNF
/// block of a flow, rebuilt from its spec with the same θ; a discrete flow has no solver).
fn model(path: &Path, solver: &SolverArgs) -> Result<Model<f64>, Box<dyn std::error::Error>> {
    // (A discrete flow solves no ODE: the overrides, checked as they are parsed, are not used.)
    let m = load_model::<f64>(path).map_err(|e| with_path(path, e))?;
    with_solver(m, solver).map_err(|e| with_path(path, e))
}

/// `m` with the solver overrides applied.
fn with_solver(mut m: Model<f64>, solver: &SolverArgs) -> Result<Model<f64>, Error> {
    if let Model::Flow(spec, flow) = &mut m {
        if let Some(cnf) = spec.cnf.as_mut() {
            cnf.method = solver.method.unwrap_or(cnf.method);
            cnf.rtol = solver.rtol.unwrap_or(cnf.rtol);
            cnf.atol = solver.atol.unwrap_or(cnf.atol);
            cnf.steps = solver.steps.unwrap_or(cnf.steps);
            let mut rebuilt = spec.build::<f64>(0)?;
            rebuilt.params_mut().copy_from_slice(flow.params());
            *flow = rebuilt;
        }
    }
    if let Model::Cnf(cnf) = &mut m {
        let mut cfg: CnfConfig<f64> = cnf.config().clone();
        if let Some(method) = solver.method {
            cfg.method = method;
        }
        if let Some(r) = solver.rtol {
            cfg.rtol = r;
        }
        if let Some(a) = solver.atol {
            cfg.atol = a;
        }
        if let Some(steps) = solver.steps {
            steps.apply(&mut cfg);
        }
        cnf.set_config(cfg)?;
    }
    Ok(m)
}

/// What the summary line calls a model without solver statistics.
fn flow_label(m: &Model<f64>) -> &'static str {
    match m {
        Model::Flow(spec, _) if spec.cnf.is_some() => "flow with a CNF block",
        _ => "discrete flow",
    }
}

fn stats_line(what: &str, n: usize, s: Option<&Stats>, label: &str) -> String {
    match s {
        Some(s) => format!(
            "{what} {n} points: {} function evaluations, {} steps accepted, {} rejected",
            s.n_rhs, s.n_accepted, s.n_rejected
        ),
        None => format!("{what} {n} points ({label})"),
    }
}

fn logprob(a: LogprobArgs) -> CliResult {
    table_format(&a.output)?;
    distinct_output(&a.input, &a.output)?;
    output_folder_exists(&a.output)?;
    let m = model(&a.model, &a.solver)?;
    let points = points_from(&a.input, Some(m.dim()))?;
    let (logp, stats) = m.log_prob(&points.data)?;
    write_table(&a.output, &["log_prob"], &[logp.len()], &logp)?;
    let line = stats_line("log-density of", points.rows, stats.as_ref(), flow_label(&m));
    status(&a.output, &format!("{line}; {}", mean_text(&logp)));
    Ok(())
}

/// The mean of the log-densities and its standard error (`s/√n`, `s` the sample standard
/// deviation): the test NLL of a data file is minus the mean.
fn mean_text(logp: &[f64]) -> String {
    let n = logp.len() as f64;
    let mean = logp.iter().sum::<f64>() / n;
    if logp.len() < 2 {
        return format!("mean log p {mean:.4}");
    }
    let var = logp.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    format!("mean log p {mean:.4} (standard error {:.4})", (var / n).sqrt())
}

fn sample(a: SampleArgs) -> CliResult {
    table_format(&a.output)?;
    output_folder_exists(&a.output)?;
    let cnf = model(&a.model, &a.solver)?;
    let d = cnf.dim();
    check_memory("-n", a.n, solve_bytes(d))?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let (data, cols, stats) = if a.with_log_prob {
        let (x, logp, stats) = cnf.sample_with_log_prob(a.n, &mut rng)?;
        let rows: Vec<f64> =
            x.chunks(d).zip(&logp).flat_map(|(p, l)| p.iter().copied().chain([*l])).collect();
        (rows, d + 1, stats)
    } else {
        let (x, stats) = cnf.sample(a.n, &mut rng)?;
        (x, d, stats)
    };
    let mut names: Vec<String> = (0..d).map(|i| format!("x{i}")).collect();
    if a.with_log_prob {
        names.push("log_prob".into());
    }
    let header: Vec<&str> = names.iter().map(String::as_str).collect();
    write_table(&a.output, &header, &[a.n, cols], &data)?;
    status(&a.output, &stats_line("sampled", a.n, stats.as_ref(), flow_label(&cnf)));
    Ok(())
}

fn plot(a: PlotArgs) -> CliResult {
    let cnf = model(&a.model, &a.solver)?;
    let d = cnf.dim();
    if d != 2 {
        return Err(format!("{}: a {d}-D model; plot draws 2-D models", a.model.display()).into());
    }
    check_memory("--samples", a.samples, solve_bytes(d))?;
    let cells =
        a.grid.checked_mul(a.grid).ok_or_else(|| format!("--grid {}: too large", a.grid))?;
    check_memory(
        &format!("--grid {} ({cells} density points), that is", a.grid),
        cells,
        solve_bytes(d),
    )?;
    if let Some(h) = a.range.filter(|h| !(4.0 * h * h).is_finite()) {
        return Err(format!("--range {h:e}: too large (the plotted area overflows)").into());
    }
    // The training log first: a bad --log fails before any figure is written; a log beside
    // the model (read by default) that is not one is skipped with a warning.
    let beside = a.model.parent().map(|d| d.join("train_log.csv")).filter(|p| p.exists());
    let log = match (&a.log, beside) {
        (Some(path), _) => Some(training_log(path)?),
        (None, Some(path)) => match training_log(&path) {
            Ok(text) => Some(text),
            Err(e) => {
                eprintln!("odeflow: warning: no training curves: {e}");
                None
            }
        },
        (None, None) => None,
    };
    let data = a.data.as_ref().map(|p| points_from(p, Some(d))).transpose()?;
    let range = match a.range {
        Some(half) => (-half, half),
        None => plot_range(data.as_ref().map_or(&[][..], |d| d.data.as_slice())),
    };
    create_dir(&a.out)?;
    let figures = ModelFigures {
        data: data.as_ref().map(|d| d.data.as_slice()),
        range,
        grid: a.grid,
        samples: a.samples,
        seed: a.seed,
        format: if a.format == "svg" { "svg" } else { "png" },
        ..Default::default()
    };
    let mut written = match &cnf {
        Model::Cnf(c) => figures.write(c, &a.out)?,
        Model::Flow(_, f) => figures.write_flow(f, &a.out)?,
    };
    if let Some(log) = log {
        written.push(write_training_curves(&log, &a.out, figures.format)?);
    }
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn bench(a: BenchArgs) -> CliResult {
    // Fixed steps beyond the solver's step limit would fail after the other rows' work.
    let max_steps = SolveOptions::<f64>::default().max_steps;
    if let Some(n) = a.steps.iter().find(|&&n| n > max_steps) {
        return Err(
            format!("--steps {n}: more than the solver's limit of {max_steps} steps").into()
        );
    }
    let (title, rows) = match a.problem.as_str() {
        "model" => {
            let path = a.model.as_ref().ok_or("--problem model needs --model")?;
            let cnf = match model(
                path,
                &SolverArgs { method: None, rtol: None, atol: None, steps: None },
            )? {
                Model::Cnf(c) => c,
                Model::Flow(spec, _) => {
                    let what = if spec.cnf.is_some() {
                        "a flow model (its CNF block is not benchmarked on its own)"
                    } else {
                        "a discrete flow, which solves no ODE"
                    };
                    return Err(format!(
                        "{}: {what}; --problem model needs a CNF model of odeflow train",
                        path.display()
                    )
                    .into());
                }
            };
            let x = match &a.points {
                Some(p) => {
                    let x = points_from(p, Some(cnf.dim()))?;
                    if x.rows == 0 {
                        return Err(format!("{}: no points", p.display()).into());
                    }
                    x.data
                }
                None => cnf.sample(1000, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0))?.0,
            };
            let reference = with_settings(&cnf, Method::Dop853, 1e-12)?.log_prob(&x)?.0;
            let rows =
                work_precision(&a.methods, &a.tols, &a.steps, a.repeats, &reference, |m, s| {
                    let solver = match s {
                        Setting::Tolerance(t) => with_settings(&cnf, m, t)?,
                        Setting::Steps(n) => {
                            let mut c = with_settings(&cnf, m, 1e-6)?;
                            let mut cfg = c.config().clone();
                            cfg.options.h_fixed = Some(c.total_time() / n as f64);
                            c.set_config(cfg)?;
                            c
                        }
                    };
                    solver.log_prob(&x)
                })?;
            (format!("log-density of {} points ({})", x.len() / cnf.dim(), path.display()), rows)
        }
        "arenstorf" => builtin(
            "arenstorf",
            problems::Arenstorf,
            problems::Arenstorf::PERIOD,
            &problems::Arenstorf::Y0,
            &a,
        )?,
        "lorenz" => builtin("lorenz", problems::Lorenz, 1.0, &problems::Lorenz::Y0, &a)?,
        "kepler" => {
            let k = problems::Kepler { e: 0.5 };
            let y0 = k.exact(0.0);
            builtin("kepler (e = 0.5)", k, 2.0 * std::f64::consts::PI, &y0, &a)?
        }
        other => {
            return Err(
                format!("unknown problem {other:?} (arenstorf, lorenz, kepler, model)").into()
            )
        }
    };
    for r in &rows {
        println!(
            "{:>8} {:>14} max error {:9.2e}  NFE {:>7}  {:9.3e} s",
            r.method.name(),
            r.setting.label(),
            r.max_error,
            r.stats.n_rhs,
            r.seconds
        );
    }
    create_dir(&a.out)?;
    for p in write_all(&a.out, "work_precision", &title, &rows)? {
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// A copy of the model's CNF with another method and tolerance.
fn with_settings(
    cnf: &Cnf<f64, Mlp<f64>>,
    method: Method,
    tol: f64,
) -> Result<Cnf<f64, Mlp<f64>>, Error> {
    let mut c = cnf.clone();
    let cfg = CnfConfig { method, rtol: tol, atol: tol, ..cnf.config().clone() };
    c.set_config(cfg)?;
    Ok(c)
}

/// The work-precision rows of a built-in problem from 0 to `t1`, against a DOP853 solve at
/// rtol = atol = 1e-14.
fn builtin<S: OdeSystem<f64>>(
    name: &str,
    mut sys: S,
    t1: f64,
    y0: &[f64],
    a: &BenchArgs,
) -> Result<(String, Vec<odeflow::workprecision::Row>), Box<dyn std::error::Error>> {
    let mut run = |m: Method, opts: &SolveOptions<f64>| {
        odeflow::solvers::solve(m, &mut sys, 0.0, t1, y0, opts)
            .map_err(|source| Error::Solve { block: 0, source })
    };
    // A built-in problem has no blocks: its failures name the problem instead.
    let named = |e: Error| -> Box<dyn std::error::Error> {
        match e {
            Error::Solve { source, .. } => format!("{name}: {source}").into(),
            e => e.into(),
        }
    };
    let (reference, _) = run(Method::Dop853, &SolveOptions::tol(1e-14, 1e-14)).map_err(named)?;
    let rows =
        work_precision(&a.methods, &a.tols, &a.steps, a.repeats, &reference, |m, s| match s {
            Setting::Tolerance(t) => run(m, &SolveOptions::tol(t, t)),
            Setting::Steps(n) => run(m, &SolveOptions::fixed(t1 / n as f64)),
        })
        .map_err(named)?;
    Ok((format!("{name} (t = 0 to {t1:.3})"), rows))
}
