//! W2 of `shared/peers.md` in one quick run: the log-density of the peers' 10,000 test points
//! with their trained toy net, for several solver settings, each with its NFE, its error
//! against a tight reference and its best time of three. Meant to run right after the
//! peers' harness (`bench_diffrax.py --tasks w2`), so the two are compared under one load.
//!
//! Run: `cargo run --release --example cnf_throughput`

use std::time::Instant;

use odeflow::cnf::{Cnf, CnfConfig, SolveMode};
use odeflow::field::{Activation, Mlp, Real, VectorField};
use odeflow::io::{load_peer_checkpoint, read_npy_matrix};
use odeflow::solvers::Method;

fn cnf<T: Real>(mlp: &Mlp<f64>, method: Method, tol: f64, mode: SolveMode) -> Cnf<T, Mlp<T>> {
    let params: Vec<T> = mlp.params().iter().map(|&v| T::from_f64c(v)).collect();
    let field = Mlp::from_params(mlp.config(), params).expect("same architecture");
    let cfg = CnfConfig {
        method,
        rtol: T::from_f64c(tol),
        atol: T::from_f64c(tol),
        mode,
        ..Default::default()
    };
    Cnf::new(field, T::from_f64c(0.5), cfg).expect("valid settings")
}

fn run<T: Real>(label: &str, m: &Cnf<T, Mlp<T>>, x: &[f64], reference: &[f64]) {
    let x: Vec<T> = x.iter().map(|&v| T::from_f64c(v)).collect();
    let mut best = f64::INFINITY;
    let mut result = None;
    for _ in 0..3 {
        let start = Instant::now();
        let r = m.log_prob(&x).expect("solve");
        best = best.min(start.elapsed().as_secs_f64());
        result = Some(r);
    }
    let (logp, stats) = result.expect("ran");
    let errs: Vec<f64> = logp.iter().zip(reference).map(|(a, b)| (a.to_f64c() - b).abs()).collect();
    let max = errs.iter().copied().fold(0.0, f64::max);
    let mean = errs.iter().sum::<f64>() / errs.len() as f64;
    println!(
        "{label:<32} {best:7.3} s  NFE {:>6}  |err| max {max:.1e} mean {mean:.1e}",
        stats.n_rhs
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/peers");
    let mlp = load_peer_checkpoint(dir.join("torch_f32_iter1000.npz"), Activation::Tanh)?;
    let (_, x) = read_npy_matrix(dir.join("test10k_8gaussians.npy"), 2)?;
    let reference = cnf::<f64>(&mlp, Method::Dop853, 1e-10, SolveMode::Batch).log_prob(&x)?.0;
    println!("log-density of 10,000 points (NFE: all right-hand-side calls, summed over chunks)");
    for (method, tol, mode, name) in [
        (Method::Dopri5, 1e-5, SolveMode::Batch, "batch"),
        (Method::Dopri5, 1e-5, SolveMode::Chunked(512), "chunks of 512"),
        (Method::Dopri5, 1e-5, SolveMode::Chunked(256), "chunks of 256"),
        (Method::Tsit5, 1e-5, SolveMode::Chunked(512), "chunks of 512"),
        (Method::Dop853, 1e-4, SolveMode::Chunked(512), "chunks of 512"),
    ] {
        run::<f64>(
            &format!("f64 {method} {tol:e} {name}"),
            &cnf(&mlp, method, tol, mode),
            &x,
            &reference,
        );
    }
    for (method, tol, mode, name) in [
        (Method::Dopri5, 1e-5, SolveMode::Batch, "batch"),
        (Method::Dopri5, 1e-5, SolveMode::Chunked(512), "chunks of 512"),
        (Method::Dop853, 1e-4, SolveMode::Chunked(512), "chunks of 512"),
    ] {
        run::<f32>(
            &format!("f32 {method} {tol:e} {name}"),
            &cnf(&mlp, method, tol, mode),
            &x,
            &reference,
        );
    }
    println!("10,000 samples (W3), dopri5 1e-5");
    for (mode, name) in [(SolveMode::Batch, "batch"), (SolveMode::Chunked(512), "chunks of 512")] {
        sample::<f64>(&format!("f64 {name}"), &cnf(&mlp, Method::Dopri5, 1e-5, mode));
        sample::<f32>(&format!("f32 {name}"), &cnf(&mlp, Method::Dopri5, 1e-5, mode));
    }
    Ok(())
}

/// Best of three: 10,000 samples state only, and with their log-densities.
fn sample<T: Real>(label: &str, m: &Cnf<T, Mlp<T>>) {
    use rand::SeedableRng;
    let time = |f: &mut dyn FnMut() -> usize| {
        let mut best = f64::INFINITY;
        let mut nfe = 0;
        for _ in 0..3 {
            let start = Instant::now();
            nfe = f();
            best = best.min(start.elapsed().as_secs_f64());
        }
        (best, nfe)
    };
    let rng = || rand_chacha::ChaCha8Rng::seed_from_u64(5005);
    let (a, na) = time(&mut || m.sample(10_000, &mut rng()).expect("solve").1.n_rhs);
    let (b, nb) = time(&mut || m.sample_with_log_prob(10_000, &mut rng()).expect("solve").2.n_rhs);
    println!("{label:<32} state only {a:7.3} s (NFE {na:>5}), with log p {b:7.3} s (NFE {nb:>5})");
}
