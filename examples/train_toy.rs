//! FFJORD's toy experiment end to end: 8gaussians, the toy net from the peers' initial
//! weights, batch 512, Adam lr 1e-3 with weight decay 1e-5, T = 0.5 fixed (as the peer runs
//! in `shared/peers.md`), dopri5 rtol = atol = 1e-5, exact trace, backsolve adjoint, and the
//! test NLL on the peers' 2048 points (`data/peers/eval2k_8gaussians.npy`) at iterations
//! 100, 300, 500 and 1000. Prints the wall time and the test NLL beside the peers' figure
//! (test NLL 2.894 after 1000 iterations; 334 s diffrax f32, 701 s torchdiffeq f32).
//!
//! Recorded 2026-11-28, 19:53–20:00, on the shared 2-core machine (load 1.3–2.5 from other
//! tenants; seed 0; test NLL at 100 / 300 / 500 / 1000 iterations, always evaluated at
//! rtol = atol = 1e-5; peers 3.6845 / 3.1198 / 3.0331 / 2.8936):
//!
//! | dtype | solver (forward and backward) | steps | adjoint | test NLL | training wall time | NFE fwd / bwd at it. 1000 |
//! |---|---|---|---|---|---|---|
//! | f64 | dopri5 1e-5 | Hairer's | checkpointed | 3.6880 / 3.1228 / 3.0348 / 2.8931 | 60.0 s | 62 / 39 |
//! | f64 | dopri5 1e-5 | peers' | checkpointed | 3.6880 / 3.1228 / 3.0349 / 2.8931 | 51.2 s | 68 / 33 |
//! | f64 | dopri5 1e-4 | Hairer's | checkpointed | 3.6880 / 3.1228 / 3.0349 / 2.8931 | 47.9 s | 38 / 33 |
//! | f32 | dopri5 1e-5 | Hairer's | backsolve | 3.6880 / 3.1228 / 3.0348 / 2.8931 | 30.3 s | 62 / 39 |
//! | f32 | dopri5 1e-5 | peers' | backsolve | 3.6880 / 3.1228 / 3.0347 / 2.8931 | 25.7 s | 68 / 33 |
//!
//! Again 2026-11-29, 02:40–02:43 (load 0.9–1.4), f64 checkpointed, Hairer's steps:
//! dopri5 1e-5 both ways 49.6 s (NFE 51,818 forward / 32,378 backward in all); forward 5e-5
//! with the backward at 5e-6 (BACKWARD_TOL) 46.4 s (39,032 / 33,914); test NLL
//! 3.6880 / 3.1228 / 3.0348 / 2.8931 in both.
//!
//! An hour earlier (before the GEMM read A in place): f64 dopri5 1e-5 61.5 s checkpointed,
//! 67.8 s backsolve; 1e-4 49.0 s; f32 37.5 s.
//! Earlier the same day, before the field work of that afternoon (vectorized activation
//! loops, FMA polynomials, recycled workspaces): f64 dopri5 1e-5 84 s (checkpointed, quiet)
//! and 126 s (backsolve, load 1–3). Tsit5 at 1e-4 gives the same NLL at about the same NFE.
//!
//! Run: `cargo run --release --example train_toy -- [f64|f32] [ITERATIONS] [SEED] [STRATEGY]
//! [METHOD] [TOL] [STEPS] [BACKWARD_TOL]` (defaults f64, 1000, 0, backsolve, dopri5, 1e-5,
//! hairer, TOL; STRATEGY
//! is backsolve, checkpointed or discrete; METHOD any solver name, used forward and backward
//! with rtol = atol = TOL; STEPS `hairer` (the default PI controller and first step) or
//! `peers` (the elementary controller and the first step with q = p + 1, `cnf::Steps`);
//! BACKWARD_TOL the adjoint's backward rtol = atol on its own). The batches are drawn in
//! Rust (ChaCha8 from SEED), not the peers' NumPy stream, so the curve matches theirs in
//! distribution, not draw for draw.

use std::path::Path;
use std::time::Instant;

use odeflow::adjoint::{AdjointConfig, Strategy};
use odeflow::cnf::{Cnf, CnfConfig, Steps};
use odeflow::field::{Activation, Real};
use odeflow::io::load_peer_checkpoint;
use odeflow::solvers::Method;
use odeflow::train::{CnfTrainConfig, CnfTrainer, DataSource, Dataset, Toy};

