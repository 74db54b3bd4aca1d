//! `tinybayes inspect`: the per-layer report of a model file, from the file alone.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::files::read_model;
use crate::report::ModelReport;

/// Arguments of `inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model file (.tbm).
    #[arg(long)]
    pub model: PathBuf,
    /// Monte Carlo samples per pass the RAM figure is for.
    #[arg(long, default_value_t = 32)]
    pub samples: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `inspect`.
pub fn run(args: &InspectArgs) -> Result<()> {
    let buffer = read_model(&args.model)?;
    let model = buffer.model()?;
    let report = ModelReport::new(&model, args.samples);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
