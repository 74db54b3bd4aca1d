//! The last-layer Bayesian update (`tinybayes::adapt`): against an independent f64 batch
//! posterior, order invariance, the identity with no data, the head the engine runs, 10,000
//! updates, bad input, and its persistence in NOR flash with torn writes.

use core::num::NonZeroU16;

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use tinybayes::adapt::store::{Store, RECORD_HEADER_LEN};
use tinybayes::adapt::{AdaptError, LastLayer, Likelihood, Settings};
use tinybayes::rand_core::{RngCore, SeedableRng};
use tinybayes::rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::writer::{synthetic, ModelBuffer, ModelSpec};
use tinybayes::{Engine, InferenceError, Mode, Model, Plan, Prediction};

const CLASSES: usize = 4;
const FEATURES: usize = 7;

fn model_buffer(seed: u64) -> ModelBuffer {
    synthetic::mlp(seed, &[10, FEATURES, CLASSES], 0.7)
        .to_buffer()
        .unwrap()
}

fn uniform(rng: &mut Xoshiro128PlusPlus) -> f64 {
    (rng.next_u32() >> 8) as f64 / 16_777_216.0
}

/// Labelled feature vectors (non-negative, as after a ReLU, some exactly zero).
fn examples(seed: u64, n: usize) -> Vec<(Vec<f32>, usize)> {
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let phi = (0..FEATURES)
                .map(|_| (3.0 * uniform(&mut rng) - 0.8).max(0.0) as f32)
                .collect();
            (phi, (rng.next_u32() % CLASSES as u32) as usize)
        })
        .collect()
}

/// The last layer's dense (θ, σ²) and bias, read through the writer's spec.
fn last_layer_dense(model: &Model<'_>) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let spec = ModelSpec::from_model(model);
    let l = spec.layers.last().unwrap();
    let to64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    (
        to64(&l.theta),
        to64(l.variance.as_ref().unwrap()),
        to64(&l.bias),
    )
}

/// The batch posterior in f64, computed from its definition with a Gauss-Jordan inverse:
/// per class, (mean, covariance) over its adaptable inputs (index FEATURES = the bias).
/// One class's posterior: adaptable inputs, mean, covariance.
type ClassPosterior = (Vec<usize>, Vec<f64>, Vec<Vec<f64>>);

struct Batch {
    classes: Vec<ClassPosterior>,
    theta: Vec<f64>,
    bias: Vec<f64>,
}

fn inverse(mut a: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut inv: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| f64::from(u8::from(i == j))).collect())
        .collect();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs()))
            .unwrap();
        a.swap(c, p);
        inv.swap(c, p);
        let d = a[c][c];
        for j in 0..n {
            a[c][j] /= d;
            inv[c][j] /= d;
        }
        for r in 0..n {
            if r != c {
                let m = a[r][c];
                for j in 0..n {
                    a[r][j] -= m * a[c][j];
                    inv[r][j] -= m * inv[c][j];
                }
            }
        }
    }
    inv
}

fn batch(model: &Model<'_>, settings: Settings, data: &[(Vec<f32>, usize)]) -> Batch {
    let weighted: Vec<(Vec<f32>, usize, f64)> =
        data.iter().map(|(phi, y)| (phi.clone(), *y, 1.0)).collect();
    batch_weighted(model, settings, &weighted)
}

