//! `odeflow train`: trains a CNF or a flow model by maximum likelihood, new or resumed, and
//! writes the model, the training state, the log and the figures into the run folder.

use std::ops::ControlFlow;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use odeflow::adjoint::{AdjointConfig, Strategy};
use odeflow::cnf::{Cnf, CnfBlock, CnfConfig};
use odeflow::field::{Mlp, MlpConfig};
use odeflow::flows::{CnfBlockSpec, FlowKind, FlowSpec};
use odeflow::io::write_atomically;
use odeflow::plot::{render, ModelFigures, TrainingCurves};
use odeflow::solvers::Method;
use odeflow::trace::TraceEstimator;
use odeflow::train::{
    AdamConfig, CnfTrainConfig, CnfTrainer, DataSource, Dataset, FlowTrainConfig, FlowTrainer, Toy,
    TrainState,
};
use odeflow::Error;

use crate::figures::{plot_range, training_curves};
use crate::inputs::{
    adaptive_method, check_memory, loss_text, points_from, solve_bytes, with_path,
};
use crate::run_folder::{lock_run, points_crc32, start_run};
use crate::train_args::TrainArgs;
use crate::trainer::Trainer;
use crate::CliResult;

/// `parsed`, or the error that `value` is no known `what`.
fn parse_or<T>(
    what: &'static str,
    value: &str,
    parsed: Option<T>,
) -> Result<T, Box<dyn std::error::Error>> {
    parsed.ok_or_else(|| format!("unknown {what} {value:?}").into())
}

/// Trains a CNF (or, with `--flow`, a discrete flow) and writes the model, the state, the log
/// and the figures.
pub(crate) fn train(mut a: TrainArgs, given: &[String]) -> CliResult {
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

/// Whether a run whose first iteration's loss (the mean NLL of a batch) was `start` and
/// whose last test NLL is `end` made its model worse: `end` above `start` by more than
/// 1 + 5% of |start| nats per point (beyond the two estimates' sampling noise, which grows
/// with the spread of the NLL, and so with its size), or not a number. Maximum likelihood
/// training that works lowers the NLL; this is what a too-large learning rate does.
fn went_the_wrong_way(start: f64, end: f64) -> bool {
    end.is_nan() || end > start + 1.0 + 0.05 * start.abs()
}
