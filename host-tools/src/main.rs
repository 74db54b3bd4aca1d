//! `tinybayes`: the host command line of tinybayes.

use std::process::ExitCode;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use tinybayes_host::commands::{
    adapt, eval, export, images, import, inspect, predict, synth, train,
};
use tinybayes_host::ui::{self, ColorWhen, Verbosity};

/// Train, export, inspect, evaluate and simulate tinybayes models.
#[derive(Parser, Debug)]
#[command(name = "tinybayes", version, about)]
struct Cli {
    /// Print results, warnings and errors only (no status lines, no progress bars).
    #[arg(short, long, global = true, action = ArgAction::SetTrue, conflicts_with = "verbose")]
    quiet: bool,
    /// Also print, on stderr, what is read and the settings in effect.
    #[arg(short, long, global = true, action = ArgAction::SetTrue)]
    verbose: bool,
    /// Colour the output: auto (when stderr is a terminal and NO_COLOR is unset), always or
    /// never.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        value_name = "WHEN"
    )]
    color: ColorWhen,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a sparse variational dropout network (lenet300, lenet5 or resnet-ee) on MNIST.
    Train(train::TrainArgs),
    /// Prune a trained run, remove dead units and write the flash table (.tbm).
    Export(export::ExportArgs),
    /// Import a network trained elsewhere (PyTorch weights as .npz or .safetensors, the
    /// architecture from a config's list of layers), prune it and write the flash table.
    Import(import::ImportArgs),
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
    /// Learn from K labelled examples: the closed-form Bayesian update of the last layer (the
    /// code a device runs), written as an adapted model; --report DIR plots accuracy, NLL and
    /// ECE against K on held-out data.
    Adapt(adapt::AdaptArgs),
    /// Print a shell completion script (e.g. `tinybayes completions bash >
    /// ~/.local/share/bash-completion/completions/tinybayes`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The `--color` choice as given on the command line, read before clap parses it so that
/// help and usage errors follow it too.
fn color_from_args() -> ColorWhen {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut choice = ColorWhen::Auto;
    for (i, a) in args.iter().enumerate() {
        if a == "--" {
            break;
        }
        let value = match a.strip_prefix("--color") {
            Some("") => args.get(i + 1).map(String::as_str),
            Some(v) => v.strip_prefix('='),
            None => None,
        };
        if let Some(c) = value.and_then(|v| ColorWhen::from_str(v, true).ok()) {
            choice = c;
        }
    }
    choice
}

fn main() -> ExitCode {
    let command = Cli::command().color(color_from_args().clap());
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let verbosity = match (cli.quiet, cli.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    };
    ui::init(verbosity, cli.color);
    let result = match &cli.command {
        Command::Train(args) => train::run(args),
        Command::Export(args) => export::run(args),
        Command::Import(args) => import::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Images(args) => images::run(args),
        Command::Adapt(args) => adapt::run(args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "tinybayes", &mut script);
            // A closed stdout (a pipe into `head`) is not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One helpful line: the context chain joined, most general first.
            eprintln!("{}", ui::error_line(format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
