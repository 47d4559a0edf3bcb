//! W2 and W3 of `shared/peers.md` in one quick run: the log-density of the peers' 10,000 test
//! points and 10,000 samples with their trained toy net, for several solver settings, each
//! with its NFE, its error against a tight reference (DOP853 at 1e-11) and its best time of
//! three. Meant to run right after the peers' harness (`bench_diffrax.py --tasks w2,w3`), so
//! the two are compared under one load.
//!
//! "peers' steps" marks rows with the elementary controller and the first step with
//! q = p + 1 (torchdiffeq's controller, diffrax's first step; `cnf::Steps::Peers`); the
//! others use Hairer's PI controller and first step (the default). `cnf_work_precision` lays out NFE against error for all.
//! W3 pushes the harness's own base draws (`data/peers/w3_base10k.npy`), so that sample
//! errors compare with the peers'.
//!
//! Run: `cargo run --release --example cnf_throughput [-- PEER_DIR]`. With `PEER_DIR` (the
//! harness's `--ckpt-dir`) it also prints the errors of diffrax's outputs found there against
//! the same references: `w2_logp_diffrax_{f64,f32}_1e-05.npy` (written by `--tasks w2`)
//! and `w3_samples_diffrax_{dtype}_{state-only,with-logp}.npy` (the W3 samples, which the
//! harness computes but does not save: add
//! `np.save(os.path.join(CKPT, "w3_samples_diffrax_%s_%s.npy" % (args.dtype, name)), xs)`
//! after `xs = ...` in `w3_sample` of a copy of `bench_diffrax.py`).

use std::time::Instant;

use odeflow::cnf::{Cnf, CnfConfig, SolveMode, Steps};
use odeflow::field::{Activation, Mlp, Real, VectorField};
use odeflow::io::{load_peer_checkpoint, read_npy, read_npy_matrix};
use odeflow::solvers::Method;

/// One row's solver settings.
#[derive(Clone, Copy)]
struct Row {
    method: Method,
    tol: f64,
    mode: SolveMode,
    peers_steps: bool,
}

impl Row {
    fn label(&self, dtype: &str) -> String {
        let mode = match self.mode {
            SolveMode::Batch => "batch".to_string(),
            SolveMode::Chunked(c) => format!("chunks of {c}"),
            SolveMode::PerSample => "per sample".to_string(),
        };
        let steps = if self.peers_steps { ", peers' steps" } else { "" };
        format!("{dtype} {} {:e} {mode}{steps}", self.method, self.tol)
    }

    fn cnf<T: Real>(&self, mlp: &Mlp<f64>) -> Cnf<T, Mlp<T>> {
        let params: Vec<T> = mlp.params().iter().map(|&v| T::from_f64c(v)).collect();
        let field = Mlp::from_params(mlp.config(), params).expect("same architecture");
        let mut cfg = CnfConfig {
            method: self.method,
            rtol: T::from_f64c(self.tol),
            atol: T::from_f64c(self.tol),
            mode: self.mode,
            ..Default::default()
        };
        if self.peers_steps {
            Steps::Peers.apply(&mut cfg);
        }
        Cnf::new(field, T::from_f64c(0.5), cfg).expect("valid settings")
    }
}

const fn row(method: Method, tol: f64, mode: SolveMode, peers_steps: bool) -> Row {
    Row { method, tol, mode, peers_steps }
}

/// Max and mean of |a − b|.
fn errors<T: Real>(a: &[T], b: &[f64]) -> (f64, f64) {
    let e: Vec<f64> = a.iter().zip(b).map(|(x, y)| (x.to_f64c() - y).abs()).collect();
    (e.iter().copied().fold(0.0, f64::max), e.iter().sum::<f64>() / e.len() as f64)
}

/// Best of three of `f`, with its last result.
fn best_of_three<R>(mut f: impl FnMut() -> R) -> (f64, R) {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..3 {
        let start = Instant::now();
        last = Some(f());
        best = best.min(start.elapsed().as_secs_f64());
    }
    (best, last.expect("ran"))
}

fn log_density<T: Real>(r: Row, dtype: &str, mlp: &Mlp<f64>, x: &[f64], reference: &[f64]) {
    let m = r.cnf::<T>(mlp);
    let x: Vec<T> = x.iter().map(|&v| T::from_f64c(v)).collect();
    let (best, (logp, stats)) = best_of_three(|| m.log_prob(&x).expect("solve"));
    let (max, mean) = errors(&logp, reference);
    println!(
        "{:<44} {best:7.3} s  NFE {:>5}  |err| max {max:.1e} mean {mean:.1e}",
        r.label(dtype),
        stats.n_rhs
    );
}

