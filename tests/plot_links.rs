//! Figures written through symbolic links, onto a FIFO and onto a directory: they resolve
//! their path as `write_atomically` does. Through a link (or a chain of them) the file at
//! its end gets the new figure and the links stay links; a dangling link gets its target
//! created; a FIFO is written in place; a directory is an error naming it. Before, the
//! figures' own temporary file was renamed onto the user's path, replacing the link (or the
//! FIFO) by a regular file and leaving the file it pointed to as it was.
#![cfg(unix)]

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use odeflow::cnf::{Cnf, CnfConfig};
use odeflow::field::{Mlp, MlpConfig};
use odeflow::io::save_cnf;
use odeflow::plot::{animate_points, render, PlotError, ScatterPanels};
use tempfile::TempDir;

/// A fresh, empty folder for one test, removed when the guard drops.
fn scratch(name: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("odeflow-plot-links-{name}-")).tempdir().unwrap()
}

/// The names in `dir`, sorted (a temporary file left behind shows here).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn is_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

const SIZE: (u32, u32) = (120, 90);

fn scatter() -> ScatterPanels<'static> {
    ScatterPanels { panels: vec![("a".into(), &[0.0, 0.0, 0.5, -0.5][..])], range: (-1.0, 1.0) }
}

/// The figure of `SIZE` drawn to `path` (PNG, SVG or, for `.gif`, a two-frame animation).
fn draw(path: &Path) -> Result<(), PlotError> {
    if path.extension().is_some_and(|e| e == "gif") {
        let pts = [0.0, 0.0, 0.5, -0.5];
        let frames = vec![("a".to_string(), &pts[..]), ("b".to_string(), &pts[..2])];
        animate_points(path, SIZE, &frames, (-1.0, 1.0), 20)
    } else {
        render(path, SIZE, &scatter())
    }
}

/// Checks that `file` is a regular file holding a figure of `SIZE` in the format `ext`.
fn assert_figure(file: &Path, ext: &str) {
    let meta = std::fs::symlink_metadata(file).unwrap();
    assert!(meta.file_type().is_file(), "{} is not a regular file", file.display());
    let bytes = std::fs::read(file).unwrap();
    match ext {
        "svg" => {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.contains("<svg") && text.contains(r#"width="120""#), "{text}");
        }
        _ => {
            let img = image::load_from_memory(&bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert_eq!((img.width(), img.height()), SIZE, "{}", file.display());
        }
    }
}

#[test]
fn a_figure_through_a_link_replaces_the_file_it_points_to() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = scratch("link");
    let dir = tmp.path();
    let (out, keep) = (dir.join("o"), dir.join("keep"));
    std::fs::create_dir(&out).unwrap();
    std::fs::create_dir(&keep).unwrap();
    for ext in ["png", "svg", "gif"] {
        // o/density.<ext> → ../keep/d.<ext> (relative, as `ln -s` makes it).
        let target = keep.join(format!("d.{ext}"));
        std::fs::write(&target, b"old figure").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = out.join(format!("density.{ext}"));
        symlink(format!("../keep/d.{ext}"), &link).unwrap();
        draw(&link).unwrap_or_else(|e| panic!("{ext}: {e}"));
        assert!(is_link(&link), "{} is no longer a link", link.display());
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(&format!("../keep/d.{ext}")));
        assert_figure(&target, ext);
        // The replaced file's permissions are kept.
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640, "{ext}");
        // Drawn again over the figure it holds now.
        draw(&link).unwrap();
        assert!(is_link(&link));
        assert_figure(&target, ext);
    }
    // No temporary file was left in either folder.
    assert_eq!(names_in(&out), ["density.gif", "density.png", "density.svg"]);
    assert_eq!(names_in(&keep), ["d.gif", "d.png", "d.svg"]);
}

#[test]
fn a_figure_through_a_chain_of_links_and_a_dangling_link() {
    let tmp = scratch("chain");
    let dir = tmp.path();
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    for ext in ["png", "svg", "gif"] {
        // chain.<ext> → (absolute) link.<ext> → (relative) data/real.<ext>.
        let real = data.join(format!("real.{ext}"));
        std::fs::write(&real, b"old").unwrap();
        let link = dir.join(format!("link.{ext}"));
        symlink(format!("data/real.{ext}"), &link).unwrap();
        let chain = dir.join(format!("chain.{ext}"));
        symlink(&link, &chain).unwrap();
        draw(&chain).unwrap_or_else(|e| panic!("{ext}: {e}"));
        assert!(is_link(&chain) && is_link(&link), "{ext}");
        assert_eq!(std::fs::read_link(&chain).unwrap(), link);
        assert_figure(&real, ext);
        // A dangling link: the file it names is created, the link stays.
        let dangling = dir.join(format!("dangling.{ext}"));
        symlink(format!("data/new.{ext}"), &dangling).unwrap();
        draw(&dangling).unwrap_or_else(|e| panic!("{ext}: {e}"));
        assert!(is_link(&dangling), "{ext}");
        assert_figure(&data.join(format!("new.{ext}")), ext);
    }
    let mut want: Vec<String> = ["chain", "dangling", "link"]
        .iter()
        .flat_map(|n| ["gif", "png", "svg"].map(|e| format!("{n}.{e}")))
        .collect();
    want.push("data".into());
    want.sort();
    assert_eq!(names_in(dir), want);
    assert_eq!(
        names_in(&data),
        ["new.gif", "new.png", "new.svg", "real.gif", "real.png", "real.svg"]
    );
}

