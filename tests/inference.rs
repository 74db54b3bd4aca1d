//! Inference against independent computations: an f64 dense forward pass for the mean-weights
//! mode, and explicit sampling of every weight (no local reparameterization) for the Monte
//! Carlo posterior predictive. Plus the engine's invariants: results do not depend on the
//! chunk size, dense and sparse storage agree, seeds reproduce.

use core::num::NonZeroU16;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::{Xoshiro128PlusPlus, Xoshiro256PlusPlus};
use tinybayes::format::Activation;
use tinybayes::writer::{synthetic, ModelBuffer, ModelSpec, StorageChoice};
use tinybayes::{Engine, Mode, Model, Prediction};

fn samples(m: u16) -> Mode {
    Mode::MonteCarlo {
        samples: NonZeroU16::new(m).unwrap(),
    }
}

fn run<const CHUNK: usize, const K: usize>(
    model: &Model<'_>,
    input: &[f32],
    mode: Mode,
    seed: u64,
) -> Prediction<K> {
    let mut ws = vec![0.0f32; tinybayes::Plan::new(model, CHUNK).workspace_len()];
    let mut engine = Engine::<CHUNK>::new(model, &mut ws).unwrap();
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(seed);
    engine.predict(input, mode, &mut rng).unwrap()
}

/// A random input in [0, 1).
fn input(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..len)
        .map(|_| (rng.next_u32() >> 8) as f32 / 16_777_216.0)
        .collect()
}

/// Dense f64 forward pass of a spec with the given weights (one matrix per layer).
fn forward_f64(spec: &ModelSpec, weights: &[Vec<f64>], x: &[f32]) -> Vec<f64> {
    let mut a: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for (l, w) in spec.layers.iter().zip(weights) {
        let mut out = vec![0.0f64; l.outputs];
        for (j, o) in out.iter_mut().enumerate() {
            *o = l.bias[j] as f64
                + (0..l.inputs)
                    .map(|i| w[j * l.inputs + i] * a[i])
                    .sum::<f64>();
            if l.activation == Activation::Relu {
                *o = o.max(0.0);
            }
        }
        a = out;
    }
    let max = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let norm: f64 = a.iter().map(|z| (z - max).exp()).sum();
    a.iter().map(|z| (z - max).exp() / norm).collect()
}

fn entropy_f64(p: &[f64]) -> f64 {
    p.iter().filter(|&&q| q > 0.0).map(|&q| -q * q.ln()).sum()
}

/// A small model mixing storage kinds and posteriors.
fn mixed_spec(seed: u64) -> ModelSpec {
    let mut spec = synthetic::mlp(seed, &[12, 9, 7, 4], 0.6);
    spec.layers[0].storage = StorageChoice::Sparse;
    spec.layers[1].storage = StorageChoice::Dense;
    spec.layers[1].variance = None; // a deterministic layer in the middle
    spec.layers[2].storage = StorageChoice::Sparse;
    spec
}

#[test]
fn mean_weights_match_an_f64_dense_forward_pass() {
    for seed in 0..20 {
        let spec = mixed_spec(seed);
        let buffer = spec.to_buffer().unwrap();
        let model = buffer.model().unwrap();
        let x = input(12, seed + 100);
        let thetas: Vec<Vec<f64>> = spec
            .layers
            .iter()
            .map(|l| l.theta.iter().map(|&t| t as f64).collect())
            .collect();
        let reference = forward_f64(&spec, &thetas, &x);
        let p: Prediction<4> = run::<1, 4>(&model, &x, Mode::MeanWeights, 0);
        for (a, b) in p.probabilities.iter().zip(&reference) {
            assert!((*a as f64 - b).abs() < 1e-5, "seed {seed}: {a} vs {b}");
        }
        let h = entropy_f64(&reference);
        assert!((p.predictive_entropy as f64 - h).abs() < 1e-5);
        assert_eq!(p.expected_entropy, p.predictive_entropy);
        assert_eq!(p.mutual_information, 0.0);
        let best = (0..4)
            .max_by(|&i, &j| reference[i].total_cmp(&reference[j]))
            .unwrap();
        assert_eq!(p.class, best);
    }
}

