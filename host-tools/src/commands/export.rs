//! `tinybayes export`: prune a trained run, remove dead units, write the flash table and
//! print the per-layer report; or write an f32 model file again in fixed point.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;

use crate::export::{export, ExportOptions, PruneReport};
use crate::export_resnet::export_resnet;
use crate::files::{check_writable, write_new};
use crate::run_dir::load_run;
use crate::runner::{quantize_spec, read_any_model, PrecisionArgs, Runner};
use crate::train::{DepthPrior, Network};
use tinybayes::format::Precision;
use tinybayes::writer::ModelSpec;

/// Arguments of `export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run directory written by `tinybayes train`.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub run: Option<PathBuf>,
    /// An exported f32 model file (.tbm) to write again at --precision q8 or q16, instead of
    /// a run (its pruning and priors are kept as they are).
    #[arg(long, conflicts_with_all = ["threshold", "deterministic", "prior_lambda"])]
    pub model: Option<PathBuf>,
    /// Prune weights whose log alpha exceeds this [default: 3].
    #[arg(long, allow_negative_numbers = true)]
    pub threshold: Option<f32>,
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
    crate::report::check_report_samples("--samples", args.samples)?;
    check_writable(&args.out, args.force)?;
    let (spec, text) = match (&args.run, &args.model) {
        (Some(run), _) => from_run(args, run)?,
        (None, Some(model)) => from_model(args, model)?,
        (None, None) => bail!("give --run DIR or --model FILE"),
    };
    write_model(
        &spec,
        text,
        &Output {
            precision: &args.precision,
            samples: args.samples,
            out: &args.out,
            force: args.force,
        },
    )
}

/// Where and how `export` and `import` write a model.
pub struct Output<'a> {
    /// Number format and calibration.
    pub precision: &'a PrecisionArgs,
    /// Monte Carlo samples of the report's RAM figure.
    pub samples: usize,
    /// The model file.
    pub out: &'a Path,
    /// Overwrite it if it exists.
    pub force: bool,
}

/// Writes `spec` at the requested precision (quantizing an f32 spec with the calibration
/// images) and prints `text`, the model's report and the file written.
pub fn write_model(spec: &ModelSpec, mut text: String, output: &Output<'_>) -> Result<()> {
    let buffer = match output.precision.precision {
        None | Some(Precision::F32) => {
            output.precision.warn_if_unused();
            spec.to_buffer()?
        }
        Some(p) => quantize_spec(spec, p, output.precision)?,
    };
    let runner = Runner::from_buffer(buffer)?;
    let report = runner.report(output.samples, None);
    write_new(output.out, runner.bytes(), output.force)?;
    text += &report.to_table();
    text += &format!("wrote {}", output.out.display());
    crate::ui::status(text);
    Ok(())
}

/// A `--threshold` (default 3), which must be finite.
pub fn threshold(given: Option<f32>) -> Result<f32> {
    let threshold = given.unwrap_or(3.0);
    if !threshold.is_finite() {
        bail!("--threshold must be a finite number, got {threshold}");
    }
    Ok(threshold)
}

/// Prunes a sequential network (weights whose log alpha exceeds `options.threshold`), removes
/// its dead units and describes what survives, one line per weight layer: what `export` does
/// with a trained run and `import` with weights trained elsewhere.
pub fn export_network(network: &Network, options: ExportOptions) -> Result<(ModelSpec, String)> {
    let (spec, pruning) = export(network, options)?;
    Ok((spec, pruning_lines(&pruning)))
}

/// One line per weight layer: surviving weights and kept units.
fn pruning_lines(pruning: &[PruneReport]) -> String {
    let mut text = String::new();
    for (i, p) in pruning.iter().enumerate() {
        text += &format!(
            "  layer {i}: {} of {} trained weights survive, {} of {} units kept\n",
            p.surviving_weights, p.trained_weights, p.kept_outputs, p.trained_outputs
        );
    }
    text
}

/// The spec of a trained run, pruned, with the pruning report.
fn from_run(args: &ExportArgs, run_dir: &Path) -> Result<(ModelSpec, String)> {
    let threshold = threshold(args.threshold)?;
    let run = load_run(run_dir)?;
    let options = ExportOptions {
        threshold,
        gaussian: !args.deterministic,
    };
    let (spec, lines) = match (&run.model, run.model.as_resnet()) {
        (_, Some(net)) => {
            let lambda = args.prior_lambda.unwrap_or(net.prior.lambda);
            let priors = DepthPrior::new(lambda)
                .map_err(|e| anyhow::anyhow!("--prior-lambda: {e}"))?
                .probabilities(net.depth());
            let (spec, pruning) = export_resnet(net, &priors, options)?;
            (spec, pruning_lines(&pruning))
        }
        (model, None) => {
            if args.prior_lambda.is_some() {
                bail!("--prior-lambda applies to early-exit (resnet-ee) runs only");
            }
            let network = model
                .as_network()
                .ok_or_else(|| anyhow::anyhow!("the run holds no exportable model"))?;
            export_network(network, options)?
        }
    };
    // The normalisation fitted on the training split goes into the model (format version 9
    // when channels differ); runs from before it was stored trained on bytes / 255, the
    // exporter's default pair.
    let mut spec = spec;
    if let Some(norm) = &run.config.normalization {
        if norm.channels() != spec.input_shape[0] {
            bail!(
                "the run's normalisation has {} channels but its network takes {}",
                norm.channels(),
                spec.input_shape[0]
            );
        }
        spec.channel_norm = Some(norm.channel_norms());
    }
    // MC dropout runs have deterministic weights: nothing is pruned.
    let how = match &run.config.dropout {
        Some(ps) => format!(
            "MC dropout (drop probabilities {}), not pruned",
            ps.iter()
                .map(f64::to_string)
                .collect::<Vec<_>>()
                .join(" / ")
        ),
        None => format!("pruned at log alpha > {threshold}"),
    };
    let mut text = format!(
        "{} after {} epochs, {how}:\n",
        run.config.arch, run.epochs_done
    );
    text += &lines;
    Ok((spec, text))
}

/// The spec of an f32 model file, to be written at a fixed-point precision.
fn from_model(args: &ExportArgs, path: &Path) -> Result<(ModelSpec, String)> {
    match args.precision.precision {
        Some(Precision::Q8 | Precision::Q16) => {}
        _ => bail!("--model re-exports an f32 model in fixed point: give --precision q8 or q16"),
    }
    let runner = read_any_model(path)?;
    let Runner::F32(model) = &runner else {
        bail!(
            "{} is already a {} model: re-export the f32 model it came from",
            path.display(),
            runner.precision().name()
        );
    };
    let spec = ModelSpec::from_model(model);
    Ok((spec, format!("{} in fixed point:\n", path.display())))
}
