//! Host/device parity over the whole MNIST test set: streams the 10,000 raw images from the
//! host over semihosting, runs the q8 model on each (mean weights, then 32 Monte Carlo
//! samples, seed base + i), folds every output bit into a CRC-32 and compares it with the
//! digest the host computed at build time with the same core code. Exits 0 on equality.
#![no_std]
#![no_main]

use core::num::NonZeroU16;

use cortex_m_rt::entry;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use semihosting::io::Read;
use tinybayes::fixed::{QEngine, QModel, QPrediction};
use tinybayes::format::CRC32;
use tinybayes::Mode;
use tinybayes_firmware::clock::Clock;
use tinybayes_firmware::generated::{
    FIXED_CHUNK, FIXED_Q8_MODEL, FIXED_SAMPLES, FIXED_SEED_BASE, FIXED_WORKSPACE_WORDS,
    PARITY_EXPECTED_CRC32, PARITY_IMAGES, PARITY_IMAGE_COUNT,
};
use tinybayes_firmware::platform;

const IMAGE_LEN: usize = 28 * 28;

#[entry]
fn main() -> ! {
    let mut board = platform::init();
    defmt::info!("tinybayes parity on {=str}", platform::BOARD_NAME);
    let Some(path) = PARITY_IMAGES else {
        defmt::error!("this build has no parity data: the MNIST test images were not found at build time (set TINYBAYES_MNIST_DIR)");
        platform::exit(false)
    };
    let Ok(model) = QModel::from_bytes(FIXED_Q8_MODEL) else {
        defmt::error!("the q8 model does not validate");
        platform::exit(false)
    };
    let mut workspace = [0u64; FIXED_WORKSPACE_WORDS];
    let Ok(mut engine) = QEngine::<FIXED_CHUNK>::new(&model, &mut workspace) else {
        platform::exit(false)
    };
    let Ok(mut file) = semihosting::fs::File::open(path) else {
        defmt::error!("cannot open the parity images over semihosting");
        platform::exit(false)
    };
    let samples = NonZeroU16::new(FIXED_SAMPLES).unwrap_or(NonZeroU16::MIN);
    let mut total = CRC32.digest();
    let mut image = [0u8; IMAGE_LEN];
    let start = board.clock.now();
    for i in 0..PARITY_IMAGE_COUNT {
        if file.read_exact(&mut image).is_err() {
            defmt::error!("image {=usize}: short read", i);
            platform::exit(false)
        }
        let mut digest = CRC32.digest();
        for mode in [Mode::MeanWeights, Mode::MonteCarlo { samples }] {
            let mut rng = Xoshiro128PlusPlus::seed_from_u64(FIXED_SEED_BASE + i as u64);
            let p: QPrediction<10> = match engine.predict_u8(&image, mode, &mut rng) {
                Ok(p) => p,
                Err(e) => {
                    defmt::error!("image {=usize}: {}", i, e);
                    platform::exit(false)
                }
            };
            p.digest_into(&mut digest);
        }
        total.update(&digest.finalize().to_le_bytes());
        if (i + 1) % 2000 == 0 {
            defmt::info!("{=usize} images", i + 1);
        }
    }
    let cost = board.clock.now() - start;
    let device = total.finalize();
    defmt::info!(
        "{=usize} images, mean weights and M = {=u16}: device CRC-32 {=u32:#010x}, host {=u32:#010x}; {=u64} instructions in all",
        PARITY_IMAGE_COUNT,
        samples.get(),
        device,
        PARITY_EXPECTED_CRC32,
        cost
    );
    if device == PARITY_EXPECTED_CRC32 {
        defmt::info!("parity: device outputs are bit-identical to the host's");
        platform::exit(true)
    }
    defmt::error!("parity FAILED: device and host outputs differ");
    platform::exit(false)
}
