//! Training: Adam, data, CNF maximum likelihood and neural-ODE fitting.
//!
//! - [`optim`]: [`Adam`] with PyTorch's coupled weight decay, [`LrSchedule`].
//! - [`data`]: FFJORD's toy sets ([`Toy`]), user data ([`Dataset`]), batches ([`DataSource`]).
//! - [`cnf`]: [`CnfTrainer`], maximum likelihood for a [`Cnf`](crate::cnf::Cnf).
//! - [`node`]: [`NodeFitter`](node::NodeFitter), a neural ODE fitted to one observed trajectory.
//! - [`state`]: [`TrainState`], the resumable state and its file.

pub mod cnf;
pub mod data;
pub mod node;
pub mod optim;
pub mod state;

pub use cnf::{CnfTrainConfig, CnfTrainer, Progress, RunSummary};
pub use data::{DataSource, Dataset, Toy};
pub use optim::{Adam, AdamConfig, LrSchedule};
pub use state::TrainState;
