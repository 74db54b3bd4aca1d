//! Benchmark harness: instructions per inference (SysTick under QEMU `-icount shift=0`;
//! these are instruction counts, not cycles), flash and RAM, for the shipped trained
//! LeNet-300-100 and for seeded synthetic models of the same 784-300-100-10 shape stored sparse
//! (3% of weights) and dense.
#![no_std]
#![no_main]

use core::num::NonZeroU16;

use cortex_m_rt::entry;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::{Engine, InferenceError, Mode, Model, Prediction};
use tinybayes_firmware::assets;
use tinybayes_firmware::clock::Clock;
#[cfg(tb_board = "mps2-an386")]
use tinybayes_firmware::generated::BENCH_DENSE;
#[cfg(not(tb_board = "microbit"))]
use tinybayes_firmware::generated::BENCH_SPARSE;
use tinybayes_firmware::generated::{BENCH_DENSE_WORKSPACE_WORDS, DEMO_MODEL};
use tinybayes_firmware::platform::{self, Board};
use tinybayes_firmware::stack::StackProbe;

/// Stack window painted to measure the inference's own stack use.
const STACK_WINDOW: usize = 16 * 1024;

/// Runs one configuration and prints its line. `CHUNK` samples share a pass over the weights.
fn measure<const CHUNK: usize>(
    board: &mut Board,
    name: &str,
    model: &Model<'_>,
    mode: Mode,
    workspace: &mut [f32],
) -> Result<(), InferenceError> {
    let (pixels, _) = assets::image(0);
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(1);
    let mut engine = Engine::<CHUNK>::new(model, workspace)?;
    let probe = StackProbe::paint(STACK_WINDOW);
    let start = board.clock.now();
    let p = predict_once(&mut engine, pixels, mode, &mut rng)?;
    let cost = board.clock.now() - start;
    let stack = probe.used();
    let (label, samples) = match mode {
        Mode::MeanWeights => ("mean weights", 1),
        Mode::MonteCarlo { samples } => ("Monte Carlo", samples.get()),
    };
    defmt::info!(
        "{=str} model, {=str}, M = {=u16}, {=usize} samples per pass: {=u64} {=str}; RAM {=usize} B workspace + {=usize} B engine + {=usize} B stack (class {=usize})",
        name,
        label,
        samples,
        CHUNK,
        cost,
        unit(&board.clock),
        tinybayes::Plan::new(model, CHUNK).workspace_bytes(),
        core::mem::size_of::<Engine<'_, '_, CHUNK>>(),
        stack,
        p.class
    );
    Ok(())
}

/// The measured call, kept out of line so the stack probe sees all of its frames.
#[inline(never)]
fn predict_once<const CHUNK: usize>(
    engine: &mut Engine<'_, '_, CHUNK>,
    pixels: &[u8],
    mode: Mode,
    rng: &mut Xoshiro128PlusPlus,
) -> Result<Prediction<10>, InferenceError> {
    engine.predict_u8(pixels, mode, rng)
}

/// Name of a clock's unit, for the report lines.
fn unit<C: Clock>(_: &C) -> &'static str {
    C::UNIT
}

fn bench_model(board: &mut Board, name: &str, bytes: &'static [u8]) -> Result<(), InferenceError> {
    let start = board.clock.now();
    let Ok(model) = Model::from_bytes(bytes) else {
        defmt::error!("{=str} benchmark model does not validate", name);
        platform::exit(false)
    };
    let validate = board.clock.now() - start;
    defmt::info!(
        "{=str} model: {=usize} of {=usize} weights stored, {=usize} bytes of flash, validation (with CRC) {=u64} {=str}",
        name,
        model.nnz(),
        model.dense_params(),
        bytes.len(),
        validate,
        unit(&board.clock)
    );
    let mut workspace = [0.0f32; BENCH_DENSE_WORKSPACE_WORDS];
    let m8 = Mode::MonteCarlo {
        samples: NonZeroU16::new(8).unwrap_or(NonZeroU16::MIN),
    };
    let m32 = Mode::MonteCarlo {
        samples: NonZeroU16::new(32).unwrap_or(NonZeroU16::MIN),
    };
    measure::<1>(board, name, &model, Mode::MeanWeights, &mut workspace)?;
    measure::<8>(board, name, &model, m8, &mut workspace)?;
    measure::<4>(board, name, &model, m32, &mut workspace)?;
    measure::<8>(board, name, &model, m32, &mut workspace)?;
    measure::<32>(board, name, &model, m32, &mut workspace)?;
    Ok(())
}

#[entry]
fn main() -> ! {
    let mut board = platform::init();
    defmt::info!(
        "tinybayes bench on {=str}; counts are guest instructions (QEMU -icount), not cycles",
        platform::BOARD_NAME
    );
    // The dense Gaussian model takes 2.1 MB: it fits the 4 MB of mps2-an386 only.
    #[cfg(tb_board = "mps2-an386")]
    let models = [
        ("LeNet-300-100 (trained, models/lenet300.tbm)", DEMO_MODEL),
        ("synthetic sparse", BENCH_SPARSE),
        ("synthetic dense", BENCH_DENSE),
    ];
    #[cfg(not(any(tb_board = "mps2-an386", tb_board = "microbit")))]
    let models = [
        ("LeNet-300-100 (trained, models/lenet300.tbm)", DEMO_MODEL),
        ("synthetic sparse", BENCH_SPARSE),
    ];
    // The micro:bit's 256 KB of flash hold the trained model with the soft-float engine; the
    // 83 KB synthetic one does not fit beside them (f32 on the M0 is for comparison only: its
    // product path is fixed point, `bench-fixed`).
    #[cfg(tb_board = "microbit")]
    let models = [("LeNet-300-100 (trained, models/lenet300.tbm)", DEMO_MODEL)];
    for (name, bytes) in models {
        if let Err(e) = bench_model(&mut board, name, bytes) {
            defmt::error!("{=str}: {}", name, e);
            platform::exit(false);
        }
    }
    platform::exit(true)
}
