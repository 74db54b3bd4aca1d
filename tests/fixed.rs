//! The fixed-point path: quantizer, writer, reader and integer engine.
//!
//! - The engine against an independent reference (plain i128 arithmetic over the spec's
//!   dense arrays, following docs/FORMAT.md) in the mean-weights mode: identical logits, so
//!   identical probabilities and entropies.
//! - The same quantized layers stored dense, as sparse rows and by input give bit-identical
//!   results in both modes, and results never depend on CHUNK.
//! - Against f32: q16 and q8 mean-weights predictions close to the f32 engine's; the q8 Monte
//!   Carlo predictive (many samples) close to the f32 one, which checks the noise scale.
//! - Bad input: precision mix-ups, corrupt files, out-of-range values give typed errors;
//!   mutated files never panic.

mod common;

use common::{assert_mean_weights_match_reference, mc, parse_fixed, reseal, run_f32, run_fixed};

use proptest::prelude::*;
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::fixed::quantize::{quantize, Calibration};
use tinybayes::fixed::writer::{QLayerSpec, QModelSpec};
use tinybayes::fixed::{QModel, QPrediction};
use tinybayes::format::{Activation, Precision, TRAILER_LEN};
use tinybayes::writer::{synthetic, LayerOp, ModelSpec, StorageChoice};
use tinybayes::Q8;
use tinybayes::{Engine, InferenceError, Mode, Model, ModelError, Prediction};

const WIDTHS: [usize; 4] = [64, 32, 16, 5];

/// A synthetic f32 model whose first layer is stored by input, and raw inputs for it with
/// some zero pixels.
fn f32_model(seed: u64) -> ModelSpec {
    let mut spec = synthetic::mlp(seed, &WIDTHS, 0.5);
    spec.layers[0].storage = StorageChoice::SparseByInput;
    spec
}

fn images(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            (0..WIDTHS[0])
                .map(|_| {
                    let r = rng.next_u32();
                    if r % 3 == 0 {
                        0
                    } else {
                        (r >> 8) as u8
                    }
                })
                .collect()
        })
        .collect()
}

fn quantized(seed: u64, precision: Precision) -> QModelSpec {
    let imgs = images(seed ^ 0xca1, 64);
    let refs: Vec<&[u8]> = imgs.iter().map(|v| v.as_slice()).collect();
    quantize(&f32_model(seed), precision, &refs, Calibration::default()).unwrap()
}

