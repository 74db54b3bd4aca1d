//! QEMU boards: mps2-an386 (Cortex-M4F), mps2-an385 (Cortex-M3), mps2-an500 (Cortex-M7),
//! mps2-an505 (Cortex-M33, run in Secure state) and the BBC micro:bit (Cortex-M0), chosen by the
//! build target or by `TINYBAYES_QEMU_BOARD` (firmware/build.rs). SysTick counts instructions
//! under `-icount shift=0` (one instruction per nanosecond against the board's core clock: 40
//! per tick at the MPS2's 25 MHz, 50 at the AN505's 20 MHz, 62.5 at the micro:bit's 16 MHz), a
//! memory-mapped output bit stands in for an LED (the MPS2 FPGA I/O LED register, the nRF51
//! GPIO OUT register), and semihosting carries defmt and the exit code.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;
use defmt_semihosting as _;
use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{ErrorType, OutputPin};

use crate::clock::Clock;

/// Name of the board, for logs.
#[cfg(tb_board = "mps2-an386")]
pub const BOARD_NAME: &str = "QEMU mps2-an386 (Cortex-M4F)";
/// Name of the board, for logs.
#[cfg(all(tb_board = "mps2-an385", not(tb_armv6m_on_mps2)))]
pub const BOARD_NAME: &str = "QEMU mps2-an385 (Cortex-M3, no FPU)";
/// Name of the board, for logs.
#[cfg(all(tb_board = "mps2-an385", tb_armv6m_on_mps2))]
pub const BOARD_NAME: &str =
    "QEMU mps2-an385 running ARMv6-M code (Cortex-M0 instruction set, no FPU, 4 MB RAM)";
/// Name of the board, for logs.
#[cfg(tb_board = "microbit")]
pub const BOARD_NAME: &str = "QEMU micro:bit (Cortex-M0, no FPU, 16 KB RAM)";
/// Name of the board, for logs.
#[cfg(tb_board = "mps2-an500")]
pub const BOARD_NAME: &str = "QEMU mps2-an500 (Cortex-M7, running the M4F's thumbv7em code)";
/// Name of the board, for logs.
#[cfg(tb_board = "mps2-an505")]
pub const BOARD_NAME: &str = "QEMU mps2-an505 (Cortex-M33, Secure state)";

/// The core clock in MHz: SysTick counts it, and under `-icount shift=0` an instruction takes
/// one nanosecond, so a tick is 1000 / MHz instructions.
#[cfg(not(any(tb_board = "microbit", tb_board = "mps2-an505")))]
const CORE_CLOCK_MHZ: u32 = 25;
#[cfg(tb_board = "mps2-an505")]
const CORE_CLOCK_MHZ: u32 = 20;
#[cfg(tb_board = "microbit")]
const CORE_CLOCK_MHZ: u32 = 16;
/// Instructions per SysTick tick under `-icount shift=0`, times two (the micro:bit's 62.5 is
/// not an integer).
const TWICE_INSTRUCTIONS_PER_TICK: u64 = 2000 / CORE_CLOCK_MHZ as u64;
const SYSTICK_RELOAD: u32 = 0x00ff_ffff;
/// The LED: FPGA I/O LED0 on the MPS2 boards (on the AN505 at 0x50302000, the Secure alias of
/// its FPGA I/O block at 0x40302000), the nRF51 GPIO OUT register on the micro:bit.
#[cfg(not(any(tb_board = "microbit", tb_board = "mps2-an505")))]
const LED_REGISTER: usize = 0x4002_8000;
#[cfg(tb_board = "mps2-an505")]
const LED_REGISTER: usize = 0x5030_2000;
#[cfg(tb_board = "microbit")]
const LED_REGISTER: usize = 0x5000_0504;

static SYSTICK_WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    // Single writer: a plain load/store is enough (and exists on every Cortex-M).
    SYSTICK_WRAPS.store(SYSTICK_WRAPS.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Instruction counter built on SysTick (24-bit, extended by counting wraps).
pub struct InstructionClock {
    syst: SYST,
}

impl InstructionClock {
    fn new(mut syst: SYST) -> Self {
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(SYSTICK_RELOAD);
        syst.clear_current();
        syst.enable_interrupt();
        syst.enable_counter();
        // Clearing the current value makes it read 0 until the first tick reloads it, which
        // `now` would take for a full period already elapsed (and the next reading would go
        // backwards): wait for the reload (one tick, tens of instructions).
        while SYST::get_current() == 0 {}
        Self { syst }
    }
}

impl Clock for InstructionClock {
    const UNIT: &'static str = "instructions";

    fn now(&mut self) -> u64 {
        loop {
            let wraps = SYSTICK_WRAPS.load(Ordering::Relaxed);
            let current = SYST::get_current();
            if wraps == SYSTICK_WRAPS.load(Ordering::Relaxed) {
                let ticks =
                    wraps as u64 * (SYSTICK_RELOAD as u64 + 1) + (SYSTICK_RELOAD - current) as u64;
                return ticks * TWICE_INSTRUCTIONS_PER_TICK / 2;
            }
        }
    }
}

impl Drop for InstructionClock {
    fn drop(&mut self) {
        self.syst.disable_counter();
    }
}

/// An output bit: user LED 0 of the MPS2 FPGA I/O block, or GPIO 0 of the nRF51.
pub struct FpgaLed;

impl ErrorType for FpgaLed {
    type Error = core::convert::Infallible;
}

impl FpgaLed {
    // The one memory-mapped register the demo touches; QEMU models it as a plain register.
    #[allow(unsafe_code)]
    fn write_bit(&mut self, on: bool) {
        let reg = LED_REGISTER as *mut u32;
        // SAFETY: LED_REGISTER is the board's LED0 / GPIO OUT register, always mapped on this
        // board; volatile access, single-threaded firmware.
        unsafe {
            let v = core::ptr::read_volatile(reg);
            core::ptr::write_volatile(reg, if on { v | 1 } else { v & !1 });
        }
    }
}

impl OutputPin for FpgaLed {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.write_bit(false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.write_bit(true);
        Ok(())
    }
}

/// Busy-wait delay at the emulated core clock.
pub struct SpinDelay;

impl DelayNs for SpinDelay {
    fn delay_ns(&mut self, ns: u32) {
        cortex_m::asm::delay(ns / (1000 / CORE_CLOCK_MHZ) + 1);
    }
}

/// The board's resources.
pub struct Board {
    /// Lit while the model is unsure of the current input.
    pub led: FpgaLed,
    /// Delay provider.
    pub delay: SpinDelay,
    /// Work counter.
    pub clock: InstructionClock,
}

/// Takes the peripherals and sets up the board (call once).
pub fn init() -> Board {
    let cp = cortex_m::Peripherals::take();
    let Some(cp) = cp else { exit(false) };
    Board {
        led: FpgaLed,
        delay: SpinDelay,
        clock: InstructionClock::new(cp.SYST),
    }
}

/// Ends the program: QEMU exits with status 0 on success, 1 on failure.
pub fn exit(success: bool) -> ! {
    semihosting::process::exit(if success { 0 } else { 1 })
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    semihosting::process::exit(101)
}
