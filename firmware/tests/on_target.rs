//! On-target tests, run in QEMU (`cargo test-m4`): the demo model validates on the device,
//! bad inputs give errors rather than faults, and every output is bit-identical to the one
//! the host computed at build time with the same core code, model, images and seeds.
#![no_std]
#![no_main]

use cortex_m_rt as _;
use tinybayes_firmware as _;

use core::num::NonZeroU16;

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::{Engine, Mode, Model, Prediction};
use tinybayes_firmware::assets;
use tinybayes_firmware::generated::{
    DEMO_CHUNK, DEMO_MODEL, DEMO_SEED_BASE, DEMO_WORKSPACE_WORDS, EE_CHUNK, EE_HOST_EXPECTED,
    EE_MODEL, EE_PARITY_SAMPLES, EE_WORKSPACE_WORDS, HOST_EXPECTED,
};

fn bits(p: &Prediction<10>) -> [u32; 14] {
    let mut row = [0u32; 14];
    row[0] = p.class as u32;
    row[1] = p.predictive_entropy.to_bits();
    row[2] = p.expected_entropy.to_bits();
    row[3] = p.mutual_information.to_bits();
    for (r, v) in row[4..].iter_mut().zip(p.probabilities.iter()) {
        *r = v.to_bits();
    }
    row
}

/// A generator that hands out one given `u64` and then zeros: a one-sample run with it
/// draws exactly what sample `m` of an M-sample run seeded alike draws.
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

/// Workspace words for the largest chunk a parity test runs (32 samples per pass).
const LARGEST_WORKSPACE_WORDS: usize = 4 * DEMO_WORKSPACE_WORDS;

/// Every image's prediction with `CHUNK` samples per pass against the host's rows from
/// `first_row` on. Each sample draws from its own seeded stream, so the host's results hold
/// for every chunk size; different chunks run different kernel blocks (of 8 and 4 samples on
/// hard-float cores).
fn check_parity<const CHUNK: usize>(mode: Mode, first_row: usize) {
    let model = Model::from_bytes(DEMO_MODEL).unwrap();
    let mut workspace = [0.0f32; LARGEST_WORKSPACE_WORDS];
    let mut engine = Engine::<CHUNK>::new(&model, &mut workspace).unwrap();
    for i in 0..assets::IMAGE_COUNT {
        let (pixels, _) = assets::image(i);
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(DEMO_SEED_BASE + i as u64);
        let p: Prediction<10> = engine.predict_u8(pixels, mode, &mut rng).unwrap();
        let device = bits(&p);
        let host = HOST_EXPECTED[first_row + i];
        if device != host {
            defmt::error!("image {=usize}: device {:x} host {:x}", i, device, host);
        }
        defmt::assert_eq!(device, host);
    }
}

#[defmt_test::tests]
mod tests {
    use super::*;
    use tinybayes::{InferenceError, ModelError};
    use tinybayes_firmware::generated::DEMO_SAMPLES;

    #[test]
    fn parity_with_host_mean_weights() {
        check_parity::<DEMO_CHUNK>(Mode::MeanWeights, 0);
    }

    #[test]
    fn parity_with_host_monte_carlo() {
        let samples = NonZeroU16::new(DEMO_SAMPLES).unwrap();
        check_parity::<DEMO_CHUNK>(Mode::MonteCarlo { samples }, assets::IMAGE_COUNT);
    }

    #[test]
    fn parity_with_host_monte_carlo_in_other_chunks() {
        let samples = NonZeroU16::new(DEMO_SAMPLES).unwrap();
        let mode = Mode::MonteCarlo { samples };
        check_parity::<4>(mode, assets::IMAGE_COUNT);
        check_parity::<6>(mode, assets::IMAGE_COUNT);
        check_parity::<32>(mode, assets::IMAGE_COUNT);
    }

    #[test]
    fn early_exit_parity_with_host() {
        // Every block run, so every convolution of the ResNet (and its hand-scheduled
        // kernels) computes on the device what the host computed at build time.
        let model = Model::from_bytes(EE_MODEL).unwrap();
        let mut workspace = [0.0f32; EE_WORKSPACE_WORDS];
        let mut engine = Engine::<EE_CHUNK>::new(&model, &mut workspace).unwrap();
        let halting = tinybayes::early_exit::Halting::Depth {
            exits: model.exit_count(),
        };
        let samples = NonZeroU16::new(EE_PARITY_SAMPLES).unwrap();
        let images = EE_HOST_EXPECTED.len() / 2;
        for (m, mode) in [Mode::MeanWeights, Mode::MonteCarlo { samples }]
            .into_iter()
            .enumerate()
        {
            for i in 0..images {
                let (pixels, _) = assets::image(i);
                let mut rng = Xoshiro128PlusPlus::seed_from_u64(DEMO_SEED_BASE + i as u64);
                let p = engine
                    .predict_u8_early_exit::<10>(pixels, mode, halting, &mut rng)
                    .unwrap();
                let device = bits(&p.prediction);
                let host = EE_HOST_EXPECTED[m * images + i];
                if device != host {
                    defmt::error!("image {=usize}: device {:x} host {:x}", i, device, host);
                }
                defmt::assert_eq!(device, host);
            }
        }
    }

