//! One gradient of the mean NLL (forward log-prob solve + adjoint backward pass), per
//! strategy, against peers.md W1 and W4.
//!
//! - Toy (W1): FFJORD's ConcatSquash 2 → 64 → 64 → 64 → 2 tanh net with the peers' weights at
//!   initialisation (`init_toy.npz`) and after 300 iterations (`torch_f32_iter0300.npz`),
//!   the first 512 points of `eval2k_8gaussians.npy`, T = 0.5, dopri5, rtol = atol = 1e-5,
//!   exact trace, f64 and f32.
//! - d = 64 (W4): ConcatSquash 64 → 256 → 256 → 256 → 64 softplus (PyTorch-style init, seed
//!   7007), 256 standard-normal points, Hutchinson (Rademacher), T = 0.5, dopri5 1e-5.
//!
//! Before timing, each configuration prints its forward and backward NFE, the gradient's
//! relative error against a tight reference (toy: checkpointed at 1e-9 in f64; d = 64: the
//! discrete gradient at the same tolerance), the median times of the forward and the
//! backward pass (5 runs) and the backward pass's flop rate. Flops are counted in GEMM
//! "units" as in peers.md (a unit = 2 Σ in·out flops per point: 16,896 for the toy net,
//! 327,680 for d = 64): a field evaluation with the exact trace costs 1 + d units, with a
//! Hutchinson form 2; a VJP of the augmented field 3× that, one without the parameter
//! cotangent (the `n_rhs_active` calls: Dopri5's second stage) 2×; the discrete replay adds
//! one plain evaluation (1 unit) per stage and takes a VJP of f alone (3 units) where
//! `b_i = 0`. Peaks: the guide's nominal 78 GFLOP/s f64, 156 f32
//! (both cores), and the machine's own, measured before the groups run (independent FMAs on
//! both cores; about 117 f64 here, where the cores run above the nominal clock).
//! The peers' W1/W4 rows also contain an Adam step (negligible next to the solves).
//!
//! The machine is shared and loaded: absolute times move by 2× with the load. The group
//! `w5_field_calls_b512` times one field evaluation with the exact divergence and one VJP of
//! the augmented field (peers.md W5) in the same run, so a gradient can be read in units of
//! the run's own VJP and compared with the peers' W1/W5 ratios.
//!
//! Run: `cargo bench --bench adjoint` (about four minutes on two cores).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use odeflow::adjoint::{cnf_forward, cnf_nll_grad, AdjointConfig, CnfGradient, Strategy};
use odeflow::cnf::{Cnf, CnfConfig};
use odeflow::field::{Activation, Mlp, MlpConfig, Real, TimeConditioning, VectorField};
use odeflow::io::{load_peer_checkpoint, read_npy_matrix};
use odeflow::trace::{Noise, TraceEstimator};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

#[path = "common/peak.rs"]
mod peak;

/// The measured f64 peak of both cores, once per run.
fn measured_peak_f64() -> Option<f64> {
    static PEAK: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    *PEAK.get_or_init(|| {
        let p = peak::measured_peak_f64();
        println!("measured peak: {}", p.map_or("n/a".into(), |p| format!("{p:.1} GFLOP/s f64")));
        p
    })
}

const STRATEGIES: [Strategy; 3] = [Strategy::Backsolve, Strategy::Checkpointed, Strategy::Discrete];

fn peers_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/peers")
}

fn convert<T: Real>(mlp: &Mlp<f64>) -> Mlp<T> {
    let params: Vec<T> = mlp.params().iter().map(|&v| T::from_f64c(v)).collect();
    Mlp::from_params(mlp.config(), params).unwrap()
}

fn cnf<T: Real>(mlp: &Mlp<f64>, tol: f64, trace: TraceEstimator) -> Cnf<T, Mlp<T>> {
    let cfg =
        CnfConfig { rtol: T::from_f64c(tol), atol: T::from_f64c(tol), trace, ..Default::default() };
    Cnf::new(convert(mlp), T::from_f64c(0.5), cfg).unwrap()
}

fn flat<T: Real>(g: &CnfGradient<T>) -> Vec<f64> {
    g.theta.iter().flatten().chain(&g.t_end).chain(&g.x).map(|v| v.to_f64c()).collect()
}

fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    let num = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    num / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut ts: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[2]
}

/// GEMM units per point of one field evaluation with the divergence.
fn eval_units(d: usize, trace: TraceEstimator) -> f64 {
    match trace {
        TraceEstimator::Exact => 1.0 + d as f64,
        TraceEstimator::Hutchinson(_) => 2.0,
    }
}

