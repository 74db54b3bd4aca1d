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
            summary.log();
            platform::exit(true)
        }
        Err(e) => {
            defmt::error!("demo failed: {}", e);
            platform::exit(false)
        }
    }
}
