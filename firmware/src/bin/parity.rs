//! Host/device parity over the whole MNIST test set: streams the 10,000 raw images from the
//! host over semihosting and runs a model on each, mean weights and then 32 Monte Carlo
//! samples (image i seeded with the seed base + i): the f32 LeNet-300-100 on hard-float cores
//! (the Cortex-M4F), the q8 LeNet-5 on the Cortex-M3 (its Monte Carlo mode on the first 1,000
//! images: 59 M instructions each), the q8 LeNet-300-100 on the M0. Each mode's outputs go into one
//! `tinybayes::digest::OutputsDigest`, compared with the digest the host computed at build time
//! with the same core code; it is also what `tinybayes eval --seed 31488` prints as its
//! outputs CRC-32 for the same model and mode. Exits 0 on equality.
#![no_std]
#![no_main]

use core::num::NonZeroU16;

use cortex_m_rt::entry;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use semihosting::io::Read;
use tinybayes::digest::{DigestOutputs, OutputsDigest};
use tinybayes::{InferenceError, Mode};
use tinybayes_firmware::clock::Clock;
use tinybayes_firmware::generated::{
    FIXED_SAMPLES, FIXED_SEED_BASE, PARITY_EXPECTED_CRC32, PARITY_IMAGES, PARITY_IMAGE_COUNTS,
    PARITY_MODEL_NAME,
};
use tinybayes_firmware::platform;

const IMAGE_LEN: usize = 28 * 28;

/// Streams every image through `predict(image, mode, rng)` and returns the digests of the two
/// modes; exits on a read or inference error.
fn digests<P: DigestOutputs>(
    mut predict: impl FnMut(&[u8], Mode, &mut Xoshiro128PlusPlus) -> Result<P, InferenceError>,
) -> [u32; 2] {
    let Some(path) = PARITY_IMAGES else {
        defmt::error!("this build has no parity data: the MNIST test images were not found at build time (set TINYBAYES_MNIST_DIR)");
        platform::exit(false)
    };
    let samples = NonZeroU16::new(FIXED_SAMPLES).unwrap_or(NonZeroU16::MIN);
    let mut out = [0u32; 2];
    for (m, mode) in [Mode::MeanWeights, Mode::MonteCarlo { samples }]
        .into_iter()
        .enumerate()
    {
        let Ok(mut file) = semihosting::fs::File::open(path) else {
            defmt::error!("cannot open the parity images over semihosting");
            platform::exit(false)
        };
        let mut digest = OutputsDigest::new();
        let mut image = [0u8; IMAGE_LEN];
        for i in 0..PARITY_IMAGE_COUNTS[m] {
            if file.read_exact(&mut image).is_err() {
                defmt::error!("image {=usize}: short read", i);
                platform::exit(false)
            }
            let mut rng = Xoshiro128PlusPlus::seed_from_u64(FIXED_SEED_BASE + i as u64);
            match predict(&image, mode, &mut rng) {
                Ok(p) => digest.add(&p),
                Err(e) => {
                    defmt::error!("image {=usize}: {}", i, e);
                    platform::exit(false)
                }
            }
        }
        out[m] = digest.finalize();
    }
    out
}

#[cfg(tb_parity_f32)]
fn run() -> [u32; 2] {
    use tinybayes::{Engine, Model};
    use tinybayes_firmware::generated::{DEMO_CHUNK, DEMO_MODEL, DEMO_WORKSPACE_WORDS};
    let Ok(model) = Model::from_bytes(DEMO_MODEL) else {
        defmt::error!("the f32 model does not validate");
        platform::exit(false)
    };
    let mut workspace = [0.0f32; DEMO_WORKSPACE_WORDS];
    let Ok(mut engine) = Engine::<DEMO_CHUNK>::new(&model, &mut workspace) else {
        platform::exit(false)
    };
    digests(|image, mode, rng| engine.predict_u8::<10>(image, mode, rng))
}

#[cfg(not(tb_parity_f32))]
fn run() -> [u32; 2] {
    use tinybayes_firmware::generated::{
        FIXED_CHUNK, FIXED_Q8_MODEL, FIXED_WORKSPACE_WORDS, PARITY_LENET5,
    };
    #[cfg(tb_lenet5)]
    if PARITY_LENET5 {
        use tinybayes_firmware::generated::{
            LENET5_CHUNK, LENET5_Q8_MODEL, LENET5_WORKSPACE_WORDS,
        };
        return run_q8::<LENET5_CHUNK, LENET5_WORKSPACE_WORDS>(LENET5_Q8_MODEL);
    }
    let _ = PARITY_LENET5;
    run_q8::<FIXED_CHUNK, FIXED_WORKSPACE_WORDS>(FIXED_Q8_MODEL)
}

/// The digests of a q8 model with `CHUNK` samples per pass in `WORDS` words of workspace.
#[cfg(not(tb_parity_f32))]
fn run_q8<const CHUNK: usize, const WORDS: usize>(bytes: &'static [u8]) -> [u32; 2] {
    use tinybayes::fixed::QModel;
    use tinybayes::{Engine, Q8};
    let Ok(model) = QModel::from_bytes(bytes) else {
        defmt::error!("the q8 model does not validate");
        platform::exit(false)
    };
    let mut workspace = [0u64; WORDS];
    let Ok(mut engine) = Engine::<CHUNK, Q8>::new(&model, &mut workspace) else {
        defmt::error!("the q8 model's workspace does not fit");
        platform::exit(false)
    };
    digests(|image, mode, rng| engine.predict_u8::<10>(image, mode, rng))
}

#[entry]
fn main() -> ! {
    let mut board = platform::init();
    defmt::info!(
        "tinybayes parity on {=str}: {=str}",
        platform::BOARD_NAME,
        PARITY_MODEL_NAME
    );
    let start = board.clock.now();
    let device = run();
    let cost = board.clock.now() - start;
    for (m, name) in ["mean weights", "M = 32"].into_iter().enumerate() {
        let (d, h) = (device[m], PARITY_EXPECTED_CRC32[m]);
        defmt::info!(
            "{=usize} images, {=str}: device outputs CRC-32 {=u32:#010x}, host {=u32:#010x}",
            PARITY_IMAGE_COUNTS[m],
            name,
            d,
            h
        );
    }
    defmt::info!("{=u64} instructions in all", cost);
    if device == PARITY_EXPECTED_CRC32 {
        defmt::info!("parity: device outputs are bit-identical to the host's");
        platform::exit(true)
    }
    defmt::error!("parity FAILED: device and host outputs differ");
    platform::exit(false)
}
