//! # tinybayes
//!
//! Bayesian neural network inference for Cortex-M microcontrollers: `#![no_std]`, no heap,
//! model tables read in place from flash, deterministic seeded sampling.
//!
//! Every input gets a posterior predictive distribution with its uncertainty: predictive
//! entropy (total), expected entropy (aleatoric) and mutual information (epistemic).
//!
//! ```
//! use core::num::NonZeroU16;
//! use tinybayes::rand_core::SeedableRng;
//! use tinybayes::{Engine, Mode, Model, Prediction};
//!
//! # let buffer = tinybayes::writer::synthetic::mlp(7, &[16, 8, 3], 0.5).to_buffer().unwrap();
//! # let bytes = buffer.as_bytes();
//! let model = Model::from_bytes(bytes)?; // validates once: shapes, indices, CRC, ...
//! let mut workspace = [0.0f32; 512];     // tinybayes::Plan::new(&model, 8).workspace_len() words at least
//! let mut engine = Engine::<8>::new(&model, &mut workspace)?;
//! let mut rng = tinybayes::rand_xoshiro::Xoshiro128PlusPlus::seed_from_u64(1);
//! let input = [0.5f32; 16];
//! let samples = NonZeroU16::new(32).unwrap();
//! let p: Prediction<3> = engine.predict(&input, Mode::MonteCarlo { samples }, &mut rng)?;
//! assert!((p.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
//! assert!(p.mutual_information >= 0.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The README's API snippet is compiled and run as a doctest too.
//!
//! The crate denies `unsafe` code with one documented exception: the hand-scheduled kernels
//! of module `arch`, one file per architecture, in inline `asm!`: f32 for hard-float
//! Cortex-M cores (`arch/arm_fpu.rs`: sparse dot products, by-input scatters,
//! register-blocked accumulation over 8 or 4 samples, output-stationary 3x3 convolutions,
//! `vsqrt.f32`) and q8 for ARMv7E-M cores with the DSP extension (`arch/arm_dsp.rs`: row sums
//! of four samples, row dot products, the first layer's by-input scatter, convolution tap
//! walks), each beside a portable Rust kernel that gives the same bits, each block with its
//! invariant and its measured gain (BENCHMARKS.md).
#![no_std]
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod adapt;
mod arch;
mod checksum;
pub mod digest;
pub mod early_exit;
mod engine;
pub mod error;
mod exp;
pub mod fixed;
pub mod format;
mod input;
mod kernels;
pub mod model;
pub mod normal;
pub mod numeric;
pub mod plan;
pub mod predictive;
mod runner;
#[cfg(feature = "alloc")]
pub mod writer;

pub use early_exit::{ExitPrediction, HaltValue, Halting, QExitPrediction, Uncertainty};
pub use engine::{Engine, Mode};
pub use error::{InferenceError, ModelError};
pub use fixed::{QModel, QPrediction, UQ16};
pub use model::{Layer, Model, Weights};
pub use numeric::{Numeric, F32, Q16, Q8};
pub use plan::Plan;
pub use predictive::Prediction;
pub use rand_core;
pub use rand_xoshiro;

/// The README's code (its API snippet), compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Embeds a model file in the binary (typically flash) at a 4-byte-aligned address, as
/// [`Model::from_bytes`] requires, and evaluates to `&'static [u8]`.
///
/// ```ignore
/// static MODEL: &[u8] = tinybayes::include_model!("../models/lenet300.tbm");
/// ```
#[macro_export]
macro_rules! include_model {
    ($path:expr) => {{
        #[repr(C, align(4))]
        struct Aligned<T: ?Sized>(T);
        static ALIGNED: &Aligned<[u8]> = &Aligned(*include_bytes!($path));
        &ALIGNED.0
    }};
}