/// Standard normal in f64 by Box-Muller: independent of the engine's ziggurat.
fn box_muller(rng: &mut Xoshiro256PlusPlus) -> f64 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[test]
fn local_reparameterization_matches_sampling_every_weight() {
    // Wide posteriors (alpha = 1) so the noise really moves the prediction.
    let mut spec = synthetic::mlp(3, &[6, 5, 3], 1.0);
    for l in &mut spec.layers {
        let var = l.theta.iter().map(|t| t * t + 0.05).collect();
        l.variance = Some(var);
    }
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let x: Vec<f32> = vec![0.9, -0.4, 1.3, 0.2, -1.1, 0.7];

    // Reference: draw every weight from N(theta, sigma^2), average the softmax, in f64.
    const N: usize = 200_000;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let mut mean_p = [0.0f64; 3];
    let mut mean_h = 0.0f64;
    for _ in 0..N {
        let weights: Vec<Vec<f64>> = spec
            .layers
            .iter()
            .map(|l| {
                let var = l.variance.as_ref().unwrap();
                l.theta
                    .iter()
                    .zip(var)
                    .map(|(&t, &v)| t as f64 + (v as f64).sqrt() * box_muller(&mut rng))
                    .collect()
            })
            .collect();
        let p = forward_f64(&spec, &weights, &x);
        mean_h += entropy_f64(&p) / N as f64;
        for (m, q) in mean_p.iter_mut().zip(&p) {
            *m += q / N as f64;
        }
    }
    let reference_mi = entropy_f64(&mean_p) - mean_h;

    let p: Prediction<3> = run::<16, 3>(&model, &x, samples(60_000), 5);
    // Standard error of a mean probability is at most 0.5 / sqrt(n) per estimate.
    let se = 0.5 * (1.0 / 60_000f64 + 1.0 / N as f64).sqrt();
    for (a, b) in p.probabilities.iter().zip(&mean_p) {
        assert!(
            (*a as f64 - b).abs() < 5.0 * se,
            "{a} vs {b} (tolerance {})",
            5.0 * se
        );
    }
    assert!(
        (p.expected_entropy as f64 - mean_h).abs() < 0.01,
        "{} vs {mean_h}",
        p.expected_entropy
    );
    assert!(
        (p.mutual_information as f64 - reference_mi).abs() < 0.01,
        "{} vs {reference_mi}",
        p.mutual_information
    );
    // The noise matters here: the predictive differs clearly from the mean network.
    let mean_net: Prediction<3> = run::<1, 3>(&model, &x, Mode::MeanWeights, 0);
    let shift: f32 = p
        .probabilities
        .iter()
        .zip(&mean_net.probabilities)
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(
        shift > 0.05,
        "posterior noise should change the prediction, shift {shift}"
    );
    assert!(p.mutual_information > 0.01);
}

#[test]
fn results_do_not_depend_on_the_chunk_size() {
    let spec = mixed_spec(9);
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let x = input(12, 1);
    let a: Prediction<4> = run::<1, 4>(&model, &x, samples(21), 77);
    let b: Prediction<4> = run::<3, 4>(&model, &x, samples(21), 77);
    let c: Prediction<4> = run::<8, 4>(&model, &x, samples(21), 77);
    let d: Prediction<4> = run::<64, 4>(&model, &x, samples(21), 77);
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a, d);
}

#[test]
fn seeds_reproduce_and_differ() {
    let buffer = mixed_spec(2).to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let x = input(12, 3);
    let a: Prediction<4> = run::<4, 4>(&model, &x, samples(16), 1);
    let b: Prediction<4> = run::<4, 4>(&model, &x, samples(16), 1);
    let c: Prediction<4> = run::<4, 4>(&model, &x, samples(16), 2);
    assert_eq!(a, b);
    assert_ne!(a.probabilities, c.probabilities);
}

#[test]
fn dense_and_sparse_storage_agree() {
    for seed in 0..10 {
        let mut dense = synthetic::mlp(seed, &[10, 8, 5], 0.5);
        let mut sparse = dense.clone();
        for l in &mut dense.layers {
            l.storage = StorageChoice::Dense;
        }
        for l in &mut sparse.layers {
            l.storage = StorageChoice::Sparse;
        }
        let (bd, bs) = (dense.to_buffer().unwrap(), sparse.to_buffer().unwrap());
        assert!(bs.as_bytes().len() < bd.as_bytes().len());
        let (md, ms) = (bd.model().unwrap(), bs.model().unwrap());
        let x = input(10, seed);
        for mode in [Mode::MeanWeights, samples(12)] {
            let a: Prediction<5> = run::<4, 5>(&md, &x, mode, seed);
            let b: Prediction<5> = run::<4, 5>(&ms, &x, mode, seed);
            for (p, q) in a.probabilities.iter().zip(&b.probabilities) {
                assert!((p - q).abs() < 1e-5, "seed {seed} {mode:?}: {p} vs {q}");
            }
            assert_eq!(a.class, b.class);
        }
    }
}

