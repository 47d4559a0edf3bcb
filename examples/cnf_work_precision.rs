//! Work against accuracy on peers.md's W2 (log-density of 10,000 points) and W3 (10,000
//! samples) with the trained toy net: for each method, controller setting and tolerance, the
//! right-hand-side calls of the chunked solve (chunks of 512) and the max / mean error of
//! log p and of the samples against a DOP853 solve at 1e-11. Counting only (no timing): the
//! time of a solve is proportional to its NFE here (`cnf_throughput` times them).
//!
//! Settings ([`odeflow::cnf::Steps`]): "hairer" is the default (PI controller with
//! β2 = 0.04, DOP853's elementary controller, first step with q = p); "peers" is the
//! elementary controller (torchdiffeq's) with the book's first step (diffrax's).
//!
//! Run: `cargo run --release --example cnf_work_precision`

use odeflow::cnf::{Cnf, CnfConfig, SolveMode, Steps};
use odeflow::field::{Activation, Mlp};
use odeflow::io::{load_peer_checkpoint, read_npy_matrix};
use odeflow::solvers::Method;
use rand::SeedableRng;

fn cnf(mlp: &Mlp<f64>, method: Method, tol: f64, steps: Steps) -> Cnf<f64, Mlp<f64>> {
    let mut cfg = CnfConfig {
        method,
        rtol: tol,
        atol: tol,
        mode: SolveMode::Chunked(512),
        ..Default::default()
    };
    steps.apply(&mut cfg);
    Cnf::new(mlp.clone(), 0.5, cfg).expect("valid settings")
}

/// Max and mean absolute difference.
fn errors(a: &[f64], b: &[f64]) -> (f64, f64) {
    let e: Vec<f64> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
    (e.iter().copied().fold(0.0, f64::max), e.iter().sum::<f64>() / e.len() as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/peers");
    let mlp = load_peer_checkpoint(dir.join("torch_f32_iter1000.npz"), Activation::Tanh)?;
    let (_, x) = read_npy_matrix(dir.join("test10k_8gaussians.npy"), 2)?;
    let rng = || rand_chacha::ChaCha8Rng::seed_from_u64(5005);
    let reference = Cnf::new(
        mlp.clone(),
        0.5,
        CnfConfig { method: Method::Dop853, rtol: 1e-11, atol: 1e-11, ..Default::default() },
    )?;
    let logp_ref = reference.log_prob(&x)?.0;
    let samples_ref = reference.sample(10_000, &mut rng())?.0;
    println!(
        "method  setting       tol    | W2 NFE  max err  mean err | W3 NFE  max err  mean err"
    );
    let grid: [(Method, &[f64]); 3] = [
        (Method::Dopri5, &[5e-6, 1e-5, 2e-5, 4e-5]),
        (Method::Tsit5, &[5e-6, 1e-5, 2e-5, 4e-5]),
        (Method::Dop853, &[4e-5, 1e-4, 3e-4]),
    ];
    for (method, tols) in grid {
        for steps in [Steps::Hairer, Steps::Peers] {
            for &tol in tols {
                let m = cnf(&mlp, method, tol, steps);
                let (logp, s2) = m.log_prob(&x)?;
                let (samples, s3) = m.sample(10_000, &mut rng())?;
                let (a, b) = errors(&logp, &logp_ref);
                let (c, d) = errors(&samples, &samples_ref);
                let setting = steps.name();
                println!(
                    "{method:<7} {setting:<9} {tol:8.0e} | {:6} {a:8.1e} {b:9.1e} | {:6} {c:8.1e} {d:9.1e}",
                    s2.n_rhs, s3.n_rhs
                );
            }
        }
    }
    Ok(())
}
