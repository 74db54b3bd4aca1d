//! Convolution and pooling (format version 2) against dense f64 references: sparse taps with
//! stride and padding, max pooling, a LeNet-shaped stack, local reparameterization for
//! convolutions (independent noise per output unit, as in Molchanov et al.), chunk
//! independence, and the version rules.

use core::num::NonZeroU16;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::{Xoshiro128PlusPlus, Xoshiro256PlusPlus};
use tinybayes::format::{self, Activation, MIN_FORMAT_VERSION};
use tinybayes::model::Operation;
use tinybayes::writer::{LayerOp, LayerSpec, ModelBuffer, ModelSpec, StorageChoice, WriteError};
use tinybayes::{Engine, Mode, ModelError, Prediction};

fn uniform(rng: &mut Xoshiro256PlusPlus) -> f32 {
    (rng.next_u32() >> 8) as f32 / 16_777_216.0
}

/// A convolution spec with random weights (a fraction `density` kept) over `shape`.
fn conv_spec(
    rng: &mut Xoshiro256PlusPlus,
    shape: [usize; 3],
    out_channels: usize,
    kernel: [usize; 2],
    stride: usize,
    padding: usize,
    density: f32,
) -> (LayerSpec, [usize; 3]) {
    let h = format::window_output(shape[1], kernel[0], stride, padding).unwrap();
    let w = format::window_output(shape[2], kernel[1], stride, padding).unwrap();
    let n = out_channels * shape[0] * kernel[0] * kernel[1];
    let theta: Vec<f32> = (0..n)
        .map(|_| {
            if uniform(rng) < density {
                uniform(rng) - 0.5
            } else {
                0.0
            }
        })
        .collect();
    let variance = theta
        .iter()
        .map(|t| if *t != 0.0 { 0.5 * t * t + 0.01 } else { 0.0 })
        .collect();
    let spec = LayerSpec {
        op: LayerOp::Conv2d {
            out_channels,
            kernel,
            stride,
            padding,
        },
        inputs: shape.iter().product(),
        outputs: out_channels * h * w,
        activation: Activation::Relu,
        bias: (0..out_channels)
            .map(|_| 0.1 * (uniform(rng) - 0.5))
            .collect(),
        theta,
        variance: Some(variance),
        storage: StorageChoice::Sparse,
        dropout: None,
    };
    (spec, [out_channels, h, w])
}

fn linear_spec(rng: &mut Xoshiro256PlusPlus, inputs: usize, outputs: usize) -> LayerSpec {
    let theta: Vec<f32> = (0..inputs * outputs).map(|_| uniform(rng) - 0.5).collect();
    LayerSpec {
        op: LayerOp::Linear,
        inputs,
        outputs,
        activation: Activation::Identity,
        bias: vec![0.0; outputs],
        variance: Some(theta.iter().map(|t| 0.3 * t * t).collect()),
        theta,
        storage: StorageChoice::Smallest,
        dropout: None,
    }
}

