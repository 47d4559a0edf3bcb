//! Trains RealNVP (affine coupling) and MAF on FFJORD's toy sets by maximum likelihood and
//! prints the test NLL (2048 held-out points) against iterations and wall time.
//!
//! `cargo run --release --example flows_train -- [iterations] [set ...]`
//! (defaults: 1000 iterations, 8gaussians and moons).

use std::ops::ControlFlow;
use std::time::Instant;

use odeflow::flows::{Coupling, CouplingKind, Flow, FlowModel, Maf, Permutation};
use odeflow::train::{AdamConfig, DataSource, Dataset, FlowTrainConfig, FlowTrainer, Toy};

/// RealNVP for 2-D: `k` affine couplings alternating the conditioning half.
pub fn realnvp(k: usize, hidden: &[usize]) -> Result<FlowModel<f64>, odeflow::Error> {
    let aff = CouplingKind::Affine { scale_bound: 3.0 };
    let layers: Vec<Box<dyn Flow<f64>>> = (0..k)
        .map(|i| Box::new(Coupling::new(2, aff, hidden, i % 2 == 1).unwrap()) as Box<dyn Flow<f64>>)
        .collect();
    FlowModel::new(layers, 0)
}

/// MAF for 2-D: `k` MAF layers with reversals between them.
pub fn maf(k: usize, hidden: &[usize]) -> Result<FlowModel<f64>, odeflow::Error> {
    let mut layers: Vec<Box<dyn Flow<f64>>> = Vec::new();
    for i in 0..k {
        if i > 0 {
            layers.push(Box::new(Permutation::reverse(2)?));
        }
        layers.push(Box::new(Maf::new(2, hidden, 3.0)?));
    }
    FlowModel::new(layers, 0)
}

fn main() -> Result<(), odeflow::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let iters: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let mut sets: Vec<Toy> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    if sets.is_empty() {
        sets = vec![Toy::EightGaussians, Toy::Moons];
    }
    println!("set         model    iter  test_nll  train_s");
    for toy in sets {
        for (name, model) in [("realnvp", realnvp(8, &[64, 64])?), ("maf", maf(5, &[64, 64])?)] {
            let test = Dataset::toy(toy, 2048, 7);
            let cfg = FlowTrainConfig {
                iterations: iters,
                batch_size: 256,
                adam: AdamConfig { lr: 2e-3, ..Default::default() },
                test_every: (iters / 5).max(1),
                seed: 1,
                ..Default::default()
            };
            let mut tr = FlowTrainer::new(model, DataSource::Toy(toy), Some(test), cfg)?;
            let t0 = Instant::now();
            tr.run(|p| {
                if let Some(v) = p.test_nll {
                    println!(
                        "{:<11} {name:<7} {:>5}  {v:.4}  {:>7.2}",
                        toy.name(),
                        p.iteration,
                        t0.elapsed().as_secs_f64()
                    );
                }
                ControlFlow::Continue(())
            })?;
        }
    }
    Ok(())
}
