//! Discrete flows: log-determinants against brute-force Jacobians, round trips, the 2-D
//! density's mass, MAF/IAF duality, gradients against finite differences, bad input, and
//! maximum-likelihood training on toy sets.

// The FD loops index parameters, inputs and gradients with one variable.
#![allow(clippy::needless_range_loop)]

use nalgebra::DMatrix;
use odeflow::flows::{
    Coupling, CouplingKind, DenseAffine, ElementwiseAffine, Flow, FlowModel, Iaf, InverseCdf,
    LuAffine, Maf, MafSpline, Permutation, Planar, Radial, RqShape, RqSpline,
};
use odeflow::Error;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Layers = Vec<Box<dyn Flow<f64>>>;

/// Every layer kind on its own (d = 3) and one composition of all of them.
fn catalogue(d: usize) -> Vec<(&'static str, Layers)> {
    let aff = CouplingKind::Affine { scale_bound: 2.0 };
    vec![
        ("elementwise-affine", vec![Box::new(ElementwiseAffine::new(d).unwrap())]),
        (
            "lu-affine",
            vec![Box::new(LuAffine::new(d, Some((0..d).rev().collect()), true).unwrap())],
        ),
        ("glow-1x1", vec![Box::new(LuAffine::glow(d, 3).unwrap())]),
        ("dense-affine", vec![Box::new(DenseAffine::new(d).unwrap())]),
        (
            "permutation",
            vec![
                Box::new(Permutation::random(d, 5).unwrap()),
                Box::new(ElementwiseAffine::new(d).unwrap()),
            ],
        ),
        (
            "additive-coupling",
            vec![Box::new(Coupling::new(d, CouplingKind::Additive, &[8, 8], false).unwrap())],
        ),
        ("affine-coupling", vec![Box::new(Coupling::new(d, aff, &[8, 8], true).unwrap())]),
        ("rq-spline", vec![Box::new(RqSpline::new(d, RqShape { bins: 5, bound: 2.0 }).unwrap())]),
        (
            "spline-coupling",
            vec![Box::new(
                Coupling::new(
                    d,
                    CouplingKind::RationalQuadratic(RqShape { bins: 4, bound: 2.5 }),
                    &[8],
                    false,
                )
                .unwrap(),
            )],
        ),
        ("planar", vec![Box::new(Planar::new(d).unwrap()), Box::new(Planar::new(d).unwrap())]),
        ("radial", vec![Box::new(Radial::new(d).unwrap()), Box::new(Radial::new(d).unwrap())]),
        ("inverse-cdf", vec![Box::new(tabulated(d))]),
        ("maf", vec![Box::new(Maf::new(d, &[10, 10], 2.0).unwrap())]),
        ("iaf", vec![Box::new(Iaf::new(d, &[10, 10], 2.0).unwrap())]),
        (
            "maf-spline",
            vec![Box::new(MafSpline::new(d, &[10], RqShape { bins: 4, bound: 2.5 }).unwrap())],
        ),
        (
            "iaf-spline",
            vec![Box::new(Iaf::spline(d, &[10], RqShape { bins: 4, bound: 2.5 }).unwrap())],
        ),
        (
            "composition",
            vec![
                Box::new(tabulated(d)),
                Box::new(ElementwiseAffine::new(d).unwrap()),
                Box::new(Coupling::new(d, aff, &[8], false).unwrap()),
                Box::new(Permutation::reverse(d).unwrap()),
                Box::new(LuAffine::glow(d, 1).unwrap()),
                Box::new(Maf::new(d, &[8], 2.0).unwrap()),
                Box::new(Coupling::new(d, CouplingKind::Additive, &[8], true).unwrap()),
                Box::new(Iaf::new(d, &[8], 2.0).unwrap()),
                Box::new(RqSpline::new(d, RqShape { bins: 6, bound: 3.0 }).unwrap()),
                Box::new(Planar::new(d).unwrap()),
                Box::new(Radial::new(d).unwrap()),
                Box::new(DenseAffine::new(d).unwrap()),
            ],
        ),
    ]
}

/// The inverse-CDF flow of a correlated two-component Gaussian mixture in d dimensions
/// tabulated on 25 knots per axis over [−7, 7] (every value is positive in f64, down to
/// about e⁻¹⁵⁰, so every conditional table is a proper density).
fn tabulated(d: usize) -> InverseCdf {
    let knots: Vec<f64> = (0..25).map(|k| -7.0 + 14.0 * k as f64 / 24.0).collect();
    let n = knots.len().pow(d as u32);
    let mut vals = Vec::with_capacity(n);
    for flat in 0..n {
        let mut idx = flat;
        let mut x = vec![0.0; d];
        for i in (0..d).rev() {
            x[i] = knots[idx % knots.len()];
            idx /= knots.len();
        }
        // Component 1: N(μ, Σ) with Σ = I + 0.6 (11ᵀ − I)-ish coupling along the chain.
        let mut q1 = 0.0;
        for i in 0..d {
            let prev = if i > 0 { 0.7 * x[i - 1] } else { 0.0 };
            q1 += (x[i] - 0.5 - prev).powi(2);
        }
        let q2: f64 = x.iter().map(|v| (v + 1.5).powi(2) / 0.5).sum();
        vals.push((-0.5 * q1).exp() + 0.5 * (-0.5 * q2).exp());
    }
    InverseCdf::new(vec![knots; d], &vals).unwrap()
}

/// A model with random, non-trivial parameters (`scale` sized), so no layer is the identity.
fn randomized(layers: Layers, seed: u64, scale: f64) -> FlowModel<f64> {
    let mut m = FlowModel::new(layers, seed).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
    let init = m.params().to_vec();
    for (p, &p0) in m.params_mut().iter_mut().zip(&init) {
        *p = p0 + scale * (2.0 * rng.random::<f64>() - 1.0);
    }
    m
}

fn normal(n: usize, seed: u64) -> Vec<f64> {
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
}

/// log|det| of the central-difference Jacobian of `f` at `z` (one point), via nalgebra's LU.
fn fd_logdet(f: &dyn Fn(&[f64]) -> Vec<f64>, z: &[f64], h: f64) -> f64 {
    let d = z.len();
    let mut j = DMatrix::<f64>::zeros(d, d);
    for k in 0..d {
        let (mut zp, mut zm) = (z.to_vec(), z.to_vec());
        zp[k] += h;
        zm[k] -= h;
        let (fp, fm) = (f(&zp), f(&zm));
        for i in 0..d {
            j[(i, k)] = (fp[i] - fm[i]) / (2.0 * h);
        }
    }
    j.determinant().abs().ln()
}

#[test]
fn logdet_matches_brute_force_jacobian_and_round_trips() {
    let d = 3;
    let mut worst = (0.0f64, 0.0f64, 0.0f64);
    for (name, layers) in catalogue(d) {
        let m = randomized(layers, 11, 0.3);
        let z = normal(4 * d, 2);
        let (x, ld_f) = m.forward(&z).unwrap();
        let (z2, ld_i) = m.inverse(&x).unwrap();
        for b in 0..4 {
            let zb = &z[b * d..(b + 1) * d];
            let fwd = |v: &[f64]| m.forward(v).unwrap().0;
            let inv = |v: &[f64]| m.inverse(v).unwrap().0;
            let ld_fd = fd_logdet(&fwd, zb, 1e-5);
            let ld_fd_inv = fd_logdet(&inv, &x[b * d..(b + 1) * d], 1e-5);
            let e1 = (ld_f[b] - ld_fd).abs();
            let e2 = (ld_i[b] - ld_fd_inv).abs();
            assert!(
                e1 < 1e-7 && e2 < 1e-7,
                "{name}: log-det {} vs FD {ld_fd} / {} vs {ld_fd_inv}",
                ld_f[b],
                ld_i[b]
            );
            assert!(
                (ld_f[b] + ld_i[b]).abs() < 1e-12,
                "{name}: ld_f + ld_i = {}",
                ld_f[b] + ld_i[b]
            );
            worst.0 = worst.0.max(e1.max(e2));
        }
        let rt = z.iter().zip(&z2).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(rt < 1e-12, "{name}: round trip error {rt:e}");
        worst.1 = worst.1.max(rt);
        // And the other way round: forward(inverse(x)) = x.
        let xs = normal(4 * d, 9);
        let (zz, _) = m.inverse(&xs).unwrap();
        let (xx, _) = m.forward(&zz).unwrap();
        let rt2 = xs.iter().zip(&xx).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(rt2 < 1e-12, "{name}: round trip (x) error {rt2:e}");
        worst.2 = worst.2.max(rt2);
    }
    eprintln!(
        "worst |log-det − FD| = {:.2e}, |z − f⁻¹(f(z))| = {:.2e}, |x − f(f⁻¹(x))| = {:.2e}",
        worst.0, worst.1, worst.2
    );
}

