//! `tinybayes synth`: a seeded random model (for tests, benchmarks and demos before training).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use tinybayes::format::{MAX_CLASSES, MAX_LAYERS, MAX_UNITS};
use tinybayes::writer::{synthetic, StorageChoice};

use crate::files::write_new;
use crate::report::ModelReport;

/// Most dense weights (inputs x outputs summed over the layers) `synth` generates: every one
/// is drawn in memory before the sparse tables are built (16,777,216, about 200 MB).
pub const MAX_SYNTH_WEIGHTS: usize = 1 << 24;

/// Most residual blocks of a synthetic early-exit network: the format's 32 layers hold the
/// stem and 7 blocks of four layers (two convolutions, the residual addition, the exit head).
pub const MAX_SYNTH_BLOCKS: usize = (MAX_LAYERS - 1) / 4;

/// Largest side of a synthetic early-exit network's square input.
pub const MAX_SYNTH_SIDE: usize = 255;

/// Arguments of `synth` (the limits are in the help text, after the options).
#[derive(Args, Debug)]
#[command(
    after_help = "Limits (checked before anything is allocated): at most 33 widths \
(32 layers), each 1..=65535 (the model format's units per layer), the last (the classes) \
2..=1024, at most 16777216 dense weights in all. --resnet-ee: 1..=7 blocks, --side 1..=255, \
--channels x side x side <= 65535, and the same weight budget."
)]
pub struct SynthArgs {
    /// Seed of the weights.
    #[arg(long, allow_negative_numbers = true, default_value_t = 7)]
    pub seed: u64,
    /// Layer widths, input first, comma separated.
    #[arg(
        long,
        allow_negative_numbers = true,
        value_delimiter = ',',
        default_value = "784,300,100,10"
    )]
    pub widths: Vec<usize>,
    /// Fraction of weights kept (0 < density <= 1).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.03)]
    pub density: f32,
    /// Store every layer densely.
    #[arg(long)]
    pub dense: bool,
    /// Input shape CxHxW (default 1x28x28 when the input width is 784, else 1x1xN).
    #[arg(long)]
    pub input_shape: Option<String>,
    /// Write a random early-exit residual network with this many blocks (1 to 7) instead (one
    /// input channel, square input of side --side, --channels channels, 10 classes, geometric
    /// prior of strength 0.3); --widths, --density and --dense do not apply.
    #[arg(long, allow_negative_numbers = true, value_name = "BLOCKS")]
    pub resnet_ee: Option<usize>,
    /// Side of the early-exit network's square input.
    #[arg(long, allow_negative_numbers = true, default_value_t = 28)]
    pub side: usize,
    /// Channels of the early-exit network.
    #[arg(long, allow_negative_numbers = true, default_value_t = 4)]
    pub channels: usize,
    /// Output model file.
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite the output if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Checks the widths of a synthetic perceptron against the format's limits and the weight
/// budget, before anything is allocated. One line naming the limit on failure.
pub fn check_widths(widths: &[usize]) -> Result<()> {
    if widths.len() < 2 || widths.len() > MAX_LAYERS + 1 {
        bail!(
            "--widths needs 2 to {} widths (1 to {MAX_LAYERS} layers), got {}",
            MAX_LAYERS + 1,
            widths.len()
        );
    }
    if let Some(&w) = widths.iter().find(|&&w| w == 0 || w > MAX_UNITS) {
        bail!("--widths: width {w} is out of range; the model format allows 1 to {MAX_UNITS} units per layer");
    }
    let classes = widths[widths.len() - 1];
    if !(2..=MAX_CLASSES).contains(&classes) {
        bail!("--widths: the last width is the class count, 2 to {MAX_CLASSES}, got {classes}");
    }
    // Each product is below 2^32, and there are at most 32 of them: no overflow in usize on a
    // 64-bit host, and saturating elsewhere.
    let weights = widths
        .windows(2)
        .fold(0usize, |a, p| a.saturating_add(p[0].saturating_mul(p[1])));
    if weights > MAX_SYNTH_WEIGHTS {
        bail!(
            "--widths: {weights} dense weights is more than synth's limit of {MAX_SYNTH_WEIGHTS}"
        );
    }
    Ok(())
}

