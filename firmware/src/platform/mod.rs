//! Board support: each board module provides [`Board`] (an LED as an embedded-hal
//! `OutputPin`, a delay as `DelayNs`, a [`crate::clock::Clock`]) and [`exit`].

#[cfg(feature = "nrf52840dk")]
mod nrf52840dk;
#[cfg(feature = "qemu")]
mod qemu;

#[cfg(feature = "nrf52840dk")]
pub use nrf52840dk::*;
#[cfg(feature = "qemu")]
pub use qemu::*;