#[test]
fn gradients_match_finite_differences() {
    let d = 3;
    let b = 3;
    let mut worst = (0.0f64, 0.0f64);
    for (name, layers) in catalogue(d) {
        let mut m = randomized(layers, 21, 0.3);
        let x = normal(b * d, 4);
        let w = [0.7, -0.4, 1.3];
        let phi = |m: &FlowModel<f64>, x: &[f64]| -> f64 {
            m.log_prob(x).unwrap().iter().zip(&w).map(|(l, w)| l * w).sum()
        };
        let mut gx = vec![0.0; b * d];
        let mut gt = vec![0.0; m.n_params()];
        let mut ws = m.workspace();
        let p = m.log_prob_vjp(&x, &w, &mut gx, &mut gt, &mut ws).unwrap();
        assert!((p - phi(&m, &x)).abs() < 1e-12, "{name}: Φ");
        let h = 1e-6;
        for k in 0..m.n_params() {
            let p0 = m.params()[k];
            m.params_mut()[k] = p0 + h;
            let fp = phi(&m, &x);
            m.params_mut()[k] = p0 - h;
            let fm = phi(&m, &x);
            m.params_mut()[k] = p0;
            let fd = (fp - fm) / (2.0 * h);
            let err = (fd - gt[k]).abs() / (1.0 + fd.abs());
            assert!(err < 1e-6, "{name}: ∂Φ/∂θ[{k}] = {} vs FD {fd}", gt[k]);
            worst.0 = worst.0.max(err);
        }
        for k in 0..b * d {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[k] += h;
            xm[k] -= h;
            let fd = (phi(&m, &xp) - phi(&m, &xm)) / (2.0 * h);
            let err = (fd - gx[k]).abs() / (1.0 + fd.abs());
            assert!(err < 1e-6, "{name}: ∂Φ/∂x[{k}] = {} vs FD {fd}", gx[k]);
            worst.1 = worst.1.max(err);
        }
    }
    eprintln!("worst relative gradient error: θ {:.2e}, x {:.2e}", worst.0, worst.1);
}

#[test]
fn maf_and_iaf_with_the_same_parameters_are_inverses() {
    let d = 4;
    let maf =
        FlowModel::new(vec![Box::new(Maf::new(d, &[16], 2.0).unwrap()) as Box<dyn Flow<f64>>], 0)
            .unwrap();
    let mut maf = maf;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for p in maf.params_mut() {
        *p = 0.5 * (2.0 * rng.random::<f64>() - 1.0);
    }
    let mut iaf =
        FlowModel::new(vec![Box::new(Iaf::new(d, &[16], 2.0).unwrap()) as Box<dyn Flow<f64>>], 0)
            .unwrap();
    iaf.params_mut().copy_from_slice(maf.params());
    let z = normal(5 * d, 3);
    // MAF sampling is sequential, IAF density is sequential: the same map computed twice.
    let (x_maf, ld_maf) = maf.forward(&z).unwrap();
    let (x_iaf, ld_iaf) = iaf.inverse(&z).unwrap();
    // IAF sampling is one pass, and inverts MAF sampling.
    let (z_back, ld_back) = iaf.forward(&x_maf).unwrap();
    for k in 0..z.len() {
        assert!((x_maf[k] - x_iaf[k]).abs() < 1e-14);
        assert!((z_back[k] - z[k]).abs() < 1e-12, "IAF∘MAF ≠ id at {k}");
    }
    for b in 0..5 {
        assert!((ld_maf[b] - ld_iaf[b]).abs() < 1e-14);
        assert!((ld_back[b] + ld_maf[b]).abs() < 1e-12);
    }
}

