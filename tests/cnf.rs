//! Continuous normalizing flows against closed forms, quadrature, and each other.

use odeflow::cnf::{std_normal_log_prob, Cnf, CnfBlock, CnfConfig, SolveMode, Steps};
use odeflow::field::{Activation, LinearField, Mlp, MlpConfig, TimeConditioning};
use odeflow::solvers::{Method, SolveError, SolveOptions};
use odeflow::trace::{Noise, TraceEstimator};
use odeflow::Error;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A = [[0.3, 0.7], [0, −0.4]]: non-normal, tr A = −0.1, with the closed form
/// e^{At} = [[e^{0.3t}, e^{0.3t} − e^{−0.4t}], [0, e^{−0.4t}]] (as 0.7/(0.3 + 0.4) = 1).
const A: [f64; 4] = [0.3, 0.7, 0.0, -0.4];

fn exp_at(t: f64) -> [f64; 4] {
    let (p, m) = ((0.3 * t).exp(), (-0.4 * t).exp());
    [p, p - m, 0.0, m]
}

fn matvec(m: &[f64; 4], x: &[f64]) -> [f64; 2] {
    [m[0] * x[0] + m[1] * x[1], m[2] * x[0] + m[3] * x[1]]
}

fn tight<T: odeflow::field::Real>() -> CnfConfig<T> {
    CnfConfig { rtol: T::from_f64c(1e-11), atol: T::from_f64c(1e-11), ..Default::default() }
}

fn points(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..2 * n).map(|_| scale * (2.0 * rng.random::<f64>() - 1.0)).collect()
}

fn toy_mlp(seed: u64) -> Mlp<f64> {
    let cfg = MlpConfig { dim: 2, hidden: vec![16, 16], seed, ..Default::default() };
    Mlp::new(&cfg).unwrap()
}

/// log p(x) = log N(e^{AT} x) − ℓ(T) with ℓ(T) = −T tr A.
#[test]
fn linear_field_gives_the_analytic_gaussian_log_density() {
    let t_end = 0.8;
    let cnf = Cnf::new(LinearField::new(&A, &[0.0, 0.0]).unwrap(), t_end, tight()).unwrap();
    let x = points(50, 1, 3.0);
    let (logp, stats) = cnf.log_prob(&x).unwrap();
    let e = exp_at(t_end);
    for (b, xb) in x.chunks(2).enumerate() {
        let exact = std_normal_log_prob(&matvec(&e, xb)) + t_end * (0.3 - 0.4);
        // rtol = atol = 1e-11 gives errors of about 1e-10 in z and ℓ; 1e-8 relative is
        // the bar and leaves two orders of margin.
        assert!(((logp[b] - exact) / exact).abs() < 1e-8, "point {b}: {} vs {exact}", logp[b]);
    }
    assert!(stats.n_rhs > 0 && stats.n_accepted > 0);
}

