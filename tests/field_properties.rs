//! Properties of the vector fields beyond pointwise derivatives: Hutchinson statistics,
//! ConcatSquash against its formula, f32 against f64, thread-count invariance, PyTorch-style
//! initialisation, bad input, workspace growth, `LinearField` and `AutoDiffField`.

mod common;

use approx::assert_relative_eq;
use common::*;
use odeflow::field::{
    Activation, AugmentedVjp, AutoDiffField, Divergence, DualScalar, FieldError, JacobianTerm,
    LinearField, Mlp, MlpConfig, ScalarField, TimeConditioning, VectorField, MAX_CHUNK_SIZE,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

fn toy(seed: u64) -> MlpConfig {
    MlpConfig { seed, ..Default::default() }
}

/// Everything one augmented-VJP call returns.
#[derive(Debug, PartialEq)]
struct AugOut<T> {
    f: Vec<T>,
    q: Vec<T>,
    z_cot: Vec<T>,
    t_cot: T,
    theta: Vec<T>,
}

fn aug<T: odeflow::Real, F: VectorField<T>>(
    field: &F,
    t: T,
    z: &[T],
    div: Divergence<'_, T>,
    a: &[T],
    c: &[T],
) -> AugOut<T> {
    let d = field.dim();
    let b = z.len() / d;
    let mut o = AugOut {
        f: vec![T::zero(); b * d],
        q: vec![T::zero(); b],
        z_cot: vec![T::zero(); b * d],
        t_cot: T::zero(),
        theta: vec![T::zero(); field.n_params()],
    };
    let mut ws = field.workspace(b);
    let out = AugmentedVjp {
        f: &mut o.f,
        q: &mut o.q,
        z_cot: &mut o.z_cot,
        theta_cot: Some(&mut o.theta),
    };
    o.t_cot = field.vjp_aug(t, z, div, a, c, out, &mut ws).unwrap();
    o
}

/// Everything one `vjp_aug_jac` call returns, and `‖J V‖²`.
fn aug_jac<T: odeflow::Real, F: VectorField<T>>(
    field: &F,
    t: T,
    z: &[T],
    div: Divergence<'_, T>,
    a: &[T],
    c: &[T],
    w: &[T],
) -> (AugOut<T>, Vec<T>) {
    let d = field.dim();
    let b = z.len() / d;
    let mut o = AugOut {
        f: vec![T::zero(); b * d],
        q: vec![T::zero(); b],
        z_cot: vec![T::zero(); b * d],
        t_cot: T::zero(),
        theta: vec![T::zero(); field.n_params()],
    };
    let mut sq = vec![T::zero(); b];
    let mut ws = field.workspace(b);
    let out = AugmentedVjp {
        f: &mut o.f,
        q: &mut o.q,
        z_cot: &mut o.z_cot,
        theta_cot: Some(&mut o.theta),
    };
    let jac = JacobianTerm { w, jac_sq: &mut sq };
    o.t_cot = field.vjp_aug_jac(t, z, div, a, c, jac, out, &mut ws).unwrap();
    (o, sq)
}

// ── Hutchinson statistics ──────────────────────────────────────────────────────────────

/// Draws of `q = εᵀJε` for one point: the same z repeated N times with independent ε, in one
/// batched call. Returns (mean, standard error) of q and of ‖Jε‖², and the exact tr J,
/// ‖J‖²_F.
fn hutchinson_stats(rademacher: bool) -> [(f64, f64, f64); 2] {
    let cfg = MlpConfig { dim: 3, hidden: vec![16, 16], seed: 11, ..Default::default() };
    let mlp = Mlp::<f64>::new(&cfg).unwrap();
    let n = 20_000;
    let z0 = [0.4, -0.7, 1.1];
    let z: Vec<f64> = (0..n).flat_map(|_| z0).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(if rademacher { 1 } else { 2 });
    let eps: Vec<f64> = (0..n * 3)
        .map(|_| {
            if rademacher {
                if rng.random::<bool>() {
                    1.0
                } else {
                    -1.0
                }
            } else {
                StandardNormal.sample(&mut rng)
            }
        })
        .collect();
    let mut ws = mlp.workspace(n);
    let (mut f, mut q, mut sq) = (vec![0.0; n * 3], vec![0.0; n], vec![0.0; n]);
    mlp.eval_div(0.25, &z, Divergence::Hutchinson(&eps), &mut f, &mut q, Some(&mut sq), &mut ws)
        .unwrap();
    let (mut fe, mut qe, mut sqe) = ([0.0; 3], [0.0; 1], [0.0; 1]);
    mlp.eval_div(0.25, &z0, Divergence::Exact, &mut fe, &mut qe, Some(&mut sqe), &mut ws).unwrap();
    let stats = |x: &[f64]| {
        let m = x.iter().sum::<f64>() / n as f64;
        let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1) as f64;
        (m, (var / n as f64).sqrt())
    };
    let (mq, sq_err) = stats(&q);
    let (ms, ss_err) = stats(&sq);
    [(mq, sq_err, qe[0]), (ms, ss_err, sqe[0])]
}