fn run<T: Real>(
    iterations: u64,
    seed: u64,
    strategy: Strategy,
    method: Method,
    tol: f64,
    steps: Steps,
    backward_tol: Option<f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/peers");
    let mlp = load_peer_checkpoint::<T>(peers.join("init_toy.npz"), Activation::Tanh)?;
    let mut solver = CnfConfig {
        method,
        rtol: T::from_f64c(tol),
        atol: T::from_f64c(tol),
        ..Default::default()
    };
    steps.apply(&mut solver);
    let mut adjoint = AdjointConfig::with_strategy(strategy);
    adjoint.options = backward_tol.map(|tol| {
        let mut o = solver.solve_options();
        (o.rtol, o.atol) = (T::from_f64c(tol), T::from_f64c(tol).into());
        o
    });
    let cnf = Cnf::new(mlp, T::from_f64c(0.5), solver)?;
    let test = Dataset::<T>::from_npy(peers.join("eval2k_8gaussians.npy"), 2)?;
    let cfg = CnfTrainConfig {
        iterations,
        batch_size: 512,
        test_every: 0,
        seed,
        adjoint,
        ..Default::default()
    };
    let mut trainer = CnfTrainer::new(cnf, DataSource::Toy(Toy::EightGaussians), Some(test), cfg)?;
    let at = [100u64, 300, 500, 1000];
    let start = Instant::now();
    let mut train_time = 0.0;
    let (mut nf, mut nb) = (0usize, 0usize);
    let mut losses = Vec::new();
    println!("iter  test_nll  train_s  loss(avg last 50)  nfe_fwd  nfe_bwd");
    loop {
        let p = trainer.step()?;
        train_time += p.iter_time.as_secs_f64();
        nf += p.nfe_forward;
        nb += p.nfe_backward;
        losses.push(p.loss);
        let it = p.iteration;
        if at.contains(&it) || it == iterations {
            let nll = trainer.test_nll()?;
            let tail = &losses[losses.len().saturating_sub(50)..];
            println!(
                "{it:>4}  {nll:.4}  {train_time:>7.1}  {:.4}  {:>7}  {:>7}",
                tail.iter().sum::<f64>() / tail.len() as f64,
                p.nfe_forward,
                p.nfe_backward
            );
        }
        if it >= iterations {
            break;
        }
        if std::env::var_os("ODEFLOW_TRACE").is_some() {
            eprintln!(
                "{it} {:.4} {} {} {:.3}",
                p.loss,
                p.nfe_forward,
                p.nfe_backward,
                p.iter_time.as_secs_f64()
            );
        }
    }
    println!(
        "{} iterations: {:.1} s training ({:.1} s with the test evaluations), NFE fwd {} bwd {} in total",
        iterations,
        train_time,
        start.elapsed().as_secs_f64(),
        nf,
        nb
    );
    println!("peer (shared/peers.md): test NLL 2.894 after 1000 iterations; 334 s diffrax f32, 701 s torchdiffeq f32");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dtype = args.first().map_or("f64", String::as_str);
    let iterations = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let seed = args.get(2).map_or(Ok(0), |s| s.parse())?;
    let strategy = match args.get(3).map_or("backsolve", String::as_str) {
        "backsolve" => Strategy::Backsolve,
        "checkpointed" => Strategy::Checkpointed,
        "discrete" => Strategy::Discrete,
        other => return Err(format!("unknown strategy {other}").into()),
    };
    let method: Method = args.get(4).map_or("dopri5", String::as_str).parse()?;
    let tol: f64 = args.get(5).map_or(Ok(1e-5), |s| s.parse())?;
    let steps: Steps = args.get(6).map_or("hairer", String::as_str).parse()?;
    let backward_tol: Option<f64> = args.get(7).map(|s| s.parse()).transpose()?;
    println!(
        "{dtype}, {iterations} iterations, seed {seed}, {strategy:?} adjoint, {method:?} rtol = atol = {tol:e}, {} steps, backward tolerance {}",
        steps.name(),
        backward_tol.map_or("the same".to_string(), |t| format!("{t:e}"))
    );
    match dtype {
        "f64" => run::<f64>(iterations, seed, strategy, method, tol, steps, backward_tol),
        "f32" => run::<f32>(iterations, seed, strategy, method, tol, steps, backward_tol),
        other => Err(format!("dtype must be f64 or f32, not {other}").into()),
    }
}