fn samples<T: Real>(r: Row, dtype: &str, mlp: &Mlp<f64>, z: &[f64], reference: &[f64]) {
    let m = r.cnf::<T>(mlp);
    let z: Vec<T> = z.iter().map(|&v| T::from_f64c(v)).collect();
    let (a, (x, sa)) = best_of_three(|| m.inverse_state(&z).expect("solve"));
    let (b, (xl, _, sb)) = best_of_three(|| m.inverse(&z).expect("solve"));
    let (max, mean) = errors(&x, reference);
    let (max_l, mean_l) = errors(&xl, reference);
    println!(
        "{:<44} {a:6.3} s NFE {:>4} |err| {max:.1e} {mean:.1e}; with log p {b:6.3} s NFE {:>4} |err| {max_l:.1e} {mean_l:.1e}",
        r.label(dtype),
        sa.n_rhs,
        sb.n_rhs
    );
}

/// The errors of the peers' saved outputs in `dir`, where present.
fn peer_errors(dir: &std::path::Path, logp_ref: &[f64], samples_ref: &[f64]) {
    for dtype in ["f64", "f32"] {
        let w2 = dir.join(format!("w2_logp_diffrax_{dtype}_1e-05.npy"));
        if let Ok(a) = read_npy(&w2) {
            let (max, mean) = errors(&a.data, logp_ref);
            println!(
                "diffrax {dtype} W2 (dopri5 1e-5, one state): |err| max {max:.1e} mean {mean:.1e}"
            );
        }
        for variant in ["state-only", "with-logp"] {
            let w3 = dir.join(format!("w3_samples_diffrax_{dtype}_{variant}.npy"));
            if let Ok(a) = read_npy(&w3) {
                let (max, mean) = errors(&a.data, samples_ref);
                println!("diffrax {dtype} W3 {variant}: |err| max {max:.1e} mean {mean:.1e}");
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/peers");
    let mlp = load_peer_checkpoint(dir.join("torch_f32_iter1000.npz"), Activation::Tanh)?;
    let (_, x) = read_npy_matrix(dir.join("test10k_8gaussians.npy"), 2)?;
    let (_, z) = read_npy_matrix(dir.join("w3_base10k.npy"), 2)?;
    let tight = row(Method::Dop853, 1e-11, SolveMode::Batch, false).cnf::<f64>(&mlp);
    let logp_ref = tight.log_prob(&x)?.0;
    let samples_ref = tight.inverse_state(&z)?.0;
    if let Some(peer_dir) = std::env::args().nth(1) {
        peer_errors(std::path::Path::new(&peer_dir), &logp_ref, &samples_ref);
    }

    use Method::{Dop853, Dopri5, Tsit5};
    use SolveMode::{Batch, Chunked};
    println!(
        "W2: log-density of 10,000 points (NFE: all right-hand-side calls, summed over chunks)"
    );
    for r in [
        row(Dopri5, 1e-5, Batch, false),
        row(Dopri5, 1e-5, Batch, true),
        row(Dopri5, 1e-5, Chunked(512), false),
        row(Tsit5, 4e-5, Chunked(512), false),
        row(Dop853, 1e-4, Chunked(512), false),
        row(Dop853, 3e-4, Chunked(512), false),
    ] {
        log_density::<f64>(r, "f64", &mlp, &x, &logp_ref);
    }
    for r in [
        row(Dopri5, 1e-5, Batch, false),
        row(Dopri5, 1e-5, Chunked(512), false),
        row(Dop853, 1e-4, Chunked(512), false),
        row(Dop853, 3e-4, Chunked(512), false),
    ] {
        log_density::<f32>(r, "f32", &mlp, &x, &logp_ref);
    }
    println!("W3: 10,000 samples (the harness's base draws), state only and with log p: time, NFE, |err| max mean");
    for r in [
        row(Dopri5, 1e-5, Batch, false),
        row(Dopri5, 1e-5, Batch, true),
        row(Dopri5, 1e-5, Chunked(512), false),
        row(Tsit5, 1e-5, Batch, true),
        row(Tsit5, 1e-5, Chunked(512), true),
    ] {
        samples::<f64>(r, "f64", &mlp, &z, &samples_ref);
        samples::<f32>(r, "f32", &mlp, &z, &samples_ref);
    }
    Ok(())
}
