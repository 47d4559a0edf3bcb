//! torchdiffeq's `ode_demo.py` in odeflow: fit dy/dt = f(y) (an MLP 2 → 50 → 2, tanh) to the
//! spiral dy/dt = (y³)ᵀ A observed at 1000 times on [0, 25], from batches of 20 segments of
//! 10 observations, L1 loss, Adam; prints the batch loss and the whole-trajectory error.
//!
//! Run: `cargo run --release --example train_spiral -- [ITERATIONS] [LR] [NOISE]`
//! (defaults 2000, 1e-3, 0).

use odeflow::field::{Mlp, MlpConfig, TimeConditioning};
use odeflow::train::node::{spiral, NodeFitConfig, NodeFitter};
use odeflow::train::AdamConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let iterations: u64 = args.first().map_or(Ok(2000), |s| s.parse())?;
    let lr: f64 = args.get(1).map_or(Ok(1e-3), |s| s.parse())?;
    let noise: f64 = args.get(2).map_or(Ok(0.0), |s| s.parse())?;
    let hidden: Vec<usize> = args
        .get(3)
        .map_or("50", String::as_str)
        .split('-')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let mse = args.get(4).is_some_and(|s| s == "mse");
    let obs = spiral::<f64>(1000, 25.0, noise, 1)?;
    let mlp = Mlp::new(&MlpConfig {
        hidden,
        time: TimeConditioning::Ignore,
        seed: 0,
        ..Default::default()
    })?;
    let cfg = NodeFitConfig {
        iterations,
        adam: AdamConfig {
            lr,
            weight_decay: 0.0,
            schedule: odeflow::train::LrSchedule::Cosine { total: iterations, min_lr: 0.0 },
            ..Default::default()
        },
        batch_size: std::env::var("BATCH").ok().and_then(|s| s.parse().ok()).unwrap_or(20),
        loss: if mse {
            odeflow::train::node::NodeLoss::Mse
        } else {
            odeflow::train::node::NodeLoss::L1
        },
        rtol: 1e-6,
        atol: 1e-8,
        ..Default::default()
    };
    let mut fit = NodeFitter::new(mlp, obs, cfg)?;
    let start = std::time::Instant::now();
    println!("iter 0: trajectory error {:.4}", fit.trajectory_error(1000)?);
    fit.run(|p| {
        if p.iteration % (iterations / 10).max(1) == 0 {
            let e = "";
            println!(
                "iter {}: batch loss {:.4}, NFE fwd {} bwd {}, {:.1} s{e}",
                p.iteration,
                p.loss,
                p.nfe_forward,
                p.nfe_backward,
                start.elapsed().as_secs_f64()
            );
        }
        std::ops::ControlFlow::Continue(())
    })?;
    let obs = spiral::<f64>(1000, 25.0, 0.0, 1)?;
    let f = fit.field();
    let mut ws = odeflow::field::VectorField::workspace(f, 1000);
    let mut pred = vec![0.0; 2000];
    odeflow::field::VectorField::eval(f, 0.0, &obs.y, &mut pred, &mut ws)?;
    let (mut num, mut den) = (0.0, 0.0);
    for (y, p) in obs.y.chunks(2).zip(pred.chunks(2)) {
        let (c0, c1) = (y[0].powi(3), y[1].powi(3));
        let tr = [-0.1 * c0 - 2.0 * c1, 2.0 * c0 - 0.1 * c1];
        num += (p[0] - tr[0]).hypot(p[1] - tr[1]);
        den += tr[0].hypot(tr[1]);
    }
    println!(
        "relative field error along the trajectory: {:.4}; segment error {:.4}",
        num / den,
        fit.segment_error()?
    );
    println!(
        "trajectory error after {iterations}: {:.4} ({:.1} s)",
        fit.trajectory_error(1000)?,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