/// Storage by input sums every output in the same order as row-major storage (bias, then
/// inputs ascending): identical bits for f32 inputs; for raw bytes it also skips zero pixels,
/// which can only flip the sign of a zero sum.
#[test]
fn by_input_storage_matches_row_major_storage() {
    for seed in 0..10 {
        let mut rows = synthetic::mlp(seed, &[30, 12, 5], 0.4);
        rows.input_shape = [1, 5, 6];
        let mut cols = rows.clone();
        rows.layers[0].storage = StorageChoice::Sparse;
        cols.layers[0].storage = StorageChoice::SparseByInput;
        let (br, bc) = (rows.to_buffer().unwrap(), cols.to_buffer().unwrap());
        let (mr, mc) = (br.model().unwrap(), bc.model().unwrap());
        assert_eq!(
            mc.layers()[0].storage(),
            tinybayes::format::Storage::SparseByInput
        );
        assert_eq!(mr.nnz(), mc.nnz());
        let x = input(30, seed);
        for mode in [Mode::MeanWeights, samples(12)] {
            let a: Prediction<5> = run::<4, 5>(&mr, &x, mode, seed);
            let b: Prediction<5> = run::<4, 5>(&mc, &x, mode, seed);
            assert_eq!(a, b, "seed {seed} {mode:?}");
        }
        // Raw bytes with many zeros.
        let raw: Vec<u8> = (0..30)
            .map(|i| if i % 3 == 0 { (i * 9) as u8 } else { 0 })
            .collect();
        let mut ws = vec![0.0f32; tinybayes::Plan::new(&mc, 4).workspace_len()];
        for mode in [Mode::MeanWeights, samples(12)] {
            let mut e = Engine::<4>::new(&mr, &mut ws).unwrap();
            let a: Prediction<5> = e
                .predict_u8(&raw, mode, &mut Xoshiro128PlusPlus::seed_from_u64(1))
                .unwrap();
            let mut e = Engine::<4>::new(&mc, &mut ws).unwrap();
            let b: Prediction<5> = e
                .predict_u8(&raw, mode, &mut Xoshiro128PlusPlus::seed_from_u64(1))
                .unwrap();
            for (p, q) in a.probabilities.iter().zip(&b.probabilities) {
                assert!((p - q).abs() < 1e-6, "seed {seed}: {p} vs {q}");
            }
        }
        // A by-input layer after a stochastic layer runs through the sampled path too.
        let mut deep = synthetic::mlp(seed, &[30, 12, 9, 5], 0.4);
        let mut deep_cols = deep.clone();
        deep.layers[1].storage = StorageChoice::Sparse;
        deep_cols.layers[1].storage = StorageChoice::SparseByInput;
        let (bd, bdc) = (deep.to_buffer().unwrap(), deep_cols.to_buffer().unwrap());
        let (md, mdc) = (bd.model().unwrap(), bdc.model().unwrap());
        let a: Prediction<5> = run::<3, 5>(&md, &x, samples(7), seed);
        let b: Prediction<5> = run::<3, 5>(&mdc, &x, samples(7), seed);
        assert_eq!(a, b, "sampled path, seed {seed}");
    }
}

/// A generator that hands out one given `u64` and then zeros: with it, a one-sample run
/// draws exactly what sample `m` of an M-sample run draws (the engine seeds sample `m`'s
/// stream with the `m`-th `u64` of the caller's generator).
#[derive(Clone)]
struct OneSeed(Option<u64>);

impl RngCore for OneSeed {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0.take().unwrap_or(0)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.next_u64() as u8;
        }
    }
}

