//! Sparse variational dropout training (Molchanov, Ashukha, Vetrov, ICML 2017) on ndarray, `f32`.
//!
//! Start with [`TrainConfig`] and [`Trainer`]; the result is a [`Network`] of
//! [`TrainedLayer`]s holding `theta` and `log_sigma2` for export.
//!
//! ```no_run
//! use std::path::Path;
//! use tinybayes_host::data::DataSet;
//! use tinybayes_host::idx::load_dataset;
//! use tinybayes_host::train::{Arch, TrainConfig, TrainEvent, Trainer};
//!
//! let dir = Path::new("/work/shared/data/mnist");
//! let data = load_dataset(
//!     &dir.join("train-images-idx3-ubyte.gz"),
//!     &dir.join("train-labels-idx1-ubyte.gz"),
//! )?;
//! // Any data file works too: `tinybayes_host::data::load(path, &keys, None)?.training_set(None)?`.
//! let data = DataSet::from(data);
//! let config = TrainConfig { epochs: 10, ..TrainConfig::for_arch(Arch::Lenet300) };
//! let mut trainer = Trainer::new(config, &data)?;
//! trainer.run(Some(Path::new("runs/lenet300")), |event| {
//!     if let TrainEvent::Epoch(r) = event {
//!         println!("epoch {} val {:?} sparsity {:.3}", r.epoch, r.val_accuracy, r.sparsity);
//!     }
//! })?;
//! let network = trainer.into_network();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Modules: [`alloc`] (allocator tuning), [`fastmath`] (vectorisable exp/ln), [`tensor`] (scalar trait, im2col, parallel helpers), [`vd`] (log alpha, KL),
//! `layers` (forward/backward kernels), [`conv`] (strided, padded convolutions, global average
//! pooling), [`loss`] (softmax cross-entropy), [`exits`] (depth prior and early-exit
//! objectives), [`network`] (the exportable layer-sequence network and whole-stack
//! forward/backward), [`resnet`] (the exportable early-exit ResNet and its forward/backward),
//! [`model`] (either of the two, as the trainer sees them), [`arch`] (LeNet-300-100,
//! LeNet-5-Caffe, ResNet-EE), [`optim`] (Adam, schedules), [`config`], [`checkpoint`],
//! [`trainer`].
//!
//! A `resnet-ee` run is read back with [`Trainer::load_resnet`] (or [`Trainer::load_model`]),
//! giving a [`ResNetEe`] with every layer's `theta`, `log_sigma2`, `bias`, shape, stride and
//! padding, the graph (stem, blocks with `conv_a`, `conv_b` and skip kind, exit heads) and the
//! depth prior.

pub mod alloc;
pub mod arch;
pub mod augment;
pub mod checkpoint;
pub mod config;
pub mod conv;
pub mod exits;
pub mod fastmath;
mod layers;
pub mod loss;
pub mod model;
pub mod network;
pub mod optim;
mod plain;
pub mod resnet;
pub mod schema;
pub mod tensor;
pub mod trainer;
pub mod vd;

#[cfg(test)]
mod bench;
#[cfg(test)]
mod gradcheck;
#[cfg(test)]
mod gradcheck_resnet;

pub use arch::{Arch, UnknownArch};
pub use checkpoint::{CheckpointError, CHECKPOINT_FILE};
pub use config::TrainConfig;
pub use exits::{DepthPrior, ExitObjective};
pub use model::Model;
pub use network::{LayerSparsity, Network, Sparsity, TrainedLayer};
pub use optim::{Adam, LrSchedule};
pub use resnet::{ResBlock, ResNetEe, ShapeError, Skip, VdConv, VdLinear};
pub use tensor::Real;
pub use trainer::{BatchReport, EpochReport, TrainError, TrainEvent, Trainer};
