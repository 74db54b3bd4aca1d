//! The demo: ten MNIST digits classified with uncertainty on the microcontroller.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use tinybayes_firmware::{app, platform};

#[entry]
fn main() -> ! {
    let mut board = platform::init();
    defmt::info!("tinybayes demo on {=str}", platform::BOARD_NAME);
    match app::run_demo(&mut board.led, &mut board.delay, &mut board.clock) {
        Ok(summary) => {
            defmt::info!(
                "done: {=usize}/{=usize} correct, {=usize} flagged unsure; {=usize} of the {=usize} wrong answers flagged",
                summary.correct,
                summary.total,
                summary.unsure,
                summary.wrong_flagged,
                summary.wrong
            );
            platform::exit(true)
        }
        Err(e) => {
            defmt::error!("demo failed: {}", e);
            platform::exit(false)
        }
    }
}