/// The controller and the first-step rule in the config reach the solver: diffrax's
/// settings (elementary controller, first step with q = p + 1) and a slow-growing controller
/// take other step sequences than the default, and all meet the analytic log-density.
#[test]
fn config_controller_and_first_step_rule_reach_the_solver() {
    use odeflow::solvers::{InitialStepOrder, PiController, SolveOptions};
    let t_end = 0.8;
    let field = || LinearField::new(&A, &[0.0, 0.0]).unwrap();
    let x = points(20, 2, 3.0);
    let e = exp_at(t_end);
    let run = |cfg: CnfConfig<f64>| {
        let (logp, stats) = Cnf::new(field(), t_end, cfg).unwrap().log_prob(&x).unwrap();
        for (b, xb) in x.chunks(2).enumerate() {
            let exact = std_normal_log_prob(&matvec(&e, xb)) + t_end * (0.3 - 0.4);
            // rtol = atol = 1e-9: errors of about 1e-8 at most; 1e-7 relative leaves margin.
            assert!(((logp[b] - exact) / exact).abs() < 1e-7, "{b}: {} vs {exact}", logp[b]);
        }
        stats
    };
    let base = CnfConfig { rtol: 1e-9, atol: 1e-9, ..Default::default() };
    let diffrax_like = CnfConfig {
        controller: PiController::elementary(),
        options: SolveOptions {
            initial_step_order: InitialStepOrder::MethodPlusOne,
            ..Default::default()
        },
        ..base.clone()
    };
    let mut slow = base.clone();
    slow.controller.fac_max = Some(1.2);
    // `Steps` names the two rule sets: the default is Hairer's, the other the peers'.
    assert_eq!(Steps::of(&base), Some(Steps::Hairer));
    assert_eq!(Steps::of(&diffrax_like), Some(Steps::Peers));
    let mut named = base.clone();
    Steps::Peers.apply(&mut named);
    assert_eq!(named, diffrax_like);
    assert_eq!(Steps::of(&slow), None);
    assert_eq!("peers".parse::<Steps>(), Ok(Steps::Peers));
    assert!("pid".parse::<Steps>().is_err());
    let (s_base, s_dx, s_slow) = (run(base), run(diffrax_like), run(slow));
    assert_ne!(s_dx, s_base);
    assert!(s_slow.n_steps() > s_base.n_steps(), "{s_slow:?} vs {s_base:?}");
}

/// The trajectory of x under f = Az is e^{At} x, and ℓ(t) = −t tr A, at every output time.
#[test]
fn linear_trajectories_match_the_matrix_exponential() {
    let cnf = Cnf::new(LinearField::new(&A, &[0.0, 0.0]).unwrap(), 1.0, tight()).unwrap();
    let x = points(10, 2, 2.0);
    let times = [0.0, 0.1, 0.25, 0.5, 0.9, 1.0];
    let traj = cnf.trajectory(0.0, &x, &times).unwrap();
    assert_eq!(traj.states.len(), times.len());
    for (i, &t) in times.iter().enumerate() {
        let e = exp_at(t);
        for (b, xb) in x.chunks(2).enumerate() {
            let want = matvec(&e, xb);
            let got = &traj.states[i][2 * b..2 * b + 2];
            // Dense output of dopri5 is 4th order: at rtol 1e-11 its error stays near 1e-9.
            assert!(
                (got[0] - want[0]).abs() < 1e-8 && (got[1] - want[1]).abs() < 1e-8,
                "t={t} b={b}"
            );
            assert!((traj.delta_logp[i][b] - 0.1 * t).abs() < 1e-9);
        }
    }
    // The end of the trajectory is the forward map.
    let (z, dl, _) = cnf.forward(&x).unwrap();
    for (a, b) in z.iter().zip(traj.states.last().unwrap()) {
        assert!((a - b).abs() < 1e-12);
    }
    assert!((dl[0] - traj.delta_logp.last().unwrap()[0]).abs() < 1e-12);
    // Backward trajectories from the latent end return to x.
    let back = cnf.trajectory(1.0, &z, &[0.5, 0.0]).unwrap();
    for (a, b) in back.states[1].iter().zip(&x) {
        assert!((a - b).abs() < 1e-8);
    }
}

/// With the base N(0, I) at T, the marginal at time t is log p_t(y) =
/// log N(e^{A(T−t)} y) + (T − t) tr A.
#[test]
fn density_at_an_intermediate_time() {
    let t_end = 1.0;
    let cnf = Cnf::new(LinearField::new(&A, &[0.0, 0.0]).unwrap(), t_end, tight()).unwrap();
    let y = points(20, 3, 2.0);
    for t in [0.0, 0.3, 0.7, 1.0] {
        let (logp, _) = cnf.log_density_at(t, &y).unwrap();
        let e = exp_at(t_end - t);
        for (b, yb) in y.chunks(2).enumerate() {
            let exact = std_normal_log_prob(&matvec(&e, yb)) - 0.1 * (t_end - t);
            assert!((logp[b] - exact).abs() < 1e-8, "t={t}: {} vs {exact}", logp[b]);
        }
    }
}

