//! Files: points as CSV, NumPy arrays (data sets, peer checkpoints) and model files (safetensors).

mod checkpoint;
mod csv;
pub mod model;
mod npy;

pub use checkpoint::load_peer_checkpoint;
pub use csv::{read_csv, write_csv, CsvError, Points};
pub use model::{load_cnf, load_flow, load_model, save_cnf, save_flow, Model, ModelFileError};
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
        let a = read_npy(path)?;
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
    } else {
        Ok(read_csv(path, cols)?)
    }
}