/// [`batch`] with each example counted `w` times.
fn batch_weighted(model: &Model<'_>, settings: Settings, data: &[(Vec<f32>, usize, f64)]) -> Batch {
    let (theta, var, bias) = last_layer_dense(model);
    let mut classes = Vec::new();
    for k in 0..CLASSES {
        let mut index: Vec<usize> = (0..FEATURES)
            .filter(|&i| var[k * FEATURES + i] > 0.0)
            .collect();
        if settings.bias_variance > 0.0 {
            index.push(FEATURES);
        }
        let n = index.len();
        let prior_var = |a: usize| {
            if a == FEATURES {
                settings.bias_variance as f64
            } else {
                settings.prior_scale as f64 * var[k * FEATURES + a]
            }
        };
        let prior_mean = |a: usize| {
            if a == FEATURES {
                0.0
            } else {
                theta[k * FEATURES + a]
            }
        };
        let mut precision = vec![vec![0.0; n]; n];
        let mut rhs: Vec<f64> = index
            .iter()
            .map(|&a| prior_mean(a) / prior_var(a))
            .collect();
        for i in 0..n {
            precision[i][i] = 1.0 / prior_var(index[i]);
        }
        for (phi, y, w) in data {
            let x = |a: usize| if a == FEATURES { 1.0 } else { phi[a] as f64 };
            // The exported model's logits and softmax.
            let logits: Vec<f64> = (0..CLASSES)
                .map(|c| {
                    bias[c]
                        + (0..FEATURES)
                            .map(|i| theta[c * FEATURES + i] * x(i))
                            .sum::<f64>()
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            let p = (logits[k] - max).exp() / z;
            let onehot = f64::from(u8::from(*y == k));
            // The pseudo-target and its noise variance.
            let (target, noise) = match settings.likelihood {
                // t = f0 + 2 (y - p), noise variance 2.
                Likelihood::SoftmaxBound => (logits[k] + 2.0 * (onehot - p), 2.0),
                // t = mean f0 + ln q_k - mean ln q, q the smoothed label.
                Likelihood::LabelRegression { smoothing, noise } => {
                    let (s, kk) = (smoothing as f64, CLASSES as f64);
                    let q: Vec<f64> = (0..CLASSES)
                        .map(|c| if c == *y { 1.0 - s + s / kk } else { s / kk })
                        .collect();
                    let mean_log = q.iter().map(|v| v.ln()).sum::<f64>() / kk;
                    let mean_logit = logits.iter().sum::<f64>() / kk;
                    (mean_logit + q[k].ln() - mean_log, noise as f64)
                }
            };
            // Regressed on the adaptable inputs after the fixed part (bias, zero-variance
            // weights) is subtracted.
            let fixed: f64 = bias[k]
                + (0..FEATURES)
                    .filter(|i| !index.contains(i))
                    .map(|i| theta[k * FEATURES + i] * x(i))
                    .sum::<f64>();
            for i in 0..n {
                rhs[i] += w * x(index[i]) * (target - fixed) / noise;
                for j in 0..n {
                    precision[i][j] += w * x(index[i]) * x(index[j]) / noise;
                }
            }
        }
        let cov = inverse(precision);
        let mean = (0..n)
            .map(|i| (0..n).map(|j| cov[i][j] * rhs[j]).sum())
            .collect();
        classes.push((index, mean, cov));
    }
    Batch {
        classes,
        theta,
        bias,
    }
}

impl Batch {
    /// Mean and variance of class k's logit at φ.
    fn logit(&self, k: usize, phi: &[f32]) -> (f64, f64) {
        let (index, mean, cov) = &self.classes[k];
        let x = |a: usize| if a == FEATURES { 1.0 } else { phi[a] as f64 };
        let mut m = self.bias[k];
        for i in 0..FEATURES {
            if !index.contains(&i) {
                m += self.theta[k * FEATURES + i] * x(i);
            }
        }
        let mut v = 0.0;
        for (i, &a) in index.iter().enumerate() {
            m += mean[i] * x(a);
            for (j, &b) in index.iter().enumerate() {
                v += x(a) * cov[i][j] * x(b);
            }
        }
        (m, v)
    }
}

fn adapted<'m, 's>(
    model: &Model<'m>,
    settings: Settings,
    state: &'s mut Vec<f32>,
    data: &[(Vec<f32>, usize)],
) -> LastLayer<'m, 's> {
    state.resize(LastLayer::state_len(model).unwrap(), f32::NAN);
    let mut layer = LastLayer::new(model, settings, state).unwrap();
    for (phi, y) in data {
        layer.update(phi, *y).unwrap();
    }
    layer
}

fn assert_matches_batch(
    layer: &LastLayer<'_, '_>,
    reference: &Batch,
    probes: &[(Vec<f32>, usize)],
    tol: f64,
) {
    let mut scratch = vec![0.0f32; layer.scratch_len()];
    for (phi, _) in probes {
        for k in 0..CLASSES {
            let (m, v) = layer.logit_moments(k, phi, &mut scratch).unwrap();
            let (rm, rv) = reference.logit(k, phi);
            assert!(
                (m as f64 - rm).abs() <= tol * (1.0 + rm.abs()),
                "class {k}: mean {m} vs f64 {rm}"
            );
            assert!(
                (v as f64 - rv).abs() <= tol * (1e-3 + rv.abs()),
                "class {k}: variance {v} vs f64 {rv}"
            );
        }
    }
}

const LABEL: Likelihood = Likelihood::LabelRegression {
    smoothing: 0.1,
    noise: 0.7,
};

const SETTINGS: [Settings; 4] = [
    Settings {
        prior_scale: 1.0,
        bias_variance: 0.0,
        likelihood: Likelihood::SoftmaxBound,
    },
    Settings {
        prior_scale: 30.0,
        bias_variance: 0.5,
        likelihood: Likelihood::SoftmaxBound,
    },
    Settings {
        prior_scale: 300.0,
        bias_variance: 0.0,
        likelihood: LABEL,
    },
    Settings {
        prior_scale: 10.0,
        bias_variance: 2.0,
        likelihood: LABEL,
    },
];

#[test]
fn sequential_updates_equal_the_f64_batch_posterior() {
    let buffer = model_buffer(3);
    let model = buffer.model().unwrap();
    let data = examples(11, 40);
    let probes = examples(12, 10);
    for settings in SETTINGS {
        let mut state = Vec::new();
        let layer = adapted(&model, settings, &mut state, &data);
        assert_eq!(layer.count(), 40);
        assert_matches_batch(&layer, &batch(&model, settings, &data), &probes, 2e-4);
        // The posterior moves: with data the logits differ from the exported ones.
        let mut scratch = vec![0.0f32; layer.scratch_len()];
        let exported = batch(&model, settings, &[]);
        let moved = probes.iter().any(|(phi, _)| {
            let (m, _) = layer.logit_moments(0, phi, &mut scratch).unwrap();
            (m as f64 - exported.logit(0, phi).0).abs() > 1e-3
        });
        assert!(moved);
    }
}

#[test]
fn updates_in_any_order_give_the_same_posterior() {
    let buffer = model_buffer(5);
    let model = buffer.model().unwrap();
    let data = examples(21, 60);
    let mut reversed = data.clone();
    reversed.reverse();
    let mut shuffled = data.clone();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(9);
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, rng.next_u32() as usize % (i + 1));
    }
    for settings in [SETTINGS[1], SETTINGS[3]] {
        let (mut s1, mut s2, mut s3) = (Vec::new(), Vec::new(), Vec::new());
        let a = adapted(&model, settings, &mut s1, &data);
        let b = adapted(&model, settings, &mut s2, &reversed);
        let c = adapted(&model, settings, &mut s3, &shuffled);
        let mut scratch = vec![0.0f32; a.scratch_len()];
        for (phi, _) in examples(22, 10) {
            for k in 0..CLASSES {
                let x = a.logit_moments(k, &phi, &mut scratch).unwrap();
                for other in [&b, &c] {
                    let y = other.logit_moments(k, &phi, &mut scratch).unwrap();
                    assert!(
                        (x.0 - y.0).abs() <= 1e-4 * (1.0 + x.0.abs()),
                        "{x:?} vs {y:?}"
                    );
                    assert!(
                        (x.1 - y.1).abs() <= 1e-4 * (1e-3 + x.1.abs()),
                        "{x:?} vs {y:?}"
                    );
                }
            }
        }
    }
}

