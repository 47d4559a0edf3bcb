//! The odeflow command line: train, evaluate, sample, plot and benchmark continuous
//! normalizing flows and discrete flows (`train --flow realnvp|nice|maf|nsf|iaf|glow|planar|
//! radial`), and hybrids of RealNVP couplings with a trainable CNF block (`--flow realnvp+cnf`).
//!
//! Thin by design: it parses arguments, calls the library, and reports. Every error is
//! printed as one message naming the problem, with exit code 1 (2 for usage errors); files
//! are written atomically, so a failed command leaves existing outputs as they were.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use odeflow::adjoint::{AdjointConfig, Strategy};
use odeflow::cnf::{Cnf, CnfBlock, CnfConfig, Steps};
use odeflow::field::{Mlp, MlpConfig};
use odeflow::flows::{CnfBlockSpec, FlowKind, FlowSpec};
use odeflow::io::{load_model, save_cnf, save_flow, write_atomically, write_csv, write_npy, Model};
use odeflow::plot::{render, ModelFigures, TrainingCurves};
use odeflow::solvers::{problems, Method, OdeSystem, SolveOptions, Stats};
use odeflow::trace::TraceEstimator;
use odeflow::train::{
    AdamConfig, CnfTrainConfig, CnfTrainer, DataSource, Dataset, FlowTrainConfig, FlowTrainer,
    Progress, RunSummary, Toy, TrainState,
};
use odeflow::workprecision::{work_precision, write_all, Setting};
use odeflow::Error;
use rand::SeedableRng;

mod inputs;

use inputs::{
    adaptive_method, check_memory, count, count2, create_dir, distinct_output, loss_text,
    output_folder_exists, points_from, positive, repeats, solve_bytes, status, table_format,
    training_log, with_path, TableFormat,
};

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
    /// Relative tolerance (finite, > 0).
    #[arg(long, value_parser = positive)]
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
    /// Points: CSV (one point per line, optional header) or .npy [n, d].
    #[arg(long)]
    input: PathBuf,
    /// Output: CSV (column `log_prob`; .csv, .txt or no extension) or .npy (shape [n]).
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
    /// Output file: .csv (or .txt, or no extension) or .npy.
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
    /// Data to show beside the model (CSV or .npy).
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
    /// Tolerances (rtol = atol) for adaptive methods, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1e-3,1e-4,1e-5,1e-6,1e-7,1e-8,1e-9,1e-10",
        value_parser = positive
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
    let format = table_format(&a.output)?;
    distinct_output(&a.input, &a.output)?;
    output_folder_exists(&a.output)?;
    let m = model(&a.model, &a.solver)?;
    let points = points_from(&a.input, Some(m.dim()))?;
    let (logp, stats) = m.log_prob(&points.data)?;
    match format {
        TableFormat::Npy => write_npy(&a.output, &[logp.len()], &logp)?,
        TableFormat::Csv => write_csv(&a.output, &["log_prob"], &logp)?,
    }
    status(&a.output, &stats_line("log-density of", points.rows, stats.as_ref(), flow_label(&m)));
    Ok(())
}

