//! Files: NumPy arrays (data sets, peer checkpoints) and model files (safetensors).

mod checkpoint;
pub mod model;
mod npy;

pub use checkpoint::load_peer_checkpoint;
pub use model::{load_cnf, save_cnf, ModelFileError};
pub use npy::{read_npy, read_npy_matrix, write_atomically, write_npy, Array, NpyError, NpzReader};