/// The adapted model: the base with the head written from `layer`.
fn head_words(layer: &LastLayer<'_, '_>) -> Vec<u32> {
    let mut scratch = vec![0.0f32; layer.scratch_len()];
    let mut out = vec![0u32; layer.head_len()];
    let len = layer.write_head(&mut scratch, &mut out).unwrap().len();
    assert_eq!(len.div_ceil(4), out.len());
    out
}

fn predict(model: &Model<'_>, input: &[f32], mode: Mode) -> Prediction<CLASSES> {
    let mut workspace = vec![0.0f32; Plan::new(model, 8).workspace_len()];
    let mut engine = Engine::<8>::new(model, &mut workspace).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(77);
    engine.predict(input, mode, &mut rng).unwrap()
}

const MC: Mode = Mode::MonteCarlo {
    samples: NonZeroU16::new(64).unwrap(),
};

#[test]
fn with_no_data_the_adapted_model_predicts_as_the_exported_one() {
    let buffer = model_buffer(7);
    let model = buffer.model().unwrap();
    let mut state = Vec::new();
    let layer = adapted(&model, Settings::default(), &mut state, &[]);
    let words = head_words(&layer);
    let head = Model::from_bytes(bytemuck::cast_slice(&words)).unwrap();
    let composed = model.with_head(&head).unwrap();
    assert_eq!(composed.layers().len(), model.layers().len() + 1);
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(1);
    for _ in 0..20 {
        let input: Vec<f32> = (0..10).map(|_| uniform(&mut rng) as f32).collect();
        for mode in [Mode::MeanWeights, MC, Mode::Moments] {
            let a = predict(&model, &input, mode);
            let b = predict(&composed, &input, mode);
            for k in 0..CLASSES {
                assert!(
                    (a.probabilities[k] - b.probabilities[k]).abs() < 2e-5,
                    "{mode:?}: {:?} vs {:?}",
                    a.probabilities,
                    b.probabilities
                );
            }
            assert!((a.mutual_information - b.mutual_information).abs() < 2e-5);
        }
    }
}