/// Dense f64 convolution with zero padding: `[C_out][H_out][W_out]`, pre-activation.
/// `square` computes Σ w x² instead (the variance path).
fn conv_f64(
    x: &[f64],
    shape: [usize; 3],
    l: &LayerSpec,
    weights: &[f64],
    bias: bool,
    square: bool,
) -> Vec<f64> {
    let LayerOp::Conv2d {
        out_channels,
        kernel,
        stride,
        padding,
    } = l.op
    else {
        panic!()
    };
    let oh = format::window_output(shape[1], kernel[0], stride, padding).unwrap();
    let ow = format::window_output(shape[2], kernel[1], stride, padding).unwrap();
    let mut out = vec![0.0; out_channels * oh * ow];
    for co in 0..out_channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = if bias { l.bias[co] as f64 } else { 0.0 };
                for ci in 0..shape[0] {
                    for ky in 0..kernel[0] {
                        for kx in 0..kernel[1] {
                            let iy = (oy * stride + ky) as isize - padding as isize;
                            let ix = (ox * stride + kx) as isize - padding as isize;
                            if iy < 0
                                || ix < 0
                                || iy >= shape[1] as isize
                                || ix >= shape[2] as isize
                            {
                                continue;
                            }
                            let xv = x[(ci * shape[1] + iy as usize) * shape[2] + ix as usize];
                            let wv =
                                weights[((co * shape[0] + ci) * kernel[0] + ky) * kernel[1] + kx];
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

fn max_pool_f64(x: &[f64], shape: [usize; 3], size: usize, stride: usize) -> Vec<f64> {
    let oh = format::window_output(shape[1], size, stride, 0).unwrap();
    let ow = format::window_output(shape[2], size, stride, 0).unwrap();
    let mut out = Vec::new();
    for c in 0..shape[0] {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = f64::NEG_INFINITY;
                for ky in 0..size {
                    for kx in 0..size {
                        best = best.max(
                            x[(c * shape[1] + oy * stride + ky) * shape[2] + ox * stride + kx],
                        );
                    }
                }
                out.push(best);
            }
        }
    }
    out
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

fn relu(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| x.max(0.0)).collect()
}

/// conv -> relu -> linear, one model per geometry.
#[test]
fn sparse_convolution_matches_dense_reference_over_geometries() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let mut cases = 0;
    for &(c, h, w) in &[(1, 7, 7), (2, 6, 9), (3, 5, 5)] {
        for &(k0, k1) in &[(3, 3), (2, 4), (1, 1), (5, 3)] {
            for stride in 1..=2 {
                for padding in 0..k0.min(k1).min(3) {
                    let shape = [c, h, w];
                    if format::window_output(h, k0, stride, padding).is_none()
                        || format::window_output(w, k1, stride, padding).is_none()
                    {
                        continue;
                    }
                    let (conv, out) = conv_spec(&mut rng, shape, 3, [k0, k1], stride, padding, 0.6);
                    let n = out.iter().product();
                    let head = linear_spec(&mut rng, n, 4);
                    let spec = ModelSpec {
                        input_shape: shape,
                        num_classes: 4,
                        input_scale: 1.0,
                        input_offset: 0.0,
                        layers: vec![conv.clone(), head.clone()],
                        trained: None,
                        channel_norm: None,
                    };
                    let buffer = spec.to_buffer().unwrap();
                    let model = buffer.model().unwrap();
                    assert!(matches!(
                        model.layers()[0].operation(),
                        Operation::Conv2d(_)
                    ));
                    let x: Vec<f32> = (0..shape.iter().product())
                        .map(|_| uniform(&mut rng))
                        .collect();
                    let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                    let thetas: Vec<f64> = conv.theta.iter().map(|&t| t as f64).collect();
                    let hidden = relu(conv_f64(&xf, shape, &conv, &thetas, true, false));
                    let reference = softmax(&linear_f64(&hidden, &head));
                    let mut ws = vec![0.0; tinybayes::Plan::new(&model, 1).workspace_len()];
                    let mut engine = Engine::<1>::new(&model, &mut ws).unwrap();
                    let mut r = Xoshiro128PlusPlus::seed_from_u64(0);
                    let p: Prediction<4> = engine.predict(&x, Mode::MeanWeights, &mut r).unwrap();
                    for (a, b) in p.probabilities.iter().zip(&reference) {
                        assert!(
                            (*a as f64 - b).abs() < 1e-5,
                            "{shape:?} k{k0}x{k1} s{stride} p{padding}: {a} vs {b}"
                        );
                    }
                    cases += 1;
                }
            }
        }
    }
    assert!(cases > 30, "only {cases} geometries tested");
}

/// A LeNet-shaped stack: conv -> relu -> pool -> conv -> relu -> pool -> linear -> linear.
fn lenet_like(seed: u64) -> (ModelSpec, Vec<LayerSpec>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let (c1, s1) = conv_spec(&mut rng, [1, 12, 12], 4, [3, 3], 1, 0, 0.7);
    let p1 = LayerSpec::max_pool(s1, 2, 2).unwrap();
    let s2 = [s1[0], s1[1] / 2, s1[2] / 2];
    let (c2, s3) = conv_spec(&mut rng, s2, 6, [2, 2], 1, 1, 0.5);
    let p2 = LayerSpec::max_pool(s3, 2, 2).unwrap();
    let flat = p2.outputs;
    let mut f1 = linear_spec(&mut rng, flat, 8);
    f1.activation = Activation::Relu;
    let f2 = linear_spec(&mut rng, 8, 3);
    let layers = vec![c1, p1, c2, p2, f1, f2];
    let spec = ModelSpec {
        input_shape: [1, 12, 12],
        num_classes: 3,
        input_scale: 1.0 / 255.0,
        input_offset: 0.0,
        layers: layers.clone(),
        trained: None,
        channel_norm: None,
    };
    (spec, layers)
}

#[test]
fn lenet_shaped_stack_matches_reference_and_is_version_2() {
    for seed in 0..5 {
        let (spec, layers) = lenet_like(seed);
        let buffer = spec.to_buffer().unwrap();
        assert_eq!(
            u16::from_le_bytes([buffer.as_bytes()[4], buffer.as_bytes()[5]]),
            2
        );
        let model = buffer.model().unwrap();
        let raw: Vec<u8> = (0..144)
            .map(|i| ((i * 97 + seed as usize * 13) % 256) as u8)
            .collect();
        let x: Vec<f64> = raw
            .iter()
            .map(|&p| (p as f32 * (1.0 / 255.0)) as f64)
            .collect();
        let t = |l: &LayerSpec| l.theta.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let a = relu(conv_f64(
            &x,
            [1, 12, 12],
            &layers[0],
            &t(&layers[0]),
            true,
            false,
        ));
        let a = max_pool_f64(&a, [4, 10, 10], 2, 2);
        let a = relu(conv_f64(
            &a,
            [4, 5, 5],
            &layers[2],
            &t(&layers[2]),
            true,
            false,
        ));
        let a = max_pool_f64(&a, [6, 6, 6], 2, 2);
        let a = relu(linear_f64(&a, &layers[4]));
        let reference = softmax(&linear_f64(&a, &layers[5]));
        let mut ws = vec![0.0; tinybayes::Plan::new(&model, 1).workspace_len()];
        let mut engine = Engine::<1>::new(&model, &mut ws).unwrap();
        let mut r = Xoshiro128PlusPlus::seed_from_u64(0);
        let p: Prediction<3> = engine.predict_u8(&raw, Mode::MeanWeights, &mut r).unwrap();
        for (a, b) in p.probabilities.iter().zip(&reference) {
            assert!((*a as f64 - b).abs() < 1e-5, "seed {seed}: {a} vs {b}");
        }
        assert_eq!(
            model.dense_params(),
            layers
                .iter()
                .map(|l| l.theta.len() + l.bias.len())
                .sum::<usize>()
        );
    }
}

#[test]
fn convolution_results_do_not_depend_on_the_chunk_size() {
    let (spec, _) = lenet_like(7);
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let raw: Vec<u8> = (0..144).map(|i| (i * 31 % 256) as u8).collect();
    let mode = Mode::MonteCarlo {
        samples: NonZeroU16::new(11).unwrap(),
    };
    let run = |chunk_result: &mut Vec<Prediction<3>>, f: &dyn Fn() -> Prediction<3>| {
        chunk_result.push(f())
    };
    let mut results = Vec::new();
    run(&mut results, &|| {
        let mut ws = vec![0.0; tinybayes::Plan::new(&model, 1).workspace_len()];
        let mut e = Engine::<1>::new(&model, &mut ws).unwrap();
        e.predict_u8(&raw, mode, &mut Xoshiro128PlusPlus::seed_from_u64(3))
            .unwrap()
    });
    run(&mut results, &|| {
        let mut ws = vec![0.0; tinybayes::Plan::new(&model, 4).workspace_len()];
        let mut e = Engine::<4>::new(&model, &mut ws).unwrap();
        e.predict_u8(&raw, mode, &mut Xoshiro128PlusPlus::seed_from_u64(3))
            .unwrap()
    });
    run(&mut results, &|| {
        let mut ws = vec![0.0; tinybayes::Plan::new(&model, 16).workspace_len()];
        let mut e = Engine::<16>::new(&model, &mut ws).unwrap();
        e.predict_u8(&raw, mode, &mut Xoshiro128PlusPlus::seed_from_u64(3))
            .unwrap()
    });
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
    assert!(results[0].mutual_information > 0.0);
}

fn box_muller(rng: &mut Xoshiro256PlusPlus) -> f64 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Local reparameterization for a convolution: every output unit's pre-activation is
/// N(conv(x, θ) + b, conv(x², σ²)), drawn independently per unit and sample. Reference: the
/// same distribution computed with dense f64 convolutions and Box-Muller noise.
#[test]
fn convolution_local_reparameterization_matches_reference() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
    let shape = [2, 5, 5];
    let (conv, out) = conv_spec(&mut rng, shape, 2, [3, 3], 1, 1, 1.0);
    let head = linear_spec(&mut rng, out.iter().product(), 3);
    let spec = ModelSpec {
        input_shape: shape,
        num_classes: 3,
        input_scale: 1.0,
        input_offset: 0.0,
        layers: vec![conv.clone(), head.clone()],
        trained: None,
        channel_norm: None,
    };
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let x: Vec<f32> = (0..50).map(|i| ((i * 7) % 11) as f32 / 5.0 - 0.8).collect();
    let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let theta: Vec<f64> = conv.theta.iter().map(|&v| v as f64).collect();
    let var: Vec<f64> = conv
        .variance
        .as_ref()
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let mean = conv_f64(&xf, shape, &conv, &theta, true, false);
    let variance = conv_f64(&xf, shape, &conv, &var, false, true);
    let head_var: Vec<f64> = head
        .variance
        .as_ref()
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    const N: usize = 100_000;
    let mut p_bar = [0.0f64; 3];
    for _ in 0..N {
        let hidden: Vec<f64> = mean
            .iter()
            .zip(&variance)
            .map(|(m, v)| (m + v.sqrt() * box_muller(&mut rng)).max(0.0))
            .collect();
        let logits: Vec<f64> = (0..3)
            .map(|j| {
                let m: f64 = (0..hidden.len())
                    .map(|i| head.theta[j * hidden.len() + i] as f64 * hidden[i])
                    .sum();
                let v: f64 = (0..hidden.len())
                    .map(|i| head_var[j * hidden.len() + i] * hidden[i] * hidden[i])
                    .sum();
                m + v.sqrt() * box_muller(&mut rng)
            })
            .collect();
        for (acc, p) in p_bar.iter_mut().zip(softmax(&logits)) {
            *acc += p / N as f64;
        }
    }
    let mut ws = vec![0.0; tinybayes::Plan::new(&model, 8).workspace_len()];
    let mut engine = Engine::<8>::new(&model, &mut ws).unwrap();
    let mode = Mode::MonteCarlo {
        samples: NonZeroU16::new(50_000).unwrap(),
    };
    let p: Prediction<3> = engine
        .predict(&x, mode, &mut Xoshiro128PlusPlus::seed_from_u64(4))
        .unwrap();
    let tolerance = 5.0 * 0.5 * (1.0 / 50_000f64 + 1.0 / N as f64).sqrt();
    for (a, b) in p.probabilities.iter().zip(&p_bar) {
        assert!(
            (*a as f64 - b).abs() < tolerance,
            "{a} vs {b} (tolerance {tolerance})"
        );
    }
    let mean_net: Prediction<3> = engine
        .predict(
            &x,
            Mode::MeanWeights,
            &mut Xoshiro128PlusPlus::seed_from_u64(4),
        )
        .unwrap();
    let shift: f32 = p
        .probabilities
        .iter()
        .zip(&mean_net.probabilities)
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(
        shift > 0.02,
        "noise should move the prediction, shift {shift}"
    );
}

