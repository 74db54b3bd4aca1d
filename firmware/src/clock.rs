//! Measuring work on the device: a monotonic counter of instructions (QEMU) or cycles (board).

/// A free-running counter.
pub trait Clock {
    /// What one count is ("instructions" under QEMU `-icount`, "cycles" on a board).
    const UNIT: &'static str;
    /// Counts since the clock started.
    fn now(&mut self) -> u64;
}
