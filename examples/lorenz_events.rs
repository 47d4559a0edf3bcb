//! Events recorded along a long solve: the Lorenz system (σ = 10, ρ = 28, β = 8/3) from
//! (1, 1, 1) over t ∈ [0, 500] with DOP853 at rtol = atol = 1e-10, watching two event
//! functions without stopping:
//!
//! - `g₀ = z − 27`, falling: the Poincaré section of the attractor by the plane z = 27
//!   (the points (x, y) where trajectories cross it downward);
//! - `g₁ = ż = xy − βz`, falling: the maxima of z, and from them Lorenz's 1963 map
//!   `z_max(n) ↦ z_max(n+1)`, a thin cusp-shaped curve (it is one only if each maximum is
//!   located accurately).
//!
//! Writes `section.png` and `map.png` into OUT_DIR and prints the counts.
//!
//! Run: `cargo run --release --example lorenz_events [OUT_DIR]` (default `out/lorenz`).

use odeflow::plot::{render, ScatterPanels};
use odeflow::solvers::problems::Lorenz;
use odeflow::solvers::{Crossing, EventSpec, Events, Integrator, Method, NoObserver, SolveOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::env::args().nth(1).unwrap_or_else(|| "out/lorenz".into());
    std::fs::create_dir_all(&out_dir)?;
    let beta = 8.0 / 3.0;
    let specs = vec![EventSpec::record(Crossing::Falling), EventSpec::record(Crossing::Falling)];
    let mut events = Events::new(specs, |_t: f64, y: &[f64], g: &mut [f64]| {
        g[0] = y[2] - 27.0;
        g[1] = y[0] * y[1] - beta * y[2];
    });
    let mut integ = Integrator::new(Method::Dop853, SolveOptions::tol(1e-10, 1e-10))?;
    let mut y = Lorenz::Y0;
    let start = std::time::Instant::now();
    let out =
        integ.integrate_events(&mut Lorenz, 0.0, 500.0, &mut y, &mut events, &mut NoObserver)?;
    let elapsed = start.elapsed().as_secs_f64();

    // Skip the transient before the attractor (t < 10).
    let mut section = Vec::new();
    let mut maxima = Vec::new();
    for (k, hit) in events.hits().iter().enumerate() {
        let state = events.state(k).ok_or("a hit without its state")?;
        if hit.t < 10.0 {
            continue;
        }
        match hit.index {
            0 => section.extend_from_slice(&state[..2]),
            _ => maxima.push(state[2]),
        }
    }
    let map: Vec<f64> = maxima.windows(2).flat_map(|w| [w[0], w[1]]).collect();
    println!(
        "{} steps, {} evaluations, {elapsed:.3} s; {} section points, {} maxima of z",
        out.stats.n_accepted,
        out.stats.n_rhs,
        section.len() / 2,
        maxima.len()
    );
    let title = "Lorenz attractor: crossings of z = 27 downward, (x, y)".to_string();
    let fig = ScatterPanels { panels: vec![(title, &section)], range: (-10.0, 10.0) };
    render(format!("{out_dir}/section.png"), (640, 640), &fig)?;
    let title = "Lorenz map: successive maxima of z, z_max(n+1) against z_max(n)".to_string();
    let fig = ScatterPanels { panels: vec![(title, &map)], range: (29.0, 49.0) };
    render(format!("{out_dir}/map.png"), (640, 640), &fig)?;
    println!("wrote {out_dir}/section.png and {out_dir}/map.png");
    Ok(())
}
