//! From a trained early-exit ResNet to a flash table (format version 4): the stem and block
//! convolutions as sparse tap lists, a residual addition closing each block, an exit head
//! (global average pooling + linear) after each block, and the depth prior on the exits.
//!
//! Weights whose log alpha exceeds the threshold are pruned. Channels are not removed: the
//! identity skips tie every block's channels together, so a channel can only go when it is
//! dead in every block at once, which the trained models do not show.

use anyhow::{bail, Result};
use tinybayes::format::Activation;
use tinybayes::writer::{LayerOp, LayerSpec, ModelSpec, StorageChoice};

use crate::export::{ExportOptions, PruneReport};
use crate::train::resnet::{ResNetEe, VdConv, VdLinear};

/// Exported θ and σ² of one weight array: pruned entries are zero in both.
fn prune(
    theta: impl Iterator<Item = f32>,
    log_sigma2: impl Iterator<Item = f32>,
    options: ExportOptions,
) -> (Vec<f32>, Vec<f32>, usize) {
    let mut t_out = Vec::new();
    let mut v_out = Vec::new();
    let mut kept = 0;
    for (t, ls2) in theta.zip(log_sigma2) {
        let log_alpha = (ls2 - (t * t + 1e-8).ln()).clamp(-8.0, 8.0);
        if log_alpha > options.threshold {
            t_out.push(0.0);
            v_out.push(0.0);
        } else {
            kept += 1;
            t_out.push(t);
            v_out.push(if options.gaussian { ls2.exp() } else { 0.0 });
        }
    }
    (t_out, v_out, kept)
}

fn conv_layer(
    conv: &VdConv<f32>,
    input: [usize; 3],
    options: ExportOptions,
    activation: Activation,
) -> Result<(LayerSpec, [usize; 3], PruneReport)> {
    let (out_ch, in_ch, kh, kw) = conv.theta.dim();
    if in_ch != input[0] {
        bail!(
            "convolution expects {in_ch} channels, its input has {}",
            input[0]
        );
    }
    let out_size = |n: usize, k: usize| {
        (n + 2 * conv.padding)
            .checked_sub(k)
            .map(|v| v / conv.stride + 1)
    };
    let (Some(h), Some(w)) = (out_size(input[1], kh), out_size(input[2], kw)) else {
        bail!(
            "a {kh}x{kw} kernel does not fit a {}x{} map",
            input[1],
            input[2]
        );
    };
    let (theta, var, kept) = prune(
        conv.theta.iter().copied(),
        conv.log_sigma2.iter().copied(),
        options,
    );
    let spec = LayerSpec {
        op: LayerOp::Conv2d {
            out_channels: out_ch,
            kernel: [kh, kw],
            stride: conv.stride,
            padding: conv.padding,
        },
        inputs: input.iter().product(),
        outputs: out_ch * h * w,
        activation,
        bias: conv.bias.to_vec(),
        theta,
        variance: options.gaussian.then_some(var),
        storage: StorageChoice::Sparse,
        dropout: None,
    };
    let report = PruneReport {
        trained_outputs: out_ch,
        kept_outputs: out_ch,
        trained_weights: conv.theta.len(),
        surviving_weights: kept,
    };
    Ok((spec, [out_ch, h, w], report))
}

fn exit_layer(
    head: &VdLinear<f32>,
    prior: f32,
    options: ExportOptions,
) -> (LayerSpec, PruneReport) {
    let (classes, channels) = head.theta.dim();
    let (theta, var, kept) = prune(
        head.theta.iter().copied(),
        head.log_sigma2.iter().copied(),
        options,
    );
    let spec = LayerSpec {
        op: LayerOp::ExitHead { prior },
        inputs: channels,
        outputs: classes,
        activation: Activation::Identity,
        bias: head.bias.to_vec(),
        theta,
        variance: options.gaussian.then_some(var),
        storage: StorageChoice::Dense,
        dropout: None,
    };
    let report = PruneReport {
        trained_outputs: classes,
        kept_outputs: classes,
        trained_weights: head.theta.len(),
        surviving_weights: kept,
    };
    (spec, report)
}

/// The dense size of the trained ResNet: stem, block convolutions and exit heads.
fn trained_resnet_size(net: &ResNetEe<f32>) -> Result<tinybayes::format::TrainedSize> {
    let convs =
        std::iter::once(&net.stem).chain(net.blocks.iter().flat_map(|b| [&b.conv_a, &b.conv_b]));
    let (mut weights, mut biases) = (0, 0);
    for c in convs {
        weights += c.theta.len();
        biases += c.bias.len();
    }
    for e in &net.exits {
        weights += e.theta.len();
        biases += e.bias.len();
    }
    crate::export::trained_size_from(weights, biases)
}

