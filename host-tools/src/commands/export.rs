//! `tinybayes export`: prune a trained run, remove dead units, write the flash table and
//! print the per-layer report.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::export::{export, ExportOptions};
use crate::export_resnet::export_resnet;
use crate::files::{check_writable, write_new};
use crate::run_dir::load_run;
use crate::runner::{quantize_spec, PrecisionArgs, Runner};
use crate::train::DepthPrior;
use tinybayes::format::Precision;

/// Arguments of `export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run directory written by `tinybayes train`.
    #[arg(long)]
    pub run: PathBuf,
    /// Prune weights whose log alpha exceeds this.
    #[arg(long, allow_negative_numbers = true, default_value_t = 3.0)]
    pub threshold: f32,
    /// Write only the posterior means (no Monte Carlo uncertainty; half the flash).
    #[arg(long)]
    pub deterministic: bool,
    /// Monte Carlo samples per prediction for the RAM figure of the report (1 to 65535).
    #[arg(long, allow_negative_numbers = true, default_value_t = 32)]
    pub samples: usize,
    /// Early-exit ResNets: strength lambda of the truncated geometric depth prior written into
    /// the exit heads, p(z = l) ∝ (1 - lambda)^(l - 1) [default: the one trained with].
    #[arg(long, allow_negative_numbers = true, value_name = "LAMBDA")]
    pub prior_lambda: Option<f64>,
    /// Number format of the file (q8/q16 need --calibration-images).
    #[command(flatten)]
    pub precision: PrecisionArgs,
    /// Output model file (.tbm).
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite the output if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Runs `export`.
pub fn run(args: &ExportArgs) -> Result<()> {
    if !args.threshold.is_finite() {
        bail!(
            "--threshold must be a finite number, got {}",
            args.threshold
        );
    }
    crate::report::check_report_samples("--samples", args.samples)?;
    check_writable(&args.out, args.force)?;
    let run = load_run(&args.run)?;
    let options = ExportOptions {
        threshold: args.threshold,
        gaussian: !args.deterministic,
    };
    let (spec, pruning) = match (&run.model, run.model.as_resnet()) {
        (_, Some(net)) => {
            let lambda = args.prior_lambda.unwrap_or(net.prior.lambda);
            let priors = DepthPrior::new(lambda)
                .map_err(|e| anyhow::anyhow!("--prior-lambda: {e}"))?
                .probabilities(net.depth());
            export_resnet(net, &priors, options)?
        }
        (model, None) => {
            if args.prior_lambda.is_some() {
                bail!("--prior-lambda applies to early-exit (resnet-ee) runs only");
            }
            let network = model
                .as_network()
                .ok_or_else(|| anyhow::anyhow!("the run holds no exportable model"))?;
            export(network, options)?
        }
    };
    let runner = match args.precision.precision {
        None | Some(Precision::F32) => {
            args.precision.warn_if_unused();
            Runner::F32(spec.to_buffer()?)
        }
        Some(p) => Runner::Fixed(quantize_spec(&spec, p, &args.precision)?),
    };
    let report = runner
        .report(args.samples, None)
        .ok_or_else(|| anyhow::anyhow!("the exported model did not validate"))?;
    write_new(&args.out, runner.buffer().as_bytes(), args.force)?;
    let mut text = format!(
        "{} after {} epochs, pruned at log alpha > {}:\n",
        run.config.arch, run.epochs_done, args.threshold
    );
    for (i, p) in pruning.iter().enumerate() {
        text += &format!(
            "  layer {i}: {} of {} trained weights survive, {} of {} units kept\n",
            p.surviving_weights, p.trained_weights, p.kept_outputs, p.trained_outputs
        );
    }
    text += &report.to_table();
    text += &format!("wrote {}", args.out.display());
    crate::ui::status(text);
    Ok(())
}
