//! One training iteration of FFJORD's toy experiment (peers.md W1): an 8gaussians batch of
//! 512, FFJORD's toy net (ConcatSquash 2 → 64 → 64 → 64 → 2, tanh), T = 0.5, dopri5
//! rtol = atol = 1e-5, exact trace, Adam lr 1e-3 with weight decay 1e-5; f64 and f32.
//!
//! Each sample times `CnfTrainer::step` (batch draw, forward solve, backward solve, Adam
//! update) on a fresh trainer, so every sample is the same first iteration from the same
//! weights; the trainer's model computes one gradient first (not applied), so that its field
//! workspace and solver integrators are kept ones, as in the middle of a run (the peers, too,
//! are timed on warmed-up iterations):
//! - the initial weights (`data/peers/init_toy.npz`), the peers' "initial weights" row
//!   (quiet machine: diffrax f64 118 ms, f32 73 ms; torchdiffeq f64 196 ms);
//! - the weights after 300 PyTorch iterations (`torch_f32_iter0300.npz`), the peers' "after
//!   300 iterations" row (diffrax f64 170 ms, f32 159 ms; torchdiffeq f64 666 ms), with the
//!   backsolve adjoint and, in f64, the checkpointed one;
//! - after 300 iterations, checkpointed, with the forward solve at 5e-5 and the backward at
//!   5e-6 (a smaller gradient error than diffrax's at 1e-5: `examples/grad_work_precision.rs`);
//! - after 300 iterations, checkpointed at 1e-5 with ℓ left out of the forward's error norm
//!   (`AdjointConfig::forward_seminorm`: fewer forward steps, the gradient as accurate);
//! - both again in f64 with the peers' steps (the elementary controller and the first step
//!   with q = p + 1: torchdiffeq's controller, diffrax's first step).
//!
//! Before timing, each configuration prints its loss and NFE forward and backward.
//!
//! Run: `cargo bench --bench train` (about a minute).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::path::Path;
use std::time::Duration;

use rand::SeedableRng;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use odeflow::adjoint::{cnf_nll_grad, AdjointConfig, Strategy};
use odeflow::cnf::{Cnf, CnfConfig, Steps};
use odeflow::field::{Activation, Mlp, Real, VectorField};
use odeflow::io::load_peer_checkpoint;
use odeflow::train::{CnfTrainConfig, CnfTrainer, DataSource, Toy};

/// The solver settings of a configuration.
#[derive(Clone, Copy, PartialEq)]
enum Setting {
    /// dopri5 at rtol = atol = 1e-5 forward and backward, Hairer's step rules (the defaults).
    Default,
    /// The same with the peers' step rules ([`Steps::Peers`]).
    PeersSteps,
    /// Forward at 5e-5, backward at 5e-6: for the checkpointed gradient, a smaller error than
    /// diffrax's at 1e-5 (`examples/grad_work_precision.rs`).
    Split,
    /// 1e-5 for both with ℓ left out of the forward's error norm
    /// ([`AdjointConfig::forward_seminorm`]): the checkpointed gradient as accurate as with
    /// the full norm, in fewer forward steps.
    ForwardSeminorm,
}

/// The toy CNF from the peers' `weights` with the forward settings of `setting`.
fn cnf<T: Real>(weights: &str, setting: Setting) -> Cnf<T, Mlp<T>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/peers");
    let mlp = load_peer_checkpoint::<T>(dir.join(weights), Activation::Tanh).unwrap();
    let mut cfg = CnfConfig::default();
    match setting {
        Setting::Default | Setting::ForwardSeminorm => {}
        Setting::PeersSteps => Steps::Peers.apply(&mut cfg),
        Setting::Split => (cfg.rtol, cfg.atol) = (T::from_f64c(5e-5), T::from_f64c(5e-5)),
    }
    Cnf::new(mlp, T::from_f64c(0.5), cfg).unwrap()
}

