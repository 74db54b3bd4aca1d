//! `tinybayes`: the host command line of tinybayes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tinybayes_host::commands::{inspect, synth};

/// Train, export, inspect, evaluate and simulate tinybayes models.
#[derive(Parser, Debug)]
#[command(name = "tinybayes", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a seeded random model (untrained; for tests, benchmarks and demos).
    Synth(synth::SynthArgs),
    /// Print the per-layer report of a model file.
    Inspect(inspect::InspectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Synth(args) => synth::run(args),
        Command::Inspect(args) => inspect::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One helpful line: the context chain joined, most general first.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
