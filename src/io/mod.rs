//! Files: NumPy arrays (data sets, checkpoints) and, later, model files.

mod npy;

pub use npy::{read_npy, read_npy_matrix, write_atomically, write_npy, Array, NpyError, NpzReader};
