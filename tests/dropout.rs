//! MC dropout (the Bernoulli posterior, format version 8): what the reader refuses, the Monte
//! Carlo predictive against an independent f64 computation of the masked network with the same
//! mask stream, the mean network, moment propagation against many samples, independence of the
//! chunk size, and the fixed-point engines against f32 (the same masks by construction).

mod common;

use common::{mc, reseal, run_fixed};
use core::num::NonZeroU16;
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::fixed::quantize::{quantize, Calibration};
use tinybayes::fixed::QModel;
use tinybayes::format::{self, Posterior, Precision, HEADER_LEN, LAYER_RECORD_LEN};

/// Record offsets, as docs/FORMAT.md lays them out.
mod record {
    /// Byte 1: the posterior code (2 = Bernoulli).
    pub const POSTERIOR: usize = 1;
    /// f32 linear layer: the drop probability (f32).
    pub const DROPOUT_P: usize = 24;
    /// f32 linear layer: reserved after it.
    pub const DROPOUT_RESERVED: core::ops::Range<usize> = 28..32;
    /// Fixed-point linear layer: reserved byte before the threshold.
    pub const QUANT_DROPOUT_RESERVED: core::ops::Range<usize> = 27..28;
    /// Fixed-point linear layer: the drop threshold (u32).
    pub const QUANT_DROP_THRESHOLD: usize = 28;
}
use tinybayes::writer::{synthetic, ModelSpec, StorageChoice};
use tinybayes::{Engine, Mode, Model, ModelError, Plan, Prediction};

/// Drop probabilities of the test network's three layers (its inputs, then two hidden
/// layers).
const DROP: [f32; 3] = [0.3, 0.5, 0.2];
const WIDTHS: [usize; 4] = [12, 9, 7, 4];

/// A 12-9-7-4 MLP with deterministic weights (the sampled ones, already divided by the keep
/// probability) and a dropout mask on every layer's inputs; the first layer stored as given.
fn dropout_spec(seed: u64, first: StorageChoice) -> ModelSpec {
    let mut spec = synthetic::mlp(seed, &WIDTHS, 0.7);
    for (l, &p) in spec.layers.iter_mut().zip(&DROP) {
        l.variance = None;
        l.dropout = Some(p);
        l.storage = StorageChoice::Smallest;
    }
    spec.layers[0].storage = first;
    spec
}

/// Raw inputs with some zero pixels.
fn input(seed: u64) -> Vec<u8> {
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    (0..WIDTHS[0])
        .map(|_| {
            let r = rng.next_u32();
            if r % 4 == 0 {
                0
            } else {
                (r >> 24) as u8
            }
        })
        .collect()
}

fn predict<const CHUNK: usize>(
    model: &Model<'_>,
    raw: &[u8],
    mode: Mode,
    seed: u64,
) -> Prediction<4> {
    let mut ws = vec![0.0f32; Plan::new(model, CHUNK).workspace_len()];
    let mut engine = Engine::<CHUNK>::new(model, &mut ws).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    engine.predict_u8(raw, mode, &mut rng).unwrap()
}

/// The softmax of `z` in f64.
fn softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// Entropy (nats) of a distribution.
fn entropy(p: &[f64]) -> f64 {
    -p.iter()
        .filter(|&&v| v > 0.0)
        .map(|v| v * v.ln())
        .sum::<f64>()
}

/// The network of `spec` in f64 on the normalised input, each layer's inputs multiplied by
/// `factor(layer, input)`.
fn forward_f64(
    spec: &ModelSpec,
    raw: &[u8],
    mut factor: impl FnMut(usize, usize) -> f64,
) -> Vec<f64> {
    let mut x: Vec<f64> = raw
        .iter()
        .map(|&p| p as f64 * spec.input_scale as f64)
        .collect();
    for (k, l) in spec.layers.iter().enumerate() {
        let masked: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v * factor(k, i))
            .collect();
        x = (0..l.outputs)
            .map(|j| {
                let z = l.bias[j] as f64
                    + (0..l.inputs)
                        .map(|i| l.theta[j * l.inputs + i] as f64 * masked[i])
                        .sum::<f64>();
                if l.activation == format::Activation::Relu {
                    z.max(0.0)
                } else {
                    z
                }
            })
            .collect();
    }
    x
}

