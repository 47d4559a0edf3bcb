//! Work against accuracy of the W1 gradient (peers.md: FFJORD's toy net, batch 512,
//! T = 0.5, dopri5, exact trace, f64), odeflow beside diffrax on the same batches.
//!
//! For each checkpoint (initial weights, after 300 iterations) and each batch that
//! `scripts/w1_grad_diffrax.py` dumped, the gradient of the mean NLL with respect to θ is
//! compared with a tight reference: odeflow's discrete gradient (backprop through the
//! solver's steps) with DOP853 at rtol = atol = 1e-12, itself checked against diffrax's
//! (dopri5 at 1e-11, backprop through its steps: another code and another method). Printed
//! per setting, over the batches: the relative error ‖g − g_ref‖₂ / ‖g_ref‖₂ of the
//! θ-gradient (mean and max), the mean absolute error of the loss, the right-hand-side calls
//! forward and backward (mean) and the median time of one gradient (diffrax's from the
//! script's `diffrax.jsonl`, `jax.value_and_grad` compiled; odeflow's `cnf_nll_grad`, the
//! median of five after one not timed, per batch, then the median over the batches). Time
//! the two in one sitting on a quiet machine: the ratio is what means something.
//!
//! odeflow's settings: backsolve and checkpointed with one tolerance for both solves (the
//! peers' convention), checkpointed with the backward tolerance set on its own (its
//! gradient error follows the backward solve's tolerance; the forward's sets the loss's),
//! and checkpointed with ℓ left out of the forward's error norm
//! (`AdjointConfig::forward_seminorm`).
//!
//! Run (after the script, with the harness's JAX environment):
//! `cargo run --release --example grad_work_precision -- <dir written by the script>`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use odeflow::adjoint::{cnf_nll_grad, AdjointConfig, Strategy};
use odeflow::cnf::{Cnf, CnfConfig};
use odeflow::field::{Activation, Mlp, VectorField};
use odeflow::io::{load_peer_checkpoint, read_npy_matrix};
use odeflow::solvers::Method;
use rand::SeedableRng;

/// The toy CNF with `method` at rtol = atol = `tol`.
fn cnf(mlp: &Mlp<f64>, method: Method, tol: f64) -> Cnf<f64, Mlp<f64>> {
    let cfg = CnfConfig { method, rtol: tol, atol: tol, ..Default::default() };
    Cnf::new(mlp.clone(), 0.5, cfg).expect("valid settings")
}

/// `strategy` with the backward solve at rtol = atol = `tol` (`None`: the forward's), ℓ out
/// of the forward's error norm if `forward_seminorm`.
fn adjoint(
    cnf: &Cnf<f64, Mlp<f64>>,
    strategy: Strategy,
    tol: Option<f64>,
    forward_seminorm: bool,
) -> AdjointConfig<f64> {
    let mut adj = AdjointConfig { strategy, forward_seminorm, ..Default::default() };
    adj.options = tol.map(|tol| {
        let mut o = cnf.config().solve_options();
        (o.rtol, o.atol) = (tol, tol.into());
        o
    });
    adj
}

/// `‖a − b‖₂ / ‖b‖₂`.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let n: f64 = b.iter().map(|y| y * y).sum();
    (d / n).sqrt()
}

/// One gradient: `(θ-gradient, loss, forward calls, backward calls)`.
fn grad(
    cnf: &Cnf<f64, Mlp<f64>>,
    x: &[f64],
    adj: &AdjointConfig<f64>,
) -> Result<(Vec<f64>, f64, usize, usize), odeflow::Error> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (loss, g) = cnf_nll_grad(cnf, x, &mut rng, adj)?;
    let calls_b = g.stats.backward.n_rhs + g.stats.extra_evals;
    Ok((g.theta[0].clone(), loss, g.stats.forward.n_rhs, calls_b))
}