/// Two chained blocks with fields A₁, A₂ map x to e^{A₂T₂} e^{A₁T₁} x with ℓ = −Σ T_k tr A_k.
#[test]
fn chained_blocks_compose() {
    let a2 = [-0.2, 0.5, -0.5, -0.2]; // rotation + contraction, tr = −0.4
    let blocks = vec![
        CnfBlock { field: LinearField::new(&A, &[0.0, 0.0]).unwrap(), t_end: 0.6 },
        CnfBlock { field: LinearField::new(&a2, &[0.0, 0.0]).unwrap(), t_end: 0.9 },
    ];
    let cnf = Cnf::chain(blocks, tight()).unwrap();
    assert!((cnf.total_time() - 1.5).abs() < 1e-15);
    let x = points(8, 4, 2.0);
    let (z, dl, _) = cnf.forward(&x).unwrap();
    let e1 = exp_at(0.6);
    let (c, s, r) = ((0.5f64 * 0.9).cos(), (0.5f64 * 0.9).sin(), (-0.2f64 * 0.9).exp());
    let e2 = [r * c, r * s, -r * s, r * c];
    for (b, xb) in x.chunks(2).enumerate() {
        let want = matvec(&e2, &matvec(&e1, xb));
        assert!((z[2 * b] - want[0]).abs() < 1e-9 && (z[2 * b + 1] - want[1]).abs() < 1e-9);
        assert!((dl[b] - (0.6 * 0.1 + 0.9 * 0.4)).abs() < 1e-9);
    }
    let (x_back, dl_back, _) = cnf.inverse(&z).unwrap();
    for (a, b) in x_back.iter().zip(&x) {
        assert!((a - b).abs() < 1e-9);
    }
    for (a, b) in dl_back.iter().zip(&dl) {
        assert!((a + b).abs() < 1e-9);
    }
}

/// The density of a flow with a random MLP field integrates to one over the plane.
///
/// Midpoint rule on [−7, 7]² with 140 × 140 cells (h = 0.1). The density is a smooth,
/// Gaussian-tailed deformation of N(0, I) (T = 0.5, a small random net), so the quadrature
/// error is far below the solver's and the mass outside the box is about e^{−24}.
#[test]
fn mlp_flow_density_integrates_to_one() {
    let cnf =
        Cnf::new(toy_mlp(11), 0.5, CnfConfig { rtol: 1e-8, atol: 1e-8, ..Default::default() })
            .unwrap();
    let (n, lo, hi) = (140usize, -7.0, 7.0);
    let h = (hi - lo) / n as f64;
    let grid: Vec<f64> = (0..n * n)
        .flat_map(|k| [lo + (k % n) as f64 * h + h / 2.0, lo + (k / n) as f64 * h + h / 2.0])
        .collect();
    let (logp, _) = cnf.log_prob(&grid).unwrap();
    let mass: f64 = logp.iter().map(|l| l.exp()).sum::<f64>() * h * h;
    println!("mass = {mass}, |mass - 1| = {:.2e}", (mass - 1.0).abs());
    // Observed |mass − 1| = 5e-12 (solver errors of ~1e-8 per point largely cancel in the
    // sum). 1e-8, the solver tolerance, is the bound: a wrong sign or factor in the
    // divergence shifts the mass by whole percents at T = 0.5.
    assert!((mass - 1.0).abs() < 1e-8, "mass = {mass}");
}

