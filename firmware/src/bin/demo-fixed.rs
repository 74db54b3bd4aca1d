//! The fixed-point demo: ten MNIST digits classified with uncertainty by the q8 model and the
//! integer-only engine; runs on the Cortex-M0 and M3 (no FPU) as well as the M4F.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use tinybayes_firmware::{app_fixed, platform};

#[entry]
fn main() -> ! {
    let mut board = platform::init();
    defmt::info!("tinybayes fixed-point demo on {=str}", platform::BOARD_NAME);
    match app_fixed::run_fixed_demo(&mut board.led, &mut board.delay, &mut board.clock) {
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
