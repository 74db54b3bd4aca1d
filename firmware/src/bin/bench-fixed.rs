//! Fixed-point benchmark harness: instructions per inference of the q8 and q16 LeNet-300-100
//! (SysTick under QEMU `-icount shift=0`: instruction counts, not cycles), in
//! the mean-weights mode and with M = 8 and M = 32 Monte Carlo samples, with flash and RAM.
//! Runs on every board: Cortex-M0 (micro:bit), M3 (mps2-an385), M4F (mps2-an386).
#![no_std]
#![no_main]

use core::num::NonZeroU16;

use cortex_m_rt::entry;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::fixed::{QModel, QPrediction};
use tinybayes::format::Precision;
use tinybayes::numeric::FixedPoint;
use tinybayes::{Engine, Q16, Q8};
use tinybayes::{InferenceError, Mode};
use tinybayes_firmware::assets;
use tinybayes_firmware::clock::Clock;
use tinybayes_firmware::generated::{
    FIXED_CHUNK, FIXED_Q16_MODEL, FIXED_Q8_MODEL, FIXED_WORKSPACE_WORDS,
};
use tinybayes_firmware::platform::{self, Board};
use tinybayes_firmware::stack::StackProbe;

/// Stack window painted to measure the inference's own stack use (the micro:bit has 16 KB).
const STACK_WINDOW: usize = 4 * 1024;

/// The measured call, kept out of line so the stack probe sees all of its frames.
#[inline(never)]
fn predict_once<N: FixedPoint>(
    engine: &mut Engine<'_, '_, FIXED_CHUNK, N>,
    pixels: &[u8],
    mode: Mode,
    rng: &mut Xoshiro128PlusPlus,
) -> Result<QPrediction<10>, InferenceError> {
    engine.predict_u8(pixels, mode, rng)
}

fn bench_model(board: &mut Board, name: &str, bytes: &'static [u8]) -> Result<(), InferenceError> {
    match QModel::from_bytes(bytes).map(|m| m.precision()) {
        Ok(Precision::Q16) => bench_in::<Q16>(board, name, bytes),
        _ => bench_in::<Q8>(board, name, bytes),
    }
}

fn bench_in<N: FixedPoint>(
    board: &mut Board,
    name: &str,
    bytes: &'static [u8],
) -> Result<(), InferenceError> {
    let start = board.clock.now();
    let Ok(model) = QModel::from_bytes(bytes) else {
        defmt::error!("{=str} model does not validate", name);
        platform::exit(false)
    };
    let validate = board.clock.now() - start;
    defmt::info!(
        "{=str}: {=usize} weights stored, {=usize} bytes of flash, validation (with CRC) {=u64} instructions",
        name,
        model.nnz(),
        bytes.len(),
        validate
    );
    let mut workspace = [0u64; FIXED_WORKSPACE_WORDS];
    let mut engine = Engine::<FIXED_CHUNK, N>::new(&model, &mut workspace)?;
    let (pixels, _) = assets::image(0);
    for samples in [0u16, 8, 32] {
        let mode = NonZeroU16::new(samples)
            .map_or(Mode::MeanWeights, |samples| Mode::MonteCarlo { samples });
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(1);
        let probe = StackProbe::paint(STACK_WINDOW);
        let start = board.clock.now();
        let p = predict_once(&mut engine, pixels, mode, &mut rng)?;
        let cost = board.clock.now() - start;
        let stack = probe.used();
        defmt::info!(
            "{=str}, {=str}, M = {=u16}, {=usize} samples per pass: {=u64} instructions; RAM {=usize} B workspace + {=usize} B stack (class {=usize})",
            name,
            if samples == 0 { "mean weights" } else { "Monte Carlo" },
            samples.max(1),
            FIXED_CHUNK,
            cost,
            model.workspace_bytes(FIXED_CHUNK),
            stack,
            p.class
        );
    }
    Ok(())
}

#[entry]
fn main() -> ! {
    let mut board = platform::init();
    defmt::info!(
        "tinybayes fixed-point bench on {=str}; counts are guest instructions (QEMU -icount), not cycles",
        platform::BOARD_NAME
    );
    for (name, bytes) in [
        ("LeNet-300-100 q8 (models/lenet300-q8.tbm)", FIXED_Q8_MODEL),
        (
            "LeNet-300-100 q16 (models/lenet300-q16.tbm)",
            FIXED_Q16_MODEL,
        ),
    ] {
        if let Err(e) = bench_model(&mut board, name, bytes) {
            defmt::error!("{=str}: {}", name, e);
            platform::exit(false);
        }
    }
    platform::exit(true)
}
