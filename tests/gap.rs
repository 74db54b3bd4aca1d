//! Global average pooling as a layer of its own (format version 10, kind 12) against
//! independent computations: mean weights against a dense f64 network, Monte Carlo per
//! sample (chunk independence, and the sampled distribution against an f64 simulation),
//! moment propagation against the exact Gaussian moments of a network whose logits are
//! Gaussian, fixed point against the integer reference, the version rules, and bad records.

mod common;

use core::num::NonZeroU16;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::{Xoshiro128PlusPlus, Xoshiro256PlusPlus};
use tinybayes::fixed::quantize::{quantize, Calibration};
use tinybayes::fixed::QModel;
use tinybayes::format::{self, Activation, LayerKind, Precision, GAP_FORMAT_VERSION};
use tinybayes::model::Operation;
use tinybayes::writer::{LayerOp, LayerSpec, ModelBuffer, ModelSpec, StorageChoice, WriteError};
use tinybayes::{Engine, Mode, Model, ModelError, Prediction};

const HEADER_LEN: usize = 48;
const RECORD_LEN: usize = 32;

fn uniform(rng: &mut Xoshiro256PlusPlus) -> f32 {
    (rng.next_u32() >> 8) as f32 / 16_777_216.0
}

/// A Gaussian convolution over `shape` (every tap kept), with `activation`.
fn conv(
    rng: &mut Xoshiro256PlusPlus,
    shape: [usize; 3],
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    activation: Activation,
) -> (LayerSpec, [usize; 3]) {
    let h = format::window_output(shape[1], kernel, stride, padding).unwrap();
    let w = format::window_output(shape[2], kernel, stride, padding).unwrap();
    let n = out_channels * shape[0] * kernel * kernel;
    let theta: Vec<f32> = (0..n).map(|_| 2.0 * uniform(rng) - 1.0).collect();
    let variance = theta.iter().map(|t| 0.4 * t * t + 0.02).collect();
    let spec = LayerSpec {
        op: LayerOp::Conv2d {
            out_channels,
            kernel: [kernel, kernel],
            stride,
            padding,
        },
        inputs: shape.iter().product(),
        outputs: out_channels * h * w,
        activation,
        bias: (0..out_channels)
            .map(|_| 0.2 * uniform(rng) - 0.1)
            .collect(),
        theta,
        variance: Some(variance),
        storage: StorageChoice::Sparse,
        dropout: None,
    };
    (spec, [out_channels, h, w])
}

/// A dense linear layer to `outputs` logits; Gaussian when `gaussian`.
fn linear(
    rng: &mut Xoshiro256PlusPlus,
    inputs: usize,
    outputs: usize,
    gaussian: bool,
) -> LayerSpec {
    let theta: Vec<f32> = (0..inputs * outputs)
        .map(|_| 4.0 * uniform(rng) - 2.0)
        .collect();
    LayerSpec {
        op: LayerOp::Linear,
        inputs,
        outputs,
        activation: Activation::Identity,
        bias: (0..outputs).map(|_| 0.2 * uniform(rng) - 0.1).collect(),
        variance: gaussian.then(|| theta.iter().map(|t| 0.3 * t * t).collect()),
        theta,
        storage: StorageChoice::Dense,
        dropout: None,
    }
}

/// conv -> (ReLU) -> gap -> linear over `shape`.
fn gap_net(
    seed: u64,
    shape: [usize; 3],
    conv_activation: Activation,
    head_gaussian: bool,
) -> ModelSpec {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let (c, map) = conv(&mut rng, shape, 3, 3, 1, 1, conv_activation);
    let head = linear(&mut rng, map[0], 4, head_gaussian);
    ModelSpec {
        input_shape: shape,
        num_classes: 4,
        input_scale: 1.0 / 255.0,
        input_offset: 0.0,
        layers: vec![c, LayerSpec::global_avg_pool(map), head],
        trained: None,
        channel_norm: None,
    }
}

