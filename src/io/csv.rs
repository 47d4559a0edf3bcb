//! Points as CSV: one point per line, comma-separated, an optional header line.
//!
//! A leading UTF-8 byte-order mark is skipped, and so are blank lines and lines starting
//! with `#`. The first line is a header when none of its fields is a number (a header names
//! columns); a first line with some numeric fields and some not is an error naming the
//! field, as on any other line, so a typo in the first data row is not taken for a header.
//! Every row must have the same number of columns, and every value must be finite: a bad
//! file gives an error naming the line and column (and, for a field holding a tab or a
//! semicolon, a reminder that fields are separated by commas).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::io::{write_atomically, NpyError};

/// What can be wrong with a CSV file of points.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsvError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A value is not a number. The message adds a hint that fields are separated by
    /// commas when `value` holds a tab or a semicolon (a TSV or semicolon-separated file).
    #[error("{path}:{line}: column {column}: {value:?} is not a number{}", separator_hint(.value))]
    NotANumber {
        /// The file.
        path: PathBuf,
        /// Line number (1-based).
        line: usize,
        /// Column number (1-based).
        column: usize,
        /// The text found.
        value: String,
    },
    /// A value is NaN or infinite.
    #[error("{path}:{line}: column {column}: non-finite value {value}")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// Line number (1-based).
        line: usize,
        /// Column number (1-based).
        column: usize,
        /// The value.
        value: f64,
    },
    /// A row has another number of columns than the first.
    #[error("{path}:{line}: {found} columns, expected {expected}")]
    Columns {
        /// The file.
        path: PathBuf,
        /// Line number (1-based).
        line: usize,
        /// Columns expected (the first row's, or the caller's).
        expected: usize,
        /// Columns found.
        found: usize,
    },
    /// The bytes are not UTF-8 text (nor a `.npy` array, where both are accepted).
    #[error("{path}: neither a .npy array nor UTF-8 CSV text ({reason})")]
    NotText {
        /// The file, or the stream's name.
        path: PathBuf,
        /// Where the UTF-8 decoding failed.
        reason: String,
    },
    /// The file holds no data rows.
    #[error("{path}: no data rows")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The hint for a field that holds another separator.
fn separator_hint(value: &str) -> &'static str {
    if value.contains(['\t', ';']) {
        " (fields are separated by commas, not tabs or semicolons)"
    } else {
        ""
    }
}

/// Whether a field of the first line is a number, or numbers joined by tabs or semicolons
/// (a headerless file with another separator: an error on line 1, not a header).
fn numeric(field: &str) -> bool {
    field.parse::<f64>().is_ok()
        || (field.contains(['\t', ';'])
            && field.split(['\t', ';']).all(|p| p.trim().parse::<f64>().is_ok()))
}

/// Points read from a file: `rows × cols`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Points {
    /// Number of points.
    pub rows: usize,
    /// Dimension of a point.
    pub cols: usize,
    /// The values, point after point.
    pub data: Vec<f64>,
}

/// Reads a CSV file of points; with `cols = Some(d)` every row must have d columns.
pub fn read_csv(path: impl AsRef<Path>, cols: Option<usize>) -> Result<Points, CsvError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .map_err(|source| CsvError::Io { path: path.into(), source })?;
    parse_csv(path, &text, cols)
}

pub(crate) fn parse_csv(path: &Path, text: &str, cols: Option<usize>) -> Result<Points, CsvError> {
    let mut data = Vec::new();
    let mut width = cols;
    let mut rows = 0;
    let mut first = true;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if std::mem::take(&mut first) && !fields.iter().any(|f| numeric(f)) {
            continue; // a header
        }
        let parsed: Result<Vec<f64>, usize> =
            fields.iter().enumerate().map(|(j, f)| f.parse::<f64>().map_err(|_| j)).collect();
        let values = match parsed {
            Ok(v) => v,
            Err(j) => {
                return Err(CsvError::NotANumber {
                    path: path.into(),
                    line: i + 1,
                    column: j + 1,
                    value: fields[j].into(),
                })
            }
        };
        let expected = *width.get_or_insert(values.len());
        if values.len() != expected {
            return Err(CsvError::Columns {
                path: path.into(),
                line: i + 1,
                expected,
                found: values.len(),
            });
        }
        if let Some(j) = values.iter().position(|v| !v.is_finite()) {
            return Err(CsvError::NonFinite {
                path: path.into(),
                line: i + 1,
                column: j + 1,
                value: values[j],
            });
        }
        data.extend(values);
        rows += 1;
    }
    match width {
        Some(cols) if rows > 0 => Ok(Points { rows, cols, data }),
        _ => Err(CsvError::Empty { path: path.into() }),
    }
}

