//! End-to-end tests of the `odeflow` command line, run as a user would.

use std::path::Path;
use std::process::{Command, Output};

use odeflow::cnf::{Cnf, CnfConfig};
use odeflow::field::{Mlp, MlpConfig};
use odeflow::io::{read_csv, read_npy, save_cnf};
use tempfile::TempDir;

fn odeflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_odeflow")).args(args).output().expect("the binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = odeflow(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns its error message.
fn fails(args: &[&str]) -> String {
    let out = odeflow(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    err
}

/// A fresh folder with a small 2-D model in it, removed when the guard drops.
fn setup(name: &str) -> (TempDir, String) {
    let dir = tempfile::Builder::new().prefix(&format!("odeflow-cli-{name}-")).tempdir().unwrap();
    let cfg = MlpConfig { dim: 2, hidden: vec![16, 16], seed: 4, ..Default::default() };
    let cnf = Cnf::new(Mlp::<f64>::new(&cfg).unwrap(), 0.5, CnfConfig::default()).unwrap();
    let model = dir.path().join("model.safetensors");
    save_cnf(&model, &cnf).unwrap();
    (dir, model.to_string_lossy().into_owned())
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Decodes a PNG; checks its size and that it is not one flat colour.
fn check_png(path: &Path, width: u32, height: u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    assert_eq!((img.width(), img.height()), (width, height), "{}", path.display());
    let first = img.get_pixel(0, 0);
    let distinct = img.pixels().filter(|p| *p != first).count();
    // Blank means one colour; a figure has axes, labels and marks (> 0.2% of the pixels).
    assert!(
        distinct > (width * height / 500) as usize,
        "{} looks blank ({distinct} pixels differ)",
        path.display()
    );
}

#[test]
fn logprob_and_sample_write_files_of_the_right_shape() {
    let (tmp, model) = setup("ls");
    let dir = tmp.path();
    let points = dir.join("points.csv");
    std::fs::write(&points, "x,y\n0.5,0.1\n-1,2\n0,0\n").unwrap();
    let lp = dir.join("lp.csv");
    let msg = ok(&["logprob", "--model", &model, "--input", &s(&points), "--output", &s(&lp)]);
    assert!(msg.contains("function evaluations"), "{msg}");
    let logp = read_csv(&lp, Some(1)).unwrap();
    assert_eq!(logp.rows, 3);
    // The same numbers as the library's.
    let cnf = odeflow::io::load_cnf::<f64>(&model).unwrap();
    let (want, _) = cnf.log_prob(&[0.5, 0.1, -1.0, 2.0, 0.0, 0.0]).unwrap();
    assert_eq!(
        logp.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    // The status line gives their mean and its standard error.
    let mean = want.iter().sum::<f64>() / 3.0;
    let se = (want.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 2.0 / 3.0).sqrt();
    assert!(msg.contains(&format!("mean log p {mean:.4} (standard error {se:.4})")), "{msg}");

    let samples = dir.join("s.csv");
    ok(&[
        "sample",
        "--model",
        &model,
        "-n",
        "50",
        "--output",
        &s(&samples),
        "--with-log-prob",
        "--seed",
        "3",
    ]);
    let sp = read_csv(&samples, Some(3)).unwrap();
    assert_eq!(sp.rows, 50);
    let npy = dir.join("s.npy");
    ok(&["sample", "--model", &model, "-n", "40", "--output", &s(&npy)]);
    assert_eq!(read_npy(&npy).unwrap().shape, vec![40, 2]);
    // Same seed, same samples.
    let again = dir.join("s2.csv");
    ok(&[
        "sample",
        "--model",
        &model,
        "-n",
        "50",
        "--output",
        &s(&again),
        "--with-log-prob",
        "--seed",
        "3",
    ]);
    assert_eq!(std::fs::read(&samples).unwrap(), std::fs::read(&again).unwrap());
    // The sampled log-densities agree with logprob on the samples (within the tolerance).
    let xs: Vec<f64> = sp.data.chunks(3).flat_map(|r| [r[0], r[1]]).collect();
    let (lp2, _) = cnf.log_prob(&xs).unwrap();
    for (r, l) in sp.data.chunks(3).zip(&lp2) {
        assert!((r[2] - l).abs() < 1e-3, "{} vs {l}", r[2]);
    }
}

#[test]
fn plot_writes_figures_that_are_not_blank() {
    let (tmp, model) = setup("plot");
    let dir = tmp.path();
    let data = dir.join("data.csv");
    std::fs::write(&data, "1,1\n-1,-1\n2,0.5\n0.3,-2\n").unwrap();
    let out = dir.join("figs");
    ok(&[
        "plot",
        "--model",
        &model,
        "--data",
        &s(&data),
        "--out",
        &s(&out),
        "--grid",
        "40",
        "--samples",
        "300",
    ]);
    check_png(&out.join("density.png"), 560, 560);
    check_png(&out.join("samples.png"), 1000, 500);
    check_png(&out.join("trajectories.png"), 560, 560);
    check_png(&out.join("grid_trajectories.png"), 560, 560);
    let gif = std::fs::read(out.join("flow.gif")).unwrap();
    assert_eq!(&gif[..3], b"GIF");
}

#[test]
fn bench_writes_a_work_precision_table() {
    let (tmp, model) = setup("bench");
    let dir = tmp.path();
    let out = dir.join("wp");
    let msg = ok(&[
        "bench",
        "--problem",
        "lorenz",
        "--methods",
        "dopri5,dop853,rk4",
        "--tols",
        "1e-4,1e-8",
        "--steps",
        "100,1000",
        "--repeats",
        "1",
        "--out",
        &s(&out),
    ]);
    assert!(msg.contains("dop853"), "{msg}");
    let csv = std::fs::read_to_string(out.join("work_precision.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 6, "{csv}");
    check_png(&out.join("work_precision.png"), 1100, 480);
    let out2 = dir.join("wp_model");
    ok(&[
        "bench",
        "--problem",
        "model",
        "--model",
        &model,
        "--methods",
        "dopri5",
        "--tols",
        "1e-3,1e-6",
        "--repeats",
        "1",
        "--out",
        &s(&out2),
    ]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("work_precision.json")).unwrap())
            .unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    // The tighter tolerance is the more accurate.
    assert!(rows[1]["max_error"].as_f64().unwrap() < rows[0]["max_error"].as_f64().unwrap());
}

#[test]
fn bad_input_exits_nonzero_naming_the_problem_and_keeps_outputs() {
    let (tmp, model) = setup("bad");
    let dir = tmp.path();
    let lp = dir.join("lp.csv");
    std::fs::write(&lp, "precious\n").unwrap();
    let keep = || assert_eq!(std::fs::read_to_string(&lp).unwrap(), "precious\n");

    let err = fails(&[
        "logprob",
        "--model",
        &model,
        "--input",
        &s(&dir.join("missing.csv")),
        "--output",
        &s(&lp),
    ]);
    assert!(err.contains("missing.csv"), "{err}");
    keep();

    let three = dir.join("three.csv");
    std::fs::write(&three, "1,2,3\n4,5,6\n").unwrap();
    let err = fails(&["logprob", "--model", &model, "--input", &s(&three), "--output", &s(&lp)]);
    assert!(err.contains("3 columns, expected 2"), "{err}");
    keep();

    let nan = dir.join("nan.csv");
    std::fs::write(&nan, "1,2\n4,nan\n").unwrap();
    let err = fails(&["logprob", "--model", &model, "--input", &s(&nan), "--output", &s(&lp)]);
    assert!(err.contains("nan.csv:2") && err.contains("non-finite"), "{err}");
    keep();

    let corrupt = dir.join("corrupt.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    let points = dir.join("p.csv");
    std::fs::write(&points, "0,0\n").unwrap();
    let err =
        fails(&["logprob", "--model", &s(&corrupt), "--input", &s(&points), "--output", &s(&lp)]);
    assert!(
        err.contains("corrupt.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
    keep();

    let err = fails(&[
        "logprob",
        "--model",
        &model,
        "--input",
        &s(&points),
        "--output",
        &s(&lp),
        "--rtol",
        "0",
    ]);
    assert!(err.contains("rtol"), "{err}");
    keep();
    // Tolerances below f64's precision (they ended in "non-finite state": the error norm
    // overflowed).
    let (inp, outp) = (s(&points), s(&lp));
    let tiny = ["--rtol", "1e-300", "--atol", "1e-300"];
    let err = fails(
        &[&["logprob", "--model", &model, "--input", &inp, "--output", &outp], &tiny[..]].concat(),
    );
    assert!(err.contains("--rtol") && err.contains("below the precision of f64"), "{err}");
    keep();
    let err = fails(&[
        "logprob",
        "--model",
        &model,
        "--input",
        &s(&points),
        "--output",
        &s(&lp),
        "--atol=-1e-5",
    ]);
    assert!(err.contains("atol"), "{err}");
    keep();

    let err = fails(&["bench", "--problem", "nope", "--out", &s(dir)]);
    assert!(err.contains("unknown problem"), "{err}");
    let err = fails(&["logprob", "--model", &model, "--input", &s(&points), "--method", "rk5"]);
    assert!(err.contains("rk5"), "{err}");
}

fn load_params(path: &Path) -> Vec<u64> {
    let cnf = odeflow::io::load_cnf::<f64>(path).unwrap();
    cnf.blocks()
        .iter()
        .flat_map(|b| odeflow::field::VectorField::params(&b.field).iter().map(|v| v.to_bits()))
        .collect()
}

const SMALL: [&str; 8] =
    ["--hidden", "16,16", "--batch", "64", "--test-points", "256", "--rtol", "1e-4"];

#[test]
fn train_writes_model_state_log_and_figures_and_resumes_exactly() {
    let (tmp, _) = setup("train");
    let dir = tmp.path();
    let full = dir.join("full");
    let args = |out: &Path, iters: &str| -> Vec<String> {
        let mut v: Vec<String> =
            ["train", "--iterations", iters, "--test-every", "3", "--quiet", "--out", &s(out)]
                .iter()
                .map(|x| x.to_string())
                .collect();
        v.extend(SMALL.iter().map(|x| x.to_string()));
        v
    };
    let run = |v: Vec<String>| ok(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let msg = run(args(&full, "6"));
    assert!(msg.contains("trained at iteration 6"), "{msg}");
    for f in ["model.safetensors", "train_state.bin", "run.json", "train_log.csv"] {
        assert!(full.join(f).exists(), "{f}");
    }
    check_png(&full.join("density.png"), 560, 560);
    check_png(&full.join("training.png"), 1100, 420);
    let log = std::fs::read_to_string(full.join("train_log.csv")).unwrap();
    assert_eq!(log.lines().count(), 1 + 6);
    assert_eq!(
        log.lines().skip(1).filter(|l| l.split(',').nth(3).is_some_and(|t| !t.is_empty())).count(),
        2
    );

    // 3 iterations, then resume to 6: the same parameters, bit for bit, and the same log.
    let split = dir.join("split");
    run(args(&split, "3"));
    let mut resume = args(&split, "6");
    resume.push("--resume".into());
    run(resume);
    assert_eq!(
        load_params(&full.join("model.safetensors")),
        load_params(&split.join("model.safetensors"))
    );
    let strip = |l: &str| l.split(',').take(6).collect::<Vec<_>>().join(",");
    let a: Vec<String> = log.lines().map(strip).collect();
    let b: Vec<String> =
        std::fs::read_to_string(split.join("train_log.csv")).unwrap().lines().map(strip).collect();
    assert_eq!(a, b);
    // The trained model serves the other commands.
    let lp = dir.join("lp.csv");
    let pts = dir.join("pts.csv");
    std::fs::write(&pts, "0,0\n1,1\n").unwrap();
    ok(&[
        "logprob",
        "--model",
        &s(&full.join("model.safetensors")),
        "--input",
        &s(&pts),
        "--output",
        &s(&lp),
    ]);
    assert_eq!(read_csv(&lp, Some(1)).unwrap().rows, 2);
}

/// `--jacobian λ_J` (with `--kinetic` and the Hutchinson trace) trains, is recorded in
/// run.json for `--resume`, and is documented in `train --help`.
#[test]
fn train_with_rnode_regularizers() {
    let (tmp, _) = setup("trainrnode");
    let dir = tmp.path();
    let out = dir.join("run");
    let mut args: Vec<&str> = vec!["train", "--iterations", "2", "--quiet", "--no-plot"];
    args.extend(SMALL);
    let o = s(&out);
    args.extend(["--jacobian", "0.5", "--kinetic", "0.1", "--trace", "hutchinson-rademacher"]);
    args.extend(["--out", o.as_str()]);
    let text = ok(&args);
    assert!(text.contains("trained at iteration 2"), "{text}");
    let run = std::fs::read_to_string(out.join("run.json")).unwrap();
    assert!(run.contains("\"jacobian\": 0.5"), "{run}");
    let help = ok(&["train", "--help"]);
    assert!(help.contains("--jacobian") && help.contains("Jacobian-Frobenius"), "{help}");
}

/// `--steps peers` trains with the peers' step rules, records them in run.json and in the
/// model file, and `--steps` on logprob overrides them; an unknown name is refused.
#[test]
fn train_with_the_peers_steps() {
    let (tmp, _) = setup("trainsteps");
    let dir = tmp.path();
    let out = dir.join("run");
    let mut args: Vec<&str> = vec!["train", "--iterations", "2", "--quiet", "--no-plot"];
    args.extend(SMALL);
    let o = s(&out);
    args.extend(["--steps", "peers", "--out", o.as_str()]);
    let text = ok(&args);
    assert!(text.contains("trained at iteration 2"), "{text}");
    let run = std::fs::read_to_string(out.join("run.json")).unwrap();
    assert!(run.contains("\"steps\": \"peers\""), "{run}");
    let model_path = out.join("model.safetensors");
    let header = String::from_utf8_lossy(&std::fs::read(&model_path).unwrap()).into_owned();
    assert!(header.contains("\\\"steps\\\":\\\"peers\\\""), "no steps in the metadata");
    let pts = dir.join("pts.csv");
    std::fs::write(&pts, "x0,x1\n0.1,0.2\n-1.0,0.5\n").unwrap();
    let m = s(&model_path);
    for steps in ["peers", "hairer"] {
        let lp = dir.join(format!("lp-{steps}.csv"));
        let l = s(&lp);
        ok(&["logprob", "--model", &m, "--input", &s(&pts), "--output", &l, "--steps", steps]);
        assert!(std::fs::read_to_string(&lp).unwrap().lines().count() == 3);
    }
    let err = fails(&["logprob", "--model", &m, "--input", &s(&pts), "--steps", "pid"]);
    assert!(err.contains("pid"), "{err}");
}

/// Two iterations of `train` with the small settings and `extra` into `dir/name`; returns the
/// rows of its `train_log.csv` (header dropped) as fields.
fn train_small_log(dir: &Path, name: &str, extra: &[&str]) -> Vec<Vec<String>> {
    let out = s(&dir.join(name));
    let mut args: Vec<&str> = vec!["train", "--iterations", "2", "--quiet", "--no-plot"];
    args.extend(SMALL);
    args.extend(["--out", out.as_str()]);
    args.extend(extra);
    ok(&args);
    let log = std::fs::read_to_string(dir.join(name).join("train_log.csv")).unwrap();
    log.lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect()
}

/// The adjoint's options from the command line.
/// - `--adjoint-rtol` / `--adjoint-atol` set the backward solve's tolerances on their own: a
///   tighter backward solve takes more backward evaluations (the log's `nfe_backward`) with
///   the forward's unchanged.
/// - `--forward-seminorm` reaches the gradient's forward solve: with the log-density out of
///   its error norm the steps change, so the first loss differs in its last digits (at the
///   initial weights `z` limits the steps: same NFE here, observed 5.9530944468 vs
///   5.9530944469).
/// - `--seminorm` and `--adjoint-method` reach the backward solve only: the first loss and
///   forward NFE are bit-identical, the gradient is not, so the second loss differs.
/// - run.json records each; a fixed-step backward method and the CNF-only flags with a
///   purely discrete flow are refused clearly; a realnvp+cnf flow keeps them in its model
///   file.
#[test]
fn train_with_the_adjoint_options() {
    let (tmp, _) = setup("trainadjopts");
    let dir = tmp.path();
    // Per iteration: the loss, forward and backward NFE.
    let rows = |name: &str, extra: &[&str]| -> Vec<(f64, u64, u64)> {
        let log = train_small_log(dir, name, extra);
        let at = |c: &[String], i: usize| c[i].parse::<u64>().unwrap();
        log.iter().map(|c| (c[1].parse().unwrap(), at(c, 4), at(c, 5))).collect()
    };
    let full = rows("full", &[]);
    assert_eq!(full.len(), 2);
    let tight = rows("tight", &["--adjoint-rtol", "1e-9", "--adjoint-atol", "1e-9"]);
    assert_eq!(tight[0].1, full[0].1, "the first forward solve is the same");
    assert!(tight[0].2 > full[0].2, "backward NFE {} vs {}", tight[0].2, full[0].2);
    let semi = rows("semi", &["--forward-seminorm"]);
    let (f0, s0) = (full[0].0, semi[0].0);
    assert_ne!(s0.to_bits(), f0.to_bits(), "the forward seminorm changed nothing: {s0}");
    assert!((s0 - f0).abs() < 1e-4 * f0.abs(), "{s0} vs {f0}");
    for (name, extra) in
        [("bsemi", &["--seminorm"][..]), ("tsit5", &["--adjoint-method", "tsit5"][..])]
    {
        let r = rows(name, extra);
        assert_eq!((r[0].0.to_bits(), r[0].1), (f0.to_bits(), full[0].1), "{name}: forward");
        assert_ne!(r[1].0.to_bits(), full[1].0.to_bits(), "{name}: the gradient did not change");
        assert!((r[1].0 - full[1].0).abs() < 1e-3 * full[1].0.abs(), "{name}");
    }
    let run = |name: &str| std::fs::read_to_string(dir.join(name).join("run.json")).unwrap();
    assert!(run("tight").contains("\"adjoint_rtol\": 1e-9"), "{}", run("tight"));
    assert!(run("semi").contains("\"forward_seminorm\": true"), "{}", run("semi"));
    assert!(run("bsemi").contains("\"seminorm\": true"), "{}", run("bsemi"));
    assert!(run("tsit5").contains("\"adjoint_method\": \"tsit5\""), "{}", run("tsit5"));

    let base = ["train", "--iterations", "2", "--quiet", "--no-plot"];
    let rk4_out = s(&dir.join("rk4"));
    let mut args = base.to_vec();
    args.extend(["--out", rk4_out.as_str(), "--adjoint-method", "rk4"]);
    let err = fails(&args);
    assert!(err.contains("--adjoint-method rk4") && err.contains("adaptive"), "{err}");
    for flag in [&["--forward-seminorm"][..], &["--seminorm"], &["--adjoint-method", "tsit5"]] {
        let flow_out = s(&dir.join("flow"));
        let mut args = base.to_vec();
        args.extend(["--flow", "realnvp", "--out", flow_out.as_str()]);
        args.extend(flag);
        let err = fails(&args);
        assert!(err.contains(&format!("{} applies to a CNF", flag[0])), "{err}");
    }
    let hybrid = dir.join("hybrid");
    let h = s(&hybrid);
    let mut args = base.to_vec();
    args.extend(["--flow", "realnvp+cnf", "--out", h.as_str(), "--rtol", "1e-4"]);
    args.extend(FLOW_SMALL);
    args.extend(["--forward-seminorm", "--seminorm", "--adjoint-method", "tsit5"]);
    ok(&args);
    let (spec, _) = odeflow::io::load_flow::<f64>(hybrid.join("model.safetensors")).unwrap();
    let cnf = spec.cnf.unwrap();
    assert_eq!(cnf.adjoint_method, Some(odeflow::solvers::Method::Tsit5));
    assert!(cnf.seminorm && cnf.forward_seminorm);
}

#[test]
fn train_bad_input_fails_clearly_and_keeps_the_previous_model() {
    let (tmp, _) = setup("trainbad");
    let dir = tmp.path();
    let out = dir.join("run");
    let mut base: Vec<&str> = vec!["train", "--iterations", "2", "--quiet", "--no-plot"];
    base.extend(SMALL);
    let o = s(&out);
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .chain(["--out", o.as_str()].iter())
            .chain(extra.iter())
            .map(|x| x.to_string())
            .collect()
    };
    let v = with(&[]);
    ok(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let model = std::fs::read(out.join("model.safetensors")).unwrap();
    let run = std::fs::read(out.join("run.json")).unwrap();
    let check = |extra: &[&str], needle: &str| {
        let v = with(extra);
        let err = fails(&v.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert_eq!(
            std::fs::read(out.join("model.safetensors")).unwrap(),
            model,
            "{extra:?} touched the model"
        );
        // A refused command leaves the run resumable: its settings are not overwritten.
        assert_eq!(std::fs::read(out.join("run.json")).unwrap(), run, "{extra:?} touched run.json");
    };
    check(&["--batch", "0"], "batch");
    check(&["--lr", "NaN"], "lr");
    check(&["--iterations", "0"], "iterations");
    check(&["--blocks", "0"], "--blocks");
    check(&["--hidden", "16,0"], "--hidden");
    check(&["--method", "rk4"], "fixed-step");
    check(&["--batch", "100000000000000"], "--batch");
    check(&["--atol=0"], "atol");
    check(&["--data", "nosuchset"], "nosuchset");
    let nan = dir.join("nan.csv");
    std::fs::write(&nan, "1,2\n3,NaN\n").unwrap();
    check(&["--data", &s(&nan)], "non-finite");
    check(&["--activation", "relu6"], "relu6");
    check(&["--adjoint", "magic"], "magic");
    check(&["--adjoint-rtol=0"], "adjoint backward solver options");
    // The cause is named once (not repeated as a "caused by" line), with the atol beside it.
    let v = with(&["--adjoint-rtol=0"]);
    let err = fails(&v.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("rtol = 0, atol = 1e-5") && !err.contains("caused by"), "{err}");
    check(&["--adjoint-atol=NaN"], "adjoint backward solver options");
    check(&["--jacobian=-1"], "jacobian");
    let empty = dir.join("empty");
    let err = fails(&["train", "--resume", "--out", &s(&empty)]);
    assert!(err.contains("nothing to resume"), "{err}");
    // A run whose settings no longer fit its saved state: the state file is named.
    let mut settings: serde_json::Value = serde_json::from_slice(&run).unwrap();
    settings["hidden"] = serde_json::json!([16, 8]);
    std::fs::write(out.join("run.json"), settings.to_string()).unwrap();
    let err = fails(&["train", "--resume", "--iterations", "3", "--quiet", "--out", &o]);
    assert!(err.contains("train_state.bin") && err.contains("run.json"), "{err}");
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_the_state_and_exits_cleanly() {
    let (tmp, _) = setup("ctrlc");
    let dir = tmp.path();
    let out = dir.join("run");
    let state = interrupt_training(&out, &[], &SMALL);
    assert!(odeflow::io::load_cnf::<f64>(out.join("model.safetensors")).is_ok());
    assert!(state.iteration >= 2);
}

/// Starts an endless `odeflow train` into `out` (checkpoints every 2 iterations), sends it
/// SIGINT after its first checkpoint, and checks that it saved and exited cleanly; returns
/// the saved state.
#[cfg(unix)]
fn interrupt_training(
    out: &Path,
    extra: &[&str],
    small: &[&str],
) -> odeflow::train::TrainState<f64> {
    let iterations = "10000000";
    let args: Vec<String> = [
        "train",
        "--iterations",
        iterations,
        "--checkpoint-every",
        "2",
        "--quiet",
        "--no-plot",
        "--out",
        &s(out),
    ]
    .iter()
    .chain(extra)
    .chain(small)
    .map(|x| x.to_string())
    .collect();
    let child = Command::new(env!("CARGO_BIN_EXE_odeflow"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first checkpoint (written atomically), then interrupt.
    let start = std::time::Instant::now();
    while !out.join("train_state.bin").exists() {
        assert!(start.elapsed().as_secs() < 60, "no checkpoint within a minute");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("stopped (state saved"), "{stdout}");
    let state = odeflow::train::TrainState::<f64>::load(out.join("train_state.bin")).unwrap();
    assert!(state.iteration < iterations.parse().unwrap(), "the run was not interrupted");
    state
}

fn load_flow_params(path: &Path) -> Vec<u64> {
    let (_, model) = odeflow::io::load_flow::<f64>(path).unwrap();
    model.params().iter().map(|v| v.to_bits()).collect()
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

const FLOW_SMALL: [&str; 8] =
    ["--hidden", "8,8", "--layers", "2", "--batch", "64", "--test-points", "256"];

#[test]
fn train_flow_writes_model_state_log_and_figures_and_resumes_exactly() {
    for kind in ["realnvp", "maf"] {
        let (tmp, _) = setup(&format!("trainflow-{kind}"));
        let dir = tmp.path();
        let args = |out: &Path, iters: &str| -> Vec<String> {
            let mut v: Vec<String> = [
                "train",
                "--flow",
                kind,
                "--iterations",
                iters,
                "--test-every",
                "3",
                "--quiet",
                "--out",
                &s(out),
            ]
            .iter()
            .map(|x| x.to_string())
            .collect();
            v.extend(FLOW_SMALL.iter().map(|x| x.to_string()));
            v
        };
        let run = |v: Vec<String>| ok(&v.iter().map(String::as_str).collect::<Vec<_>>());
        let full = dir.join("full");
        let msg = run(args(&full, "6"));
        assert!(msg.contains("trained at iteration 6"), "{kind}: {msg}");
        for f in ["model.safetensors", "train_state.bin", "run.json", "train_log.csv"] {
            assert!(full.join(f).exists(), "{kind}: {f}");
        }
        check_png(&full.join("density.png"), 560, 560);
        check_png(&full.join("samples.png"), 1000, 500);
        check_png(&full.join("training.png"), 1100, 420);
        // A discrete flow has no trajectories.
        assert!(!full.join("trajectories.png").exists() && !full.join("flow.gif").exists());
        let log = std::fs::read_to_string(full.join("train_log.csv")).unwrap();
        assert_eq!(log.lines().count(), 1 + 6, "{kind}");
        assert_eq!(
            log.lines()
                .skip(1)
                .filter(|l| l.split(',').nth(3).is_some_and(|t| !t.is_empty()))
                .count(),
            2,
            "{kind}"
        );
        // The model file is a flow file of the requested kind.
        let model_path = full.join("model.safetensors");
        let (spec, model) = odeflow::io::load_flow::<f64>(&model_path).unwrap();
        assert_eq!(spec.kind.name(), kind);
        assert_eq!((spec.dim, spec.layers, spec.hidden.clone()), (2, 2, vec![8, 8]));
        let err = odeflow::io::load_cnf::<f64>(&model_path).unwrap_err().to_string();
        assert!(err.contains("a flow model file"), "{err}");

        // 3 iterations, then resume to 6: the same parameters, bit for bit, and the same log.
        let split = dir.join("split");
        run(args(&split, "3"));
        let mut resume = args(&split, "6");
        resume.push("--resume".into());
        run(resume);
        assert_eq!(
            load_flow_params(&model_path),
            load_flow_params(&split.join("model.safetensors")),
            "{kind}"
        );
        let strip = |l: &str| l.split(',').take(6).collect::<Vec<_>>().join(",");
        let a: Vec<String> = log.lines().map(strip).collect();
        let b: Vec<String> = std::fs::read_to_string(split.join("train_log.csv"))
            .unwrap()
            .lines()
            .map(strip)
            .collect();
        assert_eq!(a, b, "{kind}");

        // logprob and sample on the flow model agree with the library, bit for bit.
        let pts = dir.join("pts.csv");
        std::fs::write(&pts, "x,y\n0,0\n1,1\n-0.5,2\n").unwrap();
        let lp = dir.join("lp.csv");
        let m = s(&model_path);
        let msg = ok(&["logprob", "--model", &m, "--input", &s(&pts), "--output", &s(&lp)]);
        assert!(msg.contains("discrete flow"), "{msg}");
        let got = read_csv(&lp, Some(1)).unwrap();
        let want = model.log_prob(&[0.0, 0.0, 1.0, 1.0, -0.5, 2.0]).unwrap();
        assert_eq!(bits(&got.data), bits(&want), "{kind}");
        // Solver options are accepted and ignored for a flow.
        ok(&["logprob", "--model", &m, "--input", &s(&pts), "--output", &s(&lp), "--rtol", "1e-3"]);
        assert_eq!(bits(&read_csv(&lp, Some(1)).unwrap().data), bits(&want));

        let samples = dir.join("s.csv");
        ok(&[
            "sample",
            "--model",
            &m,
            "-n",
            "20",
            "--output",
            &s(&samples),
            "--with-log-prob",
            "--seed",
            "5",
        ]);
        let sp = read_csv(&samples, Some(3)).unwrap();
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (x, l) = model.sample_with_log_prob(20, &mut rng).unwrap();
        let rows: Vec<f64> = x.chunks(2).zip(&l).flat_map(|(p, v)| [p[0], p[1], *v]).collect();
        assert_eq!(bits(&sp.data), bits(&rows), "{kind}");
        let npy = dir.join("s.npy");
        ok(&["sample", "--model", &m, "-n", "7", "--output", &s(&npy)]);
        assert_eq!(read_npy(&npy).unwrap().shape, vec![7, 2]);

        // plot reads the flow file: density and samples, no trajectories.
        let figs = dir.join("figs");
        ok(&["plot", "--model", &m, "--out", &s(&figs), "--grid", "40", "--data", &s(&pts)]);
        check_png(&figs.join("density.png"), 560, 560);
        check_png(&figs.join("samples.png"), 1000, 500);
        assert!(!figs.join("trajectories.png").exists());
    }
}

/// The other discrete kinds train, save and evaluate; the hybrid (RealNVP + a trainable CNF
/// block) end to end: its CNF options reach the model file, logprob and sample agree with
/// the library bit for bit, the solver options override the block's, and plot reads it.
#[test]
fn train_new_flow_kinds_and_a_hybrid_end_to_end() {
    let (tmp, _) = setup("trainkinds");
    let dir = tmp.path();
    let pts = dir.join("pts.csv");
    std::fs::write(&pts, "x,y\n0,0\n1,1\n-0.5,2\n").unwrap();
    let lp = dir.join("lp.csv");
    let xs = [0.0, 0.0, 1.0, 1.0, -0.5, 2.0];
    for kind in ["iaf", "glow", "planar", "radial"] {
        let out = dir.join(kind);
        let mut v = vec!["train", "--flow", kind, "--iterations", "2", "--quiet", "--no-plot"];
        v.extend(FLOW_SMALL);
        let o = s(&out);
        v.extend(["--out", o.as_str()]);
        ok(&v);
        let model_path = out.join("model.safetensors");
        let (spec, model) = odeflow::io::load_flow::<f64>(&model_path).unwrap();
        assert_eq!(spec.kind.name(), kind);
        ok(&["logprob", "--model", &s(&model_path), "--input", &s(&pts), "--output", &s(&lp)]);
        let want = model.log_prob(&xs).unwrap();
        assert_eq!(bits(&read_csv(&lp, Some(1)).unwrap().data), bits(&want), "{kind}");
    }

    let out = dir.join("hybrid");
    let mut v = vec![
        "train",
        "--flow",
        "realnvp+cnf",
        "--iterations",
        "3",
        "--quiet",
        "--train-t",
        "--t-end",
        "0.4",
        "--rtol",
        "1e-6",
        "--atol",
        "1e-6",
        "--activation",
        "softplus",
    ];
    v.extend(FLOW_SMALL);
    let o = s(&out);
    v.extend(["--out", o.as_str()]);
    let msg = ok(&v);
    assert!(msg.contains("trained at iteration 3"), "{msg}");
    check_png(&out.join("density.png"), 560, 560);
    let model_path = out.join("model.safetensors");
    let m = s(&model_path);
    let (spec, model) = odeflow::io::load_flow::<f64>(&model_path).unwrap();
    let cnf = spec.cnf.clone().unwrap();
    assert_eq!((spec.kind.name(), spec.layers), ("realnvp+cnf", 2));
    assert_eq!((cnf.hidden, cnf.t_end, cnf.train_t, cnf.rtol), (vec![8, 8], 0.4, true, 1e-6));
    assert_eq!(cnf.activation, odeflow::field::Activation::Softplus);
    // Trained: ln T moved from ln 0.4.
    let ln_t = model.params()[model.n_params() - 1];
    assert!(ln_t.is_finite() && (ln_t - 0.4f64.ln()).abs() > 1e-6, "{ln_t}");
    let msg = ok(&["logprob", "--model", &m, "--input", &s(&pts), "--output", &s(&lp)]);
    assert!(msg.contains("flow with a CNF block"), "{msg}");
    let want = model.log_prob(&xs).unwrap();
    assert_eq!(bits(&read_csv(&lp, Some(1)).unwrap().data), bits(&want));
    // --rtol/--atol apply to the CNF block: the model rebuilt at 1e-10 gives the same.
    ok(&[
        "logprob",
        "--model",
        &m,
        "--input",
        &s(&pts),
        "--output",
        &s(&lp),
        "--rtol",
        "1e-10",
        "--atol",
        "1e-10",
    ]);
    let mut tight = spec.clone();
    if let Some(c) = tight.cnf.as_mut() {
        (c.rtol, c.atol) = (1e-10, 1e-10);
    }
    let mut tm = tight.build::<f64>(0).unwrap();
    tm.params_mut().copy_from_slice(model.params());
    let want_tight = tm.log_prob(&xs).unwrap();
    assert_eq!(bits(&read_csv(&lp, Some(1)).unwrap().data), bits(&want_tight));
    assert_ne!(bits(&want_tight), bits(&want));
    let samples = dir.join("s.csv");
    ok(&["sample", "--model", &m, "-n", "5", "--output", &s(&samples), "--with-log-prob"]);
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (x, l) = model.sample_with_log_prob(5, &mut rng).unwrap();
    let rows: Vec<f64> = x.chunks(2).zip(&l).flat_map(|(p, v)| [p[0], p[1], *v]).collect();
    assert_eq!(bits(&read_csv(&samples, Some(3)).unwrap().data), bits(&rows));
    let figs = dir.join("figs");
    ok(&["plot", "--model", &m, "--out", &s(&figs), "--grid", "30", "--samples", "100"]);
    check_png(&figs.join("density.png"), 560, 560);
    check_png(&figs.join("samples.png"), 500, 500); // no --data: the samples alone
}

#[test]
fn flow_bad_input_and_corrupt_flow_files_fail_clearly() {
    let (tmp, _) = setup("flowbad");
    let dir = tmp.path();
    let out = dir.join("run");
    let mut v: Vec<&str> =
        vec!["train", "--flow", "nice", "--iterations", "2", "--quiet", "--no-plot"];
    v.extend(FLOW_SMALL);
    let o = s(&out);
    v.extend(["--out", o.as_str()]);
    let normal = odeflow(&v);
    assert!(normal.status.success());
    let model = out.join("model.safetensors");
    assert_eq!(odeflow::io::load_flow::<f64>(&model).unwrap().0.kind.name(), "nice");
    // A run that diverges ends with a warning that says so (the normal one above has none).
    assert!(!String::from_utf8_lossy(&normal.stderr).contains("warning"));
    let o = s(&dir.join("diverged"));
    let mut w: Vec<&str> = vec!["train", "--flow", "realnvp", "--lr", "1e30", "--iterations", "4"];
    w.extend(["--test-every", "2", "--quiet", "--no-plot", "--out", &o]);
    w.extend(FLOW_SMALL);
    let diverged = odeflow(&w);
    let err = String::from_utf8_lossy(&diverged.stderr);
    assert!(diverged.status.success(), "{err}");
    assert!(err.contains("warning: the test NLL ended at") && err.contains("diverged"), "{err}");
    // Resumed, it warns again: it compares with the run's first batch (from the log), not
    // with the first batch of the resumed process, already diverged.
    let resumed = odeflow(&["train", "--resume", "--iterations", "6", "--quiet", "--out", &o]);
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{err}");
    assert!(err.contains("warning: the test NLL ended at") && err.contains("diverged"), "{err}");
    let err = fails(&["train", "--flow", "flowpp", "--out", &s(&dir.join("flowpp"))]);
    assert!(err.contains("unknown flow \"flowpp\"") && err.contains("realnvp+cnf"), "{err}");
    // The CNF block of a flow model takes the exact trace only.
    let err = fails(&[
        "train",
        "--flow",
        "realnvp+cnf",
        "--trace",
        "hutchinson-rademacher",
        "--out",
        &s(&dir.join("hutch")),
    ]);
    assert!(err.contains("--trace exact"), "{err}");
    let err = fails(&["train", "--flow", "maf", "--layers", "0", "--out", &s(&dir.join("l0"))]);
    assert!(err.contains("layers"), "{err}");
    // CNF-only options are refused with a discrete flow rather than silently ignored.
    for (flag, value) in
        [("--kinetic", "1"), ("--jacobian", "0.5"), ("--trace", "hutchinson-gaussian")]
    {
        let o = s(&dir.join("cnfonly"));
        let err = fails(&["train", "--flow", "realnvp", flag, value, "--out", &o]);
        assert!(err.contains(flag) && err.contains("--flow realnvp"), "{err}");
    }
    let err = fails(&["train", "--flow", "nice", "--train-t", "--out", &s(&dir.join("tt"))]);
    assert!(err.contains("--train-t"), "{err}");
    // bench needs an ODE.
    let err = fails(&["bench", "--problem", "model", "--model", &s(&model)]);
    assert!(err.contains("discrete flow"), "{err}");
    // A truncated flow file: a clear error, no output written.
    let bytes = std::fs::read(&model).unwrap();
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, &bytes[..bytes.len() - 5]).unwrap();
    let pts = dir.join("pts.csv");
    std::fs::write(&pts, "0,0\n").unwrap();
    let lp = dir.join("lp.csv");
    let err =
        fails(&["logprob", "--model", &s(&corrupt), "--input", &s(&pts), "--output", &s(&lp)]);
    assert!(
        err.contains("corrupt.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
    assert!(!lp.exists());
    let err = fails(&["sample", "--model", &s(&corrupt), "--output", &s(&dir.join("s.csv"))]);
    assert!(err.contains("not a valid safetensors"), "{err}");
    // Points of the wrong dimension for the flow.
    let p3 = dir.join("p3.csv");
    std::fs::write(&p3, "0,0,0\n").unwrap();
    let err = fails(&["logprob", "--model", &s(&model), "--input", &s(&p3), "--output", &s(&lp)]);
    assert!(err.contains("columns") || err.contains("3"), "{err}");
}

#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_flow_run_and_exits_cleanly() {
    let (tmp, _) = setup("ctrlcflow");
    let dir = tmp.path();
    let out = dir.join("run");
    let state = interrupt_training(&out, &["--flow", "realnvp"], &FLOW_SMALL);
    assert!(state.iteration >= 2);
    let (_, model) = odeflow::io::load_flow::<f64>(out.join("model.safetensors")).unwrap();
    assert_eq!(model.params(), state.params.as_slice());
}

#[test]
fn plot_writes_svg_and_the_training_curves_of_a_run() {
    let (tmp, _) = setup("plotsvg");
    let dir = tmp.path();
    let run = dir.join("run");
    let mut args: Vec<&str> = vec!["train", "--iterations", "3", "--quiet", "--no-plot", "--out"];
    let run_s = s(&run);
    args.push(&run_s);
    args.extend(SMALL);
    ok(&args);
    let figs = dir.join("figs");
    let model = s(&run.join("model.safetensors"));
    ok(&[
        "plot",
        "--model",
        &model,
        "--out",
        &s(&figs),
        "--format",
        "svg",
        "--grid",
        "30",
        "--samples",
        "200",
    ]);
    for f in ["density.svg", "samples.svg", "trajectories.svg", "training.svg"] {
        let text = std::fs::read_to_string(figs.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(text.contains("<svg") && text.len() > 2000, "{f}");
    }
    let err = fails(&["plot", "--model", &model, "--out", &s(&figs), "--format", "jpg"]);
    assert!(err.contains("jpg"), "{err}");
}

/// Sizes, counts and paths the audit of the command line found mishandled: each gives a
/// clear error (no panic, no abort, no hang) or now works.
#[test]
fn counts_sizes_and_formats_are_checked() {
    let (tmp, m) = setup("sizes");
    let dir = tmp.path();
    let d = |name: &str| s(&dir.join(name));
    // Counts below their minimum are refused as the command line is parsed, naming the flag.
    for (args, flag) in [
        (vec!["sample", "--model", &m, "-n", "0"], "-n"),
        (vec!["plot", "--model", &m, "--samples", "0", "--out", &d("p0")], "--samples"),
        (vec!["plot", "--model", &m, "--grid", "1", "--out", &d("p1")], "--grid"),
        (vec!["plot", "--model", &m, "--range", "0", "--out", &d("p2")], "--range"),
        (vec!["plot", "--model", &m, "--range", "NaN", "--out", &d("p3")], "--range"),
        (vec!["bench", "--methods", "rk4", "--steps", "0", "--out", &d("b0")], "--steps"),
        (vec!["bench", "--tols", "0", "--out", &d("b1")], "--tols"),
        (vec!["bench", "--repeats", "0", "--out", &d("b2")], "--repeats"),
        (vec!["logprob", "--model", &m, "--input", "x.csv", "--method", "rk4"], "fixed-step"),
    ] {
        let err = fails(&args);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    // Sizes that cannot be held: an error, not an allocation failure that aborts.
    for n in ["18446744073709551615", "100000000000"] {
        let err = fails(&["sample", "--model", &m, "-n", n, "--output", &d("big.csv")]);
        assert!(err.contains("-n") && err.contains(n), "{err}");
    }
    let err = fails(&["plot", "--model", &m, "--grid", "100000000", "--out", &d("p4")]);
    assert!(err.contains("--grid"), "{err}");
    // An unknown output extension is refused, not written as CSV under its name.
    let err = fails(&["sample", "--model", &m, "-n", "3", "--output", &d("x.npz")]);
    assert!(err.contains("unknown output format .npz"), "{err}");
    assert!(!dir.join("x.npz").exists());
    // logprob writes .npy too.
    let pts = dir.join("pts.csv");
    std::fs::write(&pts, "0.1,0.2\n-0.3,0.4\n0.5,-0.6\n").unwrap();
    ok(&["logprob", "--model", &m, "--input", &s(&pts), "--output", &d("lp.npy")]);
    let lp = read_npy(dir.join("lp.npy")).unwrap();
    assert_eq!(lp.shape, vec![3]);
    let csv = ok(&["logprob", "--model", &m, "--input", &s(&pts), "--output", &d("lp.csv")]);
    assert!(csv.contains("3 points"), "{csv}");
    let lp_csv = read_csv(dir.join("lp.csv"), Some(1)).unwrap();
    assert_eq!(bits_of(&lp_csv.data), bits_of(&lp.data));
    // A data file's non-finite value names the file.
    let nan = dir.join("nan.csv");
    std::fs::write(&nan, "0.1,0.2\n0.3,NaN\n").unwrap();
    let err = fails(&["logprob", "--model", &m, "--input", &s(&nan)]);
    assert!(err.contains("nan.csv") && err.contains("non-finite"), "{err}");
    // bench on no points is refused (it reported errors of 0).
    let none = dir.join("none.npy");
    odeflow::io::write_npy(&none, &[0, 2], &[]).unwrap();
    let err = fails(&["bench", "--problem", "model", "--model", &m, "--points", &s(&none)]);
    assert!(err.contains("no points"), "{err}");
    // A built-in problem's failure names the problem, not a CNF block (Bogacki–Shampine at a
    // tolerance near f64's precision runs out of steps); a tolerance below that precision is
    // refused with the flag's name, before any work.
    let err = fails(&["bench", "--methods", "bosh3", "--tols", "2.3e-16", "--out", &d("b3")]);
    assert!(err.contains("arenstorf") && !err.contains("block"), "{err}");
    let err = fails(&["bench", "--methods", "dopri5", "--tols", "1e-3,1e-300", "--out", &d("b3")]);
    assert!(err.contains("--tols") && err.contains("below the precision of f64"), "{err}");
    // Fixed steps beyond the step limit, and absurd repeats, are refused before any work.
    let err = fails(&["bench", "--methods", "euler", "--steps", "200000", "--out", &d("b4")]);
    assert!(err.contains("--steps 200000") && err.contains("100000"), "{err}");
    let err = fails(&["bench", "--repeats", "1000000000000", "--out", &d("b5")]);
    assert!(err.contains("--repeats"), "{err}");
    assert!(!dir.join("b4").exists(), "a refused bench created its folder");
    // A training file too small to hold out a test set trains without one (it panicked).
    let one = dir.join("one.csv");
    std::fs::write(&one, "0.5,-0.5\n").unwrap();
    let one = s(&one);
    for flow in [None, Some("realnvp")] {
        let out = dir.join(format!("one-{}", flow.unwrap_or("cnf")));
        let mut v = vec!["train", "--data", one.as_str(), "--iterations", "2", "--batch", "8"];
        v.extend(["--hidden", "8,8", "--quiet", "--no-plot"]);
        let o = s(&out);
        v.extend(["--out", o.as_str()]);
        if let Some(f) = flow {
            v.extend(["--flow", f, "--layers", "2"]);
        }
        let v: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        let text = ok(&v.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(text.contains("trained at iteration 2") && !text.contains("test NLL"), "{text}");
        let log = std::fs::read_to_string(out.join("train_log.csv")).unwrap();
        assert!(!log.to_lowercase().contains("nan"), "{log}");
    }
}

/// `odeflow … | head -1`: a closed stdout ends the process quietly (SIGPIPE), not with a
/// panic.
#[cfg(unix)]
#[test]
fn a_closed_stdout_is_not_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let (tmp, _) = setup("pipe");
    let dir = tmp.path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_odeflow"))
        .args(["bench", "--methods", "dopri5", "--tols", "1e-3", "--repeats", "1", "--out"])
        .arg(dir.join("b"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before anything is printed
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    assert!(out.status.success() || out.status.signal() == Some(13), "{:?}", out.status);
}

fn bits_of(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// What a user saved is not lost: an existing run, an input file, a training log; and
/// inputs the command line cannot use are named before any work.
#[test]
fn runs_inputs_and_logs_are_protected() {
    let (tmp, m) = setup("protect");
    let dir = tmp.path();
    let d = |name: &str| s(&dir.join(name));
    let run = dir.join("run");
    let o = s(&run);
    let base = ["train", "--iterations", "2", "--quiet", "--no-plot", "--hidden", "8,8"];
    let mut v: Vec<&str> = base.to_vec();
    v.extend(["--batch", "32", "--test-points", "64", "--out", &o]);
    ok(&v);
    let model = std::fs::read(run.join("model.safetensors")).unwrap();
    // A new run into the folder of another is refused; --overwrite replaces it.
    let err = fails(&v);
    assert!(err.contains("--resume") && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(run.join("model.safetensors")).unwrap(), model);
    // --resume keeps the run's settings: an option given again must match them.
    let r = ["train", "--quiet", "--no-plot", "--hidden", "8,8", "--batch", "32"];
    ok(&[&r[..], &["--test-points", "64", "--out", &o, "--resume", "--iterations", "3"]].concat());
    let err = fails(&["train", "--resume", "--out", &o, "--iterations", "4", "--lr", "0.5"]);
    assert!(err.contains("--lr with --resume") && err.contains("run.json"), "{err}");
    // A run folder another process holds (its lock, as a running train takes it) is refused,
    // to resume and to overwrite, and left as it was.
    let held = std::fs::File::open(&run).unwrap();
    held.try_lock().unwrap();
    let state = std::fs::read(run.join("train_state.bin")).unwrap();
    let err = fails(&["train", "--resume", "--out", &o, "--iterations", "4", "--no-plot"]);
    assert!(err.contains("in use by another odeflow train"), "{err}");
    let err = fails(&[&v[..], &["--overwrite"]].concat());
    assert!(err.contains("in use by another odeflow train"), "{err}");
    assert_eq!(std::fs::read(run.join("train_state.bin")).unwrap(), state);
    drop(held);
    // Nothing to do when the run is already there; but what a killed run left half-written
    // (its temporary files; no process has this pid) is removed.
    let stale = run.join(".model.safetensors.999999999.0.tmp");
    std::fs::write(&stale, b"half a model").unwrap();
    let minutes_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(300);
    std::fs::File::options().write(true).open(&stale).unwrap().set_modified(minutes_ago).unwrap();
    let out = odeflow(&["train", "--resume", "--out", &o, "--iterations", "2", "--no-plot"]);
    let (text, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("nothing to train"), "{text}{err}");
    if Path::new("/proc/self").exists() {
        assert!(!stale.exists() && err.contains("left by a process that was killed"), "{err}");
    }
    // An unreadable training log stops the resume instead of being dropped.
    let log = run.join("train_log.csv");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.push(0xff);
    std::fs::write(&log, &bytes).unwrap();
    let err = fails(&["train", "--resume", "--out", &o, "--iterations", "5", "--no-plot"]);
    assert!(err.contains("train_log.csv"), "{err}");
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "the log was touched");
    let mut w = v.clone();
    w.push("--overwrite");
    ok(&w);
    assert!(!std::fs::read_to_string(&log).unwrap().is_empty());
    // A data file whose points changed stops a resume; the same points written another
    // way do not.
    let data = dir.join("data.csv");
    let rows: Vec<String> = (0..80).map(|i| format!("{},{}", i % 9, i % 7)).collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    let on_file = s(&dir.join("on-file"));
    let mut f: Vec<&str> = base.to_vec();
    let data_arg = s(&data);
    f.extend(["--batch", "16", "--data", &data_arg, "--out", &on_file]);
    ok(&f);
    let resume = |iters: &str| {
        odeflow(&[
            "train",
            "--resume",
            "--out",
            &on_file,
            "--iterations",
            iters,
            "--quiet",
            "--no-plot",
        ])
    };
    std::fs::write(&data, rows.join(" \r\n")).unwrap();
    assert!(resume("3").status.success());
    // The same count of points, one value changed.
    let mut changed = rows.clone();
    changed[5] = "5,5.5".into();
    std::fs::write(&data, changed.join("\n")).unwrap();
    let out = resume("4");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("its points changed since the run started"),
        "{err}"
    );
    // logprob does not write over its input.
    let pts = dir.join("pts.csv");
    std::fs::write(&pts, "0.1,0.2\n0.3,0.4\n").unwrap();
    let err = fails(&["logprob", "--model", &m, "--input", &s(&pts), "--output", &s(&pts)]);
    assert!(err.contains("is the input"), "{err}");
    assert_eq!(std::fs::read_to_string(&pts).unwrap(), "0.1,0.2\n0.3,0.4\n");
    // An output folder that does not exist is named before the work.
    let err = fails(&["sample", "--model", &m, "-n", "5", "--output", &d("nodir/x.csv")]);
    assert!(err.contains("does not exist"), "{err}");
    // Inputs: an archive, an empty array, a toy set in capitals, a missing file.
    let err = fails(&["logprob", "--model", &m, "--input", &d("p.npz")]);
    assert!(err.contains(".npz archive"), "{err}");
    let empty = dir.join("empty.npy");
    odeflow::io::write_npy(&empty, &[0, 2], &[]).unwrap();
    let err = fails(&["logprob", "--model", &m, "--input", &s(&empty)]);
    assert!(err.contains("no points"), "{err}");
    let mut t: Vec<&str> = base.to_vec();
    let caps = d("caps");
    t.extend(["--batch", "32", "--test-points", "64", "--data", "MOONS", "--out", &caps]);
    ok(&t);
    let err = fails(&["train", "--data", "nosuch.csv", "--out", &d("missing")]);
    assert!(err.contains("nosuch.csv") && err.contains("8gaussians"), "{err}");
    let err = fails(&["train", "--data", &s(&pts), "--test-fraction", "0.9", "--out", &d("tf")]);
    assert!(err.contains("test_fraction") && err.contains("pts.csv"), "{err}");
    // plot: a 3-D model, and a --log that is not a training log, before any figure.
    let cfg = MlpConfig { dim: 3, hidden: vec![8], seed: 1, ..Default::default() };
    let cnf3 = Cnf::new(Mlp::<f64>::new(&cfg).unwrap(), 0.5, CnfConfig::default()).unwrap();
    let m3 = dir.join("m3.safetensors");
    save_cnf(&m3, &cnf3).unwrap();
    let err = fails(&["plot", "--model", &s(&m3), "--out", &d("f3")]);
    assert!(err.contains("3-D") && err.contains("m3.safetensors"), "{err}");
    let figs = dir.join("figs");
    let err = fails(&["plot", "--model", &m, "--log", &s(&pts), "--grid", "8", "--out", &s(&figs)]);
    assert!(err.contains("not a training log"), "{err}");
    assert!(!figs.join("density.png").exists(), "figures were written before the error");
    // A log beside the model that is not a training log: the figures, and a warning.
    let beside = dir.join("beside");
    std::fs::create_dir_all(&beside).unwrap();
    std::fs::copy(&m, beside.join("model.safetensors")).unwrap();
    std::fs::write(beside.join("train_log.csv"), "a,b\n1,2\n").unwrap();
    let bm = s(&beside.join("model.safetensors"));
    let out =
        odeflow(&["plot", "--model", &bm, "--grid", "8", "--samples", "20", "--out", &s(&figs)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("warning: no training curves"), "{err}");
    assert!(figs.join("density.png").exists() && !figs.join("training.png").exists());
}

/// Runs `args` with `input` on standard input; returns its output.
fn odeflow_with_stdin(args: &[&str], input: &[u8]) -> Output {
    odeflow_with_stdin_in(Path::new("."), args, input)
}

/// [`odeflow_with_stdin`] in the working directory `cwd`.
fn odeflow_with_stdin_in(cwd: &Path, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_odeflow"))
        .current_dir(cwd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    // A command that fails early may close its input before reading it all.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().unwrap()
}

/// `-` is standard input for `--input` and `--data`, standard output for `--output`, as
/// command-line tools have it: the same bytes as a file output, the status line on stderr,
/// CSV or .npy read from a pipe, errors that name standard input, and a `--data -` run that
/// resumes from the same points piped again (and refuses others).
#[test]
fn dash_reads_standard_input_and_writes_standard_output() {
    let (tmp, model) = setup("dash");
    let dir = tmp.path();
    let file = dir.join("s.csv");
    let args = ["sample", "--model", &model, "-n", "30", "--seed", "2", "--with-log-prob"];
    ok(&[&args[..], &["--output", &s(&file)]].concat());
    let out = odeflow_with_stdin_in(dir, &[&args[..], &["--output", "-"]].concat(), b"");
    assert!(out.status.success());
    assert_eq!(out.stdout, std::fs::read(&file).unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sampled 30 points") && err.contains("wrote standard output"), "{err}");
    assert!(!dir.join("-").exists()); // (it wrote a file named `-`)

    // The samples piped back in: the log-densities the library gives, bit for bit.
    let sp = read_csv(&file, Some(3)).unwrap();
    let xs: Vec<f64> = sp.data.chunks(3).flat_map(|r| [r[0], r[1]]).collect();
    let cnf = odeflow::io::load_cnf::<f64>(&model).unwrap();
    let (want, _) = cnf.log_prob(&xs).unwrap();
    let mut points = Vec::new();
    odeflow::io::write_csv_to(&mut points, &["x", "y"], &xs).unwrap();
    let lp = ["logprob", "--model", &model, "--input", "-", "--output", "-"];
    let got = odeflow_with_stdin(&lp, &points);
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    let text = String::from_utf8(got.stdout).unwrap();
    let values: Vec<f64> = text.lines().skip(1).map(|l| l.parse().unwrap()).collect();
    assert_eq!(bits_of(&values), bits_of(&want));
    // The same points as .npy bytes on standard input.
    let npy = dir.join("x.npy");
    odeflow::io::write_npy(&npy, &[30, 2], &xs).unwrap();
    let got = odeflow_with_stdin(&lp, &std::fs::read(&npy).unwrap());
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    assert_eq!(String::from_utf8(got.stdout).unwrap(), text);

    // Bad input on standard input is named as such.
    for (input, want) in [
        (&b"x,y\n1,nan\n"[..], "standard input:2: column 2"),
        (b"", "standard input: no data rows"),
        (b"1,2,3\n", "standard input:1: 3 columns, expected 2"),
        (b"\x93NUMPY\x01\x00", "standard input"),
        (b"\xff\xfe1,2\n", "standard input: neither a .npy array nor UTF-8 CSV text"),
    ] {
        let got = odeflow_with_stdin(&lp, input);
        let err = String::from_utf8_lossy(&got.stderr);
        assert!(!got.status.success() && err.contains(want), "{input:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }

    // A run trained on piped points resumes from the same points piped again, also beside
    // a file named `-` (it was recorded as the data, and the resume read it).
    std::fs::write(dir.join("-"), "x,y\n9,9\n8,8\n7,7\n6,6\n5,5\n").unwrap();
    let run = s(&dir.join("run"));
    let mut train: Vec<&str> = vec!["train", "--data", "-", "--quiet", "--no-plot"];
    train.extend(SMALL);
    train.extend(["--out", run.as_str()]);
    let first_args = [&train[..], &["--iterations", "2"]].concat();
    let first = odeflow_with_stdin_in(dir, &first_args, &points);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let resume = [&train[..], &["--iterations", "3", "--resume"]].concat();
    let again = odeflow_with_stdin_in(dir, &resume, &points);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let other = odeflow_with_stdin(&resume, &points[..points.len() - 2]); // one digit less
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success() && err.contains("changed since the run started"), "{err}");
}

/// `train` keeps the model of the lowest test NLL in best.safetensors: the model a run
/// stopped at that iteration ends with (bit for bit), also across a resume; `--overwrite`
/// removes it with the old run, and a flow run keeps one too.
#[test]
fn train_keeps_the_model_of_the_best_test_nll() {
    let (tmp, _) = setup("best");
    let dir = tmp.path();
    let run = |name: &str, extra: &[&str]| {
        let out = s(&dir.join(name));
        let mut args: Vec<&str> = vec!["train", "--quiet", "--no-plot", "--out", &out];
        args.extend(SMALL);
        args.extend(["--lr", "0.05", "--test-every", "5"]);
        args.extend(extra);
        ok(&args)
    };
    let msg = run("a", &["--iterations", "40"]);
    let log = std::fs::read_to_string(dir.join("a/train_log.csv")).unwrap();
    let tests: Vec<(u64, f64)> = log
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f[0].parse().ok()?, f[3].parse().ok()?))
        })
        .collect();
    assert_eq!(tests.len(), 8);
    let (j, v) =
        tests.iter().copied().fold((0, f64::INFINITY), |b, t| if t.1 < b.1 { t } else { b });
    // The settings are chosen so that the test NLL rises at the end (the check is then not
    // just of the last model).
    assert!(j > 33 && j < 40, "best at iteration {j}: {tests:?}");
    assert!(msg.contains(&format!("best test NLL {v:.4} at iteration {j}")), "{msg}");
    // The file is marked with its iteration and test NLL; the same model (and mark) gives
    // the same bytes: those of the best model of a run stopped there, whose last model it
    // is (the same parameters).
    let at = odeflow::io::read_training_point(dir.join("a/best.safetensors")).unwrap();
    assert_eq!(at, Some(odeflow::io::TrainingPoint { iteration: j, test_nll: v }));
    let read = |p: &str| std::fs::read(dir.join(p)).unwrap();
    let best = read("a/best.safetensors");
    run("b", &["--iterations", &j.to_string()]);
    assert!(best == read("b/best.safetensors"));
    let best_params = load_params(&dir.join("a/best.safetensors"));
    assert!(best_params == load_params(&dir.join("b/model.safetensors")));
    assert!(best_params != load_params(&dir.join("a/model.safetensors")));
    // Resumed before its best iteration and after it: the same best model.
    run("c", &["--iterations", "30"]);
    run("c", &["--iterations", "40", "--resume"]);
    assert!(best == read("c/best.safetensors"));
    run("d", &["--iterations", &(j + 1).to_string()]);
    run("d", &["--iterations", "40", "--resume"]);
    assert!(best == read("d/best.safetensors"));
    // A run killed after writing its best model, before its log (written when train
    // returns): its state and log are from its last checkpoint, at 30, the best model from
    // later. Resumed to 33, it keeps that best model (the log's best, at 30, let iteration
    // 33's replace it).
    let (e, log_30, state_30) = (dir.join("e"), "e/log.30", "e/state.30");
    run("e", &["--iterations", "30"]);
    std::fs::copy(e.join("train_log.csv"), dir.join(log_30)).unwrap();
    std::fs::copy(e.join("train_state.bin"), dir.join(state_30)).unwrap();
    run("e", &["--iterations", "40", "--resume"]);
    std::fs::copy(dir.join(log_30), e.join("train_log.csv")).unwrap();
    std::fs::copy(dir.join(state_30), e.join("train_state.bin")).unwrap();
    let msg = run("e", &["--iterations", "33", "--resume"]);
    assert!(best == read("e/best.safetensors"));
    assert!(msg.contains(&format!("best test NLL {v:.4} at iteration {j}")), "{msg}");
    // A new run over the old one starts without the old best model.
    let out = s(&dir.join("a"));
    let mut args = vec!["train", "--iterations", "3", "--test-every", "0", "--overwrite"];
    args.extend(["--quiet", "--no-plot", "--out", &out]);
    args.extend(SMALL);
    ok(&args);
    assert!(!dir.join("a/best.safetensors").exists());
    // A flow run's best model is a flow model file.
    let out = s(&dir.join("flow"));
    let mut args = vec!["train", "--flow", "realnvp", "--iterations", "4", "--test-every", "2"];
    args.extend(["--quiet", "--no-plot", "--out", &out]);
    args.extend(FLOW_SMALL);
    ok(&args);
    odeflow::io::load_flow::<f64>(dir.join("flow/best.safetensors")).unwrap();
}

/// `--lr-schedule`:
/// - a warm-up reaches the optimizer (its first step at a tenth of the rate): the second loss
///   differs from a constant rate's (the first, before any step, is the same);
/// - a cosine over a 3-iteration run anneals to 0 at iteration 4: resumed to 6, the run keeps
///   its length (run.json), so iterations 4–6 take steps of rate 0 and the model's
///   parameters are those of iteration 3, bit for bit; a flow run takes the option too;
/// - malformed or out-of-range schedules are refused naming the option, writing nothing.
#[test]
fn train_with_a_learning_rate_schedule() {
    let (tmp, _) = setup("trainsched");
    let dir = tmp.path();
    let constant = train_small_log(dir, "constant", &[]);
    let warm = train_small_log(dir, "warmup", &["--lr-schedule", "warmup:10"]);
    assert_eq!(constant[0][1], warm[0][1], "the first loss comes before any step");
    assert_ne!(constant[1][1], warm[1][1], "the schedule changes the first step's rate");

    let out = dir.join("cosine");
    let run = |iterations: &str, extra: &[&str]| {
        let mut args = vec!["train", "--iterations", iterations, "--quiet", "--no-plot"];
        args.extend(SMALL);
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(extra);
        ok(&args);
    };
    run("3", &["--lr-schedule", "cosine"]);
    let at3 = load_params(&out.join("model.safetensors"));
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(settings["lr_schedule"], "cosine", "{settings}");
    assert_eq!(settings["lr_schedule_length"], 3, "{settings}");
    run("6", &["--resume"]);
    let after = load_params(&out.join("model.safetensors"));
    assert!(after == at3, "iterations 4–6 moved the parameters: the cosine's length changed");
    let log = std::fs::read_to_string(out.join("train_log.csv")).unwrap();
    assert_eq!(log.lines().count(), 1 + 6, "{log}");

    // The same for a flow run: its trainer takes the schedule too.
    let flow = dir.join("flow");
    let flow_run = |iterations: &str, extra: &[&str]| {
        let mut args = vec!["train", "--flow", "realnvp", "--layers", "2", "--hidden", "8"];
        args.extend(["--iterations", iterations, "--quiet", "--no-plot"]);
        args.extend(["--out", flow.to_str().unwrap()]);
        args.extend(extra);
        ok(&args);
    };
    flow_run("3", &["--lr-schedule", "cosine"]);
    let at3 = load_flow_params(&flow.join("model.safetensors"));
    flow_run("6", &["--resume"]);
    let after = load_flow_params(&flow.join("model.safetensors"));
    assert!(after == at3, "a flow run's iterations 4–6 moved its parameters");
    // A hand-edited run.json with a cosine but no length is refused on resume.
    let settings = flow.join("run.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("lr_schedule_length");
    std::fs::write(&settings, json.to_string()).unwrap();
    let err = fails(&["train", "--resume", "--iterations", "8", "--out", flow.to_str().unwrap()]);
    assert!(err.contains("--lr-schedule cosine") && err.contains("length"), "{err}");

    for bad in ["linear", "cosine:x", "cosine:1", "step:0:0.5", "step:2:1.5", "warmup:0", "step:2"]
    {
        let target = dir.join("refused");
        let err = fails(&["train", "--lr-schedule", bad, "--out", target.to_str().unwrap()]);
        assert!(err.contains(&format!("--lr-schedule {bad}")), "{bad}: {err}");
        assert!(!target.exists(), "{bad}: wrote {}", target.display());
    }
    // A bad --lr, or --iterations 0 under a cosine, is reported as such, not as the
    // schedule's fault.
    let refused = dir.join("refused");
    let err = fails(&["train", "--lr", "0", "--out", refused.to_str().unwrap()]);
    assert!(err.contains("lr = 0") && !err.contains("--lr-schedule"), "{err}");
    let args = ["train", "--lr-schedule", "cosine", "--iterations", "0", "--out"];
    let err = fails(&[&args[..], &[refused.to_str().unwrap()]].concat());
    assert!(err.contains("iterations = 0") && !err.contains("--lr-schedule"), "{err}");
}
