//! Model files whose architecture JSON was edited to absurd sizes, end to end: `odeflow
//! sample` must refuse them at once with a message naming the file and the field, where it
//! used to abort on a huge allocation, loop for hours, or be killed for memory.
//!
//! Each command runs under a deadline and is killed past it, so a regression fails the test
//! instead of hanging the suite.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use odeflow::cnf::{Cnf, CnfConfig};
use odeflow::field::{Mlp, MlpConfig};
use odeflow::flows::{FlowKind, FlowSpec};
use odeflow::io::{save_cnf, save_flow};
use safetensors::SafeTensors;
use serde_json::{json, Value};
use tempfile::TempDir;

/// A fresh folder for one test, removed when the guard drops.
fn folder(name: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("odeflow-model-corrupt-{name}-")).tempdir().unwrap()
}

/// Writes `src`'s tensors to `dst` with the architecture JSON changed by `edit`.
fn edit_architecture(src: &Path, dst: &Path, edit: impl FnOnce(&mut Value)) {
    let bytes = std::fs::read(src).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut info = meta.metadata().clone().unwrap();
    let mut arch: Value = serde_json::from_str(&info["architecture"]).unwrap();
    edit(&mut arch);
    info.insert("architecture".into(), arch.to_string());
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    std::fs::write(dst, safetensors::serialize(tensors.tensors(), Some(info)).unwrap()).unwrap();
}

/// Runs `odeflow sample --model model -n 5` in the model's folder (where it writes
/// `samples.csv`), killed after 30 s; returns the exit code (`None`: killed by a signal, e.g.
/// an abort) and standard error.
fn sample(model: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_odeflow"))
        .args(["sample", "--model", &model.to_string_lossy(), "-n", "5"])
        .current_dir(model.parent().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}: still running after 30 s", model.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

/// Checks that sampling from `model` fails cleanly (status 1) with a message naming the
/// file and the architecture field `field`.
fn refused(model: &Path, field: &str) {
    let (code, err) = sample(model);
    let name = model.file_name().unwrap().to_string_lossy();
    assert_eq!(code, Some(1), "{name}: {err}");
    assert!(!err.contains("panicked"), "{name}: {err}");
    assert!(err.contains(&*name), "{name}: {err}");
    assert!(err.contains(&format!("architecture `{field}`")), "{name}: {err}");
}

const HUGE: u64 = 1_000_000_000_000;

#[test]
fn a_cnf_with_an_absurd_width_or_count_is_refused() {
    let tmp = folder("cnf");
    let dir = tmp.path();
    let cfg = MlpConfig { dim: 2, hidden: vec![8, 8], seed: 4, ..Default::default() };
    let cnf = Cnf::new(Mlp::<f64>::new(&cfg).unwrap(), 0.5, CnfConfig::default()).unwrap();
    let good = dir.join("good.safetensors");
    save_cnf(&good, &cnf).unwrap();
    assert_eq!(sample(&good).0, Some(0), "the unedited file samples");

    let hidden = dir.join("hidden.safetensors");
    edit_architecture(&good, &hidden, |a| a["hidden"] = json!([100_000_000_000u64]));
    refused(&hidden, "hidden[0]");
    let blocks = dir.join("blocks.safetensors");
    edit_architecture(&good, &blocks, |a| a["blocks"] = json!(HUGE));
    refused(&blocks, "blocks");
}

#[test]
fn a_flow_with_an_absurd_size_is_refused() {
    let tmp = folder("flow");
    let dir = tmp.path();
    let spec = FlowSpec::new(FlowKind::RealNvp, 2, 2, vec![8, 8]);
    let good = dir.join("good.safetensors");
    save_flow(&good, &spec, &spec.build::<f64>(1).unwrap()).unwrap();
    assert_eq!(sample(&good).0, Some(0), "the unedited file samples");

    let cases: [(&str, &str, Value); 3] = [
        ("dim.safetensors", "dim", json!(HUGE)),
        ("hidden.safetensors", "hidden", json!([100_000_000_000u64])),
        ("layers.safetensors", "layers", json!(HUGE)),
    ];
    for (file, key, value) in cases {
        let path = dir.join(file);
        edit_architecture(&good, &path, |a| a[key] = value);
        refused(&path, if key == "hidden" { "hidden[0]" } else { key });
    }
}

#[test]
fn a_hybrid_with_absurd_cnf_blocks_or_layers_is_refused() {
    let tmp = folder("hybrid");
    let dir = tmp.path();
    let mut spec = FlowSpec::new(FlowKind::RealNvpCnf, 2, 2, vec![8, 8]);
    spec.cnf.as_mut().unwrap().hidden = vec![8, 8];
    let good = dir.join("good.safetensors");
    save_flow(&good, &spec, &spec.build::<f64>(1).unwrap()).unwrap();
    assert_eq!(sample(&good).0, Some(0), "the unedited file samples");

    let blocks = dir.join("cnf-blocks.safetensors");
    edit_architecture(&good, &blocks, |a| a["cnf"]["blocks"] = json!(HUGE));
    refused(&blocks, "cnf.blocks");
    let layers = dir.join("layers.safetensors");
    edit_architecture(&good, &layers, |a| a["layers"] = json!(HUGE));
    refused(&layers, "layers");
}

/// A fixed-step CNF keeps its step size in its model file (it was lost, so the file could
/// not be solved); a file of a fixed-step method without a valid `h_fixed`, and one whose
/// MLP settings are invalid, are refused with the file's name (the second was not named).
#[test]
fn fixed_steps_and_invalid_settings_in_a_cnf_file() {
    use odeflow::io::load_cnf;
    use odeflow::solvers::{Method, SolveOptions};
    let tmp = folder("fixed");
    let dir = tmp.path();
    let cfg = MlpConfig { dim: 2, hidden: vec![8, 8], seed: 4, ..Default::default() };
    let config = CnfConfig::<f64> {
        method: Method::Rk4,
        options: SolveOptions { h_fixed: Some(0.05), ..Default::default() },
        ..Default::default()
    };
    let cnf = Cnf::new(Mlp::<f64>::new(&cfg).unwrap(), 0.5, config).unwrap();
    let rk4 = dir.join("rk4.safetensors");
    save_cnf(&rk4, &cnf).unwrap();
    let loaded: Cnf<f64, Mlp<f64>> = load_cnf(&rk4).unwrap();
    assert_eq!(loaded.config().method, Method::Rk4);
    assert_eq!(loaded.config().options.h_fixed, Some(0.05));
    let x = [0.3, -0.2, 1.0, 0.5];
    let bits = |v: Vec<f64>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(loaded.log_prob(&x).unwrap().0), bits(cnf.log_prob(&x).unwrap().0));

    let cases = [
        ("no-h.safetensors", "h_fixed", Value::Null, "h_fixed is missing"),
        ("zero-h.safetensors", "h_fixed", json!(0.0), "h_fixed is 0"),
        ("dim0.safetensors", "dim", json!(0), "`dim` = 0"),
        ("width0.safetensors", "hidden", json!([8, 0]), "`hidden` = 0"),
    ];
    for (name, key, value, want) in cases {
        let path = dir.join(name);
        edit_architecture(&rk4, &path, |a| a[key] = value);
        let err = load_cnf::<f64>(&path).err().unwrap().to_string();
        assert!(err.contains(name) && err.contains(want), "{name}: {err}");
    }
}