/// Writes `data` (`rows × header.len()`, row-major) as CSV with a header line, atomically.
/// Values are written in Rust's shortest round-trip form, so reading gives them back exactly.
/// Data that is not a whole number of rows is an error, and the file is left as it was.
pub fn write_csv(path: impl AsRef<Path>, header: &[&str], data: &[f64]) -> Result<(), NpyError> {
    write_atomically(path.as_ref(), |w| write_csv_to(w, header, data))
}

/// Writes `data` as [`write_csv`] does, to any writer (standard output, a buffer). Data that
/// is not a whole number of rows is an error ([`std::io::ErrorKind::InvalidInput`]), before
/// anything is written.
///
/// ```
/// let mut out = Vec::new();
/// odeflow::io::write_csv_to(&mut out, &["x", "y"], &[1.0, 0.1, -2.5, 3e-20])?;
/// assert_eq!(String::from_utf8(out).unwrap(), "x,y\n1,0.1\n-2.5,0.00000000000000000003\n");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn write_csv_to(w: &mut impl Write, header: &[&str], data: &[f64]) -> std::io::Result<()> {
    let cols = header.len().max(1);
    if !data.len().is_multiple_of(cols) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} values are not whole rows of {cols} columns", data.len()),
        ));
    }
    writeln!(w, "{}", header.join(","))?;
    for row in data.chunks(cols) {
        for (j, v) in row.iter().enumerate() {
            if j > 0 {
                w.write_all(b",")?;
            }
            write!(w, "{v}")?;
        }
        w.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, cols: Option<usize>) -> Result<Points, CsvError> {
        parse_csv(Path::new("t.csv"), text, cols)
    }

    #[test]
    fn ragged_data_is_not_written() {
        let mut out = Vec::new();
        let err = write_csv_to(&mut out, &["x", "y"], &[1.0, 2.0, 3.0]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("3 values are not whole rows of 2 columns"), "{err}");
        assert!(out.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "x,y\n1,2\n").unwrap();
        assert!(write_csv(&path, &["x", "y"], &[1.0, 2.0, 3.0]).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x,y\n1,2\n");
    }

    #[test]
    fn parses_with_and_without_header() {
        let p = parse("x,y\n1,2\n# note\n\n3.5, -4e-3\n", None).unwrap();
        assert_eq!((p.rows, p.cols), (2, 2));
        assert_eq!(
            p.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            [1.0, 2.0, 3.5, -4e-3].iter().map(|v: &f64| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(parse("1,2,3\n", None).unwrap().cols, 3);
    }

    #[test]
    fn bad_files_name_line_and_column() {
        assert!(matches!(
            parse("1,2\n3\n", None),
            Err(CsvError::Columns { line: 2, expected: 2, found: 1, .. })
        ));
        assert!(matches!(parse("1,2,3\n", Some(2)), Err(CsvError::Columns { line: 1, .. })));
        assert!(matches!(
            parse("1,2\n3,NaN\n", None),
            Err(CsvError::NonFinite { line: 2, column: 2, .. })
        ));
        assert!(matches!(
            parse("1,2\n3,inf\n", None),
            Err(CsvError::NonFinite { line: 2, column: 2, .. })
        ));
        assert!(matches!(
            parse("a,b\n1,x\n", None),
            Err(CsvError::NotANumber { line: 2, column: 2, .. })
        ));
        assert!(matches!(parse("x,y\n", None), Err(CsvError::Empty { .. })));
        let msg = parse("1,2\n3,NaN\n", None).unwrap_err().to_string();
        assert!(msg.contains("t.csv:2") && msg.contains("column 2"), "{msg}");
    }

    /// A UTF-8 byte-order mark is not part of the first field: a headerless file keeps
    /// its first row (it used to be taken for a header and dropped).
    #[test]
    fn a_byte_order_mark_is_skipped() {
        let p = parse("\u{feff}1,2\n3,4\n", None).unwrap();
        assert_eq!((p.rows, p.cols), (2, 2));
        assert_eq!(p.data, [1.0, 2.0, 3.0, 4.0]);
        let p = parse("\u{feff}x,y\n3,4\n", None).unwrap();
        assert_eq!((p.rows, p.data), (1, vec![3.0, 4.0]));
        // Through a file, as `printf '\xef\xbb\xbf1,2\n3,4\n'` writes it.
        let tmp = tempfile::Builder::new().prefix("odeflow-csv-bom-").tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("bom.csv");
        std::fs::write(&path, b"\xef\xbb\xbf1,2\n3,4\n").unwrap();
        assert_eq!(read_csv(&path, Some(2)).unwrap().data, [1.0, 2.0, 3.0, 4.0]);
    }

    /// The first line is a header only when none of its fields is a number: a typo in the
    /// first data row is an error naming line 1 and the field, not a silently dropped row.
    #[test]
    fn a_first_line_mixing_numbers_and_text_is_an_error() {
        let err = parse("1.0,2..0\n3,4\n5,6\n", None).unwrap_err();
        let bad = matches!(&err, CsvError::NotANumber { line: 1, column: 2, value, .. }
            if value == "2..0");
        assert!(bad, "{err}");
        assert!(err.to_string().starts_with("t.csv:1: column 2: \"2..0\""), "{err}");
        assert!(matches!(
            parse("x,1\n3,4\n", None),
            Err(CsvError::NotANumber { line: 1, column: 1, .. })
        ));
        // After comments and blank lines, the first line is still the first non-comment one.
        assert!(matches!(
            parse("# points\n\n1,y\n3,4\n", None),
            Err(CsvError::NotANumber { line: 3, column: 2, .. })
        ));
        assert_eq!(parse("# points\n\nx,y\n3,4\n", None).unwrap().rows, 1);
        // A header of names only is still a header; a second one is a bad data row.
        assert_eq!(parse("x0, x1\n1,2\n", None).unwrap().data, [1.0, 2.0]);
        assert!(matches!(
            parse("x,y\nx,y\n1,2\n", None),
            Err(CsvError::NotANumber { line: 2, column: 1, .. })
        ));
    }

    /// A tab- or semicolon-separated file is refused with a hint that fields are separated
    /// by commas; a headerless one on line 1, not after taking its first row for a header.
    #[test]
    fn other_separators_get_a_hint() {
        let hint = "fields are separated by commas";
        for (text, line) in [
            ("1\t2\n3\t4\n", 1),
            ("x\ty\n1\t2\n", 2),
            ("1;2\n3;4\n", 1),
            ("x;y\n1;2\n", 2),
            ("1,5;2,5\n", 1),
        ] {
            let err = parse(text, None).unwrap_err();
            assert!(matches!(err, CsvError::NotANumber { line: l, .. } if l == line), "{err}");
            assert!(err.to_string().contains(hint), "{text:?}: {err}");
        }
        let err = parse("x,y\n1,abc\n", None).unwrap_err().to_string();
        assert!(!err.contains(hint), "{err}");
    }

    #[test]
    fn round_trip_is_exact() {
        let tmp = tempfile::Builder::new().prefix("odeflow-csv-").tempdir().unwrap();
        let dir = tmp.path();
        let p = dir.join("a.csv");
        let data = [0.1, -1.0 / 3.0, 1e-300, 12345.678];
        write_csv(&p, &["x", "y"], &data).unwrap();
        let back = read_csv(&p, Some(2)).unwrap();
        assert_eq!(
            back.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            data.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}