/// Bound: the sample mean of 20,000 independent draws is within 4 standard errors of the
/// exact value (a false alarm has probability ≈ 6e-5 for a fresh seed; the seeds are fixed).
/// The standard error must also be small relative to the signal, so the test has power.
#[test]
fn hutchinson_mean_converges_to_exact_trace() {
    for rademacher in [false, true] {
        let [(mq, se_q, tr), (ms, se_s, fro)] = hutchinson_stats(rademacher);
        assert!(
            (mq - tr).abs() < 4.0 * se_q,
            "rademacher={rademacher}: mean {mq} vs tr {tr} ± {se_q}"
        );
        assert!(se_q < 0.05 * tr.abs().max(0.1), "too noisy to test: se {se_q}, tr {tr}");
        assert!((ms - fro).abs() < 4.0 * se_s, "‖Jε‖² mean {ms} vs ‖J‖²_F {fro} ± {se_s}");
    }
}

// ── ConcatSquash against its formula ───────────────────────────────────────────────────

fn block<'a>(m: &'a Mlp<f64>, name: &str) -> &'a [f64] {
    let b = m.blocks().iter().find(|b| b.name == name).unwrap_or_else(|| panic!("no block {name}"));
    &m.params()[b.range()]
}

/// out = (W x + b) ⊙ sigmoid(W_g t + b_g) + W_b t per layer, read from the *named* blocks.
#[test]
fn concatsquash_matches_ffjord_formula() {
    let cfg = MlpConfig {
        dim: 2,
        hidden: vec![3],
        activation: Activation::Softplus,
        time: TimeConditioning::ConcatSquash,
        seed: 5,
        ..Default::default()
    };
    let m = Mlp::<f64>::new(&cfg).unwrap();
    let names: Vec<&str> = m.blocks().iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "layers.0._layer.weight",
            "layers.0._layer.bias",
            "layers.0._hyper_bias.weight",
            "layers.0._hyper_gate.weight",
            "layers.0._hyper_gate.bias",
            "layers.1._layer.weight",
            "layers.1._layer.bias",
            "layers.1._hyper_bias.weight",
            "layers.1._hyper_gate.weight",
            "layers.1._hyper_gate.bias",
        ]
    );
    assert_eq!(m.blocks()[0].shape, [3, 2]);
    assert_eq!(m.blocks()[2].shape, [3, 1]);
    assert_eq!(m.blocks()[5].shape, [2, 3]);
    let layer = |i: usize, x: &[f64], t: f64| -> Vec<f64> {
        let w = block(&m, &format!("layers.{i}._layer.weight"));
        let b = block(&m, &format!("layers.{i}._layer.bias"));
        let wb = block(&m, &format!("layers.{i}._hyper_bias.weight"));
        let wg = block(&m, &format!("layers.{i}._hyper_gate.weight"));
        let bg = block(&m, &format!("layers.{i}._hyper_gate.bias"));
        (0..b.len())
            .map(|j| {
                let wx: f64 = (0..x.len()).map(|k| w[j * x.len() + k] * x[k]).sum();
                (wx + b[j]) * (1.0 / (1.0 + (-(wg[j] * t + bg[j])).exp())) + wb[j] * t
            })
            .collect()
    };
    let (t, z) = (0.7, [0.3, -1.2]);
    let h: Vec<f64> = layer(0, &z, t).iter().map(|u| (1.0 + u.exp()).ln()).collect();
    let want = layer(1, &h, t);
    let mut f = [0.0; 2];
    m.eval(t, &z, &mut f, &mut m.workspace(1)).unwrap();
    for j in 0..2 {
        assert_relative_eq!(f[j], want[j], max_relative = 1e-13);
    }
}

/// Concat puts t in column 0 of `[out, in + 1]` (FFJORD's `torch.cat([tt, x], 1)`).
#[test]
fn concat_time_is_column_zero() {
    let cfg =
        MlpConfig { dim: 2, hidden: vec![], time: TimeConditioning::Concat, ..Default::default() };
    let m = Mlp::<f64>::new(&cfg).unwrap();
    assert_eq!(m.blocks()[0].shape, [2, 3]);
    let (w, b) = (block(&m, "layers.0._layer.weight"), block(&m, "layers.0._layer.bias"));
    let (t, z) = (-0.4, [1.5, 0.25]);
    let mut f = [0.0; 2];
    m.eval(t, &z, &mut f, &mut m.workspace(1)).unwrap();
    for j in 0..2 {
        let want = w[j * 3] * t + w[j * 3 + 1] * z[0] + w[j * 3 + 2] * z[1] + b[j];
        assert_relative_eq!(f[j], want, max_relative = 1e-14);
    }
}

// ── f32 against f64 ────────────────────────────────────────────────────────────────────