#[test]
fn uncertainty_decomposition_matches_the_samples_it_averages() {
    // Each sample's softmax, from a one-sample run on that sample's seed; then, in f64, the
    // predictive p̄ = mean p_m, its entropy, the expected entropy mean H(p_m), and the mutual
    // information in its other form (1/M) Σ_m KL(p_m || p̄), which never subtracts entropies.
    for seed in 0..20 {
        let buffer = mixed_spec(seed).to_buffer().unwrap();
        let model = buffer.model().unwrap();
        let x = input(12, seed);
        const M: usize = 40;
        let p: Prediction<4> = run::<8, 4>(&model, &x, samples(M as u16), seed);
        let mut seeds = Xoshiro128PlusPlus::seed_from_u64(seed);
        let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, 1).workspace_len()];
        let mut engine = Engine::<1>::new(&model, &mut ws).unwrap();
        let per_sample: Vec<Vec<f64>> = (0..M)
            .map(|_| {
                let mut one = OneSeed(Some(seeds.next_u64()));
                let q: Prediction<4> = engine.predict(&x, samples(1), &mut one).unwrap();
                q.probabilities.iter().map(|&v| v as f64).collect()
            })
            .collect();
        let mean: Vec<f64> = (0..4)
            .map(|k| per_sample.iter().map(|q| q[k]).sum::<f64>() / M as f64)
            .collect();
        let expected_h = per_sample.iter().map(|q| entropy_f64(q)).sum::<f64>() / M as f64;
        let kl_mi = per_sample
            .iter()
            .map(|q| {
                q.iter()
                    .zip(&mean)
                    .filter(|(&a, _)| a > 0.0)
                    .map(|(&a, &b)| a * (a / b).ln())
                    .sum::<f64>()
            })
            .sum::<f64>()
            / M as f64;
        for (a, b) in p.probabilities.iter().zip(&mean) {
            assert!((*a as f64 - b).abs() < 1e-5, "seed {seed}: p̄ {a} vs {b}");
        }
        let close = |a: f32, b: f64, what: &str| {
            assert!(
                (a as f64 - b).abs() < 2e-5,
                "seed {seed}: {what} {a} vs {b}"
            );
        };
        close(
            p.predictive_entropy,
            entropy_f64(&mean),
            "predictive entropy",
        );
        close(p.expected_entropy, expected_h, "expected entropy");
        close(p.mutual_information, kl_mi, "mutual information");
        assert_eq!(p.samples, M);
    }
}

#[test]
fn zero_variance_means_zero_mutual_information() {
    let mut spec = synthetic::mlp(4, &[8, 6, 3], 0.7);
    for l in &mut spec.layers {
        l.variance = Some(vec![0.0; l.theta.len()]);
    }
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let x = input(8, 4);
    let mc: Prediction<3> = run::<4, 3>(&model, &x, samples(10), 1);
    let mean: Prediction<3> = run::<4, 3>(&model, &x, Mode::MeanWeights, 1);
    assert!(mc.mutual_information < 1e-5);
    for (a, b) in mc.probabilities.iter().zip(&mean.probabilities) {
        assert!((a - b).abs() < 1e-6);
    }
}

#[test]
fn deterministic_model_in_monte_carlo_mode_equals_mean_weights() {
    let mut spec = synthetic::mlp(6, &[8, 6, 3], 0.7);
    for l in &mut spec.layers {
        l.variance = None;
    }
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let x = input(8, 6);
    let mc: Prediction<3> = run::<4, 3>(&model, &x, samples(10), 1);
    let mean: Prediction<3> = run::<4, 3>(&model, &x, Mode::MeanWeights, 1);
    assert_eq!(mc.probabilities, mean.probabilities);
    assert_eq!(mc.mutual_information, 0.0);
}

#[test]
fn raw_u8_inputs_equal_their_normalised_f32_inputs() {
    let mut spec = synthetic::mlp(8, &[16, 6, 3], 0.6);
    spec.input_scale = 1.0 / 255.0;
    spec.input_offset = -0.25;
    let buffer = spec.to_buffer().unwrap();
    let model = buffer.model().unwrap();
    let raw: Vec<u8> = (0..16).map(|i| (i * 37 % 256) as u8).collect();
    let normalised: Vec<f32> = raw
        .iter()
        .map(|&p| p as f32 * (1.0 / 255.0) + -0.25)
        .collect();
    let mut ws = vec![0.0f32; tinybayes::Plan::new(&model, 4).workspace_len()];
    let mut engine = Engine::<4>::new(&model, &mut ws).unwrap();
    for mode in [Mode::MeanWeights, samples(9)] {
        let mut r1 = Xoshiro128PlusPlus::seed_from_u64(3);
        let mut r2 = Xoshiro128PlusPlus::seed_from_u64(3);
        let a: Prediction<3> = engine.predict_u8(&raw, mode, &mut r1).unwrap();
        let b: Prediction<3> = engine.predict(&normalised, mode, &mut r2).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn model_files_round_trip_through_an_aligned_buffer() {
    let spec = mixed_spec(1);
    let bytes = spec.to_bytes().unwrap();
    let buffer = ModelBuffer::from_bytes(&bytes);
    let model = buffer.model().unwrap();
    assert_eq!(model.layers().len(), 3);
    assert_eq!(model.num_classes(), 4);
    assert_eq!(model.input_len(), 12);
    for (layer, l) in model.layers().iter().zip(&spec.layers) {
        assert_eq!(layer.storage(), l.resolved_storage());
        let stored = match layer.storage() {
            tinybayes::format::Storage::Dense => l.inputs * l.outputs,
            tinybayes::format::Storage::Sparse | tinybayes::format::Storage::SparseByInput => {
                l.nnz()
            }
        };
        assert_eq!(layer.nnz(), stored);
    }
}
