//! What the command line accepts: the parsers of its counts, numbers and methods, and the
//! checks of its inputs and outputs (paths, formats, sizes), each with a message naming the
//! flag or the file.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use odeflow::io::{parse_points, read_points, write_csv, write_csv_to, write_npy, Points};
use odeflow::solvers::Method;

/// A count of at least 1 (`-n`, `--samples`, `--blocks`, `--hidden`, …), checked as the
/// command line is parsed.
pub(crate) fn count(s: &str) -> Result<usize, String> {
    count_at_least(s, 1)
}

/// `--repeats`: 1 to 1000 (each repeat is a whole solve).
pub(crate) fn repeats(s: &str) -> Result<usize, String> {
    let n = count(s)?;
    if n <= 1000 {
        Ok(n)
    } else {
        Err("must be at most 1000".into())
    }
}

/// A count of at least 2 (`--grid`).
pub(crate) fn count2(s: &str) -> Result<usize, String> {
    count_at_least(s, 2)
}

fn count_at_least(s: &str, min: usize) -> Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|e| format!("{e}"))?;
    if n >= min {
        Ok(n)
    } else {
        Err(format!("must be at least {min}"))
    }
}

/// A finite number > 0 (`--range`, `--tols`, the overrides `--rtol`, `--atol`).
pub(crate) fn positive(s: &str) -> Result<f64, String> {
    let x: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if x.is_finite() && x > 0.0 {
        Ok(x)
    } else {
        Err(format!("{x} is not a finite number > 0"))
    }
}

/// A relative tolerance: a finite number no smaller than f64's machine epsilon (the solvers
/// refuse a smaller one: no solution is that accurate), named in the parse error rather than
/// after a model is loaded or a benchmark has run.
pub(crate) fn relative_tolerance(s: &str) -> Result<f64, String> {
    let x = positive(s)?;
    if x < f64::EPSILON {
        return Err(format!(
            "below the precision of f64 (machine epsilon {:.1e}): no solution is that accurate",
            f64::EPSILON
        ));
    }
    Ok(x)
}

/// A method with an error estimate: the command line's solves choose their own steps, and
/// it has no option for a fixed step size.
pub(crate) fn adaptive_method(s: &str) -> Result<Method, String> {
    let m: Method = s.parse().map_err(|e| format!("{e}"))?;
    if m.is_adaptive() {
        Ok(m)
    } else {
        Err(format!(
            "{} is a fixed-step method; the command line's solves take an adaptive one \
             (bosh3, dopri5, tsit5, dop853)",
            m.name()
        ))
    }
}

/// Whether `path` is `-`, standard input for an input and standard output for an output
/// (the usual convention of command-line tools).
pub(crate) fn is_std_stream(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Points read from `path` (CSV or .npy), with the path in any error that lacks it (a
/// non-finite value, a wrong number of columns). `-` reads standard input, CSV or .npy (told
/// apart by NumPy's magic bytes); a terminal there is refused rather than waited on.
pub(crate) fn points_from(
    path: &Path,
    cols: Option<usize>,
) -> Result<Points, Box<dyn std::error::Error>> {
    if is_std_stream(path) {
        return points_from_stdin(cols);
    }
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz")) {
        return Err(format!(
            "{}: an .npz archive; give the points as one .npy array [n, d] or a CSV file",
            path.display()
        )
        .into());
    }
    let points = read_points(path, cols).map_err(|e| with_path(path, e))?;
    if points.rows == 0 || points.cols == 0 {
        return Err(
            format!("{}: no points ({} × {})", path.display(), points.rows, points.cols).into()
        );
    }
    Ok(points)
}

/// The points piped into standard input (see [`points_from`]).
fn points_from_stdin(cols: Option<usize>) -> Result<Points, Box<dyn std::error::Error>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err("-: standard input is a terminal; pipe or redirect the points into it \
                    (`… < points.csv`), or give a file"
            .into());
    }
    let mut bytes = Vec::new();
    stdin.lock().read_to_end(&mut bytes).map_err(|e| format!("cannot read standard input: {e}"))?;
    let name = Path::new("standard input");
    let points = parse_points(&bytes, name, cols).map_err(|e| with_path(name, e))?;
    if points.rows == 0 || points.cols == 0 {
        return Err(format!("standard input: no points ({} × {})", points.rows, points.cols).into());
    }
    Ok(points)
}

