//! Training: Adam, data, CNF maximum likelihood and neural-ODE fitting.
//!
//! - [`optim`]: [`Adam`] with PyTorch's coupled weight decay, [`LrSchedule`].
//! - [`data`]: FFJORD's toy sets ([`Toy`]), user data ([`Dataset`]), batches ([`DataSource`]).
//! - [`cnf`]: [`CnfTrainer`], maximum likelihood for a [`Cnf`](crate::cnf::Cnf):
//!   L = −(1/B) Σ_b log p(x_b), gradients by the adjoint, optionally a learnable T = τ² and
//!   RNODE's regularizers λ_K ∫‖f‖² dt and λ_J ∫‖J ε‖² dt (integrated along the solve).
//! - [`flow`]: [`FlowTrainer`], maximum likelihood for a discrete
//!   [`FlowModel`](crate::flows::FlowModel) with the same data, optimizer and callback.
//! - [`node`]: [`NodeFitter`](node::NodeFitter), a neural ODE fitted to one observed trajectory.
//! - [`state`]: [`TrainState`], the resumable state and its file.
//!
//! Reproducibility: every random draw (toy batches, Hutchinson noise, segment starts) comes
//! from one ChaCha8 generator seeded by the configuration and saved in the state; the
//! fields reduce over fixed batch chunks, so a seed gives bit-identical parameters on any
//! number of threads, and a run resumed from a saved state continues bit for bit.
//!
//! A typical loop, stopped by the callback (as the command line does on Ctrl-C) and resumed:
//!
//! ```
//! use std::ops::ControlFlow;
//! use odeflow::cnf::{Cnf, CnfConfig};
//! use odeflow::field::{Mlp, MlpConfig};
//! use odeflow::train::{CnfTrainConfig, CnfTrainer, DataSource, Toy};
//!
//! let make = || -> Result<_, odeflow::Error> {
//!     let mlp = Mlp::<f64>::new(&MlpConfig { hidden: vec![8], ..Default::default() })?;
//!     let cnf = Cnf::new(mlp, 0.5, CnfConfig { rtol: 1e-4, atol: 1e-4, ..Default::default() })?;
//!     let cfg = CnfTrainConfig { iterations: 4, batch_size: 16, test_every: 0, ..Default::default() };
//!     CnfTrainer::new(cnf, DataSource::Toy(Toy::Moons), None, cfg)
//! };
//! let mut a = make()?;
//! let summary = a.run(|p| if p.iteration == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })?;
//! assert!(summary.stopped && summary.iteration == 2);
//! let state = a.state(); // what `save_state` writes
//!
//! let fresh = make()?;
//! let cfg = fresh.config().clone();
//! let mut b = CnfTrainer::resume(fresh.into_cnf(), DataSource::Toy(Toy::Moons), None, cfg, state)?;
//! b.run(|_| ControlFlow::Continue(()))?;
//! let mut c = make()?;
//! c.run(|_| ControlFlow::Continue(()))?;
//! assert_eq!(b.state(), c.state()); // interrupted + resumed == uninterrupted, bit for bit
//! # Ok::<(), odeflow::Error>(())
//! ```

pub mod cnf;
pub mod data;
pub mod flow;
pub mod node;
pub mod optim;
mod reg;
pub mod state;

pub use cnf::{CnfTrainConfig, CnfTrainer, Progress, RunSummary};
pub use data::{DataSource, Dataset, Toy};
pub use flow::{train_flow, FlowTrainConfig, FlowTrainer};
pub use optim::{Adam, AdamConfig, LrSchedule};
pub use state::TrainState;

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<X: Send + Sync>() {}
    #[test]
    fn public_types_are_send_sync() {
        use crate::field::Mlp;
        assert_send_sync::<super::CnfTrainer<f64, Mlp<f64>>>();
        assert_send_sync::<super::CnfTrainer<f32, Mlp<f32>>>();
        assert_send_sync::<super::node::NodeFitter<f64, Mlp<f64>>>();
        assert_send_sync::<super::TrainState<f64>>();
        assert_send_sync::<super::Adam<f32>>();
        assert_send_sync::<super::DataSource<f64>>();
        assert_send_sync::<super::CnfTrainConfig<f64>>();
        assert_send_sync::<super::Progress>();
    }
}
