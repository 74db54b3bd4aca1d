//! Fixed-point convolutions and max pooling (format version 6): mean weights bit-exact
//! against an independent integer reference (padding, stride, pooling), chunk independence,
//! closeness to f32, and the reader's checks on corrupt files.

mod common;

use common::{assert_mean_weights_match_reference, mc, parse_fixed, reseal, run_f32, run_fixed};

use proptest::prelude::*;
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::fixed::quantize::{quantize, Calibration};
use tinybayes::fixed::writer::QModelSpec;
use tinybayes::fixed::QModel;
use tinybayes::format::{self, Activation, Precision, TRAILER_LEN};
use tinybayes::writer::{LayerOp, LayerSpec, ModelBuffer, ModelSpec, StorageChoice, WriteError};
use tinybayes::{Mode, Model, ModelError};

const SIDE: usize = 10;
const CLASSES: usize = 5;

fn uniform(rng: &mut Xoshiro128PlusPlus) -> f32 {
    (rng.next_u32() >> 8) as f32 / 16_777_216.0
}

/// Random Gaussian weights, a share `density` kept, σ² = α θ² with log α in [-5, 1].
fn weights(rng: &mut Xoshiro128PlusPlus, n: usize, sd: f32, density: f32) -> (Vec<f32>, Vec<f32>) {
    let theta: Vec<f32> = (0..n)
        .map(|_| {
            let keep = uniform(rng) < density;
            let t = sd * (2.0 * uniform(rng) - 1.0) * 1.7;
            if keep {
                t
            } else {
                0.0
            }
        })
        .collect();
    let var = theta
        .iter()
        .map(|t| (-5.0 + 6.0 * uniform(rng)).exp() * t * t)
        .collect();
    (theta, var)
}

/// A small network with every fixed-point layer kind: a padded 3x3 convolution, 2x2 max
/// pooling, a padded stride-2 convolution, and a linear layer to the classes. Shapes
/// 1x10x10 -> 4x10x10 -> 4x5x5 -> 6x3x3 -> 5.
fn conv_net(seed: u64) -> ModelSpec {
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    let conv = |rng: &mut Xoshiro128PlusPlus, cin: usize, cout: usize, side: usize, stride| {
        let out = format::window_output(side, 3, stride, 1).unwrap();
        let (theta, var) = weights(rng, cout * cin * 9, (2.0 / (9.0 * cin as f32)).sqrt(), 0.7);
        LayerSpec {
            op: LayerOp::Conv2d {
                out_channels: cout,
                kernel: [3, 3],
                stride,
                padding: 1,
            },
            inputs: cin * side * side,
            outputs: cout * out * out,
            activation: Activation::Relu,
            bias: (0..cout).map(|_| 0.1 * (uniform(rng) - 0.3)).collect(),
            theta,
            variance: Some(var),
            storage: StorageChoice::Sparse,
            dropout: None,
        }
    };
    let c1 = conv(&mut rng, 1, 4, SIDE, 1);
    let pool = LayerSpec::max_pool([4, SIDE, SIDE], 2, 2).unwrap();
    let c2 = conv(&mut rng, 4, 6, 5, 2);
    let (theta, var) = weights(&mut rng, CLASSES * 54, (2.0f32 / 54.0).sqrt(), 0.8);
    let linear = LayerSpec {
        op: LayerOp::Linear,
        inputs: 54,
        outputs: CLASSES,
        activation: Activation::Identity,
        bias: (0..CLASSES)
            .map(|_| 0.2 * (uniform(&mut rng) - 0.5))
            .collect(),
        theta,
        variance: Some(var),
        storage: StorageChoice::Smallest,
        dropout: None,
    };
    ModelSpec {
        input_shape: [1, SIDE, SIDE],
        num_classes: CLASSES,
        input_scale: 1.0 / 255.0,
        input_offset: 0.0,
        layers: vec![c1, pool, c2, linear],
        trained: None,
        channel_norm: None,
    }
}

/// Raw inputs with a blank border and some zero pixels.
fn images(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            (0..SIDE * SIDE)
                .map(|i| {
                    let (y, x) = (i / SIDE, i % SIDE);
                    let r = rng.next_u32();
                    if y == 0 || x == SIDE - 1 || r % 4 == 0 {
                        0
                    } else {
                        (r >> 24) as u8
                    }
                })
                .collect()
        })
        .collect()
}

