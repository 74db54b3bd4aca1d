//! `tinybayes`: the host command line of tinybayes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tinybayes_host::commands::{eval, export, images, inspect, predict, synth, train};

/// Train, export, inspect, evaluate and simulate tinybayes models.
#[derive(Parser, Debug)]
#[command(name = "tinybayes", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a sparse variational dropout network (lenet300, lenet5 or resnet-ee) on MNIST.
    Train(train::TrainArgs),
    /// Prune a trained run, remove dead units and write the flash table (.tbm).
    Export(export::ExportArgs),
    /// Write a seeded random model (untrained; for tests, benchmarks and demos).
    Synth(synth::SynthArgs),
    /// Print the per-layer report of a model file.
    Inspect(inspect::InspectArgs),
    /// Evaluate a model on a labelled IDX test set as the device would: metrics and plots.
    Eval(eval::EvalArgs),
    /// Run a model over IDX images as the device would and write one CSV row per image.
    Predict(predict::PredictArgs),
    /// Cut the first images (and labels) of an IDX set into the raw file the firmware embeds.
    Images(images::ImagesArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Train(args) => train::run(args),
        Command::Export(args) => export::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Images(args) => images::run(args),
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
