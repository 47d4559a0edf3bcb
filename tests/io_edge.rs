//! Output paths that are not plain files, end to end: `--output /dev/fd/1` (the descriptor
//! link `/dev/stdout` is too) into a pipe and into a file a shell redirected standard output
//! to (with `>` and with `>>`), and a directory given as the output.
//!
//! The tests name `/dev/fd/1`, not `/dev/stdout`: a write that renamed a temporary file onto
//! its path (the bug these tests guard against) fails inside `/proc` instead of replacing the
//! machine's `/dev/stdout` when the tests run as root.

use std::process::{Command, Stdio};

use odeflow::cnf::{Cnf, CnfConfig};
use odeflow::field::{Mlp, MlpConfig};
use odeflow::io::save_cnf;
use tempfile::TempDir;

/// A fresh folder with a small 2-D model in it, removed when the guard drops.
fn setup(name: &str) -> (TempDir, String) {
    let dir =
        tempfile::Builder::new().prefix(&format!("odeflow-io-edge-{name}-")).tempdir().unwrap();
    let cfg = MlpConfig { dim: 2, hidden: vec![8], seed: 4, ..Default::default() };
    let cnf = Cnf::new(Mlp::<f64>::new(&cfg).unwrap(), 0.5, CnfConfig::default()).unwrap();
    let model = dir.path().join("model.safetensors");
    save_cnf(&model, &cnf).unwrap();
    (dir, model.to_string_lossy().into_owned())
}

fn sample_to(model: &str, output: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_odeflow"));
    c.args(["sample", "--model", model, "-n", "5", "--output", output]);
    c
}

/// Checks that `text` is the 5-point CSV, whole, followed by nothing but the command's
/// report line if that goes to standard output too.
fn assert_samples_then_report(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 6, "{text}");
    assert_eq!(lines[0], "x0,x1", "{text}");
    for line in &lines[1..6] {
        let values: Vec<f64> = line.split(',').map(|v| v.parse().unwrap()).collect();
        assert!(values.len() == 2 && values.iter().all(|v| v.is_finite()), "{text}");
    }
    assert!(lines[6..].iter().all(|l| l.contains("wrote /dev/fd/1")), "{text}");
    assert!(lines.len() <= 7, "{text}");
}

#[cfg(unix)]
#[test]
fn output_to_the_stdout_descriptor_goes_where_stdout_goes() {
    let stdout = std::path::Path::new("/dev/fd/1");
    if !std::fs::symlink_metadata(stdout).is_ok_and(|m| m.file_type().is_symlink()) {
        eprintln!("skipped: /dev/fd/1 is not a link to the descriptor here");
        return;
    }
    let (tmp, model) = setup("stdout");
    let dir = tmp.path();
    // A pipe.
    let out = sample_to(&model, "/dev/fd/1").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_samples_then_report(&String::from_utf8_lossy(&out.stdout));
    // `> file`: the samples, then the report after them (not written over them).
    let file = dir.join("redirected.csv");
    let status = sample_to(&model, "/dev/fd/1")
        .stdout(Stdio::from(std::fs::File::create(&file).unwrap()))
        .status()
        .unwrap();
    assert!(status.success());
    assert_samples_then_report(&std::fs::read_to_string(&file).unwrap());
    // `>> file`: what was there stays.
    let file = dir.join("appended.csv");
    std::fs::write(&file, "kept\n").unwrap();
    let append = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    let status = sample_to(&model, "/dev/fd/1").stdout(Stdio::from(append)).status().unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&file).unwrap();
    let rest = text.strip_prefix("kept\n").unwrap_or_else(|| panic!("{text}"));
    assert_samples_then_report(rest);
}

#[test]
fn a_directory_as_output_is_an_error_naming_it() {
    let (tmp, model) = setup("dir");
    let dir = tmp.path();
    let target = dir.join("out.csv");
    std::fs::create_dir(&target).unwrap();
    let out = sample_to(&model, &target.to_string_lossy()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot write {}", target.display())), "{err}");
    assert!(target.is_dir() && std::fs::read_dir(&target).unwrap().count() == 0);
}
