//! The odeflow command line: evaluate, sample, plot and benchmark continuous normalizing flows.
//!
//! Thin by design: it parses arguments, calls the library, and reports. Every error is
//! printed as one message naming the problem, with exit code 1 (2 for usage errors); files
//! are written atomically, so a failed command leaves existing outputs as they were.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use odeflow::cnf::{Cnf, CnfConfig};
use odeflow::field::Mlp;
use odeflow::io::{load_cnf, read_points, write_csv, write_npy};
use odeflow::plot::ModelFigures;
use odeflow::solvers::{problems, Method, OdeSystem, SolveOptions, Stats};
use odeflow::workprecision::{work_precision, write_all, Setting};
use odeflow::Error;
use rand::SeedableRng;

#[derive(Parser)]
#[command(name = "odeflow", version, about = "Continuous normalizing flows and neural ODEs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Log-densities of points under a model (CSV out: one log p per point).
    Logprob(LogprobArgs),
    /// Draw points from a model (CSV or .npy by the output's extension).
    Sample(SampleArgs),
    /// Figures of a 2-D model: density beside data, samples, trajectories, an animated GIF.
    Plot(PlotArgs),
    /// Work-precision table and diagram for solver methods and tolerances.
    Bench(BenchArgs),
}

/// Solver settings that override those saved in the model.
#[derive(Args, Clone)]
struct SolverArgs {
    /// Solver method (euler, midpoint, heun, rk4, bosh3, dopri5, tsit5, dop853).
    #[arg(long)]
    method: Option<Method>,
    /// Relative tolerance.
    #[arg(long)]
    rtol: Option<f64>,
    /// Absolute tolerance.
    #[arg(long)]
    atol: Option<f64>,
}

#[derive(Args)]
struct LogprobArgs {
    /// Model file (safetensors, from `odeflow train`).
    #[arg(long)]
    model: PathBuf,
    /// Points: CSV (one point per line, optional header) or .npy [n, d].
    #[arg(long)]
    input: PathBuf,
    /// Output CSV (column `log_prob`).
    #[arg(long, default_value = "logprob.csv")]
    output: PathBuf,
    #[command(flatten)]
    solver: SolverArgs,
}

