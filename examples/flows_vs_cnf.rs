//! The discrete flows' CI training runs (tests/flows.rs: 500 Adam iterations, batch 128,
//! lr 5e-3, test NLL on 1024 held-out points) beside a CNF trained with the same data,
//! optimizer, batch, iterations and test set (ConcatSquash MLP 2 → 32 → 32 → 2, tanh,
//! T = 0.5, dopri5 at rtol = atol = 1e-4, exact trace; the CNF of tests/train.rs).
//!
//! `cargo run --release --example flows_vs_cnf [-- iterations]`

use std::ops::ControlFlow;
use std::time::Instant;

use odeflow::cnf::{Cnf, CnfConfig};
use odeflow::field::{Mlp, MlpConfig};
use odeflow::flows::{Coupling, CouplingKind, Flow, FlowModel, Maf, Permutation};
use odeflow::train::{
    AdamConfig, CnfTrainConfig, CnfTrainer, DataSource, Dataset, FlowTrainConfig, FlowTrainer, Toy,
};

fn realnvp() -> FlowModel<f64> {
    let aff = CouplingKind::Affine { scale_bound: 3.0 };
    let layers: Vec<Box<dyn Flow<f64>>> = (0..6)
        .map(|i| {
            Box::new(Coupling::new(2, aff, &[32, 32], i % 2 == 1).unwrap()) as Box<dyn Flow<f64>>
        })
        .collect();
    FlowModel::new(layers, 0).unwrap()
}

fn maf() -> FlowModel<f64> {
    let mut layers: Vec<Box<dyn Flow<f64>>> = Vec::new();
    for i in 0..4 {
        if i > 0 {
            layers.push(Box::new(Permutation::reverse(2).unwrap()));
        }
        layers.push(Box::new(Maf::new(2, &[32, 32], 3.0).unwrap()));
    }
    FlowModel::new(layers, 0).unwrap()
}

fn main() -> Result<(), odeflow::Error> {
    let iters: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    let adam = AdamConfig { lr: 5e-3, ..Default::default() };
    println!("set         model     params  test NLL  train s");
    for toy in [Toy::EightGaussians, Toy::Moons] {
        for (name, model) in [("realnvp", realnvp()), ("maf", maf())] {
            let n = model.n_params();
            let cfg = FlowTrainConfig {
                iterations: iters,
                batch_size: 128,
                adam: adam.clone(),
                test_every: 0,
                seed: 1,
                ..Default::default()
            };
            let test = Dataset::toy(toy, 1024, 7);
            let mut tr = FlowTrainer::new(model, DataSource::Toy(toy), Some(test), cfg)?;
            let t = Instant::now();
            tr.run(|_| ControlFlow::Continue(()))?;
            let secs = t.elapsed().as_secs_f64();
            println!("{:<11} {name:<8} {n:>7}  {:.4}  {secs:>7.2}", toy.name(), tr.test_nll()?);
        }
        let mlp = Mlp::new(&MlpConfig { hidden: vec![32, 32], seed: 3, ..Default::default() })?;
        let n = odeflow::field::VectorField::n_params(&mlp);
        let cnf = Cnf::new(mlp, 0.5, CnfConfig { rtol: 1e-4, atol: 1e-4, ..Default::default() })?;
        let cfg = CnfTrainConfig {
            iterations: iters,
            batch_size: 128,
            adam: adam.clone(),
            test_every: 0,
            seed: 1,
            ..Default::default()
        };
        let test = Dataset::toy(toy, 1024, 7);
        let mut tr = CnfTrainer::new(cnf, DataSource::Toy(toy), Some(test), cfg)?;
        let t = Instant::now();
        tr.run(|_| ControlFlow::Continue(()))?;
        let secs = t.elapsed().as_secs_f64();
        println!("{:<11} {:<8} {n:>7}  {:.4}  {secs:>7.2}", toy.name(), "cnf", tr.test_nll()?);
    }
    Ok(())
}