#[test]
fn a_directory_is_an_error_naming_it_and_is_left_alone() {
    let tmp = scratch("dir");
    let dir = tmp.path();
    for ext in ["png", "svg", "gif"] {
        // The directory itself, and a link to it.
        let target = dir.join(format!("fig.{ext}"));
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), b"mine").unwrap();
        let link = dir.join(format!("link.{ext}"));
        symlink(&target, &link).unwrap();
        for path in [&target, &link] {
            let err = draw(path).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("cannot write figure {}: ", path.display())), "{msg}");
            assert!(
                matches!(&err, PlotError::Write { source, .. }
                    if source.kind() == std::io::ErrorKind::IsADirectory),
                "{err:?}"
            );
        }
        assert!(is_link(&link));
        assert_eq!(names_in(&target), ["keep"]);
        assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"mine");
    }
    // Nothing was written beside them either.
    assert_eq!(
        names_in(dir),
        ["fig.gif", "fig.png", "fig.svg", "link.gif", "link.png", "link.svg"]
    );
}

/// A loop of links is an error naming the figure, not a hang.
#[test]
fn a_loop_of_links_is_an_error() {
    let tmp = scratch("loop");
    let dir = tmp.path();
    let (a, b) = (dir.join("a.png"), dir.join("b.png"));
    symlink(&b, &a).unwrap();
    symlink(&a, &b).unwrap();
    let msg = draw(&a).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("cannot write figure {}: ", a.display())), "{msg}");
    assert!(msg.contains("symbolic link"), "{msg}");
    assert!(is_link(&a) && is_link(&b));
}

/// A FIFO (made here, in a scratch folder) is written in place, directly and through a
/// link: it stays a FIFO and its reader gets the whole figure.
#[test]
fn a_fifo_gets_the_figure_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = scratch("fifo");
    let dir = tmp.path();
    let fifo = dir.join("pipe.png");
    match Command::new("mkfifo").arg(&fifo).status() {
        Ok(s) if s.success() => {}
        _ => {
            eprintln!("skipped: mkfifo is not available");
            return;
        }
    }
    let link = dir.join("link.png");
    symlink("pipe.png", &link).unwrap();
    for path in [&fifo, &link] {
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = fifo.clone();
        std::thread::spawn(move || tx.send(std::fs::read(reader)));
        draw(path).unwrap();
        // Checked before waiting for the reader: a FIFO renamed away leaves it blocked.
        let meta = std::fs::symlink_metadata(&fifo).unwrap();
        assert!(meta.file_type().is_fifo(), "{} was replaced", fifo.display());
        assert!(is_link(&link));
        let bytes = rx.recv_timeout(Duration::from_secs(60)).expect("the reader got nothing");
        let img = image::load_from_memory(&bytes.unwrap()).unwrap();
        assert_eq!((img.width(), img.height()), SIZE);
    }
    assert_eq!(names_in(dir), ["link.png", "pipe.png"]);
}

/// The reported case, end to end: `odeflow plot --out o` where o/density.png, o/flow.gif and
/// o/training.png are links to files kept elsewhere.
#[test]
fn odeflow_plot_writes_through_links_in_its_output_folder() {
    let tmp = scratch("cli");
    let dir = tmp.path();
    let (out, keep) = (dir.join("o"), dir.join("keep"));
    std::fs::create_dir(&out).unwrap();
    std::fs::create_dir(&keep).unwrap();
    let cfg = MlpConfig { dim: 2, hidden: vec![8], seed: 4, ..Default::default() };
    let cnf = Cnf::new(Mlp::<f64>::new(&cfg).unwrap(), 0.5, CnfConfig::default()).unwrap();
    let model = dir.join("model.safetensors");
    save_cnf(&model, &cnf).unwrap();
    let log = dir.join("train_log.csv");
    std::fs::write(
        &log,
        "iteration,loss,nll,test_nll,nfe_forward,nfe_backward,iter_seconds,elapsed_seconds,t_end\n\
         1,2.5,2.5,,20,30,0.1,0.1,0.5\n2,2.0,2.0,2.1,26,32,0.1,0.2,0.5\n",
    )
    .unwrap();
    let links = [("density.png", "d.png"), ("flow.gif", "f.gif"), ("training.png", "t.png")];
    for (link, file) in links {
        std::fs::write(keep.join(file), b"old").unwrap();
        symlink(format!("../keep/{file}"), out.join(link)).unwrap();
    }
    let output = Command::new(env!("CARGO_BIN_EXE_odeflow"))
        .arg("plot")
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .arg("--log")
        .arg(&log)
        .args(["--grid", "12", "--samples", "40"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for (link, file) in links {
        assert!(is_link(&out.join(link)), "{link} is no longer a link");
        let bytes = std::fs::read(keep.join(file)).unwrap();
        assert!(image::load_from_memory(&bytes).is_ok(), "{file} did not get the figure");
    }
    assert_eq!(names_in(&keep), ["d.png", "f.gif", "t.png"]);
}