#[test]
fn mean_weights_match_an_independent_integer_reference() {
    for precision in [Precision::Q8, Precision::Q16] {
        for seed in 0..4 {
            let spec = quantized(seed, precision);
            let buffer = spec.to_buffer().unwrap();
            let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
            for raw in images(seed + 100, 20) {
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
fn storage_layouts_and_chunk_sizes_give_identical_bits() {
    for precision in [Precision::Q8, Precision::Q16] {
        let spec = quantized(7, precision);
        let variants: Vec<QModelSpec> = [
            (StorageChoice::SparseByInput, StorageChoice::Sparse),
            (StorageChoice::Dense, StorageChoice::Dense),
            (StorageChoice::Sparse, StorageChoice::Sparse),
        ]
        .iter()
        .map(|&(first, rest)| {
            let mut s = spec.clone();
            for (i, l) in s.layers.iter_mut().enumerate() {
                l.storage = if i == 0 { first } else { rest };
            }
            s
        })
        .collect();
        let buffers: Vec<_> = variants.iter().map(|s| s.to_buffer().unwrap()).collect();
        let models: Vec<QModel> = buffers
            .iter()
            .map(|b| QModel::from_bytes(b.as_bytes()).unwrap())
            .collect();
        for (n, raw) in images(3, 12).iter().enumerate() {
            for mode in [Mode::MeanWeights, mc(1), mc(7), mc(32)] {
                let want = run_fixed::<4>(&models[0], raw, mode, n as u64);
                for m in &models {
                    assert_eq!(run_fixed::<4>(m, raw, mode, n as u64), want);
                    assert_eq!(run_fixed::<1>(m, raw, mode, n as u64), want);
                    assert_eq!(run_fixed::<8>(m, raw, mode, n as u64), want);
                }
            }
        }
    }
}

#[test]
fn a_deterministic_hidden_layer_matches_the_reference_and_ignores_chunking() {
    for precision in [Precision::Q8, Precision::Q16] {
        let mut f = f32_model(13);
        f.layers[1].variance = None;
        let imgs = images(77, 64);
        let refs: Vec<&[u8]> = imgs.iter().map(|v| v.as_slice()).collect();
        let spec = quantize(&f, precision, &refs, Calibration::default()).unwrap();
        assert!(spec.layers[1].sigma2.is_none());
        let buffer = spec.to_buffer().unwrap();
        let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
        for (n, raw) in images(5, 8).iter().enumerate() {
            assert_mean_weights_match_reference(&spec, &model, raw, &format!("{precision:?}"));
            let want = run_fixed::<8>(&model, raw, mc(13), n as u64);
            assert_eq!(run_fixed::<1>(&model, raw, mc(13), n as u64), want);
            assert_eq!(run_fixed::<4>(&model, raw, mc(13), n as u64), want);
        }
    }
}

fn max_prob_gap(q: &QPrediction<8>, f: &Prediction<8>) -> f32 {
    q.probabilities
        .iter()
        .zip(&f.probabilities)
        .map(|(a, b)| (a.to_f32() - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn fixed_point_predictions_are_close_to_f32() {
    let f32_spec = f32_model(11);
    for (precision, mean_tol, mc_tol) in
        [(Precision::Q16, 0.002, 0.03), (Precision::Q8, 0.05, 0.06)]
    {
        let spec = quantized(11, precision);
        let buffer = spec.to_buffer().unwrap();
        let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
        let mut worst_mean = 0.0f32;
        let mut worst_mc = 0.0f32;
        for (n, raw) in images(21, 10).iter().enumerate() {
            let q = run_fixed::<8>(&model, raw, Mode::MeanWeights, 0);
            let f = run_f32(&f32_spec, raw, Mode::MeanWeights, 0);
            worst_mean = worst_mean.max(max_prob_gap(&q, &f));
            // Many samples: both estimate the same posterior predictive.
            let q = run_fixed::<8>(&model, raw, mc(4000), n as u64);
            let f = run_f32(&f32_spec, raw, mc(4000), n as u64 + 99);
            worst_mc = worst_mc.max(max_prob_gap(&q, &f));
            let mi_gap = (q.mutual_information.to_f32() - f.mutual_information).abs();
            assert!(
                mi_gap < 0.05 + 0.2 * f.mutual_information,
                "{precision:?}: MI {} vs {}",
                q.mutual_information.to_f32(),
                f.mutual_information
            );
        }
        assert!(
            worst_mean <= mean_tol,
            "{precision:?} mean-weights gap {worst_mean}"
        );
        assert!(
            worst_mc <= mc_tol,
            "{precision:?} Monte Carlo gap {worst_mc}"
        );
    }
}

#[test]
fn precision_mix_ups_are_typed_errors() {
    let f32_bytes = f32_model(1).to_buffer().unwrap();
    assert_eq!(
        QModel::from_bytes(f32_bytes.as_bytes()).unwrap_err(),
        ModelError::WrongPrecision {
            found: Precision::F32,
            expected: Precision::Q8
        }
    );
    let q = quantized(1, Precision::Q8).to_buffer().unwrap();
    assert_eq!(
        Model::from_bytes(q.as_bytes()).unwrap_err(),
        ModelError::WrongPrecision {
            found: Precision::Q8,
            expected: Precision::F32
        }
    );
}

#[test]
fn bad_inputs_and_workspaces_are_typed_errors() {
    let q = quantized(2, Precision::Q8).to_buffer().unwrap();
    let model = QModel::from_bytes(q.as_bytes()).unwrap();
    let mut small = vec![0u64; model.workspace_len(4) - 1];
    assert!(matches!(
        Engine::<4, Q8>::new(&model, &mut small),
        Err(InferenceError::WorkspaceTooSmall { .. })
    ));
    let mut ws = vec![0u64; model.workspace_len(4)];
    let mut engine = Engine::<4, Q8>::new(&model, &mut ws).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(0);
    let r: Result<QPrediction<8>, _> = engine.predict_u8(&[0u8; 3], Mode::MeanWeights, &mut rng);
    assert_eq!(
        r.unwrap_err(),
        InferenceError::InputLength {
            expected: 64,
            found: 3
        }
    );
    let r: Result<QPrediction<2>, _> = engine.predict_u8(&[0u8; 64], Mode::MeanWeights, &mut rng);
    assert!(matches!(r, Err(InferenceError::ClassCapacity { .. })));
}

#[test]
fn corrupt_fixed_point_files_are_refused() {
    let good = quantized(3, Precision::Q8).to_bytes().unwrap();
    assert_eq!(parse_fixed(&good), Ok(()));
    assert!(matches!(
        parse_fixed(&good[..good.len() - 1]),
        Err(ModelError::LengthMismatch { .. })
    ));
    let mut b = good.clone();
    b[200] ^= 0x40;
    assert!(matches!(
        parse_fixed(&b),
        Err(ModelError::CrcMismatch { .. })
    ));
    // Unknown precision code, and a q8 code in a version-2 file.
    let mut b = good.clone();
    b[22] = 9;
    reseal(&mut b);
    assert_eq!(parse_fixed(&b), Err(ModelError::BadPrecision { code: 9 }));
    let mut b = good.clone();
    b[4] = 2;
    reseal(&mut b);
    assert_eq!(parse_fixed(&b), Err(ModelError::BadPrecision { code: 1 }));
    // Shift 0 on the first layer (record byte 24).
    let mut b = good.clone();
    b[48 + 24] = 0;
    reseal(&mut b);
    assert_eq!(parse_fixed(&b), Err(ModelError::QuantLayout { layer: 0 }));
}

#[test]
fn oversized_variances_are_refused_for_q8() {
    let spec = QModelSpec {
        precision: Precision::Q8,
        input_shape: [1, 1, 300],
        num_classes: 2,
        input_scale: 1.0 / 255.0,
        input_offset: 0.0,
        layers: vec![QLayerSpec {
            op: LayerOp::Linear,
            inputs: 300,
            outputs: 2,
            activation: Activation::Identity,
            shift: 8,
            bias_shift: 0,
            params: vec![[1, 1, 0]; 2],
            theta: vec![1; 600],
            sigma2: Some(vec![255; 600]),
            storage: StorageChoice::Dense,
            drop_threshold: None,
        }],
        trained: None,
        channel_norm: None,
        input_step: None,
    };
    assert!(matches!(
        spec.to_buffer(),
        Err(tinybayes::writer::WriteError::Invalid(
            ModelError::QuantRange { layer: 0 }
        ))
    ));
    let mut narrower = spec.clone();
    narrower.layers[0].sigma2 = Some(vec![200; 600]);
    assert!(narrower.to_buffer().is_ok());
    let mut out_of_range = spec;
    out_of_range.layers[0].theta[0] = 128;
    assert!(out_of_range.to_buffer().is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Mutated q8 and q16 files, CRC recomputed: the reader never panics, and whatever it
    /// accepts runs in both modes.
    #[test]
    fn mutated_fixed_point_models_never_panic(
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
        let buffer = tinybayes::writer::ModelBuffer::from_bytes(&b);
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