/// Samples carry the log-density of the base pushed through the flow, which log_prob
/// recovers; and x → z → x returns x.
#[test]
fn sampling_is_consistent_with_log_prob_and_invertible() {
    let cnf = Cnf::new(toy_mlp(5), 0.5, CnfConfig { rtol: 1e-9, atol: 1e-9, ..Default::default() })
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (x, logp_sample, _) = cnf.sample_with_log_prob(200, &mut rng).unwrap();
    let (logp, _) = cnf.log_prob(&x).unwrap();
    for (a, b) in logp.iter().zip(&logp_sample) {
        assert!((a - b).abs() < 1e-7, "{a} vs {b}");
    }
    let (z, _, _) = cnf.forward(&x).unwrap();
    let (x_back, _, _) = cnf.inverse(&z).unwrap();
    for (a, b) in x_back.iter().zip(&x) {
        assert!((a - b).abs() < 1e-7);
    }
    // `sample` (state only: ℓ leaves the error norm, so the steps differ) draws the same
    // base points from the same generator state and lands on the same samples.
    let (x2, _) = cnf.sample(200, &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
    for (a, b) in x2.iter().zip(&x) {
        assert!((a - b).abs() < 1e-7);
    }
    // `inverse_state` of the same base draws is `sample`, bit for bit.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let z: Vec<f64> =
        (0..400).map(|_| rand::Rng::sample(&mut rng, rand_distr::StandardNormal)).collect();
    let (x3, _) = cnf.inverse_state(&z).unwrap();
    assert_eq!(x3, x2);
}

/// The Hutchinson log-density is unbiased: its mean over noise draws matches the exact
/// one within four standard errors, for both noise kinds.
#[test]
fn hutchinson_log_density_is_unbiased() {
    let x = points(4, 6, 2.0);
    let exact_cnf = Cnf::new(toy_mlp(3), 0.5, tight()).unwrap();
    let (exact, _) = exact_cnf.log_prob(&x).unwrap();
    for noise in [Noise::Gaussian, Noise::Rademacher] {
        let cfg = CnfConfig {
            trace: TraceEstimator::Hutchinson(noise),
            rtol: 1e-8,
            atol: 1e-8,
            ..Default::default()
        };
        let cnf = Cnf::new(toy_mlp(3), 0.5, cfg).unwrap();
        let draws = 400;
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let mut sum = [0.0; 4];
        let mut sum_sq = [0.0; 4];
        let mut out = vec![0.0; 4];
        for _ in 0..draws {
            cnf.log_prob_into(&x, &mut out, &mut rng).unwrap();
            for b in 0..4 {
                sum[b] += out[b];
                sum_sq[b] += out[b] * out[b];
            }
        }
        for b in 0..4 {
            let mean = sum[b] / draws as f64;
            let var = (sum_sq[b] / draws as f64 - mean * mean).max(0.0);
            let se = (var / draws as f64).sqrt();
            assert!(var > 0.0, "{noise:?}: the estimator should be random");
            assert!(
                (mean - exact[b]).abs() < 4.0 * se + 1e-7,
                "{noise:?} b={b}: {mean} ± {se} vs {}",
                exact[b]
            );
        }
    }
}

/// Shared-step and per-sample solves agree within the tolerance, in both directions.
#[test]
fn shared_step_and_per_sample_solves_agree() {
    let x = points(64, 7, 3.0);
    let cfg = CnfConfig { rtol: 1e-8, atol: 1e-8, mode: SolveMode::Batch, ..Default::default() };
    let batch = Cnf::new(toy_mlp(8), 0.5, cfg.clone()).unwrap();
    let per = Cnf::new(toy_mlp(8), 0.5, CnfConfig { mode: SolveMode::PerSample, ..cfg }).unwrap();
    let (lb, sb) = batch.log_prob(&x).unwrap();
    let (lp, sp) = per.log_prob(&x).unwrap();
    for (a, b) in lb.iter().zip(&lp) {
        // Both solves meet rtol = atol = 1e-8 per step; the global errors are ~1e-8.
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    // Per-sample statistics add up every point's evaluations.
    assert!(sp.n_rhs > sb.n_rhs);
    let (xb, _, _) = batch.inverse(&x).unwrap();
    let (xp, _, _) = per.inverse(&x).unwrap();
    for (a, b) in xb.iter().zip(&xp) {
        assert!((a - b).abs() < 1e-6);
    }
}

/// Chunked solves (each chunk its own steps) agree with the shared-step solve, also with
/// Hutchinson noise (each chunk gets its rows of the same noise) and a ragged last chunk.
#[test]
fn chunked_solves_agree_with_the_batch() {
    let x = points(30, 13, 3.0);
    for trace in [TraceEstimator::Exact, TraceEstimator::Hutchinson(Noise::Rademacher)] {
        let cfg = CnfConfig {
            rtol: 1e-9,
            atol: 1e-9,
            trace,
            mode: SolveMode::Batch,
            ..Default::default()
        };
        let batch = Cnf::new(toy_mlp(8), 0.5, cfg.clone()).unwrap();
        let chunked =
            Cnf::new(toy_mlp(8), 0.5, CnfConfig { mode: SolveMode::Chunked(7), ..cfg }).unwrap();
        let (lb, _) = batch.log_prob(&x).unwrap();
        let (lc, sc) = chunked.log_prob(&x).unwrap();
        for (a, b) in lb.iter().zip(&lc) {
            assert!((a - b).abs() < 1e-7, "{trace:?}: {a} vs {b}");
        }
        assert!(sc.n_accepted > 0);
    }
}

/// f32 and f64 agree to f32's tolerance.
#[test]
fn f32_agrees_with_f64() {
    let x = points(32, 12, 2.0);
    let cfg64 = CnfConfig { rtol: 1e-6, atol: 1e-6, ..Default::default() };
    let cnf64 = Cnf::new(toy_mlp(2), 0.5, cfg64).unwrap();
    let params32: Vec<f32> =
        odeflow::field::VectorField::params(&toy_mlp(2)).iter().map(|&v| v as f32).collect();
    let mlp32 = Mlp::<f32>::from_params(toy_mlp(2).config(), params32).unwrap();
    let cnf32 = Cnf::new(mlp32, 0.5f32, CnfConfig { rtol: 1e-5, atol: 1e-5, ..Default::default() })
        .unwrap();
    let (l64, _) = cnf64.log_prob(&x).unwrap();
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let (l32, _) = cnf32.log_prob(&x32).unwrap();
    for (a, b) in l64.iter().zip(&l32) {
        assert!((a - f64::from(*b)).abs() < 1e-3, "{a} vs {b}");
    }
}

/// The peers' trained toy net on the peers' 10,000 test points: the mean NLL at a tight
/// tolerance matches diffrax's and torchdiffeq's f64 results at rtol = atol = 1e-7
/// (2.9384798857 and 2.9384798473, `shared/peers/python/results-2026-11-28.jsonl`), which
/// checks the ConcatSquash layout, the time conditioning and the signs end to end.
#[test]
fn peer_checkpoint_reproduces_the_peers_test_nll() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/peers");
    let mlp = odeflow::io::load_peer_checkpoint::<f64>(
        dir.join("torch_f32_iter1000.npz"),
        Activation::Tanh,
    )
    .unwrap();
    assert_eq!(mlp.config().hidden, vec![64, 64, 64]);
    assert_eq!(mlp.config().time, TimeConditioning::ConcatSquash);
    let (n, x) = odeflow::io::read_npy_matrix(dir.join("test10k_8gaussians.npy"), 2).unwrap();
    let cnf =
        Cnf::new(mlp, 0.5, CnfConfig { rtol: 1e-8, atol: 1e-8, ..Default::default() }).unwrap();
    let (logp, _) = cnf.log_prob(&x).unwrap();
    let nll = -logp.iter().sum::<f64>() / n as f64;
    println!("mean NLL at 1e-8: {nll:.10}");
    // The two peers differ by 4e-8 at 1e-7; their 1e-5 results are 4e-5 and 7e-5 higher,
    // so 1e-6 separates a correct model from one solved too loosely or wired wrongly.
    assert!((nll - 2.9384798857).abs() < 1e-6, "mean NLL {nll}");
    assert!((nll - 2.9384798473).abs() < 1e-6, "mean NLL {nll}");
}

#[test]
fn bad_input_gives_errors() {
    let field = || LinearField::new(&A, &[0.0, 0.0]).unwrap();
    let cnf = Cnf::new(field(), 1.0, CnfConfig::default()).unwrap();
    assert!(matches!(cnf.log_prob(&[1.0, 2.0, 3.0]), Err(Error::BatchShape { len: 3, dim: 2 })));
    assert!(matches!(
        cnf.log_prob(&[1.0, f64::NAN]),
        Err(Error::NonFiniteInput { index: 1, point: 0 })
    ));
    assert!(matches!(
        cnf.log_prob(&[f64::INFINITY, 0.0]),
        Err(Error::NonFiniteInput { index: 0, .. })
    ));
    let mut out = vec![0.0; 3];
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert!(matches!(
        cnf.log_prob_into(&[1.0, 2.0], &mut out, &mut rng),
        Err(Error::BufferLength { buffer: "out", expected: 1, found: 3 })
    ));
    assert!(matches!(
        cnf.log_density_at(2.0, &[0.0, 0.0]),
        Err(Error::InvalidConfig { name: "time", .. })
    ));
    assert!(matches!(
        cnf.trajectory(0.0, &[0.0, 0.0], &[0.5, 0.2]),
        Err(Error::InvalidConfig { name: "times", .. })
    ));
    for t in [0.0, -1.0, f64::NAN] {
        assert!(matches!(
            Cnf::new(field(), t, CnfConfig::default()),
            Err(Error::InvalidConfig { name: "t_end", .. })
        ));
    }
    let bad_tol = CnfConfig { rtol: 0.0, ..Default::default() };
    assert!(matches!(
        Cnf::new(field(), 1.0, bad_tol),
        Err(Error::Solve { source: SolveError::InvalidTolerance { .. }, .. })
    ));
    let no_step = CnfConfig { method: Method::Rk4, ..Default::default() };
    assert!(matches!(
        Cnf::new(field(), 1.0, no_step),
        Err(Error::Solve { source: SolveError::MissingStepSize { .. }, .. })
    ));
    let wrong_dim = LinearField::new(&[1.0; 9], &[0.0; 3]).unwrap();
    assert!(matches!(
        Cnf::chain(
            vec![
                CnfBlock { field: field(), t_end: 1.0 },
                CnfBlock { field: wrong_dim, t_end: 1.0 }
            ],
            CnfConfig::default()
        ),
        Err(Error::BlockDimension { block: 1, expected: 2, found: 3 })
    ));
    // Block times changed after construction are checked before the span they make, and
    // the blocks' times must add up to a finite total.
    let mut changed = Cnf::new(field(), 1.0, CnfConfig::default()).unwrap();
    for t in [f64::NAN, -1.0] {
        changed.blocks_mut()[0].t_end = t;
        assert!(matches!(
            changed.log_prob(&[0.0, 0.0]),
            Err(Error::InvalidConfig { name: "t_end", .. })
        ));
    }
    let huge = || CnfBlock { field: field(), t_end: 1e308 };
    assert!(matches!(
        Cnf::chain(vec![huge(), huge()], CnfConfig::default()),
        Err(Error::InvalidConfig { name: "total time", .. })
    ));
    // An empty batch has an empty trajectory (it panicked); a sample whose size overflows,
    // or cannot be allocated, is an error (it wrapped around to no samples, or aborted).
    let tr = cnf.trajectory(0.0, &[], &[0.5, 1.0]).unwrap();
    assert_eq!(tr.states, vec![Vec::<f64>::new(); 2]);
    assert_eq!(tr.delta_logp, vec![Vec::<f64>::new(); 2]);
    for n in [usize::MAX / 2 + 1, 1 << 60] {
        assert!(matches!(cnf.sample(n, &mut rng), Err(Error::InvalidConfig { name: "n", .. })));
        assert!(matches!(
            cnf.sample_with_log_prob(n, &mut rng),
            Err(Error::InvalidConfig { name: "n", .. })
        ));
    }
    // A solver failure comes back with its t: a blow-up field and too few steps.
    let stiff = LinearField::new(&[50.0, 0.0, 0.0, 50.0], &[0.0, 0.0]).unwrap();
    let few = CnfConfig::<f64> {
        options: SolveOptions { max_steps: 5, ..Default::default() },
        ..Default::default()
    };
    let cnf = Cnf::new(stiff, 1.0, few).unwrap();
    match cnf.log_prob(&[1.0, 1.0]) {
        Err(Error::Solve { block: 0, source: SolveError::TooManySteps { t, max_steps: 5 } }) => {
            assert!(t > 0.0 && t < 1.0)
        }
        other => panic!("expected TooManySteps, got {other:?}"),
    }
}

/// `[z | ℓ]` with `dℓ/dt = −q` evaluated whole at every stage: the log-density ODE without
/// the solver's shortcut for stages whose ℓ-derivative no weight reads.
struct PlainLogDensity<'a> {
    mlp: &'a Mlp<f64>,
    ws: <Mlp<f64> as odeflow::field::VectorField<f64>>::Workspace,
    n_z: usize,
}

