//! Per-channel input normalisation (format version 9): the writer and the reader agree, every
//! malformed table is a typed error (never a panic), the engine's raw 8-bit and raw f32
//! inputs give the bits of the f32 engine on host-normalised inputs in every mode, and the
//! fixed-point quantizer folds per-channel scales into the first layer, for unsigned bytes and
//! for signed 8-bit codes (format version 10).

mod common;

use common::{mc, run_f32, run_fixed, try_run_fixed, FixedInput};

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::early_exit::Halting;
use tinybayes::fixed::quantize::{quantize, quantize_signed, Calibration, QuantizeError};
use tinybayes::fixed::QModel;
use tinybayes::format::{self, ChannelNorm, InputCoding, Precision, CRC32, TRAILER_LEN};
use tinybayes::writer::{synthetic, LayerOp, ModelBuffer, ModelSpec, StorageChoice, WriteError};
use tinybayes::{Engine, InferenceError, Mode, Model, ModelError};

const CHUNK: usize = 4;
/// Header offsets (docs/FORMAT.md).
const VERSION: usize = 4;
const FLAGS: usize = 23;
const INPUT_SCALE: usize = 24;
const FILE_LEN: usize = 8;

fn norm(scale: f32, offset: f32) -> ChannelNorm {
    ChannelNorm { scale, offset }
}

/// Three channels that differ in scale and offset (sensor-like statistics).
fn table() -> Vec<ChannelNorm> {
    vec![
        norm(1.0 / 255.0, -0.5),
        norm(0.02, 0.25),
        norm(-0.0078125, 1.5),
    ]
}

/// An MLP over a `[3, 2, 4]` input (24 values) with a per-channel table; `by_input` stores the
/// first layer by input (the kernels' zero-skipping path for bytes).
fn mlp_spec(seed: u64, norms: Vec<ChannelNorm>, by_input: bool) -> ModelSpec {
    let mut spec = synthetic::mlp(seed, &[24, 12, 5], 0.6);
    spec.input_shape = [3, 2, 4];
    spec.channel_norm = Some(norms);
    if by_input {
        spec.layers[0].storage = StorageChoice::SparseByInput;
    }
    spec
}

/// The early-exit ResNet of the synthetic models with a three-channel stem.
fn resnet_spec(seed: u64, norms: Vec<ChannelNorm>) -> ModelSpec {
    let side = 6;
    let mut spec = synthetic::resnet_ee(seed, side, 4, 5, &[0.4, 0.35, 0.25], 2.0);
    let stem = &mut spec.layers[0];
    let LayerOp::Conv2d { out_channels, .. } = stem.op else {
        panic!("the stem is a convolution")
    };
    let gains = [1.0f32, -0.7, 0.4];
    let widen = |v: &[f32], square: bool| -> Vec<f32> {
        let mut out = Vec::with_capacity(v.len() * 3);
        for o in 0..out_channels {
            for g in gains {
                let g = if square { g * g } else { g };
                out.extend(v[o * 9..o * 9 + 9].iter().map(|x| x * g));
            }
        }
        out
    };
    stem.theta = widen(&stem.theta, false);
    stem.variance = stem.variance.as_deref().map(|v| widen(v, true));
    stem.inputs = 3 * side * side;
    spec.input_shape = [3, side, side];
    spec.channel_norm = Some(norms);
    spec
}

fn raw_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let r = rng.next_u32();
            if r % 4 == 0 {
                0
            } else {
                (r >> 8) as u8
            }
        })
        .collect()
}

/// What a host does before calling `predict`: every value through its channel's pair.
fn host_normalised(model: &Model<'_>, raw: impl Iterator<Item = f32>) -> Vec<f32> {
    let plane = model.input_shape()[1] * model.input_shape()[2];
    raw.enumerate()
        .map(|(i, p)| {
            let n = model.channel_norm(i / plane);
            p * n.scale + n.offset
        })
        .collect()
}

fn modes() -> [Mode; 4] {
    [
        Mode::MeanWeights,
        mc(9),
        Mode::Moments,
        Mode::MomentsThenSample {
            samples: core::num::NonZeroU16::new(6).unwrap(),
        },
    ]
}