fn quantized(seed: u64, precision: Precision) -> QModelSpec {
    let imgs = images(seed ^ 0xca1, 48);
    let refs: Vec<&[u8]> = imgs.iter().map(|v| v.as_slice()).collect();
    quantize(&conv_net(seed), precision, &refs, Calibration::default()).unwrap()
}

#[test]
fn quantized_convolutions_and_pooling_are_written_in_version_6() {
    for precision in [Precision::Q8, Precision::Q16] {
        let spec = quantized(1, precision);
        let bytes = spec.to_bytes().unwrap();
        // Version 7 only when a layer needs a bias shift.
        let shifted = spec.layers.iter().any(|l| l.bias_shift > 0);
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        assert_eq!(version, if shifted { 7 } else { 6 }, "{precision:?}");
        let buffer = ModelBuffer::from_bytes(&bytes);
        let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
        let kinds: Vec<&str> = model.layers().iter().map(|l| l.kind().name()).collect();
        assert_eq!(
            kinds[..3],
            ["qconv2d", "maxpool", "qconv2d"],
            "{precision:?}"
        );
        // Taps per output unit: the second convolution's MACs count only its 3x3 positions.
        let l = &model.layers()[2];
        assert_eq!(l.macs(), l.nnz() * 9);
        assert_eq!(l.dense_weights(), 6 * 4 * 9);
    }
}

#[test]
fn mean_weights_match_an_independent_integer_reference() {
    for precision in [Precision::Q8, Precision::Q16] {
        for seed in 0..3 {
            let spec = quantized(seed, precision);
            let buffer = spec.to_buffer().unwrap();
            let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
            for raw in images(seed + 100, 16) {
                assert_mean_weights_match_reference(
                    &spec,
                    &model,
                    &raw,
                    &format!("{precision:?} seed {seed}"),
                );
            }
        }
    }
}

#[test]
fn chunk_sizes_give_identical_bits() {
    for precision in [Precision::Q8, Precision::Q16] {
        let buffer = quantized(4, precision).to_buffer().unwrap();
        let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
        for (n, raw) in images(9, 6).iter().enumerate() {
            for mode in [mc(1), mc(7), mc(20)] {
                let want = run_fixed::<8>(&model, raw, mode, n as u64);
                assert_eq!(run_fixed::<1>(&model, raw, mode, n as u64), want);
                assert_eq!(run_fixed::<3>(&model, raw, mode, n as u64), want);
                assert_eq!(run_fixed::<32>(&model, raw, mode, n as u64), want);
            }
        }
    }
}

/// q16 follows the f32 network closely with mean weights (the largest activations, above the
/// calibration's 0.9999 quantile, saturate: measured gap 0.0045), q8 less so; with Monte
/// Carlo samples both keep its predictive probabilities (over 400 samples, whose own spread
/// is about 0.01).
#[test]
fn fixed_point_predictions_are_close_to_f32() {
    let f = conv_net(2);
    for (precision, mean_tol) in [(Precision::Q16, 0.01), (Precision::Q8, 0.05)] {
        let buffer = quantized(2, precision).to_buffer().unwrap();
        let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
        let mut worst = (0.0f32, 0.0f32);
        for (n, raw) in images(33, 12).iter().enumerate() {
            for (mode, slot) in [(Mode::MeanWeights, 0), (mc(400), 1)] {
                let q = run_fixed::<8>(&model, raw, mode, n as u64);
                let r = run_f32(&f, raw, mode, n as u64);
                let gap = q
                    .probabilities
                    .iter()
                    .zip(&r.probabilities)
                    .map(|(a, b)| (a.to_f32() - b).abs())
                    .fold(0.0f32, f32::max);
                if slot == 0 {
                    worst.0 = worst.0.max(gap);
                } else {
                    worst.1 = worst.1.max(gap);
                }
            }
        }
        assert!(
            worst.0 < mean_tol,
            "{precision:?} mean weights: {}",
            worst.0
        );
        assert!(worst.1 < 0.06, "{precision:?} Monte Carlo: {}", worst.1);
    }
}

/// Byte offset of layer `i`'s record.
const fn record(i: usize) -> usize {
    48 + 32 * i
}

