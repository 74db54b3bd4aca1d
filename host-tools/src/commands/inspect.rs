//! `tinybayes inspect`: the per-layer report of a model file, from the file alone.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::runner::read_any_model;

/// Arguments of `inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model file (.tbm).
    #[arg(long)]
    pub model: PathBuf,
    /// Monte Carlo samples per prediction the RAM figure is for (1 to 65535).
    #[arg(long, allow_negative_numbers = true, default_value_t = 32)]
    pub samples: usize,
    /// Samples sharing one pass over the weights (the engine's CHUNK) [default: up to 8 for
    /// a plain network, 1 for an early-exit network].
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub chunk: Option<u16>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `inspect`.
pub fn run(args: &InspectArgs) -> Result<()> {
    crate::report::check_report_samples("--samples", args.samples)?;
    let runner = read_any_model(&args.model)?;
    let report = runner.report(args.samples, args.chunk.map(usize::from));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
