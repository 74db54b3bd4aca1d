//! Fixed-point inference (q8, q16): integer-only Monte Carlo posterior predictive for cores
//! without an FPU (Cortex-M0, M3), bit-exact between the host and every device.
//!
//! - [`QModel`]: the validated view of a version-3 (linear), version-6 (convolutions,
//!   pooling) or version-7 (residual additions, exit heads, bias shifts) model file with
//!   quantized layers.
//! - [`crate::Engine`]`<CHUNK, `[`crate::Q8`]`>` (or [`crate::Q16`]) runs it on raw 8-bit
//!   inputs, through the same runner as f32 models; [`QPrediction`] holds the answer in
//!   [`UQ16`]; an early-exit file answers `predict_u8_early_exit` with a
//!   [`crate::QExitPrediction`], its halting policy deciding in [`UQ16`].
//! - [`math`]: integer e^-x, ln and square root, [`noise`]: tabled normal draws, each with
//!   documented and tested error bounds.
//!
//! The number formats are specified in `docs/FORMAT.md` ("Fixed-point layers").

mod conv;
pub(crate) mod graph;
pub(crate) mod kernels;
pub mod math;
mod model;
pub mod noise;
pub(crate) mod predictive;
#[cfg(feature = "alloc")]
pub mod quantize;
#[cfg(feature = "alloc")]
pub mod writer;

pub use model::{QCounts, QLayer, QModel};
pub use predictive::{entropy_q16, softmax_q16, QPrediction, UQ16};
