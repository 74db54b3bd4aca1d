//! The sensor demo: wrist-accelerometer windows classified into daily activities with
//! uncertainty on the microcontroller (HMP ADL data set; see `app_hmp`): the f32 model on
//! cores with an FPU, then the q8 model (integer only, signed 8-bit codes of the readings) on
//! every core whose RAM holds its workspace, its answers checked against the host's.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
#[cfg(not(tb_board = "microbit"))]
use tinybayes_firmware::app_hmp;
use tinybayes_firmware::platform;

#[entry]
fn main() -> ! {
    let mut board = platform::init();
    defmt::info!("tinybayes activity demo on {=str}", platform::BOARD_NAME);
    // Neither model fits the micro:bit: the f32 model and engine need about 16 KB more than
    // its 256 KB of flash, the q8 model's workspace (about 52 KB at one sample per pass) far
    // more than its 16 KB of RAM. Its ARMv6-M code runs on the mps2-an385: `cargo demo-hmp-m0`.
    #[cfg(tb_board = "microbit")]
    {
        let _ = &mut board;
        defmt::warn!(
            "the HMP models do not fit the micro:bit (flash for f32, RAM for q8): run cargo demo-hmp (Cortex-M4F) or cargo demo-hmp-m0 (the M0's code on the mps2-an385)"
        );
        platform::exit(true)
    }
    #[cfg(not(tb_board = "microbit"))]
    {
        // The f32 model on cores with an FPU (hard-float ABI).
        #[cfg(target_abi = "eabihf")]
        match app_hmp::run_hmp_demo(&mut board.led, &mut board.clock) {
            Ok(Some(summary)) => summary.log(),
            Ok(None) => platform::exit(true),
            Err(e) => {
                defmt::error!("demo failed: {}", e);
                platform::exit(false)
            }
        }
        match app_hmp::run_hmp_q8_demo(&mut board.led, &mut board.clock) {
            Ok(Some(summary)) => {
                summary.log();
                platform::exit(true)
            }
            Ok(None) => platform::exit(true),
            Err(e) => {
                defmt::error!("q8 demo failed: {}", e);
                platform::exit(false)
            }
        }
    }
}