/// Dense f64 convolution with zero padding (pre-activation), `square`: Σ w x² without the
/// bias (the variance path of local reparameterization).
fn conv_f64(x: &[f64], shape: [usize; 3], l: &LayerSpec, w: &[f32], square: bool) -> Vec<f64> {
    let LayerOp::Conv2d {
        out_channels,
        kernel: [kh, kw],
        stride,
        padding,
    } = l.op
    else {
        panic!("not a convolution")
    };
    let [c, h, wd] = shape;
    let oh = format::window_output(h, kh, stride, padding).unwrap();
    let ow = format::window_output(wd, kw, stride, padding).unwrap();
    let mut out = vec![0.0; out_channels * oh * ow];
    for co in 0..out_channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = if square { 0.0 } else { l.bias[co] as f64 };
                for ci in 0..c {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * stride + ky) as isize - padding as isize;
                            let ix = (ox * stride + kx) as isize - padding as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                continue;
                            }
                            let xv = x[(ci * h + iy as usize) * wd + ix as usize];
                            let wv = w[((co * c + ci) * kh + ky) * kw + kx] as f64;
                            s += if square { wv * xv * xv } else { wv * xv };
                        }
                    }
                }
                out[(co * oh + oy) * ow + ox] = s;
            }
        }
    }
    out
}

/// The per-channel mean of a `[C, H, W]` map, in f64.
fn gap_f64(x: &[f64], channels: usize) -> Vec<f64> {
    let area = x.len() / channels;
    (0..channels)
        .map(|c| x[c * area..(c + 1) * area].iter().sum::<f64>() / area as f64)
        .collect()
}

fn linear_f64(x: &[f64], l: &LayerSpec) -> Vec<f64> {
    (0..l.outputs)
        .map(|j| {
            l.bias[j] as f64
                + (0..l.inputs)
                    .map(|i| l.theta[j * l.inputs + i] as f64 * x[i])
                    .sum::<f64>()
        })
        .collect()
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = z.iter().map(|v| (v - max).exp()).sum();
    z.iter().map(|v| (v - max).exp() / s).collect()
}

fn raw_input(shape: [usize; 3], seed: usize) -> Vec<u8> {
    (0..shape.iter().product::<usize>())
        .map(|i| ((i * 73 + seed * 29 + 11) % 256) as u8)
        .collect()
}

fn normalised(raw: &[u8]) -> Vec<f64> {
    raw.iter()
        .map(|&p| (p as f32 * (1.0 / 255.0)) as f64)
        .collect()
}

fn version(bytes: &[u8]) -> u16 {
    u16::from_le_bytes([bytes[4], bytes[5]])
}

fn run<const CHUNK: usize>(model: &Model<'_>, raw: &[u8], mode: Mode, seed: u64) -> Prediction<4> {
    let mut ws = vec![0.0f32; tinybayes::Plan::new(model, CHUNK).workspace_len()];
    let mut engine = Engine::<CHUNK>::new(model, &mut ws).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    engine.predict_u8(raw, mode, &mut rng).unwrap()
}

fn mc(samples: u16) -> Mode {
    Mode::MonteCarlo {
        samples: NonZeroU16::new(samples).unwrap(),
    }
}