/// The Monte Carlo predictive the engine must give, computed independently in f64: sample
/// `m` seeds its stream with the `m`-th `u64` of the caller's generator and draws one `u32`
/// per input of every layer, in order; the input is kept when the draw is at least
/// `floor(p · 2^32)` (computed here in f64).
fn reference_mc(spec: &ModelSpec, raw: &[u8], samples: usize, seed: u64) -> (Vec<f64>, f64, f64) {
    let mut caller = Xoshiro128PlusPlus::seed_from_u64(seed);
    let classes = spec.num_classes;
    let (mut mean, mut expected_entropy) = (vec![0.0f64; classes], 0.0f64);
    for _ in 0..samples {
        let mut stream = Xoshiro128PlusPlus::seed_from_u64(caller.next_u64());
        let thresholds: Vec<u64> = spec
            .layers
            .iter()
            .map(|l| (l.dropout.unwrap_or(0.0) as f64 * 4_294_967_296.0).floor() as u64)
            .collect();
        let logits = forward_f64(spec, raw, |k, _| {
            let kept = stream.next_u32() as u64 >= thresholds[k];
            if kept {
                1.0
            } else {
                0.0
            }
        });
        let p = softmax(&logits);
        expected_entropy += entropy(&p) / samples as f64;
        for (a, b) in mean.iter_mut().zip(&p) {
            *a += b / samples as f64;
        }
    }
    let h = entropy(&mean);
    (mean, h, h - expected_entropy)
}

#[test]
fn monte_carlo_equals_an_f64_computation_of_the_masked_network() {
    for (seed, first) in [
        (1, StorageChoice::Dense),
        (2, StorageChoice::Sparse),
        (3, StorageChoice::SparseByInput),
    ] {
        let spec = dropout_spec(seed, first);
        let buffer = spec.to_buffer().unwrap();
        let model = buffer.model().unwrap();
        assert_eq!(model.layers()[0].posterior(), Posterior::Bernoulli);
        for case in 0..4 {
            let raw = input(10 * seed + case);
            let got = predict::<8>(&model, &raw, mc(37), 100 + case);
            let (p, h, mi) = reference_mc(&spec, &raw, 37, 100 + case);
            for (k, (&g, &want)) in got.probabilities.iter().zip(&p).enumerate() {
                assert!(
                    (g as f64 - want).abs() < 2e-5,
                    "{first:?} class {k}: {g} vs {want}"
                );
            }
            assert!((got.predictive_entropy as f64 - h).abs() < 1e-4);
            assert!((got.mutual_information as f64 - mi).abs() < 1e-4);
            // The masks matter: the samples disagree.
            assert!(mi > 1e-4, "{mi}");
        }
    }
}

#[test]
fn the_mean_network_scales_each_input_by_its_keep_probability() {
    let spec = dropout_spec(4, StorageChoice::SparseByInput);
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    for case in 0..5 {
        let raw = input(case);
        let got = predict::<8>(&model, &raw, Mode::MeanWeights, 0);
        let want = softmax(&forward_f64(&spec, &raw, |k, _| 1.0 - DROP[k] as f64));
        for (&g, &w) in got.probabilities.iter().zip(&want) {
            assert!((g as f64 - w).abs() < 2e-6, "{g} vs {w}");
        }
        assert_eq!(got.mutual_information, 0.0);
    }
}

#[test]
fn a_drop_probability_of_zero_is_the_deterministic_network() {
    let mut spec = dropout_spec(5, StorageChoice::Dense);
    for l in &mut spec.layers {
        l.dropout = Some(0.0);
    }
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let raw = input(6);
    let sampled = predict::<4>(&model, &raw, mc(10), 1);
    let mean = predict::<4>(&model, &raw, Mode::MeanWeights, 1);
    // Ten identical samples: the same probabilities up to the rounding of their average.
    for k in 0..4 {
        assert!((sampled.probabilities[k] - mean.probabilities[k]).abs() < 1e-6);
    }
    assert!(sampled.mutual_information.abs() < 1e-6);
}

