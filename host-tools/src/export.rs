//! From a trained network to a flash table: prune weights whose log alpha exceeds the
//! threshold, remove dead hidden units and channels exactly, and write the survivors with the
//! core writer.
//!
//! A hidden unit (or convolution channel) is removed when nothing it computes can reach the
//! output:
//! - it has no surviving outgoing weight in the next weighted layer (through any pooling and
//!   flattening in between), or
//! - it has no surviving incoming weight and its constant output `relu(bias)` is zero.
//!
//! A unit with no incoming weight but a positive bias is kept: its constant output still
//! multiplies *random* outgoing weights, so folding it into the next bias would drop variance.
//! Removal repeats until nothing changes, since removing one unit can orphan others.

use anyhow::{bail, Result};
use ndarray::{Array1, Array2, Axis};
use tinybayes::format::{window_output, Activation, TrainedSize};
use tinybayes::writer::{LayerOp, LayerSpec, ModelSpec, StorageChoice};

use crate::train::conv::ConvGeom;
use crate::train::{Network, TrainedLayer};

/// How to export.
#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    /// Weights with log alpha above this are pruned (3.0 in the paper).
    pub threshold: f32,
    /// Keep the Gaussian posterior of the survivors (σ² = exp(log σ²)); `false` writes the
    /// deterministic mean network only (smaller, no Monte Carlo uncertainty).
    pub gaussian: bool,
}

/// What pruning removed in one weighted layer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PruneReport {
    /// Units (linear) or channels (convolution) of the trained layer.
    pub trained_outputs: usize,
    /// Units or channels kept in the exported layer.
    pub kept_outputs: usize,
    /// Weights of the trained layer.
    pub trained_weights: usize,
    /// Weights with log alpha at or below the threshold, before dead units were removed.
    pub surviving_weights: usize,
}

/// A convolution's kernel (height, width), stride and zero padding.
#[derive(Clone, Copy, Debug)]
struct ConvShape {
    kernel: [usize; 2],
    stride: usize,
    padding: usize,
}

impl ConvShape {
    fn of<T>(theta: &ndarray::Array4<T>, geom: ConvGeom) -> Self {
        let (_, _, kh, kw) = theta.dim();
        ConvShape {
            kernel: [kh, kw],
            stride: geom.stride,
            padding: geom.padding,
        }
    }

    /// Output (height, width) over an input of `shape`, if the kernel fits.
    fn output(self, shape: [usize; 3]) -> Option<(usize, usize)> {
        Some((
            window_output(shape[1], self.kernel[0], self.stride, self.padding)?,
            window_output(shape[2], self.kernel[1], self.stride, self.padding)?,
        ))
    }
}

/// A weighted layer being pruned, as a matrix with one row per output unit or channel and,
/// for a convolution, `in_channels * kh * kw` columns.
struct Work {
    conv: Option<ConvShape>,
    theta: Array2<f32>,
    variance: Array2<f32>,
    keep: Array2<bool>,
    bias: Array1<f32>,
    relu: bool,
    trained_outputs: usize,
    trained_weights: usize,
    surviving: usize,
    /// An MC dropout layer's drop probability (its inputs'); `None` for VD layers.
    dropout: Option<f64>,
}

impl Work {
    fn new(
        conv: Option<ConvShape>,
        theta: Array2<f32>,
        log_sigma2: Array2<f32>,
        bias: &Array1<f32>,
        relu: bool,
        threshold: f32,
    ) -> Self {
        let keep = ndarray::Zip::from(&theta)
            .and(&log_sigma2)
            .map_collect(|&t, &l| crate::train::vd::log_alpha(t, l) <= threshold);
        Work {
            conv,
            surviving: keep.iter().filter(|&&k| k).count(),
            trained_outputs: theta.nrows(),
            trained_weights: theta.len(),
            variance: log_sigma2.mapv(f32::exp),
            theta,
            keep,
            bias: bias.clone(),
            relu,
            dropout: None,
        }
    }