#[test]
fn the_head_carries_the_posterior_predictive_given_the_features() {
    let buffer = model_buffer(8);
    let model = buffer.model().unwrap();
    let mut state = Vec::new();
    let settings = SETTINGS[1];
    let layer = adapted(&model, settings, &mut state, &examples(31, 25));
    let words = head_words(&layer);
    let bytes: &[u8] = bytemuck::cast_slice(&words);
    let head = Model::from_bytes(bytes).unwrap();
    // One format definition: the writer gives the same bytes for the head's layers.
    assert_eq!(ModelSpec::from_model(&head).to_bytes().unwrap(), bytes);
    let mut scratch = vec![0.0f32; layer.scratch_len()];
    for (phi, _) in examples(32, 10) {
        // Moment propagation through the head is exact for a deterministic input: the probit
        // of the Bayesian linear regression predictive of the logits.
        let p = predict(&head, &phi, Mode::Moments);
        let probit: Vec<f64> = (0..CLASSES)
            .map(|k| {
                let (m, v) = layer.logit_moments(k, &phi, &mut scratch).unwrap();
                m as f64 / (1.0 + core::f64::consts::PI * v as f64 / 8.0).sqrt()
            })
            .collect();
        let max = probit.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = probit.iter().map(|l| (l - max).exp()).sum();
        for (k, l) in probit.iter().enumerate() {
            let expected = (l - max).exp() / z;
            assert!((p.probabilities[k] as f64 - expected).abs() < 1e-4);
        }
        // Monte Carlo over the head: its mutual information is positive (the weights are
        // uncertain) and its mean within sampling error of the probit's neighbourhood.
        let mc = predict(
            &head,
            &phi,
            Mode::MonteCarlo {
                samples: NonZeroU16::new(4000).unwrap(),
            },
        );
        assert!(mc.mutual_information > 0.0);
    }
}

#[test]
fn ten_thousand_updates_stay_positive_definite_and_accurate() {
    let buffer = model_buffer(9);
    let model = buffer.model().unwrap();
    let data = examples(41, 10_000);
    for settings in [SETTINGS[0], SETTINGS[1], SETTINGS[3]] {
        let mut state = Vec::new();
        let layer = adapted(&model, settings, &mut state, &data);
        // The head is written (every class's precision factorises) and finite.
        let words = head_words(&layer);
        let head = Model::from_bytes(bytemuck::cast_slice(&words)).unwrap();
        model.with_head(&head).unwrap();
        assert_matches_batch(
            &layer,
            &batch(&model, settings, &data),
            &examples(42, 5),
            2e-3,
        );
    }
}

