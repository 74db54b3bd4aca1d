//! Cortex-M side of tinybayes: board support, the demo application and the benchmark
//! harness, shared by the binaries in `src/bin` and the on-target tests.
//!
//! Exactly one board feature is enabled: `qemu` (the default: the emulated board of the
//! target's core, mps2-an386, mps2-an385, micro:bit, mps2-an500 or mps2-an505, see `build.rs`)
//! or `nrf52840dk` (Nordic nRF52840-DK, flashed with probe-rs).
#![no_std]

#[cfg(all(feature = "qemu", feature = "nrf52840dk"))]
compile_error!("enable exactly one board feature: `qemu` or `nrf52840dk`");
#[cfg(not(any(feature = "qemu", feature = "nrf52840dk")))]
compile_error!("enable one board feature: `qemu` or `nrf52840dk`");

pub mod app;
pub mod app_adapt;
pub mod app_fixed;
pub mod app_hmp;
pub mod assets;
pub mod bench;
pub mod clock;
pub mod platform;
pub mod stack;
pub mod unsure;

/// Build-time artefacts: the embedded models, workspace sizes and host-computed parity data.
pub mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}