/// Prints NFE, accuracy, forward/backward times and the backward flop rate.
#[allow(clippy::too_many_arguments)]
fn report<T: Real>(
    label: &str,
    cnf: &Cnf<T, Mlp<T>>,
    x: &[T],
    strategy: Strategy,
    reference: Option<&[f64]>,
    unit_flops: f64,
    peak_gflops: f64,
) -> Vec<f64> {
    // f32 runs twice the f64 lanes.
    let measured = measured_peak_f64().map(|p| p * 8.0 / std::mem::size_of::<T>() as f64);
    let d = cnf.dim();
    let b = x.len() / d;
    let trace = cnf.config().trace;
    let adj = AdjointConfig::with_strategy(strategy);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (nll, g) = cnf_nll_grad(cnf, x, &mut rng, &adj).unwrap();
    let flat_g = flat(&g);
    let err = reference.map_or(f64::NAN, |r| rel_diff(&flat_g, r));
    // Forward and backward timed separately (the backward from one kept tape).
    let t_fwd = median_ms(|| {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        black_box(cnf_forward(cnf, x, &mut rng, &adj).unwrap());
    });
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let tape = cnf_forward(cnf, x, &mut rng, &adj).unwrap();
    let bf = T::from_usize(b).unwrap();
    let dl_dz: Vec<T> = tape.z().iter().map(|&z| z / bf).collect();
    let dl_dl = vec![T::one() / bf; b];
    let t_bwd = median_ms(|| {
        black_box(tape.backward(&dl_dz, &dl_dl).unwrap());
    });
    let eu = eval_units(d, trace);
    let s = g.stats;
    let (calls, active) = (s.backward.n_rhs as f64, s.backward.n_rhs_active as f64);
    let units = match strategy {
        // The stages with b_i = 0 take a VJP of f alone (3 units); each replayed stage one
        // plain evaluation.
        Strategy::Discrete => (calls - active) * 3.0 * eu + active * 3.0 + s.extra_evals as f64,
        // The calls without the parameter cotangent skip the weight gradient (eu units).
        _ => calls * 3.0 * eu - active * eu + s.extra_evals as f64 * eu,
    };
    let gflop = units * b as f64 * unit_flops / 1e9;
    let rate = gflop / (t_bwd / 1e3);
    println!(
        "{label}: NLL {:.6}, NFE fwd {} bwd {} (steps {} / {}), rel. error {err:.1e}, \
         fwd {t_fwd:.1} ms, bwd {t_bwd:.1} ms, bwd {gflop:.2} GFLOP = {rate:.1} GFLOP/s \
         ({:.0}% of the nominal peak, {} of the measured)",
        nll.to_f64c(),
        s.forward.n_rhs,
        s.backward.n_rhs,
        s.forward.n_accepted,
        s.backward.n_accepted,
        100.0 * rate / peak_gflops,
        measured.map_or("n/a".into(), |m| format!("{:.0}%", 100.0 * rate / m)),
    );
    flat_g
}

fn toy(c: &mut Criterion) {
    let (_, data) = read_npy_matrix(peers_dir().join("eval2k_8gaussians.npy"), 2).unwrap();
    let x = &data[..2 * 512];
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let unit = 2.0 * (2.0 * 64.0 + 64.0 * 64.0 * 2.0 + 64.0 * 2.0);
    let mut g = c.benchmark_group("w1_gradient_toy_b512");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for ck in ["init_toy", "torch_f32_iter0300"] {
        let mlp =
            load_peer_checkpoint(peers_dir().join(format!("{ck}.npz")), Activation::Tanh).unwrap();
        let reference = {
            let tight = cnf::<f64>(&mlp, 1e-9, TraceEstimator::Exact);
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let adj = AdjointConfig::with_strategy(Strategy::Checkpointed);
            flat(&cnf_nll_grad(&tight, x, &mut rng, &adj).unwrap().1)
        };
        let m64 = cnf::<f64>(&mlp, 1e-5, TraceEstimator::Exact);
        let m32 = cnf::<f32>(&mlp, 1e-5, TraceEstimator::Exact);
        for strategy in STRATEGIES {
            let adj = AdjointConfig::with_strategy(strategy);
            let adj32 = AdjointConfig::<f32>::with_strategy(strategy);
            let label = format!("{ck} f64 {strategy:?}");
            report(&label, &m64, x, strategy, Some(&reference), unit, 78.0);
            g.bench_function(&label, |bch| {
                bch.iter(|| {
                    let mut rng = ChaCha8Rng::seed_from_u64(0);
                    cnf_nll_grad(&m64, black_box(x), &mut rng, &adj).unwrap()
                })
            });
            let label = format!("{ck} f32 {strategy:?}");
            report(&label, &m32, &x32, strategy, Some(&reference), unit, 156.0);
            g.bench_function(&label, |bch| {
                bch.iter(|| {
                    let mut rng = ChaCha8Rng::seed_from_u64(0);
                    cnf_nll_grad(&m32, black_box(&x32), &mut rng, &adj32).unwrap()
                })
            });
        }
    }
    g.finish();
}

