//! The subcommands of the `tinybayes` CLI, one module each.

pub mod inspect;
pub mod synth;