/// The median of five timed gradients after one not timed, in seconds.
fn time_grad(
    cnf: &Cnf<f64, Mlp<f64>>,
    x: &[f64],
    adj: &AdjointConfig<f64>,
) -> Result<f64, odeflow::Error> {
    grad(cnf, x, adj)?;
    let mut t = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        grad(cnf, x, adj)?;
        t.push(start.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A gradient dumped by the script, in odeflow's parameter layout (the `.npz` has the
/// checkpoint format, so the checkpoint reader puts each array where its parameter is).
fn peer_grad(path: &Path) -> Result<Vec<f64>, odeflow::Error> {
    Ok(load_peer_checkpoint::<f64>(path, Activation::Tanh)?.params().to_vec())
}

/// One row of the table, summed over the batches.
#[derive(Default)]
struct Row {
    errs: Vec<f64>,
    loss_errs: Vec<f64>,
    nfe: (f64, f64),
    times: Vec<f64>,
}

impl Row {
    fn print(&self, label: &str) {
        let n = self.errs.len() as f64;
        let max = self.errs.iter().copied().fold(0.0, f64::max);
        let time = if self.times.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", 1e3 * median(self.times.clone()))
        };
        println!(
            "{label:<52} {:>9.2e} {max:>9.2e} {:>9.1e} {:>6.1} {:>6.1} {time:>8}",
            self.errs.iter().sum::<f64>() / n,
            self.loss_errs.iter().sum::<f64>() / n,
            self.nfe.0 / n,
            self.nfe.1 / n,
        );
    }
}

/// diffrax's rows for checkpoint `stem` from the script's JSON lines, settings in the
/// script's order: `(setting, batch → (loss, forward NFE, backward NFE, median seconds))`.
type PeerRuns = Vec<(String, BTreeMap<usize, (f64, f64, f64, Option<f64>)>)>;

fn peer_runs(dir: &Path, stem: &str) -> Result<PeerRuns, Box<dyn std::error::Error>> {
    let mut runs = PeerRuns::new();
    let path = dir.join("diffrax.jsonl");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (the script's JSON lines, saved there)", path.display()))?;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["ckpt"] != stem {
            continue;
        }
        let num = |k: &str| v[k].as_f64().ok_or(format!("{k} missing in {line}"));
        let setting = v["setting"].as_str().ok_or("setting missing")?.to_string();
        let batch = num("batch")? as usize;
        let entry = (num("loss")?, num("nfe_fwd")?, num("nfe_bwd")?, v["grad_s_median"].as_f64());
        let i = match runs.iter().position(|(s, _)| *s == setting) {
            Some(i) => i,
            None => {
                runs.push((setting, BTreeMap::new()));
                runs.len() - 1
            }
        };
        runs[i].1.insert(batch, entry);
    }
    Ok(runs)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir: PathBuf = std::env::args().nth(1).ok_or("usage: grad_work_precision <dir>")?.into();
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/peers");
    let mut batches = Vec::new();
    while let Ok((_, x)) = read_npy_matrix(dir.join(format!("batch{}.npy", batches.len())), 2) {
        batches.push(x);
    }
    if batches.is_empty() {
        return Err(format!("no batch0.npy in {}", dir.display()).into());
    }
    let tols = [5e-6, 1e-5, 2e-5, 5e-5, 1e-4];
    for stem in ["init_toy", "torch_f32_iter0300"] {
        if !dir.join(format!("{stem}_b0_recursive_1e-11.npz")).exists() {
            println!("\n{stem}: not in {} (skipped)", dir.display());
            continue;
        }
        let mlp = load_peer_checkpoint::<f64>(peers.join(format!("{stem}.npz")), Activation::Tanh)?;
        let tight = cnf(&mlp, Method::Dop853, 1e-12);
        let mut refs = Vec::new();
        for x in &batches {
            let (g, loss, ..) = grad(&tight, x, &AdjointConfig::with_strategy(Strategy::Discrete))?;
            refs.push((g, loss));
        }
        let runs = peer_runs(&dir, stem)?;
        let cross: Vec<f64> = (0..batches.len())
            .map(|k| {
                Ok(rel_err(
                    &peer_grad(&dir.join(format!("{stem}_b{k}_recursive_1e-11.npz")))?,
                    &refs[k].0,
                ))
            })
            .collect::<Result<_, odeflow::Error>>()?;
        println!("\n{stem}, {} batches of 512", batches.len());
        println!(
            "reference: odeflow discrete dop853 1e-12 against diffrax recursive dopri5 1e-11: \
             relative difference at most {:.1e}",
            cross.iter().copied().fold(0.0, f64::max)
        );
        println!(
            "{:<52} {:>9} {:>9} {:>9} {:>6} {:>6} {:>8}",
            "setting", "mean err", "max err", "loss err", "NFE f", "NFE b", "time ms"
        );
        for (setting, per_batch) in runs.iter().filter(|(s, _)| !s.ends_with("1e-11")) {
            let mut row = Row::default();
            for (&k, &(loss, nf, nb, t)) in per_batch {
                let g = peer_grad(&dir.join(format!("{stem}_b{k}_{setting}.npz")))?;
                row.errs.push(rel_err(&g, &refs[k].0));
                row.loss_errs.push((loss - refs[k].1).abs());
                row.nfe = (row.nfe.0 + nf, row.nfe.1 + nb);
                row.times.extend(t);
            }
            row.print(&format!("diffrax {setting}"));
        }
        let mut configs: Vec<(String, Strategy, f64, Option<f64>, bool)> = Vec::new();
        for strategy in [Strategy::Backsolve, Strategy::Checkpointed] {
            for &tol in &tols {
                configs.push((format!("odeflow {strategy:?} {tol:e}"), strategy, tol, None, false));
            }
        }
        for &tol in &[2e-6, 5e-6, 1e-5] {
            let label = format!("odeflow Checkpointed fwd 5e-5, bwd {tol:e}");
            configs.push((label, Strategy::Checkpointed, 5e-5, Some(tol), false));
        }
        for (fwd, bwd) in [(1e-5, None), (1e-5, Some(5e-6)), (2e-5, Some(5e-6))] {
            let split = bwd.map_or(String::new(), |b: f64| format!(", bwd {b:e}"));
            let label = format!("odeflow Checkpointed {fwd:e}{split}, fwd seminorm");
            configs.push((label, Strategy::Checkpointed, fwd, bwd, true));
        }
        for (label, strategy, tol, bwd, forward_seminorm) in configs {
            let model = cnf(&mlp, Method::Dopri5, tol);
            let adj = adjoint(&model, strategy, bwd, forward_seminorm);
            let mut row = Row::default();
            for (x, (g_ref, loss_ref)) in batches.iter().zip(&refs) {
                let (g, loss, nf, nb) = grad(&model, x, &adj)?;
                row.errs.push(rel_err(&g, g_ref));
                row.loss_errs.push((loss - loss_ref).abs());
                row.nfe = (row.nfe.0 + nf as f64, row.nfe.1 + nb as f64);
                row.times.push(time_grad(&model, x, &adj)?);
            }
            row.print(&label);
        }
    }
    Ok(())
}
