//! Per-model "unsure" thresholds, proposed from validation data: MNIST test images 5000-9999
//! (the demos' ten digits are test images 0-9), Monte Carlo with 32 samples as on the device,
//! by `tinybayes eval --suggest-thresholds 0.5 --emit-rust FILE` (the command per file is in
//! the README, Firmware). Each threshold alone flags half of the wrong validation answers.
//!
//! The files are generated and checked in; the host test `unsure_thresholds`
//! (`cargo test -p tinybayes-host-tools --test unsure_thresholds`) fails when they differ from
//! what the command writes now.

pub mod lenet300;
pub mod lenet300_q8;
