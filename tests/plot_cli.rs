//! `odeflow plot` beside a training log without a single finite loss (a run that failed at
//! its first iteration leaves a header-only `train_log.csv`, which `plot` reads by default):
//! the command finishes, writes the model's figures and an empty training figure.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use odeflow::cnf::{Cnf, CnfConfig};
use odeflow::field::{Mlp, MlpConfig};
use odeflow::io::save_cnf;

/// Runs `odeflow args`; fails the test if it has not finished after `limit` (the process is
/// killed, so a hang shows as a failure). Returns whether it succeeded, and its stderr.
fn run_within(args: &[&str], limit: Duration) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_odeflow"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.success(), err);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (img.width(), img.height())
}

#[test]
fn plot_finishes_beside_a_training_log_without_finite_values() {
    let tmp = tempfile::Builder::new().prefix("odeflow-plotlog-").tempdir().unwrap();
    let dir = tmp.path();
    let cfg = MlpConfig { dim: 2, hidden: vec![8], seed: 4, ..Default::default() };
    let cnf = Cnf::new(Mlp::<f64>::new(&cfg).unwrap(), 0.5, CnfConfig::default()).unwrap();
    let model = dir.join("model.safetensors");
    save_cnf(&model, &cnf).unwrap();
    let header = "iteration,loss,nll,test_nll,nfe_forward,nfe_backward,iter_seconds,\
                  elapsed_seconds,t_end\n";
    let logs = [
        ("header_only", header.to_string()),
        ("empty", String::new()),
        ("all_nan", format!("{header}1,NaN,NaN,NaN,20,30,0.1,0.1,0.5\n2,inf,NaN,,NaN,NaN,0,0,0\n")),
    ];
    let model_s = model.to_string_lossy().into_owned();
    for (i, (name, log)) in logs.iter().enumerate() {
        let out = dir.join(name);
        let out_s = out.to_string_lossy().into_owned();
        let mut args = vec!["plot", "--model", &model_s, "--out", &out_s, "--grid", "20"];
        args.extend(["--samples", "50"]);
        // The first log lies beside the model (read by default), the others are given.
        let log_path =
            if i == 0 { dir.join("train_log.csv") } else { dir.join(format!("{name}.csv")) };
        std::fs::write(&log_path, log).unwrap();
        let log_s = log_path.to_string_lossy().into_owned();
        if i > 0 {
            args.extend(["--log", &log_s]);
        }
        let (ok, err) = run_within(&args, Duration::from_secs(300));
        assert!(ok, "{name}: {err}");
        assert_eq!(png_size(&out.join("training.png")), (1100, 420), "{name}");
        assert_eq!(png_size(&out.join("density.png")), (560, 560), "{name}");
        if i == 0 {
            std::fs::remove_file(&log_path).unwrap();
        }
    }
}
