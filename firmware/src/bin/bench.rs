//! Benchmark harness: instructions per inference (SysTick under QEMU `-icount shift=0`;
//! these are instruction counts, not cycles), flash and RAM, for the shipped trained
//! LeNet-300-100 and for seeded synthetic models of the same 784-300-100-10 shape stored sparse
//! (3% of weights) and dense. One `bench:` line per case (`tinybayes_firmware::bench`), read by
//! `scripts/bench-tables.py`.
#![no_std]
#![no_main]

use core::num::NonZeroU16;

use cortex_m_rt::entry;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::format::Precision;
use tinybayes::{Engine, InferenceError, Mode, Model};
use tinybayes_firmware::assets;
use tinybayes_firmware::bench::{measure, ram_bytes, Depth, Line};
#[cfg(tb_board = "mps2-an386")]
use tinybayes_firmware::generated::BENCH_DENSE;
#[cfg(not(tb_board = "microbit"))]
use tinybayes_firmware::generated::BENCH_SPARSE;
use tinybayes_firmware::generated::{BENCH_WORKSPACE_WORDS, DEMO_MODEL};
use tinybayes_firmware::platform::{self, Board};

/// Stack window painted to measure the inference's own stack use.
const STACK_WINDOW: usize = 16 * 1024;

/// Runs one configuration and prints its line. `CHUNK` samples share a pass over the weights.
fn bench_case<const CHUNK: usize>(
    board: &mut Board,
    name: &str,
    model: &Model<'_>,
    mode: Mode,
    workspace: &mut [f32],
) -> Result<(), InferenceError> {
    let (pixels, _) = assets::image(0);
    let mut rng = Xoshiro128PlusPlus::seed_from_u64(1);
    let mut engine = Engine::<CHUNK>::new(model, workspace)?;
    let run = measure(&mut board.clock, STACK_WINDOW, || {
        engine.predict_u8::<10>(pixels, mode, &mut rng)
    });
    run.value?;
    Line {
        model: name,
        precision: Precision::F32,
        case: mode.into(),
        chunk: CHUNK,
        depth: Depth::All,
        instructions: run.instructions,
        ram_bytes: ram_bytes::<Engine<'_, '_, CHUNK>, _>(
            tinybayes::Plan::new(model, CHUNK).workspace_bytes(),
            model,
            run.stack_bytes,
        ),
        flash_bytes: model.as_bytes().len(),
        macs: 0,
    }
    .print();
    Ok(())
}

fn bench_model(board: &mut Board, name: &str, bytes: &'static [u8]) -> Result<(), InferenceError> {
    let validation = measure(&mut board.clock, STACK_WINDOW, || {
        Model::from_bytes(bytes).is_ok()
    });
    // Measured above without returning the model (its value would sit in the caller's frame).
    let model = Model::from_bytes(bytes);
    let (true, Ok(model)) = (validation.value, model) else {
        defmt::error!("{=str} benchmark model does not validate", name);
        platform::exit(false)
    };
    defmt::info!(
        "{=str}: {=usize} of {=usize} weights stored",
        name,
        model.nnz(),
        model.dense_params()
    );
    Line::validation(name, Precision::F32, bytes.len(), &validation).print();
    let mut workspace = [0.0f32; BENCH_WORKSPACE_WORDS];
    let m8 = Mode::MonteCarlo {
        samples: NonZeroU16::new(8).unwrap_or(NonZeroU16::MIN),
    };
    let m32 = Mode::MonteCarlo {
        samples: NonZeroU16::new(32).unwrap_or(NonZeroU16::MIN),
    };
    bench_case::<1>(board, name, &model, Mode::MeanWeights, &mut workspace)?;
    bench_case::<8>(board, name, &model, m8, &mut workspace)?;
    bench_case::<4>(board, name, &model, m32, &mut workspace)?;
    bench_case::<8>(board, name, &model, m32, &mut workspace)?;
    bench_case::<32>(board, name, &model, m32, &mut workspace)?;
    // Moment propagation keeps a mean and a variance per unit: a chunk of 2. Not on the
    // micro:bit, whose flash holds the f32 engine for comparison only.
    #[cfg(not(tb_board = "microbit"))]
    {
        let logit_draws = Mode::MomentsThenSample {
            samples: NonZeroU16::new(32).unwrap_or(NonZeroU16::MIN),
        };
        bench_case::<2>(board, name, &model, Mode::Moments, &mut workspace)?;
        bench_case::<2>(board, name, &model, logit_draws, &mut workspace)?;
    }
    Ok(())
}

#[entry]
fn main() -> ! {
    let mut board = platform::init();
    defmt::info!(
        "tinybayes bench on {=str}; counts are guest instructions (QEMU -icount), not cycles; lenet300 is models/lenet300.tbm, synthetic-sparse/-dense seeded 784-300-100-10 networks (3% / all weights stored); MNIST test image 0",
        platform::BOARD_NAME
    );
    // The dense Gaussian model takes 2.1 MB: it fits the 4 MB of mps2-an386 only.
    #[cfg(tb_board = "mps2-an386")]
    let models = [
        ("lenet300", DEMO_MODEL),
        ("synthetic-sparse", BENCH_SPARSE),
        ("synthetic-dense", BENCH_DENSE),
    ];
    #[cfg(not(any(tb_board = "mps2-an386", tb_board = "microbit")))]
    let models = [("lenet300", DEMO_MODEL), ("synthetic-sparse", BENCH_SPARSE)];
    // The micro:bit's 256 KB of flash hold the trained model with the soft-float engine; the
    // 83 KB synthetic one does not fit beside them (f32 on the M0 is for comparison only: its
    // product path is fixed point, `bench-fixed`).
    #[cfg(tb_board = "microbit")]
    let models = [("lenet300", DEMO_MODEL)];
    for (name, bytes) in models {
        if let Err(e) = bench_model(&mut board, name, bytes) {
            defmt::error!("{=str}: {}", name, e);
            platform::exit(false);
        }
    }
    platform::exit(true)
}