/// The same weights (f32, widened exactly to f64), inputs and call in both precisions.
/// Bound: ‖x₃₂ − x₆₄‖∞ ≤ 2e-4 · max(1, ‖x₆₄‖∞) per output; f32's unit roundoff is 6e-8 and
/// each output is a chain of 4 GEMMs with 64-term dot products plus a reverse pass
/// (error growth ~ depth · √k · u ≈ 1e-5 typical), so 2e-4 is loose enough for cancellation yet
/// far below any formula error.
#[test]
fn f32_matches_f64() {
    for time in TIMES {
        for act in ACTIVATIONS {
            let cfg = MlpConfig { activation: act, time, seed: 3, ..Default::default() };
            let m32 = Mlp::<f32>::new(&cfg).unwrap();
            let m64 =
                Mlp::<f64>::from_params(&cfg, m32.params().iter().map(|&x| f64::from(x)).collect())
                    .unwrap();
            let mut g = Gen(17);
            let b = 100;
            let z = g.vec(2 * b, -2.0, 2.0);
            let e = g.vec(2 * b, -1.0, 1.0);
            let a = g.vec(2 * b, -1.0, 1.0);
            let c = g.vec(b, -1.0, 1.0);
            let to32 = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let (z32, e32, a32, c32) = (to32(&z), to32(&e), to32(&a), to32(&c));
            let z64: Vec<f64> = z32.iter().map(|&x| f64::from(x)).collect();
            let e64: Vec<f64> = e32.iter().map(|&x| f64::from(x)).collect();
            let a64: Vec<f64> = a32.iter().map(|&x| f64::from(x)).collect();
            let c64: Vec<f64> = c32.iter().map(|&x| f64::from(x)).collect();
            for hutch in [false, true] {
                let (d32, d64) = if hutch {
                    (Divergence::Hutchinson(&e32[..]), Divergence::Hutchinson(&e64[..]))
                } else {
                    (Divergence::Exact, Divergence::Exact)
                };
                let o32 = aug(&m32, 0.3f32, &z32, d32, &a32, &c32);
                let o64 = aug(&m64, 0.3f64, &z64, d64, &a64, &c64);
                let cmp = |what: &str, x: &[f32], y: &[f64]| {
                    let scale = y.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                    let err =
                        x.iter().zip(y).fold(0.0f64, |m, (&p, &q)| m.max((f64::from(p) - q).abs()));
                    assert!(
                        err <= 2e-4 * scale,
                        "{act:?}/{time:?} hutch={hutch} {what}: err {err:e}, scale {scale:e}"
                    );
                };
                cmp("f", &o32.f, &o64.f);
                cmp("q", &o32.q, &o64.q);
                cmp("z_cot", &o32.z_cot, &o64.z_cot);
                cmp("t_cot", &[o32.t_cot], &[o64.t_cot]);
                cmp("theta", &o32.theta, &o64.theta);
            }
        }
    }
}

// ── Thread-count invariance ────────────────────────────────────────────────────────────

fn run_all<T: odeflow::Real>(m: &Mlp<T>, z: &[T], e: &[T], a: &[T], c: &[T]) -> Vec<AugOut<T>> {
    let t = T::from_f64c(0.35);
    let mut v =
        vec![aug(m, t, z, Divergence::Exact, a, c), aug(m, t, z, Divergence::Hutchinson(e), a, c)];
    // Plain VJP and eval_div too, packed into the same struct.
    let n = z.len();
    let b = n / m.dim();
    let mut ws = m.workspace(b);
    let mut o = AugOut {
        f: vec![T::zero(); n],
        q: vec![T::zero(); b],
        z_cot: vec![T::zero(); n],
        t_cot: T::zero(),
        theta: vec![T::zero(); m.n_params()],
    };
    o.t_cot = m.vjp(t, z, a, &mut o.f, &mut o.z_cot, Some(&mut o.theta), &mut ws).unwrap();
    m.eval_div(t, z, Divergence::Exact, &mut o.f, &mut o.q, None, &mut ws).unwrap();
    v.push(o);
    v
}

