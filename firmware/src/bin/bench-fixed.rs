//! Fixed-point benchmark harness: instructions per inference of the q8 and q16 LeNet-300-100
//! (SysTick under QEMU `-icount shift=0`: instruction counts, not cycles), in
//! the mean-weights mode and with M = 8 and M = 32 Monte Carlo samples, with flash and RAM.
//! Runs on every board: Cortex-M0 (micro:bit), M3 (mps2-an385), M4F (mps2-an386). One `bench:`
//! line per case (`tinybayes_firmware::bench`), read by `scripts/bench-tables.py`.
#![no_std]
#![no_main]

use core::num::NonZeroU16;

use cortex_m_rt::entry;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::fixed::QModel;
use tinybayes::format::Precision;
use tinybayes::numeric::FixedPoint;
use tinybayes::{Engine, Q16, Q8};
use tinybayes::{InferenceError, Mode};
use tinybayes_firmware::assets;
use tinybayes_firmware::bench::{measure, ram_bytes, Line};
use tinybayes_firmware::generated::{
    FIXED_CHUNK, FIXED_Q16_MODEL, FIXED_Q8_MODEL, FIXED_WORKSPACE_WORDS,
};
use tinybayes_firmware::platform::{self, Board};

/// Stack window painted to measure the inference's own stack use (the micro:bit has 16 KB).
const STACK_WINDOW: usize = 4 * 1024;

/// Benchmarks a model with `CHUNK` samples per pass in `WORDS` words of workspace: its
/// validation, then each mode. Validation and inference run in separate frames called from
/// here one after the other, so the 16 KB micro:bit never holds both stacks at once.
fn bench_model<const CHUNK: usize, const WORDS: usize>(
    board: &mut Board,
    name: &str,
    bytes: &'static [u8],
) -> Result<(), InferenceError> {
    let line = validation_line(board, name, bytes);
    line.print();
    bench_parsed::<CHUNK, WORDS>(board, bytes, line)
}

/// Parses the model (validated already) and runs its modes.
#[inline(never)]
fn bench_parsed<const CHUNK: usize, const WORDS: usize>(
    board: &mut Board,
    bytes: &'static [u8],
    line: Line<'_>,
) -> Result<(), InferenceError> {
    let name = line.model;
    let Ok(model) = QModel::from_bytes(bytes) else {
        defmt::error!("{=str} model does not validate", name);
        platform::exit(false)
    };
    match model.precision() {
        Precision::Q16 => bench_modes::<CHUNK, WORDS, Q16>(board, &model, line),
        _ => bench_modes::<CHUNK, WORDS, Q8>(board, &model, line),
    }
}

/// Measures the start-up validation of a model (out of line, and without keeping the parsed
/// model: only one model value lives on the caller's stack at a time on the 16 KB micro:bit).
#[inline(never)]
fn validation_line<'a>(board: &mut Board, name: &'a str, bytes: &'static [u8]) -> Line<'a> {
    let validation = measure(&mut board.clock, STACK_WINDOW, || {
        QModel::from_bytes(bytes).map(|model| model.precision())
    });
    let Ok(precision) = validation.value else {
        defmt::error!("{=str} model does not validate", name);
        platform::exit(false)
    };
    Line::validation(name, precision, bytes.len(), &validation)
}

/// Runs one model in the mean-weights mode and with M = 8 and 32 samples (out of line: each
/// instantiation's workspace lives only in its own frame, not all of them at once in `main`'s).
#[inline(never)]
fn bench_modes<const CHUNK: usize, const WORDS: usize, N: FixedPoint>(
    board: &mut Board,
    model: &QModel<'_>,
    line: Line<'_>,
) -> Result<(), InferenceError> {
    let mut workspace = [0u64; WORDS];
    let mut engine = Engine::<CHUNK, N>::new(model, &mut workspace)?;
    let (pixels, _) = assets::image(0);
    for samples in [0u16, 8, 32] {
        let mode = NonZeroU16::new(samples)
            .map_or(Mode::MeanWeights, |samples| Mode::MonteCarlo { samples });
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(1);
        let run = measure(&mut board.clock, STACK_WINDOW, || {
            engine.predict_u8::<10>(pixels, mode, &mut rng)
        });
        run.value?;
        Line {
            case: mode.into(),
            chunk: CHUNK,
            instructions: run.instructions,
            ram_bytes: ram_bytes::<Engine<'_, '_, CHUNK, N>, _>(
                model.workspace_bytes(CHUNK),
                model,
                run.stack_bytes,
            ),
            ..line
        }
        .print();
    }
    Ok(())
}

#[entry]
fn main() -> ! {
    let mut board = platform::init();
    defmt::info!(
        "tinybayes fixed-point bench on {=str}; counts are guest instructions (QEMU -icount), not cycles; models/<model>.tbm, MNIST test image 0",
        platform::BOARD_NAME
    );
    for (name, bytes) in [
        ("lenet300-q8", FIXED_Q8_MODEL),
        ("lenet300-q16", FIXED_Q16_MODEL),
    ] {
        if let Err(e) = bench_model::<FIXED_CHUNK, FIXED_WORKSPACE_WORDS>(&mut board, name, bytes) {
            defmt::error!("{=str}: {}", name, e);
            platform::exit(false);
        }
    }
    #[cfg(tb_mcdropout)]
    {
        use tinybayes_firmware::generated::{MCDROPOUT_Q8_MODEL, MCDROPOUT_WORKSPACE_WORDS};
        let name = "lenet300-mcdropout-q8";
        if let Err(e) = bench_model::<FIXED_CHUNK, MCDROPOUT_WORKSPACE_WORDS>(
            &mut board,
            name,
            MCDROPOUT_Q8_MODEL,
        ) {
            defmt::error!("{=str}: {}", name, e);
            platform::exit(false);
        }
    }
    let lenet5 = "lenet5-q8";
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