#[test]
fn corrupt_convolutions_and_pooling_are_refused() {
    let spec = quantized(3, Precision::Q8);
    let good = spec.to_bytes().unwrap();
    assert_eq!(parse_fixed(&good), Ok(()));
    let payload = |i: usize| {
        let at = record(i) + 16;
        u32::from_le_bytes(good[at..at + 4].try_into().unwrap()) as usize
    };
    // A version-3 file has no convolutions: the kind is unknown there.
    let mut b = good.clone();
    b[4] = 3;
    reseal(&mut b);
    assert!(matches!(
        parse_fixed(&b),
        Err(ModelError::UnknownCode { layer: 0, .. })
    ));
    // Shift 0 (byte 30 of a convolution's record), a reserved byte set.
    let mut b = good.clone();
    b[record(0) + 30] = 0;
    reseal(&mut b);
    assert_eq!(parse_fixed(&b), Err(ModelError::QuantLayout { layer: 0 }));
    // Byte 31 is the bias shift in version 7 (0 to 31), reserved before.
    let mut b = good.clone();
    b[record(2) + 31] = 32;
    reseal(&mut b);
    assert_eq!(parse_fixed(&b), Err(ModelError::QuantLayout { layer: 2 }));
    let mut b = good.clone();
    b[4..6].copy_from_slice(&6u16.to_le_bytes());
    b[record(2) + 31] = 1;
    reseal(&mut b);
    assert!(matches!(
        parse_fixed(&b),
        Err(ModelError::ReservedNotZero { .. })
    ));
    // A kernel that no longer fits the padding, a stride of 0.
    let mut b = good.clone();
    b[record(0) + 29] = 3;
    reseal(&mut b);
    assert_eq!(parse_fixed(&b), Err(ModelError::BadGeometry { layer: 0 }));
    let mut b = good.clone();
    b[record(2) + 28] = 0;
    reseal(&mut b);
    assert_eq!(parse_fixed(&b), Err(ModelError::BadGeometry { layer: 2 }));
    // The first tap of the first channel outside the kernel (kx = 3), or in an input channel
    // that does not exist (the image has one).
    let taps = payload(0) + 12 * 4 + 8; // params of 4 channels, 4 u16 counts
    for (byte, value) in [(0, 3u8), (2, 1u8)] {
        let mut b = good.clone();
        b[taps + byte] = value;
        reseal(&mut b);
        assert!(
            matches!(
                parse_fixed(&b),
                Err(ModelError::BadColumnIndex { layer: 0, .. })
            ),
            "{:?}",
            parse_fixed(&b)
        );
    }
    // Counts that do not add up to the stored taps.
    let mut b = good.clone();
    b[payload(0) + 12 * 4] ^= 1;
    reseal(&mut b);
    assert!(matches!(
        parse_fixed(&b),
        Err(ModelError::BadRowPointers { layer: 0 } | ModelError::BadColumnIndex { layer: 0, .. })
    ));
    // Pooling with a payload, a window that does not fit, or as the last layer.
    let mut b = good.clone();
    b[record(1) + 24] = 11;
    reseal(&mut b);
    assert_eq!(parse_fixed(&b), Err(ModelError::BadGeometry { layer: 1 }));
    let mut last = spec.clone();
    last.layers.truncate(2);
    assert!(matches!(
        last.to_bytes(),
        Err(WriteError::Invalid(ModelError::QuantLayout { layer: 1 }) | WriteError::Invalid(_))
    ));
    // The f32 reader refuses a fixed-point convolution file.
    let buffer = ModelBuffer::from_bytes(&good);
    assert!(matches!(
        Model::from_bytes(buffer.as_bytes()),
        Err(ModelError::WrongPrecision { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, failure_persistence: None, ..ProptestConfig::default() })]

    /// Mutated fixed-point convolution files, CRC recomputed: the reader never panics, and
    /// whatever it accepts runs in both modes.
    #[test]
    fn mutated_convolution_models_never_panic(
        q16 in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..5),
        seed in any::<u64>(),
    ) {
        let precision = if q16 { Precision::Q16 } else { Precision::Q8 };
        let mut b = quantized(5, precision).to_bytes().unwrap();
        let body = b.len() - TRAILER_LEN;
        for (at, v) in &edits {
            b[at.index(body)] = *v;
        }
        reseal(&mut b);
        let buffer = ModelBuffer::from_bytes(&b);
        let parsed = QModel::from_bytes(buffer.as_bytes());
        if let Ok(model) = &parsed {
            let raw = images(seed, 1).pop().unwrap();
            if raw.len() == model.input_len() && model.num_classes() <= 8 {
                for mode in [Mode::MeanWeights, mc(5)] {
                    let p = run_fixed::<4>(model, &raw, mode, seed);
                    prop_assert!(p.class < model.num_classes());
                }
            }
        }
    }
}
