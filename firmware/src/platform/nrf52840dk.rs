//! Nordic nRF52840-DK (nRF52840, Cortex-M4F at 64 MHz): LED1 on P0.13 (active low), SysTick
//! delay, the DWT cycle counter as clock, defmt over RTT and panic-probe (flash with probe-rs).

use defmt_rtt as _;
use embedded_hal::digital::{ErrorType, OutputPin};
use nrf52840_hal::gpio::{p0, Level, Output, Pin, PushPull};
use nrf52840_hal::{pac, Delay};
use panic_probe as _;

use crate::clock::Clock;

/// Name of the board, for logs.
pub const BOARD_NAME: &str = "nRF52840-DK (Cortex-M4F, 64 MHz)";

/// Cycle counter of the DWT unit, extended to 64 bits by the caller's frequent reads.
pub struct CycleClock {
    last: u32,
    high: u64,
}

impl Clock for CycleClock {
    const UNIT: &'static str = "cycles";

    fn now(&mut self) -> u64 {
        let now = cortex_m::peripheral::DWT::cycle_count();
        if now < self.last {
            self.high += 1 << 32;
        }
        self.last = now;
        self.high + now as u64
    }
}

/// LED1 of the DK, lit when driven low; exposed with "high = lit" semantics.
pub struct Led(Pin<Output<PushPull>>);

impl ErrorType for Led {
    type Error = core::convert::Infallible;
}

impl OutputPin for Led {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.0.set_high()
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.0.set_low()
    }
}

/// The board's resources.
pub struct Board {
    /// Lit while the model is unsure of the current input.
    pub led: Led,
    /// Delay provider (SysTick).
    pub delay: Delay,
    /// Work counter (core cycles).
    pub clock: CycleClock,
}

/// Takes the peripherals and sets up the board (call once).
pub fn init() -> Board {
    let (Some(mut cp), Some(p)) = (cortex_m::Peripherals::take(), pac::Peripherals::take()) else {
        exit(false)
    };
    cp.DCB.enable_trace();
    cp.DWT.enable_cycle_counter();
    let port0 = p0::Parts::new(p.P0);
    let led = Led(port0.p0_13.into_push_pull_output(Level::High).degrade());
    Board {
        led,
        delay: Delay::new(cp.SYST),
        clock: CycleClock { last: 0, high: 0 },
    }
}

/// Ends the program: the probe sees a breakpoint (probe-rs then exits); failure also panics so
/// panic-probe reports it.
pub fn exit(success: bool) -> ! {
    if !success {
        defmt::panic!("demo failed");
    }
    loop {
        cortex_m::asm::bkpt();
    }
}