#[test]
fn results_do_not_depend_on_the_chunk_size() {
    for first in [StorageChoice::Dense, StorageChoice::SparseByInput] {
        let spec = dropout_spec(7, first);
        let buffer = spec.to_buffer().unwrap();
        let model = buffer.model().unwrap();
        let raw = input(8);
        let a = predict::<1>(&model, &raw, mc(21), 5);
        assert_eq!(a, predict::<3>(&model, &raw, mc(21), 5));
        assert_eq!(a, predict::<8>(&model, &raw, mc(21), 5));
        assert_eq!(a, predict::<64>(&model, &raw, mc(21), 5));
        assert_ne!(a, predict::<8>(&model, &raw, mc(21), 6));
    }
    // Fixed point too.
    let spec = dropout_spec(7, StorageChoice::Dense);
    let calibration: Vec<Vec<u8>> = (0..16).map(input).collect();
    let refs: Vec<&[u8]> = calibration.iter().map(Vec::as_slice).collect();
    for precision in [Precision::Q8, Precision::Q16] {
        let q = quantize(&spec, precision, &refs, Calibration::default()).unwrap();
        let buffer = q.to_buffer().unwrap();
        let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
        let raw = input(8);
        let a = run_fixed::<1>(&model, &raw, mc(21), 5);
        assert_eq!(a, run_fixed::<3>(&model, &raw, mc(21), 5));
        assert_eq!(a, run_fixed::<8>(&model, &raw, mc(21), 5));
    }
}

#[test]
fn monte_carlo_converges_to_moment_propagation() {
    // M = 4,000 samples against one moment-propagation pass: the probit predictive and the
    // logit draws stay close (the approximations are the Gaussian pre-activations and the
    // probit). The logit draws are independent per class while a mask moves every logit of a
    // sample together, so their mutual information overstates the samples' (here about
    // twice): it is of the same order, not equal.
    let spec = dropout_spec(9, StorageChoice::SparseByInput);
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let many = NonZeroU16::new(4000).unwrap();
    let (mut worst_probit, mut worst_drawn) = (0.0f32, 0.0f32);
    let (mut mi_mc, mut mi_drawn) = (0.0f32, 0.0f32);
    for case in 0..8 {
        let raw = input(40 + case);
        let sampled = predict::<16>(&model, &raw, Mode::MonteCarlo { samples: many }, 3);
        let probit = predict::<16>(&model, &raw, Mode::Moments, 3);
        let drawn = predict::<16>(&model, &raw, Mode::MomentsThenSample { samples: many }, 3);
        for k in 0..4 {
            worst_probit =
                worst_probit.max((probit.probabilities[k] - sampled.probabilities[k]).abs());
            worst_drawn =
                worst_drawn.max((drawn.probabilities[k] - sampled.probabilities[k]).abs());
        }
        mi_mc += sampled.mutual_information;
        mi_drawn += drawn.mutual_information;
    }
    println!("probit {worst_probit}, drawn {worst_drawn}, MI {mi_drawn} vs {mi_mc}");
    assert!(worst_probit < 0.02, "probit {worst_probit}");
    assert!(worst_drawn < 0.02, "drawn {worst_drawn}");
    let ratio = mi_drawn / mi_mc;
    assert!(
        mi_mc > 0.05 && (1.0..3.0).contains(&ratio),
        "{mi_drawn} vs {mi_mc}"
    );
}

#[test]
fn fixed_point_draws_the_same_masks_and_agrees_with_f32() {
    let spec = dropout_spec(11, StorageChoice::SparseByInput);
    let f32_buffer = spec.to_buffer().unwrap();
    let f32_model = f32_buffer.model().unwrap();
    let calibration: Vec<Vec<u8>> = (0..64).map(|s| input(1000 + s)).collect();
    let refs: Vec<&[u8]> = calibration.iter().map(Vec::as_slice).collect();
    for (precision, tolerance) in [(Precision::Q8, 0.01f32), (Precision::Q16, 2e-4)] {
        let q = quantize(&spec, precision, &refs, Calibration::default()).unwrap();
        // The thresholds are those of f32, and a Bernoulli first layer is stored by rows.
        for l in &q.layers {
            assert!(l.drop_threshold.is_some());
            assert_ne!(l.storage, StorageChoice::SparseByInput);
        }
        let buffer = q.to_buffer().unwrap();
        let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
        assert_eq!(
            model.layers()[0].drop_threshold(),
            Some(format::drop_threshold(DROP[0]))
        );
        let mut worst = 0.0f32;
        for case in 0..10 {
            let raw = input(2000 + case);
            for mode in [Mode::MeanWeights, mc(16)] {
                let a = predict::<8>(&f32_model, &raw, mode, 21);
                let b = run_fixed::<8>(&model, &raw, mode, 21);
                for k in 0..4 {
                    let fixed = b.probabilities[k].to_f32();
                    worst = worst.max((a.probabilities[k] - fixed).abs());
                }
            }
        }
        println!("{precision:?}: largest probability difference {worst}");
        assert!(worst < tolerance, "{precision:?}: {worst}");
    }
}

