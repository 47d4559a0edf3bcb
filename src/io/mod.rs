//! Files: NumPy arrays (data sets, peer checkpoints) and, later, model files.

mod checkpoint;
mod npy;

pub use checkpoint::load_peer_checkpoint;
pub use npy::{read_npy, read_npy_matrix, write_atomically, write_npy, Array, NpyError, NpzReader};
