//! Discrete flows: density (`log_prob`) and sampling (`forward` of fixed latents)
//! throughput per flow kind for d ∈ {2, 16, 64} on a batch of 256, and the growth of one
//! single-point density evaluation with d for the dense affine flow (LU per call, O(d³)),
//! the LU-parametrised affine flow (two triangular solves, O(d²)) and the elementwise affine
//! flow (O(d)): the survey's §3.1/§3.3 cost claims, measured.
//!
//! Layers: elementwise affine; LU affine (with bias); dense affine; elementwise
//! rational-quadratic spline (K = 8, B = 3); 4 planar; 4 radial; RealNVP = 4 affine
//! couplings with hidden [64, 64]; NSF = 4 spline couplings (K = 8) with hidden [64, 64]; MAF = 4 MAF layers with reversals, hidden [64, 64]
//! (density one pass, sampling d passes); IAF = the same with IAF layers (sampling one
//! pass, density d passes). Parameters are randomised so no layer is the identity.
//!
//! The inverse-CDF flow is not benchmarked here: its tensor-grid table grows as n^d.
//!
//! Run: `cargo bench --bench flows` (about three minutes).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use odeflow::flows::{
    Coupling, CouplingKind, DenseAffine, ElementwiseAffine, Flow, FlowModel, Iaf, LuAffine, Maf,
    Permutation, Planar, Radial, RqShape, RqSpline,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn model(kind: &str, d: usize) -> FlowModel<f64> {
    let mut layers: Vec<Box<dyn Flow<f64>>> = Vec::new();
    match kind {
        "elementwise" => layers.push(Box::new(ElementwiseAffine::new(d).unwrap())),
        "lu-affine" => layers.push(Box::new(LuAffine::new(d, None, true).unwrap())),
        "dense-affine" => layers.push(Box::new(DenseAffine::new(d).unwrap())),
        "rq-spline" => {
            layers.push(Box::new(RqSpline::new(d, RqShape { bins: 8, bound: 3.0 }).unwrap()))
        }
        "planar" | "radial" => {
            for _ in 0..4 {
                if kind == "planar" {
                    layers.push(Box::new(Planar::new(d).unwrap()));
                } else {
                    layers.push(Box::new(Radial::new(d).unwrap()));
                }
            }
        }
        "nsf" => {
            for i in 0..4 {
                let k = CouplingKind::RationalQuadratic(RqShape { bins: 8, bound: 3.0 });
                layers.push(Box::new(Coupling::new(d, k, &[64, 64], i % 2 == 1).unwrap()));
            }
        }
        "realnvp" => {
            for i in 0..4 {
                let k = CouplingKind::Affine { scale_bound: 3.0 };
                layers.push(Box::new(Coupling::new(d, k, &[64, 64], i % 2 == 1).unwrap()));
            }
        }
        "maf" | "iaf" => {
            for i in 0..4 {
                if i > 0 {
                    layers.push(Box::new(Permutation::reverse(d).unwrap()));
                }
                if kind == "maf" {
                    layers.push(Box::new(Maf::new(d, &[64, 64], 3.0).unwrap()));
                } else {
                    layers.push(Box::new(Iaf::new(d, &[64, 64], 3.0).unwrap()));
                }
            }
        }
        _ => unreachable!(),
    }
    let mut m = FlowModel::new(layers, 0).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let scale = 0.3 / (d as f64).sqrt();
    for p in m.params_mut() {
        *p += scale * (2.0 * rng.random::<f64>() - 1.0);
    }
    m
}

fn points(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| 2.0 * rng.random::<f64>() - 1.0).collect()
}

const KINDS: [&str; 10] = [
    "elementwise",
    "lu-affine",
    "dense-affine",
    "rq-spline",
    "planar",
    "radial",
    "realnvp",
    "nsf",
    "maf",
    "iaf",
];

fn throughput(c: &mut Criterion) {
    let b = 256;
    for (mode, kinds) in [("density", KINDS), ("sample", KINDS)] {
        let mut g = c.benchmark_group(format!("flows/{mode}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .throughput(Throughput::Elements(b as u64));
        for kind in kinds {
            for d in [2usize, 16, 64] {
                let m = model(kind, d);
                let input = points(b * d, 3);
                let mut ws = m.workspace();
                let (mut out, mut ld, mut lp) = (vec![0.0; b * d], vec![0.0; b], vec![0.0; b]);
                g.bench_function(BenchmarkId::new(kind, d), |bench| {
                    bench.iter(|| {
                        if mode == "density" {
                            m.log_prob_into(black_box(&input), &mut lp, &mut ws).unwrap();
                        } else {
                            m.forward_into(black_box(&input), &mut out, &mut ld, &mut ws).unwrap();
                        }
                    })
                });
            }
        }
        g.finish();
    }
}

fn scaling(c: &mut Criterion) {
    let mut g = c.benchmark_group("flows/scaling-1pt-density");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for kind in ["elementwise", "lu-affine", "dense-affine"] {
        for d in [4usize, 16, 64, 256] {
            let m = model(kind, d);
            let x = points(d, 5);
            let mut ws = m.workspace();
            let mut lp = [0.0];
            g.bench_function(BenchmarkId::new(kind, d), |bench| {
                bench.iter(|| m.log_prob_into(black_box(&x), &mut lp, &mut ws).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, throughput, scaling);
criterion_main!(benches);
