//! Fixed-point early exit (format version 7): residual additions, global average pooling and
//! exit heads bit-exact against an independent integer reference, every halting policy in
//! integers (against its definition, and independent of the chunk size), closeness to f32,
//! and the reader's checks on corrupt residual and exit records.

mod common;

use common::{mc, parse_fixed, reference_exit_logits, reseal};

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::early_exit::{HaltValue, Halting, HaltingState, QExitPrediction, Uncertainty};
use tinybayes::fixed::quantize::{quantize, Calibration};
use tinybayes::fixed::writer::QModelSpec;
use tinybayes::fixed::{softmax_q16, QModel};
use tinybayes::format::{self, LayerKind, Precision, HEADER_LEN, LAYER_RECORD_LEN};
use tinybayes::numeric::FixedPoint;
use tinybayes::writer::{synthetic, LayerOp, ModelSpec};
use tinybayes::{Engine, InferenceError, Mode, ModelError, Q16, Q8, UQ16};

const SIDE: usize = 6;

/// Layer record fields (docs/FORMAT.md).
mod record {
    pub const KIND: usize = 0;
    pub const POSTERIOR: usize = 1;
    pub const ACTIVATION: usize = 2;
    pub const RESIDUAL_SOURCE: usize = 24;
    pub const QUANT_RESIDUAL_SHIFT: usize = 26;
    pub const QUANT_RESIDUAL_MULTIPLIER: usize = 28;
    pub const QUANT_EXIT_PRIOR: usize = 28;
}
const CLASSES: usize = 5;

/// Truncated geometric prior over `n` exits: p(l) ∝ (1 - lambda)^l.
fn geometric(n: usize, lambda: f32) -> Vec<f32> {
    let raw: Vec<f32> = (0..n).map(|l| (1.0 - lambda).powi(l as i32)).collect();
    let total: f32 = raw.iter().sum();
    raw.iter().map(|p| p / total).collect()
}

fn image(rng: &mut Xoshiro128PlusPlus) -> Vec<u8> {
    (0..SIDE * SIDE)
        .map(|_| (rng.next_u32() >> 24) as u8)
        .collect()
}

/// A synthetic early-exit ResNet and its quantization, calibrated on random images.
fn quantized(
    seed: u64,
    exits: usize,
    sharpness: f32,
    precision: Precision,
) -> (ModelSpec, QModelSpec) {
    let spec = synthetic::resnet_ee(seed, SIDE, 4, CLASSES, &geometric(exits, 0.3), sharpness);
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed ^ 0x55);
    let images: Vec<Vec<u8>> = (0..24).map(|_| image(&mut rng)).collect();
    let refs: Vec<&[u8]> = images.iter().map(|v| v.as_slice()).collect();
    let q = quantize(&spec, precision, &refs, Calibration::default()).unwrap();
    (spec, q)
}

/// One early-exit prediction with `CHUNK` samples per pass; also the generator's next word
/// afterwards (a run must leave it where one pass would).
fn run<const CHUNK: usize>(
    model: &QModel<'_>,
    raw: &[u8],
    mode: Mode,
    halting: Halting<'_>,
    seed: u64,
) -> Result<(QExitPrediction<8>, u64), InferenceError> {
    fn typed<const CHUNK: usize, N: FixedPoint>(
        model: &QModel<'_>,
        raw: &[u8],
        mode: Mode,
        halting: Halting<'_>,
        seed: u64,
    ) -> Result<(QExitPrediction<8>, u64), InferenceError> {
        let mut ws = vec![0u64; model.workspace_len(CHUNK)];
        let mut engine = Engine::<CHUNK, N>::new(model, &mut ws)?;
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
        let p = engine.predict_u8_early_exit(raw, mode, halting, &mut rng)?;
        Ok((p, rng.next_u64()))
    }
    match model.precision() {
        Precision::Q16 => typed::<CHUNK, Q16>(model, raw, mode, halting, seed),
        _ => typed::<CHUNK, Q8>(model, raw, mode, halting, seed),
    }
}