/// The layer reads back as `GlobalAvgPool` of the map before it, `[C, H, W]` -> `[C, 1, 1]`
/// with no parameters, in a version-10 file; the mean-weights network matches the dense f64
/// reference over several map shapes (non-square and 1-D maps included).
#[test]
fn mean_weights_match_the_dense_reference() {
    for (seed, shape) in [[1, 6, 6], [2, 5, 7], [3, 9, 1], [1, 1, 4]]
        .into_iter()
        .enumerate()
    {
        let spec = gap_net(seed as u64, shape, Activation::Relu, true);
        let buffer = spec.to_buffer().unwrap();
        assert_eq!(version(buffer.as_bytes()), GAP_FORMAT_VERSION);
        let model = buffer.model().unwrap();
        let pool = &model.layers()[1];
        let map = [3, shape[1], shape[2]];
        assert_eq!(pool.operation(), Operation::GlobalAvgPool { map });
        assert_eq!(pool.kind(), LayerKind::GlobalAvgPool);
        assert_eq!(pool.kind().name(), "global-avgpool");
        assert_eq!(
            (pool.inputs(), pool.outputs()),
            (3 * shape[1] * shape[2], 3)
        );
        assert_eq!((pool.nnz(), pool.macs(), pool.dense_weights()), (0, 0, 0));
        assert!(pool.bias().is_empty() && pool.payload_bytes() == 0);

        let raw = raw_input(shape, seed);
        let hidden: Vec<f64> = conv_f64(
            &normalised(&raw),
            shape,
            &spec.layers[0],
            &spec.layers[0].theta,
            false,
        )
        .into_iter()
        .map(|v| v.max(0.0))
        .collect();
        let reference = softmax(&linear_f64(&gap_f64(&hidden, 3), &spec.layers[2]));
        let p = run::<1>(&model, &raw, Mode::MeanWeights, 0);
        for (a, b) in p.probabilities.iter().zip(&reference) {
            assert!((*a as f64 - b).abs() < 1e-5, "{shape:?}: {a} vs {b}");
        }
    }
}

/// A model read back and written again gives the same bytes (the writer's `from_model`).
#[test]
fn a_gap_model_round_trips_through_its_spec() {
    let spec = gap_net(3, [2, 4, 5], Activation::Relu, true);
    let bytes = spec.to_bytes().unwrap();
    let buffer = ModelBuffer::from_bytes(&bytes);
    let model = buffer.model().unwrap();
    let again = ModelSpec::from_model(&model);
    assert_eq!(again.layers[1], LayerSpec::global_avg_pool([3, 4, 5]));
    assert_eq!(again.to_bytes().unwrap(), bytes);
}

/// Monte Carlo pools every sample on its own: the answer does not depend on how many samples
/// share a pass (a pool mixing the samples of a chunk would change with it), and the noise
/// matters.
#[test]
fn monte_carlo_does_not_depend_on_the_chunk_size() {
    let spec = gap_net(5, [2, 6, 5], Activation::Relu, true);
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let raw = raw_input([2, 6, 5], 1);
    let one = run::<1>(&model, &raw, mc(13), 7);
    assert_eq!(one, run::<4>(&model, &raw, mc(13), 7));
    assert_eq!(one, run::<16>(&model, &raw, mc(13), 7));
    assert!(one.mutual_information > 0.0);
    let mean = run::<4>(&model, &raw, Mode::MeanWeights, 7);
    assert_ne!(one.probabilities, mean.probabilities);
}

fn box_muller(rng: &mut Xoshiro256PlusPlus) -> f64 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The sampled predictive against an f64 simulation of the same network: every conv unit
/// drawn from N(conv(x, θ) + b, conv(x², σ²)), ReLU, each sample's map pooled, then the
/// Gaussian head drawn from its local reparameterization.
#[test]
fn monte_carlo_matches_an_f64_simulation() {
    let shape = [2, 4, 4];
    let spec = gap_net(8, shape, Activation::Relu, true);
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let raw = raw_input(shape, 3);
    let x = normalised(&raw);
    let (c, head) = (&spec.layers[0], &spec.layers[2]);
    let mean = conv_f64(&x, shape, c, &c.theta, false);
    let variance = conv_f64(&x, shape, c, c.variance.as_ref().unwrap(), true);
    let head_var = head.variance.as_ref().unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(99);
    const N: usize = 40_000;
    let mut p_bar = [0.0f64; 4];
    for _ in 0..N {
        let hidden: Vec<f64> = mean
            .iter()
            .zip(&variance)
            .map(|(m, v)| (m + v.sqrt() * box_muller(&mut rng)).max(0.0))
            .collect();
        let pooled = gap_f64(&hidden, 3);
        let logits: Vec<f64> = linear_f64(&pooled, head)
            .into_iter()
            .enumerate()
            .map(|(j, m)| {
                let v: f64 = (0..3)
                    .map(|i| head_var[j * 3 + i] as f64 * pooled[i] * pooled[i])
                    .sum();
                m + v.sqrt() * box_muller(&mut rng)
            })
            .collect();
        for (acc, p) in p_bar.iter_mut().zip(softmax(&logits)) {
            *acc += p / N as f64;
        }
    }
    let p = run::<8>(&model, &raw, mc(20_000), 4);
    let tolerance = 5.0 * 0.5 * (1.0 / 20_000f64 + 1.0 / N as f64).sqrt();
    for (a, b) in p.probabilities.iter().zip(&p_bar) {
        assert!(
            (*a as f64 - b).abs() < tolerance,
            "{a} vs {b} ({tolerance})"
        );
    }
    let mean_net = run::<8>(&model, &raw, Mode::MeanWeights, 4);
    let shift: f32 = p
        .probabilities
        .iter()
        .zip(&mean_net.probabilities)
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(
        shift > 0.01,
        "the noise should move the prediction ({shift})"
    );
}