#[test]
fn features_are_what_the_last_layer_reads() {
    let buffer = model_buffer(4);
    let model = buffer.model().unwrap();
    let (theta, _, bias) = last_layer_dense(&model);
    let mut workspace = vec![0.0f32; Plan::new(&model, 8).workspace_len()];
    let mut engine = Engine::<8>::new(&model, &mut workspace).unwrap();
    let input: Vec<f32> = (0..10).map(|i| i as f32 / 10.0).collect();
    let phi = engine.features(&input).unwrap().to_vec();
    assert_eq!(phi.len(), FEATURES);
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(0);
    let p: Prediction<CLASSES> = engine.predict(&input, Mode::MeanWeights, &mut rng).unwrap();
    let logits: Vec<f64> = (0..CLASSES)
        .map(|k| {
            bias[k]
                + (0..FEATURES)
                    .map(|i| theta[k * FEATURES + i] * phi[i] as f64)
                    .sum::<f64>()
        })
        .collect();
    let max = logits.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = logits.iter().map(|l| (l - max).exp()).sum();
    for (k, l) in logits.iter().enumerate() {
        assert!((p.probabilities[k] as f64 - (l - max).exp() / z).abs() < 1e-5);
    }
    // The raw-input forms normalise first (this model: x / 255).
    let raw: Vec<u8> = (0..10).map(|i| i * 20).collect();
    let normalised: Vec<f32> = raw.iter().map(|&b| b as f32 * (1.0 / 255.0)).collect();
    let a = engine.features(&normalised).unwrap().to_vec();
    assert_eq!(engine.features_u8(&raw).unwrap(), &a[..]);
    let rawf: Vec<f32> = raw.iter().map(|&b| b as f32).collect();
    assert_eq!(engine.features_raw(&rawf).unwrap(), &a[..]);
    assert!(matches!(
        engine.features(&input[..3]),
        Err(InferenceError::InputLength { .. })
    ));
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let buffer = model_buffer(2);
    let model = buffer.model().unwrap();
    let needed = LastLayer::state_len(&model).unwrap();
    assert_eq!(
        needed,
        (FEATURES + 1) * (FEATURES + 2) + 2 * CLASSES * (FEATURES + 1)
    );
    let mut small = vec![0.0f32; needed - 1];
    assert_eq!(
        LastLayer::new(&model, Settings::default(), &mut small).err(),
        Some(AdaptError::StateTooSmall {
            needed,
            provided: needed - 1
        })
    );
    let mut state = vec![0.0f32; needed];
    let label = |smoothing, noise| Settings {
        likelihood: Likelihood::LabelRegression { smoothing, noise },
        ..Settings::default()
    };
    for bad in [
        Settings {
            prior_scale: 0.0,
            ..Settings::default()
        },
        Settings {
            prior_scale: f32::NAN,
            ..Settings::default()
        },
        Settings {
            bias_variance: -1.0,
            ..Settings::default()
        },
        Settings {
            bias_variance: f32::INFINITY,
            ..Settings::default()
        },
        label(0.0, 1.0),
        label(1.0, 1.0),
        label(0.1, 0.0),
        label(0.1, f32::NAN),
    ] {
        assert_eq!(
            LastLayer::new(&model, bad, &mut state).err(),
            Some(AdaptError::BadSettings)
        );
    }
    let mut layer = LastLayer::new(&model, Settings::default(), &mut state).unwrap();
    let phi = [0.5f32; FEATURES];
    layer.update(&phi, 1).unwrap();
    let before = head_words(&layer);
    assert_eq!(
        layer.update(&phi[..3], 0),
        Err(AdaptError::FeatureLength {
            expected: FEATURES,
            found: 3
        })
    );
    assert_eq!(
        layer.update(&phi, CLASSES),
        Err(AdaptError::LabelOutOfRange {
            label: CLASSES,
            classes: CLASSES
        })
    );
    let mut nan = phi;
    nan[2] = f32::NAN;
    assert_eq!(layer.update(&nan, 0), Err(AdaptError::BadFeatures));
    let mut huge = phi;
    huge[2] = f32::MAX;
    assert_eq!(layer.update(&huge, 0), Err(AdaptError::BadFeatures));
    assert_eq!(layer.count(), 1);
    assert_eq!(head_words(&layer), before);
    let mut scratch = vec![0.0f32; layer.scratch_len()];
    let mut out = vec![0u32; layer.head_len() - 1];
    assert!(matches!(
        layer.write_head(&mut scratch, &mut out),
        Err(AdaptError::BufferTooSmall { .. })
    ));
    let mut out = vec![0u32; layer.head_len()];
    assert!(matches!(
        layer.write_head(&mut scratch[..1], &mut out),
        Err(AdaptError::BufferTooSmall { .. })
    ));

    // Models the update does not apply to.
    let mut spec = synthetic::mlp(2, &[10, FEATURES, CLASSES], 0.7);
    spec.layers.last_mut().unwrap().variance = None;
    let deterministic = spec.to_buffer().unwrap();
    let m = deterministic.model().unwrap();
    assert_eq!(LastLayer::state_len(&m), Err(AdaptError::NotGaussian));
    let resnet = synthetic::resnet_ee(1, 4, 4, CLASSES, &[0.5, 0.5], 1.0)
        .to_buffer()
        .unwrap();
    let m = resnet.model().unwrap();
    assert_eq!(LastLayer::state_len(&m), Err(AdaptError::NotPlain));

    // Heads that do not fit.
    let other = synthetic::mlp(2, &[10, FEATURES + 1, CLASSES], 0.7)
        .to_buffer()
        .unwrap();
    let wrong_features = other.model().unwrap();
    let head = Model::from_bytes(bytemuck::cast_slice(&before)).unwrap();
    assert_eq!(
        wrong_features.with_head(&head).err(),
        Some(AdaptError::HeadMismatch)
    );
    assert_eq!(m.with_head(&head).err(), Some(AdaptError::HeadMismatch));
}