/// Writes a table of results to `output` (`rows × header.len()`, or `shape` for `.npy`) in
/// the format of [`table_format`], atomically; `-` writes CSV to standard output.
pub(crate) fn write_table(
    output: &Path,
    header: &[&str],
    shape: &[usize],
    data: &[f64],
) -> Result<(), Box<dyn std::error::Error>> {
    if is_std_stream(output) {
        let mut w = std::io::BufWriter::new(std::io::stdout().lock());
        write_csv_to(&mut w, header, data)
            .and_then(|()| w.flush())
            .map_err(|e| format!("cannot write to standard output: {e}"))?;
        return Ok(());
    }
    match table_format(output)? {
        TableFormat::Npy => write_npy(output, shape, data)?,
        TableFormat::Csv => write_csv(output, header, data)?,
    }
    Ok(())
}

/// `e` with `path` in front, unless its message already names it.
pub(crate) fn with_path(path: &Path, e: impl std::fmt::Display) -> Box<dyn std::error::Error> {
    let text = e.to_string();
    let name = path.display().to_string();
    if text.contains(&name) {
        text.into()
    } else {
        format!("{name}: {text}").into()
    }
}

/// Refuses an output path that is the input (it would be overwritten by the results).
pub(crate) fn distinct_output(input: &Path, output: &Path) -> Result<(), String> {
    if is_std_stream(input) || is_std_stream(output) {
        return Ok(()); // standard input and output are streams, not the other's file
    }
    let same = match (std::fs::canonicalize(input), std::fs::canonicalize(output)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        Err(format!("--output {} is the input file; write the results elsewhere", output.display()))
    } else {
        Ok(())
    }
}

/// Refuses an output file whose folder does not exist, before any work is done.
pub(crate) fn output_folder_exists(output: &Path) -> Result<(), String> {
    match output.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => Err(format!(
            "--output {}: the folder {} does not exist",
            output.display(),
            dir.display()
        )),
        _ => Ok(()),
    }
}

/// A loss or NLL for a status line: four decimals, or scientific notation when huge.
pub(crate) fn loss_text(x: f64) -> String {
    if x.abs() < 1e6 {
        format!("{x:.4}")
    } else {
        format!("{x:.4e}")
    }
}

/// The memory the system reports available (Linux's `MemAvailable`), if known.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Bytes per point of a solve in dimension `d` carrying ℓ: the state and about 16 buffers of
/// its size (the stages, the error estimate, the dense output, the results), a lower bound.
pub(crate) fn solve_bytes(d: usize) -> usize {
    16 * 8 * (d + 1)
}

/// Refuses `flag n` when `n` points of `bytes_per_point` each cannot be held: the size
/// overflows, or exceeds the memory available. A clear error instead of an allocation
/// failure that aborts the process (with no check where the available memory is unknown).
pub(crate) fn check_memory(flag: &str, n: usize, bytes_per_point: usize) -> Result<(), String> {
    let gib = |b: f64| b / (1u64 << 30) as f64;
    let Some(need) = n.checked_mul(bytes_per_point) else {
        return Err(format!("{flag} {n}: too large (its buffers' size overflows)"));
    };
    match available_memory() {
        Some(avail) if need as u64 > avail => Err(format!(
            "{flag} {n}: needs at least {:.1} GiB of memory, {:.1} GiB available",
            gib(need as f64),
            gib(avail as f64)
        )),
        _ => Ok(()),
    }
}