fn seeded(seed: u64) -> Xoshiro128PlusPlus {
    Xoshiro128PlusPlus::seed_from_u64(seed)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn reseal(b: &mut [u8]) {
    let body = b.len() - TRAILER_LEN;
    let crc = CRC32.checksum(&b[..body]);
    b[body..].copy_from_slice(&crc.to_le_bytes());
}

/// Parses with both readers' entry points; the f32 ones must agree.
fn parse(bytes: &[u8]) -> Result<(), ModelError> {
    let buffer = ModelBuffer::from_bytes(bytes);
    let direct = Model::from_bytes(buffer.as_bytes()).map(|m| format!("{m:?}"));
    let mut slot = core::mem::MaybeUninit::uninit();
    let in_place = Model::from_bytes_into(buffer.as_bytes(), &mut slot).map(|m| format!("{m:?}"));
    assert_eq!(direct, in_place);
    direct.map(|_| ())
}

fn patched(base: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Result<(), ModelError> {
    let mut b = base.to_vec();
    edit(&mut b);
    reseal(&mut b);
    parse(&b)
}

/// Offset of the table (after the layer records) in a written file.
fn table_at(bytes: &[u8]) -> usize {
    format::HEADER_LEN + usize::from(u16::from_le_bytes([bytes[12], bytes[13]])) * 32
}

// ---------------------------------------------------------------------------------------------
// Writer and reader
// ---------------------------------------------------------------------------------------------

#[test]
fn a_per_channel_table_round_trips_as_version_9() {
    let spec = mlp_spec(1, table(), false);
    let bytes = spec.to_bytes().unwrap();
    assert_eq!(u16::from_le_bytes([bytes[VERSION], bytes[VERSION + 1]]), 9);
    assert_eq!(bytes[FLAGS], format::FLAG_CHANNEL_NORM);
    let at = table_at(&bytes);
    assert_eq!(u32_at(&bytes, at), 3);
    for (c, n) in table().iter().enumerate() {
        assert_eq!(u32_at(&bytes, at + 4 + 8 * c), n.scale.to_bits());
        assert_eq!(u32_at(&bytes, at + 8 + 8 * c), n.offset.to_bits());
    }
    let buffer = ModelBuffer::from_bytes(&bytes);
    let model = buffer.model().unwrap();
    assert!(model.has_channel_norm());
    assert_eq!(model.input_normalization(), (1.0, 0.0));
    assert_eq!(model.channel_norms().collect::<Vec<_>>(), table());
    for (c, n) in table().into_iter().enumerate() {
        assert_eq!(model.channel_norm(c), n);
    }
    // Out of range: the header's pair.
    assert_eq!(model.channel_norm(3), ChannelNorm::IDENTITY);
    // The spec read back writes the same bytes.
    let back = ModelSpec::from_model(&model);
    assert_eq!(back.channel_norm, Some(table()));
    assert_eq!(back.to_bytes().unwrap(), bytes);
}

#[test]
fn equal_pairs_are_written_as_the_old_global_fields() {
    let pair = norm(1.0 / 255.0, -0.25);
    let with_table = mlp_spec(2, vec![pair; 3], false);
    let mut global = with_table.clone();
    global.channel_norm = None;
    global.input_scale = pair.scale;
    global.input_offset = pair.offset;
    let bytes = with_table.to_bytes().unwrap();
    assert_eq!(bytes, global.to_bytes().unwrap());
    assert!(u16::from_le_bytes([bytes[VERSION], bytes[VERSION + 1]]) < 9);
    assert_eq!(bytes[FLAGS], 0);
    let buffer = ModelBuffer::from_bytes(&bytes);
    let model = buffer.model().unwrap();
    assert!(!model.has_channel_norm());
    assert!(model.channel_norms().all(|n| n == pair));
    // Pairs that differ only in the sign of a zero offset normalise differently: kept.
    let signed = mlp_spec(
        2,
        vec![pair, norm(pair.scale, 0.0), norm(pair.scale, -0.0)],
        false,
    );
    assert_eq!(signed.to_bytes().unwrap()[FLAGS], format::FLAG_CHANNEL_NORM);
}

#[test]
fn the_writer_refuses_a_table_of_the_wrong_length() {
    for n in [0, 2, 4] {
        let spec = mlp_spec(3, vec![norm(0.5, 0.0); n], false);
        assert_eq!(
            spec.to_bytes(),
            Err(WriteError::Invalid(ModelError::ChannelNormLength {
                found: n as u32,
                expected: 3
            }))
        );
    }
    let mut bad = mlp_spec(3, table(), false);
    bad.channel_norm.as_mut().unwrap()[1].scale = f32::NAN;
    assert_eq!(
        bad.to_bytes(),
        Err(WriteError::Invalid(ModelError::ChannelNormNotFinite {
            channel: 1
        }))
    );
}

#[test]
fn every_malformed_table_is_its_typed_error() {
    let valid = mlp_spec(4, table(), false).to_bytes().unwrap();
    parse(&valid).unwrap();
    let at = table_at(&valid);
    let set_f32 =
        |b: &mut Vec<u8>, at: usize, v: f32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    // The flag in an older version.
    for version in [1u16, 5, 8] {
        let got = patched(&valid, |b| {
            b[VERSION..VERSION + 2].copy_from_slice(&version.to_le_bytes())
        });
        assert_eq!(got, Err(ModelError::ChannelNormVersion { version }));
    }
    // Unknown flag bits stay reserved (bit 1 is the signed-input flag of version 10: tested
    // below).
    for bit in [0x04u8, 0x80] {
        let got = patched(&valid, |b| b[FLAGS] |= bit);
        assert_eq!(got, Err(ModelError::ReservedNotZero { offset: FLAGS }));
    }
    // Wrong count.
    for found in [0u32, 2, 4, u32::MAX] {
        let got = patched(&valid, |b| {
            b[at..at + 4].copy_from_slice(&found.to_le_bytes())
        });
        assert_eq!(
            got,
            Err(ModelError::ChannelNormLength { found, expected: 3 })
        );
    }
    // Non-finite scales and offsets, per channel.
    for c in 0..3 {
        for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let got = patched(&valid, |b| set_f32(b, at + 4 + 8 * c, v));
            assert_eq!(got, Err(ModelError::ChannelNormNotFinite { channel: c }));
            let got = patched(&valid, |b| set_f32(b, at + 8 + 8 * c, v));
            assert_eq!(got, Err(ModelError::ChannelNormNotFinite { channel: c }));
        }
        // Finite, but a raw byte of 255 overflows.
        let got = patched(&valid, |b| set_f32(b, at + 4 + 8 * c, 3e38));
        assert_eq!(got, Err(ModelError::ChannelNormNotFinite { channel: c }));
        for zero in [0.0f32, -0.0] {
            let got = patched(&valid, |b| set_f32(b, at + 4 + 8 * c, zero));
            assert_eq!(got, Err(ModelError::ChannelNormZeroScale { channel: c }));
        }
    }
    // The header's pair must be the identity beside a table.
    for (field, v) in [(INPUT_SCALE, 0.5f32), (INPUT_SCALE + 4, -0.0)] {
        let got = patched(&valid, |b| set_f32(b, field, v));
        assert_eq!(got, Err(ModelError::BadInputNormalization));
    }
    // Truncated: the file ends inside the count or inside the pairs.
    for keep in [at + 2, at + 4, at + 4 + 8 * 2 + 4] {
        let mut b = valid[..keep].to_vec();
        b.extend_from_slice(&[0; TRAILER_LEN]);
        let len = b.len() as u32;
        b[FILE_LEN..FILE_LEN + 4].copy_from_slice(&len.to_le_bytes());
        reseal(&mut b);
        assert_eq!(
            parse(&b),
            Err(ModelError::ChannelNormTruncated),
            "keep {keep}"
        );
    }
    // Without the flag the table's bytes are where the first payload should start.
    let got = patched(&valid, |b| b[FLAGS] = 0);
    assert!(got.is_err());
}

#[test]
fn fixed_point_files_check_their_table_the_same_way() {
    let spec = mlp_spec(5, scales_only(), false);
    let q = quantize(
        &spec,
        Precision::Q8,
        &refs(&calibration_set()),
        Calibration::default(),
    )
    .unwrap();
    let bytes = q.to_bytes().unwrap();
    let buffer = ModelBuffer::from_bytes(&bytes);
    let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
    assert!(model.has_channel_norm());
    assert_eq!(model.channel_norms().collect::<Vec<_>>(), scales_only());
    let at = table_at(&bytes);
    let qparse = |b: &[u8]| {
        let buffer = ModelBuffer::from_bytes(b);
        QModel::from_bytes(buffer.as_bytes()).map(|_| ())
    };
    let mut b = bytes.clone();
    b[at + 4 + 8..at + 8 + 8].copy_from_slice(&0.0f32.to_le_bytes());
    reseal(&mut b);
    assert_eq!(
        qparse(&b),
        Err(ModelError::ChannelNormZeroScale { channel: 1 })
    );
    let mut b = bytes.clone();
    b[at + 8 + 16..at + 12 + 16].copy_from_slice(&f32::NAN.to_le_bytes());
    reseal(&mut b);
    assert_eq!(
        qparse(&b),
        Err(ModelError::ChannelNormNotFinite { channel: 2 })
    );
    let mut b = bytes.clone();
    b[at..at + 4].copy_from_slice(&7u32.to_le_bytes());
    reseal(&mut b);
    assert_eq!(
        qparse(&b),
        Err(ModelError::ChannelNormLength {
            found: 7,
            expected: 3
        })
    );
}

/// Every byte of the table region set to assorted values: the readers answer, never panic,
/// and a model that loads runs.
#[test]
fn mutated_tables_never_panic() {
    let valid = mlp_spec(6, table(), true).to_bytes().unwrap();
    let at = table_at(&valid);
    for k in FLAGS..at + 4 + 24 + 8 {
        for v in [0u8, 1, 0x7f, 0x80, 0xff] {
            let mut b = valid.clone();
            b[k] = v;
            reseal(&mut b);
            let buffer = ModelBuffer::from_bytes(&b);
            let _ = QModel::from_bytes(buffer.as_bytes());
            let parsed = Model::from_bytes(buffer.as_bytes());
            if let Ok(model) = parsed {
                let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, CHUNK).workspace_len()];
                let mut engine = Engine::<CHUNK>::new(&model, &mut ws).unwrap();
                let raw = raw_bytes(k as u64, model.input_len());
                let _ = engine.predict_u8::<8>(&raw, Mode::MeanWeights, &mut seeded(1));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Engine
// ---------------------------------------------------------------------------------------------

/// `predict_u8` and `predict_raw` equal `predict` on the host-normalised values, bit for bit.
fn assert_plain_inputs_agree(spec: &ModelSpec) {
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, CHUNK).workspace_len()];
    let mut engine = Engine::<CHUNK>::new(&model, &mut ws).unwrap();
    for trial in 0..4u64 {
        let raw = raw_bytes(trial, model.input_len());
        let normalised = host_normalised(&model, raw.iter().map(|&p| p as f32));
        // Sensor readings: fractional, negative, large.
        let readings: Vec<f32> = raw
            .iter()
            .enumerate()
            .map(|(i, &p)| (p as f32 - 100.0) * 0.37 + i as f32 * 1e-3)
            .collect();
        let readings_normalised = host_normalised(&model, readings.iter().copied());
        for mode in modes() {
            let a = engine
                .predict::<8>(&normalised, mode, &mut seeded(trial))
                .unwrap();
            let b = engine
                .predict_u8::<8>(&raw, mode, &mut seeded(trial))
                .unwrap();
            let c = engine
                .predict_raw::<8>(&bytes_as_f32(&raw), mode, &mut seeded(trial))
                .unwrap();
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "u8 {mode:?}");
            assert_eq!(format!("{a:?}"), format!("{c:?}"), "raw {mode:?}");
            let d = engine
                .predict::<8>(&readings_normalised, mode, &mut seeded(trial))
                .unwrap();
            let e = engine
                .predict_raw::<8>(&readings, mode, &mut seeded(trial))
                .unwrap();
            assert_eq!(format!("{d:?}"), format!("{e:?}"), "readings {mode:?}");
        }
    }
}

