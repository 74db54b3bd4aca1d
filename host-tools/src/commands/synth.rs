//! `tinybayes synth`: a seeded random model (for tests, benchmarks and demos before training).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use tinybayes::writer::{synthetic, StorageChoice};

use crate::files::write_new;
use crate::report::ModelReport;

/// Arguments of `synth`.
#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Seed of the weights.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Layer widths, input first, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "784,300,100,10")]
    pub widths: Vec<usize>,
    /// Fraction of weights kept (0 < density <= 1).
    #[arg(long, default_value_t = 0.03)]
    pub density: f32,
    /// Store every layer densely.
    #[arg(long)]
    pub dense: bool,
    /// Input shape CxHxW (default 1x28x28 when the input width is 784, else 1x1xN).
    #[arg(long)]
    pub input_shape: Option<String>,
    /// Write a random early-exit residual network with this many blocks instead (one input
    /// channel, square input of side --side, --channels channels, 10 classes, geometric prior
    /// of strength 0.3); --widths, --density and --dense do not apply.
    #[arg(long, value_name = "BLOCKS")]
    pub resnet_ee: Option<usize>,
    /// Side of the early-exit network's square input.
    #[arg(long, default_value_t = 28)]
    pub side: usize,
    /// Channels of the early-exit network.
    #[arg(long, default_value_t = 4)]
    pub channels: usize,
    /// Output model file.
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite the output if it exists.
    #[arg(long)]
    pub force: bool,
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
        if !(1..=16).contains(&blocks) || args.side == 0 || args.side > 255 || args.channels == 0 {
            bail!("--resnet-ee needs 1 to 16 blocks, a side of 1 to 255 and at least one channel");
        }
        let prior = crate::halting::geometric_prior(blocks, 0.3)?;
        let spec = synthetic::resnet_ee(args.seed, args.side, args.channels, 10, &prior, 2.0);
        let buffer = spec.to_buffer()?;
        write_new(&args.out, buffer.as_bytes(), args.force)?;
        let model = buffer.model()?;
        print!("{}", ModelReport::new(&model, 8, None).to_table());
        println!("wrote {}", args.out.display());
        return Ok(());
    }
    if args.widths.len() < 2 || args.widths.contains(&0) {
        bail!(
            "--widths needs at least two non-zero widths, got {:?}",
            args.widths
        );
    }
    if !(args.density > 0.0 && args.density <= 1.0) {
        bail!("--density must be in (0, 1], got {}", args.density);
    }
    let mut spec = synthetic::mlp(args.seed, &args.widths, args.density);
    spec.input_shape = match &args.input_shape {
        Some(text) => parse_shape(text)?,
        None if args.widths[0] == 784 => [1, 28, 28],
        None => [1, 1, args.widths[0]],
    };
    if spec.input_shape.iter().product::<usize>() != args.widths[0] {
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
    print!("{}", ModelReport::new(&model, 32, None).to_table());
    println!(
        "wrote {} (synthetic, seed {}: random weights, not trained)",
        args.out.display(),
        args.seed
    );
    Ok(())
}