fn bits<T: odeflow::Real>(o: &[AugOut<T>]) -> Vec<u64> {
    o.iter()
        .flat_map(|o| {
            o.f.iter()
                .chain(&o.q)
                .chain(&o.z_cot)
                .chain(std::iter::once(&o.t_cot))
                .chain(&o.theta)
                .map(|x| x.to_f64c().to_bits())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// 1 vs 2 rayon threads (local pools) and sequential: bit-identical, f32 and f64, batch 512.
#[test]
fn results_are_bit_identical_for_any_thread_count() {
    fn check<T: odeflow::Real>() {
        let mut m = Mlp::<T>::new(&toy(9)).unwrap();
        let mut g = Gen(4);
        let b = 512;
        let conv = |x: Vec<f64>| x.into_iter().map(T::from_f64c).collect::<Vec<T>>();
        let (z, e, a, c) = (
            conv(g.vec(2 * b, -2.0, 2.0)),
            conv(g.vec(2 * b, -1.0, 1.0)),
            conv(g.vec(2 * b, -1.0, 1.0)),
            conv(g.vec(b, -1.0, 1.0)),
        );
        let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        let one = pool(1).install(|| bits(&run_all(&m, &z, &e, &a, &c)));
        let two = pool(2).install(|| bits(&run_all(&m, &z, &e, &a, &c)));
        m.set_parallel(false);
        let seq = bits(&run_all(&m, &z, &e, &a, &c));
        assert_eq!(one.len(), two.len());
        assert!(one == two, "1 vs 2 threads differ");
        assert!(one == seq, "parallel vs sequential differ");
    }
    check::<f64>();
    check::<f32>();
}

// ── Initialisation ─────────────────────────────────────────────────────────────────────

/// PyTorch `nn.Linear`: every block ~ U(±1/√fan_in), fan_in = in (+1 with Concat), 1 for the
/// hyper layers. Checks the bound, that the draws fill it (max |x| > 0.9·bound for blocks of
/// ≥ 64 values: P(fail) = 0.9^64 ≈ 1e-3 per block at a random seed, fixed seeds here), the
/// FFJORD toy net's 9,224 parameters (as in the peers' `ckpt/init_toy.npz`; the "12,996" in
/// peers.md is a miscount), and determinism in the seed.
#[test]
fn init_is_pytorch_nn_linear() {
    let m = Mlp::<f64>::new(&toy(1234)).unwrap();
    assert_eq!(m.n_params(), 9_224);
    for time in TIMES {
        let cfg = MlpConfig { time, hidden: vec![64, 32], seed: 7, ..Default::default() };
        let m = Mlp::<f64>::new(&cfg).unwrap();
        let mut covered = 0;
        for b in m.blocks() {
            let fan_in = if b.name.contains("_hyper_") {
                1
            } else {
                let layer_w =
                    m.blocks().iter().find(|x| x.name == b.name.replace("bias", "weight")).unwrap();
                layer_w.shape[1]
            };
            let bound = 1.0 / (fan_in as f64).sqrt();
            let x = &m.params()[b.range()];
            let max = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(max <= bound, "{} ({time:?}): {max} > {bound}", b.name);
            if x.len() >= 64 {
                assert!(
                    max > 0.9 * bound,
                    "{} ({time:?}) does not fill ±{bound}: max {max}",
                    b.name
                );
                let mean = x.iter().sum::<f64>() / x.len() as f64;
                // U(±B) has sd B/√3; the mean of n draws is within 5 sd/√n.
                assert!(
                    mean.abs() < 5.0 * bound / (3.0 * x.len() as f64).sqrt(),
                    "{} mean {mean}",
                    b.name
                );
                covered += 1;
            }
        }
        assert!(covered >= 3);
        let m2 = Mlp::<f64>::new(&cfg).unwrap();
        assert!(m.params() == m2.params(), "same seed, same weights");
        let m3 = Mlp::<f64>::new(&MlpConfig { seed: 8, ..cfg.clone() }).unwrap();
        assert!(m.params() != m3.params(), "different seed, different weights");
    }
}

// ── Bad input ──────────────────────────────────────────────────────────────────────────

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let m = Mlp::<f64>::new(&MlpConfig { dim: 2, hidden: vec![4], ..Default::default() }).unwrap();
    let mut ws = m.workspace(3);
    let z = [0.1; 6];
    let mut f = [7.0; 6];
    let mut q = [7.0; 3];
    let mut zc = [7.0; 6];
    let mut th = vec![7.0; m.n_params()];
    assert_eq!(
        m.eval(0.0, &z[..5], &mut f, &mut ws),
        Err(FieldError::BatchShape { len: 5, dim: 2 })
    );
    assert_eq!(
        m.eval(0.0, &z, &mut f[..4], &mut ws),
        Err(FieldError::BufferLength { buffer: "f", expected: 6, found: 4 })
    );
    assert_eq!(
        m.eval_div(0.0, &z, Divergence::Exact, &mut f, &mut q[..2], None, &mut ws),
        Err(FieldError::BufferLength { buffer: "q", expected: 3, found: 2 })
    );
    assert_eq!(
        m.eval_div(0.0, &z, Divergence::Hutchinson(&[1.0; 4]), &mut f, &mut q, None, &mut ws),
        Err(FieldError::BufferLength { buffer: "eps", expected: 6, found: 4 })
    );
    assert_eq!(
        m.jvp(0.0, &z, &[1.0; 2], &mut f, &mut zc, &mut ws),
        Err(FieldError::BufferLength { buffer: "v", expected: 6, found: 2 })
    );
    assert_eq!(
        m.vjp(0.0, &z, &z, &mut f, &mut zc, Some(&mut th[1..]), &mut ws),
        Err(FieldError::BufferLength {
            buffer: "theta_cot",
            expected: m.n_params(),
            found: m.n_params() - 1
        })
    );
    let out = AugmentedVjp { f: &mut f, q: &mut q, z_cot: &mut zc, theta_cot: None };
    assert_eq!(
        m.vjp_aug(0.0, &z, Divergence::Exact, &z, &[1.0; 2], out, &mut ws),
        Err(FieldError::BufferLength { buffer: "c", expected: 3, found: 2 })
    );
    let mut sq = [7.0; 3];
    for (w, nsq, buffer, found) in [(&[1.0; 2][..], 3, "w", 2), (&[1.0; 3][..], 1, "jac_sq", 1)] {
        let out = AugmentedVjp { f: &mut f, q: &mut q, z_cot: &mut zc, theta_cot: None };
        let jac = JacobianTerm { w, jac_sq: &mut sq[..nsq] };
        assert_eq!(
            m.vjp_aug_jac(0.0, &z, Divergence::Exact, &z, &[1.0; 3], jac, out, &mut ws),
            Err(FieldError::BufferLength { buffer, expected: 3, found })
        );
    }
    let other =
        Mlp::<f64>::new(&MlpConfig { dim: 2, hidden: vec![5], ..Default::default() }).unwrap();
    assert_eq!(other.eval(0.0, &z, &mut f, &mut ws), Err(FieldError::WorkspaceMismatch));
    // Nothing was written by the failed calls.
    assert!(f
        .iter()
        .chain(&q)
        .chain(&zc)
        .chain(&th)
        .chain(&sq)
        .all(|&x| x.to_bits() == 7.0f64.to_bits()));

    assert!(matches!(
        Mlp::<f64>::new(&MlpConfig { dim: 0, ..Default::default() }),
        Err(FieldError::InvalidConfig { field: "dim", .. })
    ));
    assert!(matches!(
        Mlp::<f64>::new(&MlpConfig { hidden: vec![3, 0], ..Default::default() }),
        Err(FieldError::InvalidConfig { field: "hidden", .. })
    ));
    assert!(matches!(
        Mlp::<f64>::new(&MlpConfig { chunk_size: 0, ..Default::default() }),
        Err(FieldError::InvalidConfig { field: "chunk_size", .. })
    ));
    // Sizes too large to hold are errors (they panicked on wrapped offsets or a capacity
    // overflow, or aborted the process on a workspace of a billion rows).
    for chunk_size in [MAX_CHUNK_SIZE + 1, 1_000_000_000, usize::MAX] {
        assert!(matches!(
            Mlp::<f64>::new(&MlpConfig { chunk_size, ..Default::default() }),
            Err(FieldError::TooLarge { field: "chunk_size", .. })
        ));
    }
    assert!(
        Mlp::<f64>::new(&MlpConfig { chunk_size: MAX_CHUNK_SIZE, ..Default::default() }).is_ok()
    );
    for hidden in [vec![usize::MAX / 2], vec![1 << 62, 4], vec![1 << 31, 1 << 31]] {
        let err = Mlp::<f64>::new(&MlpConfig { hidden: hidden.clone(), ..Default::default() });
        assert!(matches!(err, Err(FieldError::TooLarge { field: "hidden", .. })), "{hidden:?}");
    }
    assert_eq!(
        Mlp::<f64>::from_params(&toy(0), vec![0.0; 3]).unwrap_err(),
        FieldError::ParamLength { expected: 9_224, found: 3 }
    );
    assert!(matches!(
        LinearField::<f64>::new(&[1.0; 3], &[0.0; 2]),
        Err(FieldError::BufferLength { .. })
    ));
    assert!(matches!(LinearField::<f64>::new(&[], &[]), Err(FieldError::InvalidConfig { .. })));
}

/// A workspace made for one sample grows to any batch (and gives the same numbers as one
/// made for that batch); exact trace on d = 12 grows the tangent lanes.
#[test]
fn workspace_grows_on_demand() {
    let cfg = MlpConfig { dim: 12, hidden: vec![8], seed: 2, ..Default::default() };
    let m = Mlp::<f64>::new(&cfg).unwrap();
    let b = 150;
    let z = Gen(1).vec(b * 12, -1.0, 1.0);
    let a = Gen(2).vec(b * 12, -1.0, 1.0);
    let c = Gen(3).vec(b, -1.0, 1.0);
    let big = aug(&m, 0.1, &z, Divergence::Exact, &a, &c);
    let mut ws = m.workspace(1);
    let mut o = AugOut {
        f: vec![0.0; b * 12],
        q: vec![0.0; b],
        z_cot: vec![0.0; b * 12],
        t_cot: 0.0,
        theta: vec![0.0; m.n_params()],
    };
    let out = AugmentedVjp {
        f: &mut o.f,
        q: &mut o.q,
        z_cot: &mut o.z_cot,
        theta_cot: Some(&mut o.theta),
    };
    o.t_cot = m.vjp_aug(0.1, &z, Divergence::Exact, &a, &c, out, &mut ws).unwrap();
    assert!(bits(&[o]) == bits(&[big]));
}

/// A workspace handed back with `recycle` (full of another call's numbers, made for another
/// batch size) and reused by `workspace` gives the same bits as a fresh one.
#[test]
fn recycled_workspace_gives_identical_results() {
    let m = Mlp::<f64>::new(&toy(5)).unwrap();
    let b = 300;
    let z = Gen(1).vec(b * 2, -2.0, 2.0);
    let e = Gen(2).vec(b * 2, -1.0, 1.0);
    let a = Gen(3).vec(b * 2, -1.0, 1.0);
    let c = Gen(4).vec(b, -1.0, 1.0);
    let fresh = [
        aug(&m, 0.3, &z, Divergence::Exact, &a, &c),
        aug(&m, 0.3, &z, Divergence::Hutchinson(&e), &a, &c),
    ];
    // Dirty a workspace for a larger batch with other inputs, then hand it back.
    let big = 700;
    let mut ws = m.workspace(big);
    let zb = Gen(9).vec(big * 2, -3.0, 3.0);
    let mut f = vec![0.0; big * 2];
    let mut q = vec![0.0; big];
    m.eval_div(0.9, &zb, Divergence::Exact, &mut f, &mut q, None, &mut ws).unwrap();
    m.recycle(ws);
    let reused = [
        aug(&m, 0.3, &z, Divergence::Exact, &a, &c),
        aug(&m, 0.3, &z, Divergence::Hutchinson(&e), &a, &c),
    ];
    assert!(bits(&reused) == bits(&fresh));
}

// ── LinearField ────────────────────────────────────────────────────────────────────────

/// f = A z + b: exact values (tr A, εᵀAε, ‖A‖²_F, Av, aᵀA) and the augmented θ-gradient
/// against central differences (linear in θ, so FD is exact up to rounding: 1e-9).
#[test]
fn linear_field_derivatives() {
    let d = 3;
    let mut g = Gen(8);
    let am = g.vec(d * d, -1.0, 1.0);
    let bv = g.vec(d, -1.0, 1.0);
    let lf = LinearField::new(&am, &bv).unwrap();
    let bsz = 4;
    let (z, e, a, c) = (
        g.vec(bsz * d, -1.0, 1.0),
        g.vec(bsz * d, -1.0, 1.0),
        g.vec(bsz * d, -1.0, 1.0),
        g.vec(bsz, -1.0, 1.0),
    );
    let mut ws = lf.workspace(bsz);
    let (mut f, mut q, mut sq) = (vec![0.0; bsz * d], vec![0.0; bsz], vec![0.0; bsz]);
    lf.eval_div(0.0, &z, Divergence::Exact, &mut f, &mut q, Some(&mut sq), &mut ws).unwrap();
    let tr: f64 = (0..d).map(|i| am[i * d + i]).sum();
    let fro: f64 = am.iter().map(|x| x * x).sum();
    for bi in 0..bsz {
        assert_relative_eq!(q[bi], tr, max_relative = 1e-14);
        assert_relative_eq!(sq[bi], fro, max_relative = 1e-14);
        for i in 0..d {
            let want: f64 = bv[i] + (0..d).map(|k| am[i * d + k] * z[bi * d + k]).sum::<f64>();
            assert_relative_eq!(f[bi * d + i], want, max_relative = 1e-14);
        }
    }
    lf.eval_div(0.0, &z, Divergence::Hutchinson(&e), &mut f, &mut q, Some(&mut sq), &mut ws)
        .unwrap();
    for bi in 0..bsz {
        let er = &e[bi * d..(bi + 1) * d];
        let ae: Vec<f64> = (0..d).map(|i| (0..d).map(|k| am[i * d + k] * er[k]).sum()).collect();
        assert_relative_eq!(
            q[bi],
            (0..d).map(|i| er[i] * ae[i]).sum::<f64>(),
            max_relative = 1e-13
        );
        assert_relative_eq!(sq[bi], ae.iter().map(|x| x * x).sum::<f64>(), max_relative = 1e-13);
    }
    for hutch in [false, true] {
        let div = if hutch { Divergence::Hutchinson(&e[..]) } else { Divergence::Exact };
        let o = aug(&lf, 0.0, &z, div, &a, &c);
        assert_eq!(o.t_cot.to_bits(), 0.0f64.to_bits());
        for bi in 0..bsz {
            for k in 0..d {
                let want: f64 = (0..d).map(|i| a[bi * d + i] * am[i * d + k]).sum();
                assert_relative_eq!(o.z_cot[bi * d + k], want, max_relative = 1e-13);
            }
        }
        let phi = |p: &[f64]| {
            let l = LinearField::new(&p[..d * d], &p[d * d..]).unwrap();
            let (mut f, mut q) = (vec![0.0; bsz * d], vec![0.0; bsz]);
            l.eval_div(0.0, &z, div, &mut f, &mut q, None, &mut l.workspace(bsz)).unwrap();
            f.iter().zip(&a).map(|(x, y)| x * y).sum::<f64>()
                + q.iter().zip(&c).map(|(x, y)| x * y).sum::<f64>()
        };
        for k in 0..lf.n_params() {
            let fd = central(1e-4, |h| {
                let mut p = lf.params().to_vec();
                p[k] += h;
                phi(&p)
            });
            assert_relative_eq!(o.theta[k], fd, epsilon = 1e-10, max_relative = 1e-9);
        }
        // RNODE's Jacobian term: ‖A V‖² does not depend on z or t, so the z and t
        // cotangents are vjp_aug's bit for bit; ∂/∂A is 2 w A (exact) or 2 w (Aε)εᵀ
        // (Hutchinson), checked against central differences of Φ + Σ w ‖A V‖² (quadratic
        // in θ, so FD is exact up to rounding: 1e-9).
        let w = g.vec(bsz, -1.0, 1.0);
        let (oj, sq) = aug_jac(&lf, 0.0, &z, div, &a, &c, &w);
        assert_eq!((&oj.f, &oj.q, &oj.z_cot), (&o.f, &o.q, &o.z_cot));
        assert_eq!(oj.t_cot.to_bits(), 0.0f64.to_bits());
        for bi in 0..bsz {
            let want: f64 = if hutch {
                let er = &e[bi * d..(bi + 1) * d];
                (0..d).map(|i| (0..d).map(|k| am[i * d + k] * er[k]).sum::<f64>().powi(2)).sum()
            } else {
                am.iter().map(|x| x * x).sum()
            };
            assert_relative_eq!(sq[bi], want, max_relative = 1e-13);
        }
        let phi_j = |p: &[f64]| {
            let l = LinearField::new(&p[..d * d], &p[d * d..]).unwrap();
            let (mut f, mut q, mut s) = (vec![0.0; bsz * d], vec![0.0; bsz], vec![0.0; bsz]);
            l.eval_div(0.0, &z, div, &mut f, &mut q, Some(&mut s), &mut l.workspace(bsz)).unwrap();
            let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
            dot(&f, &a) + dot(&q, &c) + dot(&s, &w)
        };
        for k in 0..lf.n_params() {
            let fd = central(1e-4, |h| {
                let mut p = lf.params().to_vec();
                p[k] += h;
                phi_j(&p)
            });
            assert_relative_eq!(oj.theta[k], fd, epsilon = 1e-10, max_relative = 1e-9);
        }
    }
}

// ── AutoDiffField ──────────────────────────────────────────────────────────────────────

/// A user-written ConcatSquash MLP (any activation) with the weights of an `Mlp`, written
/// once over `DualScalar`: its AD derivatives must equal the `Mlp`'s analytic ones.
struct UserMlp {
    d: usize,
    widths: Vec<usize>,
    act: Activation,
    theta: Vec<f64>,
}

impl ScalarField<f64> for UserMlp {
    fn dim(&self) -> usize {
        self.d
    }
    fn eval<D: DualScalar<f64>>(&self, t: D, z: &[D], out: &mut [D]) {
        let mut x: Vec<D> = z.to_vec();
        let mut off = 0;
        let nl = self.widths.len() - 1;
        for l in 0..nl {
            let (ni, no) = (self.widths[l], self.widths[l + 1]);
            let th = &self.theta;
            let (w, b, hb, hg, hgb) = (
                off,
                off + no * ni,
                off + no * ni + no,
                off + no * ni + 2 * no,
                off + no * ni + 3 * no,
            );
            off += no * ni + 4 * no;
            let mut y = Vec::with_capacity(no);
            for j in 0..no {
                let mut s = D::cst(th[b + j]);
                for k in 0..ni {
                    s += x[k] * th[w + j * ni + k];
                }
                let u = s * (t * th[hg + j] + th[hgb + j]).sigmoid() + t * th[hb + j];
                y.push(if l + 1 == nl {
                    u
                } else {
                    match self.act {
                        Activation::Tanh => u.tanh(),
                        Activation::Softplus => (u.exp() + 1.0).ln(),
                        Activation::Silu => u * u.sigmoid(),
                        _ => {
                            if u.re() > 0.0 {
                                u
                            } else {
                                u.exp_m1()
                            }
                        }
                    }
                });
            }
            x = y;
        }
        out.copy_from_slice(&x);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// AutoDiffField (dual / hyper-dual) against the Mlp's exact derivatives, all outputs:
    /// f, JVP, exact and Hutchinson q, ‖JV‖², VJP (z, t), augmented VJP (z, t) — at 1e-10
    /// relative (both exact up to rounding) with an absolute floor 1e-12.
    #[test]
    fn autodiff_field_matches_mlp(seed in any::<u64>(), t in -1.0f64..2.0, d in 1usize..4) {
        for act in ACTIVATIONS {
            let cfg = MlpConfig { dim: d, hidden: vec![5, 4], activation: act, seed, chunk_size: 2, ..Default::default() };
            let m = Mlp::<f64>::new(&cfg).unwrap();
            let widths = vec![d, 5, 4, d];
            let user = AutoDiffField::new(UserMlp { d, widths, act, theta: m.params().to_vec() });
            prop_assert_eq!(user.n_params(), 0);
            let mut g = Gen(seed);
            let b = 3;
            let (z, v, e, a, c) = (g.vec(b * d, -2.0, 2.0), g.vec(b * d, -1.0, 1.0), g.vec(b * d, -1.0, 1.0), g.vec(b * d, -1.0, 1.0), g.vec(b, -1.0, 1.0));
            let close = |x: &[f64], y: &[f64]| x.iter().zip(y).all(|(p, q)| approx::relative_eq!(*p, *q, epsilon = 1e-12, max_relative = 1e-10));
            let (mut wm, mut wu) = (m.workspace(b), user.workspace(b));
            let (mut f1, mut j1, mut f2, mut j2) = (vec![0.0; b * d], vec![0.0; b * d], vec![0.0; b * d], vec![0.0; b * d]);
            m.jvp(t, &z, &v, &mut f1, &mut j1, &mut wm).unwrap();
            user.jvp(t, &z, &v, &mut f2, &mut j2, &mut wu).unwrap();
            prop_assert!(close(&f1, &f2) && close(&j1, &j2), "jvp {:?}", act);
            let mut f3 = vec![0.0; b * d];
            user.eval(t, &z, &mut f3, &mut wu).unwrap();
            prop_assert!(close(&f1, &f3));
            for hutch in [false, true] {
                let div = if hutch { Divergence::Hutchinson(&e[..]) } else { Divergence::Exact };
                let (mut q1, mut s1, mut q2, mut s2) = (vec![0.0; b], vec![0.0; b], vec![0.0; b], vec![0.0; b]);
                m.eval_div(t, &z, div, &mut f1, &mut q1, Some(&mut s1), &mut wm).unwrap();
                user.eval_div(t, &z, div, &mut f2, &mut q2, Some(&mut s2), &mut wu).unwrap();
                prop_assert!(close(&f1, &f2) && close(&q1, &q2) && close(&s1, &s2), "div {:?} hutch={}", act, hutch);
                let om = aug(&m, t, &z, div, &a, &c);
                let ou = aug(&user, t, &z, div, &a, &c);
                prop_assert!(close(&om.f, &ou.f) && close(&om.q, &ou.q), "aug f/q {:?}", act);
                prop_assert!(close(&om.z_cot, &ou.z_cot), "aug z {:?} hutch={}: {:?} vs {:?}", act, hutch, om.z_cot, ou.z_cot);
                prop_assert!(close(&[om.t_cot], &[ou.t_cot]), "aug t {:?}: {} vs {}", act, om.t_cot, ou.t_cot);
                // RNODE's Jacobian term: hyper-dual ∂‖JV‖²/∂(z, t) against the Mlp's reverse pass.
                let w = g.vec(b, -1.0, 1.0);
                let (om, sm) = aug_jac(&m, t, &z, div, &a, &c, &w);
                let (ou, su) = aug_jac(&user, t, &z, div, &a, &c, &w);
                prop_assert!(close(&om.f, &ou.f) && close(&om.q, &ou.q) && close(&sm, &su), "aug_jac f/q/jac_sq {:?}", act);
                prop_assert!(close(&sm, &s1), "aug_jac jac_sq vs eval_div {:?}", act);
                prop_assert!(close(&om.z_cot, &ou.z_cot), "aug_jac z {:?} hutch={}: {:?} vs {:?}", act, hutch, om.z_cot, ou.z_cot);
                prop_assert!(close(&[om.t_cot], &[ou.t_cot]), "aug_jac t {:?}: {} vs {}", act, om.t_cot, ou.t_cot);
            }
            let (mut z1, mut z2) = (vec![0.0; b * d], vec![0.0; b * d]);
            let t1 = m.vjp(t, &z, &a, &mut f1, &mut z1, None, &mut wm).unwrap();
            let t2 = user.vjp(t, &z, &a, &mut f2, &mut z2, Some(&mut []), &mut wu).unwrap();
            prop_assert!(close(&z1, &z2) && close(&[t1], &[t2]), "vjp {:?}", act);
        }
    }
}

/// The AVX-512 / AVX2 copies of the elementwise kernels and the baseline copy give
/// bit-identical results (no FMA contraction; each elementwise op is one IEEE op per element).
/// On a CPU without AVX2 both runs take the baseline route and the test is trivially true.
#[test]
fn simd_dispatch_is_bit_identical_to_baseline() {
    let mut g = Gen(21);
    for (act, d) in [
        (Activation::Tanh, 2),
        (Activation::Softplus, 5),
        (Activation::Silu, 3),
        (Activation::Elu, 2),
    ] {
        let cfg = MlpConfig {
            dim: d,
            hidden: vec![33, 17],
            activation: act,
            seed: 4,
            ..Default::default()
        };
        let m = Mlp::<f64>::new(&cfg).unwrap();
        let b = 300;
        let (z, e, a, c) = (
            g.vec(b * d, -3.0, 3.0),
            g.vec(b * d, -1.0, 1.0),
            g.vec(b * d, -1.0, 1.0),
            g.vec(b, -1.0, 1.0),
        );
        let simd = bits(&run_all(&m, &z, &e, &a, &c));
        odeflow::field::set_simd_dispatch(false);
        let base = bits(&run_all(&m, &z, &e, &a, &c));
        odeflow::field::set_simd_dispatch(true);
        assert!(simd == base, "{act:?}: SIMD and baseline kernels differ");
    }
}

/// An empty batch is valid (nothing to do, zero gradients); CountingField counts successful
/// calls only, with their samples.
#[test]
fn empty_batch_and_call_counting() {
    let m = odeflow::field::CountingField::new(Mlp::<f64>::new(&toy(1)).unwrap());
    let o = aug(&m, 0.2, &[], Divergence::Exact, &[], &[]);
    assert!(o.f.is_empty() && o.q.is_empty() && o.theta.iter().all(|&x| x.to_bits() == 0));
    assert_eq!(o.t_cot.to_bits(), 0.0f64.to_bits());
    let mut ws = m.workspace(4);
    let z = [0.5; 8];
    let mut f = [0.0; 8];
    m.eval(0.0, &z, &mut f, &mut ws).unwrap();
    assert!(m.eval(0.0, &z[..3], &mut f, &mut ws).is_err());
    let s = m.stats();
    assert_eq!((s.n_eval, s.n_vjp_aug, s.n_samples), (1, 1, 4));
    // vjp_aug_jac is forwarded (same results as the bare field) and counted as a fused VJP.
    let (z, a, c, w) = ([0.5, -0.2, 0.1, 0.3], [0.2, 0.1, -0.4, 0.3], [0.7, -0.1], [1.5, 0.2]);
    let (oc, sc) = aug_jac(&m, 0.2, &z, Divergence::Exact, &a, &c, &w);
    let (oi, si) = aug_jac(m.inner(), 0.2, &z, Divergence::Exact, &a, &c, &w);
    assert!(oc == oi && sc == si);
    assert_eq!((m.stats().n_vjp_aug, m.stats().n_samples), (2, 6));
    m.reset();
    assert_eq!(m.stats(), odeflow::field::FieldStats::default());
}