fn bytes_as_f32(raw: &[u8]) -> Vec<f32> {
    raw.iter().map(|&p| p as f32).collect()
}

#[test]
fn per_channel_mlp_inputs_equal_host_normalised_inputs() {
    assert_plain_inputs_agree(&mlp_spec(7, table(), false));
    assert_plain_inputs_agree(&mlp_spec(8, table(), true));
    // A model with one pair: the table fast path for bytes, the pair for raw f32.
    let mut global = mlp_spec(9, table(), true);
    global.channel_norm = None;
    global.input_offset = -0.25;
    assert_plain_inputs_agree(&global);
}

#[test]
fn per_channel_resnet_inputs_equal_host_normalised_inputs() {
    let spec = resnet_spec(10, table());
    assert_plain_inputs_agree(&spec);
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, CHUNK).workspace_len()];
    let mut engine = Engine::<CHUNK>::new(&model, &mut ws).unwrap();
    for trial in 0..3u64 {
        let raw = raw_bytes(trial + 40, model.input_len());
        let normalised = host_normalised(&model, raw.iter().map(|&p| p as f32));
        for mode in modes() {
            for halting in [Halting::All, Halting::JointMode { prior: None }] {
                let a =
                    engine.predict_early_exit::<8>(&normalised, mode, halting, &mut seeded(trial));
                let b = engine.predict_u8_early_exit::<8>(&raw, mode, halting, &mut seeded(trial));
                let raw_f = bytes_as_f32(&raw);
                let c =
                    engine.predict_raw_early_exit::<8>(&raw_f, mode, halting, &mut seeded(trial));
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "u8 {mode:?}");
                assert_eq!(format!("{a:?}"), format!("{c:?}"), "raw {mode:?}");
            }
        }
    }
}

