//! On-target tests of the fixed-point path, run in QEMU on the Cortex-M0, M3 and M4F
//! (`cargo test-m0`, `cargo test-m3`, `cargo test-m4 --test on_target_fixed`): the q8 and q16
//! LeNet-300-100, the q8 LeNet-5 and the q8 early-exit ResNet (these two not on the M0's
//! micro:bit: they need more RAM) validate on the device, every output on the embedded images is bit-identical to the
//! host's (digests computed at build time with the same core code), results do not depend on
//! the samples per pass, and bad inputs give errors rather than faults.
#![no_std]
#![no_main]

use cortex_m_rt as _;
use tinybayes_firmware as _;

use core::num::NonZeroU16;

use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::digest::OutputsDigest;
use tinybayes::fixed::{QModel, QPrediction};
use tinybayes::format::Precision;
use tinybayes::numeric::FixedPoint;
use tinybayes::Mode;
use tinybayes::{Engine, Q16, Q8};
use tinybayes_firmware::assets;
use tinybayes_firmware::generated::{
    FIXED_CHUNK, FIXED_Q16_MODEL, FIXED_Q16_MODEL_EXPECTED, FIXED_Q8_MODEL,
    FIXED_Q8_MODEL_EXPECTED, FIXED_SAMPLES, FIXED_SEED_BASE, FIXED_WORKSPACE_WORDS,
};

/// The value of `r`, or a test failure naming the error through defmt: `Result::unwrap`
/// would link the errors' `core::fmt::Debug` impls and the formatting machinery (about 8 KB,
/// which the micro:bit's 256 KB of flash does not hold beside the models).
fn ok<T, E: defmt::Format>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => defmt::panic!("{}", e),
    }
}

fn modes() -> [Mode; 2] {
    [
        Mode::MeanWeights,
        Mode::MonteCarlo {
            samples: NonZeroU16::new(FIXED_SAMPLES).unwrap(),
        },
    ]
}

/// The digest of image `i`'s outputs in both modes, computed with `CHUNK` samples per pass.
fn digest<const CHUNK: usize>(model: &QModel<'_>, workspace: &mut [u64], i: usize) -> u32 {
    match model.precision() {
        Precision::Q16 => digest_in::<CHUNK, Q16>(model, workspace, i),
        _ => digest_in::<CHUNK, Q8>(model, workspace, i),
    }
}

fn digest_in<const CHUNK: usize, N: FixedPoint>(
    model: &QModel<'_>,
    workspace: &mut [u64],
    i: usize,
) -> u32 {
    let mut engine = ok(Engine::<CHUNK, N>::new(model, workspace));
    let (pixels, _) = assets::image(i);
    let mut d = OutputsDigest::new();
    for mode in modes() {
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(FIXED_SEED_BASE + i as u64);
        let p: QPrediction<10> = ok(engine.predict_u8(pixels, mode, &mut rng));
        d.add(&p);
    }
    d.finalize()
}

/// Every embedded image's digest with `CHUNK` samples per pass in `WORDS` words of workspace
/// against the host's.
fn check_parity<const CHUNK: usize, const WORDS: usize>(bytes: &[u8], expected: &[u32]) {
    let model = ok(QModel::from_bytes(bytes));
    let mut workspace = [0u64; WORDS];
    for (i, &host) in expected.iter().enumerate() {
        let device = digest::<CHUNK>(&model, &mut workspace, i);
        if device != host {
            defmt::error!(
                "image {=usize}: device {=u32:#x} host {=u32:#x}",
                i,
                device,
                host
            );
        }
        defmt::assert_eq!(device, host);
    }
}

/// The q8 early-exit ResNet's parity check (MPS2 boards only).
#[cfg(tb_resnet_q8)]
mod resnet {
    use super::*;
    use tinybayes::early_exit::Halting;
    use tinybayes::QExitPrediction;
    use tinybayes_firmware::generated::{
        RESNET_CHUNK, RESNET_Q8_EXPECTED, RESNET_Q8_MODEL, RESNET_RUNS, RESNET_SAMPLES,
        RESNET_WORKSPACE_WORDS,
    };

    /// The bits the host wrote for one prediction (the row layout of `RESNET_Q8_EXPECTED`).
    fn row(e: &QExitPrediction<10>) -> [u32; 18] {
        let p = &e.prediction;
        let mut row = [0u32; 18];
        row[..8].copy_from_slice(&[
            p.class as u32,
            e.exit as u32,
            e.depth as u32,
            e.macs as u32,
            p.samples as u32,
            p.predictive_entropy.to_bits(),
            p.expected_entropy.to_bits(),
            p.mutual_information.to_bits(),
        ]);
        defmt::assert_eq!(p.probabilities.len(), 10);
        for (slot, v) in row[8..].iter_mut().zip(&p.probabilities) {
            *slot = v.to_bits();
        }
        row
    }