/// The gradient settings of `setting` for `cnf`.
fn adjoint<T: Real>(
    cnf: &Cnf<T, Mlp<T>>,
    strategy: Strategy,
    setting: Setting,
) -> AdjointConfig<T> {
    let forward_seminorm = setting == Setting::ForwardSeminorm;
    let adj = AdjointConfig { strategy, forward_seminorm, ..Default::default() };
    if setting == Setting::Split {
        let tol = Some(T::from_f64c(5e-6));
        return adj.with_backward_tolerances(cnf.config(), tol, tol);
    }
    adj
}

fn trainer<T: Real>(cnf: &Cnf<T, Mlp<T>>, adj: &AdjointConfig<T>) -> CnfTrainer<T, Mlp<T>> {
    let cfg = CnfTrainConfig {
        batch_size: 512,
        test_every: 0,
        seed: 1,
        adjoint: adj.clone(),
        ..Default::default()
    };
    let tr = CnfTrainer::new(cnf.clone(), DataSource::Toy(Toy::EightGaussians), None, cfg).unwrap();
    // A trainer in the middle of a run reuses the field workspace and the solver integrators
    // its solves hand back (`VectorField::recycle`, the model's kept integrators); let the
    // fresh one's model compute a gradient first (not applied) so that the timed step is
    // such a steady-state iteration, not the first allocation of a run.
    let x: Vec<T> =
        (0..512 * 2).map(|i| T::from_f64c(((i * 37 % 101) as f64 - 50.0) / 25.0)).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    cnf_nll_grad(tr.cnf(), &x, &mut rng, adj).unwrap();
    let field = &tr.cnf().blocks()[0].field;
    field.recycle(field.workspace(512));
    tr
}

fn bench_one<T: Real>(
    c: &mut Criterion,
    weights: &str,
    label: &str,
    strategy: Strategy,
    setting: Setting,
) {
    let cnf = cnf::<T>(weights, setting);
    let adj = adjoint(&cnf, strategy, setting);
    let p = trainer(&cnf, &adj).step().unwrap();
    println!(
        "W1 {label}: loss {:.4}, NFE forward {}, backward {}",
        p.loss, p.nfe_forward, p.nfe_backward
    );
    let mut g = c.benchmark_group("train_iteration");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.bench_function(label, |b| {
        b.iter_batched(
            || trainer(&cnf, &adj),
            |mut tr| black_box(tr.step().unwrap()),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn train_iteration(c: &mut Criterion) {
    let (bs, ck) = (Strategy::Backsolve, Strategy::Checkpointed);
    let (init, w300) = ("init_toy.npz", "torch_f32_iter0300.npz");
    let d = Setting::Default;
    bench_one::<f64>(c, init, "init_b512_dopri5_1e-5_exact_backsolve_f64", bs, d);
    bench_one::<f32>(c, init, "init_b512_dopri5_1e-5_exact_backsolve_f32", bs, d);
    bench_one::<f64>(c, w300, "iter300_b512_dopri5_1e-5_exact_backsolve_f64", bs, d);
    bench_one::<f32>(c, w300, "iter300_b512_dopri5_1e-5_exact_backsolve_f32", bs, d);
    bench_one::<f64>(c, w300, "iter300_b512_dopri5_1e-5_exact_checkpointed_f64", ck, d);
    // The backward tolerance on its own (forward 5e-5, backward 5e-6), checkpointed, f64.
    let label = "iter300_b512_dopri5_fwd5e-5_bwd5e-6_exact_checkpointed_f64";
    bench_one::<f64>(c, w300, label, ck, Setting::Split);
    // ℓ out of the forward's error norm, checkpointed, 1e-5 for both, f64.
    let label = "iter300_b512_dopri5_1e-5_fwd_seminorm_exact_checkpointed_f64";
    bench_one::<f64>(c, w300, label, ck, Setting::ForwardSeminorm);
    // The same with the peers' steps (their controller and first step), in f64.
    let ps = Setting::PeersSteps;
    bench_one::<f64>(c, init, "init_b512_dopri5_1e-5_peers_steps_backsolve_f64", bs, ps);
    bench_one::<f64>(c, w300, "iter300_b512_dopri5_1e-5_peers_steps_backsolve_f64", bs, ps);
}

criterion_group!(benches, train_iteration);
criterion_main!(benches);