/// Checks the size of a synthetic early-exit network (1 input channel, 10 classes) before
/// anything is allocated. One line naming the limit on failure.
pub fn check_resnet(blocks: usize, side: usize, channels: usize) -> Result<()> {
    if !(1..=MAX_SYNTH_BLOCKS).contains(&blocks) {
        bail!("--resnet-ee needs 1 to {MAX_SYNTH_BLOCKS} blocks (the model format's {MAX_LAYERS} layers), got {blocks}");
    }
    if !(1..=MAX_SYNTH_SIDE).contains(&side) {
        bail!("--side must be 1 to {MAX_SYNTH_SIDE}, got {side}");
    }
    let map = channels.saturating_mul(side * side);
    if channels == 0 || map > MAX_UNITS {
        bail!(
            "--channels {channels} at side {side} gives {map} values per feature map; the model \
             format allows 1 to {MAX_UNITS} (at most {} channels at this side)",
            MAX_UNITS / (side * side)
        );
    }
    // Stem 9c, two 3x3 convolutions of c^2 * 9 per block, exit head 10c per block.
    let c = channels as u64;
    let weights = 9 * c + blocks as u64 * (18 * c * c + 10 * c);
    if weights > MAX_SYNTH_WEIGHTS as u64 {
        bail!("--resnet-ee {blocks} with --channels {channels}: {weights} weights is more than synth's limit of {MAX_SYNTH_WEIGHTS}");
    }
    Ok(())
}

fn parse_shape(text: &str) -> Result<[usize; 3]> {
    let parts: Vec<usize> = text
        .split('x')
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("--input-shape must look like 1x28x28, got {text:?}"))?;
    match parts.as_slice() {
        [c, h, w] => Ok([*c, *h, *w]),
        _ => bail!("--input-shape must have three dimensions, got {text:?}"),
    }
}

/// Runs `synth`.
pub fn run(args: &SynthArgs) -> Result<()> {
    if let Some(blocks) = args.resnet_ee {
        check_resnet(blocks, args.side, args.channels)?;
        let prior = crate::halting::geometric_prior(blocks, 0.3)?;
        let spec = synthetic::resnet_ee(args.seed, args.side, args.channels, 10, &prior, 2.0);
        let buffer = spec.to_buffer()?;
        write_new(&args.out, buffer.as_bytes(), args.force)?;
        let model = buffer.model()?;
        crate::ui::status(format!(
            "{}wrote {}",
            ModelReport::new(&model, 8, None).to_table(),
            args.out.display()
        ));
        return Ok(());
    }
    check_widths(&args.widths)?;
    if !(args.density > 0.0 && args.density <= 1.0) {
        bail!("--density must be in (0, 1], got {}", args.density);
    }
    let mut spec = synthetic::mlp(args.seed, &args.widths, args.density);
    spec.input_shape = match &args.input_shape {
        Some(text) => parse_shape(text)?,
        None if args.widths[0] == 784 => [1, 28, 28],
        None => [1, 1, args.widths[0]],
    };
    let values = spec
        .input_shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d));
    if values != Some(args.widths[0]) {
        bail!(
            "--input-shape {:?} does not have {} values",
            spec.input_shape,
            args.widths[0]
        );
    }
    if args.dense {
        for layer in &mut spec.layers {
            layer.storage = StorageChoice::Dense;
        }
    }
    let buffer = spec.to_buffer()?;
    write_new(&args.out, buffer.as_bytes(), args.force)?;
    let model = buffer.model()?;
    crate::ui::status(format!(
        "{}wrote {} (synthetic, seed {}: random weights, not trained)",
        ModelReport::new(&model, 32, None).to_table(),
        args.out.display(),
        args.seed
    ));
    Ok(())
}