fn d64(c: &mut Criterion) {
    let cfg = MlpConfig {
        dim: 64,
        hidden: vec![256; 3],
        activation: Activation::Softplus,
        time: TimeConditioning::ConcatSquash,
        seed: 7007,
        ..Default::default()
    };
    let mlp = Mlp::<f64>::new(&cfg).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(8008);
    let x: Vec<f64> = (0..256 * 64).map(|_| StandardNormal.sample(&mut rng)).collect();
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let unit = 2.0 * (64.0 * 256.0 + 256.0 * 256.0 * 2.0 + 256.0 * 64.0);
    let trace = TraceEstimator::Hutchinson(Noise::Rademacher);
    let mut g = c.benchmark_group("w4_gradient_d64_b256");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    let m64 = cnf::<f64>(&mlp, 1e-5, trace);
    let m32 = cnf::<f32>(&mlp, 1e-5, trace);
    let disc64 = report("d64 f64 Discrete", &m64, &x, Strategy::Discrete, None, unit, 78.0);
    let disc32 = report("d64 f32 Discrete", &m32, &x32, Strategy::Discrete, None, unit, 156.0);
    for strategy in STRATEGIES {
        let adj = AdjointConfig::with_strategy(strategy);
        let adj32 = AdjointConfig::<f32>::with_strategy(strategy);
        let label = format!("d64 f64 {strategy:?}");
        if strategy != Strategy::Discrete {
            report(&label, &m64, &x, strategy, Some(&disc64), unit, 78.0);
        }
        g.bench_function(&label, |bch| {
            bch.iter(|| {
                let mut rng = ChaCha8Rng::seed_from_u64(0);
                cnf_nll_grad(&m64, black_box(&x), &mut rng, &adj).unwrap()
            })
        });
        let label = format!("d64 f32 {strategy:?}");
        if strategy != Strategy::Discrete {
            report(&label, &m32, &x32, strategy, Some(&disc32), unit, 156.0);
        }
        g.bench_function(&label, |bch| {
            bch.iter(|| {
                let mut rng = ChaCha8Rng::seed_from_u64(0);
                cnf_nll_grad(&m32, black_box(&x32), &mut rng, &adj32).unwrap()
            })
        });
    }
    g.finish();
}

/// peers.md W5: one `eval_div` (exact trace) and one `vjp_aug`, toy net at init, batch 512.
fn w5(c: &mut Criterion) {
    use odeflow::field::{AugmentedVjp, Divergence};
    let (_, data) = read_npy_matrix(peers_dir().join("eval2k_8gaussians.npy"), 2).unwrap();
    let mlp = load_peer_checkpoint(peers_dir().join("init_toy.npz"), Activation::Tanh).unwrap();
    let mut g = c.benchmark_group("w5_field_calls_b512");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    fn calls<T: Real>(
        g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        mlp: &Mlp<T>,
        z: &[T],
    ) {
        let b = z.len() / 2;
        let mut ws = mlp.workspace(b);
        let (mut f, mut q, mut zc) =
            (vec![T::zero(); z.len()], vec![T::zero(); b], vec![T::zero(); z.len()]);
        let mut th = vec![T::zero(); mlp.n_params()];
        let c = vec![T::from_f64c(-1.0 / b as f64); b];
        let t = T::from_f64c(0.25);
        g.bench_function(format!("{name} eval_div"), |bch| {
            bch.iter(|| {
                mlp.eval_div(t, black_box(z), Divergence::Exact, &mut f, &mut q, None, &mut ws)
                    .unwrap()
            })
        });
        g.bench_function(format!("{name} vjp_aug"), |bch| {
            bch.iter(|| {
                let out =
                    AugmentedVjp { f: &mut f, q: &mut q, z_cot: &mut zc, theta_cot: Some(&mut th) };
                mlp.vjp_aug(t, black_box(z), Divergence::Exact, z, &c, out, &mut ws).unwrap()
            })
        });
    }
    let z = &data[..1024];
    let z32: Vec<f32> = z.iter().map(|&v| v as f32).collect();
    calls(&mut g, "f64", &mlp, z);
    calls(&mut g, "f32", &convert::<f32>(&mlp), &z32);
    g.finish();
}

criterion_group!(benches, w5, toy, d64);
criterion_main!(benches);