/// The text of a training log of `odeflow train` (an empty file counts as one with no rows).
pub(crate) fn training_log(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the training log {}: {e}", path.display()))?;
    if text.is_empty() || text.starts_with("iteration,loss") {
        Ok(text)
    } else {
        Err(format!(
            "{}: not a training log of odeflow train (no iteration,loss header)",
            path.display()
        ))
    }
}

/// Prints a command's closing status line, `{what}; wrote {output}`: on stdout, or on
/// stderr where the results went to stdout (`--output /dev/stdout`), so that they stay the
/// only thing there.
pub(crate) fn status(output: &Path, what: &str) {
    if is_std_stream(output) {
        eprintln!("{what}; wrote standard output");
        return;
    }
    let line = format!("{what}; wrote {}", output.display());
    if matches!(output.to_str(), Some("/dev/stdout" | "/dev/fd/1" | "/proc/self/fd/1")) {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// Creates the output folder `dir` (and its parents), naming it in an error.
pub(crate) fn create_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the output folder {}: {e}", dir.display()))
}

/// How a table of results is written, by the output path's extension.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum TableFormat {
    /// `.npy`.
    Npy,
    /// CSV: `.csv`, `.txt` or no extension (`-`, `/dev/stdout`).
    Csv,
}

/// The format of an output path; another extension is refused rather than written as CSV
/// under a misleading name.
pub(crate) fn table_format(path: &Path) -> Result<TableFormat, String> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("npy") => Ok(TableFormat::Npy),
        None | Some("csv") | Some("txt") => Ok(TableFormat::Csv),
        Some(other) => Err(format!(
            "{}: unknown output format .{other} (write .csv, .txt or .npy)",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_numbers_and_methods() {
        assert_eq!(count("3"), Ok(3));
        assert!(count("0").unwrap_err().contains("at least 1"));
        assert!(count2("1").unwrap_err().contains("at least 2"));
        assert!(count("-1").is_err() && count("x").is_err());
        assert_eq!(repeats("1000"), Ok(1000));
        assert!(repeats("1001").unwrap_err().contains("at most 1000"));
        assert_eq!(positive(" 0.5 "), Ok(0.5));
        for bad in ["0", "-1", "nan", "inf", "x"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert_eq!(adaptive_method("Tsit5"), Ok(Method::Tsit5));
        assert!(adaptive_method("rk4").unwrap_err().contains("fixed-step"));
    }

    #[test]
    fn formats_sizes_and_paths() {
        let f = |p: &str| table_format(Path::new(p));
        assert!(f("a.NPY") == Ok(TableFormat::Npy) && f("a.csv") == Ok(TableFormat::Csv));
        assert!(f("a.txt") == Ok(TableFormat::Csv) && f("/dev/stdout") == Ok(TableFormat::Csv));
        assert!(f("a.npz").unwrap_err().contains(".npz"));
        assert!(check_memory("-n", usize::MAX, 16).unwrap_err().contains("overflows"));
        assert_eq!(check_memory("-n", 10, 16), Ok(()));
        assert_eq!(loss_text(2.71234), "2.7123");
        assert_eq!(loss_text(1.5e63), "1.5000e63");
        let e = with_path(Path::new("d/x.csv"), "non-finite value").to_string();
        assert_eq!(e, "d/x.csv: non-finite value");
        assert_eq!(with_path(Path::new("x.csv"), "x.csv: bad").to_string(), "x.csv: bad");
        let tmp = tempfile::Builder::new().prefix("odeflow-inputs-").tempdir().unwrap();
        let dir = tmp.path();
        let file = dir.join("p.csv");
        std::fs::write(&file, "1,2\n").unwrap();
        let same = dir.join(".").join("p.csv");
        assert!(distinct_output(&file, &same).unwrap_err().contains("is the input"));
        assert_eq!(distinct_output(&file, &dir.join("q.csv")), Ok(()));
        assert!(output_folder_exists(&dir.join("no/q.csv")).unwrap_err().contains("no"));
        assert_eq!(output_folder_exists(Path::new("q.csv")), Ok(()));
    }
}