impl odeflow::solvers::OdeSystem<f64> for PlainLogDensity<'_> {
    fn dim(&self) -> usize {
        self.n_z + self.n_z / 2
    }
    fn rhs(&mut self, t: f64, y: &[f64], dy: &mut [f64]) {
        use odeflow::field::{Divergence, VectorField};
        let (dz, dl) = dy.split_at_mut(self.n_z);
        let z = &y[..self.n_z];
        self.mlp.eval_div(t, z, Divergence::Exact, dz, dl, None, &mut self.ws).unwrap();
        dl.iter_mut().for_each(|v| *v = -*v);
    }
}

/// Where a stage's derivative reaches only later stage states (Dormand–Prince 5(4)'s stage 2,
/// DOP853's stages 2–5: zero weight in the solution, the error estimate and the dense
/// output), the CNF evaluates f without the divergence, one call per step attempt for
/// Dopri5 and four for DOP853 (none for Tsit5), and the result keeps every bit of the plain
/// solve of `[z | ℓ]` that evaluates the divergence at every stage.
#[test]
fn divergence_is_skipped_where_no_weight_reads_it() {
    use odeflow::field::{CountingField, VectorField};
    let mlp = toy_mlp(4);
    let x = points(64, 9, 2.0);
    for (method, per_attempt) in [(Method::Dopri5, 1), (Method::Dop853, 4), (Method::Tsit5, 0)] {
        let config = CnfConfig {
            method,
            rtol: 1e-7,
            atol: 1e-7,
            mode: SolveMode::Batch,
            ..Default::default()
        };
        let cnf = Cnf::new(CountingField::new(mlp.clone()), 0.9, config.clone()).unwrap();
        let (z, dl, stats) = cnf.forward(&x).unwrap();
        let counts = cnf.blocks()[0].field.stats();
        let attempts = (stats.n_accepted + stats.n_rejected) as u64;
        assert_eq!(counts.n_eval, per_attempt * attempts, "{method}: f alone");
        assert_eq!(counts.n_eval + counts.n_eval_div, stats.n_rhs as u64, "{method}: calls");

        let mut plain = PlainLogDensity { mlp: &mlp, ws: mlp.workspace(64), n_z: x.len() };
        let mut state = x.clone();
        state.extend(std::iter::repeat_n(0.0, 64));
        let mut integ = config.integrator().unwrap();
        let plain_stats =
            integ.integrate(&mut plain, 0.0, 0.9, &mut state, &mut odeflow::solvers::NoObserver);
        assert_eq!(plain_stats.unwrap(), stats, "{method}: the same steps");
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&z), bits(&state[..x.len()]), "{method}: z");
        assert_eq!(bits(&dl), bits(&state[x.len()..]), "{method}: Δℓ");
    }
}
