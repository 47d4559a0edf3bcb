//! How the cost of one density evaluation grows with the dimension d (survey §3.1, §3.3):
//! dense affine `x = A z + b` (LU of A per call, O(d³)), LU-parametrised affine (two
//! triangular solves, O(d²)) and elementwise affine (O(d)). Measures a single-point
//! `log_prob` for d = 4 … 256, prints the table with the fitted log-log slopes, and writes
//! the plot `flows_cost.svg` (or the path given as the first argument).
//!
//! `cargo run --release --example flows_cost [-- out.svg]`

use std::time::Instant;

use odeflow::flows::{DenseAffine, ElementwiseAffine, Flow, FlowModel, LuAffine};
use plotters::prelude::*;

fn model(kind: &str, d: usize) -> FlowModel<f64> {
    let layer: Box<dyn Flow<f64>> = match kind {
        "elementwise" => Box::new(ElementwiseAffine::new(d).unwrap()),
        "lu-affine" => Box::new(LuAffine::new(d, None, true).unwrap()),
        _ => Box::new(DenseAffine::new(d).unwrap()),
    };
    FlowModel::new(vec![layer], 0).unwrap()
}

/// Median of 7 timings of `reps` calls, in seconds per call.
fn time_per_call(m: &FlowModel<f64>, d: usize) -> f64 {
    let x: Vec<f64> = (0..d).map(|i| (i as f64 * 0.37).sin()).collect();
    let mut ws = m.workspace();
    let mut lp = [0.0];
    let mut reps = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..reps {
            m.log_prob_into(std::hint::black_box(&x), &mut lp, &mut ws).unwrap();
        }
        if t.elapsed().as_secs_f64() > 0.01 {
            break;
        }
        reps *= 2;
    }
    let mut ts: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                m.log_prob_into(std::hint::black_box(&x), &mut lp, &mut ws).unwrap();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[3]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "flows_cost.svg".into());
    let dims = [4usize, 8, 16, 32, 64, 128, 256];
    let kinds = ["elementwise", "lu-affine", "dense-affine"];
    let mut series = Vec::new();
    println!(
        "{:>5} {:>14} {:>14} {:>14}   (seconds per single-point log_prob)",
        "d", kinds[0], kinds[1], kinds[2]
    );
    let table: Vec<Vec<f64>> = kinds
        .iter()
        .map(|k| dims.iter().map(|&d| time_per_call(&model(k, d), d)).collect())
        .collect();
    for (i, d) in dims.iter().enumerate() {
        println!("{d:>5} {:>14.3e} {:>14.3e} {:>14.3e}", table[0][i], table[1][i], table[2][i]);
    }
    for (k, row) in kinds.iter().zip(&table) {
        // Least-squares slope of log t against log d over d ≥ 32 (past the call overhead).
        let pts: Vec<(f64, f64)> = dims
            .iter()
            .zip(row)
            .filter(|(d, _)| **d >= 32)
            .map(|(d, t)| ((*d as f64).ln(), t.ln()))
            .collect();
        let n = pts.len() as f64;
        let (mx, my) =
            (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
        let slope = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>()
            / pts.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>();
        println!("{k}: cost ∝ d^{slope:.2} (d ≥ 32)");
        series.push((k, row.clone(), slope));
    }

    let root = SVGBackend::new(&out, (720, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let ymin = table.iter().flatten().cloned().fold(f64::INFINITY, f64::min) * 0.5;
    let ymax = table.iter().flatten().cloned().fold(0.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption("single-point density cost vs d", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((3.0f64..300.0).log_scale(), (ymin..ymax).log_scale())?;
    chart.configure_mesh().x_desc("d").y_desc("seconds per call").disable_mesh().draw()?;
    for ((k, row, slope), color) in series.iter().zip([BLUE, GREEN, RED]) {
        let pts: Vec<(f64, f64)> = dims.iter().zip(row).map(|(d, t)| (*d as f64, *t)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(format!("{k} (slope {slope:.2})"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    println!("wrote {out}");
    Ok(())
}