/// Exports an early-exit ResNet; `priors` (one per exit, summing to 1) go into the exit heads.
/// Returns the spec and a prune report per weight layer (stem, then per block conv a, conv b,
/// exit head).
pub fn export_resnet(
    net: &ResNetEe<f32>,
    priors: &[f64],
    options: ExportOptions,
) -> Result<(ModelSpec, Vec<PruneReport>)> {
    if priors.len() != net.blocks.len() || net.exits.len() != net.blocks.len() {
        bail!(
            "{} blocks, {} exits and {} prior masses do not match",
            net.blocks.len(),
            net.exits.len(),
            priors.len()
        );
    }
    let mut layers = Vec::new();
    let mut reports = Vec::new();
    let (stem, mut shape, report) =
        conv_layer(&net.stem, net.input_shape, options, Activation::Relu)?;
    layers.push(stem);
    reports.push(report);
    let mut block_input = 0;
    for ((block, head), &prior) in net.blocks.iter().zip(&net.exits).zip(priors) {
        let (a, shape_a, report_a) = conv_layer(&block.conv_a, shape, options, Activation::Relu)?;
        let (b, shape_b, report_b) =
            conv_layer(&block.conv_b, shape_a, options, Activation::Identity)?;
        if shape_b != shape {
            bail!("a residual block changes the map from {shape:?} to {shape_b:?}");
        }
        layers.push(a);
        layers.push(b);
        let map = shape.iter().product();
        layers.push(LayerSpec {
            op: LayerOp::ResidualAdd {
                source: block_input,
            },
            inputs: map,
            outputs: map,
            activation: Activation::Relu,
            bias: Vec::new(),
            theta: Vec::new(),
            variance: None,
            storage: StorageChoice::Dense,
            dropout: None,
        });
        block_input = layers.len() - 1;
        let (exit, report_e) = exit_layer(head, prior as f32, options);
        layers.push(exit);
        reports.extend([report_a, report_b, report_e]);
        shape = shape_b;
    }
    if reports.iter().all(|r| r.surviving_weights == 0) {
        bail!("every weight was pruned (raise --threshold: weights with log alpha above it are pruned)");
    }
    let classes = net.classes();
    let trained = trained_resnet_size(net)?;
    Ok((
        ModelSpec {
            input_shape: net.input_shape,
            num_classes: classes,
            input_scale: 1.0 / 255.0,
            input_offset: 0.0,
            layers,
            trained: Some(trained),
            channel_norm: None,
        },
        reports,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::exits::DepthPrior;
    use crate::train::resnet::ResNetSpec;
    use ndarray::Array2;
    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro128PlusPlus;
    use tinybayes::early_exit::{ExitPrediction, Halting};
    use tinybayes::{Engine, Mode};

    /// A small trained-looking network: random means, log variances spread so that some
    /// weights are pruned and others kept.
    fn network() -> ResNetEe<f32> {
        let spec = ResNetSpec {
            input_shape: [1, 8, 8],
            channels: 3,
            blocks: 3,
            stem_kernel: 2,
            stem_stride: 2,
            stem_padding: 0,
            classes: 4,
        };
        let mut net = ResNetEe::<f32>::build(&spec, 5, -10.0, 3.0, DepthPrior::new(0.4).unwrap());
        let mut k = 0u32;
        let mut spread = |a: &mut [f32]| {
            for v in a {
                k = k.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *v = -6.0 + 8.0 * ((k >> 8) % 1000) as f32 / 1000.0;
            }
        };
        spread(net.stem.log_sigma2.as_slice_mut().unwrap());
        for b in &mut net.blocks {
            spread(b.conv_a.log_sigma2.as_slice_mut().unwrap());
            spread(b.conv_b.log_sigma2.as_slice_mut().unwrap());
        }
        for (i, e) in net.exits.iter_mut().enumerate() {
            e.bias
                .iter_mut()
                .enumerate()
                .for_each(|(c, b)| *b = 0.1 * (c + i) as f32);
        }
        net
    }

    #[test]
    fn exported_exits_match_the_trainer_and_pruning_is_counted() {
        let net = network();
        let priors = net.prior.probabilities(net.depth());
        let options = ExportOptions {
            threshold: net.prune_threshold as f32,
            gaussian: true,
        };
        let (spec, reports) = export_resnet(&net, &priors, options).unwrap();
        assert_eq!(reports.len(), 1 + 3 * 3);
        let pruned = reports
            .iter()
            .any(|r| r.surviving_weights < r.trained_weights);
        assert!(pruned, "the spread of log variances prunes some weights");
        let buffer = spec.to_buffer().unwrap();
        let model = buffer.model().unwrap();
        assert_eq!(model.exit_count(), 3);
        let stored: Vec<f32> = model.exit_priors().collect();
        for (a, b) in stored.iter().zip(&priors) {
            assert!((*a as f64 - b).abs() < 1e-6);
        }

        let mut rng = Xoshiro128PlusPlus::seed_from_u64(3);
        let images: Vec<Vec<u8>> = (0..6)
            .map(|_| {
                (0..64)
                    .map(|_| (rand_core::RngCore::next_u32(&mut rng) >> 24) as u8)
                    .collect()
            })
            .collect();
        let x = Array2::from_shape_fn((6, 64), |(i, j)| images[i][j] as f32 / 255.0);
        let want = net.exit_probabilities(&x);
        let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, 1).workspace_len()];
        let mut engine = Engine::<1>::new(&model, &mut ws).unwrap();
        for (i, raw) in images.iter().enumerate() {
            let got: ExitPrediction<4> = engine
                .predict_u8_early_exit(raw, Mode::MeanWeights, Halting::All, &mut rng)
                .unwrap();
            for (e, summary) in got.exits.iter().enumerate() {
                let p = want[e].row(i);
                let best = p.iter().cloned().fold(f32::MIN, f32::max);
                assert!(
                    (summary.confidence - best).abs() < 1e-4,
                    "image {i} exit {e}: device {} trainer {best}",
                    summary.confidence
                );
            }
        }
    }
}
