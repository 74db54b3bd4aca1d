//! The subcommands of the `tinybayes` CLI, one module each.

pub mod adapt;
pub mod eval;
pub mod export;
pub mod images;
pub mod import;
pub mod inspect;
pub mod predict;
pub mod synth;
pub mod train;