/// With mean weights, every exit's probabilities are those of the reference logits through
/// the Q16 softmax, for both precisions.
#[test]
fn every_exit_matches_the_integer_reference() {
    let mut inputs = Xoshiro128PlusPlus::seed_from_u64(3);
    for precision in [Precision::Q8, Precision::Q16] {
        for seed in 0..4u64 {
            let (_, q) = quantized(seed, 3, 1.5, precision);
            let buffer = q.to_buffer().unwrap();
            let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
            assert_eq!(model.exit_count(), 3);
            for _ in 0..4 {
                let raw = image(&mut inputs);
                let reference = reference_exit_logits(&q, &raw);
                for (e, logits) in reference.iter().enumerate() {
                    let (p, _) = run::<4>(
                        &model,
                        &raw,
                        Mode::MeanWeights,
                        Halting::Depth { exits: e + 1 },
                        0,
                    )
                    .unwrap();
                    assert_eq!((p.exit, p.depth), (e, e + 1));
                    let mut want = vec![0u32; CLASSES];
                    let h = softmax_q16(logits, &mut want);
                    let got: Vec<u32> = p
                        .prediction
                        .probabilities
                        .iter()
                        .map(|v| v.to_bits())
                        .collect();
                    assert_eq!(got, want, "{precision:?} seed {seed} exit {e}");
                    assert_eq!(p.prediction.expected_entropy.to_bits(), h);
                }
            }
        }
    }
}

/// Every policy, in both modes, gives the same answer, exits, depth and generator state with
/// 1, 3 or 8 samples per pass as with all of them in one pass.
#[test]
fn every_policy_gives_the_same_answer_for_any_chunk_size() {
    let mut inputs = Xoshiro128PlusPlus::seed_from_u64(21);
    let mut depths = std::collections::BTreeSet::new();
    for (seed, precision) in [
        (0u64, Precision::Q8),
        (1, Precision::Q16),
        (2, Precision::Q8),
    ] {
        let exits = 2 + seed as usize;
        let (_, q) = quantized(40 + seed, exits, 0.8 + seed as f32, precision);
        let buffer = q.to_buffer().unwrap();
        let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
        let prior = geometric(exits, 0.2);
        for trial in 0..4u64 {
            let raw = image(&mut inputs);
            let policies = [
                Halting::All,
                Halting::JointMode { prior: None },
                Halting::JointMode {
                    prior: Some(&prior),
                },
                Halting::SampleDepth { prior: None },
                Halting::Depth { exits: 2 },
                Halting::Threshold {
                    measure: Uncertainty::PredictiveEntropy,
                    at_most: 1.0,
                },
                Halting::Threshold {
                    measure: Uncertainty::MutualInformation,
                    at_most: 0.01,
                },
                Halting::Robust {
                    prior: None,
                    mutual_information_below: 0.01,
                },
            ];
            for halting in policies {
                for mode in [Mode::MeanWeights, mc(19)] {
                    let one_pass = run::<32>(&model, &raw, mode, halting, trial).unwrap();
                    depths.insert(one_pass.0.depth);
                    assert_eq!(
                        run::<1>(&model, &raw, mode, halting, trial).unwrap(),
                        one_pass
                    );
                    assert_eq!(
                        run::<3>(&model, &raw, mode, halting, trial).unwrap(),
                        one_pass
                    );
                    assert_eq!(
                        run::<8>(&model, &raw, mode, halting, trial).unwrap(),
                        one_pass
                    );
                }
            }
        }
    }
    assert!(depths.len() >= 3, "depths seen: {depths:?}");
}

/// The integer joint-mode rule stops where its definition says: after running every block,
/// the answer is the earliest exit maximising `confidence * prior` (Q16 products, rounded),
/// and the depth is the first exit `l` whose best joint so far reaches `prior(l + 1)`.
#[test]
fn the_integer_joint_mode_matches_its_definition() {
    let mut inputs = Xoshiro128PlusPlus::seed_from_u64(8);
    let mut early = 0;
    for seed in 0..6u64 {
        let (_, q) = quantized(60 + seed, 4, 0.6 + seed as f32 * 0.6, Precision::Q8);
        let buffer = q.to_buffer().unwrap();
        let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
        let prior: Vec<u32> = model.exit_priors().map(UQ16::to_bits).collect();
        for trial in 0..6u64 {
            let raw = image(&mut inputs);
            let mode = mc(12);
            let (all, _) = run::<4>(&model, &raw, mode, Halting::All, trial).unwrap();
            let (joint, _) = run::<4>(
                &model,
                &raw,
                mode,
                Halting::JointMode { prior: None },
                trial,
            )
            .unwrap();
            let joints: Vec<u64> = all
                .exits
                .iter()
                .zip(&prior)
                .map(|(s, &p)| (s.confidence.to_bits() as u64 * p as u64 + (1 << 15)) >> 16)
                .collect();
            let mut best = (0u64, 0usize);
            let mut depth = joints.len();
            for (l, &j) in joints.iter().enumerate() {
                if l == 0 || j > best.0 {
                    best = (j, l);
                }
                let next = prior.get(l + 1).copied().unwrap_or(0) as u64;
                if best.0 >= next {
                    depth = l + 1;
                    break;
                }
            }
            assert_eq!(
                (joint.exit, joint.depth),
                (best.1, depth),
                "seed {seed} trial {trial}"
            );
            assert_eq!(joint.exits[..], all.exits[..depth]);
            early += usize::from(depth < joints.len());
        }
    }
    assert!(early > 0, "the rule never stopped early");
}