#[test]
fn raw_f32_inputs_that_overflow_are_typed_errors() {
    let buffer = mlp_spec(11, table(), false).to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, CHUNK).workspace_len()];
    let mut engine = Engine::<CHUNK>::new(&model, &mut ws).unwrap();
    let mut raw = vec![1.0f32; 24];
    // Channel 1 (scale 0.02) normalises f32::MAX to a finite value: not an input error (the
    // logits may still overflow).
    raw[9] = f32::MAX;
    assert_ne!(
        engine.predict_raw::<8>(&raw, Mode::MeanWeights, &mut seeded(0)),
        Err(tinybayes::InferenceError::NonFiniteInput)
    );
    // A NaN reading is a non-finite input.
    raw[3] = f32::NAN;
    assert_eq!(
        engine.predict_raw::<8>(&raw, Mode::MeanWeights, &mut seeded(0)),
        Err(tinybayes::InferenceError::NonFiniteInput)
    );
    assert!(matches!(
        engine.predict_raw::<8>(&raw[..20], Mode::MeanWeights, &mut seeded(0)),
        Err(tinybayes::InferenceError::InputLength { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Fixed point
// ---------------------------------------------------------------------------------------------

/// Per-channel scales with zero offsets: what fixed point takes.
fn scales_only() -> Vec<ChannelNorm> {
    vec![
        norm(1.0 / 255.0, 0.0),
        norm(0.5 / 255.0, 0.0),
        norm(-2.0 / 255.0, 0.0),
    ]
}

fn calibration_set() -> Vec<Vec<u8>> {
    (0..64).map(|s| raw_bytes(1000 + s, 24)).collect()
}

fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
    v.iter().map(|x| x.as_slice()).collect()
}

/// The per-channel model quantized to q16 and q8 predicts what the f32 model with the same
/// table predicts from the same bytes, within the tolerances of `tests/fixed.rs`; the folded
/// scales change the f32 network's answers (so the test would see a fold that was skipped).
#[test]
fn fixed_point_folds_per_channel_scales_into_the_first_layer() {
    for (seed, by_input) in [(12u64, false), (13, true)] {
        let spec = mlp_spec(seed, scales_only(), by_input);
        let mut unscaled = spec.clone();
        unscaled.channel_norm = None;
        let cal = calibration_set();
        for (precision, mean_tol, mc_tol) in
            [(Precision::Q16, 0.002, 0.03), (Precision::Q8, 0.05, 0.06)]
        {
            let q = quantize(&spec, precision, &refs(&cal), Calibration::default()).unwrap();
            assert_eq!(q.channel_norm, Some(scales_only()));
            let buffer = q.to_buffer().unwrap();
            let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
            let mut worst = (0.0f32, 0.0f32, 0.0f32);
            for (n, raw) in (0..8).map(|s| raw_bytes(2000 + s, 24)).enumerate() {
                let gap = prob_gap;
                let qm = run_fixed::<8>(&model, &raw, Mode::MeanWeights, 0);
                let fm = run_f32(&spec, &raw, Mode::MeanWeights, 0);
                let um = run_f32(&unscaled, &raw, Mode::MeanWeights, 0);
                worst.0 = worst.0.max(gap(&qm, &fm));
                worst.2 = worst.2.max(gap(&qm, &um));
                let qs = run_fixed::<8>(&model, &raw, mc(2000), n as u64);
                let fs = run_f32(&spec, &raw, mc(2000), n as u64 + 99);
                worst.1 = worst.1.max(gap(&qs, &fs));
            }
            assert!(
                worst.0 <= mean_tol,
                "{precision:?} {by_input}: mean gap {}",
                worst.0
            );
            assert!(
                worst.1 <= mc_tol,
                "{precision:?} {by_input}: MC gap {}",
                worst.1
            );
            assert!(
                worst.2 > 0.05,
                "{precision:?}: the scales made no difference ({})",
                worst.2
            );
        }
    }
}

#[test]
fn fixed_point_folds_scales_into_a_convolution_stem() {
    let spec = resnet_spec(
        14,
        vec![
            norm(1.0 / 255.0, 0.0),
            norm(0.25 / 255.0, 0.0),
            norm(3.0 / 255.0, 0.0),
        ],
    );
    let cal: Vec<Vec<u8>> = (0..32).map(|s| raw_bytes(3000 + s, 108)).collect();
    let q = quantize(&spec, Precision::Q16, &refs(&cal), Calibration::default()).unwrap();
    let buffer = q.to_buffer().unwrap();
    let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
    let f32_buffer = spec.to_buffer().unwrap();
    let f32_model = f32_buffer.model().unwrap();
    let mut worst = 0.0f32;
    for s in 0..6 {
        let raw = raw_bytes(4000 + s, 108);
        let mut ws = vec![0u64; model.workspace_len(1)];
        let mut engine = Engine::<1, tinybayes::Q16>::new(&model, &mut ws).unwrap();
        let qp = engine
            .predict_u8::<8>(&raw, Mode::MeanWeights, &mut seeded(0))
            .unwrap();
        let mut fws = vec![0.0f32; tinybayes::Plan::new(&f32_model, 1).workspace_len()];
        let mut fengine = Engine::<1>::new(&f32_model, &mut fws).unwrap();
        let fp = fengine
            .predict_u8::<8>(&raw, Mode::MeanWeights, &mut seeded(0))
            .unwrap();
        worst = worst.max(prob_gap(&qp, &fp));
    }
    assert!(worst <= 0.01, "q16 ResNet gap {worst}");
}

#[test]
fn fixed_point_refuses_non_zero_offsets_by_name() {
    let spec = mlp_spec(15, table(), false);
    let cal = calibration_set();
    let err = quantize(&spec, Precision::Q8, &refs(&cal), Calibration::default()).unwrap_err();
    assert_eq!(err, QuantizeError::ChannelOffsets { channel: 0 });
    let text = err.to_string();
    assert!(
        text.contains("zero input offsets") && text.contains("channel 0"),
        "{text}"
    );
    let mut short = mlp_spec(15, scales_only(), false);
    short.channel_norm.as_mut().unwrap().pop();
    assert_eq!(
        quantize(&short, Precision::Q8, &refs(&cal), Calibration::default()).unwrap_err(),
        QuantizeError::ChannelNormLength
    );
    // One shared pair is the global normalisation, with its old rule.
    let uniform = mlp_spec(15, vec![norm(1.0 / 255.0, -0.5); 3], false);
    assert_eq!(
        quantize(&uniform, Precision::Q8, &refs(&cal), Calibration::default()).unwrap_err(),
        QuantizeError::InputNormalization
    );
}

// ---------------------------------------------------------------------------------------------
// Signed 8-bit codes (format version 10)
// ---------------------------------------------------------------------------------------------

/// The raw value of one code: an accelerometer's +-1.5 g over the codes -127..=127.
const STEP: f32 = 1.5 / 127.0;
/// Header bytes 44..48: the input step of a signed-input file.
const INPUT_STEP: usize = 44;

/// Per-channel scales (zero offsets) of signed readings, one of them negative.
fn signed_scales() -> Vec<ChannelNorm> {
    vec![norm(1.0 / 1.5, 0.0), norm(0.5, 0.0), norm(-2.0, 0.0)]
}

/// Signed codes of random readings in +-1.5 (a quarter of them zero).
fn signed_codes(seed: u64, n: usize) -> Vec<i8> {
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let r = rng.next_u32();
            let raw = if r % 4 == 0 {
                0.0
            } else {
                ((r >> 8) as f32 / 16_777_216.0 * 3.0) - 1.5
            };
            InputCoding::signed_code(raw, STEP).unwrap()
        })
        .collect()
}

/// The raw readings the codes stand for, as the f32 model takes them (`predict_raw`).
fn readings(codes: &[i8]) -> Vec<f32> {
    codes.iter().map(|&q| q as f32 * STEP).collect()
}

fn f32_raw(spec: &ModelSpec, raw: &[f32], mode: Mode, seed: u64) -> tinybayes::Prediction<8> {
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, 8).workspace_len()];
    let mut engine = Engine::<8>::new(&model, &mut ws).unwrap();
    engine.predict_raw(raw, mode, &mut seeded(seed)).unwrap()
}

