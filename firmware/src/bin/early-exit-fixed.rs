//! The q8 early-exit ResNet on the device (integer only): instructions per exit depth (a fixed
//! depth budget of 1, 2, ... blocks, mean weights and 8 Monte Carlo samples), then the ten
//! embedded digits with the exact joint-mode halting policy (decided in UQ16), each with the
//! depth it used. Counts are guest instructions under QEMU `-icount shift=0` (BENCHMARKS.md),
//! not cycles. Runs on the MPS2 boards, whose RAM holds the workspace (cfg `tb_resnet_q8`);
//! elsewhere it says how much it would need. One `bench:` line per measured case
//! (`tinybayes_firmware::bench`), read by `scripts/bench-tables.py`.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use tinybayes_firmware::platform;

#[cfg(tb_resnet_q8)]
mod run {
    use core::num::NonZeroU16;

    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro128PlusPlus;
    use tinybayes::early_exit::Halting;
    use tinybayes::format::Precision;
    use tinybayes::{Engine, InferenceError, Mode, QExitPrediction, QModel, Q8};
    use tinybayes_firmware::assets;
    use tinybayes_firmware::bench::{measure, ram_bytes, Depth, Line};
    use tinybayes_firmware::clock::Clock;
    use tinybayes_firmware::generated::{
        FIXED_SEED_BASE, RESNET_CHUNK, RESNET_Q8_MODEL, RESNET_SAMPLES, RESNET_WORKSPACE_WORDS,
    };
    use tinybayes_firmware::platform::{self, Board};

    /// Stack window painted to measure the inference's own stack use.
    const STACK_WINDOW: usize = 16 * 1024;

    fn bench(board: &mut Board, model: &QModel<'_>) -> Result<(), InferenceError> {
        let mc = Mode::MonteCarlo {
            samples: NonZeroU16::new(RESNET_SAMPLES).unwrap_or(NonZeroU16::MIN),
        };
        let mut workspace = [0u64; RESNET_WORKSPACE_WORDS];
        let mut engine = Engine::<RESNET_CHUNK, Q8>::new(model, &mut workspace)?;
        let (pixels, _) = assets::image(0);
        for depth in 1..=model.exit_count() {
            for mode in [Mode::MeanWeights, mc] {
                let mut rng = Xoshiro128PlusPlus::seed_from_u64(1);
                let halting = Halting::Depth { exits: depth };
                let run = measure(&mut board.clock, STACK_WINDOW, || {
                    engine.predict_u8_early_exit::<10>(pixels, mode, halting, &mut rng)
                });
                let p = run.value?;
                Line {
                    model: "resnet-ee-q8",
                    precision: Precision::Q8,
                    case: mode.into(),
                    chunk: RESNET_CHUNK,
                    depth: Depth::Exits(depth),
                    instructions: run.instructions,
                    ram_bytes: ram_bytes::<Engine<'_, '_, RESNET_CHUNK, Q8>, _>(
                        model.workspace_bytes(RESNET_CHUNK),
                        model,
                        run.stack_bytes,
                    ),
                    flash_bytes: RESNET_Q8_MODEL.len(),
                    macs: p.macs,
                }
                .print();
            }
        }
        let mut depths = 0;
        let mut correct = 0;
        for i in 0..assets::IMAGE_COUNT {
            let (pixels, label) = assets::image(i);
            let mut rng = Xoshiro128PlusPlus::seed_from_u64(FIXED_SEED_BASE + i as u64);
            let start = board.clock.now();
            let p: QExitPrediction<10> = engine.predict_u8_early_exit(
                pixels,
                mc,
                Halting::JointMode { prior: None },
                &mut rng,
            )?;
            let cost = board.clock.now() - start;
            depths += p.depth;
            correct += usize::from(p.prediction.class == label as usize);
            defmt::info!(
                "image {=usize}: label {=u8} -> {=usize} (p = {=u32}/1000, mutual information {=u32}/1000 nats) from exit {=usize}, {=usize} of {=usize} blocks, {=usize} MACs per sample, {=u64} instructions",
                i,
                label,
                p.prediction.class,
                p.prediction.confidence().to_milli(),
                p.prediction.mutual_information.to_milli(),
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

    pub fn main(board: &mut Board) -> bool {
        let validation = measure(&mut board.clock, STACK_WINDOW, || {
            QModel::from_bytes(RESNET_Q8_MODEL).is_ok()
        });
        // Measured above without returning the model (its value would sit in the caller's frame).
        let (true, Ok(model)) = (validation.value, QModel::from_bytes(RESNET_Q8_MODEL)) else {
            defmt::error!("the q8 early-exit model does not validate");
            return false;
        };
        Line::validation(
            "resnet-ee-q8",
            Precision::Q8,
            RESNET_Q8_MODEL.len(),
            &validation,
        )
        .print();
        defmt::info!(
            "{=usize} exits, {=usize} weights stored",
            model.exit_count(),
            model.nnz()
        );
        match bench(board, &model) {
            Ok(()) => true,
            Err(e) => {
                defmt::error!("early exit failed: {}", e);
                platform::exit(false)
            }
        }
    }
}

#[entry]
fn main() -> ! {
    #[allow(unused_mut)]
    let mut board = platform::init();
    defmt::info!(
        "tinybayes q8 early exit on {=str}: models/resnet-ee-q8.tbm; counts are guest instructions (QEMU -icount), not cycles",
        platform::BOARD_NAME
    );
    #[cfg(tb_resnet_q8)]
    platform::exit(run::main(&mut board));
    #[cfg(not(tb_resnet_q8))]
    {
        let _ = board;
        defmt::info!(
            "the q8 early-exit ResNet does not fit this board's RAM (needs {=usize} B of workspace with one sample per pass): not run",
            tinybayes_firmware::generated::RESNET_Q8_WORKSPACE_BYTES_ONE_SAMPLE
        );
        platform::exit(true)
    }
}