/// The integer robust rule against its definition on raw bits: after running every block,
/// an exit other than the last is trusted when its UQ16 mutual information is below τ's
/// UQ16 bits (τ rounded to the nearest 2^-16 once); the answer is the earliest trusted exit
/// maximising `confidence * prior` (Q16 products, rounded), the depth the first exit whose
/// best trusted joint so far reaches the next prior mass; the prediction is that exit's, bit
/// for bit. τ = +∞ is the joint mode and τ = 0 every block.
#[test]
fn the_integer_robust_rule_matches_its_definition() {
    let mut inputs = Xoshiro128PlusPlus::seed_from_u64(12);
    let (mut early, mut deeper_than_joint) = (0, 0);
    for seed in 0..6u64 {
        let precision = [Precision::Q8, Precision::Q16][seed as usize % 2];
        let (_, q) = quantized(80 + seed, 4, 0.6 + seed as f32 * 0.6, precision);
        let buffer = q.to_buffer().unwrap();
        let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
        let prior: Vec<u32> = model.exit_priors().map(UQ16::to_bits).collect();
        for trial in 0..5u64 {
            let raw = image(&mut inputs);
            for mode in [Mode::MeanWeights, mc(12)] {
                let (all, _) = run::<4>(&model, &raw, mode, Halting::All, trial).unwrap();
                let joint = Halting::JointMode { prior: None };
                let (joint, _) = run::<4>(&model, &raw, mode, joint, trial).unwrap();
                let mi: Vec<u32> = all
                    .exits
                    .iter()
                    .map(|s| s.mutual_information.to_bits())
                    .collect();
                // τ in integer steps on both sides of every exit's mutual information.
                let mut taus = vec![(0.0f32, 0u64), (f32::INFINITY, u64::MAX)];
                for &m in &mi {
                    for bits in [m, m + 1] {
                        taus.push((bits as f32 / 65536.0, bits as u64));
                    }
                }
                for (tau, tau_bits) in taus {
                    let n = all.exits.len();
                    let mut best: Option<(u64, usize)> = None;
                    let mut depth = n;
                    for (l, s) in all.exits.iter().enumerate() {
                        if l + 1 == n || (mi[l] as u64) < tau_bits {
                            let j =
                                (s.confidence.to_bits() as u64 * prior[l] as u64 + (1 << 15)) >> 16;
                            if best.is_none_or(|(b, _)| j > b) {
                                best = Some((j, l));
                            }
                        }
                        let next = prior.get(l + 1).copied().unwrap_or(0) as u64;
                        if l + 1 < n && best.is_some_and(|(b, _)| b >= next) {
                            depth = l + 1;
                            break;
                        }
                    }
                    let exit = best.unwrap().1;
                    let halting = Halting::Robust {
                        prior: None,
                        mutual_information_below: tau,
                    };
                    let (got, _) = run::<4>(&model, &raw, mode, halting, trial).unwrap();
                    let at = format!("seed {seed} trial {trial} {mode:?} tau {tau}");
                    assert_eq!((got.exit, got.depth), (exit, depth), "{at}");
                    assert_eq!(got.exits[..], all.exits[..depth], "{at}");
                    let budget = Halting::Depth { exits: exit + 1 };
                    let (alone, _) = run::<4>(&model, &raw, mode, budget, trial).unwrap();
                    assert_eq!(got.prediction, alone.prediction, "{at}");
                    if tau == f32::INFINITY {
                        assert_eq!(got, joint, "{at}");
                    }
                    if tau == 0.0 {
                        assert_eq!(got, all, "{at}");
                    }
                    early += usize::from(depth < n);
                    deeper_than_joint += usize::from(got.depth > joint.depth);
                }
            }
        }
    }
    assert!(early > 20, "stopped early {early} times");
    assert!(deeper_than_joint > 20, "deeper {deeper_than_joint} times");
}