    /// An MC dropout layer: deterministic weights, none pruned, its inputs dropped with
    /// probability `p` (0: a deterministic layer, also of a convolution `conv`).
    fn dropout(
        conv: Option<ConvShape>,
        theta: &Array2<f32>,
        bias: &Array1<f32>,
        relu: bool,
        p: f64,
    ) -> Self {
        Work {
            conv,
            surviving: theta.len(),
            trained_outputs: theta.nrows(),
            trained_weights: theta.len(),
            variance: Array2::zeros(theta.dim()),
            keep: Array2::from_elem(theta.dim(), true),
            theta: theta.clone(),
            bias: bias.clone(),
            relu,
            dropout: Some(p),
        }
    }

    fn drop_output(&mut self, unit: usize) {
        let rows: Vec<usize> = (0..self.theta.nrows()).filter(|&r| r != unit).collect();
        self.theta = self.theta.select(Axis(0), &rows);
        self.variance = self.variance.select(Axis(0), &rows);
        self.keep = self.keep.select(Axis(0), &rows);
        self.bias = self.bias.select(Axis(0), &rows);
    }

    /// Drops input `unit`, which spans `group` consecutive columns.
    fn drop_input(&mut self, unit: usize, group: usize) {
        let cols: Vec<usize> = (0..self.theta.ncols())
            .filter(|&c| c / group != unit)
            .collect();
        self.theta = self.theta.select(Axis(1), &cols);
        self.variance = self.variance.select(Axis(1), &cols);
        self.keep = self.keep.select(Axis(1), &cols);
    }
}

/// One step of the exported stack.
enum Item {
    Weighted(Box<Work>),
    Pool {
        window: [usize; 2],
        stride: usize,
    },
    /// Global average pooling: one value per channel.
    Gap,
}

/// Input shape of every item, walking from the network input with the current unit counts.
fn shapes(items: &[Item], input: [usize; 3]) -> Result<Vec<[usize; 3]>> {
    let mut shape = input;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(shape);
        shape = match item {
            Item::Weighted(w) => match w.conv {
                None => [w.theta.nrows(), 1, 1],
                Some(k) => match k.output(shape) {
                    Some((h, wd)) => [w.theta.nrows(), h, wd],
                    None => bail!(
                        "a {}x{} kernel (stride {}, padding {}) does not fit a {:?} input",
                        k.kernel[0],
                        k.kernel[1],
                        k.stride,
                        k.padding,
                        shape
                    ),
                },
            },
            Item::Pool { window, stride } => {
                let h = window_output(shape[1], window[0], *stride, 0);
                let wd = window_output(shape[2], window[1], *stride, 0);
                match (h, wd) {
                    (Some(h), Some(wd)) => [shape[0], h, wd],
                    _ => bail!(
                        "a {}x{} pool does not fit a {:?} input",
                        window[0],
                        window[1],
                        shape
                    ),
                }
            }
            Item::Gap => [shape[0], 1, 1],
        };
    }
    Ok(out)
}

/// Finds one removable unit of weighted item `p`, whose next weighted item is `c`, reading
/// `group` columns of `c` per unit; returns its index.
fn dead_unit(producer: &Work, consumer: &Work, group: usize) -> Option<usize> {
    (0..producer.theta.nrows()).find(|&j| {
        let cols = j * group..(j + 1) * group;
        let outgoing = consumer
            .keep
            .slice(ndarray::s![.., cols])
            .iter()
            .any(|&k| k);
        let incoming = producer.keep.row(j).iter().any(|&k| k);
        let constant_zero = producer.relu && producer.bias[j] <= 0.0;
        !outgoing || (!incoming && constant_zero)
    })
}