#[test]
fn spline_maf_and_iaf_with_the_same_parameters_are_inverses() {
    let d = 3;
    let shape = RqShape { bins: 6, bound: 3.0 };
    let mut maf = FlowModel::new(
        vec![Box::new(MafSpline::new(d, &[16], shape).unwrap()) as Box<dyn Flow<f64>>],
        0,
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for p in maf.params_mut() {
        *p = 0.5 * (2.0 * rng.random::<f64>() - 1.0);
    }
    let mut iaf = FlowModel::new(
        vec![Box::new(Iaf::spline(d, &[16], shape).unwrap()) as Box<dyn Flow<f64>>],
        0,
    )
    .unwrap();
    iaf.params_mut().copy_from_slice(maf.params());
    let z = normal(5 * d, 4);
    let (x_maf, ld_maf) = maf.forward(&z).unwrap();
    let (z_back, ld_back) = iaf.forward(&x_maf).unwrap();
    let (x_maf2, _) = iaf.inverse(&z).unwrap();
    for k in 0..z.len() {
        assert!((z_back[k] - z[k]).abs() < 1e-12, "IAF∘MAF ≠ id at {k}");
        assert!((x_maf2[k] - x_maf[k]).abs() < 1e-14);
    }
    for b in 0..5 {
        assert!((ld_back[b] + ld_maf[b]).abs() < 1e-12);
    }
}

#[test]
fn composed_2d_density_integrates_to_one() {
    let d = 2;
    let aff = CouplingKind::Affine { scale_bound: 1.0 };
    let layers: Layers = vec![
        Box::new(Coupling::new(d, aff, &[16], false).unwrap()),
        Box::new(LuAffine::glow(d, 2).unwrap()),
        Box::new(Maf::new(d, &[16], 1.0).unwrap()),
        Box::new(Coupling::new(d, CouplingKind::Additive, &[16], true).unwrap()),
        Box::new(ElementwiseAffine::new(d).unwrap()),
        Box::new(Planar::new(d).unwrap()),
        Box::new(Radial::new(d).unwrap()),
        Box::new(RqSpline::new(d, RqShape { bins: 6, bound: 3.0 }).unwrap()),
        Box::new(
            Coupling::new(
                d,
                CouplingKind::RationalQuadratic(RqShape { bins: 5, bound: 3.0 }),
                &[16],
                false,
            )
            .unwrap(),
        ),
        Box::new(DenseAffine::new(d).unwrap()),
    ];
    let m = randomized(layers, 5, 0.3);
    // Midpoint rule on [−L, L]² with n² cells.
    let (l, n) = (12.0, 600);
    let h = 2.0 * l / n as f64;
    let mut pts = Vec::with_capacity(2 * n * n);
    for i in 0..n {
        for j in 0..n {
            pts.push(-l + (i as f64 + 0.5) * h);
            pts.push(-l + (j as f64 + 0.5) * h);
        }
    }
    let lp = m.log_prob(&pts).unwrap();
    let mass: f64 = lp.iter().map(|v| v.exp()).sum::<f64>() * h * h;
    eprintln!("mass on [−{l}, {l}]² ({n}² cells) = {mass:.6}");
    assert!((mass - 1.0).abs() < 2e-3, "mass = {mass}");
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let d = 3;
    for (name, layers) in catalogue(d) {
        let m = randomized(layers, 1, 0.1);
        assert!(
            matches!(m.log_prob(&[0.0; 4]), Err(Error::BatchShape { len: 4, dim: 3 })),
            "{name}"
        );
        assert!(
            matches!(
                m.inverse(&[0.0, f64::NAN, 1.0]),
                Err(Error::NonFiniteInput { index: 1, point: 0 })
            ),
            "{name}"
        );
        assert!(
            matches!(
                m.forward(&[0.0, 1.0, f64::INFINITY]),
                Err(Error::NonFiniteInput { index: 2, .. })
            ),
            "{name}"
        );
        let mut ws = m.workspace();
        let mut gt = vec![0.0; m.n_params() + 1];
        let mut gx = vec![0.0; 3];
        let r = m.log_prob_vjp(&[0.0; 3], &[1.0], &mut gx, &mut gt, &mut ws);
        assert!(matches!(r, Err(Error::BufferLength { buffer: "theta_cot", .. })), "{name}");
        // A layer called directly with a wrong θ.
        let layer = &m.layers()[0];
        let mut out = [0.0; 3];
        let mut ld = [0.0; 1];
        let r = layer.forward(&[0.0; 1_000], &[0.0; 3], &mut out, &mut ld, &mut Default::default());
        assert!(matches!(r, Err(Error::BufferLength { buffer: "theta", .. })), "{name}");
    }
    // A singular dense matrix.
    let mut m =
        FlowModel::new(vec![Box::new(DenseAffine::new(2).unwrap()) as Box<dyn Flow<f64>>], 0)
            .unwrap();
    m.params_mut()[..4].copy_from_slice(&[1.0, 2.0, 2.0, 4.0]);
    assert!(matches!(m.log_prob(&[0.0, 0.0]), Err(Error::SingularMatrix { layer: 0, column: 1 })));
    // Bad construction.
    assert!(Permutation::new(vec![0, 0]).is_err());
    assert!(Coupling::new(1, CouplingKind::Additive, &[4], false).is_err());
    assert!(Maf::new(2, &[4], f64::NAN).is_err());
    assert!(FlowModel::<f64>::new(vec![], 0).is_err());
    let mixed: Layers = vec![
        Box::new(ElementwiseAffine::new(2).unwrap()),
        Box::new(ElementwiseAffine::new(3).unwrap()),
    ];
    assert!(matches!(
        FlowModel::new(mixed, 0),
        Err(Error::BlockDimension { block: 1, expected: 2, found: 3 })
    ));
}

/// `Flow::init_params` called directly with a θ of the wrong length is an
/// `Error::BufferLength` naming `"theta"`, for every layer kind (it panicked on an index or a
/// slice out of range in the planar, radial, LU and dense affine, coupling, MAF/IAF and CNF
/// layers, and silently wrote a θ of any length in the others), with θ and the generator left
/// untouched. With the right length it writes what `FlowModel::new` writes.
#[test]
fn init_params_with_a_wrong_length_is_an_error_not_a_panic() {
    use odeflow::cnf::{Cnf, CnfConfig};
    use odeflow::field::LinearField;
    use odeflow::flows::CnfFlow;
    let cnf_layer = || -> Layers {
        let field = LinearField::new(&[-0.3, 0.4, -0.2, 0.1], &[0.2, -0.1]).unwrap();
        let cnf = Cnf::new(field, 0.7, CnfConfig::default()).unwrap();
        vec![Box::new(CnfFlow::new(cnf).unwrap())]
    };
    let mut cases = catalogue(3);
    cases.push(("cnf-block", cnf_layer()));
    let mut checked = 0;
    for (name, layers) in cases {
        for layer in &layers {
            let n = layer.n_params();
            let mut wrong = if n > 0 { vec![0, n - 1] } else { vec![] };
            wrong.extend([n + 1, n + 100]);
            for len in wrong {
                let mut theta = vec![7.0; len];
                let mut rng = ChaCha8Rng::seed_from_u64(3);
                let r = layer.init_params(&mut theta, &mut rng);
                assert!(
                    matches!(
                        r,
                        Err(Error::BufferLength { buffer: "theta", expected, found })
                            if expected == n && found == len
                    ),
                    "{name} ({}), length {len} for {n}: {r:?}",
                    layer.name()
                );
                assert!(theta.iter().all(|v| v.to_bits() == 7f64.to_bits()), "{name}");
                let fresh = ChaCha8Rng::seed_from_u64(3).random::<u64>();
                assert_eq!(rng.random::<u64>(), fresh, "{name}: the generator was drawn from");
                checked += 1;
            }
        }
        // The right length: the first layer gets what the model's seeded generator gives it.
        let mut theta = vec![7.0; layers[0].n_params()];
        layers[0].init_params(&mut theta, &mut ChaCha8Rng::seed_from_u64(11)).unwrap();
        let again = if name == "cnf-block" { cnf_layer() } else { layers };
        let m = FlowModel::new(again, 11).unwrap();
        let first = &m.params()[..m.offsets()[1]];
        assert!(theta.iter().zip(first).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}");
    }
    assert!(checked > 60, "{checked}");
}

#[test]
fn sample_log_prob_agrees_with_density() {
    let d = 3;
    let (_, layers) = catalogue(d).pop().unwrap();
    let m = randomized(layers, 8, 0.3);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (x, lp) = m.sample_with_log_prob(20, &mut rng).unwrap();
    let lp2 = m.log_prob(&x).unwrap();
    for (a, b) in lp.iter().zip(&lp2) {
        assert!((a - b).abs() < 1e-10, "{a} vs {b}");
    }
}

mod training {
    use super::*;
    use odeflow::train::{AdamConfig, DataSource, Dataset, FlowTrainConfig, FlowTrainer, Toy};
    use std::ops::ControlFlow;

    fn realnvp(k: usize, hidden: &[usize]) -> FlowModel<f64> {
        let aff = CouplingKind::Affine { scale_bound: 3.0 };
        let layers: Layers = (0..k)
            .map(|i| {
                Box::new(Coupling::new(2, aff, hidden, i % 2 == 1).unwrap()) as Box<dyn Flow<f64>>
            })
            .collect();
        FlowModel::new(layers, 0).unwrap()
    }

    fn maf(k: usize, hidden: &[usize]) -> FlowModel<f64> {
        let mut layers: Layers = Vec::new();
        for i in 0..k {
            if i > 0 {
                layers.push(Box::new(Permutation::reverse(2).unwrap()));
            }
            layers.push(Box::new(Maf::new(2, hidden, 3.0).unwrap()));
        }
        FlowModel::new(layers, 0).unwrap()
    }

    /// Trains `model` for `iters` Adam steps (batch 128, lr 5e-3) and returns the test NLL
    /// (1024 held-out points) before and after.
    fn train(model: FlowModel<f64>, toy: Toy, iters: u64) -> (f64, f64) {
        let test = Dataset::toy(toy, 1024, 7);
        let cfg = FlowTrainConfig {
            iterations: iters,
            batch_size: 128,
            adam: AdamConfig { lr: 5e-3, ..Default::default() },
            test_every: iters,
            seed: 1,
            ..Default::default()
        };
        let mut tr = FlowTrainer::new(model, DataSource::Toy(toy), Some(test), cfg).unwrap();
        let before = tr.test_nll().unwrap();
        let s = tr
            .run(|p| {
                assert!(p.loss.is_finite());
                ControlFlow::Continue(())
            })
            .unwrap();
        (before, s.last_test.unwrap().1)
    }

    // CI budget: 500 iterations of batch 128 on 2 shared cores (a few seconds each).
    // Beside them, the CNF of tests/train.rs reaches 3.745 on 8gaussians after 100
    // iterations (bound 3.9); the peers' CNF reaches 2.894 after 1000 (hours of f32 time).
    // Observed (test NLL before → after, seeded): realnvp 8gaussians 5.983 → 3.275, realnvp
    // moons 3.903 → 2.548, maf 8gaussians 5.983 → 3.246, maf moons 3.903 → 2.642 (6 couplings
    // or 4 MAFs, hidden [32, 32]); nsf moons (4 spline couplings, K = 8, B = 4) 3.903 → 2.468;
    // hybrid moons (4 affine couplings + a trainable CNF block, FFJORD's tanh net [32, 32],
    // learned T, tol 1e-5, exact trace) 3.894 → 2.498 (about 5 s).
    // The bounds leave ~0.1 nat for GEMM-kernel differences.

    fn nsf(k: usize, hidden: &[usize]) -> FlowModel<f64> {
        let kind = CouplingKind::RationalQuadratic(RqShape { bins: 8, bound: 4.0 });
        let layers: Layers = (0..k)
            .map(|i| {
                Box::new(Coupling::new(2, kind, hidden, i % 2 == 1).unwrap()) as Box<dyn Flow<f64>>
            })
            .collect();
        FlowModel::new(layers, 0).unwrap()
    }

    /// RealNVP couplings with a trainable CNF block at the data end (FFJORD's tanh net,
    /// learned time, tolerance `tol`).
    fn hybrid(k: usize, hidden: &[usize], cnf_hidden: &[usize], tol: f64) -> FlowModel<f64> {
        let aff = CouplingKind::Affine { scale_bound: 3.0 };
        let mut layers: Layers = (0..k)
            .map(|i| {
                Box::new(Coupling::new(2, aff, hidden, i % 2 == 1).unwrap()) as Box<dyn Flow<f64>>
            })
            .collect();
        layers.push(Box::new(super::hybrid::cnf_block(cnf_hidden, 0.5, tol, 0)));
        FlowModel::new(layers, 0).unwrap()
    }

    #[test]
    fn hybrid_learns_moons() {
        let t0 = std::time::Instant::now();
        let (before, after) = train(hybrid(4, &[32, 32], &[32, 32], 1e-5), Toy::Moons, 500);
        eprintln!(
            "hybrid moons: test NLL {before:.4} → {after:.4} in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        assert!(after < 2.60, "hybrid moons test NLL {after}");
    }

    #[test]
    fn nsf_learns_moons() {
        let (before, after) = train(nsf(4, &[32, 32]), Toy::Moons, 500);
        eprintln!("nsf moons: test NLL {before:.4} → {after:.4}");
        assert!(after < 2.60, "nsf moons test NLL {after}");
    }

    /// Stopped after 3 iterations and resumed from the state: bit-identical to 6 in one go.
    #[test]
    fn resume_is_bit_identical() {
        let cfg = FlowTrainConfig {
            iterations: 6,
            batch_size: 32,
            test_every: 0,
            seed: 4,
            ..Default::default()
        };
        let run = |stop: Option<u64>| {
            let mut tr =
                FlowTrainer::new(realnvp(2, &[8]), DataSource::Toy(Toy::Moons), None, cfg.clone())
                    .unwrap();
            tr.run(|p| {
                if Some(p.iteration) == stop {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
            tr
        };
        let a = run(Some(3));
        assert_eq!(a.iteration(), 3);
        let mut b = FlowTrainer::resume(
            realnvp(2, &[8]),
            DataSource::Toy(Toy::Moons),
            None,
            cfg.clone(),
            a.state(),
        )
        .unwrap();
        b.run(|_| ControlFlow::Continue(())).unwrap();
        let c = run(None);
        assert_eq!(b.state(), c.state());
        assert_ne!(c.state().params, realnvp(2, &[8]).params().to_vec());
    }

    /// A batch whose loss is not finite fails the iteration and leaves the trainer as it was.
    #[test]
    fn failed_iteration_keeps_the_last_good_state() {
        let data = Dataset::new(2, vec![0.0, 1.0, 1e300, 0.5]).unwrap(); // log N(z) overflows
        let cfg =
            FlowTrainConfig { iterations: 4, batch_size: 2, test_every: 0, ..Default::default() };
        let mut tr =
            FlowTrainer::new(realnvp(2, &[8]), DataSource::Dataset { data, seed: 0 }, None, cfg)
                .unwrap();
        let before = tr.state();
        let err = tr.step().unwrap_err();
        assert!(matches!(err, Error::Training { iteration: 1, .. }), "{err}");
        assert_eq!(tr.state(), before);
        // Data of the wrong dimension is refused up front.
        let bad = FlowTrainer::new(
            realnvp(2, &[8]),
            DataSource::Toy(Toy::Moons),
            Some(Dataset::new(3, vec![0.0; 3]).unwrap()),
            FlowTrainConfig::default(),
        );
        assert!(matches!(bad, Err(Error::InvalidConfig { name: "test", .. })));
    }

    fn small_cfg() -> FlowTrainConfig {
        FlowTrainConfig { iterations: 2, batch_size: 4, test_every: 0, ..Default::default() }
    }

    /// An empty training set is refused up front (its first step used to divide by zero);
    /// an empty test set counts as none.
    #[test]
    fn an_empty_training_set_is_refused() {
        let empty = Dataset::<f64>::toy(Toy::Moons, 0, 0);
        assert!(empty.is_empty());
        let src = DataSource::Dataset { data: empty.clone(), seed: 0 };
        let r = FlowTrainer::new(realnvp(2, &[4]), src, None, small_cfg());
        assert!(matches!(r, Err(Error::InvalidConfig { name: "data", .. })), "{r:?}");
        let src = DataSource::Toy(Toy::Moons);
        let mut tr = FlowTrainer::new(realnvp(2, &[4]), src, Some(empty), small_cfg()).unwrap();
        assert!(matches!(tr.test_nll(), Err(Error::InvalidConfig { name: "test", .. })));
        tr.step().unwrap();
    }

    /// A test chunk larger than the test set is the whole set (it used to overflow the
    /// chunk's buffer: "capacity overflow" or an abort).
    #[test]
    fn test_chunks_larger_than_the_test_set_are_the_whole_set() {
        let test = Dataset::toy(Toy::Moons, 10, 1);
        let nll = |test_batch| {
            let cfg = FlowTrainConfig { test_batch, ..small_cfg() };
            let src = DataSource::Toy(Toy::Moons);
            FlowTrainer::new(realnvp(2, &[4]), src, Some(test.clone()), cfg)
                .unwrap()
                .test_nll()
                .unwrap()
        };
        let whole = nll(0);
        for test_batch in [3, 10, 11, 1 << 40, usize::MAX] {
            assert!((nll(test_batch) - whole).abs() < 1e-12, "{test_batch}");
        }
    }

    /// A state with a NaN parameter: the step names it (it said "non-finite input value"),
    /// and the trainer keeps its state.
    #[test]
    fn a_nan_parameter_is_named_by_the_step() {
        let src = DataSource::Toy(Toy::Moons);
        let mut tr = FlowTrainer::new(realnvp(2, &[4]), src, None, small_cfg()).unwrap();
        tr.step().unwrap();
        let mut state = tr.state();
        state.params[5] = f64::NAN;
        let src = DataSource::Toy(Toy::Moons);
        let mut tr = FlowTrainer::resume(realnvp(2, &[4]), src, None, small_cfg(), state).unwrap();
        let before = tr.state();
        match tr.step() {
            Err(Error::Training { iteration: 2, source }) => {
                assert!(matches!(*source, Error::NonFiniteParameter { index: 5, .. }), "{source}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(tr.state().params[..5], before.params[..5]);
        assert_eq!(tr.iteration(), 1);
    }

    /// A step Adam refuses (lr 1e308: θ would be infinite) leaves the whole trainer as it
    /// was, its random generator included (it had drawn the batch and was not restored, so a
    /// saved state no longer repeated the run).
    #[test]
    fn a_refused_adam_step_leaves_the_trainer_as_it_was() {
        let adam = AdamConfig { lr: 1e308, ..Default::default() };
        let cfg = FlowTrainConfig { adam, ..small_cfg() };
        let mut tr =
            FlowTrainer::new(realnvp(2, &[4]), DataSource::Toy(Toy::Moons), None, cfg).unwrap();
        let before = tr.state();
        match tr.step() {
            Err(Error::Training { iteration: 1, source }) => {
                assert!(matches!(*source, Error::NonFiniteParameter { .. }), "{source}")
            }
            other => panic!("{other:?}"),
        }
        assert!(tr.state() == before);
    }

    #[test]
    fn realnvp_learns_8gaussians() {
        let (before, after) = train(realnvp(6, &[32, 32]), Toy::EightGaussians, 500);
        eprintln!("realnvp 8gaussians: test NLL {before:.4} → {after:.4}");
        assert!(after < 3.40, "realnvp 8gaussians test NLL {after}");
    }

    #[test]
    fn realnvp_learns_moons() {
        let (before, after) = train(realnvp(6, &[32, 32]), Toy::Moons, 500);
        eprintln!("realnvp moons: test NLL {before:.4} → {after:.4}");
        assert!(after < 2.70, "realnvp moons test NLL {after}");
    }

    #[test]
    fn maf_learns_8gaussians() {
        let (before, after) = train(maf(4, &[32, 32]), Toy::EightGaussians, 500);
        eprintln!("maf 8gaussians: test NLL {before:.4} → {after:.4}");
        assert!(after < 3.40, "maf 8gaussians test NLL {after}");
    }

    #[test]
    fn maf_learns_moons() {
        let (before, after) = train(maf(4, &[32, 32]), Toy::Moons, 500);
        eprintln!("maf moons: test NLL {before:.4} → {after:.4}");
        assert!(after < 2.75, "maf moons test NLL {after}");
    }
}

/// The 1-D inverse-CDF flow of a tabulated bimodal density: the model density p̂ = F′
/// matches the table at the knots (where the Fritsch–Carlson limiter is inactive) and
/// between them to interpolation accuracy, integrates to one, and sampling through the
/// normal base reproduces the mean.
#[test]
fn inverse_cdf_1d_reproduces_the_tabulated_density() {
    let q = |x: f64| {
        let n = |m: f64, s: f64| {
            (-0.5 * ((x - m) / s).powi(2)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt())
        };
        0.4 * n(-2.0, 0.5) + 0.6 * n(1.5, 1.0) + 1e-12
    };
    let knots: Vec<f64> = (0..=400).map(|k| -8.0 + 16.0 * k as f64 / 400.0).collect();
    let vals: Vec<f64> = knots.iter().map(|&x| q(x)).collect();
    let m = FlowModel::new(
        vec![Box::new(InverseCdf::one_d(&knots, &vals).unwrap()) as Box<dyn Flow<f64>>],
        0,
    )
    .unwrap();
    // Between the knots (midpoints), against the true density.
    let mids: Vec<f64> = (0..400)
        .map(|k| -8.0 + 16.0 * (k as f64 + 0.5) / 400.0)
        .filter(|x| x.abs() < 5.0)
        .collect();
    let lp = m.log_prob(&mids).unwrap();
    let worst = mids.iter().zip(&lp).map(|(&x, &l)| (l.exp() - q(x)).abs()).fold(0.0, f64::max);
    eprintln!("1-D inverse CDF: max |p̂ − p| at midpoints in [−5, 5] = {worst:.2e}");
    assert!(worst < 1e-3, "{worst}");
    // Mass (Simpson on a fine grid inside the support).
    let n = 20_000;
    let h = 16.0 / n as f64;
    let xs: Vec<f64> = (0..=n).map(|k| -8.0 + k as f64 * h).collect();
    let ps: Vec<f64> = m.log_prob(&xs[1..n]).unwrap().iter().map(|l| l.exp()).collect();
    let mut mass = 0.0;
    for (k, p) in ps.iter().enumerate() {
        mass += p * if (k + 1) % 2 == 1 { 4.0 } else { 2.0 };
    }
    mass *= h / 3.0; // the endpoint densities are ~1e-12
    eprintln!("1-D inverse CDF: mass = {mass:.8}");
    assert!((mass - 1.0).abs() < 1e-6, "{mass}");
    // Sampling: mean 0.4·(−2) + 0.6·1.5 = 0.1, sd ≈ 1.78.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let xs = m.sample(20_000, &mut rng).unwrap();
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    eprintln!("1-D inverse CDF: sample mean {mean:.4} (exact 0.1)");
    assert!((mean - 0.1).abs() < 4.0 * 1.78 / (20_000f64).sqrt(), "{mean}");
    // Out of the grid: an error.
    assert!(matches!(m.log_prob(&[9.0]), Err(Error::OutOfDomain { index: 0, .. })));
}

/// A CNF block composes with discrete layers: with the linear field f = A z + b the
/// time-T flow map is affine with log|det ∂z(T)/∂x| = T·tr A, so the model's log-density is
/// known in closed form through the other layers' log-dets; the block round-trips to the
/// solver's tolerance, and its parameters (A, b) are the model's.
#[test]
fn cnf_block_composes_with_discrete_layers() {
    use odeflow::cnf::{Cnf, CnfConfig};
    use odeflow::field::LinearField;
    use odeflow::flows::CnfFlow;
    let a = [-0.3, 0.4, -0.2, 0.1];
    let field = LinearField::new(&a, &[0.2, -0.1]).unwrap();
    let t_end = 0.7;
    let cnf = Cnf::new(field, t_end, CnfConfig { rtol: 1e-10, atol: 1e-10, ..Default::default() })
        .unwrap();
    let layers: Layers =
        vec![Box::new(ElementwiseAffine::new(2).unwrap()), Box::new(CnfFlow::new(cnf).unwrap())];
    let mut m = FlowModel::new(layers, 0).unwrap();
    assert_eq!(m.n_params(), 4 + 6);
    assert_eq!(&m.params()[4..], &[-0.3, 0.4, -0.2, 0.1, 0.2, -0.1]); // the template's A, b
    m.params_mut()[..4].copy_from_slice(&[0.3, -0.2, 0.5, 0.1]); // s, t of the elementwise layer
    let x = [0.4, -1.1, 2.0, 0.3];
    let (z, ld) = m.inverse(&x).unwrap();
    // log|det ∂z/∂x| = T tr A (CNF, data → latent) − Σ s (elementwise inverse).
    let expected = t_end * (a[0] + a[3]) - (0.3 - 0.2);
    for b in 0..2 {
        assert!((ld[b] - expected).abs() < 1e-8, "{} vs {expected}", ld[b]);
    }
    let (x2, ld_f) = m.forward(&z).unwrap();
    for k in 0..4 {
        assert!((x2[k] - x[k]).abs() < 1e-8, "round trip {k}: {} vs {}", x2[k], x[k]);
    }
    assert!((ld_f[0] + ld[0]).abs() < 1e-8);
    // The field's θ is read from the model's vector: doubling A doubles the log-det.
    for v in &mut m.params_mut()[4..8] {
        *v *= 2.0;
    }
    let (_, ld2) = m.inverse(&x).unwrap();
    assert!((ld2[0] - (2.0 * t_end * (a[0] + a[3]) - 0.1)).abs() < 1e-8, "{}", ld2[0]);
}

/// Hybrid models with a trainable CNF block: RealNVP coupling + CNF (MLP field, learned
/// time) + permutation, and the other way round.
mod hybrid {
    use super::*;
    use odeflow::adjoint::{AdjointConfig, Strategy};
    use odeflow::cnf::{Cnf, CnfConfig};
    use odeflow::field::{Activation, Mlp, MlpConfig, TimeConditioning};
    use odeflow::flows::CnfFlow;
    use odeflow::trace::{Noise, TraceEstimator};

    pub(crate) fn cnf_block(
        hidden: &[usize],
        t_end: f64,
        tol: f64,
        seed: u64,
    ) -> CnfFlow<f64, Mlp<f64>> {
        let mlp = Mlp::new(&MlpConfig {
            dim: 2,
            hidden: hidden.to_vec(),
            activation: Activation::Tanh,
            time: TimeConditioning::ConcatSquash,
            seed,
            ..Default::default()
        })
        .unwrap();
        let cnf =
            Cnf::new(mlp, t_end, CnfConfig { rtol: tol, atol: tol, ..Default::default() }).unwrap();
        CnfFlow::new(cnf).unwrap().with_learned_time(true)
    }

    fn model(strategy: Strategy) -> FlowModel<f64> {
        let aff = CouplingKind::Affine { scale_bound: 2.0 };
        let layers: Layers = vec![
            Box::new(Coupling::new(2, aff, &[4], false).unwrap()),
            Box::new(
                cnf_block(&[4], 0.6, 1e-10, 3).with_adjoint(AdjointConfig::with_strategy(strategy)),
            ),
            Box::new(Permutation::reverse(2).unwrap()),
            Box::new(Coupling::new(2, aff, &[4], true).unwrap()),
        ];
        randomized(layers, 31, 0.3)
    }

    /// Fourth-order central difference (truncation O(δ⁴), so δ = 1e-3 keeps the solver's
    /// O(tol) noise small against the step).
    fn fd4(mut f: impl FnMut(f64) -> f64, delta: f64) -> f64 {
        (-f(2.0 * delta) + 8.0 * f(delta) - 8.0 * f(-delta) + f(-2.0 * delta)) / (12.0 * delta)
    }

    /// ∂Φ/∂θ (every parameter: both couplings, the field, ln T) and ∂Φ/∂x of
    /// Φ = Σ_b w_b log p(x_b) against fourth-order central differences at rtol = atol = 1e-10,
    /// for the three adjoint strategies. The error of a component is relative to
    /// max(|FD|, 1e-3·max|FD|) (a component a thousand times below the largest is held to
    /// an absolute error).
    #[test]
    fn gradients_match_finite_differences() {
        let (b, d) = (3, 2);
        let x = normal(b * d, 4);
        let w = [0.7, -0.4, 1.3];
        for strategy in [Strategy::Checkpointed, Strategy::Backsolve, Strategy::Discrete] {
            let mut m = model(strategy);
            let phi = |m: &FlowModel<f64>, x: &[f64]| -> f64 {
                m.log_prob(x).unwrap().iter().zip(&w).map(|(l, w)| l * w).sum()
            };
            let mut gx = vec![0.0; b * d];
            let mut gt = vec![0.0; m.n_params()];
            let mut ws = m.workspace();
            let p = m.log_prob_vjp(&x, &w, &mut gx, &mut gt, &mut ws).unwrap();
            assert!((p - phi(&m, &x)).abs() < 1e-12, "Φ");
            let mut fd_t = vec![0.0; m.n_params()];
            for k in 0..m.n_params() {
                let p0 = m.params()[k];
                fd_t[k] = fd4(
                    |h| {
                        m.params_mut()[k] = p0 + h;
                        let v = phi(&m, &x);
                        m.params_mut()[k] = p0;
                        v
                    },
                    1e-3,
                );
            }
            let fd_x: Vec<f64> = (0..b * d)
                .map(|k| {
                    fd4(
                        |h| {
                            let mut xp = x.clone();
                            xp[k] += h;
                            phi(&m, &xp)
                        },
                        1e-3,
                    )
                })
                .collect();
            let worst = |g: &[f64], fd: &[f64], what: &str| {
                let scale = 1e-3 * fd.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                let mut worst = 0.0f64;
                for k in 0..g.len() {
                    let err = (g[k] - fd[k]).abs() / fd[k].abs().max(scale);
                    assert!(err < 1e-5, "{strategy:?} ∂Φ/∂{what}[{k}] = {} vs FD {}", g[k], fd[k]);
                    worst = worst.max(err);
                }
                worst
            };
            let (wt, wx) = (worst(&gt, &fd_t, "θ"), worst(&gx, &fd_x, "x"));
            let offs = m.offsets();
            eprintln!(
                "{strategy:?}: worst relative error θ {wt:.2e}, x {wx:.2e} ({} parameters, \
                 {} in the CNF block; ∂Φ/∂ln T = {:.6})",
                m.n_params(),
                offs[2] - offs[1],
                gt[offs[2] - 1]
            );
        }
    }

    /// Round trips and log-determinants against the brute-force Jacobian, to the solver's
    /// tolerance (rtol = atol = 1e-10).
    #[test]
    fn round_trip_and_logdet_match_brute_force() {
        let m = model(Strategy::Checkpointed);
        let d = 2;
        let z = normal(4 * d, 2);
        let (x, ld_f) = m.forward(&z).unwrap();
        let (z2, ld_i) = m.inverse(&x).unwrap();
        let mut worst = (0.0f64, 0.0f64);
        for b in 0..4 {
            let fwd = |v: &[f64]| m.forward(v).unwrap().0;
            let inv = |v: &[f64]| m.inverse(v).unwrap().0;
            let e1 = (ld_f[b] - fd_logdet(&fwd, &z[b * d..(b + 1) * d], 1e-4)).abs();
            let e2 = (ld_i[b] - fd_logdet(&inv, &x[b * d..(b + 1) * d], 1e-4)).abs();
            assert!(e1 < 1e-7 && e2 < 1e-7, "log-det errors {e1:e}, {e2:e}");
            assert!((ld_f[b] + ld_i[b]).abs() < 1e-8, "{} + {}", ld_f[b], ld_i[b]);
            worst.0 = worst.0.max(e1.max(e2));
        }
        let rt = z.iter().zip(&z2).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(rt < 1e-8, "round trip {rt:e}");
        worst.1 = rt;
        eprintln!("hybrid: |log-det − FD| ≤ {:.2e}, round trip {:.2e}", worst.0, worst.1);
        // Sampling's log-densities agree with the density pass.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (xs, lp) = m.sample_with_log_prob(5, &mut rng).unwrap();
        let lp2 = m.log_prob(&xs).unwrap();
        for (a, b) in lp.iter().zip(&lp2) {
            assert!((a - b).abs() < 1e-8, "{a} vs {b}");
        }
    }

    #[test]
    fn misuse_is_an_error() {
        // Hutchinson noise cannot be shared between the density pass and its gradient.
        let mlp = Mlp::new(&MlpConfig { dim: 2, hidden: vec![4], ..Default::default() }).unwrap();
        let cfg = CnfConfig {
            trace: TraceEstimator::Hutchinson(Noise::Rademacher),
            ..Default::default()
        };
        let err = CnfFlow::new(Cnf::new(mlp, 0.5, cfg).unwrap()).unwrap_err();
        assert!(matches!(err, Error::Unsupported { flow: "cnf", .. }), "{err}");
        assert!(err.to_string().contains("TraceEstimator::Exact"), "{err}");
        let mut m = model(Strategy::Checkpointed);
        // Wrong θ length, non-finite input.
        let layer = &m.layers()[1];
        let (mut out, mut ld) = ([0.0; 2], [0.0; 1]);
        let r = layer.inverse(&[0.0; 3], &[0.1, 0.2], &mut out, &mut ld, &mut Default::default());
        assert!(matches!(r, Err(Error::BufferLength { buffer: "theta", .. })));
        assert!(matches!(m.log_prob(&[0.0, f64::NAN]), Err(Error::NonFiniteInput { .. })));
        // A learned time that overflows: an error naming T, not a panic.
        let last = m.offsets()[2] - 1;
        m.params_mut()[last] = 1e3;
        let r = m.log_prob(&[0.1, 0.2]);
        assert!(matches!(r, Err(Error::InvalidConfig { name: "t_end", .. })), "{r:?}");
    }
}

/// The same layers in f32: round trip and log-det at f32 tolerances, log-density close to
/// the f64 model with the same (rounded) parameters.
#[test]
fn f32_models_agree_with_f64() {
    let d = 3;
    let build = || -> Vec<Box<dyn Flow<f32>>> {
        vec![
            Box::new(
                Coupling::new(d, CouplingKind::Affine { scale_bound: 2.0 }, &[8], false).unwrap(),
            ),
            Box::new(LuAffine::glow(d, 1).unwrap()),
            Box::new(Maf::new(d, &[8], 2.0).unwrap()),
            Box::new(RqSpline::new(d, RqShape { bins: 5, bound: 3.0 }).unwrap()),
            Box::new(Planar::new(d).unwrap()),
        ]
    };
    let m64 = randomized(
        vec![
            Box::new(
                Coupling::new(d, CouplingKind::Affine { scale_bound: 2.0 }, &[8], false).unwrap(),
            ),
            Box::new(LuAffine::glow(d, 1).unwrap()),
            Box::new(Maf::new(d, &[8], 2.0).unwrap()),
            Box::new(RqSpline::new(d, RqShape { bins: 5, bound: 3.0 }).unwrap()),
            Box::new(Planar::new(d).unwrap()),
        ],
        4,
        0.3,
    );
    let mut m32 = FlowModel::<f32>::new(build(), 0).unwrap();
    for (p, &q) in m32.params_mut().iter_mut().zip(m64.params()) {
        *p = q as f32;
    }
    let x64 = normal(6 * d, 5);
    let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
    let (z, ld) = m32.inverse(&x32).unwrap();
    let (xb, ldf) = m32.forward(&z).unwrap();
    for k in 0..x32.len() {
        assert!((xb[k] - x32[k]).abs() < 1e-5, "f32 round trip {k}: {} vs {}", xb[k], x32[k]);
    }
    let lp64 = m64.log_prob(&x64).unwrap();
    let lp32 = m32.log_prob(&x32).unwrap();
    for b in 0..6 {
        assert!((ld[b] + ldf[b]).abs() < 1e-5);
        assert!(
            (lp32[b] as f64 - lp64[b]).abs() < 1e-4 * (1.0 + lp64[b].abs()),
            "{} vs {}",
            lp32[b],
            lp64[b]
        );
    }
}

/// The name of an [`Error::InvalidConfig`], for asserting which field an error blames.
fn config_name(r: Result<impl std::fmt::Debug, Error>) -> &'static str {
    match r {
        Err(Error::InvalidConfig { name, .. }) => name,
        other => panic!("expected an InvalidConfig error, got {other:?}"),
    }
}

/// A user layer of dimension 0 (the built-in layers refuse one).
struct ZeroDim;

impl Flow<f64> for ZeroDim {
    fn name(&self) -> &'static str {
        "zero-dim"
    }
    fn dim(&self) -> usize {
        0
    }
    fn n_params(&self) -> usize {
        0
    }
    fn init_params(&self, _: &mut [f64], _: &mut dyn rand::RngCore) -> Result<(), Error> {
        Ok(())
    }
    fn forward(
        &self,
        _: &[f64],
        _: &[f64],
        _: &mut [f64],
        _: &mut [f64],
        _: &mut odeflow::flows::FlowWs<f64>,
    ) -> Result<(), Error> {
        Ok(())
    }
    fn inverse(
        &self,
        _: &[f64],
        _: &[f64],
        _: &mut [f64],
        _: &mut [f64],
        _: &mut odeflow::flows::FlowWs<f64>,
    ) -> Result<(), Error> {
        Ok(())
    }
    fn inverse_vjp(
        &self,
        _: &[f64],
        _: &[f64],
        _: &[f64],
        _: &[f64],
        _: &mut [f64],
        _: &mut [f64],
        _: &mut odeflow::flows::FlowWs<f64>,
    ) -> Result<(), Error> {
        Ok(())
    }
}

/// Zero-dimensional layers are refused where they are made (they used to be accepted and
/// fail later with "a batch of length 0 is not a whole number of 0-dimensional points").
#[test]
fn zero_dimensional_layers_are_refused_at_construction() {
    let shape = RqShape { bins: 4, bound: 2.0 };
    let names = [
        config_name(ElementwiseAffine::new(0)),
        config_name(Permutation::new(vec![])),
        config_name(Permutation::reverse(0)),
        config_name(Permutation::random(0, 1)),
        config_name(LuAffine::new(0, None, true)),
        config_name(LuAffine::new(0, Some(vec![]), false)),
        config_name(LuAffine::glow(0, 1)),
        config_name(DenseAffine::new(0)),
        config_name(Planar::new(0)),
        config_name(Radial::new(0)),
        config_name(RqSpline::new(0, shape)),
    ];
    for name in names {
        assert!(name.ends_with(" dim"), "{name}");
    }
    // A dimension whose parameter count overflows usize (d² for the dense kinds).
    assert_eq!(config_name(DenseAffine::new(1 << 33)), "dense-affine dim");
    assert_eq!(config_name(LuAffine::new(1 << 33, None, false)), "lu-affine dim");
    assert_eq!(config_name(Planar::new(usize::MAX / 2 + 1)), "planar dim");
    // A user layer of dimension 0 is refused by the model.
    let layers: Layers = vec![Box::new(ZeroDim)];
    assert_eq!(config_name(FlowModel::new(layers, 0)), "flow dim");
    // The smallest valid dimension still works.
    let m =
        FlowModel::new(vec![Box::new(Planar::new(1).unwrap()) as Box<dyn Flow<f64>>], 0).unwrap();
    assert_eq!(m.log_prob(&[0.3]).unwrap().len(), 1);
}

/// An empty batch has no mean NLL: a clear error (it used to blame the batch's shape).
#[test]
fn nll_grad_of_an_empty_batch_is_a_clear_error() {
    for (name, layers) in catalogue(3) {
        let m = FlowModel::new(layers, 0).unwrap();
        let mut g = vec![0.0; m.n_params()];
        let r = m.nll_grad(&[], &mut g, &mut m.workspace());
        assert_eq!(config_name(r), "batch", "{name}");
        // Evaluating an empty batch is fine (no mean is taken).
        assert!(m.log_prob(&[]).unwrap().is_empty(), "{name}");
    }
}

/// NaN or infinite parameters are reported as such, with their index into θ, not as a
/// non-finite input (the output of the layer below) or a singular matrix.
#[test]
fn non_finite_parameters_are_named_as_such() {
    let x = [0.3, -0.5, 0.8];
    for (name, layers) in catalogue(3) {
        let mut m = FlowModel::new(layers, 0).unwrap();
        if m.n_params() == 0 {
            continue; // permutations, the inverse CDF
        }
        let k = m.n_params() / 2;
        for bad in [f64::NAN, f64::INFINITY] {
            m.params_mut()[k] = bad;
            let mut g = vec![0.0; m.n_params()];
            for r in [
                m.nll_grad(&x, &mut g, &mut m.workspace()).map(|_| ()),
                m.log_prob(&x).map(|_| ()),
                m.forward(&x).map(|_| ()),
                m.inverse(&x).map(|_| ()),
            ] {
                assert!(
                    matches!(r, Err(Error::NonFiniteParameter { index, .. }) if index == k),
                    "{name}: {r:?}"
                );
            }
        }
    }
    // A layer called directly: the index is into its own θ.
    let dense = DenseAffine::new(2).unwrap();
    let mut theta = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
    let (mut z, mut ld) = ([0.0; 2], [0.0; 1]);
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        theta[3] = bad;
        let r = dense.inverse(&theta, &[0.1, 0.2], &mut z, &mut ld, &mut Default::default());
        assert!(
            matches!(r, Err(Error::NonFiniteParameter { index: 3, what, .. }) if what.contains("layer")),
            "{r:?}"
        );
    }
}

/// Oversized requests are errors, not capacity-overflow panics or aborts.
#[test]
fn oversized_models_and_samples_are_errors() {
    let m =
        FlowModel::new(vec![Box::new(Planar::new(2).unwrap()) as Box<dyn Flow<f64>>], 0).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert_eq!(config_name(m.sample(usize::MAX / 2 + 1, &mut rng)), "n");
    assert_eq!(config_name(m.sample_with_log_prob(1 << 60, &mut rng)), "n·dim");
    assert_eq!(m.sample(3, &mut rng).unwrap().len(), 6);
    // A layer whose parameter count fits in usize but in no address space (≈ 6·2⁵³ values,
    // beyond the 2⁵⁷ bytes of five-level paging).
    let big = Coupling::new(2, CouplingKind::Additive, &[1 << 53], false).unwrap();
    let layers: Layers = vec![Box::new(big)];
    assert_eq!(config_name(FlowModel::new(layers, 0)), "flow parameters");
}

/// Spline shapes and the public spline functions check their arguments.
#[test]
fn spline_functions_check_their_arguments() {
    use odeflow::flows::{rq_eval, rq_eval_vjp, rq_inverse, MAX_BINS};
    let shape = RqShape { bins: 4, bound: 1.0 };
    let raw: Vec<f64> = (0..shape.n_params()).map(|k| 0.1 * k as f64 - 0.4).collect();
    // Too short (it used to panic on a slice range).
    for r in [rq_eval(shape, &raw[..3], 0.5), rq_inverse(shape, &raw[..3], 0.5)] {
        assert!(matches!(r, Err(Error::BufferLength { buffer: "raw", expected: 11, found: 3 })));
    }
    let mut g = vec![0.0; 3];
    let r = rq_eval_vjp(shape, &raw, 0.5, 1.0, 1.0, &mut g);
    assert!(matches!(r, Err(Error::BufferLength { buffer: "g_raw", .. })), "{r:?}");
    assert!(matches!(rq_eval(shape, &raw, f64::NAN), Err(Error::NonFiniteInput { .. })));
    // Bins out of range (0 gave NaN, 100 overran a 64-entry array); n_params never wraps.
    for bins in [0, MAX_BINS + 1, 100] {
        let bad = RqShape { bins, bound: 1.0 };
        let raw = vec![0.0; bad.n_params()];
        assert_eq!(config_name(rq_eval(bad, &raw, 0.5)), "spline bins");
        assert_eq!(config_name(bad.validate()), "spline bins");
    }
    assert_eq!(RqShape { bins: 0, bound: 1.0 }.n_params(), 0);
    assert_eq!(RqShape { bins: usize::MAX, bound: 1.0 }.n_params(), usize::MAX - 1);
    // A bound whose double overflows (it gave Ok(NaN) log-densities).
    for bound in [1e308, f64::MAX, f64::INFINITY, f64::NAN, 0.0, -1.0] {
        let bad = RqShape { bins: 4, bound };
        assert_eq!(config_name(bad.validate()), "spline bound");
        assert_eq!(config_name(RqSpline::new(1, bad)), "spline bound");
        let nsf = CouplingKind::RationalQuadratic(bad);
        assert_eq!(config_name(Coupling::new(2, nsf, &[4], false)), "spline bound");
    }
    // Valid calls agree with the spline layer holding the same raw parameters.
    let (y, ld) = rq_eval(shape, &raw, 0.5).unwrap();
    let layer = RqSpline::new(1, shape).unwrap();
    let (mut z, mut l) = ([0.0], [0.0]);
    layer.inverse(&raw, &[0.5], &mut z, &mut l, &mut Default::default()).unwrap();
    assert_eq!((y.to_bits(), ld.to_bits()), (z[0].to_bits(), l[0].to_bits()));
    let (x, ld_inv) = rq_inverse(shape, &raw, y).unwrap();
    assert!((x - 0.5).abs() < 1e-12 && (ld + ld_inv).abs() < 1e-12);
    let mut g = vec![0.0; shape.n_params()];
    let gx = rq_eval_vjp(shape, &raw, 0.5, 1.0, 0.0, &mut g).unwrap();
    assert!((gx - ld.exp()).abs() < 1e-12, "dy/dx = e^ld: {gx} vs {}", ld.exp());
}

/// Conditioner widths are checked where the layer is made: a zero width or an overflowing
/// parameter count is an error.
#[test]
fn conditioner_widths_are_checked_at_construction() {
    let aff = CouplingKind::Affine { scale_bound: 2.0 };
    let r = Coupling::new(2, aff, &[8, 0], false);
    assert_eq!(config_name(r), "conditioner widths");
    assert_eq!(config_name(Maf::new(2, &[0], 3.0)), "conditioner widths");
    let shape = RqShape { bins: 4, bound: 2.0 };
    assert_eq!(config_name(MafSpline::new(2, &[4, 0], shape)), "conditioner widths");
    assert_eq!(config_name(Iaf::new(3, &[0], 3.0)), "conditioner widths");
    let r = Coupling::new(2, aff, &[1 << 40, 1 << 40], false);
    assert_eq!(config_name(r), "conditioner widths");
    // No hidden layer (a linear conditioner) is fine.
    assert!(Coupling::new(2, aff, &[], false).is_ok());
}

/// The inverse CDF refuses tables it cannot normalise (they used to divide by zero or give
/// NaN densities).
#[test]
fn inverse_cdf_refuses_degenerate_tables() {
    use odeflow::flows::Cdf1d;
    let r = InverseCdf::new(vec![vec![0.0, 1.0], vec![]], &[]);
    assert_eq!(config_name(r), "inverse-cdf axis knots");
    let r = InverseCdf::new(vec![vec![], vec![0.0, 1.0]], &[]);
    assert_eq!(config_name(r), "inverse-cdf axis knots");
    let r = InverseCdf::new(vec![vec![0.0, 1.0], vec![0.5]], &[1.0, 1.0]);
    assert_eq!(config_name(r), "inverse-cdf axis knots");
    assert_eq!(config_name(InverseCdf::new(vec![], &[1.0])), "inverse-cdf dim");
    let r = InverseCdf::new(vec![vec![0.0, 1.0]; 2], &[1.0; 3]);
    assert!(matches!(r, Err(Error::BufferLength { buffer: "values", expected: 4, found: 3 })));
    // A density whose total mass underflows (1e-300 · 1e-300): refused, not NaN.
    let r = Cdf1d::new(&[0.0, 1e-300], &[1e-300, 1e-300]);
    assert_eq!(config_name(r), "tabulated density mass");
    // ... or overflows.
    let r = Cdf1d::new(&[0.0, 1e300], &[1e300, 1e300]);
    assert_eq!(config_name(r), "tabulated density mass");
    // A segment whose mass rounds away next to F (F₂ = F₁ in f64): flat there, finite.
    let cdf = Cdf1d::new(&[0.0, 1.0, 2.0], &[1.0, 1e-20, 1e-20]).unwrap();
    for x in [0.25, 1.0, 1.5, 2.0] {
        let (f, p, dp) = cdf.eval(x);
        assert!(f.is_finite() && p.is_finite() && dp.is_finite(), "{x}: {f} {p} {dp}");
        assert!((0.0..=1.0).contains(&f) && p >= 0.0, "{x}: {f} {p}");
    }
    // An ordinary table is unchanged: F(x₁) = ½ for a symmetric one.
    let cdf = Cdf1d::new(&[0.0, 1.0, 2.0], &[1.0, 2.0, 1.0]).unwrap();
    assert!((cdf.eval(1.0).0 - 0.5).abs() < 1e-15);
}
