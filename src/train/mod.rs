//! Training: Adam, data, CNF maximum likelihood and neural-ODE fitting.
//!
//! - [`optim`]: [`Adam`] with PyTorch's coupled weight decay, [`LrSchedule`].
//! - [`data`]: FFJORD's toy sets ([`Toy`]), user data ([`Dataset`]), batches ([`DataSource`]).

pub mod data;
pub mod optim;
pub mod state;

pub use data::{DataSource, Dataset, Toy};
pub use optim::{Adam, AdamConfig, LrSchedule};
pub use state::TrainState;
