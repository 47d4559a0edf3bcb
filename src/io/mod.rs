//! Files: points as CSV, NumPy arrays (data sets, peer checkpoints) and model files (safetensors).

mod checkpoint;
mod csv;
pub mod model;
mod npy;

pub use checkpoint::load_peer_checkpoint;
pub use csv::{read_csv, write_csv, write_csv_to, CsvError, Points};
pub use model::{
    load_cnf, load_flow, load_model, read_training_point, save_cnf, save_cnf_at, save_flow,
    save_flow_at, Model, ModelFileError, TrainingPoint,
};
pub use npy::{
    read_npy, read_npy_matrix, remove_stale_temporaries, write_atomically, write_npy, Array,
    FileOp, NpyError, NpzReader,
};

// The path resolution of `write_atomically`, shared with the figures (src/plot), which
// write through a temporary file of their own.
pub(crate) use npy::{create_temp, folder_of, replace_via, resolve_for_write, WriteTarget};

/// Reads points from a `.npy` file (2-D, float) or otherwise a CSV file; with
/// `cols = Some(d)` the points must have dimension d.
pub fn read_points(
    path: impl AsRef<std::path::Path>,
    cols: Option<usize>,
) -> Result<Points, crate::Error> {
    let path = path.as_ref();
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")) {
        npy_points(path, read_npy(path)?, cols)
    } else {
        Ok(read_csv(path, cols)?)
    }
}

/// The first bytes of every `.npy` file (NumPy's format: `\x93NUMPY`).
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Points from the bytes of a file or stream: a `.npy` array (2-D, float) if they begin
/// with NumPy's magic string, otherwise CSV text (as [`read_points`] reads it). `source`
/// names the bytes in errors (the command line reads standard input through this).
///
/// ```
/// # use std::path::Path;
/// let p = odeflow::io::parse_points(b"x,y\n1,2\n3,4\n", Path::new("stdin"), Some(2))?;
/// assert_eq!((p.rows, p.cols, p.data), (2, 2, vec![1.0, 2.0, 3.0, 4.0]));
/// # Ok::<(), odeflow::Error>(())
/// ```
pub fn parse_points(
    bytes: &[u8],
    source: &std::path::Path,
    cols: Option<usize>,
) -> Result<Points, crate::Error> {
    if bytes.starts_with(NPY_MAGIC) {
        return npy_points(source, npy::decode_named(source, bytes)?, cols);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| CsvError::NotText { path: source.into(), reason: e.to_string() })?;
    Ok(csv::parse_csv(source, text, cols)?)
}

/// The points of a decoded `.npy` array: 2-D, `cols` columns if given, finite.
fn npy_points(
    path: &std::path::Path,
    a: Array,
    cols: Option<usize>,
) -> Result<Points, crate::Error> {
    let (rows, c) = match a.shape.as_slice() {
        [r, c] => (*r, *c),
        s => {
            return Err(NpyError::Format {
                path: path.into(),
                reason: format!("shape {s:?}, expected [n, d]"),
            }
            .into())
        }
    };
    if let Some(d) = cols.filter(|&d| d != c) {
        return Err(NpyError::Format {
            path: path.into(),
            reason: format!("{c} columns, expected {d}"),
        }
        .into());
    }
    if let Some(i) = a.data.iter().position(|v| !v.is_finite()) {
        return Err(crate::Error::NonFiniteInput { index: i, point: i / c.max(1) });
    }
    Ok(Points { rows, cols: c, data: a.data })
}
