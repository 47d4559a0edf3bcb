//! CNF throughput on FFJORD's toy net (peers.md W2 and W3), f64 and f32.
//!
//! The field is the peers' trained net (`data/peers/torch_f32_iter1000.npz`: ConcatSquash
//! 2 → 64 → 64 → 64 → 2, tanh), T = 0.5, exact trace, rtol = atol = 1e-5, the batch as one
//! state. W2: log-density of the peers' 10,000 test points; W3: 10,000 samples (state only).
//! Before timing, each configuration prints its NFE and its log-density error against a
//! tight reference (dop853, rtol = atol = 1e-10), so speed is read at a known accuracy.
//!
//! Run: `cargo bench --bench cnf` (about three minutes on two cores).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::path::Path;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use odeflow::cnf::{Cnf, CnfConfig, SolveMode};
use odeflow::field::{Activation, Mlp, Real};
use odeflow::io::{load_peer_checkpoint, read_npy_matrix};
use odeflow::solvers::Method;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn data() -> (Mlp<f64>, Vec<f64>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/peers");
    let mlp = load_peer_checkpoint(dir.join("torch_f32_iter1000.npz"), Activation::Tanh).unwrap();
    let (_, x) = read_npy_matrix(dir.join("test10k_8gaussians.npy"), 2).unwrap();
    (mlp, x)
}

fn cnf<T: Real>(mlp: &Mlp<f64>, method: Method, tol: f64, mode: SolveMode) -> Cnf<T, Mlp<T>> {
    let params: Vec<T> =
        odeflow::field::VectorField::params(mlp).iter().map(|&v| T::from_f64c(v)).collect();
    let field = Mlp::from_params(mlp.config(), params).unwrap();
    let cfg = CnfConfig {
        method,
        rtol: T::from_f64c(tol),
        atol: T::from_f64c(tol),
        mode,
        ..Default::default()
    };
    Cnf::new(field, T::from_f64c(0.5), cfg).unwrap()
}

fn report<T: Real>(label: &str, cnf: &Cnf<T, Mlp<T>>, x: &[T], reference: &[f64]) {
    let (logp, stats) = cnf.log_prob(x).unwrap();
    let errs: Vec<f64> = logp.iter().zip(reference).map(|(a, b)| (a.to_f64c() - b).abs()).collect();
    let max = errs.iter().copied().fold(0.0, f64::max);
    let mean = errs.iter().sum::<f64>() / errs.len() as f64;
    let nll = -logp.iter().map(|v| v.to_f64c()).sum::<f64>() / logp.len() as f64;
    println!(
        "{label}: NFE {} (accepted {}, rejected {}), |log p − ref| max {max:.2e} mean {mean:.2e}, mean NLL {nll:.6}",
        stats.n_rhs, stats.n_accepted, stats.n_rejected
    );
}

fn w2_log_density(c: &mut Criterion) {
    let (mlp, x) = data();
    let reference =
        cnf::<f64>(&mlp, Method::Dop853, 1e-10, SolveMode::Batch).log_prob(&x).unwrap().0;
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let mut g = c.benchmark_group("w2_log_density_10k");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(8));
    for method in [Method::Dopri5, Method::Tsit5] {
        let label = format!("f64 {method} 1e-5 batch");
        let m = cnf::<f64>(&mlp, method, 1e-5, SolveMode::Batch);
        report(&label, &m, &x, &reference);
        g.bench_function(&label, |b| b.iter(|| m.log_prob(black_box(&x)).unwrap()));
    }
    let label = "f64 dop853 1e-4 batch".to_string();
    let m = cnf::<f64>(&mlp, Method::Dop853, 1e-4, SolveMode::Batch);
    report(&label, &m, &x, &reference);
    g.bench_function(&label, |b| b.iter(|| m.log_prob(black_box(&x)).unwrap()));
    for method in [Method::Dopri5, Method::Tsit5] {
        let label = format!("f32 {method} 1e-5 batch");
        let m = cnf::<f32>(&mlp, method, 1e-5, SolveMode::Batch);
        report(&label, &m, &x32, &reference);
        g.bench_function(&label, |b| b.iter(|| m.log_prob(black_box(&x32)).unwrap()));
    }
    for (method, tol, mode, name) in [
        (Method::Dopri5, 1e-5, SolveMode::PerSample, "per-sample"),
        (Method::Dopri5, 1e-5, SolveMode::Chunked(512), "chunks of 512"),
        (Method::Dopri5, 1e-4, SolveMode::Chunked(512), "chunks of 512"),
        (Method::Tsit5, 1e-4, SolveMode::Chunked(512), "chunks of 512"),
        (Method::Dop853, 1e-4, SolveMode::Chunked(512), "chunks of 512"),
    ] {
        let label = format!("f64 {method} {tol:e} {name}");
        let m = cnf::<f64>(&mlp, method, tol, mode);
        report(&label, &m, &x, &reference);
        g.bench_function(&label, |b| b.iter(|| m.log_prob(black_box(&x)).unwrap()));
    }
    g.finish();
}

fn w3_sample(c: &mut Criterion) {
    let (mlp, _) = data();
    let mut g = c.benchmark_group("w3_sample_10k");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    let m64 = cnf::<f64>(&mlp, Method::Dopri5, 1e-5, SolveMode::Batch);
    let m32 = cnf::<f32>(&mlp, Method::Dopri5, 1e-5, SolveMode::Batch);
    let (_, s) = m64.sample(10_000, &mut ChaCha8Rng::seed_from_u64(5005)).unwrap();
    println!("w3 f64 dopri5 1e-5: NFE {}", s.n_rhs);
    g.bench_function("f64 dopri5 1e-5 state only", |b| {
        b.iter(|| m64.sample(10_000, &mut ChaCha8Rng::seed_from_u64(5005)).unwrap())
    });
    g.bench_function("f32 dopri5 1e-5 state only", |b| {
        b.iter(|| m32.sample(10_000, &mut ChaCha8Rng::seed_from_u64(5005)).unwrap())
    });
    g.bench_function("f64 dopri5 1e-5 with log-density", |b| {
        b.iter(|| m64.sample_with_log_prob(10_000, &mut ChaCha8Rng::seed_from_u64(5005)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, w2_log_density, w3_sample);
criterion_main!(benches);