fn prob_gap(a: &tinybayes::QPrediction<8>, b: &tinybayes::Prediction<8>) -> f32 {
    a.probabilities
        .iter()
        .zip(&b.probabilities)
        .map(|(x, y)| (x.to_f32() - y).abs())
        .fold(0.0, f32::max)
}

fn code_refs(v: &[Vec<i8>]) -> Vec<&[i8]> {
    v.iter().map(|x| x.as_slice()).collect()
}

/// A model quantized for signed codes predicts from the codes what the f32 model predicts
/// from the readings they stand for, within the tolerances of the byte fold above, by rows
/// and by input, in q16 and q8, with mean weights and Monte Carlo; reading the codes' signs
/// matters (the f32 model on the readings' magnitudes answers differently).
#[test]
fn fixed_point_reads_signed_codes_as_the_f32_model_reads_their_values() {
    for (seed, by_input) in [(21u64, false), (22, true)] {
        let spec = mlp_spec(seed, signed_scales(), by_input);
        let cal: Vec<Vec<i8>> = (0..64).map(|s| signed_codes(5000 + s, 24)).collect();
        for (precision, mean_tol, mc_tol) in
            [(Precision::Q16, 0.002, 0.03), (Precision::Q8, 0.05, 0.06)]
        {
            let q = quantize_signed(
                &spec,
                precision,
                &code_refs(&cal),
                STEP,
                Calibration::default(),
            )
            .unwrap();
            assert_eq!(q.input_step, Some(STEP));
            assert_eq!(q.channel_norm, Some(signed_scales()));
            let bytes = q.to_bytes().unwrap();
            assert_eq!(u16::from_le_bytes([bytes[VERSION], bytes[VERSION + 1]]), 10);
            assert_eq!(
                bytes[FLAGS],
                format::FLAG_CHANNEL_NORM | format::FLAG_SIGNED_INPUT
            );
            let buffer = ModelBuffer::from_bytes(&bytes);
            let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
            assert_eq!(model.input_coding(), InputCoding::Signed { step: STEP });
            assert_eq!(model.channel_norms().collect::<Vec<_>>(), signed_scales());
            let (mut mean_gap, mut mc_gap, mut sign_gap) = (0.0f32, 0.0f32, 0.0f32);
            for n in 0..8u64 {
                let codes = signed_codes(6000 + n, 24);
                let values = readings(&codes);
                let run = |mode, seed| {
                    try_run_fixed::<8>(&model, FixedInput::Codes(&codes), mode, seed).unwrap()
                };
                let qm = run(Mode::MeanWeights, 0);
                mean_gap = mean_gap.max(prob_gap(
                    &qm,
                    &f32_raw(&spec, &values, Mode::MeanWeights, 0),
                ));
                let magnitudes: Vec<f32> = values.iter().map(|v| v.abs()).collect();
                sign_gap = sign_gap.max(prob_gap(
                    &qm,
                    &f32_raw(&spec, &magnitudes, Mode::MeanWeights, 0),
                ));
                let qs = run(mc(2000), n);
                mc_gap = mc_gap.max(prob_gap(&qs, &f32_raw(&spec, &values, mc(2000), n + 99)));
            }
            let what = format!("{precision:?} by_input {by_input}");
            assert!(mean_gap <= mean_tol, "{what}: mean gap {mean_gap}");
            assert!(mc_gap <= mc_tol, "{what}: MC gap {mc_gap}");
            assert!(
                sign_gap > 0.05,
                "{what}: the signs made no difference ({sign_gap})"
            );
        }
    }
}

