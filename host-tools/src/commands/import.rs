//! `tinybayes import`: a network trained elsewhere (PyTorch) into a model file. The
//! architecture is the `[[layers]]` list of a training config, the weights come from an `.npz`
//! or `.safetensors` file (names and layouts: [`crate::import`]), and the network is then
//! pruned and written exactly as `tinybayes export` writes a trained run.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use crate::commands::export::{export_network, threshold, write_model, Output};
use crate::export::ExportOptions;
use crate::files::check_writable;
use crate::import::{import_network, WeightsFile};
use crate::runner::PrecisionArgs;
use crate::train::schema::LayerKind;
use crate::train::TrainConfig;

/// `import --help`'s closing text: the tensors looked up.
const AFTER_HELP: &str = "\
Tensors (PyTorch names and layouts), for each linear or conv entry of the [[layers]] list,
named by its `name` (default layers.<index>, the entry's index in the list):
  <name>.weight      posterior mean: [out, in], [out, in, kh, kw], or [out, in, k] for a
                     1-D convolution over a time series (our kernel [k, 1] over [C, T, 1])
  <name>.log_sigma2  log variance of each weight, same shape (vd layers), or instead
  <name>.log_alpha   log alpha, converted by log sigma^2 = log alpha + ln(theta^2 + 1e-8)
  <name>.bias        [out]; absent (bias=False) means zeros
Dropout and deterministic layers need only weight and bias. Values may be f32 or f64 (and f16,
or bf16 in .safetensors) and must be finite. Linear layers after convolutions read the maps
flattened channel-major, like x.flatten(1) in PyTorch. Early-exit (residual/exit) lists are
not imported yet.

Example: tinybayes import --weights model.npz --config arch.toml --input-shape 3,128,1 \\
             --classes 14 --out model.tbm";

/// Arguments of `import`.
#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct ImportArgs {
    /// The weights: a NumPy .npz archive or a .safetensors file.
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// A training config (TOML) whose list of layers is the architecture (see below).
    #[arg(long, value_name = "ARCH.toml")]
    pub config: PathBuf,
    /// Shape of one input: C,H,W (time series C,T,1, vectors 1,1,D; C,T and D are read so too)
    /// [default: the config's input_shape].
    #[arg(long, value_name = "C,H,W")]
    pub input_shape: Option<String>,
    /// Number of classes [default: the config's classes, else the last layer's outputs].
    #[arg(long, value_name = "K")]
    pub classes: Option<usize>,
    /// Prune weights whose log alpha exceeds this [default: the config's prune_threshold, 3].
    #[arg(long, allow_negative_numbers = true)]
    pub threshold: Option<f32>,
    /// Write only the posterior means (no Monte Carlo uncertainty; half the flash).
    #[arg(long)]
    pub deterministic: bool,
    /// Monte Carlo samples per prediction for the RAM figure of the report (1 to 65535).
    #[arg(long, allow_negative_numbers = true, default_value_t = 32)]
    pub samples: usize,
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

/// Parses `--input-shape`: `C,H,W`, `C,T` (a time series, `[C, T, 1]`) or `D` (a vector,
/// `[1, 1, D]`), each dimension in 1..=65535.
pub fn parse_shape(text: &str) -> Result<[usize; 3], String> {
    let dims: Result<Vec<usize>, _> = text.split(',').map(|d| d.trim().parse()).collect();
    let bad = || {
        format!("--input-shape must be C,H,W (or C,T or D) of numbers in 1..=65535, got {text:?}")
    };
    let dims = dims.map_err(|_| bad())?;
    if dims.iter().any(|&d| !(1..=u16::MAX as usize).contains(&d)) {
        return Err(bad());
    }
    match dims[..] {
        [c, h, w] => Ok([c, h, w]),
        [c, t] => Ok([c, t, 1]),
        [d] => Ok([1, 1, d]),
        _ => Err(bad()),
    }
}

/// Runs `import`.
pub fn run(args: &ImportArgs) -> Result<()> {
    crate::report::check_report_samples("--samples", args.samples)?;
    check_writable(&args.out, args.force)?;
    let config = read_config(args)?;
    let layers = config.layers.as_deref().unwrap_or_default();
    let input = config.input_shape();
    let classes = config.classes();
    let threshold = threshold(Some(
        args.threshold.unwrap_or(config.prune_threshold as f32),
    ))?;
    let mut file = WeightsFile::open(&args.weights)?;
    crate::ui::detail(format!(
        "{}: {} tensors; input shape {input:?}, {classes} classes, pruning at log alpha > \
         {threshold}",
        args.weights.display(),
        file.names().len()
    ));
    let imported = import_network(layers, input, classes, f64::from(threshold), &mut file)?;
    for line in &imported.layers {
        crate::ui::detail(line);
    }
    if !imported.unused.is_empty() {
        let shown: Vec<&str> = imported.unused.iter().take(8).map(String::as_str).collect();
        crate::ui::warn(format!(
            "{} tensor(s) of {} are not read by any layer of the config: {}{} (a layer the \
             engine lacks, such as batch norm, or a name the config does not give?)",
            imported.unused.len(),
            args.weights.display(),
            shown.join(", "),
            if imported.unused.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        ));
    }
    for ignored in &imported.ignored {
        crate::ui::warn(format!("ignored {ignored}"));
    }
    let options = ExportOptions {
        threshold,
        gaussian: !args.deterministic,
    };
    let (spec, lines) = export_network(&imported.network, options)?;
    let text = format!(
        "imported {} ({} weight layers), pruned at log alpha > {threshold}:\n{lines}",
        args.weights.display(),
        imported.layers.len()
    );
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

/// The config with its `[[layers]]` list, the input shape and the class count settled
/// (flags first, then the config's keys) and checked.
fn read_config(args: &ImportArgs) -> Result<TrainConfig> {
    let path = &args.config;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let mut config = toml::from_str::<TrainConfig>(&text)
        .map_err(|e| anyhow!("{}: {}", path.display(), one_line(&e.to_string())))?
        .with_layers_arch();
    let Some(layers) = &config.layers else {
        bail!(
            "{}: no [[layers]] list: import reads the architecture from one (see \
             models/configs/lenet5.toml)",
            path.display()
        );
    };
    if let Some(text) = &args.input_shape {
        config.input_shape = Some(parse_shape(text).map_err(|e| anyhow!(e))?);
    }
    if config.input_shape.is_none() {
        bail!(
            "{}: no input_shape: give --input-shape C,H,W (or input_shape = [C, H, W] in the \
             config)",
            path.display()
        );
    }
    let last_outputs = layers
        .iter()
        .rev()
        .find(|l| matches!(l.kind, LayerKind::Linear | LayerKind::Conv))
        .and_then(|l| l.outputs);
    config.classes = args.classes.or(config.classes).or(last_outputs);
    if config.classes.is_none() {
        bail!(
            "{}: the class count is unknown: give --classes K (or classes = K, or the last \
             layer's outputs, in the config)",
            path.display()
        );
    }
    // Not `TrainConfig::check`: its training settings do not matter here, and it holds every
    // input to the early-exit stem's default geometry. The list itself is checked when built.
    let shape = config.input_shape();
    if shape.iter().any(|&d| !(1..=u16::MAX as usize).contains(&d)) {
        bail!(
            "{}: input_shape {shape:?}: every dimension must be in 1..=65535",
            path.display()
        );
    }
    let classes = config.classes();
    if !(2..=tinybayes::format::MAX_CLASSES).contains(&classes) {
        bail!(
            "{}: {classes} classes; a model has 2..={}",
            path.display(),
            tinybayes::format::MAX_CLASSES
        );
    }
    if !config.prune_threshold.is_finite() {
        bail!("{}: prune_threshold must be finite", path.display());
    }
    Ok(config)
}

/// A TOML error's message on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::parse_shape;

    #[test]
    fn input_shapes_of_one_two_or_three_dimensions() {
        assert_eq!(parse_shape("3,28,28"), Ok([3, 28, 28]));
        assert_eq!(parse_shape("3, 128"), Ok([3, 128, 1]));
        assert_eq!(parse_shape("20"), Ok([1, 1, 20]));
        for bad in ["", "0,4", "1,2,3,4", "a", "70000", "-1"] {
            assert!(parse_shape(bad).is_err(), "{bad:?}");
        }
    }
}
