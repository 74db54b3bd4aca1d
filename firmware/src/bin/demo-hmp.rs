//! The sensor demo: wrist-accelerometer windows classified into daily activities with
//! uncertainty on the microcontroller (HMP ADL data set; see `app_hmp`).
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
    // The f32 model and engine do not fit the micro:bit's 256 KB of flash beside each other
    // (about 16 KB over): the demo runs on the Cortex-M4F (`cargo demo-hmp`).
    #[cfg(tb_board = "microbit")]
    {
        let _ = &mut board;
        defmt::warn!(
            "the f32 HMP model does not fit the micro:bit's flash: run cargo demo-hmp (Cortex-M4F)"
        );
        platform::exit(true)
    }
    #[cfg(not(tb_board = "microbit"))]
    match app_hmp::run_hmp_demo(&mut board.led, &mut board.clock) {
        Ok(Some(summary)) => {
            summary.log();
            platform::exit(true)
        }
        Ok(None) => platform::exit(true),
        Err(e) => {
            defmt::error!("demo failed: {}", e);
            platform::exit(false)
        }
    }
}