/// The same through a convolution stem (the early-exit ResNet's, three channels), in q16.
#[test]
fn fixed_point_reads_signed_codes_through_a_convolution_stem() {
    let spec = resnet_spec(23, signed_scales());
    let cal: Vec<Vec<i8>> = (0..32).map(|s| signed_codes(7000 + s, 108)).collect();
    let q = quantize_signed(
        &spec,
        Precision::Q16,
        &code_refs(&cal),
        STEP,
        Calibration::default(),
    )
    .unwrap();
    let buffer = q.to_buffer().unwrap();
    let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
    let mut worst = 0.0f32;
    for s in 0..6 {
        let codes = signed_codes(8000 + s, 108);
        let qp =
            try_run_fixed::<1>(&model, FixedInput::Codes(&codes), Mode::MeanWeights, 0).unwrap();
        worst = worst.max(prob_gap(
            &qp,
            &f32_raw(&spec, &readings(&codes), Mode::MeanWeights, 0),
        ));
    }
    assert!(worst <= 0.01, "q16 ResNet gap {worst}");
}

/// Bytes given to a model of codes, and codes to a model of bytes, are typed errors; the
/// quantizer refuses offsets and a step that is not finite and positive.
#[test]
fn signed_and_unsigned_inputs_are_not_confused() {
    let spec = mlp_spec(24, signed_scales(), false);
    let cal: Vec<Vec<i8>> = (0..16).map(|s| signed_codes(9000 + s, 24)).collect();
    let q = quantize_signed(
        &spec,
        Precision::Q8,
        &code_refs(&cal),
        STEP,
        Calibration::default(),
    )
    .unwrap();
    let buffer = q.to_buffer().unwrap();
    let signed = QModel::from_bytes(buffer.as_bytes()).unwrap();
    let bytes = raw_bytes(1, 24);
    let codes = signed_codes(2, 24);
    assert_eq!(
        try_run_fixed::<4>(&signed, FixedInput::Bytes(&bytes), Mode::MeanWeights, 0).unwrap_err(),
        InferenceError::WrongInputSign { model_signed: true }
    );
    let unsigned_spec = mlp_spec(24, scales_only(), false);
    let uq = quantize(
        &unsigned_spec,
        Precision::Q8,
        &refs(&calibration_set()),
        Calibration::default(),
    )
    .unwrap();
    assert_eq!(uq.input_step, None);
    let ubuffer = uq.to_buffer().unwrap();
    let unsigned = QModel::from_bytes(ubuffer.as_bytes()).unwrap();
    assert_eq!(unsigned.input_coding(), InputCoding::Unsigned);
    assert_eq!(
        try_run_fixed::<4>(&unsigned, FixedInput::Codes(&codes), Mode::MeanWeights, 0).unwrap_err(),
        InferenceError::WrongInputSign {
            model_signed: false
        }
    );
    let calibrated = code_refs(&cal);
    let signed_q = |spec: &ModelSpec, step: f32| {
        quantize_signed(
            spec,
            Precision::Q8,
            &calibrated,
            step,
            Calibration::default(),
        )
        .map(|_| ())
    };
    assert_eq!(
        signed_q(&mlp_spec(24, table(), false), STEP),
        Err(QuantizeError::ChannelOffsets { channel: 0 })
    );
    for step in [0.0, -STEP, f32::NAN, f32::INFINITY] {
        assert_eq!(
            signed_q(&spec, step),
            Err(QuantizeError::InputNormalization),
            "step {step}"
        );
    }
    // No table: the header's pair applies to every channel (offset zero here).
    let mut global = spec.clone();
    global.channel_norm = None;
    global.input_scale = 0.5;
    global.input_offset = 0.0;
    assert_eq!(signed_q(&global, STEP), Ok(()));
    // Codes: rounded to the nearest step, clamped, none for non-finite readings.
    assert_eq!(InputCoding::signed_code(0.51 * STEP, STEP), Some(1));
    assert_eq!(InputCoding::signed_code(-2.5 * STEP, STEP), Some(-3));
    assert_eq!(InputCoding::signed_code(1e9, STEP), Some(127));
    assert_eq!(InputCoding::signed_code(-1e9, STEP), Some(-127));
    assert_eq!(InputCoding::signed_code(f32::NAN, STEP), None);
}