/// Moment propagation through the pool: with an identity convolution and a deterministic
/// head the logits are exactly Gaussian (independent conv units, as local reparameterization
/// draws them), with mean `θ · mean(m_p) + b` and variance `Σ θ² Σ v_p / (HW)²`; the engine's
/// probit answer equals `softmax(m / sqrt(1 + π v / 8))` of those.
#[test]
fn moments_through_the_pool_are_exact_for_gaussian_units() {
    for seed in 0..3 {
        let shape = [2, 5, 3];
        let spec = gap_net(20 + seed, shape, Activation::Identity, false);
        let buffer = spec.to_buffer().unwrap();
        let model = buffer.model().unwrap();
        let raw = raw_input(shape, seed as usize);
        let x = normalised(&raw);
        let (c, head) = (&spec.layers[0], &spec.layers[2]);
        let mean = conv_f64(&x, shape, c, &c.theta, false);
        let variance = conv_f64(&x, shape, c, c.variance.as_ref().unwrap(), true);
        let area = (shape[1] * shape[2]) as f64;
        let pooled_mean = gap_f64(&mean, 3);
        let pooled_var: Vec<f64> = gap_f64(&variance, 3).iter().map(|v| v / area).collect();
        let logits: Vec<f64> = linear_f64(&pooled_mean, head)
            .into_iter()
            .enumerate()
            .map(|(j, m)| {
                let v: f64 = (0..3)
                    .map(|i| (head.theta[j * 3 + i] as f64).powi(2) * pooled_var[i])
                    .sum();
                m / (1.0 + std::f64::consts::PI * v / 8.0).sqrt()
            })
            .collect();
        let reference = softmax(&logits);
        let p = run::<2>(&model, &raw, Mode::Moments, 0);
        for (a, b) in p.probabilities.iter().zip(&reference) {
            assert!((*a as f64 - b).abs() < 1e-5, "seed {seed}: {a} vs {b}");
        }
        // And the ReLU network's moments stay close to its Monte Carlo answer.
        let relu = gap_net(30 + seed, shape, Activation::Relu, true);
        let buffer = relu.to_buffer().unwrap();
        let model = buffer.model().unwrap();
        let sampled = run::<8>(&model, &raw, mc(2000), 1);
        let moments = run::<8>(&model, &raw, Mode::Moments, 1);
        for (a, b) in moments.probabilities.iter().zip(&sampled.probabilities) {
            assert!((a - b).abs() < 0.04, "seed {seed}: moments {a} vs MC {b}");
        }
    }
}