#[derive(Args)]
struct SampleArgs {
    /// Model file.
    #[arg(long)]
    model: PathBuf,
    /// Number of points.
    #[arg(short, long, default_value_t = 1000)]
    n: usize,
    /// Output file: .csv or .npy.
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
    /// Model file.
    #[arg(long)]
    model: PathBuf,
    /// Data to show beside the model (CSV or .npy).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Half-width of the plotted square (default: from the data, else 4).
    #[arg(long)]
    range: Option<f64>,
    /// Grid points per axis of the density.
    #[arg(long, default_value_t = 120)]
    grid: usize,
    /// Number of samples shown.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Seed of the samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
    #[arg(long, value_delimiter = ',', default_value = "1e-3,1e-4,1e-5,1e-6,1e-7,1e-8,1e-9,1e-10")]
    tols: Vec<f64>,
    /// Step counts for fixed-step methods, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000,3000,10000")]
    steps: Vec<usize>,
    /// Runs per point (the best time is kept).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Output folder (work_precision.csv, .json, .png, .svg).
    #[arg(long, default_value = "out")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Logprob(a) => logprob(a),
        Command::Sample(a) => sample(a),
        Command::Plot(a) => plot(a),
        Command::Bench(a) => bench(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("odeflow: error: {e}");
            let mut source = std::error::Error::source(&*e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

/// Loads a model and applies the solver overrides.
fn model(path: &Path, solver: &SolverArgs) -> Result<Cnf<f64, Mlp<f64>>, Error> {
    let mut cnf = load_cnf::<f64>(path)?;
    let mut cfg: CnfConfig<f64> = cnf.config().clone();
    if let Some(m) = solver.method {
        cfg.method = m;
    }
    if let Some(r) = solver.rtol {
        cfg.rtol = r;
    }
    if let Some(a) = solver.atol {
        cfg.atol = a;
    }
    cnf.set_config(cfg)?;
    Ok(cnf)
}

fn stats_line(what: &str, n: usize, s: &Stats) -> String {
    format!(
        "{what} {n} points: {} function evaluations, {} steps accepted, {} rejected",
        s.n_rhs, s.n_accepted, s.n_rejected
    )
}

fn logprob(a: LogprobArgs) -> CliResult {
    let cnf = model(&a.model, &a.solver)?;
    let points = read_points(&a.input, Some(cnf.dim()))?;
    let (logp, stats) = cnf.log_prob(&points.data)?;
    write_csv(&a.output, &["log_prob"], &logp)?;
    println!("{}; wrote {}", stats_line("log-density of", points.rows, &stats), a.output.display());
    Ok(())
}

fn sample(a: SampleArgs) -> CliResult {
    let cnf = model(&a.model, &a.solver)?;
    let d = cnf.dim();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let npy = a.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let (data, cols, stats) = if a.with_log_prob {
        let (x, logp, stats) = cnf.sample_with_log_prob(a.n, &mut rng)?;
        let rows: Vec<f64> =
            x.chunks(d).zip(&logp).flat_map(|(p, l)| p.iter().copied().chain([*l])).collect();
        (rows, d + 1, stats)
    } else {
        let (x, stats) = cnf.sample(a.n, &mut rng)?;
        (x, d, stats)
    };
    if npy {
        write_npy(&a.output, &[a.n, cols], &data)?;
    } else {
        let mut names: Vec<String> = (0..d).map(|i| format!("x{i}")).collect();
        if a.with_log_prob {
            names.push("log_prob".into());
        }
        let header: Vec<&str> = names.iter().map(String::as_str).collect();
        write_csv(&a.output, &header, &data)?;
    }
    println!("{}; wrote {}", stats_line("sampled", a.n, &stats), a.output.display());
    Ok(())
}

fn plot(a: PlotArgs) -> CliResult {
    let cnf = model(&a.model, &a.solver)?;
    let data = a.data.as_ref().map(|p| read_points(p, Some(cnf.dim()))).transpose()?;
    let half = a.range.unwrap_or_else(|| {
        data.as_ref()
            .map(|d| 1.1 * d.data.iter().fold(0.0f64, |m, v| m.max(v.abs())))
            .filter(|h| *h > 0.0)
            .unwrap_or(4.0)
    });
    std::fs::create_dir_all(&a.out)?;
    let figures = ModelFigures {
        data: data.as_ref().map(|d| d.data.as_slice()),
        range: (-half, half),
        grid: a.grid,
        samples: a.samples,
        seed: a.seed,
        ..Default::default()
    };
    for p in figures.write(&cnf, &a.out)? {
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn bench(a: BenchArgs) -> CliResult {
    std::fs::create_dir_all(&a.out)?;
    let (title, rows) = match a.problem.as_str() {
        "model" => {
            let path = a.model.as_ref().ok_or("--problem model needs --model")?;
            let cnf = model(path, &SolverArgs { method: None, rtol: None, atol: None })?;
            let x = match &a.points {
                Some(p) => read_points(p, Some(cnf.dim()))?.data,
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
            odeflow::workprecision::setting_label(r.setting),
            r.max_error,
            r.stats.n_rhs,
            r.seconds
        );
    }
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
) -> Result<(String, Vec<odeflow::workprecision::Row>), Error> {
    let mut run = |m: Method, opts: &SolveOptions<f64>| {
        odeflow::solvers::solve(m, &mut sys, 0.0, t1, y0, opts)
            .map_err(|source| Error::Solve { block: 0, source })
    };
    let (reference, _) = run(Method::Dop853, &SolveOptions::tol(1e-14, 1e-14))?;
    let rows =
        work_precision(&a.methods, &a.tols, &a.steps, a.repeats, &reference, |m, s| match s {
            Setting::Tolerance(t) => run(m, &SolveOptions::tol(t, t)),
            Setting::Steps(n) => run(m, &SolveOptions::fixed(t1 / n as f64)),
        })?;
    Ok((format!("{name} (t = 0 to {t1:.3})"), rows))
}
