//! Adjoint gradients against finite differences, closed forms and each other.

use odeflow::adjoint::{cnf_nll_grad, AdjointConfig, Strategy};
use odeflow::cnf::{Cnf, CnfConfig};
use odeflow::field::{Activation, Mlp, MlpConfig, TimeConditioning, VectorField};
use odeflow::trace::TraceEstimator;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const STRATEGIES: [Strategy; 3] = [Strategy::Backsolve, Strategy::Checkpointed, Strategy::Discrete];

fn small_mlp(seed: u64, act: Activation) -> Mlp<f64> {
    let cfg = MlpConfig {
        dim: 2,
        hidden: vec![8, 8],
        activation: act,
        time: TimeConditioning::ConcatSquash,
        seed,
        ..Default::default()
    };
    Mlp::new(&cfg).unwrap()
}

fn points(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..2 * n).map(|_| scale * (2.0 * rng.random::<f64>() - 1.0)).collect()
}

fn unit_direction(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f64> = (0..n).map(|_| 2.0 * rng.random::<f64>() - 1.0).collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fourth-order central difference `[−L(2δ) + 8L(δ) − 8L(−δ) + L(−2δ)] / 12δ`: truncation
/// O(δ⁴), so δ can be large enough that the solver's O(tol) noise is divided by little.
fn fd4(mut loss: impl FnMut(f64) -> f64, delta: f64) -> f64 {
    (-loss(2.0 * delta) + 8.0 * loss(delta) - 8.0 * loss(-delta) + loss(-2.0 * delta))
        / (12.0 * delta)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

fn tight<T: odeflow::field::Real>(tol: f64, trace: TraceEstimator) -> CnfConfig<T> {
    CnfConfig {
        rtol: T::from_f64c(tol),
        atol: T::from_f64c(tol),
        trace,
        seed: 11,
        ..Default::default()
    }
}

/// The mean NLL by the plain forward solve, with the noise drawn from `seed` (as the
/// gradient call draws it).
fn nll(cnf: &Cnf<f64, Mlp<f64>>, x: &[f64], seed: u64) -> f64 {
    let mut out = vec![0.0; x.len() / 2];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    cnf.log_prob_into(x, &mut out, &mut rng).unwrap();
    -out.iter().sum::<f64>() / out.len() as f64
}

/// ∂L/∂θ (directional and the largest coordinates), ∂L/∂x (all) and ∂L/∂T of the mean NLL
/// against fourth-order central differences, for every block; returns the worst relative
/// error.
fn check_nll_against_fd(cnf: &Cnf<f64, Mlp<f64>>, x: &[f64], strategy: Strategy) -> f64 {
    let seed = 5;
    let adj = AdjointConfig::with_strategy(strategy);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (loss, grad) = cnf_nll_grad(cnf, x, &mut rng, &adj).unwrap();
    assert!((loss - nll(cnf, x, seed)).abs() < 1e-12, "loss {loss}");
    let mut worst: f64 = 0.0;
    let mut report = |what: String, g: f64, fd: f64| {
        let r = rel(g, fd);
        println!("{strategy:?} {what}: adjoint {g:.12e} fd {fd:.12e} rel {r:.2e}");
        worst = worst.max(r);
    };
    for k in 0..cnf.blocks().len() {
        let p = cnf.blocks()[k].field.n_params();
        let v = unit_direction(p, 100 + k as u64);
        let perturbed = |dir: &dyn Fn(&mut [f64], f64), s: f64| {
            let mut c = cnf.clone();
            dir(c.blocks_mut()[k].field.params_mut(), s);
            nll(&c, x, seed)
        };
        let along = |th: &mut [f64], s: f64| th.iter_mut().zip(&v).for_each(|(t, vi)| *t += s * vi);
        let fd = fd4(|s| perturbed(&along, s), 1e-3);
        report(format!("block {k} dθ·v"), dot(&grad.theta[k], &v), fd);
        // The three largest coordinates.
        let mut idx: Vec<usize> = (0..p).collect();
        idx.sort_by(|&a, &b| grad.theta[k][b].abs().total_cmp(&grad.theta[k][a].abs()));
        for &i in &idx[..3] {
            let coord = |th: &mut [f64], s: f64| th[i] += s;
            let fd = fd4(|s| perturbed(&coord, s), 1e-3);
            report(format!("block {k} dθ[{i}]"), grad.theta[k][i], fd);
        }
        let fd = fd4(
            |s| {
                let mut c = cnf.clone();
                c.blocks_mut()[k].t_end += s;
                nll(&c, x, seed)
            },
            1e-3,
        );
        report(format!("block {k} dT"), grad.t_end[k], fd);
    }
    for i in 0..x.len() {
        let fd = fd4(
            |s| {
                let mut xp = x.to_vec();
                xp[i] += s;
                nll(cnf, &xp, seed)
            },
            1e-3,
        );
        report(format!("dx[{i}]"), grad.x[i], fd);
    }
    worst
}

/// The bar: relative error below 1e-5 at rtol = atol = 1e-10, exact trace, one block.
#[test]
fn nll_gradient_matches_finite_differences_exact_single_block() {
    let cnf =
        Cnf::new(small_mlp(1, Activation::Tanh), 0.7, tight(1e-10, TraceEstimator::Exact)).unwrap();
    let x = points(4, 3, 1.5);
    for strategy in STRATEGIES {
        let worst = check_nll_against_fd(&cnf, &x, strategy);
        assert!(worst < 1e-5, "{strategy:?}: worst relative error {worst:.2e}");
    }
}