/// NOR flash in RAM: erase sets 0xFF, a write may only clear bits, and a write may be cut
/// after a number of bytes (a reset or power cut in the middle of a save).
struct RamFlash {
    bytes: Vec<u8>,
    /// Bytes still written before the "power cut" (None: no cut).
    budget: Option<usize>,
}

#[derive(Debug)]
struct Cut;
impl NorFlashError for Cut {
    fn kind(&self) -> NorFlashErrorKind {
        NorFlashErrorKind::Other
    }
}
impl ErrorType for RamFlash {
    type Error = Cut;
}
impl ReadNorFlash for RamFlash {
    const READ_SIZE: usize = 4;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Cut> {
        let at = offset as usize;
        bytes.copy_from_slice(self.bytes.get(at..at + bytes.len()).ok_or(Cut)?);
        Ok(())
    }
    fn capacity(&self) -> usize {
        self.bytes.len()
    }
}
impl NorFlash for RamFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 1024;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Cut> {
        assert_eq!(from as usize % Self::ERASE_SIZE, 0);
        assert_eq!(to as usize % Self::ERASE_SIZE, 0);
        self.bytes[from as usize..to as usize].fill(0xFF);
        Ok(())
    }
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Cut> {
        assert_eq!(offset as usize % Self::WRITE_SIZE, 0);
        for (i, &b) in data.iter().enumerate() {
            if let Some(budget) = self.budget.as_mut() {
                if *budget == 0 {
                    return Err(Cut);
                }
                *budget -= 1;
            }
            self.bytes[offset as usize + i] &= b;
        }
        Ok(())
    }
}

