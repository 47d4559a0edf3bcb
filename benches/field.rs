//! Vector-field benchmarks (W5 and its d = 64 analogue), side by side with plain GEMM chains
//! of the same shapes.
//!
//! - `toy`: FFJORD's toy net 2 → 64 → 64 → 64 → 2, ConcatSquash, tanh, batch 512:
//!   f + exact divergence, and the augmented VJP (exact divergence cotangent, z/t/θ).
//! - `d64`: 64 → 256 → 256 → 256 → 64, ConcatSquash, softplus, batch 512, Hutchinson:
//!   f + εᵀJε, and the augmented VJP.
//! - `aug_vjp_jac_*`: the augmented VJP with RNODE's Jacobian term (`vjp_aug_jac`), same nets.
//! - `gemm_*`: only the GEMMs those calls perform (forward rows B, tangent rows lanes·B, and in
//!   the reverse the input- and weight-gradient GEMMs of both), on the same two cores (the
//!   batch split in two halves, one per rayon task), no elementwise work.
//!
//! After the criterion groups a summary table is printed (minimum and median of interleaved
//! timings: a call and its GEMM chain alternate, so load spikes on the shared machine hit
//! both; the ratio column is the median over rounds of call time / GEMM-chain time) with
//! GFLOP/s in the units of peers.md: one unit = 2·Σ in·out flops per point; f + exact 2-D
//! trace = 3 units, f + Hutchinson = 2, augmented VJP = 3× its forward+tangent pass.
//!
//! Run: `cargo bench -p odeflow --bench field`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use odeflow::field::{
    Activation, AugmentedVjp, Divergence, JacobianTerm, Mlp, MlpConfig, TimeConditioning,
    VectorField,
};
use odeflow::Real;

#[path = "common/peak.rs"]
mod peak;

const BATCH: usize = 512;

struct Net {
    name: &'static str,
    cfg: MlpConfig,
    exact: bool,
}

fn nets() -> Vec<Net> {
    vec![
        Net {
            name: "toy",
            cfg: MlpConfig {
                dim: 2,
                hidden: vec![64, 64, 64],
                activation: Activation::Tanh,
                time: TimeConditioning::ConcatSquash,
                seed: 1234,
                ..Default::default()
            },
            exact: true,
        },
        Net {
            name: "d64",
            cfg: MlpConfig {
                dim: 64,
                hidden: vec![256, 256, 256],
                activation: Activation::Softplus,
                time: TimeConditioning::ConcatSquash,
                seed: 1234,
                ..Default::default()
            },
            exact: false,
        },
    ]
}

/// Inputs and outputs of one benchmark case.
struct Case<T> {
    mlp: Mlp<T>,
    exact: bool,
    z: Vec<T>,
    eps: Vec<T>,
    a: Vec<T>,
    c: Vec<T>,
    f: Vec<T>,
    q: Vec<T>,
    zc: Vec<T>,
    th: Vec<T>,
    jsq: Vec<T>,
    ws: odeflow::field::MlpWorkspace<T>,
}