/// A replay of the integer policy on the summaries of every exit decides as the engine did
/// (the host's sweeps rely on it), and the UQ16 arithmetic of the policies is exact.
#[test]
fn replaying_the_integer_policy_decides_as_the_engine() {
    let (_, q) = quantized(77, 3, 1.2, Precision::Q8);
    let buffer = q.to_buffer().unwrap();
    let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
    let prior: Vec<UQ16> = model.exit_priors().collect();
    let mut inputs = Xoshiro128PlusPlus::seed_from_u64(5);
    for trial in 0..12u64 {
        let raw = image(&mut inputs);
        let (all, _) = run::<4>(&model, &raw, mc(9), Halting::All, trial).unwrap();
        for halting in [
            Halting::JointMode { prior: None },
            Halting::Threshold {
                measure: Uncertainty::PredictiveEntropy,
                at_most: 0.8,
            },
            Halting::Robust {
                prior: None,
                mutual_information_below: 0.002,
            },
        ] {
            let (p, _) = run::<4>(&model, &raw, mc(9), halting, trial).unwrap();
            let mut state = HaltingState::<UQ16>::new(halting, &prior, 3, || UQ16(0)).unwrap();
            let mut decided = None;
            for (l, s) in all.exits.iter().enumerate() {
                if state.observe(l, 3, s) {
                    decided = Some((state.answer(l), l + 1));
                    break;
                }
            }
            assert_eq!(decided, Some((p.exit, p.depth)));
        }
    }
    // Q16 arithmetic: products rounded to nearest, conversions rounded and saturated.
    assert_eq!(UQ16::mul(UQ16(1 << 16), UQ16(12345)), UQ16(12345));
    assert_eq!(UQ16::mul(UQ16(3), UQ16(1 << 15)), UQ16(2));
    assert_eq!(UQ16::from_f32(0.5), UQ16(32768));
    assert_eq!(UQ16::from_f32(-1.0), UQ16(0));
    assert_eq!(UQ16::from_f32(f32::NAN), UQ16(0));
    assert_eq!(UQ16::from_f32(1e12), UQ16(u32::MAX));
    assert!(UQ16::sums_to_one(&[UQ16(32768), UQ16(32768 + 66)]));
    assert!(!UQ16::sums_to_one(&[UQ16(32768), UQ16(32768 + 67)]));
    assert_eq!(UQ16::uniform(u32::MAX), UQ16(65535));
}

/// The quantized network follows its f32 original: with mean weights each exit predicts the
/// same class on most inputs and its probabilities stay close (measured largest gap: q8
/// 0.0087, q16 0.00007; q16 was 0.0126 before the bias shift of version 7, when the exit
/// heads' biases, large in Q16 logit units, bounded the row shift and left the θ multiplier
/// of the 15-bit inputs a few significant bits).
#[test]
fn fixed_point_exits_are_close_to_f32() {
    let mut inputs = Xoshiro128PlusPlus::seed_from_u64(11);
    for precision in [Precision::Q8, Precision::Q16] {
        let (spec, q) = quantized(5, 3, 1.0, precision);
        let f32_buffer = spec.to_buffer().unwrap();
        let f32_model = f32_buffer.model().unwrap();
        let buffer = q.to_buffer().unwrap();
        let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
        let mut ws = vec![0.0f32; tinybayes::Plan::new(&f32_model, 4).workspace_len()];
        let (mut agree, mut total, mut worst) = (0, 0, 0.0f32);
        for _ in 0..40 {
            let raw = image(&mut inputs);
            for e in 0..3 {
                let halting = Halting::Depth { exits: e + 1 };
                let (p, _) = run::<4>(&model, &raw, Mode::MeanWeights, halting, 0).unwrap();
                let mut engine = Engine::<4>::new(&f32_model, &mut ws).unwrap();
                let mut rng = Xoshiro128PlusPlus::seed_from_u64(0);
                let f: tinybayes::ExitPrediction<8> = engine
                    .predict_u8_early_exit(&raw, Mode::MeanWeights, halting, &mut rng)
                    .unwrap();
                total += 1;
                agree += usize::from(p.prediction.class == f.prediction.class);
                for (a, b) in p
                    .prediction
                    .probabilities
                    .iter()
                    .zip(&f.prediction.probabilities)
                {
                    worst = worst.max((a.to_f32() - b).abs());
                }
            }
        }
        let tolerance = if precision == Precision::Q8 {
            0.02
        } else {
            0.001
        };
        assert!(
            agree * 100 >= total * 95,
            "{precision:?}: {agree} of {total} agree"
        );
        assert!(
            worst < tolerance,
            "{precision:?}: largest probability gap {worst}"
        );
    }
}

