//! The adaptation demo: the device learns a new wearer who wears the watch rotated (see
//! `app_adapt`): the HMP model trained without volunteer m1 on m1's rotated test windows, a
//! closed-form update of its last layer from a few of m1's labelled windows, the state saved
//! to NOR flash and loaded back, then the same windows through the adapted model.
//!
//! QEMU only: the MPS2 boards' flash is read-only, so the flash here is emulated in RAM
//! ([`tinybayes::adapt::flash::RamFlash`]); on a board, pass the HAL's `NorFlash` (e.g.
//! nrf52840-hal's `Nvmc`) to `app_adapt::run_adapt_demo` instead.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use tinybayes_firmware::platform;

#[entry]
fn main() -> ! {
    let mut board = platform::init();
    defmt::info!("tinybayes adaptation demo on {=str}", platform::BOARD_NAME);
    // The model, its workspace and the update's buffers take about 280 KB of RAM: not the
    // micro:bit's 16 KB.
    #[cfg(tb_board = "microbit")]
    {
        let _ = &mut board;
        defmt::warn!(
            "the adaptation demo does not fit the micro:bit's 16 KB of RAM: run cargo demo-adapt (Cortex-M4F)"
        );
        platform::exit(true)
    }
    #[cfg(not(tb_board = "microbit"))]
    {
        use tinybayes::adapt::flash::RamFlash;
        use tinybayes_firmware::app_adapt;
        // NOR flash emulated in RAM: QEMU's mps2 flash is read-only. On a board this is the
        // HAL's NorFlash (e.g. nrf52840-hal's Nvmc over a reserved region of flash).
        let mut cells = [0xFFu8; app_adapt::FLASH_BYTES];
        // 4-byte words and 4 KB pages, as the nRF52840's.
        let mut flash = RamFlash::<4, 4096>::erased(&mut cells);
        match app_adapt::run_adapt_demo(&mut board.led, &mut board.clock, &mut flash) {
            Ok(Some(summary)) => {
                summary.log();
                platform::exit(true)
            }
            Ok(None) => platform::exit(true),
            Err(e) => {
                defmt::error!("adaptation demo failed: {}", e);
                platform::exit(false)
            }
        }
    }
}
