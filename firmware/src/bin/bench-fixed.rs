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
fn predict_once<const CHUNK: usize, N: FixedPoint>(
    engine: &mut Engine<'_, '_, CHUNK, N>,
    pixels: &[u8],
    mode: Mode,
    rng: &mut Xoshiro128PlusPlus,
) -> Result<QPrediction<10>, InferenceError> {
    engine.predict_u8(pixels, mode, rng)
}

/// Benchmarks a model with `CHUNK` samples per pass in `WORDS` words of workspace.
fn bench_model<const CHUNK: usize, const WORDS: usize>(
    board: &mut Board,
    name: &str,
    bytes: &'static [u8],
) -> Result<(), InferenceError> {
    match QModel::from_bytes(bytes).map(|m| m.precision()) {
        Ok(Precision::Q16) => bench_in::<CHUNK, WORDS, Q16>(board, name, bytes),
        _ => bench_in::<CHUNK, WORDS, Q8>(board, name, bytes),
    }
}

fn bench_in<const CHUNK: usize, const WORDS: usize, N: FixedPoint>(
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
    let mut workspace = [0u64; WORDS];
    let mut engine = Engine::<CHUNK, N>::new(&model, &mut workspace)?;
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
            CHUNK,
            cost,
            model.workspace_bytes(CHUNK),
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
        if let Err(e) = bench_model::<FIXED_CHUNK, FIXED_WORKSPACE_WORDS>(&mut board, name, bytes) {
            defmt::error!("{=str}: {}", name, e);
            platform::exit(false);
        }
    }
    let lenet5 = "LeNet-5 q8 (models/lenet5-q8.tbm)";
    #[cfg(tb_lenet5)]
    {
        use tinybayes_firmware::generated::{
            LENET5_CHUNK, LENET5_Q8_MODEL, LENET5_WORKSPACE_WORDS,
        };
        if let Err(e) =
            bench_model::<LENET5_CHUNK, LENET5_WORKSPACE_WORDS>(&mut board, lenet5, LENET5_Q8_MODEL)
        {
            defmt::error!("{=str}: {}", lenet5, e);
            platform::exit(false);
        }
    }
    #[cfg(not(tb_lenet5))]
    defmt::info!(
        "{=str}: does not fit this board's RAM (needs {=usize} B of workspace with one sample per pass)",
        lenet5,
        tinybayes_firmware::generated::LENET5_WORKSPACE_BYTES_ONE_SAMPLE
    );
    platform::exit(true)
}