/// Every malformed signed-input header is a typed error: the flag before version 10, on an
/// f32 file, without a table, with a non-zero offset in the table, with a step that is zero,
/// negative, NaN or infinite; and a step's bytes without the flag are reserved bytes.
#[test]
fn malformed_signed_input_headers_are_typed_errors() {
    let spec = mlp_spec(25, signed_scales(), false);
    let cal: Vec<Vec<i8>> = (0..16).map(|s| signed_codes(9100 + s, 24)).collect();
    let q = quantize_signed(
        &spec,
        Precision::Q8,
        &code_refs(&cal),
        STEP,
        Calibration::default(),
    )
    .unwrap();
    let base = q.to_bytes().unwrap();
    let fixed_patched = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut b = base.clone();
        edit(&mut b);
        reseal(&mut b);
        common::parse_fixed(&b)
    };
    assert_eq!(fixed_patched(&|_| {}), Ok(()));
    let bad = Err(ModelError::BadSignedInput);
    assert_eq!(fixed_patched(&|b| b[VERSION] = 9), bad);
    assert_eq!(
        fixed_patched(&|b| b[FLAGS] = format::FLAG_SIGNED_INPUT),
        bad
    );
    let at = table_at(&base);
    assert_eq!(
        fixed_patched(&|b| b[at + 8..at + 12].copy_from_slice(&0.25f32.to_le_bytes())),
        bad
    );
    for step in [0.0f32, -STEP, f32::NAN, f32::INFINITY] {
        assert_eq!(
            fixed_patched(&|b| b[INPUT_STEP..INPUT_STEP + 4].copy_from_slice(&step.to_le_bytes())),
            bad,
            "step {step}"
        );
    }
    // A negative zero offset is zero.
    assert_eq!(
        fixed_patched(&|b| b[at + 8..at + 12].copy_from_slice(&(-0.0f32).to_le_bytes())),
        Ok(())
    );
    // Without the flag, bytes 44..48 are reserved.
    assert_eq!(
        fixed_patched(&|b| b[FLAGS] = format::FLAG_CHANNEL_NORM),
        Err(ModelError::ReservedNotZero { offset: INPUT_STEP })
    );
    // An f32 file never reads codes.
    let f32_bytes = mlp_spec(25, signed_scales(), false).to_bytes().unwrap();
    let flagged = patched(&f32_bytes, |b| {
        b[VERSION] = 10;
        b[FLAGS] |= format::FLAG_SIGNED_INPUT;
        b[INPUT_STEP..INPUT_STEP + 4].copy_from_slice(&STEP.to_le_bytes());
    });
    assert_eq!(flagged, bad);
}