#[test]
fn the_state_survives_in_flash_and_a_torn_write_keeps_the_previous_one() {
    let buffer = model_buffer(6);
    let model = buffer.model().unwrap();
    let settings = SETTINGS[1];
    let data = examples(51, 30);
    let mut state = Vec::new();
    let mut layer = adapted(&model, settings, &mut state, &data[..10]);
    let flash = RamFlash {
        bytes: vec![0xFF; 8192],
        budget: None,
    };
    let mut store = Store::new(flash, 1024, 4096, &layer).unwrap();
    let mut fresh_state = vec![0.0f32; LastLayer::state_len(&model).unwrap()];
    let mut fresh = LastLayer::new(&model, settings, &mut fresh_state).unwrap();
    assert_eq!(store.load(&mut fresh), Err(AdaptError::NoStoredState));
    store.save(&layer).unwrap();
    assert_eq!(store.load(&mut fresh), Ok(10));
    assert_eq!(head_words(&fresh), head_words(&layer));
    let after_ten = head_words(&layer);

    // Twenty more examples, saved again (the other slot), then a third save torn at every
    // stage: the newest complete record is always what loads.
    for (phi, y) in &data[10..] {
        layer.update(phi, *y).unwrap();
    }
    store.save(&layer).unwrap();
    let after_thirty = head_words(&layer);
    let mut flash = store.release();
    // Header, state words, CRC: a cut anywhere before the CRC's last byte tears the record.
    let record = RECORD_HEADER_LEN + 4 * fresh_state.len() + 4;
    assert!(Store::<RamFlash>::record_len(&layer) >= record);
    for cut in [0, 1, 40, record / 2, record - 1] {
        let saved = flash.bytes.clone();
        flash.budget = Some(cut);
        let mut store = Store::new(flash, 1024, 4096, &layer).unwrap();
        layer.update(&data[0].0, 2).unwrap();
        assert_eq!(store.save(&layer), Err(AdaptError::Flash));
        flash = store.release();
        flash.budget = None;
        let mut store = Store::new(flash, 1024, 4096, &layer).unwrap();
        let mut s = vec![0.0f32; fresh_state.len()];
        let mut restored = LastLayer::new(&model, settings, &mut s).unwrap();
        assert_eq!(store.load(&mut restored), Ok(30), "cut after {cut} bytes");
        assert_eq!(head_words(&restored), after_thirty);
        flash = store.release();
        flash.bytes = saved;
    }
    let _ = after_ten;

    // A corrupted byte in the newest record: the older one loads.
    let mut store = Store::new(flash, 1024, 4096, &layer).unwrap();
    let mut flash = store.release();
    let newest = [1024, 2048]
        .into_iter()
        .find(|&s| flash.bytes[s + 12] == 30)
        .unwrap();
    flash.bytes[newest + 60] ^= 0x10;
    store = Store::new(flash, 1024, 4096, &layer).unwrap();
    let mut s = vec![0.0f32; fresh_state.len()];
    let mut restored = LastLayer::new(&model, settings, &mut s).unwrap();
    assert_eq!(store.load(&mut restored), Ok(10));
    assert_eq!(head_words(&restored), after_ten);

    // Another model's or other settings' state is not loaded.
    let flash = store.release();
    let other = model_buffer(99);
    let other_model = other.model().unwrap();
    let mut s = vec![0.0f32; fresh_state.len()];
    let mut wrong = LastLayer::new(&other_model, settings, &mut s).unwrap();
    let mut store = Store::new(flash, 1024, 4096, &wrong).unwrap();
    assert_eq!(store.load(&mut wrong), Err(AdaptError::StateMismatch));
    let flash = store.release();
    let mut s = vec![0.0f32; fresh_state.len()];
    let mut wrong = LastLayer::new(&model, SETTINGS[0], &mut s).unwrap();
    let mut store = Store::new(flash, 1024, 4096, &wrong).unwrap();
    assert_eq!(store.load(&mut wrong), Err(AdaptError::StateMismatch));
    assert_eq!(wrong.count(), 0);

    // A region too small for two slots, or misaligned.
    let flash = store.release();
    assert!(matches!(
        Store::new(flash, 1024, 1024, &layer).err(),
        Some(AdaptError::FlashTooSmall { .. })
    ));
}

