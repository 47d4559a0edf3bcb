//! Converts a peer-harness checkpoint (FFJORD's toy net as `.npz`, `shared/peers/python`)
//! into an odeflow model file, so the command line can evaluate, sample and plot it.
//!
//! Run: `cargo run --release --example peer_model [NPZ] [OUT]`
//! (default: `data/peers/torch_f32_iter1000.npz` → `out/peer_iter1000.safetensors`).

use odeflow::cnf::{Cnf, CnfConfig};
use odeflow::field::Activation;
use odeflow::io::{load_peer_checkpoint, save_cnf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let input = args.next().unwrap_or_else(|| "data/peers/torch_f32_iter1000.npz".into());
    let output = args.next().unwrap_or_else(|| "out/peer_iter1000.safetensors".into());
    let mlp = load_peer_checkpoint::<f64>(&input, Activation::Tanh)?;
    // The peers' settings: T = 0.5, dopri5, rtol = atol = 1e-5, exact trace.
    let cnf = Cnf::new(mlp, 0.5, CnfConfig::default())?;
    if let Some(dir) = std::path::Path::new(&output).parent() {
        std::fs::create_dir_all(dir)?;
    }
    save_cnf(&output, &cnf)?;
    println!("wrote {output}");
    Ok(())
}
