//! The early-exit ResNet on the device: instructions per exit depth (a fixed depth budget of
//! 1, 2, ... blocks, mean weights and 8 Monte Carlo samples), then the ten embedded digits
//! with the exact joint-mode halting policy, each with the depth it used. Counts are guest
//! instructions under QEMU `-icount shift=0` (BENCHMARKS.md), not cycles. One `bench:` line per
//! measured case (`tinybayes_firmware::bench`), read by `scripts/bench-tables.py`.
#![no_std]
#![no_main]

use core::num::NonZeroU16;

use cortex_m_rt::entry;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro128PlusPlus;
use tinybayes::early_exit::{ExitPrediction, Halting};
use tinybayes::format::Precision;
use tinybayes::{Engine, InferenceError, Mode, Model};
use tinybayes_firmware::assets;
use tinybayes_firmware::bench::{measure, ram_bytes, Depth, Line};
use tinybayes_firmware::clock::Clock;
use tinybayes_firmware::generated::{EE_CHUNK, EE_MODEL, EE_MODEL_DESCRIPTION, EE_WORKSPACE_WORDS};
use tinybayes_firmware::platform::{self, Board};

/// Monte Carlo samples per prediction (`EE_CHUNK` of them per pass).
const SAMPLES: u16 = 8;

const MC: Mode = Mode::MonteCarlo {
    samples: match NonZeroU16::new(SAMPLES) {
        Some(n) => n,
        None => NonZeroU16::MIN,
    },
};

/// Stack window painted to measure the inference's own stack use.
const STACK_WINDOW: usize = 16 * 1024;

fn run(board: &mut Board, model: &Model<'_>, workspace: &mut [f32]) -> Result<(), InferenceError> {
    let mut engine = Engine::<EE_CHUNK>::new(model, workspace)?;
    let (pixels, _) = assets::image(0);
    for depth in 1..=model.exit_count() {
        for mode in [Mode::MeanWeights, MC] {
            let mut rng = Xoshiro128PlusPlus::seed_from_u64(1);
            let halting = Halting::Depth { exits: depth };
            let run = measure(&mut board.clock, STACK_WINDOW, || {
                engine.predict_u8_early_exit::<10>(pixels, mode, halting, &mut rng)
            });
            let p = run.value?;
            Line {
                model: "resnet-ee",
                precision: Precision::F32,
                case: mode.into(),
                chunk: EE_CHUNK,
                depth: Depth::Exits(depth),
                instructions: run.instructions,
                ram_bytes: ram_bytes::<Engine<'_, '_, EE_CHUNK>, _>(
                    tinybayes::Plan::new(model, EE_CHUNK).workspace_bytes(),
                    model,
                    run.stack_bytes,
                ),
                flash_bytes: EE_MODEL.len(),
                macs: p.macs,
            }
            .print();
        }
    }
    let mut depths = 0;
    let mut correct = 0;
    for i in 0..assets::IMAGE_COUNT {
        let (pixels, label) = assets::image(i);
        let mut rng = Xoshiro128PlusPlus::seed_from_u64(0x7b00 + i as u64);
        let start = board.clock.now();
        let p: ExitPrediction<10> = engine.predict_u8_early_exit(
            pixels,
            MC,
            Halting::JointMode { prior: None },
            &mut rng,
        )?;
        let cost = board.clock.now() - start;
        depths += p.depth;
        correct += usize::from(p.prediction.class == label as usize);
        defmt::info!(
            "image {=usize}: label {=u8} -> {=usize} (p = {=f32}, mutual information {=f32}) from exit {=usize}, {=usize} of {=usize} blocks, {=usize} MACs per sample, {=u64} instructions",
            i,
            label,
            p.prediction.class,
            p.prediction.confidence(),
            p.prediction.mutual_information,
            p.exit + 1,
            p.depth,
            model.exit_count(),
            p.macs,
            cost
        );
    }
    defmt::info!(
        "joint-mode policy, M = 8: {=usize}/10 correct, mean depth {=usize}.{=usize} blocks",
        correct,
        depths / 10,
        depths % 10
    );
    Ok(())
}

#[entry]
fn main() -> ! {
    let mut board = platform::init();
    defmt::info!(
        "tinybayes early exit on {=str}: {=str}",
        platform::BOARD_NAME,
        EE_MODEL_DESCRIPTION
    );
    let validation = measure(&mut board.clock, STACK_WINDOW, || {
        Model::from_bytes(EE_MODEL).is_ok()
    });
    // Measured above without returning the model (its value would sit in the caller's frame).
    let (true, Ok(model)) = (validation.value, Model::from_bytes(EE_MODEL)) else {
        defmt::error!("the early-exit model does not validate");
        platform::exit(false)
    };
    Line::validation("resnet-ee", Precision::F32, EE_MODEL.len(), &validation).print();
    defmt::info!(
        "{=usize} exits, {=usize} weights stored, {=usize} bytes of flash, {=usize} bytes of workspace for M = {=u16}, {=usize} sample per pass",
        model.exit_count(),
        model.nnz(),
        EE_MODEL.len(),
        tinybayes::Plan::new(&model, EE_CHUNK).workspace_bytes(),
        SAMPLES,
        EE_CHUNK
    );
    let mut workspace = [0.0f32; EE_WORKSPACE_WORDS];
    match run(&mut board, &model, &mut workspace) {
        Ok(()) => platform::exit(true),
        Err(e) => {
            defmt::error!("early exit failed: {}", e);
            platform::exit(false)
        }
    }
}