/// Offset of layer `k`'s record.
fn record_at(k: usize) -> usize {
    HEADER_LEN + k * LAYER_RECORD_LEN
}

#[test]
fn the_reader_refuses_bad_drop_probabilities_and_misplaced_dropout() {
    let bytes = dropout_spec(12, StorageChoice::Dense).to_bytes().unwrap();
    assert_eq!(
        u16::from_le_bytes([bytes[4], bytes[5]]),
        format::DROPOUT_FORMAT_VERSION
    );
    let parse = |b: &[u8]| {
        let buffer = tinybayes::writer::ModelBuffer::from_bytes(b);
        Model::from_bytes(buffer.as_bytes()).map(|_| ())
    };
    assert_eq!(parse(&bytes), Ok(()));
    for k in 0..3 {
        for bad in [
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            -0.25,
            1.0,
            1.5,
            f32::MAX,
        ] {
            let mut b = bytes.clone();
            let at = record_at(k) + record::DROPOUT_P;
            b[at..at + 4].copy_from_slice(&bad.to_le_bytes());
            reseal(&mut b);
            assert_eq!(parse(&b), Err(ModelError::BadDropout { layer: k }), "{bad}");
        }
        // The largest probability below 1 is accepted.
        let mut b = bytes.clone();
        let at = record_at(k) + record::DROPOUT_P;
        b[at..at + 4].copy_from_slice(&0.99999994f32.to_le_bytes());
        reseal(&mut b);
        assert_eq!(parse(&b), Ok(()));
        // The bytes after the probability are reserved.
        let mut b = bytes.clone();
        b[record_at(k) + record::DROPOUT_RESERVED.start + 1] = 1;
        reseal(&mut b);
        assert!(matches!(parse(&b), Err(ModelError::ReservedNotZero { .. })));
    }
    // A Bernoulli posterior is a version-8 code: a version-7 file with it names the field.
    let mut b = bytes.clone();
    b[4..6].copy_from_slice(&7u16.to_le_bytes());
    reseal(&mut b);
    assert_eq!(
        parse(&b),
        Err(ModelError::UnknownCode {
            layer: 0,
            field: record::POSTERIOR,
            code: 2
        })
    );
    // Every truncation is an error, never a panic (and so is every torn record).
    for len in 0..bytes.len() {
        assert!(parse(&bytes[..len]).is_err(), "{len}");
    }
    for k in 0..3 {
        for field in 0..LAYER_RECORD_LEN {
            let mut b = bytes.clone();
            b[record_at(k) + field] ^= 0x5a;
            reseal(&mut b);
            let _ = parse(&b);
        }
    }
    // Dropout on a layer that is not linear: a pooling layer given the posterior.
    let mut conv_spec = synthetic::mlp(3, &[16, 4], 1.0);
    conv_spec.input_shape = [1, 4, 4];
    let pool = tinybayes::writer::LayerSpec::max_pool([1, 4, 4], [2, 2], 2).unwrap();
    conv_spec.layers.insert(0, pool);
    conv_spec.layers[1].inputs = 4;
    conv_spec.layers[1].theta.truncate(16);
    conv_spec.layers[1].variance = None;
    conv_spec.layers[1].dropout = Some(0.5);
    let mut b = conv_spec.to_bytes().unwrap();
    b[record_at(0) + record::POSTERIOR] = Posterior::Bernoulli as u8;
    reseal(&mut b);
    assert_eq!(parse(&b), Err(ModelError::BadDropout { layer: 0 }));
}

