//! How sensitive is an f32 model's behaviour to its weights' last bits? Writes a copy of an
//! f32 model whose means θ are moved within one quantization step, keeping f32 arithmetic, so
//! that `tinybayes eval` measures what the weights alone change (the fixed-point file also
//! changes activations, sums and noise).
//!
//! Each output line of a weight layer (a row, or an output channel of a convolution) gets the
//! step the q8 exporter uses, `max |θ| / L` with `L = 2^(bits-1) - 1` (127 for 8 bits); then
//! either every θ is rounded to that grid (`--bits B`), or every stored θ moves by an
//! independent uniform amount in `[-step/2, step/2)` (`--dither SEED`): a model as far from
//! the original as a rounding is, but in a random direction. Variances and biases are kept.
//!
//! ```text
//! cargo run --release -p tinybayes-host-tools --example weight_rounding -- \
//!     models/resnet-ee.tbm /tmp/rounded.tbm --bits 8
//! tinybayes eval --model /tmp/rounded.tbm ... --ood-images ...
//! ```
//!
//! BENCHMARKS.md ("Why the q8 ResNet's AUROC moves") lists what this measured.

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::writer::{LayerOp, ModelBuffer, ModelSpec};

/// Command-line options.
#[derive(Parser)]
struct Options {
    /// The f32 model to read.
    input: std::path::PathBuf,
    /// Where to write the changed model (must not exist).
    output: std::path::PathBuf,
    /// Round θ to a grid of this many bits per output line (2 to 24).
    #[arg(long, conflicts_with = "dither", required_unless_present = "dither")]
    bits: Option<u32>,
    /// Move each stored θ by a uniform fraction of an 8-bit step drawn from this seed.
    #[arg(long)]
    dither: Option<u64>,
    /// Only these layer indices (comma-separated; default every weight layer).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
}

fn main() -> Result<()> {
    let options = Options::parse();
    if let Some(bits) = options.bits {
        ensure!(
            (2..=24).contains(&bits),
            "--bits must be 2 to 24, not {bits}"
        );
    }
    let bytes = std::fs::read(&options.input)
        .with_context(|| format!("cannot read {}", options.input.display()))?;
    let buffer = ModelBuffer::from_bytes(&bytes);
    let model = match buffer.model() {
        Ok(model) => model,
        Err(e) => bail!("{} is not an f32 model: {e}", options.input.display()),
    };
    let mut spec = ModelSpec::from_model(&model);
    let levels = ((1u32 << (options.bits.unwrap_or(8) - 1)) - 1) as f32;
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(options.dither.unwrap_or(0));
    let mut channels = spec.input_shape[0];
    for (index, layer) in spec.layers.iter_mut().enumerate() {
        let (lines, fan_in) = match layer.op {
            LayerOp::Conv2d {
                out_channels,
                kernel,
                ..
            } => {
                let fan_in = channels * kernel[0] * kernel[1];
                channels = out_channels;
                (out_channels, fan_in)
            }
            _ => (layer.outputs, layer.inputs),
        };
        let chosen = options.layers.as_ref().is_none_or(|l| l.contains(&index));
        if !chosen || layer.theta.is_empty() {
            continue;
        }
        for line in layer.theta.chunks_exact_mut(fan_in).take(lines) {
            let largest = line.iter().fold(0.0f32, |m, t| m.max(t.abs()));
            if largest == 0.0 {
                continue;
            }
            let step = largest / levels;
            for theta in line.iter_mut().filter(|t| **t != 0.0) {
                let units = *theta / step;
                let moved = match options.dither {
                    // 24 random bits to a uniform value in [-0.5, 0.5).
                    Some(_) => units + ((rng.next_u32() >> 8) as f32 / 16_777_216.0 - 0.5),
                    None => units.round(),
                };
                *theta = moved * step;
            }
        }
    }
    let out = spec
        .to_bytes()
        .context("the changed model does not serialise")?;
    let mut file = std::fs::File::create_new(&options.output)
        .with_context(|| format!("cannot create {}", options.output.display()))?;
    std::io::Write::write_all(&mut file, &out)?;
    eprintln!("wrote {}", options.output.display());
    Ok(())
}