fn sample(a: SampleArgs) -> CliResult {
    let format = table_format(&a.output)?;
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
    if format == TableFormat::Npy {
        write_npy(&a.output, &[a.n, cols], &data)?;
    } else {
        let mut names: Vec<String> = (0..d).map(|i| format!("x{i}")).collect();
        if a.with_log_prob {
            names.push("log_prob".into());
        }
        let header: Vec<&str> = names.iter().map(String::as_str).collect();
        write_csv(&a.output, &header, &data)?;
    }
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
        let curves = training_curves(&log);
        let path = a.out.join(format!("training.{}", figures.format));
        render(
            &path,
            (1100, 420),
            &TrainingCurves { loss: &curves.0, test_nll: &curves.1, nfe: &curves.2 },
        )?;
        written.push(path);
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

#[derive(Args, Clone, serde::Serialize, serde::Deserialize)]
struct TrainArgs {
    /// Data: a toy set (8gaussians, swissroll, pinwheel, circles, moons, 2spirals,
    /// checkerboard, rings) or a file of points (CSV or .npy).
    #[arg(long, default_value = "8gaussians")]
    data: String,
    /// Fraction of a data file held out for the test NLL.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Train a flow model instead of a CNF: realnvp (affine couplings), nice (additive
    /// couplings), maf, nsf (spline couplings), iaf (affine), glow (LU 1×1 mixing + affine
    /// coupling per step), planar, radial, all shaped by --layers and --hidden (planar and
    /// radial use no --hidden); or realnvp+cnf: --layers affine couplings followed, at the
    /// data end, by one trainable CNF block whose MLP takes --hidden, --activation, --time,
    /// --blocks, --t-end, --train-t, --method, --rtol, --atol, --steps and the --adjoint
    /// options (exact trace only). --kinetic and --jacobian are refused with any flow, and
    /// the CNF options with the purely discrete kinds (--trace other than exact, --train-t,
    /// --adjoint-method, --seminorm, --forward-seminorm; the others are not used there).
    #[arg(long)]
    #[serde(default)]
    flow: Option<String>,
    /// Layers of a flow (couplings, MAF/IAF layers, Glow steps, planar or radial maps; with
    /// --flow).
    #[arg(long, default_value_t = 4, value_parser = count)]
    #[serde(default = "default_layers")]
    layers: usize,
    /// Hidden widths of each CNF block's MLP, or of each flow layer's conditioner,
    /// comma-separated (each at least 1).
    #[arg(long, value_delimiter = ',', default_value = "64,64,64", value_parser = count)]
    hidden: Vec<usize>,
    /// Activation: tanh, softplus, silu, elu.
    #[arg(long, default_value = "tanh")]
    activation: String,
    /// Time conditioning: concatsquash, concat, ignore.
    #[arg(long, default_value = "concatsquash")]
    time: String,
    /// Number of CNF blocks (at least 1).
    #[arg(long, default_value_t = 1, value_parser = count)]
    blocks: usize,
    /// Integration time T of each block.
    #[arg(long, default_value_t = 0.5)]
    t_end: f64,
    /// Learn T (as FFJORD's train_T, T = τ²).
    #[arg(long)]
    train_t: bool,
    /// Solver method, an adaptive one: bosh3, dopri5, tsit5, dop853.
    #[arg(long, default_value = "dopri5")]
    method: String,
    /// Relative tolerance of the training solves.
    #[arg(long, default_value_t = 1e-5)]
    rtol: f64,
    /// Absolute tolerance of the training solves.
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
    /// Step-size rules: hairer (Hairer's PI controller and first step) or peers (the
    /// elementary controller of torchdiffeq and first step of diffrax: on FFJORD's toy net
    /// 15% faster training to the same test NLL, less accurate per tolerance). Saved in the
    /// model.
    #[arg(long, default_value = "hairer")]
    #[serde(default)]
    steps: Steps,
    /// Divergence: exact, hutchinson-gaussian, hutchinson-rademacher.
    #[arg(long, default_value = "exact")]
    trace: String,
    /// Gradient strategy: backsolve, checkpointed, discrete.
    #[arg(long, default_value = "checkpointed")]
    adjoint: String,
    /// Relative tolerance of the adjoint's backward solve (default: --rtol), as torchdiffeq's
    /// adjoint_rtol. With --adjoint checkpointed the gradient's error follows the backward
    /// tolerances and the forward's set the loss's: on FFJORD's toy net, --rtol 5e-5
    /// --atol 5e-5 --adjoint-rtol 5e-6 --adjoint-atol 5e-6 gives a more accurate gradient
    /// than 1e-5 for both, with a quarter fewer forward evaluations. Not used by discrete.
    #[arg(long)]
    #[serde(default)]
    adjoint_rtol: Option<f64>,
    /// Absolute tolerance of the adjoint's backward solve (default: --atol).
    #[arg(long)]
    #[serde(default)]
    adjoint_atol: Option<f64>,
    /// Method of the adjoint's backward solve (default: --method; an adaptive one), as
    /// diffrax's BacksolveAdjoint(solver=…). Not used by discrete, which replays the
    /// forward's own steps.
    #[arg(long)]
    #[serde(default)]
    adjoint_method: Option<String>,
    /// Leave the parameter cotangent out of the backward solve's error norm (the seminorm of
    /// Kidger et al. 2021), so that the backward steps are chosen for the state and its
    /// cotangent alone. Off by default: on FFJORD's toy net it is not never-worse (fewer
    /// backward evaluations in 6 of 36 measured runs, as many in 17, more in 13); it pays
    /// where the parameter cotangent limits the backward steps. Not used by discrete.
    #[arg(long)]
    #[serde(default)]
    seminorm: bool,
    /// Leave the log-density out of the forward solve's error norm, so that its steps are
    /// chosen for z alone. Meant for --adjoint checkpointed, whose gradient reads only z(t)
    /// from the forward: on FFJORD's toy net after 300 iterations, 38 instead of 50 forward
    /// evaluations at 1e-5 with the gradient as accurate, the logged loss less so. Backsolve
    /// and discrete gradients lose accuracy with it.
    #[arg(long)]
    #[serde(default)]
    forward_seminorm: bool,
    /// Kinetic-energy regularizer weight λ_K (RNODE): adds λ_K·mean ∫‖f‖² dt to the loss.
    #[arg(long, default_value_t = 0.0)]
    kinetic: f64,
    /// Jacobian-Frobenius regularizer weight λ_J (RNODE): adds λ_J·mean ∫‖J ε‖² dt to the loss
    /// (J = ∂f/∂z, ε the solve's Hutchinson noise; ∫‖J‖²_F with --trace exact).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    jacobian: f64,
    /// Training iterations (in total, counting those before a --resume).
    #[arg(long, default_value_t = 500)]
    iterations: u64,
    /// Points per batch.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Adam (coupled) weight decay.
    #[arg(long, default_value_t = 1e-5)]
    weight_decay: f64,
    /// Seed of the initial weights, the batches and the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Test NLL every this many iterations (0: never).
    #[arg(long, default_value_t = 100)]
    test_every: u64,
    /// Points of a toy set's test set (0: no test set).
    #[arg(long, default_value_t = 2048)]
    test_points: usize,
    /// Checkpoint (state + model) every this many iterations (0: only at the end).
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// Output folder: model.safetensors, train_state.bin, train_log.csv, run.json, figures.
    #[arg(long, default_value = "out")]
    #[serde(skip)]
    out: PathBuf,
    /// Continue the run saved in --out (its run.json settings; --iterations may extend it).
    #[arg(long)]
    #[serde(skip)]
    resume: bool,
    /// Start a new run in an --out that holds one, replacing it (without this, train
    /// refuses such a folder: use --resume to continue the run there).
    #[arg(long, conflicts_with = "resume")]
    #[serde(skip)]
    overwrite: bool,
    /// Skip the figures at the end.
    #[arg(long)]
    #[serde(skip)]
    no_plot: bool,
    /// No progress bar (one line per test evaluation instead).
    #[arg(long)]
    #[serde(skip)]
    quiet: bool,
    /// Not an option: the CRC-32 of a data file's points when the run started, which
    /// `--resume` compares with the file's now (runs saved before it have none).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_crc32: Option<u32>,
}

fn default_layers() -> usize {
    4
}

fn parse_or<T>(
    what: &'static str,
    value: &str,
    parsed: Option<T>,
) -> Result<T, Box<dyn std::error::Error>> {
    parsed.ok_or_else(|| format!("unknown {what} {value:?}").into())
}

/// Trains a CNF (or, with `--flow`, a discrete flow) and writes the model, the state, the log
/// and the figures.
fn train(mut a: TrainArgs, given: &[String]) -> CliResult {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let out = a.out.clone();
    let run_path = out.join("run.json");
    let state_path = out.join("train_state.bin");
    let model_path = out.join("model.safetensors");
    let log_path = out.join("train_log.csv");
    let resume = a.resume;
    // Held until the process ends: a resumed run's folder from here, a new run's from
    // `start_run` on.
    let mut _run_lock = None;
    if resume {
        _run_lock = lock_run(&out)?;
        // The run's settings come from its run.json; only the iteration count may change.
        let text = std::fs::read_to_string(&run_path)
            .map_err(|e| format!("{}: {e} (nothing to resume)", run_path.display()))?;
        let saved: TrainArgs =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", run_path.display()))?;
        // Options given again must say what the run has: a resumed run keeps its settings.
        let (now, then) = (serde_json::to_value(&a)?, serde_json::to_value(&saved)?);
        let same_data =
            || match (std::fs::canonicalize(&a.data), std::fs::canonicalize(&saved.data)) {
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
                "--{} with --resume: a resumed run keeps the settings in {} (only --iterations \
                 may change); start a new run in another --out to change them",
                id.replace('_', "-"),
                run_path.display()
            )
            .into());
        }
        let iterations = a.iterations;
        a = TrainArgs {
            out: a.out,
            resume: true,
            overwrite: false,
            no_plot: a.no_plot,
            quiet: a.quiet,
            iterations,
            ..saved
        };
    }

    let activation =
        parse_or("activation", &a.activation, odeflow::io::model::parse_activation(&a.activation))?;
    let time = parse_or("time conditioning", &a.time, odeflow::io::model::parse_time(&a.time))?;
    let trace = parse_or("trace", &a.trace, odeflow::io::model::parse_trace(&a.trace))?;
    let method = adaptive_method(&a.method).map_err(|e| format!("--method: {e}"))?;
    let adjoint_method = match &a.adjoint_method {
        Some(name) => {
            let m: Method = name.parse()?;
            if !m.is_adaptive() {
                return Err(format!(
                    "--adjoint-method {name}: the backward solve needs an adaptive method \
                     (no step size is given for a fixed-step one)"
                )
                .into());
            }
            Some(m)
        }
        None => None,
    };
    let strategy = match a.adjoint.as_str() {
        "backsolve" => Strategy::Backsolve,
        "checkpointed" => Strategy::Checkpointed,
        "discrete" => Strategy::Discrete,
        other => {
            return Err(
                format!("unknown adjoint {other:?} (backsolve, checkpointed, discrete)").into()
            )
        }
    };
    // Data: a toy set drawn fresh each iteration, or a file split into train and test.
    let (source, test) = match a.data.to_ascii_lowercase().parse::<Toy>() {
        Ok(toy) => {
            check_memory("--test-points", a.test_points, solve_bytes(2))?;
            (DataSource::Toy(toy), Dataset::toy(toy, a.test_points, a.seed.wrapping_add(1)))
        }
        Err(_) => {
            let path = PathBuf::from(&a.data);
            let path = path.as_path();
            if !path.exists() {
                return Err(format!(
                    "--data {:?}: no such file, nor a toy set ({})",
                    a.data,
                    Toy::ALL.map(|t| t.name()).join(", ")
                )
                .into());
            }
            // A new run keeps the file's full path, so that --resume finds it from any
            // working directory.
            if !resume {
                if let Ok(full) = std::fs::canonicalize(path) {
                    a.data = full.to_string_lossy().into_owned();
                }
            }
            let points = points_from(path, None)?;
            let crc = points_crc32(points.cols, &points.data);
            match a.data_crc32 {
                Some(saved) if resume && saved != crc => {
                    return Err(format!(
                        "--data {}: its points changed since the run started (CRC-32 {crc:08x}, \
                         {} says {saved:08x}); resume with the data the run was trained on, or \
                         start a new run",
                        path.display(),
                        run_path.display()
                    )
                    .into())
                }
                _ => a.data_crc32 = Some(crc),
            }
            let all = Dataset::new(points.cols, points.data).map_err(|e| with_path(path, e))?;
            let (tr, te) = all.split(a.test_fraction, a.seed).map_err(|e| with_path(path, e))?;
            (DataSource::Dataset { data: tr, seed: a.seed }, te)
        }
    };
    let dim = source.dim();
    check_memory("--batch", a.batch, solve_bytes(dim))?;
    // An empty test set (a tiny file, --test-fraction 0, --test-points 0) means none.
    let test = (!test.is_empty()).then_some(test);
    // A resumed run's state, with its path in a mismatch (the trainer knows no path).
    let state_error = |e: Error| -> Box<dyn std::error::Error> {
        match e {
            Error::StateFile { reason, .. } => format!(
                "{}: {reason} (do the run's settings and data still match its run.json?)",
                state_path.display()
            )
            .into(),
            e => e.into(),
        }
    };
    let checkpoint = (a.checkpoint_every > 0).then(|| state_path.clone());
    let mut trainer = match &a.flow {
        Some(name) => {
            let kind: FlowKind = name.parse()?;
            let cnf_flags = [
                ("--adjoint-method", a.adjoint_method.is_some()),
                ("--seminorm", a.seminorm),
                ("--forward-seminorm", a.forward_seminorm),
                ("--train-t", a.train_t),
            ];
            if let Some((flag, _)) =
                cnf_flags.iter().find(|(_, set)| *set && kind != FlowKind::RealNvpCnf)
            {
                return Err(format!(
                    "{flag} applies to a CNF (a CNF run or --flow realnvp+cnf), not to --flow \
                     {name}"
                )
                .into());
            }
            // RNODE's regularizers are integrated along a CNF run's own solve only.
            let regularizers = [("--kinetic", a.kinetic), ("--jacobian", a.jacobian)];
            if let Some((flag, _)) = regularizers.iter().find(|(_, w)| *w != 0.0) {
                return Err(format!("{flag} applies to a CNF run, not to --flow {name}").into());
            }
            if kind != FlowKind::RealNvpCnf && trace != TraceEstimator::Exact {
                return Err(format!(
                    "--trace {} applies to a CNF (a discrete flow has no divergence to \
                     estimate), not to --flow {name}",
                    a.trace
                )
                .into());
            }
            let mut spec = FlowSpec::new(kind, dim, a.layers, a.hidden.clone());
            if kind == FlowKind::RealNvpCnf {
                if trace != TraceEstimator::Exact {
                    return Err(format!(
                        "--flow {kind}: the CNF block of a flow model needs --trace exact \
                         (the density pass and its gradient must see the same noise), not {}",
                        a.trace
                    )
                    .into());
                }
                spec.cnf = Some(CnfBlockSpec {
                    hidden: a.hidden.clone(),
                    activation,
                    time,
                    // (`max`: a run.json of an older version may hold 0, trained as 1.)
                    blocks: a.blocks.max(1),
                    t_end: a.t_end,
                    train_t: a.train_t,
                    method,
                    rtol: a.rtol,
                    atol: a.atol,
                    adjoint: strategy,
                    adjoint_rtol: a.adjoint_rtol,
                    adjoint_atol: a.adjoint_atol,
                    steps: a.steps,
                    adjoint_method,
                    seminorm: a.seminorm,
                    forward_seminorm: a.forward_seminorm,
                });
            }
            let model = spec.build::<f64>(a.seed)?;
            let cfg = FlowTrainConfig {
                iterations: a.iterations,
                batch_size: a.batch,
                adam: AdamConfig { lr: a.lr, weight_decay: a.weight_decay, ..Default::default() },
                test_every: a.test_every,
                seed: a.seed,
                checkpoint: checkpoint.clone(),
                checkpoint_every: a.checkpoint_every.max(1),
                ..Default::default()
            };
            let tr = if resume {
                let state = TrainState::load(&state_path)?;
                FlowTrainer::resume(model, source, test.clone(), cfg, state).map_err(state_error)?
            } else {
                let tr = FlowTrainer::new(model, source, test.clone(), cfg)?;
                _run_lock = start_run(&out, &a)?;
                tr
            };
            Trainer::Flow(Box::new(tr), spec)
        }
        None => {
            let mlp_cfg =
                MlpConfig { dim, hidden: a.hidden.clone(), activation, time, ..Default::default() };
            // (`max`: a run.json of an older version may hold 0, trained as 1.)
            let blocks = (0..a.blocks.max(1))
                .map(|k| {
                    Ok(CnfBlock {
                        field: Mlp::new(&MlpConfig {
                            seed: a.seed.wrapping_add(k as u64),
                            ..mlp_cfg.clone()
                        })?,
                        t_end: a.t_end,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let mut solver =
                CnfConfig { method, rtol: a.rtol, atol: a.atol, trace, ..Default::default() };
            a.steps.apply(&mut solver);
            let mut adjoint = AdjointConfig::with_strategy(strategy).with_backward_tolerances(
                &solver,
                a.adjoint_rtol,
                a.adjoint_atol,
            );
            adjoint.method = adjoint_method;
            adjoint.seminorm = a.seminorm;
            adjoint.forward_seminorm = a.forward_seminorm;
            adjoint.validate()?;
            let cnf = Cnf::chain(blocks, solver)?;
            let cfg = CnfTrainConfig {
                iterations: a.iterations,
                batch_size: a.batch,
                adam: AdamConfig { lr: a.lr, weight_decay: a.weight_decay, ..Default::default() },
                train_t: a.train_t,
                kinetic: a.kinetic,
                jacobian: a.jacobian,
                test_every: a.test_every,
                seed: a.seed,
                checkpoint: checkpoint.clone(),
                checkpoint_every: a.checkpoint_every.max(1),
                adjoint,
                ..Default::default()
            };
            let tr = if resume {
                let state = TrainState::load(&state_path)?;
                CnfTrainer::resume(cnf, source, test.clone(), cfg, state).map_err(state_error)?
            } else {
                // Written once the settings are known to be valid: a refused command leaves
                // an earlier run's run.json as it was.
                let tr = CnfTrainer::new(cnf, source, test.clone(), cfg)?;
                _run_lock = start_run(&out, &a)?;
                tr
            };
            Trainer::Cnf(Box::new(tr))
        }
    };

    // The log keeps every iteration; a resumed run appends to the rows before its start.
    let mut log = if resume && log_path.exists() {
        std::fs::read_to_string(&log_path).map_err(|e| {
            format!(
                "cannot read the run's training log {}: {e} (move it away to resume without it)",
                log_path.display()
            )
        })?
    } else {
        String::new()
    };
    if log.is_empty() {
        log.push_str("iteration,loss,nll,test_nll,nfe_forward,nfe_backward,iter_seconds,elapsed_seconds,t_end\n");
    }
    let start_iter = trainer.iteration();
    if resume && start_iter >= a.iterations {
        println!(
            "the run in {} is at iteration {start_iter}, not below --iterations {}: nothing to \
             train (raise --iterations to continue it)",
            out.display(),
            a.iterations
        );
        return Ok(());
    }
    log = log
        .lines()
        .take_while(|l| {
            l.split(',').next().and_then(|i| i.parse::<u64>().ok()).is_none_or(|i| i <= start_iter)
        })
        .map(|l| format!("{l}\n"))
        .collect();

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
    bar.set_position(start_iter);
    let mut last_test = None;
    let mut first_loss = None;
    let result = trainer.run(|p| {
        first_loss.get_or_insert(p.loss);
        if let Some(t) = p.test_nll {
            last_test = Some(t);
            if a.quiet {
                println!("iteration {}: test NLL {}", p.iteration, loss_text(t));
            }
        }
        let rate =
            if p.iter_time.as_secs_f64() > 0.0 { 1.0 / p.iter_time.as_secs_f64() } else { 0.0 };
        bar.set_message(format!(
            "loss {:.4} | test NLL {} | NFE {}/{} | {rate:.1} it/s",
            p.loss,
            last_test.map_or("-".to_string(), |t: f64| format!("{t:.4}")),
            p.nfe_forward,
            p.nfe_backward
        ));
        bar.set_position(p.iteration);
        let t_end: Vec<String> = p.t_end.iter().map(|t| t.to_string()).collect();
        log.push_str(&format!(
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
        ));
        if stop.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    bar.finish();
    // Whatever happened, keep what was trained: the last good state, model and log.
    write_atomically(&log_path, |w| std::io::Write::write_all(w, log.as_bytes()))?;
    trainer.save(&state_path, &model_path)?;
    let summary = result?;
    println!(
        "{} at iteration {} in {:.1} s{}; wrote {}, {}, {}",
        if summary.stopped { "stopped (state saved; continue with --resume)" } else { "trained" },
        summary.iteration,
        summary.elapsed.as_secs_f64(),
        summary
            .last_test
            .map_or(String::new(), |(i, t)| format!(", test NLL {} (iteration {i})", loss_text(t))),
        model_path.display(),
        state_path.display(),
        log_path.display()
    );
    if let (Some(start), Some((_, end))) = (first_loss, summary.last_test) {
        if went_the_wrong_way(start, end) {
            eprintln!(
                "warning: the test NLL ended at {}, above this run's first loss ({}): the \
                 training diverged; a smaller --lr may help",
                loss_text(end),
                loss_text(start)
            );
        }
    }
    if summary.stopped || a.no_plot {
        return Ok(());
    }
    if dim == 2 {
        let shown = test.as_ref().map_or(&[][..], |t| t.as_slice());
        let figures = ModelFigures {
            data: test.as_ref().map(|t| t.as_slice()),
            range: plot_range(shown),
            ..Default::default()
        };
        let written = match &trainer {
            Trainer::Cnf(t) => figures.write(t.cnf(), &out)?,
            Trainer::Flow(t, _) => figures.write_flow(t.model(), &out)?,
        };
        for p in written {
            println!("wrote {}", p.display());
        }
    }
    let curves = training_curves(&log);
    let path = out.join("training.png");
    render(
        &path,
        (1100, 420),
        &TrainingCurves { loss: &curves.0, test_nll: &curves.1, nfe: &curves.2 },
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The trainer of either kind of model.
enum Trainer {
    /// A CNF of MLP blocks.
    Cnf(Box<CnfTrainer<f64, Mlp<f64>>>),
    /// A discrete flow and its spec (for the model file).
    Flow(Box<FlowTrainer<f64>>, FlowSpec),
}

impl Trainer {
    fn iteration(&self) -> u64 {
        match self {
            Trainer::Cnf(t) => t.iteration(),
            Trainer::Flow(t, _) => t.iteration(),
        }
    }

    fn run(
        &mut self,
        callback: impl FnMut(&Progress) -> ControlFlow<()>,
    ) -> Result<RunSummary, Error> {
        match self {
            Trainer::Cnf(t) => t.run(callback),
            Trainer::Flow(t, _) => t.run(callback),
        }
    }

    /// Saves the training state and the model file.
    fn save(&self, state: &Path, model: &Path) -> Result<(), Error> {
        match self {
            Trainer::Cnf(t) => {
                t.save_state(state)?;
                save_cnf(model, t.cnf())
            }
            Trainer::Flow(t, spec) => {
                t.state().save(state)?;
                save_flow(model, spec, t.model())
            }
        }
    }
}

/// The CRC-32 of a data set: its column count and the bits of its values, so that the same
/// points written another way (CSV or .npy, other spacing) give the same.
fn points_crc32(cols: usize, data: &[f64]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(cols as u64).to_le_bytes());
    for v in data {
        h.update(&v.to_bits().to_le_bytes());
    }
    h.finalize()
}

/// Whether a run whose first iteration's loss (the mean NLL of a batch) was `start` and
/// whose last test NLL is `end` made its model worse: `end` above `start` by more than
/// 1 + 5% of |start| nats per point (beyond the two estimates' sampling noise, which grows
/// with the spread of the NLL, and so with its size), or not a number. Maximum likelihood
/// training that works lowers the NLL; this is what a too-large learning rate does.
fn went_the_wrong_way(start: f64, end: f64) -> bool {
    end.is_nan() || end > start + 1.0 + 0.05 * start.abs()
}

/// Starts a new run in `out`: creates the folder, refuses one that holds a run unless
/// `--overwrite` (then removes its state and log, so that a later `--resume` cannot pair
/// them with the new settings), and writes the settings (for `--resume`). Called once the
/// settings are known to be valid. Returns the folder's lock ([`lock_run`]), to be held for
/// the whole run.
fn start_run(
    out: &Path,
    a: &TrainArgs,
) -> Result<Option<std::fs::File>, Box<dyn std::error::Error>> {
    create_dir(out)?;
    let lock = lock_run(out)?;
    let state = out.join("train_state.bin");
    let run = out.join("run.json");
    if state.exists() || run.exists() {
        if !a.overwrite {
            return Err(format!(
                "{} holds a run (run.json, train_state.bin): continue it with --resume, or \
                 pass --overwrite to start a new run there (replacing it)",
                out.display()
            )
            .into());
        }
        for p in [state, out.join("train_log.csv")] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("cannot remove {}: {e}", p.display()).into())
                }
                _ => {}
            }
        }
    }
    write_run(&run, a)?;
    Ok(lock)
}

/// Takes the run folder `out` for this process: an exclusive advisory lock (`flock`) on the
/// folder itself, which the system releases when the process ends, however it ends. Two
/// `train` runs in one folder would otherwise mix its model, state and log; the second is
/// refused instead. Once it holds the lock, it removes the temporary files a killed
/// process left there ([`odeflow::io::remove_stale_temporaries`]). `None` where there is
/// nothing to lock (no folder yet: a resume then fails on its missing run.json) or the file
/// system has no locks (the run goes on unlocked, as before).
#[cfg(unix)]
fn lock_run(out: &Path) -> Result<Option<std::fs::File>, Box<dyn std::error::Error>> {
    use std::fs::TryLockError;
    use std::io::ErrorKind;
    let dir = match std::fs::File::open(out) {
        Ok(dir) => dir,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open the run folder {}: {e}", out.display()).into()),
    };
    match dir.try_lock() {
        Ok(()) => {
            // No other train runs here now: what a killed one left half-written can go.
            for path in odeflow::io::remove_stale_temporaries(out) {
                eprintln!("removed {} (left by a process that was killed)", path.display());
            }
            Ok(Some(dir))
        }
        Err(TryLockError::WouldBlock) => Err(format!(
            "{} is in use by another odeflow train (it holds the folder's lock): wait for it \
             to end, or choose another --out",
            out.display()
        )
        .into()),
        Err(TryLockError::Error(e)) if e.kind() == ErrorKind::Unsupported => Ok(None),
        Err(TryLockError::Error(e)) => {
            Err(format!("cannot lock the run folder {}: {e}", out.display()).into())
        }
    }
}

/// Elsewhere runs go unlocked.
#[cfg(not(unix))]
fn lock_run(_out: &Path) -> Result<Option<std::fs::File>, Box<dyn std::error::Error>> {
    Ok(None)
}

/// Writes the run's settings (for `--resume`).
fn write_run(path: &Path, a: &TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let json = serde_json::to_string_pretty(a)?;
    write_atomically(path, |w| std::io::Write::write_all(w, json.as_bytes()))?;
    Ok(())
}

/// A symmetric plot range around the data (10% margin), or ±4.
fn plot_range(data: &[f64]) -> (f64, f64) {
    let half = 1.1 * data.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if half > 0.0 && half.is_finite() {
        (-half, half)
    } else {
        (-4.0, 4.0)
    }
}

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