/// Every byte of a signed-input file's header flags, step and table set to assorted values:
/// the reader answers, never panics, and a model that loads runs on codes and on bytes (one of
/// them a typed `WrongInputSign`).
#[test]
fn mutated_signed_input_headers_never_panic() {
    let spec = mlp_spec(26, signed_scales(), true);
    let cal: Vec<Vec<i8>> = (0..16).map(|s| signed_codes(9200 + s, 24)).collect();
    let q = quantize_signed(
        &spec,
        Precision::Q8,
        &code_refs(&cal),
        STEP,
        Calibration::default(),
    )
    .unwrap();
    let valid = q.to_bytes().unwrap();
    let at = table_at(&valid);
    let positions = (FLAGS..FLAGS + 1)
        .chain(INPUT_STEP..INPUT_STEP + 4)
        .chain(at..at + 4 + 24);
    for k in positions {
        for v in [0u8, 1, 2, 3, 0x7f, 0x80, 0xff] {
            let mut b = valid.clone();
            b[k] = v;
            reseal(&mut b);
            let buffer = ModelBuffer::from_bytes(&b);
            let parsed = QModel::from_bytes(buffer.as_bytes());
            if let Ok(model) = parsed {
                let codes = signed_codes(k as u64, model.input_len());
                let bytes = raw_bytes(k as u64, model.input_len());
                let signed =
                    try_run_fixed::<4>(&model, FixedInput::Codes(&codes), Mode::MeanWeights, 0);
                let unsigned =
                    try_run_fixed::<4>(&model, FixedInput::Bytes(&bytes), Mode::MeanWeights, 0);
                assert!(signed.is_ok() != unsigned.is_ok(), "byte {k} = {v}");
            }
        }
    }
}