    pub fn check_parity() {
        let model = ok(QModel::from_bytes(RESNET_Q8_MODEL));
        let mut workspace = [0u64; RESNET_WORKSPACE_WORDS];
        let mut engine = ok(Engine::<RESNET_CHUNK, Q8>::new(&model, &mut workspace));
        let mc = Mode::MonteCarlo {
            samples: NonZeroU16::new(RESNET_SAMPLES).unwrap(),
        };
        let runs = [
            (Mode::MeanWeights, Halting::All),
            (mc, Halting::JointMode { prior: None }),
            (mc, Halting::All),
        ];
        for ((mode, halting), (expected, name)) in runs
            .into_iter()
            .zip(RESNET_Q8_EXPECTED.iter().zip(RESNET_RUNS))
        {
            for (i, host) in expected.iter().enumerate() {
                let (pixels, _) = assets::image(i);
                let mut rng = Xoshiro128PlusPlus::seed_from_u64(FIXED_SEED_BASE + i as u64);
                let e: QExitPrediction<10> =
                    ok(engine.predict_u8_early_exit(pixels, mode, halting, &mut rng));
                let device = row(&e);
                if &device != host {
                    defmt::error!(
                        "{=str}, image {=usize}: device {=[?]} host {=[?]}",
                        name,
                        i,
                        device[..],
                        host[..]
                    );
                }
                defmt::assert_eq!(&device, host);
            }
        }
    }
}

#[defmt_test::tests]
mod tests {
    use super::*;
    use tinybayes::{InferenceError, ModelError};

    #[test]
    fn q8_outputs_are_bit_identical_to_the_host() {
        check_parity::<FIXED_CHUNK, FIXED_WORKSPACE_WORDS>(
            FIXED_Q8_MODEL,
            &FIXED_Q8_MODEL_EXPECTED,
        );
    }

    /// Fixed-point convolutions and pooling (the q8 LeNet-5), where the board's RAM holds
    /// them (not the micro:bit's 16 KB).
    #[test]
    fn lenet5_q8_outputs_are_bit_identical_to_the_host() {
        #[cfg(tb_lenet5)]
        {
            use tinybayes_firmware::generated::{
                LENET5_CHUNK, LENET5_Q8_MODEL, LENET5_Q8_MODEL_EXPECTED, LENET5_WORKSPACE_WORDS,
            };
            check_parity::<LENET5_CHUNK, LENET5_WORKSPACE_WORDS>(
                LENET5_Q8_MODEL,
                &LENET5_Q8_MODEL_EXPECTED,
            );
        }
        #[cfg(not(tb_lenet5))]
        defmt::info!("the q8 LeNet-5 does not fit this board: not run");
    }

    /// The q8 early-exit ResNet (integer residual additions, exit heads and halting), where
    /// the board's RAM holds it (the MPS2 boards): every output bit of the three runs of
    /// `RESNET_RUNS` on every embedded image, including the answering exit, depth and MACs.
    #[test]
    fn resnet_q8_early_exit_outputs_are_bit_identical_to_the_host() {
        #[cfg(tb_resnet_q8)]
        resnet::check_parity();
        #[cfg(not(tb_resnet_q8))]
        defmt::info!(
            "the q8 early-exit ResNet does not fit this board (needs {=usize} B of workspace with one sample per pass): not run",
            tinybayes_firmware::generated::RESNET_Q8_WORKSPACE_BYTES_ONE_SAMPLE
        );
    }

    #[test]
    fn q16_outputs_are_bit_identical_to_the_host() {
        check_parity::<FIXED_CHUNK, FIXED_WORKSPACE_WORDS>(
            FIXED_Q16_MODEL,
            &FIXED_Q16_MODEL_EXPECTED,
        );
    }

    #[test]
    fn one_sample_per_pass_gives_the_same_bits() {
        let model = ok(QModel::from_bytes(FIXED_Q8_MODEL));
        let mut workspace = [0u64; FIXED_WORKSPACE_WORDS];
        defmt::assert_eq!(
            digest::<1>(&model, &mut workspace, 3),
            FIXED_Q8_MODEL_EXPECTED[3]
        );
    }

    #[test]
    fn the_q8_model_is_correct_on_most_embedded_digits() {
        let model = ok(QModel::from_bytes(FIXED_Q8_MODEL));
        let mut workspace = [0u64; FIXED_WORKSPACE_WORDS];
        let mut engine = ok(Engine::<FIXED_CHUNK, Q8>::new(&model, &mut workspace));
        let mut correct = 0;
        for i in 0..assets::IMAGE_COUNT {
            let (pixels, label) = assets::image(i);
            let mut rng = Xoshiro128PlusPlus::seed_from_u64(i as u64);
            let p: QPrediction<10> = ok(engine.predict_u8(pixels, modes()[1], &mut rng));
            correct += usize::from(p.class == label as usize);
        }
        defmt::assert!(correct >= 9);
    }

    #[test]
    fn corrupt_models_and_bad_inputs_are_errors() {
        defmt::assert!(matches!(
            QModel::from_bytes(&FIXED_Q8_MODEL[..FIXED_Q8_MODEL.len() - 4]),
            Err(ModelError::LengthMismatch { .. })
        ));
        let model = ok(QModel::from_bytes(FIXED_Q8_MODEL));
        let mut workspace = [0u64; FIXED_WORKSPACE_WORDS];
        defmt::assert!(matches!(
            Engine::<FIXED_CHUNK, Q8>::new(&model, &mut workspace[..8]),
            Err(InferenceError::WorkspaceTooSmall { .. })
        ));
        let mut engine = ok(Engine::<FIXED_CHUNK, Q8>::new(&model, &mut workspace));
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(0);
        let r: Result<QPrediction<10>, _> =
            engine.predict_u8(&[0u8; 10], Mode::MeanWeights, &mut rng);
        defmt::assert!(matches!(r, Err(InferenceError::InputLength { .. })));
    }
}