#[test]
fn version_1_files_cannot_hold_convolutions() {
    let (spec, _) = lenet_like(1);
    let buffer = spec.to_buffer().unwrap();
    let mut bytes = buffer.as_bytes().to_vec();
    bytes[4..6].copy_from_slice(&MIN_FORMAT_VERSION.to_le_bytes());
    let n = bytes.len();
    let crc = format::CRC32.checksum(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    let patched = ModelBuffer::from_bytes(&bytes);
    assert_eq!(
        patched.model().unwrap_err(),
        ModelError::UnknownCode {
            layer: 0,
            field: 0,
            code: 3
        }
    );
}

#[test]
fn bad_geometries_are_refused() {
    let (spec, _) = lenet_like(2);
    let good = spec.to_buffer().unwrap();
    let base = good.as_bytes().to_vec();
    let patch = |at: usize, value: u8| {
        let mut b = base.clone();
        b[48 + at] = value; // record of layer 0
        let n = b.len();
        let crc = format::CRC32.checksum(&b[..n - 4]);
        b[n - 4..].copy_from_slice(&crc.to_le_bytes());
        ModelBuffer::from_bytes(&b).model().map(|_| ()).unwrap_err()
    };
    // Kernel larger than the 12x12 input, zero stride, padding as large as the kernel.
    assert_eq!(patch(26, 13), ModelError::BadGeometry { layer: 0 });
    assert_eq!(patch(28, 0), ModelError::BadGeometry { layer: 0 });
    assert_eq!(patch(29, 3), ModelError::BadGeometry { layer: 0 });
    // A kernel of 2 rows is a valid geometry whose output size no longer matches.
    assert!(matches!(
        patch(26, 2),
        ModelError::ShapeMismatch { layer: 0, .. }
    ));
    // The pooling layer (record 1) with a window larger than its input.
    assert_eq!(patch(32 + 24, 11), ModelError::BadGeometry { layer: 1 });
}

#[test]
fn writer_refuses_inconsistent_convolutions() {
    let (mut spec, _) = lenet_like(3);
    spec.layers[0].theta.pop();
    assert_eq!(
        spec.to_buffer().unwrap_err(),
        WriteError::BadParameterLength { layer: 0 }
    );
    let (mut spec, _) = lenet_like(3);
    spec.layers[0].outputs += 1;
    assert_eq!(
        spec.to_buffer().unwrap_err(),
        WriteError::BadParameterLength { layer: 0 }
    );
    let (mut spec, _) = lenet_like(3);
    spec.layers.truncate(2); // ends in a pooling layer
    spec.num_classes = spec.layers[1].outputs;
    assert_eq!(
        spec.to_buffer().unwrap_err(),
        WriteError::Invalid(ModelError::BadOutputLayer)
    );
}

/// Moment propagation through convolutions and max pooling (Clark's approximation) against
/// Monte Carlo with M = 1,000 (the plain and early-exit cases are in `moments.rs`).
#[test]
fn lenet_shaped_moments_predictive_matches_monte_carlo() {
    let samples = NonZeroU16::new(1000).unwrap();
    let mut worst = (0.0f32, 0.0f32);
    let (mut mi_drawn, mut mi_mc) = (0.0f32, 0.0f32);
    for seed in 0..4 {
        let (spec, _) = lenet_like(seed);
        let buffer = spec.to_buffer().unwrap();
        let model = buffer.model().unwrap();
        let raw: Vec<u8> = (0..144)
            .map(|i| ((i * 37 + seed * 11) % 256) as u8)
            .collect();
        let mut ws = vec![0.0; tinybayes::Plan::new(&model, 8).workspace_len()];
        let mut engine = Engine::<8>::new(&model, &mut ws).unwrap();
        let mut run = |mode| -> Prediction<3> {
            let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
            engine.predict_u8(&raw, mode, &mut rng).unwrap()
        };
        let mc = run(Mode::MonteCarlo { samples });
        let probit = run(Mode::Moments);
        let drawn = run(Mode::MomentsThenSample { samples });
        let gap = |p: &Prediction<3>| {
            p.probabilities
                .iter()
                .zip(&mc.probabilities)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
        };
        worst = (worst.0.max(gap(&probit)), worst.1.max(gap(&drawn)));
        mi_drawn += drawn.mutual_information;
        mi_mc += mc.mutual_information;
    }
    println!(
        "lenet-like: probit {}, drawn {}, MI {mi_drawn} vs {mi_mc}",
        worst.0, worst.1
    );
    assert!(worst.0 < 0.04 && worst.1 < 0.04, "{worst:?}");
    assert!(mi_mc > 0.02, "the test models must be uncertain ({mi_mc})");
    assert!(
        (mi_drawn / mi_mc - 1.0).abs() < 0.3,
        "MI {mi_drawn} vs {mi_mc}"
    );
}