/// Files without the layer are written in the version their layers need, as before; the
/// kind is refused in a file labelled version 9.
#[test]
fn older_versions_are_kept_and_refuse_the_kind() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let (c, map) = conv(&mut rng, [1, 6, 6], 2, 3, 1, 0, Activation::Relu);
    let plain = ModelSpec {
        input_shape: [1, 6, 6],
        num_classes: 4,
        input_scale: 1.0 / 255.0,
        input_offset: 0.0,
        layers: vec![c, linear(&mut rng, map.iter().product(), 4, true)],
        trained: None,
        channel_norm: None,
    };
    assert_eq!(
        version(&plain.to_bytes().unwrap()),
        format::CONV_FORMAT_VERSION
    );
    let mut bytes = gap_net(1, [1, 6, 6], Activation::Relu, true)
        .to_bytes()
        .unwrap();
    bytes[4..6].copy_from_slice(&9u16.to_le_bytes());
    common::reseal(&mut bytes);
    let buffer = ModelBuffer::from_bytes(&bytes);
    assert_eq!(
        Model::from_bytes(buffer.as_bytes()).map(|_| ()),
        Err(ModelError::UnknownCode {
            layer: 1,
            field: 0,
            code: LayerKind::GlobalAvgPool as u8,
        })
    );
}

/// Every bad pool record gives its typed error (never a panic): a posterior or an activation
/// (`BadGeometry`), outputs other than the channels (`ShapeMismatch`), weights
/// (`BadWeightCount`), a payload (`PayloadLength`), a reserved byte (`ReservedNotZero`).
#[test]
fn bad_pool_records_are_refused_with_typed_errors() {
    let spec = gap_net(2, [2, 4, 4], Activation::Relu, true);
    let valid = spec.to_bytes().unwrap();
    let at = HEADER_LEN + RECORD_LEN; // the pool's record
    let parse = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut b = valid.clone();
        edit(&mut b);
        common::reseal(&mut b);
        let buffer = ModelBuffer::from_bytes(&b);
        Model::from_bytes(buffer.as_bytes()).map(|_| ())
    };
    let set_u32 = |b: &mut Vec<u8>, field: usize, v: u32| {
        b[at + field..at + field + 4].copy_from_slice(&v.to_le_bytes())
    };
    assert_eq!(parse(&|_| {}), Ok(()));
    assert_eq!(
        parse(&|b| b[at + 1] = 1),
        Err(ModelError::BadGeometry { layer: 1 })
    );
    assert_eq!(
        parse(&|b| b[at + 2] = 1),
        Err(ModelError::BadGeometry { layer: 1 })
    );
    assert_eq!(
        parse(&|b| set_u32(b, 8, 4)),
        Err(ModelError::ShapeMismatch {
            layer: 1,
            expected: 3,
            found: 4
        })
    );
    assert_eq!(
        parse(&|b| set_u32(b, 4, 47)),
        Err(ModelError::ShapeMismatch {
            layer: 1,
            expected: 48,
            found: 47
        })
    );
    assert_eq!(
        parse(&|b| set_u32(b, 12, 1)),
        Err(ModelError::BadWeightCount { layer: 1 })
    );
    assert_eq!(
        parse(&|b| set_u32(b, 20, 4)),
        Err(ModelError::PayloadLength {
            layer: 1,
            expected: 0,
            found: 4
        })
    );
    for byte in 24..32 {
        assert_eq!(
            parse(&|b| b[at + byte] = 1),
            // The error names the start of the reserved range.
            Err(ModelError::ReservedNotZero { offset: at + 24 }),
            "byte {byte}"
        );
    }
    // The last layer must be linear: a network ending with the pool is refused.
    let mut ends_pooled = spec.clone();
    ends_pooled.layers.pop();
    ends_pooled.num_classes = 3;
    assert_eq!(
        ends_pooled.to_bytes().map(|_| ()),
        Err(WriteError::Invalid(ModelError::BadOutputLayer))
    );
}

