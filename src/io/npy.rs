//! NumPy `.npy` and `.npz` arrays of floats: data sets, and the peer checkpoints.
//!
//! Arrays are read as `f64` whatever their float width (`<f4` or `<f8`, C order), so that
//! a file written by NumPy in either precision loads the same way. Writes go to a temporary
//! file beside the target and are renamed into place, so an interrupted write never leaves a
//! half-written file where a good one was.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use npyz::WriterBuilder;

/// What can go wrong reading or writing an array file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not an `.npy`/`.npz` array of a float type this reader understands.
    #[error("{path}: not a readable float array ({reason})")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser objected to.
        reason: String,
    },
    /// An `.npz` archive lacks an array the caller asked for.
    #[error("{path}: no array named '{name}'")]
    MissingArray {
        /// The archive.
        path: PathBuf,
        /// The array's name (without `.npy`).
        name: String,
    },
}

/// A dense array read from a file: its shape and its values in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The shape, outermost axis first.
    pub shape: Vec<usize>,
    /// The values, row-major; `data.len()` is the product of `shape`.
    pub data: Vec<f64>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NpyError + '_ {
    move |source| NpyError::Io { path: path.to_path_buf(), source }
}

fn format_err(path: &Path, reason: impl ToString) -> NpyError {
    NpyError::Format { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Decodes one `.npy` stream into an [`Array`] of `f64`.
fn decode<R: Read>(path: &Path, npy: npyz::NpyFile<R>) -> Result<Array, NpyError> {
    if npy.order() != npyz::Order::C {
        return Err(format_err(path, "Fortran order is not supported"));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&s| s as usize).collect();
    let descr = npy.dtype().descr();
    let data: Vec<f64> = match descr.as_str() {
        "'<f8'" => npy.into_vec::<f64>().map_err(|e| format_err(path, e))?,
        "'<f4'" => npy
            .into_vec::<f32>()
            .map_err(|e| format_err(path, e))?
            .into_iter()
            .map(f64::from)
            .collect(),
        other => return Err(format_err(path, format!("dtype {other}, expected <f4 or <f8"))),
    };
    if data.len() != shape.iter().product::<usize>() {
        return Err(format_err(path, "data length does not match the shape"));
    }
    Ok(Array { shape, data })
}

/// Reads a `.npy` file of `f32` or `f64` values (as `f64`).
pub fn read_npy(path: impl AsRef<Path>) -> Result<Array, NpyError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(io_err(path))?;
    let npy = npyz::NpyFile::new(BufReader::new(file)).map_err(|e| format_err(path, e))?;
    decode(path, npy)
}

/// Reads a `.npy` file that must hold a 2-D array of `cols` columns; returns the rows flat.
///
/// Returns the number of rows and the sample-major buffer (`rows × cols`).
pub fn read_npy_matrix(path: impl AsRef<Path>, cols: usize) -> Result<(usize, Vec<f64>), NpyError> {
    let path = path.as_ref();
    let a = read_npy(path)?;
    match a.shape.as_slice() {
        [rows, c] if *c == cols => Ok((*rows, a.data)),
        s => Err(format_err(path, format!("shape {s:?}, expected [n, {cols}]"))),
    }
}

/// Opens an `.npz` archive for reading arrays by name.
pub struct NpzReader {
    path: PathBuf,
    archive: npyz::npz::NpzArchive<BufReader<File>>,
}

impl NpzReader {
    /// Opens the archive at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NpyError> {
        let path = path.as_ref().to_path_buf();
        let archive = npyz::npz::NpzArchive::open(&path).map_err(|e| format_err(&path, e))?;
        Ok(Self { path, archive })
    }

    /// The names of the arrays in the archive.
    pub fn names(&self) -> Vec<String> {
        self.archive.array_names().map(str::to_owned).collect()
    }

    /// Reads the array `name` (as `f64`).
    pub fn array(&mut self, name: &str) -> Result<Array, NpyError> {
        let npy =
            self.archive.by_name(name).map_err(|e| format_err(&self.path, e))?.ok_or_else(
                || NpyError::MissingArray { path: self.path.clone(), name: name.into() },
            )?;
        decode(&self.path, npy)
    }
}

/// Writes `data` (row-major, `shape`) as an `f64` `.npy` file, atomically.
pub fn write_npy(path: impl AsRef<Path>, shape: &[usize], data: &[f64]) -> Result<(), NpyError> {
    let path = path.as_ref();
    if data.len() != shape.iter().product::<usize>() {
        return Err(format_err(path, "data length does not match the shape"));
    }
    let shape: Vec<u64> = shape.iter().map(|&s| s as u64).collect();
    write_atomically(path, |w| {
        let mut writer =
            npyz::WriteOptions::new().default_dtype().shape(&shape).writer(w).begin_nd()?;
        writer.extend(data.iter().copied())?;
        writer.finish()
    })
}

/// Writes a file through `write` into a temporary sibling, syncs it, then renames it over
/// `path`: readers see either the old file or the whole new one.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), NpyError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| format_err(path, "not a file path"))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        write(&mut w)?;
        w.flush()?;
        w.get_ref().sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/peers").join(name)
    }

    #[test]
    fn reads_the_peer_test_points() {
        let (rows, data) = read_npy_matrix(peers("test10k_8gaussians.npy"), 2).unwrap();
        assert_eq!(rows, 10_000);
        assert_eq!(data.len(), 20_000);
        // 8gaussians: centres on a circle of radius 4/1.414, std 0.5/1.414.
        let r_mean = data.chunks(2).map(|p| p[0].hypot(p[1])).sum::<f64>() / rows as f64;
        assert!((r_mean - 4.0 / 1.414).abs() < 0.05, "mean radius {r_mean}");
    }

    #[test]
    fn reads_the_peer_checkpoint() {
        let mut npz = NpzReader::open(peers("init_toy.npz")).unwrap();
        assert_eq!(npz.names().len(), 20);
        let w = npz.array("1_W").unwrap();
        assert_eq!(w.shape, vec![64, 64]);
        // PyTorch init: |w| ≤ 1/sqrt(fan_in) = 1/8.
        assert!(w.data.iter().all(|v| v.abs() <= 0.125));
        assert!(matches!(npz.array("9_W"), Err(NpyError::MissingArray { .. })));
    }

    #[test]
    fn round_trip_and_bad_files() {
        let dir = std::env::temp_dir().join(format!("odeflow-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        let data = [1.0, -2.5, 3.25, f64::MIN_POSITIVE, 1e300, 0.0];
        write_npy(&p, &[3, 2], &data).unwrap();
        let a = read_npy(&p).unwrap();
        assert_eq!(a.shape, vec![3, 2]);
        assert_eq!(
            a.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            data.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(matches!(read_npy_matrix(&p, 3), Err(NpyError::Format { .. })));
        // A truncated file is an error, never a panic.
        let bytes = std::fs::read(&p).unwrap();
        let q = dir.join("truncated.npy");
        std::fs::write(&q, &bytes[..bytes.len() - 5]).unwrap();
        assert!(read_npy(&q).is_err());
        std::fs::write(&q, b"not an array").unwrap();
        assert!(matches!(read_npy(&q), Err(NpyError::Format { .. })));
        assert!(matches!(read_npy(dir.join("missing.npy")), Err(NpyError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