#[test]
fn uncertainty_shrinks_where_data_was_seen_and_stays_where_it_was_not() {
    let buffer = model_buffer(10);
    let model = buffer.model().unwrap();
    // Examples whose features live in the first four coordinates only.
    let seen: Vec<(Vec<f32>, usize)> = examples(61, 50)
        .into_iter()
        .map(|(mut phi, y)| {
            phi[4..].fill(0.0);
            (phi, y)
        })
        .collect();
    let settings = Settings {
        prior_scale: 30.0,
        ..Settings::default()
    };
    let mut s0 = Vec::new();
    let prior = adapted(&model, settings, &mut s0, &[]);
    let mut s1 = Vec::new();
    let layer = adapted(&model, settings, &mut s1, &seen);
    let mut scratch = vec![0.0f32; layer.scratch_len()];
    let (mut inside, mut outside) = (vec![0.0f32; FEATURES], vec![0.0f32; FEATURES]);
    inside[..4].copy_from_slice(&[1.0, 0.5, 0.8, 0.3]);
    outside[4..].copy_from_slice(&[1.0, 0.5, 0.8]);
    let mut shrank = false;
    for k in 0..CLASSES {
        let before = prior.logit_moments(k, &inside, &mut scratch).unwrap().1;
        let after = layer.logit_moments(k, &inside, &mut scratch).unwrap().1;
        assert!(after <= before * 1.0001);
        shrank |= after < 0.5 * before;
        // Features the examples never had: the posterior there is the prior (bias fixed, so
        // nothing couples them to what was seen).
        let a = prior.logit_moments(k, &outside, &mut scratch).unwrap();
        let b = layer.logit_moments(k, &outside, &mut scratch).unwrap();
        assert!((a.0 - b.0).abs() <= 1e-5 * (1.0 + a.0.abs()), "{a:?} {b:?}");
        assert!((a.1 - b.1).abs() <= 1e-5 * a.1.abs(), "{a:?} {b:?}");
    }
    assert!(shrank);
}

#[test]
fn a_million_updates_keep_the_posterior_accurate() {
    // A long run: a thousand distinct examples seen a thousand times each. The state's
    // compensated sums stay within a few ulps of the exact sums (a plain f32 sum of a million
    // terms drifts by up to a million half-ulps), so the head is written and matches the f64
    // posterior.
    let buffer = model_buffer(12);
    let model = buffer.model().unwrap();
    let data = examples(71, 1000);
    let settings = Settings {
        prior_scale: 30.0,
        bias_variance: 0.5,
        ..Settings::default()
    };
    let mut state = vec![0.0f32; LastLayer::state_len(&model).unwrap()];
    let mut layer = LastLayer::new(&model, settings, &mut state).unwrap();
    for _ in 0..1000 {
        for (phi, y) in &data {
            layer.update(phi, *y).unwrap();
        }
    }
    assert_eq!(layer.count(), 1_000_000);
    let weighted: Vec<_> = data.iter().map(|(p, y)| (p.clone(), *y, 1000.0)).collect();
    assert_matches_batch(
        &layer,
        &batch_weighted(&model, settings, &weighted),
        &examples(72, 5),
        1e-3,
    );
    head_words(&layer);

    // Two examples repeated a million times: the precision grows along two directions only,
    // its condition number past what an f32 Cholesky factorisation resolves. The head is
    // refused with a typed error, not written wrong.
    let pair = &data[..2];
    let mut state = vec![0.0f32; LastLayer::state_len(&model).unwrap()];
    let mut layer = LastLayer::new(&model, settings, &mut state).unwrap();
    for _ in 0..500_000 {
        for (phi, y) in pair {
            layer.update(phi, *y).unwrap();
        }
    }
    let mut scratch = vec![0.0f32; layer.scratch_len()];
    let mut out = vec![0u32; layer.head_len()];
    assert!(matches!(
        layer.write_head(&mut scratch, &mut out),
        Err(AdaptError::NotPositiveDefinite { .. })
    ));
}