/// Byte offset of layer `index`'s record.
fn rec(index: usize) -> usize {
    HEADER_LEN + index * LAYER_RECORD_LEN
}

/// Edits `bytes`, reseals, and returns the reader's verdict.
fn edited(bytes: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Result<(), ModelError> {
    let mut b = bytes.to_vec();
    edit(&mut b);
    reseal(&mut b);
    parse_fixed(&b)
}

#[test]
fn corrupt_residual_and_exit_records_are_refused() {
    let (_, q) = quantized(9, 2, 1.0, Precision::Q8);
    let bytes = q.to_bytes().unwrap();
    assert_eq!(parse_fixed(&bytes), Ok(()));
    assert_eq!(
        u16::from_le_bytes([bytes[4], bytes[5]]),
        format::FIXED_EXIT_FORMAT_VERSION
    );
    // Layers: 0 stem, 1 conv, 2 conv (identity), 3 residual, 4 exit, 5..8 the second block.
    let kind = |b: &[u8], i: usize| b[rec(i) + record::KIND];
    assert_eq!(kind(&bytes, 3), LayerKind::ResidualAdd as u8);
    assert_eq!(kind(&bytes, 4), LayerKind::ExitHead as u8);
    let set_u32 =
        |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let residual = rec(3);
    let exit = rec(4);
    let layout = |layer| Err(ModelError::QuantLayout { layer });
    let early = |layer| Err(ModelError::BadEarlyExit { layer });
    // The skip's rescale: shift 0 or above 30, multiplier 0, negative or overflowing.
    for shift in [0u8, 31] {
        let got = edited(&bytes, |b| {
            b[residual + record::QUANT_RESIDUAL_SHIFT] = shift
        });
        assert_eq!(got, layout(3), "shift {shift}");
    }
    for m in [0u32, u32::MAX, (i32::MAX as u32) / 255 + 1] {
        let got = edited(&bytes, |b| {
            set_u32(b, residual + record::QUANT_RESIDUAL_MULTIPLIER, m)
        });
        assert_eq!(got, layout(3), "multiplier {m}");
    }
    // The source: the identity layer itself, a later layer, one of another shape (the input
    // of a layer before the stem does not exist).
    for source in [2u16, 7, 400] {
        let got = edited(&bytes, |b| {
            b[residual + record::RESIDUAL_SOURCE..residual + record::RESIDUAL_SOURCE + 2]
                .copy_from_slice(&source.to_le_bytes())
        });
        assert_eq!(got, early(3), "source {source}");
    }
    // The second block may not reach back before the first addition.
    let got = edited(&bytes, |b| b[rec(7) + record::RESIDUAL_SOURCE] = 0);
    assert_eq!(got, early(7));
    // A reserved byte, a Gaussian or identity addition.
    let got = edited(&bytes, |b| b[residual + 27] = 1);
    assert_eq!(
        got,
        Err(ModelError::ReservedNotZero {
            offset: residual + 27
        })
    );
    assert_eq!(
        edited(&bytes, |b| b[residual + record::POSTERIOR] = 1),
        early(3)
    );
    assert_eq!(
        edited(&bytes, |b| b[residual + record::ACTIVATION] = 0),
        early(3)
    );
    // The layer before the addition must give signed sums: a ReLU there is refused.
    assert_eq!(
        edited(&bytes, |b| b[rec(2) + record::ACTIVATION] = 1),
        layout(2)
    );
    // Exit priors: 0, above 1, or not summing to 1; reserved bytes; a hidden activation.
    for prior in [0u32, 65537] {
        let got = edited(&bytes, |b| {
            set_u32(b, exit + record::QUANT_EXIT_PRIOR, prior)
        });
        assert_eq!(got, early(4), "prior {prior}");
    }
    let got = edited(&bytes, |b| {
        set_u32(b, exit + record::QUANT_EXIT_PRIOR, 30000)
    });
    assert_eq!(got, early(8));
    let got = edited(&bytes, |b| b[exit + 27] = 1);
    assert_eq!(got, Err(ModelError::ReservedNotZero { offset: exit + 27 }));
    // Bias shifts above 31, in an exit head or a convolution.
    assert_eq!(edited(&bytes, |b| b[exit + 26] = 32), layout(4));
    assert_eq!(edited(&bytes, |b| b[rec(1) + 31] = 32), layout(1));
    assert_eq!(
        edited(&bytes, |b| b[exit + record::ACTIVATION] = 1),
        early(4)
    );
    // Residual additions and exit heads need version 7.
    let got = edited(&bytes, |b| b[4..6].copy_from_slice(&6u16.to_le_bytes()));
    assert!(
        matches!(got, Err(ModelError::UnknownCode { field, .. }) if field == record::KIND)
            || matches!(got, Err(ModelError::QuantLayout { .. })),
        "{got:?}"
    );
    // Truncations anywhere give typed errors, never a panic.
    for len in (0..bytes.len()).step_by(97) {
        assert!(parse_fixed(&bytes[..len]).is_err());
    }
}

/// A plain network of the early-exit family without exits is refused, and an early-exit
/// model is not a plain one for `predict_u8`'s callers who ask for a policy.
#[test]
fn plain_entry_points_and_typed_errors() {
    let (_, q) = quantized(13, 2, 1.0, Precision::Q8);
    let buffer = q.to_buffer().unwrap();
    let model = QModel::from_bytes(buffer.as_bytes()).unwrap();
    let raw = [7u8; SIDE * SIDE];
    // `predict_u8` runs every block and answers with the last exit.
    let mut ws = vec![0u64; model.workspace_len(4)];
    let mut engine = Engine::<4, Q8>::new(&model, &mut ws).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(1);
    let plain: tinybayes::QPrediction<8> = engine.predict_u8(&raw, mc(6), &mut rng).unwrap();
    let (all, _) = run::<4>(&model, &raw, mc(6), Halting::All, 1).unwrap();
    assert_eq!(plain, all.prediction);
    // Bad policies are typed errors.
    let bad = [0.7f32, 0.7];
    for halting in [
        Halting::JointMode { prior: Some(&bad) },
        Halting::Depth { exits: 0 },
        Halting::Threshold {
            measure: Uncertainty::MutualInformation,
            at_most: f32::NAN,
        },
        Halting::Robust {
            prior: None,
            mutual_information_below: f32::NAN,
        },
        Halting::Robust {
            prior: Some(&bad),
            mutual_information_below: 0.1,
        },
    ] {
        assert_eq!(
            run::<4>(&model, &raw, mc(6), halting, 0).unwrap_err(),
            InferenceError::BadPrior
        );
    }
    // A plain fixed-point network has no exits.
    let plain_spec = synthetic::mlp(3, &[SIDE * SIDE, 8, CLASSES], 0.5);
    let refs: Vec<&[u8]> = vec![&raw[..]];
    let pq = quantize(&plain_spec, Precision::Q8, &refs, Calibration::default()).unwrap();
    let pb = pq.to_buffer().unwrap();
    let pm = QModel::from_bytes(pb.as_bytes()).unwrap();
    assert_eq!(
        run::<4>(&pm, &raw, mc(2), Halting::All, 0).unwrap_err(),
        InferenceError::NotEarlyExit
    );
    // The file round-trips through its spec's fields.
    let layers = model.layers();
    let (m, shift) = layers[3].skip_rescale().unwrap();
    assert_eq!([m, 0, 0], q.layers[3].params[0]);
    assert_eq!(shift, q.layers[3].shift);
    match q.layers[4].op {
        LayerOp::ExitHead { prior } => assert_eq!(
            layers[4].exit_prior().unwrap().to_bits(),
            (prior as f64 * 65536.0).round() as u32
        ),
        _ => panic!("layer 4 is an exit head"),
    }
}