/// Removes dead units and channels until none is left.
fn remove_dead_units(items: &mut [Item], input: [usize; 3]) -> Result<()> {
    let weighted: Vec<usize> = (0..items.len())
        .filter(|&i| matches!(items[i], Item::Weighted(_)))
        .collect();
    loop {
        let mut changed = false;
        for pair in weighted.windows(2) {
            let (p, c) = (pair[0], pair[1]);
            loop {
                let shape = shapes(items, input)?;
                let (head, tail) = items.split_at_mut(c);
                let (Item::Weighted(producer), Item::Weighted(consumer)) =
                    (&mut head[p], &mut tail[0])
                else {
                    unreachable!("indices of weighted items");
                };
                // A convolution reads kh*kw columns per input channel; a linear layer reads the
                // whole (pooled) map of a channel: H*W columns.
                let group = match consumer.conv {
                    Some(k) => k.kernel[0] * k.kernel[1],
                    None => shape[c][1] * shape[c][2],
                };
                let Some(j) = dead_unit(producer, consumer, group) else {
                    break;
                };
                producer.drop_output(j);
                consumer.drop_input(j, group);
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
    }
}

/// The dense size of the network as trained (before pruning and dead-unit removal), which the
/// exported file records.
pub fn trained_size(network: &Network) -> Result<TrainedSize> {
    let (mut weights, mut biases) = (0usize, 0usize);
    for layer in &network.layers {
        match layer {
            TrainedLayer::Linear { theta, bias, .. } => {
                weights += theta.len();
                biases += bias.len();
            }
            TrainedLayer::Conv2d { theta, bias, .. }
            | TrainedLayer::PlainConv { theta, bias, .. } => {
                weights += theta.len();
                biases += bias.len();
            }
            TrainedLayer::DropoutLinear { theta, bias, .. } => {
                weights += theta.len();
                biases += bias.len();
            }
            TrainedLayer::MaxPool2
            | TrainedLayer::MaxPool { .. }
            | TrainedLayer::Flatten
            | TrainedLayer::GlobalAvgPool => {}
        }
    }
    trained_size_from(weights, biases)
}

/// A [`TrainedSize`] from weight and bias counts; an error if they do not fit the format.
pub fn trained_size_from(weights: usize, biases: usize) -> Result<TrainedSize> {
    let too_large =
        || anyhow::anyhow!("the trained network is too large to record ({weights} weights)");
    Ok(TrainedSize {
        dense_weights: u32::try_from(weights).map_err(|_| too_large())?,
        dense_params: weights
            .checked_add(biases)
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(too_large)?,
    })
}

/// Prunes and converts a network; returns the model spec and a report per weighted layer.
pub fn export(network: &Network, options: ExportOptions) -> Result<(ModelSpec, Vec<PruneReport>)> {
    // A convolution's kernels as rows of `in_channels * kh * kw` columns.
    let as_rows = |a: &ndarray::Array4<f32>| {
        let (co, ci, kh, kw) = a.dim();
        a.to_shape((co, ci * kh * kw)).map(|v| v.to_owned())
    };
    let mut items = Vec::new();
    for layer in &network.layers {
        match layer {
            TrainedLayer::Linear {
                theta,
                log_sigma2,
                bias,
                relu,
            } => items.push(Item::Weighted(Box::new(Work::new(
                None,
                theta.clone(),
                log_sigma2.clone(),
                bias,
                *relu,
                options.threshold,
            )))),
            TrainedLayer::Conv2d {
                theta,
                log_sigma2,
                bias,
                relu,
                geom,
            } => {
                items.push(Item::Weighted(Box::new(Work::new(
                    Some(ConvShape::of(theta, *geom)),
                    as_rows(theta)?,
                    as_rows(log_sigma2)?,
                    bias,
                    *relu,
                    options.threshold,
                ))));
            }
            TrainedLayer::DropoutLinear {
                theta,
                bias,
                relu,
                p,
            } => items.push(Item::Weighted(Box::new(Work::dropout(
                None, theta, bias, *relu, *p,
            )))),
            TrainedLayer::PlainConv {
                theta,
                bias,
                relu,
                geom,
            } => items.push(Item::Weighted(Box::new(Work::dropout(
                Some(ConvShape::of(theta, *geom)),
                &as_rows(theta)?,
                bias,
                *relu,
                0.0,
            )))),
            TrainedLayer::MaxPool2 => items.push(Item::Pool {
                window: [2, 2],
                stride: 2,
            }),
            TrainedLayer::MaxPool { window, stride } => items.push(Item::Pool {
                window: *window,
                stride: *stride,
            }),
            TrainedLayer::GlobalAvgPool => items.push(Item::Gap),
            // Linear layers read their input flattened, channel-major: nothing to store.
            TrainedLayer::Flatten => {}
        }
    }
    if !items.iter().any(|i| matches!(i, Item::Weighted(_))) {
        bail!("the network has no layer to export");
    }
    remove_dead_units(&mut items, network.input_shape)?;
    for (l, item) in items.iter().enumerate() {
        if let Item::Weighted(w) = item {
            if w.theta.nrows() == 0 {
                bail!(
                    "every unit of layer {l} was pruned: the network predicts a constant (raise \
                     --threshold: weights with log alpha above it are pruned)"
                );
            }
        }
    }

    let shape = shapes(&items, network.input_shape)?;
    let last = items.len() - 1;
    let mut reports = Vec::new();
    let mut specs = Vec::new();
    for (l, item) in items.into_iter().enumerate() {
        let input = shape[l];
        let w = match item {
            Item::Pool { window, stride } => {
                let pool = LayerSpec::max_pool(input, window, stride)
                    .ok_or_else(|| anyhow::anyhow!("pooling window does not fit {input:?}"))?;
                specs.push(pool);
                continue;
            }
            Item::Gap => {
                specs.push(LayerSpec::global_avg_pool(input));
                continue;
            }
            Item::Weighted(w) => w,
        };
        reports.push(PruneReport {
            trained_outputs: w.trained_outputs,
            kept_outputs: w.theta.nrows(),
            trained_weights: w.trained_weights,
            surviving_weights: w.surviving,
        });
        let masked = |a: &Array2<f32>| -> Vec<f32> {
            ndarray::Zip::from(a)
                .and(&w.keep)
                .map_collect(|&v, &k| if k { v } else { 0.0 })
                .iter()
                .copied()
                .collect()
        };
        let mut theta = masked(&w.theta);
        let variance = masked(&w.variance);
        // MC dropout: the file stores the weights a sample applies to its kept inputs, the
        // trained ones divided by the keep probability (inverted dropout folded in), and the
        // drop probability; the mean network alone (`gaussian` false) keeps them as trained.
        let dropout = match w.dropout {
            Some(p) if p > 0.0 && options.gaussian => {
                let q = (1.0 - p) as f32;
                theta.iter_mut().for_each(|t| *t /= q);
                Some(p as f32)
            }
            _ => None,
        };
        let gaussian = options.gaussian && w.dropout.is_none();
        let outputs = match w.conv {
            None => w.theta.nrows(),
            Some(k) => {
                let (h, wd) = k.output(input).unwrap_or((0, 0));
                w.theta.nrows() * h * wd
            }
        };
        specs.push(LayerSpec {
            op: match w.conv {
                None => LayerOp::Linear,
                Some(k) => LayerOp::Conv2d {
                    out_channels: w.theta.nrows(),
                    kernel: k.kernel,
                    stride: k.stride,
                    padding: k.padding,
                },
            },
            inputs: input.iter().product(),
            outputs,
            activation: if w.relu && l != last {
                Activation::Relu
            } else {
                Activation::Identity
            },
            bias: w.bias.to_vec(),
            theta,
            variance: gaussian.then_some(variance),
            // A linear first layer reads the raw image: stored by input, its blank pixels
            // are skipped whole (about two thirds of its weights on MNIST).
            storage: if l == 0 && w.conv.is_none() {
                StorageChoice::SparseByInput
            } else {
                StorageChoice::Smallest
            },
            dropout,
        });
    }
    let classes = specs.last().map(|s| s.outputs).unwrap_or(0);
    Ok((
        ModelSpec {
            input_shape: network.input_shape,
            num_classes: classes,
            input_scale: 1.0 / 255.0,
            input_offset: 0.0,
            layers: specs,
            trained: Some(trained_size(network)?),
            channel_norm: None,
        },
        reports,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Arch;
    use ndarray::array;

    /// A 3-4-3-2 network whose pruning pattern is chosen by hand.
    fn network() -> Network {
        // log sigma^2 = -10 keeps a weight (log alpha ~ -10 - ln theta^2); +10 prunes it.
        let keep = -10.0f32;
        let prune = 10.0f32;
        let l0_theta = Array2::from_elem((4, 3), 0.5f32);
        // Unit 0: normal. Unit 1: no inputs, bias -1 (constant 0: dead). Unit 2: no inputs,
        // bias +1 (constant, random outgoing weights: kept). Unit 3: feeds only hidden-2 unit
        // 2, which has no outgoing weight: both die, in cascade.
        let l0_ls2 = array![
            [keep, keep, prune],
            [prune, prune, prune],
            [prune, prune, prune],
            [keep, prune, prune]
        ];
        let l1_theta = Array2::from_elem((3, 4), 0.25f32);
        let l1_ls2 = array![
            [keep, keep, keep, prune],
            [keep, prune, keep, prune],
            [prune, prune, prune, keep]
        ];
        let l2_theta = Array2::from_elem((2, 3), 1.0f32);
        let l2_ls2 = array![[keep, keep, prune], [keep, prune, prune]];
        Network {
            arch: Arch::Lenet300,
            input_shape: [1, 1, 3],
            prune_threshold: 3.0,
            layers: vec![
                TrainedLayer::Linear {
                    theta: l0_theta,
                    log_sigma2: l0_ls2,
                    bias: array![0.1, -1.0, 1.0, 0.2],
                    relu: true,
                },
                TrainedLayer::Linear {
                    theta: l1_theta,
                    log_sigma2: l1_ls2,
                    bias: array![0.0, 0.0, -0.5],
                    relu: true,
                },
                TrainedLayer::Linear {
                    theta: l2_theta,
                    log_sigma2: l2_ls2,
                    bias: array![0.0, 0.0],
                    relu: false,
                },
            ],
        }
    }

    #[test]
    fn dead_units_are_removed_and_live_ones_kept() {
        let options = ExportOptions {
            threshold: 3.0,
            gaussian: true,
        };
        let (spec, reports) = export(&network(), options).unwrap();
        // Hidden-2 unit 2 has no outgoing weight: it goes, then hidden-1 unit 3 (which fed
        // only it) goes too; hidden-1 unit 1 is constant zero. Units 0 and 2 stay.
        assert_eq!(reports[1].kept_outputs, 2);
        assert_eq!(reports[0].kept_outputs, 2);
        assert_eq!(reports[2].kept_outputs, 2);
        assert_eq!(spec.layers[0].outputs, 2);
        assert_eq!(spec.layers[1].inputs, 2);
        assert_eq!(spec.layers[2].inputs, 2);
        assert_eq!(spec.layers[0].bias, vec![0.1, 1.0]);
        // Survivors carry variance exp(-10); pruned weights are zero in both.
        let var = spec.layers[0].variance.as_ref().unwrap();
        assert!((var[0] - (-10.0f32).exp()).abs() < 1e-9);
        assert_eq!(spec.layers[0].theta[2], 0.0);
        assert_eq!(var[2], 0.0);
        assert_eq!(spec.layers[2].activation, Activation::Identity);
        spec.to_buffer().unwrap();
    }

    #[test]
    fn removing_dead_units_does_not_change_the_prediction() {
        use rand_core::SeedableRng;
        use tinybayes::{Engine, Mode, Prediction};
        // Compare against the same network exported with only the masked weights zeroed and no
        // unit removed: here the "no removal" reference is the dense mask applied by hand.
        let net = network();
        let options = ExportOptions {
            threshold: 3.0,
            gaussian: false,
        };
        let (spec, _) = export(&net, options).unwrap();
        let buffer = spec.to_buffer().unwrap();
        let model = buffer.model().unwrap();
        let x = [0.3f32, 0.7, 0.2];
        // Reference forward pass with pruning masks, all units present.
        let mut a = x.to_vec();
        for (l, layer) in net.layers.iter().enumerate() {
            let TrainedLayer::Linear {
                theta, bias, relu, ..
            } = layer
            else {
                unreachable!()
            };
            let la = layer
                .log_alpha()
                .unwrap()
                .into_dimensionality::<ndarray::Ix2>()
                .unwrap();
            let mut out = vec![0.0f32; theta.nrows()];
            for j in 0..theta.nrows() {
                let mut s = bias[j];
                for i in 0..theta.ncols() {
                    if la[[j, i]] <= 3.0 {
                        s += theta[[j, i]] * a[i];
                    }
                }
                out[j] = if *relu && l < 2 { s.max(0.0) } else { s };
            }
            a = out;
        }
        let max = a.iter().cloned().fold(f32::MIN, f32::max);
        let z: f32 = a.iter().map(|v| (v - max).exp()).sum();
        let mut ws = vec![0.0; tinybayes::Plan::new(&model, 1).workspace_len()];
        let mut engine = Engine::<1>::new(&model, &mut ws).unwrap();
        let mut rng = rand_xoshiro::Xoshiro128PlusPlus::seed_from_u64(0);
        let p: Prediction<2> = engine.predict(&x, Mode::MeanWeights, &mut rng).unwrap();
        for (k, v) in a.iter().enumerate() {
            assert!((p.probabilities[k] - (v - max).exp() / z).abs() < 1e-6);
        }
    }

    #[test]
    fn pruning_everything_is_an_error() {
        let options = ExportOptions {
            threshold: -100.0,
            gaussian: true,
        };
        let err = export(&network(), options).unwrap_err().to_string();
        assert!(err.contains("pruned"), "{err}");
        // Weights with log alpha above the threshold are pruned: raising it keeps more.
        assert!(err.contains("raise --threshold"), "{err}");
        assert!(!err.contains("lower"), "{err}");
    }

    /// The engine's mean-weights probabilities on a 28x28 byte image `pixels` equal the
    /// trainer's own forward pass (pruned mean weights) to 1e-4.
    fn assert_engine_matches_trainer(net: &Network, model: &tinybayes::Model<'_>, pixels: &[u8]) {
        use rand_core::SeedableRng;
        use tinybayes::{Engine, Mode, Prediction};
        let x = ndarray::Array2::from_shape_vec(
            (1, 784),
            pixels.iter().map(|&p| p as f32 * (1.0 / 255.0)).collect(),
        )
        .unwrap();
        let reference = net.predict_deterministic(&x);
        let mut ws = vec![0.0; tinybayes::Plan::new(model, 1).workspace_len()];
        let mut engine = Engine::<1>::new(model, &mut ws).unwrap();
        let mut rng = rand_xoshiro::Xoshiro128PlusPlus::seed_from_u64(0);
        let p: Prediction<10> = engine
            .predict_u8(pixels, Mode::MeanWeights, &mut rng)
            .unwrap();
        for k in 0..10 {
            assert!(
                (p.probabilities[k] - reference[[0, k]]).abs() < 1e-4,
                "class {k}: {} vs {}",
                p.probabilities[k],
                reference[[0, k]]
            );
        }
    }

    #[test]
    fn lenet5_export_removes_dead_channels_and_matches_the_trainer() {
        let mut net = Arch::Lenet5.build::<f32>(3, -10.0, 3.0);
        // Kill conv1 channel 4 (all its taps pruned, bias <= 0) and every fc1 weight reading
        // conv2 channel 7 (its pooled 4x4 map is columns 7*16..8*16 of fc1).
        if let TrainedLayer::Conv2d {
            log_sigma2, bias, ..
        } = &mut net.layers[0]
        {
            log_sigma2.slice_mut(ndarray::s![4, .., .., ..]).fill(10.0);
            bias[4] = -0.1;
        }
        let fc1 = net
            .layers
            .iter()
            .position(|l| matches!(l, TrainedLayer::Linear { .. }))
            .unwrap();
        if let TrainedLayer::Linear { log_sigma2, .. } = &mut net.layers[fc1] {
            log_sigma2
                .slice_mut(ndarray::s![.., 7 * 16..8 * 16])
                .fill(10.0);
        }
        let options = ExportOptions {
            threshold: 3.0,
            gaussian: true,
        };
        let (spec, reports) = export(&net, options).unwrap();
        assert_eq!(reports[0].kept_outputs, 19, "conv1 channel 4 is dead");
        assert_eq!(reports[1].kept_outputs, 49, "conv2 channel 7 is dead");
        let buffer = spec.to_buffer().unwrap();
        let model = buffer.model().unwrap();
        // The trainer's own forward pass (pruned mean weights) is the reference.
        let pixels: Vec<u8> = (0..784)
            .map(|i| ((i * 37 + i / 28 * 11) % 256) as u8)
            .collect();
        assert_engine_matches_trainer(&net, &model, &pixels);
    }

    /// A `[[layers]]` network with every layer kind the lists add (a strided, padded VD
    /// convolution, a non-square max pool, a deterministic convolution, an MC dropout layer)
    /// exports to a file whose engine gives the trainer's mean-weight probabilities.
    #[test]
    fn layer_list_export_matches_the_trainer() {
        use crate::train::schema::{build, Built, LayerConfig};
        #[derive(serde::Deserialize)]
        struct List {
            layers: Vec<LayerConfig>,
        }
        let list: List = toml::from_str(
            r#"
            [[layers]]
            kind = "conv"
            outputs = 6
            kernel = [5, 3]
            stride = 2
            padding = 1
            [[layers]]
            kind = "pool"
            kernel = [2, 1]
            [[layers]]
            kind = "conv"
            outputs = 5
            kernel = 3
            posterior = "deterministic"
            [[layers]]
            kind = "linear"
            outputs = 12
            posterior = "dropout"
            p = 0.3
            [[layers]]
            kind = "linear"
            "#,
        )
        .unwrap();
        let Built::Sequential(mut net) =
            build::<f32>(&list.layers, [1, 28, 28], 10, 4, -10.0, 3.0).unwrap()
        else {
            panic!("not sequential");
        };
        // Non-zero biases, so padding (zeros before the bias) is exercised.
        for layer in &mut net.layers {
            if let TrainedLayer::Conv2d { bias, .. } | TrainedLayer::PlainConv { bias, .. } = layer
            {
                bias.iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b = 0.05 * i as f32 - 0.1);
            }
        }
        let (spec, _) = export(
            &net,
            ExportOptions {
                threshold: 3.0,
                gaussian: true,
            },
        )
        .unwrap();
        let buffer = spec.to_buffer().unwrap();
        let model = buffer.model().unwrap();
        let version = u16::from_le_bytes([buffer.as_bytes()[4], buffer.as_bytes()[5]]);
        assert_eq!(version, tinybayes::format::POOL_WINDOW_FORMAT_VERSION);
        let pixels: Vec<u8> = (0..784)
            .map(|i| ((i * 53 + i / 28 * 7) % 256) as u8)
            .collect();
        assert_engine_matches_trainer(&net, &model, &pixels);
    }
}