#[test]
fn the_fixed_point_reader_checks_its_dropout_records() {
    let spec = dropout_spec(13, StorageChoice::Dense);
    let calibration: Vec<Vec<u8>> = (0..8).map(input).collect();
    let refs: Vec<&[u8]> = calibration.iter().map(Vec::as_slice).collect();
    let q = quantize(&spec, Precision::Q8, &refs, Calibration::default()).unwrap();
    let bytes = q.to_bytes().unwrap();
    let parse = |b: &[u8]| common::parse_fixed(b);
    assert_eq!(parse(&bytes), Ok(()));
    // Any u32 threshold is a probability in [0, 1).
    for threshold in [0u32, 1, u32::MAX] {
        let mut b = bytes.clone();
        let at = record_at(1) + record::QUANT_DROP_THRESHOLD;
        b[at..at + 4].copy_from_slice(&threshold.to_le_bytes());
        reseal(&mut b);
        assert_eq!(parse(&b), Ok(()));
    }
    // Byte 27 is reserved.
    let mut b = bytes.clone();
    b[record_at(1) + record::QUANT_DROPOUT_RESERVED.start] = 3;
    reseal(&mut b);
    assert!(matches!(parse(&b), Err(ModelError::ReservedNotZero { .. })));
    // A version-7 file cannot hold the posterior.
    let mut b = bytes.clone();
    b[4..6].copy_from_slice(&7u16.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(
        parse(&b),
        Err(ModelError::UnknownCode { layer: 0, .. })
    ));
    for len in 0..bytes.len() {
        assert!(parse(&bytes[..len]).is_err(), "{len}");
    }
    // The integer kernels sample rows: a Bernoulli layer stored by input is refused.
    let mut by_input = q.clone();
    by_input.layers[0].storage = StorageChoice::SparseByInput;
    let b = by_input.to_bytes();
    assert!(
        matches!(
            b,
            Err(tinybayes::writer::WriteError::Invalid(
                ModelError::QuantLayout { layer: 0 }
            ))
        ),
        "{b:?}"
    );
}

#[test]
fn gaussian_and_bernoulli_layers_mix_in_one_network() {
    // A Gaussian first layer, a dropout layer, a Gaussian last layer: every sample draws its
    // noise and its masks from the same stream, so the answer still does not depend on the
    // chunk size, in f32 and in fixed point.
    let mut spec = synthetic::mlp(15, &WIDTHS, 0.7);
    spec.layers[1].variance = None;
    spec.layers[1].dropout = Some(0.4);
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let posteriors: Vec<Posterior> = model.layers().iter().map(|l| l.posterior()).collect();
    assert_eq!(
        posteriors,
        [
            Posterior::Gaussian,
            Posterior::Bernoulli,
            Posterior::Gaussian
        ]
    );
    let raw = input(16);
    let a = predict::<1>(&model, &raw, mc(19), 8);
    assert_eq!(a, predict::<4>(&model, &raw, mc(19), 8));
    assert_eq!(a, predict::<16>(&model, &raw, mc(19), 8));
    // The same network without the masks answers otherwise.
    let mut without = spec.clone();
    without.layers[1].dropout = Some(0.0);
    let buffer = without.to_buffer().unwrap();
    assert_ne!(a, predict::<4>(&buffer.model().unwrap(), &raw, mc(19), 8));
    let calibration: Vec<Vec<u8>> = (0..16).map(input).collect();
    let refs: Vec<&[u8]> = calibration.iter().map(Vec::as_slice).collect();
    for precision in [Precision::Q8, Precision::Q16] {
        let q = quantize(&spec, precision, &refs, Calibration::default()).unwrap();
        let buffer = q.to_buffer().unwrap();
        let fixed = QModel::from_bytes(buffer.as_bytes()).unwrap();
        let a = run_fixed::<1>(&fixed, &raw, mc(19), 8);
        assert_eq!(a, run_fixed::<4>(&fixed, &raw, mc(19), 8));
        assert_eq!(a, run_fixed::<8>(&fixed, &raw, mc(19), 8));
    }
}
