//! Density transport with a known velocity field: no training, the same code path as a CNF.
//!
//! The field f(t, z) = (−2 tanh(3 z₁), 0.8 sin(z₁)) (written once over dual numbers, its
//! divergence and derivatives by forward-mode AD) carries the standard normal base at t = T
//! back to t = 0 into two sheared lobes. The example evaluates the density of the flow's
//! marginal at five times on a grid (Liouville: log p_t(y) = log N(z(T)) − ∫_t^T −tr ∂f/∂z),
//! checks that each integrates to one, and draws the densities and the paths of samples.
//!
//! Run: `cargo run --release --example density_transport [OUT_DIR]` (default `out/transport`).

use odeflow::cnf::{Cnf, CnfConfig};
use odeflow::field::{AutoDiffField, DualScalar, Real, ScalarField};
use odeflow::plot::{render, DensityPanels, Grid2, Trajectories};
use rand::SeedableRng;

/// The velocity field (autonomous; any t-dependence would be written the same way).
struct TwoLobes;

impl<T: Real> ScalarField<T> for TwoLobes {
    fn dim(&self) -> usize {
        2
    }
    fn eval<D: DualScalar<T>>(&self, _t: D, z: &[D], out: &mut [D]) {
        out[0] = (z[0] * T::from_f64c(3.0)).tanh() * T::from_f64c(-2.0);
        out[1] = z[0].sin() * T::from_f64c(0.8);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir =
        std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "out/transport".into()));
    std::fs::create_dir_all(&out_dir)?;
    let t_end = 1.0;
    let cfg = CnfConfig { rtol: 1e-7, atol: 1e-7, ..Default::default() };
    let cnf = Cnf::new(AutoDiffField::new(TwoLobes), t_end, cfg)?;

    let (range, n) = ((-6.0, 6.0), 150);
    let centres = Grid2::centres(range, range, n, n);
    let mut grids = Vec::new();
    for t in [1.0, 0.75, 0.5, 0.25, 0.0] {
        let (logp, stats) = cnf.log_density_at(t, &centres)?;
        let values: Vec<f64> = logp.iter().map(|l| l.exp()).collect();
        let grid = Grid2 { x_range: range, y_range: range, nx: n, ny: n, values };
        let mass = grid.values.iter().sum::<f64>() * grid.cell_area();
        println!("t = {t:4.2}: mass on the grid {mass:.6}, {} field evaluations", stats.n_rhs);
        grids.push((format!("t = {t}"), grid));
    }
    let panels = DensityPanels {
        panels: grids.iter().map(|(s, g)| (s.clone(), g)).collect(),
        shared_scale: false,
    };
    let density_path = out_dir.join("density.png");
    render(&density_path, (1500, 330), &panels)?;

    // Paths of 300 base samples from t = T back to t = 0.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let z: Vec<f64> = (0..600)
        .map(|_| rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng))
        .collect();
    let times: Vec<f64> = (0..=40).rev().map(|k| t_end * k as f64 / 40.0).collect();
    let traj = cnf.trajectory(t_end, &z, &times)?;
    let paths_path = out_dir.join("trajectories.png");
    render(
        &paths_path,
        (600, 600),
        &Trajectories {
            title: "samples from t = T (base) to t = 0".into(),
            states: &traj.states,
            range,
        },
    )?;
    println!("wrote {} and {}", density_path.display(), paths_path.display());
    Ok(())
}