/// q8 and q16: the pool keeps its input's scale and takes the rounded integer mean, so the
/// mean-weights logits equal the integer reference exactly; the file is version 10; Monte
/// Carlo does not depend on the chunk size; and the answers follow f32's.
#[test]
fn fixed_point_pool_matches_the_integer_reference() {
    for (seed, shape) in [[1, 6, 6], [2, 5, 7], [3, 8, 1]].into_iter().enumerate() {
        let spec = gap_net(40 + seed as u64, shape, Activation::Relu, true);
        let f32_buffer = spec.to_buffer().unwrap();
        let f32_model = f32_buffer.model().unwrap();
        let inputs: Vec<Vec<u8>> = (0..16).map(|i| raw_input(shape, i)).collect();
        let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        for precision in [Precision::Q8, Precision::Q16] {
            let q = quantize(&spec, precision, &refs, Calibration::default()).unwrap();
            assert_eq!(q.layers[1].op, LayerOp::GlobalAvgPool);
            let buffer = q.to_buffer().unwrap();
            assert_eq!(version(buffer.as_bytes()), GAP_FORMAT_VERSION);
            let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
            assert_eq!(model.layers()[1].kind(), LayerKind::GlobalAvgPool);
            assert_eq!(
                model.layers()[1].operation(),
                Operation::GlobalAvgPool {
                    map: [3, shape[1], shape[2]]
                }
            );
            for raw in &inputs[..4] {
                common::assert_mean_weights_match_reference(&q, &model, raw, "gap");
                let fixed = common::run_fixed::<4>(&model, raw, Mode::MeanWeights, 0);
                let float = run::<4>(&f32_model, raw, Mode::MeanWeights, 0);
                for (a, b) in fixed.probabilities.iter().zip(&float.probabilities) {
                    let tolerance = if precision == Precision::Q8 {
                        0.05
                    } else {
                        0.01
                    };
                    assert!(
                        (a.to_f32() - b).abs() < tolerance,
                        "{precision:?} {shape:?}: {} vs {b}",
                        a.to_f32()
                    );
                }
            }
            let raw = &inputs[5];
            let one = common::run_fixed::<1>(&model, raw, common::mc(13), 3);
            assert_eq!(one, common::run_fixed::<4>(&model, raw, common::mc(13), 3));
            assert_eq!(one, common::run_fixed::<8>(&model, raw, common::mc(13), 3));
        }
    }
}

/// The fixed-point reader refuses a pool as the last layer (`QuantLayout`), a pool record
/// with a posterior (`BadGeometry`), and the kind in a version-9 fixed-point file.
#[test]
fn bad_fixed_point_pool_records_are_refused() {
    let spec = gap_net(50, [2, 4, 4], Activation::Relu, true);
    let inputs: Vec<Vec<u8>> = (0..8).map(|i| raw_input([2, 4, 4], i)).collect();
    let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let q = quantize(&spec, Precision::Q8, &refs, Calibration::default()).unwrap();
    let valid = q.to_bytes().unwrap();
    assert_eq!(common::parse_fixed(&valid), Ok(()));
    let at = HEADER_LEN + RECORD_LEN;
    let mut gaussian = valid.clone();
    gaussian[at + 1] = 1;
    common::reseal(&mut gaussian);
    assert_eq!(
        common::parse_fixed(&gaussian),
        Err(ModelError::BadGeometry { layer: 1 })
    );
    let mut old = valid.clone();
    old[4..6].copy_from_slice(&9u16.to_le_bytes());
    common::reseal(&mut old);
    assert_eq!(
        common::parse_fixed(&old),
        Err(ModelError::UnknownCode {
            layer: 1,
            field: 0,
            code: 12
        })
    );
    let mut last = q.clone();
    last.layers.pop();
    last.num_classes = 3;
    assert_eq!(
        last.to_bytes().map(|_| ()),
        Err(WriteError::Invalid(ModelError::QuantLayout { layer: 1 }))
    );
    // The quantizer has no fixed-point form for a network ending with the pool either.
    let mut ends_pooled = spec.clone();
    ends_pooled.layers.pop();
    ends_pooled.num_classes = 3;
    assert!(quantize(&ends_pooled, Precision::Q8, &refs, Calibration::default()).is_err());
}