fn lcg(state: &mut u64) -> f64 {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

impl<T: Real> Case<T> {
    fn new(net: &Net) -> Self {
        let mut cfg = net.cfg.clone();
        if let Some(c) = std::env::var("ODEFLOW_BENCH_CHUNK").ok().and_then(|s| s.parse().ok()) {
            cfg.chunk_size = c;
        }
        let mlp = Mlp::<T>::new(&cfg).unwrap();
        let d = net.cfg.dim;
        let mut s = 42u64;
        let mut v =
            |n: usize, k: f64| (0..n).map(|_| T::from_f64c(k * lcg(&mut s))).collect::<Vec<T>>();
        let z = v(BATCH * d, 2.0);
        let eps = v(BATCH * d, 1.0)
            .into_iter()
            .map(|x| if x > T::zero() { T::one() } else { -T::one() })
            .collect();
        let a = v(BATCH * d, 1.0);
        let c = v(BATCH, 1.0);
        let ws = mlp.workspace(BATCH);
        let n = mlp.n_params();
        Case {
            mlp,
            exact: net.exact,
            z,
            eps,
            a,
            c,
            f: vec![T::zero(); BATCH * d],
            q: vec![T::zero(); BATCH],
            zc: vec![T::zero(); BATCH * d],
            th: vec![T::zero(); n],
            jsq: vec![T::zero(); BATCH],
            ws,
        }
    }

    fn eval_div(&mut self) {
        let div = if self.exact { Divergence::Exact } else { Divergence::Hutchinson(&self.eps) };
        self.mlp
            .eval_div(
                T::from_f64c(0.3),
                black_box(&self.z),
                div,
                &mut self.f,
                &mut self.q,
                None,
                &mut self.ws,
            )
            .unwrap();
        black_box(&self.q);
    }

    fn aug(&mut self) {
        let div = if self.exact { Divergence::Exact } else { Divergence::Hutchinson(&self.eps) };
        let out = AugmentedVjp {
            f: &mut self.f,
            q: &mut self.q,
            z_cot: &mut self.zc,
            theta_cot: Some(&mut self.th),
        };
        let tc = self
            .mlp
            .vjp_aug(
                T::from_f64c(0.3),
                black_box(&self.z),
                div,
                &self.a,
                &self.c,
                out,
                &mut self.ws,
            )
            .unwrap();
        black_box((tc, &self.th));
    }

    /// `aug` with RNODE's Jacobian term (weights `w = c`).
    fn aug_jac(&mut self) {
        let div = if self.exact { Divergence::Exact } else { Divergence::Hutchinson(&self.eps) };
        let out = AugmentedVjp {
            f: &mut self.f,
            q: &mut self.q,
            z_cot: &mut self.zc,
            theta_cot: Some(&mut self.th),
        };
        let jac = JacobianTerm { w: &self.c, jac_sq: &mut self.jsq };
        let tc = self
            .mlp
            .vjp_aug_jac(
                T::from_f64c(0.3),
                black_box(&self.z),
                div,
                &self.a,
                &self.c,
                jac,
                out,
                &mut self.ws,
            )
            .unwrap();
        black_box((tc, &self.th, &self.jsq));
    }
}

/// The GEMMs of a call, without the elementwise work, on two cores (two half-batches).
struct GemmChain<T> {
    widths: Vec<usize>,
    /// Rows of the forward pass (B/2) and of the tangent pass (lanes·B/2) per half.
    rows: [usize; 2],
    /// First-layer tangent by GEMM (Hutchinson) or not (exact: a column copy).
    first_tangent_gemm: bool,
    reverse: bool,
    w: Vec<Vec<T>>,
    x: [Vec<Vec<T>>; 2],
    y: [Vec<Vec<T>>; 2],
    gw: [Vec<Vec<T>>; 2],
}

impl<T: Real> GemmChain<T> {
    fn new(net: &Net, reverse: bool) -> Self {
        let d = net.cfg.dim;
        let mut widths = vec![d];
        widths.extend(&net.cfg.hidden);
        widths.push(d);
        let lanes = if net.exact { d } else { 1 };
        let rows = [BATCH / 2, lanes * BATCH / 2];
        let maxw = *widths.iter().max().unwrap();
        let w = widths.windows(2).map(|p| vec![T::from_f64c(0.01); p[0] * p[1]]).collect();
        let buf = |r: usize| (0..2).map(|_| vec![T::from_f64c(0.5); r * maxw]).collect::<Vec<_>>();
        GemmChain {
            widths: widths.clone(),
            rows,
            first_tangent_gemm: !net.exact,
            reverse,
            w,
            x: [buf(rows[1]), buf(rows[1])],
            y: [buf(rows[1]), buf(rows[1])],
            gw: [
                widths.windows(2).map(|p| vec![T::zero(); p[0] * p[1]]).collect(),
                widths.windows(2).map(|p| vec![T::zero(); p[0] * p[1]]).collect(),
            ],
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn half(
        widths: &[usize],
        rows: [usize; 2],
        ftg: bool,
        rev: bool,
        w: &[Vec<T>],
        x: &mut [Vec<T>],
        y: &mut [Vec<T>],
        gw: &mut [Vec<T>],
    ) {
        let (one, zero) = (T::one(), T::zero());
        for (pass, &r) in rows.iter().enumerate() {
            for (l, p) in widths.windows(2).enumerate() {
                let (ni, no) = (p[0], p[1]);
                if pass == 1 && l == 0 && !ftg {
                    continue;
                }
                let (xs, ys) = (&x[0], &mut y[0]);
                T::gemm(
                    r,
                    ni,
                    no,
                    one,
                    &xs[..r * ni],
                    (ni, 1),
                    &w[l],
                    (1, ni),
                    zero,
                    &mut ys[..r * no],
                    (no, 1),
                );
                if rev {
                    // input gradient and weight gradient
                    let (xs, ys) = (&y[0], &mut x[1]);
                    T::gemm(
                        r,
                        no,
                        ni,
                        one,
                        &xs[..r * no],
                        (no, 1),
                        &w[l],
                        (ni, 1),
                        zero,
                        &mut ys[..r * ni],
                        (ni, 1),
                    );
                    T::gemm(
                        no,
                        r,
                        ni,
                        one,
                        &xs[..r * no],
                        (1, no),
                        &x[0][..r * ni],
                        (ni, 1),
                        one,
                        &mut gw[l],
                        (ni, 1),
                    );
                }
            }
        }
    }

    fn run(&mut self) {
        let GemmChain { widths, rows, first_tangent_gemm, reverse, w, x, y, gw } = self;
        let (x0, x1) = x.split_at_mut(1);
        let (y0, y1) = y.split_at_mut(1);
        let (g0, g1) = gw.split_at_mut(1);
        let (ftg, rev) = (*first_tangent_gemm, *reverse);
        rayon::join(
            || Self::half(widths, *rows, ftg, rev, w, &mut x0[0], &mut y0[0], &mut g0[0]),
            || Self::half(widths, *rows, ftg, rev, w, &mut x1[0], &mut y1[0], &mut g1[0]),
        );
        black_box(&self.gw);
    }
}

fn bench_type<T: Real>(c: &mut Criterion, ty: &str) {
    for net in nets() {
        let mut g = c.benchmark_group(format!("{}_{ty}", net.name));
        g.sample_size(10);
        g.warm_up_time(std::time::Duration::from_millis(300));
        g.measurement_time(std::time::Duration::from_secs(1));
        let mut case = Case::<T>::new(&net);
        let div = if net.exact { "exact" } else { "hutchinson" };
        g.bench_function(format!("eval_{div}"), |b| b.iter(|| case.eval_div()));
        g.bench_function(format!("aug_vjp_{div}"), |b| b.iter(|| case.aug()));
        g.bench_function(format!("aug_vjp_jac_{div}"), |b| b.iter(|| case.aug_jac()));
        let mut fwd = GemmChain::<T>::new(&net, false);
        g.bench_function("gemm_chain_eval", |b| b.iter(|| fwd.run()));
        let mut rev = GemmChain::<T>::new(&net, true);
        g.bench_function("gemm_chain_aug", |b| b.iter(|| rev.run()));
        g.finish();
    }
}

/// Times the closures interleaved (one call of each per round, so a slow spell of the shared
/// machine hits neighbours alike) and returns the per-round times of each closure.
fn interleaved(fs: &mut [&mut dyn FnMut()], reps: usize) -> Vec<Vec<f64>> {
    for f in fs.iter_mut() {
        for _ in 0..3 {
            f();
        }
    }
    let mut t = vec![Vec::with_capacity(reps); fs.len()];
    for _ in 0..reps {
        for (f, v) in fs.iter_mut().zip(t.iter_mut()) {
            let s = Instant::now();
            f();
            v.push(s.elapsed().as_secs_f64());
        }
    }
    t
}

fn min_median(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn summary_type<T: Real>(ty: &str, peak: f64, measured: Option<f64>) {
    for net in nets() {
        let d = net.cfg.dim;
        let mut widths = vec![d];
        widths.extend(&net.cfg.hidden);
        widths.push(d);
        let unit =
            2.0 * widths.windows(2).map(|p| (p[0] * p[1]) as f64).sum::<f64>() * BATCH as f64;
        let units_eval = if net.exact { 1.0 + d as f64 } else { 2.0 };
        let mut case = Case::<T>::new(&net);
        let mut case2 = Case::<T>::new(&net);
        let mut case3 = Case::<T>::new(&net);
        let mut fwd = GemmChain::<T>::new(&net, false);
        let mut rev = GemmChain::<T>::new(&net, true);
        let reps = if d > 2 { 100 } else { 600 };
        let r = interleaved(
            &mut [
                &mut || case.eval_div(),
                &mut || fwd.run(),
                &mut || case2.aug(),
                &mut || rev.run(),
                &mut || case3.aug_jac(),
            ],
            reps,
        );
        let div = if net.exact { "exact" } else { "Hutchinson" };
        for (what, units, ops, gemm) in [
            (format!("f + {div} div"), units_eval, &r[0], &r[1]),
            (format!("aug VJP ({div})"), 3.0 * units_eval, &r[2], &r[3]),
            (format!("aug VJP + ‖JV‖² term ({div})"), 3.0 * units_eval, &r[4], &r[3]),
        ] {
            let ((t, tm), (g, gm)) = (min_median(ops), min_median(gemm));
            // Ratio of each call to the GEMM chain run right after it, median over rounds.
            let ratios: Vec<f64> = ops.iter().zip(gemm).map(|(a, b)| a / b).collect();
            let ratio = min_median(&ratios).1;
            let gf = units * unit / t / 1e9;
            println!(
                "| {} {ty} | {what} | {:.3} ms ({:.3}) | {units:.0} | {gf:.1} | {:.0}% | {} | {:.3} ms ({:.3}) | {ratio:.2}× |",
                net.name,
                t * 1e3,
                tm * 1e3,
                100.0 * gf / peak,
                measured.map_or("n/a".into(), |m| format!("{:.0}%", 100.0 * gf / m)),
                g * 1e3,
                gm * 1e3,
            );
        }
    }
}

fn summary(_c: &mut Criterion) {
    // Two peaks: the guide's nominal one (2 cores × AVX2 FMA at a 2.45 GHz clock), which
    // this machine's GEMMs exceed, and the one measured here (independent FMAs on both
    // cores), which they can only approach.
    let measured = peak::measured_peak_f64();
    println!(
        "\nmeasured peak: {} GFLOP/s f64",
        measured.map_or("n/a".into(), |p| format!("{p:.1}"))
    );
    println!(
        "\n| net | call | time: min (median) | units | GFLOP/s at min | % of nominal peak \
         | % of measured peak | plain GEMM chain: min (median) \
         | time / GEMM time (median over rounds) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    summary_type::<f64>("f64", 78.0, measured);
    summary_type::<f32>("f32", 156.0, measured.map(|p| 2.0 * p));
}

fn benches(c: &mut Criterion) {
    bench_type::<f64>(c, "f64");
    bench_type::<f32>(c, "f32");
}

criterion_group!(field, benches, summary);
criterion_main!(field);