    #[test]
    fn predictive_summary_matches_the_samples_it_averages() {
        // Each sample's softmax from a one-sample run on that sample's seed (the engine seeds
        // sample m with the m-th u64 of the caller's generator); the M-sample predictive, its
        // entropies and the mutual information in its other form, (1/M) Σ KL(p_m || p̄),
        // recomputed from them on the device.
        const M: usize = 16;
        let model = Model::from_bytes(DEMO_MODEL).unwrap();
        let mut workspace = [0.0f32; DEMO_WORKSPACE_WORDS];
        let samples = NonZeroU16::new(M as u16).unwrap();
        let mut largest_mi = 0.0f32;
        for image in 0..assets::IMAGE_COUNT {
            let (pixels, _) = assets::image(image);
            let p: Prediction<10> = {
                let mut engine = Engine::<DEMO_CHUNK>::new(&model, &mut workspace).unwrap();
                let mut rng = Xoshiro128PlusPlus::seed_from_u64(5);
                engine
                    .predict_u8(pixels, Mode::MonteCarlo { samples }, &mut rng)
                    .unwrap()
            };
            let mut engine = Engine::<1>::new(&model, &mut workspace).unwrap();
            let mut seeds = Xoshiro128PlusPlus::seed_from_u64(5);
            let mut per_sample = [[0.0f32; 10]; M];
            for q in per_sample.iter_mut() {
                let mut one = OneSeed(Some(seeds.next_u64()));
                let one_sample = NonZeroU16::new(1).unwrap();
                let r: Prediction<10> = engine
                    .predict_u8(
                        pixels,
                        Mode::MonteCarlo {
                            samples: one_sample,
                        },
                        &mut one,
                    )
                    .unwrap();
                q.copy_from_slice(&r.probabilities);
            }
            let mut mean = [0.0f32; 10];
            for q in &per_sample {
                for (m, v) in mean.iter_mut().zip(q) {
                    *m += v / M as f32;
                }
            }
            let entropy = |q: &[f32]| -> f32 {
                q.iter()
                    .filter(|&&v| v > 0.0)
                    .map(|&v| -v * libm::logf(v))
                    .sum()
            };
            let expected: f32 = per_sample.iter().map(|q| entropy(q)).sum::<f32>() / M as f32;
            let kl_mi: f32 = per_sample
                .iter()
                .map(|q| {
                    q.iter()
                        .zip(&mean)
                        .filter(|(&a, _)| a > 0.0)
                        .map(|(&a, &b)| a * libm::logf(a / b))
                        .sum::<f32>()
                })
                .sum::<f32>()
                / M as f32;
            for (a, b) in p.probabilities.iter().zip(&mean) {
                defmt::assert!((a - b).abs() < 1e-5);
            }
            defmt::assert!((p.predictive_entropy - entropy(&mean)).abs() < 1e-4);
            defmt::assert!((p.expected_entropy - expected).abs() < 1e-4);
            defmt::assert!((p.mutual_information - kl_mi).abs() < 1e-4);
            largest_mi = largest_mi.max(kl_mi);
        }
        // Some image's samples disagree: the check is not only of zeros.
        defmt::assert!(largest_mi > 1e-3);
    }

    #[test]
    fn bad_model_bytes_are_errors() {
        let len = DEMO_MODEL.len();
        let truncated = Model::from_bytes(&DEMO_MODEL[..len - 4]);
        defmt::assert!(matches!(truncated, Err(ModelError::LengthMismatch { .. })));
        let misaligned = Model::from_bytes(&DEMO_MODEL[1..]);
        defmt::assert!(matches!(misaligned, Err(ModelError::Misaligned)));
        let empty = Model::from_bytes(&[]);
        defmt::assert!(matches!(empty, Err(ModelError::TooShort { len: 0 })));
    }

    #[test]
    fn bad_run_arguments_are_errors() {
        let model = Model::from_bytes(DEMO_MODEL).unwrap();
        let mut small = [0.0f32; 16];
        let short = Engine::<DEMO_CHUNK>::new(&model, &mut small);
        defmt::assert!(matches!(
            short,
            Err(InferenceError::WorkspaceTooSmall { .. })
        ));
        let mut workspace = [0.0f32; DEMO_WORKSPACE_WORDS];
        let mut engine = Engine::<DEMO_CHUNK>::new(&model, &mut workspace).unwrap();
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(1);
        let wrong_len: Result<Prediction<10>, _> =
            engine.predict_u8(&[0u8; 100], Mode::MeanWeights, &mut rng);
        defmt::assert!(matches!(wrong_len, Err(InferenceError::InputLength { .. })));
        let too_few_classes: Result<Prediction<4>, _> =
            engine.predict_u8(assets::image(0).0, Mode::MeanWeights, &mut rng);
        defmt::assert!(matches!(
            too_few_classes,
            Err(InferenceError::ClassCapacity { .. })
        ));
        let nan = [f32::NAN; 784];
        let non_finite: Result<Prediction<10>, _> =
            engine.predict(&nan, Mode::MeanWeights, &mut rng);
        defmt::assert!(matches!(non_finite, Err(InferenceError::NonFiniteInput)));
    }
}
